"""Crown heights from a canopy height raster (a CHM or nDSM, metres above ground), in any CRS and resolution.

Each crown polygon is carried into the height raster's CRS and rasterised on
that raster's own grid: the heights of the pixels whose centres fall inside the
crown (every pixel the crown touches, when it is smaller than a pixel) give the
crown's ``height_max_m`` and ``height_p95_m`` (95th percentile, linear between
order statistics). Nodata, NaN, and crowns outside the raster give None — NULL
in the crowns file, never 0.

Uses only GDAL's own Python bindings and numpy, which QGIS ships: the same code
runs in the prediction worker (per tile) and inside QGIS (``tcd:crownheights``)
without loading a second GDAL into QGIS's process.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from osgeo import gdal, ogr, osr

from ..errors import RasterError
from .ogr_memory import vector_dataset

HEIGHT_MAX = "height_max_m"
HEIGHT_P95 = "height_p95_m"
HEIGHT_SOURCE = "height_src"
HEIGHT_FIELDS = (HEIGHT_MAX, HEIGHT_P95, HEIGHT_SOURCE)


@dataclass(frozen=True)
class CrownHeight:
    """A crown's height figures in metres; None where the raster has no valid pixel under the crown."""

    max_m: float | None
    p95_m: float | None


NO_HEIGHT = CrownHeight(None, None)


def _srs(wkt: str) -> osr.SpatialReference:
    srs = osr.SpatialReference()
    if srs.SetFromUserInput(wkt) != 0:
        raise RasterError(f"The CRS {wkt[:60]} cannot be read.")
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


class CanopyHeightRaster:
    """A canopy height raster opened for reading (band 1); one per process, not shared between threads."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.name = self.path.name
        try:  # None, or RuntimeError where the caller has turned on GDAL's exceptions
            self._ds = gdal.Open(str(self.path), gdal.GA_ReadOnly)
        except RuntimeError:
            self._ds = None
        if self._ds is None:
            raise RasterError(f"The canopy height raster {self.path} cannot be read.")
        wkt = self._ds.GetProjection()
        if not wkt:
            raise RasterError(f"The canopy height raster {self.name} has no CRS; assign one first.")
        self.crs = _srs(wkt)
        self._band = self._ds.GetRasterBand(1)
        self._nodata = self._band.GetNoDataValue()
        self._gt = self._ds.GetGeoTransform()
        self._inv = gdal.InvGeoTransform(self._gt)
        self._transforms: dict[str, osr.CoordinateTransformation | None] = {}

    def _transform(self, crs_wkt: str) -> osr.CoordinateTransformation | None:
        if crs_wkt not in self._transforms:
            source = _srs(crs_wkt)
            same = source.IsSame(self.crs)
            self._transforms[crs_wkt] = None if same else osr.CoordinateTransformation(source, self.crs)
        return self._transforms[crs_wkt]

    def crown_heights(self, polygons_wkb: Sequence[bytes], crs_wkt: str) -> list[CrownHeight]:
        """Heights of crowns given as WKB polygons in ``crs_wkt``, in their order."""
        transform = self._transform(crs_wkt)
        heights = []
        for wkb in polygons_wkb:
            geometry = ogr.CreateGeometryFromWkb(bytes(wkb))
            if geometry is None or geometry.IsEmpty():
                heights.append(NO_HEIGHT)
                continue
            if transform is not None and geometry.Transform(transform) != 0:
                heights.append(NO_HEIGHT)
                continue
            heights.append(self._measure(geometry))
        return heights

    def _window(self, geometry) -> tuple[int, int, int, int] | None:
        """(col, row, width, height) of the raster pixels the geometry's envelope covers, clipped; None if none."""
        minx, maxx, miny, maxy = geometry.GetEnvelope()
        cols, rows = [], []
        for x, y in ((minx, miny), (minx, maxy), (maxx, miny), (maxx, maxy)):
            col, row = gdal.ApplyGeoTransform(self._inv, x, y)
            cols.append(col)
            rows.append(row)
        c0 = max(int(math.floor(min(cols))), 0)
        r0 = max(int(math.floor(min(rows))), 0)
        c1 = min(int(math.ceil(max(cols))), self._ds.RasterXSize)
        r1 = min(int(math.ceil(max(rows))), self._ds.RasterYSize)
        if c1 <= c0 or r1 <= r0:
            return None
        return c0, r0, c1 - c0, r1 - r0

    def _measure(self, geometry) -> CrownHeight:
        window = self._window(geometry)
        if window is None:
            return NO_HEIGHT
        col, row, width, height = window
        values = self._band.ReadAsArray(col, row, width, height)
        if values is None:
            return NO_HEIGHT
        inside = _rasterise(geometry, self._gt, window, self.crs, all_touched=False)
        if not inside.any():  # a crown smaller than a pixel: the pixels it touches
            inside = _rasterise(geometry, self._gt, window, self.crs, all_touched=True)
        values = values[inside].astype(np.float64)
        valid = np.isfinite(values)
        if self._nodata is not None:
            valid &= values != self._nodata
        values = values[valid]
        if values.size == 0:
            return NO_HEIGHT
        return CrownHeight(round(float(values.max()), 3), round(float(np.percentile(values, 95)), 3))

    def close(self) -> None:
        self._band = None
        self._ds = None


def _rasterise(geometry, gt, window, srs, *, all_touched: bool) -> np.ndarray:
    """Boolean mask of ``window``'s pixels inside ``geometry`` (raster CRS), on the raster's grid."""
    col, row, width, height = window
    sub_gt = (gt[0] + col * gt[1] + row * gt[2], gt[1], gt[2], gt[3] + col * gt[4] + row * gt[5], gt[4], gt[5])
    target = gdal.GetDriverByName("MEM").Create("", width, height, 1, gdal.GDT_Byte)
    target.SetGeoTransform(sub_gt)
    source = vector_dataset()
    layer = source.CreateLayer("crown", srs=srs)
    feature = ogr.Feature(layer.GetLayerDefn())
    feature.SetGeometry(geometry)
    layer.CreateFeature(feature)
    options = ["ALL_TOUCHED=TRUE"] if all_touched else []
    gdal.RasterizeLayer(target, [1], layer, burn_values=[1], options=options)
    return target.GetRasterBand(1).ReadAsArray().astype(bool)


def height_attributes(height: CrownHeight, source: str) -> dict:
    """The crown attributes of a height: NULL (None) figures stay None."""
    return {HEIGHT_MAX: height.max_m, HEIGHT_P95: height.p95_m, HEIGHT_SOURCE: source}
