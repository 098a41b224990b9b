"""Crown polygons of one tile: its instance labels vectorised, kept once across tiles, and measured.

Input is a label image in model pixels of the tile (a north-up grid at the gsd
in the working CRS); output is :class:`Crown` records in the source CRS. Two
rules keep every instance exactly once across overlapping tiles:

* a crown (an instance of a kind that owns instances whole) belongs to the tile
  whose core holds its centroid: neighbouring tiles see a crown within their
  shared margin identically, so exactly one of them owns it. A crown reaching
  further than the margin past a core is kept, cut at the tile's edge, rather
  than lost; overlaps should exceed the largest crown radius;
* a region of a kind that clips to the core (semantic canopy patches, which can
  span any number of tiles) is cut to the core: each piece of ground is stored
  once, patches split along core borders.

Geometry is shapely 2, vectorised over the tile's polygons: pin-holes filled,
simplified to half a model pixel, clipped, and measured in metres
(``area_m2``, ``perimeter_m``, ``diam_m``: the diameter of the circle of equal
area) in a metric CRS even when the source CRS is geographic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import shapely
from osgeo import gdal, ogr

from ..models.kinds import Instances, OutputKind
from ..models.spec import ModelSpec
from ..tiling.grid import Tile, apply, invert, window_transform
from .ogr_memory import vector_dataset

# Interior rings smaller than this are artefacts of the pixel grid (a few pixels
# below the threshold inside a crown), not gaps in the canopy: they are filled.
MIN_HOLE_AREA_M2 = 2.0
MEASUREMENTS = ("area_m2", "perimeter_m", "diam_m")

gdal.UseExceptions()
ogr.UseExceptions()


@dataclass(frozen=True)
class Crown:
    """One crown polygon in the source CRS, as WKB, with its attributes (its id is given at commit time).

    ``attributes`` holds the measurements (:data:`MEASUREMENTS`) and any extra
    per-instance values a kind provides.
    """

    wkb: bytes
    score: float
    class_name: str
    class_idx: int
    attributes: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class CrownGrid:
    """The geometry facts vectorising needs besides the tile: source grid and CRS mappers.

    ``to_src`` / ``to_work`` map coordinate arrays between the working CRS and the
    source CRS (both None when they are the same CRS). ``work_units_per_m`` is
    the working CRS's linear units per metre.
    """

    src_transform: tuple
    to_src: object = None
    to_work: object = None
    work_units_per_m: float = 1.0


def _owned_labels(inst: Instances, tile: Tile, kind: OutputKind, grid: CrownGrid, min_area_px: float) -> np.ndarray:
    """Label values this tile stores: present, large enough, and (for crowns) centred in the core."""
    labels = inst.labels
    n = inst.count
    k = inst.stride
    flat = labels.ravel()
    counts = (inst.pixels if inst.pixels is not None else np.bincount(flat, minlength=n + 1))[1:]
    owned = counts > 0
    if not kind.filters_small:
        owned &= counts * (k * k) >= min_area_px
    if not kind.clips_to_core:
        h, w = labels.shape
        with np.errstate(invalid="ignore", divide="ignore"):
            # Pixel centres: label pixel (col, row) covers model pixels [k * col, k * (col + 1)).
            cols = np.bincount(flat, weights=np.tile(np.arange(w, dtype=np.float64), h), minlength=n + 1)[1:]
            rows = np.bincount(flat, weights=np.repeat(np.arange(h, dtype=np.float64), w), minlength=n + 1)[1:]
            cx = (cols / counts + 0.5) * k
            cy = (rows / counts + 0.5) * k
        owned &= core_holds(tile, grid, cx, cy)
    return np.arange(1, n + 1)[owned]


def core_holds(tile: Tile, grid: CrownGrid, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Whether the tile's core holds each point given in model pixels (its source pixel is in the core)."""
    if tile.offset_px is not None:
        sx, sy = xs + tile.offset_px[0], ys + tile.offset_px[1]
    else:
        wx, wy = apply(tile.transform, xs, ys)
        if grid.to_src is not None:
            wx, wy = grid.to_src(wx, wy)
        sx, sy = apply(invert(grid.src_transform), np.asarray(wx), np.asarray(wy))
    col, row, w, h = tile.core_px
    return (sx >= col) & (sx < col + w) & (sy >= row) & (sy < row + h)


def _fill_small_holes(polygons: np.ndarray, min_area: float) -> np.ndarray:
    """Polygons without their interior rings smaller than ``min_area`` (CRS units squared)."""
    holed = np.flatnonzero(shapely.get_num_interior_rings(polygons) > 0)
    if holed.size == 0:
        return polygons
    # All rings at once (each polygon's exterior first, then its holes): areas are one
    # vectorised call instead of a Python loop over thousands of pin-holes.
    rings, owner = shapely.get_rings(polygons[holed], return_index=True)
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    ends = np.r_[starts[1:], len(rings)]
    big = shapely.area(shapely.polygons(rings)) >= min_area
    for j, (s, e) in enumerate(zip(starts, ends)):
        holes = rings[s + 1 : e][big[s + 1 : e]]
        if len(holes) < e - s - 1:
            polygons[holed[j]] = shapely.Polygon(rings[s], list(holes))
    return polygons


def _map_coordinates(geoms: np.ndarray, mapper) -> np.ndarray:
    return shapely.transform(geoms, lambda xy: np.column_stack(mapper(xy[:, 0], xy[:, 1])))


