"""Reference layers a user drew or measured: crown polygons, boxes or tree-top points, and areas.

IO at this edge: any OGR vector file (GeoPackage, shapefile, GeoJSON, ...) in any
CRS is read with OGR and its geometries are reprojected into the *cache's CRS* (the
raster's, ``crs_wkt`` below) as shapely geometries. Everything downstream
(:mod:`engine.evaluate`, :mod:`engine.crown_evaluation`, fine-tuning) works in that
one CRS. A source may name a layer of a multi-layer file as QGIS writes it:
``file.gpkg|layername=crowns``.

Each way a reference can be unusable is one :class:`~engine.errors.InputError`
sentence: no coordinate reference system, nothing over the raster, points and
polygons mixed, an area that misses the raster.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .evaluate import is_box

log = logging.getLogger(__name__)

POLYGONS, BOXES, POINTS = "polygons", "boxes", "points"


@dataclass(frozen=True)
class VectorData:
    """Geometries of one layer as read: WKB bytes, the layer's CRS as WKT (None when unknown), a name."""

    wkbs: tuple[bytes, ...]
    crs_wkt: str | None
    name: str


@dataclass(frozen=True)
class Reference:
    """Reference crowns in the cache's CRS. ``kind``: ``polygons``, ``boxes`` or ``points``."""

    kind: str
    geometries: tuple  # shapely Polygons or Points
    name: str

    def __len__(self) -> int:
        return len(self.geometries)


def split_source(source: str | Path) -> tuple[Path, str | None]:
    """``file.gpkg|layername=crowns`` -> (file.gpkg, "crowns"); a plain path -> (path, None)."""
    text = str(source)
    path, _, options = text.partition("|")
    layer = None
    for option in options.split("|"):
        key, _, value = option.partition("=")
        if key.strip().lower() == "layername" and value:
            layer = value
    return Path(path), layer


def read_vector(source: str | Path, what: str = "reference layer") -> VectorData:
    """Every geometry of a vector file's layer (the first, or the named one), as WKB with the layer's CRS."""
    from osgeo import ogr

    ogr.UseExceptions()
    path, layer_name = split_source(source)
    if not path.exists():
        raise InputError(f"The {what} {path} does not exist.")
    try:
        dataset = ogr.Open(str(path))
    except RuntimeError as exc:
        raise InputError(f"The {what} {path.name} is not a vector file OGR can read.") from exc
    if dataset is None or dataset.GetLayerCount() == 0:
        raise InputError(f"The {what} {path.name} has no vector layer.")
    layer = dataset.GetLayerByName(layer_name) if layer_name else dataset.GetLayer(0)
    if layer is None:
        raise InputError(f"The {what} {path.name} has no layer named {layer_name!r}.")
    srs = layer.GetSpatialRef()
    # A GeoPackage without a CRS reports GDAL's placeholders "Undefined geographic/cartesian SRS".
    unknown = srs is None or (srs.GetName() or "").lower().startswith("undefined")
    crs_wkt = None if unknown else srs.ExportToWkt()
    wkbs = []
    for feature in layer:
        geometry = feature.GetGeometryRef()
        if geometry is not None and not geometry.IsEmpty():
            wkbs.append(bytes(geometry.ExportToIsoWkb()))
    return VectorData(tuple(wkbs), crs_wkt, layer.GetName() if layer_name else path.name)


def write_vector(data: VectorData, path: Path) -> Path:
    """``data`` as a new GeoPackage layer (its CRS kept): how a layer open in QGIS reaches a child process."""
    from osgeo import ogr, osr

    ogr.UseExceptions()
    srs = None
    if data.crs_wkt:
        srs = osr.SpatialReference()
        srs.ImportFromWkt(data.crs_wkt)
    dataset = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = dataset.CreateLayer(Path(data.name).stem or "layer", srs, ogr.wkbUnknown)
    layer.StartTransaction()
    for wkb in data.wkbs:
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetGeometry(ogr.CreateGeometryFromWkb(wkb))
        layer.CreateFeature(feature)
    layer.CommitTransaction()
    dataset = None
    return path


