"""What the dialog checks of a raster file before a run, with QGIS's own GDAL (no rasterio).

The engine refuses a raster with no georeferencing, too few bands for the model (a
paletted one has its colours' three), another pixel type than a model reading other
than 8 bits takes (any type is stretched for an 8-bit model), and one with no coordinate reference
system that the job does not give one; :func:`raster_problem` says so in the
dialog, in the engine's words, before anything starts. :func:`raster_note` adds
what does not stop a run but surprises (a raster far smaller than one tile).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from osgeo import gdal, osr

from tcd_qgis_plugin.core.texts import translator

# GDAL's type names as the engine (rasterio, numpy) spells them.
DTYPES = {"Byte": "uint8", "Int8": "int8", "UInt16": "uint16", "Int16": "int16", "UInt32": "uint32",
          "Int32": "int32", "UInt64": "uint64", "Int64": "int64", "Float32": "float32", "Float64": "float64"}


tr = translator("RasterCheck")


@dataclass(frozen=True)
class RasterFacts:
    """A raster file's header: size in pixels, bands, pixel type, CRS and pixel size in metres if known."""

    path: Path
    width: int
    height: int
    bands: int
    dtype: str
    has_crs: bool
    georeferenced: bool
    pixel_m: float | None  # None: geographic or unknown units
    paletted: bool = False  # one band of colour-table indices: the engine reads its colours


def read_facts(path: Path) -> RasterFacts | None:
    """The header of ``path`` read with GDAL, or None if GDAL cannot open it.

    GDAL's exception mode is global to the interpreter that QGIS shares with every
    plugin (and the engine turns exceptions on), so it is never switched here:
    a failed open is either None or a RuntimeError, whichever mode is on.
    """
    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        dataset = gdal.Open(str(path))
    except RuntimeError:
        dataset = None
    finally:
        gdal.PopErrorHandler()
    if dataset is None:
        return None
    transform = dataset.GetGeoTransform(can_return_null=True)
    georeferenced = transform is not None and tuple(transform) != (0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    wkt = dataset.GetProjection() or (dataset.GetGCPProjection() if dataset.GetGCPCount() else "")
    pixel_m = None
    if wkt and transform is not None:
        srs = osr.SpatialReference(wkt=wkt)
        if srs.IsProjected():
            pixel_m = abs(transform[1]) * srs.GetLinearUnits()
    band = dataset.GetRasterBand(1) if dataset.RasterCount else None
    dtype = DTYPES.get(gdal.GetDataTypeName(band.DataType), "") if band is not None else ""
    paletted = dataset.RasterCount == 1 and band.GetColorInterpretation() == gdal.GCI_PaletteIndex
    return RasterFacts(Path(path), dataset.RasterXSize, dataset.RasterYSize, dataset.RasterCount, dtype,
                       bool(wkt), georeferenced or dataset.GetGCPCount() > 0, pixel_m, paletted)


def raster_problem(facts: RasterFacts, spec, layer_has_crs: bool) -> str:
    """The sentence that keeps Run disabled, or "" when the engine will take this raster for this model."""
    name = facts.path.name
    if not facts.georeferenced:
        return tr("{} is not georeferenced (it has no geotransform); georeference it first "
                  "(Raster ▸ Georeferencer).").format(name)
    if not facts.has_crs and not layer_has_crs:
        return tr("{} has no coordinate reference system; set the layer's CRS in QGIS "
                  "(Layer ▸ Layer CRS ▸ Set Layer CRS…).").format(name)
    if facts.bands < max(spec.bands) and not (facts.paletted and max(spec.bands) <= 3):
        needed = ", ".join(map(str, spec.bands))
        has = tr("1 band") if facts.bands == 1 else tr("{} bands").format(facts.bands)
        return tr("The model needs bands {} but {} has {}.").format(needed, name, has)
    expected = str(spec.metadata.get("input_dtype", "uint8")).strip('"')
    # Another pixel type than an 8-bit model's is stretched as QGIS shows it (engine.tiling.stretch).
    if facts.dtype and facts.dtype != expected and expected != "uint8" and not facts.paletted:
        return tr("{} holds {} pixels but this model expects {}; convert it first (Raster ▸ Conversion ▸ "
                  "Translate, output type Byte, with scaling).").format(name, facts.dtype, expected)
    return ""


def raster_note(facts: RasterFacts, tile_size_px: int, gsd_m: float) -> str:
    """A remark that does not stop a run: a raster far smaller than one tile is mostly padding."""
    if facts.pixel_m is None:
        return ""
    tile_m = tile_size_px * gsd_m
    width_m, height_m = facts.width * facts.pixel_m, facts.height * facts.pixel_m
    if max(width_m, height_m) >= tile_m / 4:
        return ""
    return tr("{} covers only {:.3g} × {:.3g} m, far less than one tile of this model ({} px at {:g} m = {:.3g} m): "
              "it is predicted as one mostly empty tile, and crowns cut by its edges are lost.").format(
        facts.path.name, width_m, height_m, tile_size_px, gsd_m, tile_m)