def measure(polygons: np.ndarray, grid: CrownGrid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Area (m²), perimeter (m) and equal-area circle diameter (m) of source-CRS polygons.

    Measured in the source CRS when it is the (metric) working CRS, else mapped back to it.
    """
    metric = _map_coordinates(polygons, grid.to_work) if grid.to_work is not None else polygons
    scale = 1.0 if grid.to_work is not None else 1.0 / grid.work_units_per_m
    areas = shapely.area(metric) * scale**2
    perimeters = shapely.length(metric) * scale
    return areas, perimeters, 2.0 * np.sqrt(areas / np.pi)


def label_polygons(labels: np.ndarray, transform: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Label values and polygons of the 4-connected regions of int32 ``labels`` (0: none), in ``transform``'s
    space, ordered by value, then by their top and left edges.

    Traced by GDAL's Polygonize through GDAL's own bindings, which release the GIL while it
    runs: rasterio's ``shapes`` holds it while tracing and while building every vertex as a
    Python tuple, which was half of all the GIL a light model's run held and kept its two
    post-processing threads from running at once. Polygons come back as WKB and are
    normalised (each ring in a fixed orientation from a fixed vertex), so neither GDAL's
    version nor the order in which it walks the rings changes a crown.
    """
    h, w = labels.shape
    raster = gdal.GetDriverByName("MEM").Create("", w, h, 1, gdal.GDT_Int32)
    a, b, c, d, e, f = transform
    raster.SetGeoTransform((c, a, b, f, d, e))
    band = raster.GetRasterBand(1)
    band.WriteArray(labels)
    source = vector_dataset()
    layer = source.CreateLayer("regions", geom_type=ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("value", ogr.OFTInteger))
    gdal.Polygonize(band, band, layer, 0, [])  # the band is its own mask: label 0 is left out
    values, wkbs = [], []
    for feature in layer:
        values.append(feature.GetField(0))
        wkbs.append(bytes(feature.GetGeometryRef().ExportToWkb()))
    if not values:
        return np.zeros(0, int), np.zeros(0, dtype=object)
    values = np.asarray(values)
    polygons = shapely.normalize(shapely.from_wkb(wkbs))
    bounds = shapely.bounds(polygons)
    order = np.lexsort((bounds[:, 0], -bounds[:, 3] if e < 0 else bounds[:, 1], values))
    return values[order], polygons[order]


def tile_crowns(spec: ModelSpec, inst: Instances, tile: Tile, grid: CrownGrid, min_area_px: float) -> list[Crown]:
    """The crowns this tile stores, in label order, as :class:`Crown` records in the source CRS."""
    if inst.boxes is not None:
        # Detectors own their boxes by the box centre and draw crowns from boxes
        # (imported here: that module builds on this one's Crown and CrownGrid).
        from .boxes import tile_box_crowns

        return tile_box_crowns(spec, inst, tile, grid)
    kind = spec.kind
    keep = _owned_labels(inst, tile, kind, grid, min_area_px)
    if keep.size == 0:
        return []
    lut = np.zeros(inst.count + 1, np.int32)
    lut[keep] = keep
    a, b, c, d, e, f = tile.transform
    window_t = (a * inst.stride, b, c, d, e * inst.stride, f)  # the label grid (north-up)
    core = None
    col, row, w, h = tile.core_px
    window = tile.core_in_tile
    if kind.clips_to_core and window is not None and inst.stride == 1:
        # Aligned grids: the core is a window of the tile, so cut the labels there
        # instead of intersecting polygons (exact, and far cheaper).
        kept = lut[inst.labels[window]]
        window_t = window_transform(tile.transform, window[1].start, window[0].start)
    else:
        kept = lut[inst.labels]
        if kind.clips_to_core:
            xs, ys = apply(grid.src_transform, np.array([col, col + w, col + w, col], float),
                           np.array([row, row, row + h, row + h], float))
            core = shapely.Polygon(np.column_stack([xs, ys]))

    values, polygons = label_polygons(kept, window_t)
    if not kind.clips_to_core:
        # One polygon per crown: its largest part (a crown is one connected piece).
        order = np.lexsort((-shapely.area(polygons), values))
        first = np.ones(order.size, bool)
        first[1:] = values[order][1:] != values[order][:-1]
        chosen = np.sort(order[first])
        values, polygons = values[chosen], polygons[chosen]

    units2_per_m2 = grid.work_units_per_m**2
    polygons = _fill_small_holes(polygons, MIN_HOLE_AREA_M2 * units2_per_m2)
    polygons = shapely.simplify(polygons, abs(window_t[0]) * 0.5, preserve_topology=True)
    if grid.to_src is not None:
        polygons = _map_coordinates(polygons, grid.to_src)
    if core is not None:
        polygons = shapely.intersection(polygons, core)
        parts, index = shapely.get_parts(polygons, return_index=True)
        is_polygon = (shapely.get_type_id(parts) == shapely.GeometryType.POLYGON) & (shapely.area(parts) > 0)
        polygons, values = parts[is_polygon], values[index[is_polygon]]
    nonempty = ~shapely.is_empty(polygons)
    polygons, values = polygons[nonempty], values[nonempty]

    areas, perimeters, diameters = measure(polygons, grid)
    wkbs = shapely.to_wkb(polygons, byte_order=1)
    extra = {name: np.asarray(column) for name, column in inst.attributes.items()}
    crowns = []
    for i, label in enumerate(values):
        class_i = int(inst.classes[label])
        attributes = {"area_m2": round(float(areas[i]), 3), "perimeter_m": round(float(perimeters[i]), 3),
                      "diam_m": round(float(diameters[i]), 3)}
        attributes.update({name: column[label].item() for name, column in extra.items()})
        crowns.append(Crown(wkbs[i], float(inst.scores[label]), spec.class_names[class_i], class_i, attributes))
    return crowns