def to_crs(data: VectorData, crs_wkt: str, what: str = "reference layer") -> list:
    """The layer's geometries as shapely geometries in ``crs_wkt``; a layer without a CRS is refused."""
    import shapely
    from osgeo import ogr, osr

    if not data.crs_wkt:
        raise InputError(f"The {what} {data.name} has no coordinate reference system; assign it one and try again.")
    src, dst = osr.SpatialReference(), osr.SpatialReference()
    try:
        src.ImportFromWkt(data.crs_wkt)
        dst.ImportFromWkt(crs_wkt)
    except RuntimeError as exc:
        raise InputError(f"The coordinate reference system of the {what} {data.name} is unknown.") from exc
    for srs in (src, dst):
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    same = bool(src.IsSame(dst))
    transform = None if same else osr.CoordinateTransformation(src, dst)
    out = []
    for wkb in data.wkbs:
        geometry = ogr.CreateGeometryFromWkb(wkb)
        try:
            failed = transform is not None and geometry.Transform(transform) != 0
        except RuntimeError:
            failed = True
        if failed:
            raise InputError(f"The {what} {data.name} cannot be reprojected into the raster's CRS; check its "
                             "coordinate reference system.")
        geometry.FlattenTo2D()
        out.append(shapely.from_wkb(bytes(geometry.ExportToIsoWkb())))
    return out


def raster_bounds_polygon(transform: list[float], width: int, height: int):
    """The raster's footprint in its CRS: the polygon of its four pixel corners (affine a, b, c, d, e, f)."""
    import shapely

    a, b, c, d, e, f = transform[:6]
    corners = [(0, 0), (width, 0), (width, height), (0, height)]
    return shapely.Polygon([(a * col + b * row + c, d * col + e * row + f) for col, row in corners])


def make_reference(geometries: list, footprint, name: str) -> Reference:
    """The reference features that lie over the raster ``footprint``, of one kind, parts exploded.

    Multi-part features become their parts (a point layer stored as multipoints is
    still points); polygons are ``boxes`` when every one is an axis-aligned rectangle.
    """
    import shapely

    parts = []
    for geometry in geometries:
        if geometry is None or geometry.is_empty:
            continue
        parts.extend(getattr(geometry, "geoms", [geometry]))
    kinds = {p.geom_type for p in parts}
    if kinds - {"Polygon", "Point"}:
        other = sorted(kinds - {"Polygon", "Point"})[0]
        raise InputError(f"The reference layer {name} holds {other} features; it needs crown polygons, boxes "
                         "or tree-top points.")
    if kinds == {"Polygon", "Point"}:
        raise InputError(f"The reference layer {name} mixes points and polygons; use one kind per layer.")
    parts = [shapely.make_valid(p) if p.geom_type == "Polygon" and not p.is_valid else p for p in parts]
    # make_valid may turn a bow-tie into a multipolygon: keep its polygonal parts as one crown.
    parts = [p if p.geom_type in ("Polygon", "Point", "MultiPolygon") else
             shapely.union_all([g for g in getattr(p, "geoms", []) if g.area > 0]) for p in parts]
    over = [p for p in parts if not p.is_empty and p.intersects(footprint)]
    if not over:
        count = f"{len(parts)} feature" + ("" if len(parts) == 1 else "s")
        raise InputError(f"None of the {count} of the reference layer {name} lies over the raster.")
    if kinds == {"Point"}:
        kind = POINTS
    else:
        kind = BOXES if all(is_box(p) for p in over) else POLYGONS
    log.info("reference %s: %d %s over the raster", name, len(over), kind)
    return Reference(kind, tuple(over), name)


def make_area(geometries: list, footprint, name: str):
    """The union of an area layer's polygons, clipped to the raster ``footprint``."""
    import shapely

    polygons = [g for g in geometries if g is not None and g.geom_type in ("Polygon", "MultiPolygon")]
    if not polygons:
        raise InputError(f"The area {name} has no polygons.")
    area = shapely.intersection(shapely.union_all([shapely.make_valid(p) for p in polygons]), footprint)
    if area.is_empty or area.area <= 0:
        raise InputError(f"The area {name} lies outside the raster.")
    return area


def default_area(reference: Reference, footprint):
    """Where a reference without an area is taken to be complete: its features' envelope, within the raster."""
    import shapely

    xs, ys = [], []
    for geometry in reference.geometries:
        x0, y0, x1, y1 = geometry.bounds
        xs += [x0, x1]
        ys += [y0, y1]
    box = shapely.box(min(xs), min(ys), max(xs), max(ys))
    if box.area == 0:  # one point, or points on a line: a box of at least 1 map unit around them
        box = box.buffer(1.0, cap_style="square")
    return shapely.intersection(box, footprint)


def representative_points(geometries) -> np.ndarray:
    """Shapely points inside each geometry (a point stays itself): what decides "inside the area"."""
    import shapely

    return shapely.point_on_surface(np.asarray(list(geometries), object))
