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

Geometry is shapely 2 and numpy, vectorised over the tile's polygons: pin-holes
filled, outlines smoothed on the traced grid so that neighbours' shared edges stay
shared (:func:`smooth_outlines`), clipped, and measured in metres (``area_m2``,
``perimeter_m``, ``diam_m``: the diameter of the circle of equal area) in a metric
CRS even when the source CRS is geographic. No two crowns of a tile overlap
(:func:`cut_overlaps`); crowns of neighbouring tiles are cut as they commit
(:mod:`engine.postprocess.seams`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

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
# Traced outlines are smoothed (smooth_outlines), except at corners between two straight runs
# of at least this many pixels of the grid traced: those are the shape's corners, not steps.
CORNER_RUN_PX = 8
# Passes of the filter along each ring, alternately halfway to the neighbours' mean and 0.53 of
# the way back (Taubin's pair: steps smoothed, area kept; -0.53 puts the pair's pass band
# at features of about 10 pixels and more along the ring).
SMOOTHING_PASSES = 6
SMOOTHING_STEPS = (0.5, -0.53)
# Smoothed outlines have a point per pixel edge; in each of SIMPLIFY_ROUNDS rounds, every other
# one within this (pixels) of its neighbours' chord goes.
SIMPLIFY_PX = 0.1
SIMPLIFY_ROUNDS = 2
# Crowns sharing less than this (in pixels of the grid traced) only touch: floating-point dust.
OVERLAP_TOLERANCE_PX2 = 1e-4
PIXEL_SPACE = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # a label image traced in its own pixel coordinates

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


def _owned_labels(inst: Instances, tile: Tile, kind: OutputKind, grid: CrownGrid, min_area_px: float,
                  crown_label: np.ndarray) -> np.ndarray:
    """Label values this tile stores: present, large enough (crown labels), and (for crowns) centred in the core."""
    labels = inst.labels
    n = inst.count
    k = inst.stride
    flat = labels.ravel()
    counts = (inst.pixels if inst.pixels is not None else np.bincount(flat, minlength=n + 1))[1:]
    owned = counts > 0
    if not kind.filters_small:
        owned &= (counts * (k * k) >= min_area_px) | ~crown_label[1:]
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


def _fill_small_holes(polygons: np.ndarray, min_area: float, where: np.ndarray | bool = True) -> np.ndarray:
    """Polygons (those ``where`` says) without their interior rings smaller than ``min_area`` (CRS units squared)."""
    holed = np.flatnonzero((shapely.get_num_interior_rings(polygons) > 0) & where)
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


def smooth_outlines(polygons: np.ndarray, labels: np.ndarray,
                    passes: int = SMOOTHING_PASSES) -> tuple[np.ndarray, np.ndarray]:
    """Polygons traced from ``labels`` in its pixel coordinates (edges along pixel edges), smoothed.

    Each ring is redrawn through the midpoints of its pixel edges (the outline marching
    squares draws), then each point moves ``passes`` times towards the mean of its two
    neighbours along the ring, by the factors of :data:`SMOOTHING_STEPS` in turn: steps
    of the pixel staircase melt into slopes and curves, the outline moves by about a
    pixel at most and a crown keeps its area to about a per cent. Last, twice, every
    other point that lies within :data:`SIMPLIFY_PX` of its neighbours' chord goes.

    Some pixel corners stay where they are: those where three regions meet (or two
    meet corner to corner), so that a stretch of boundary two regions share runs
    between the same fixed ends in both rings; and corners between two straight runs
    of at least :data:`CORNER_RUN_PX` pixels, which are the shape's own (a tile's or
    the image's edge, a square). Every step is the same walked either way along a
    ring, so two regions of one label image that share a boundary still share it,
    bit for bit: smoothing adds no overlap. Returns the polygons and which of them
    folded onto themselves (a pixel-wide neck) and were repaired: only those may
    overlap a neighbour.
    """
    if polygons.size == 0:
        return polygons, np.zeros(0, bool)
    rings, owner = shapely.get_rings(polygons, return_index=True)
    coords, ring_of = shapely.get_coordinates(rings, return_index=True)
    open_ = np.r_[ring_of[1:] == ring_of[:-1], False]  # each ring's closing vertex dropped
    corner, ring_of = coords[open_], ring_of[open_]
    first, n = _ring_layout(ring_of)
    pos = np.arange(len(ring_of)) - first
    edge = corner[first + (pos + 1) % n] - corner  # from each corner to the next, along the pixel edges
    run = np.rint(np.abs(edge).sum(axis=1)).astype(np.int64)  # its length in pixels
    direction = edge / np.maximum(run, 1)[:, None]  # exactly a unit vector along an axis
    pinned = _junctions(labels)
    shape_corner = np.minimum(run[first + (pos - 1) % n], run) >= CORNER_RUN_PX
    pinned[corner[shape_corner, 1].astype(np.int64), corner[shape_corner, 0].astype(np.int64)] = True

    # Every pixel edge of every ring: its midpoint, then its end corner when that is pinned.
    edge_of = np.repeat(np.arange(len(corner)), run)
    k = np.arange(len(edge_of)) - np.repeat(np.cumsum(run) - run, run)
    start = corner[edge_of] + k[:, None] * direction[edge_of]
    middle = start + 0.5 * direction[edge_of]
    end = (start + direction[edge_of]).astype(np.int64)
    end_pinned = pinned[end[:, 1], end[:, 0]]
    at = np.cumsum(1 + end_pinned) - (1 + end_pinned)
    points = np.empty((len(edge_of) + int(end_pinned.sum()), 2))
    points[at] = middle
    points[at[end_pinned] + 1] = end[end_pinned]
    fixed = np.zeros(len(points), bool)
    fixed[at[end_pinned] + 1] = True
    # Which pixel edge a midpoint is on decides when it may go: the same in both rings along it.
    rank = np.full(len(points), -1, np.int64)
    rank[at] = (np.floor(middle[:, 0]) + np.floor(middle[:, 1])).astype(np.int64)
    point_ring = np.repeat(ring_of[edge_of], 1 + end_pinned)

    first, n = _ring_layout(point_ring)
    pos = np.arange(len(point_ring)) - first
    before, after = first + (pos - 1) % n, first + (pos + 1) % n
    moving = np.flatnonzero(~fixed)
    before, after = before[moving], after[moving]
    x, y = points[:, 0].copy(), points[:, 1].copy()
    for i in range(passes):
        # Taubin's pair of steps: halfway to the neighbours' mean, then back out a little
        # further, so the outline loses its steps without shrinking the crown.
        step = SMOOTHING_STEPS[i % 2]
        mx, my = x[moving], y[moving]
        x[moving] = mx + step * ((x[before] + x[after]) * 0.5 - mx)
        y[moving] = my + step * ((y[before] + y[after]) * 0.5 - my)
    for level in range(SIMPLIFY_ROUNDS):
        # Along a run the ranks count up by one: each round may drop every other point left.
        first, n = _ring_layout(point_ring)
        pos = np.arange(len(point_ring)) - first
        before, after = first + (pos - 1) % n, first + (pos + 1) % n
        bx, by, ax, ay = x[before] - x, y[before] - y, x[after] - x, y[after] - y
        twice_area = np.abs(bx * ay - by * ax)
        chord2 = (x[after] - x[before]) ** 2 + (y[after] - y[before]) ** 2
        drop = ((rank >= 0) & ((rank >> level) & 1 == 0) & (n >= 8)
                & (twice_area**2 <= SIMPLIFY_PX**2 * chord2))
        x, y, rank, point_ring = x[~drop], y[~drop], rank[~drop], point_ring[~drop]
    points = np.column_stack([x, y])

    smoothed = shapely.polygons(shapely.linearrings(points, indices=point_ring), indices=owner)
    # A pixel-wide neck can fold onto itself: such a crown is repaired and keeps its largest piece.
    folded = ~shapely.is_valid(smoothed)
    for i in np.flatnonzero(folded):
        parts = shapely.get_parts(shapely.make_valid(smoothed[i]))
        parts = parts[shapely.get_type_id(parts) == shapely.GeometryType.POLYGON]
        smoothed[i] = parts[np.argmax(shapely.area(parts))] if parts.size else polygons[i]
    return smoothed, folded


def _junctions(labels: np.ndarray) -> np.ndarray:
    """(H + 1, W + 1) pixel corners of ``labels`` where three regions meet, or two meet corner to corner."""
    padded = np.pad(labels, 1)
    a, b, c, d = padded[:-1, :-1], padded[:-1, 1:], padded[1:, :-1], padded[1:, 1:]
    distinct = 1 + (b != a) + ((c != a) & (c != b)) + ((d != a) & (d != b) & (d != c))
    return (distinct >= 3) | ((a == d) & (b == c) & (a != b))


def _ring_layout(ring_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For points listed ring by ring, each point's ring's first index and its ring's point count."""
    starts = np.flatnonzero(np.r_[True, ring_of[1:] != ring_of[:-1]])
    counts = np.diff(np.r_[starts, len(ring_of)])
    return np.repeat(starts, counts), np.repeat(counts, counts)


def cut_overlaps(polygons: np.ndarray, earlier: np.ndarray | None = None, *, min_overlap: float = 0.0,
                 among: bool = True, suspects: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Polygons cut so that none overlaps another or any of ``earlier`` by more than ``min_overlap``.

    A polygon loses what it shares with ``earlier`` and with the polygons before it in
    ``polygons`` (as they are after their own cut): the first comer keeps the ground.
    What remains is the polygon's largest part (a crown is one piece); a polygon left
    with less than half its area is a second outline of a crown already stored (two
    tiles each saw it centred in their own core) and is dropped. ``among=False`` leaves
    overlaps within ``polygons`` alone (they are known not to overlap), and ``suspects``
    (a mask) looks only at pairs within ``polygons`` of which one is a suspect. Returns the
    polygons and, as boolean masks over the input, which are kept and which were cut.
    """
    kept = np.ones(len(polygons), bool)
    cut = np.zeros(len(polygons), bool)
    if len(polygons) == 0:
        return polygons, kept, cut
    earlier = np.zeros(0, dtype=object) if earlier is None else earlier
    everything = np.concatenate([earlier, polygons])
    n_earlier = len(earlier)
    mine, other = shapely.STRtree(everything).query(polygons)  # pairs whose boxes meet
    other_index = other - n_earlier  # < 0: one of ``earlier``
    pairs = other_index < (mine if among else 0)
    if suspects is not None:
        pairs &= (other_index < 0) | suspects[mine] | suspects[np.maximum(other_index, 0)]
    mine, other = mine[pairs], other[pairs]
    # Only pairs whose interiors meet (most neighbours only share edges) are intersected:
    # the relation is a third of the cost of an intersection.
    inside = shapely.relate_pattern(polygons[mine], everything[other], "T********")
    mine, other = mine[inside], other[inside]
    if mine.size == 0:
        return polygons, kept, cut
    shared = shapely.area(shapely.intersection(polygons[mine], everything[other]))
    overlapping = shared > min_overlap
    mine, other = mine[overlapping], other[overlapping]
    if mine.size == 0:
        return polygons, kept, cut
    polygons = polygons.copy()
    for i in np.unique(mine):
        rivals = other[mine == i]
        cutters = [everything[j] if j < n_earlier else polygons[j - n_earlier] for j in rivals
                   if j < n_earlier or kept[j - n_earlier]]
        if not cutters:
            continue
        whole = polygons[i]
        rest = shapely.difference(whole, shapely.union_all(cutters))
        parts = shapely.get_parts(rest)
        parts = parts[shapely.get_type_id(parts) == shapely.GeometryType.POLYGON]
        if parts.size == 0:
            kept[i] = False
            continue
        largest = parts[np.argmax(shapely.area(parts))]
        if shapely.area(largest) < 0.5 * shapely.area(whole):
            kept[i] = False
            continue
        polygons[i] = shapely.normalize(largest)
        cut[i] = True
    return polygons, kept, cut


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
    if inst.labels.ndim == 3:  # one label image per model output (their regions may overlap)
        return [crown for layer in inst.labels
                for crown in tile_crowns(spec, replace(inst, labels=layer, pixels=None), tile, grid, min_area_px)]
    kind = spec.kind
    # Crown rules (the smallest regions dropped, pin-holes filled) apply to crown classes only.
    crown_of_class = np.asarray(spec.crown_classes or (True,) * len(spec.class_names), bool)
    crown_label = crown_of_class[inst.classes]
    keep = _owned_labels(inst, tile, kind, grid, min_area_px, crown_label)
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

    values, polygons = label_polygons(kept, PIXEL_SPACE)
    if not kind.clips_to_core:
        # One polygon per crown: its largest part (a crown is one connected piece).
        order = np.lexsort((-shapely.area(polygons), values))
        first = np.ones(order.size, bool)
        first[1:] = values[order][1:] != values[order][:-1]
        chosen = np.sort(order[first])
        values, polygons = values[chosen], polygons[chosen]

    pixel_units2 = abs(window_t[0] * window_t[4] - window_t[1] * window_t[3])
    holes = shapely.get_num_interior_rings(polygons)
    polygons = _fill_small_holes(polygons, MIN_HOLE_AREA_M2 * grid.work_units_per_m**2 / pixel_units2,
                                 crown_label[values])
    filled = shapely.get_num_interior_rings(polygons) < holes
    polygons, folded = smooth_outlines(polygons, kept)
    suspects = filled | folded
    polygons = _map_coordinates(polygons, lambda x, y: apply(window_t, x, y))
    if grid.to_src is not None:
        polygons = _map_coordinates(polygons, grid.to_src)
    if core is not None:
        polygons = shapely.intersection(polygons, core)
        parts, index = shapely.get_parts(polygons, return_index=True)
        is_polygon = (shapely.get_type_id(parts) == shapely.GeometryType.POLYGON) & (shapely.area(parts) > 0)
        polygons, values, suspects = parts[is_polygon], values[index[is_polygon]], suspects[index[is_polygon]]
    nonempty = ~shapely.is_empty(polygons)
    polygons, values, suspects = polygons[nonempty], values[nonempty], suspects[nonempty]
    if not kind.clips_to_core and suspects.any():
        # Outlines of one label image share their edges, smoothed or not; but a crown whose hole
        # was filled covers what lay in the hole, and a repaired fold may cross its neighbour's
        # edge: the earlier crown keeps what both cover.
        polygons, kept_crowns, _ = cut_overlaps(polygons, min_overlap=pixel_units2 * OVERLAP_TOLERANCE_PX2,
                                                suspects=suspects)
        polygons, values = polygons[kept_crowns], values[kept_crowns]

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
