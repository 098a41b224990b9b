"""A detector's boxes as crowns: split canopy, inscribed ellipses or the boxes, each stored once.

Works on one tile in model pixels: x to the right, y down, coordinates on pixel
edges (pixel (col, row) covers [col, col + 1) x [row, row + 1)), the tile's
transform mapping them to the working CRS. A box is ``(xmin, ymin, xmax, ymax,
angle)``: the rectangle before rotation and its rotation about its centre in
radians, turning +x towards +y (Deepness's convention for oriented boxes; 0 for
axis-aligned boxes). Output crowns are in the source CRS.

* **Once across tiles**: a box belongs to the tile whose core holds its centre,
  the same rule as crowns. Neighbouring tiles that see a tree whole (a box smaller
  than the overlap's margin past the seam) predict it from the same pixels, so
  exactly one of them stores it. A box is never cut: one reaching past the tile
  is kept whole.
* **Crown geometry** (:class:`~engine.settings.BoxGeometry`): with ``crowns``, a
  box's crown is the canopy inside it when the model gives a canopy map
  (:func:`split_canopy`: canopy pixels inside overlapping boxes go to the box
  whose centre they drain to, a watershed seeded at the box centres), as long as
  that region covers :data:`MIN_CANOPY_FRACTION` of the box's inscribed ellipse;
  otherwise the ellipse inscribed in the box. With ``boxes``, the box itself.
* **Attributes**: the box in the source CRS (``box_xmin``, ``box_ymin``,
  ``box_xmax``, ``box_ymax``: the envelope of its four corners there, which is the
  box itself for axis-aligned boxes on a north-up raster), ``box_angle`` in
  degrees, and the measurements of :mod:`engine.postprocess.vectorise`.
* **Confidence** (the semantic cache of a detector run): each pixel holds the
  best score among the boxes of its class whose crown covers it (:func:`box_confidence`).
"""

from __future__ import annotations

import math

import numpy as np
import shapely
from scipy import ndimage

from ..models.kinds import Instances
from ..models.spec import ModelSpec
from ..settings import BoxGeometry
from ..tiling.grid import Tile, apply
from .vectorise import (
    MIN_HOLE_AREA_M2,
    OVERLAP_TOLERANCE_PX2,
    PIXEL_SPACE,
    Crown,
    CrownGrid,
    _fill_small_holes,
    _map_coordinates,
    core_holds,
    cut_overlaps,
    label_polygons,
    measure,
    smooth_outlines,
)

ELLIPSE_VERTICES = 48
# A canopy region smaller than this share of the box's inscribed ellipse is not a crown
# (a few canopy pixels at a box's edge); the ellipse is drawn instead.
MIN_CANOPY_FRACTION = 0.25


def box_centres(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 5)
    return (boxes[:, 0] + boxes[:, 2]) / 2.0, (boxes[:, 1] + boxes[:, 3]) / 2.0


def _rotate(xs: np.ndarray, ys: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points (N, K) relative to each box's centre, rotated by its angle and moved to the centre."""
    cx, cy = box_centres(boxes)
    cos, sin = np.cos(boxes[:, 4])[:, None], np.sin(boxes[:, 4])[:, None]
    return cx[:, None] + cos * xs - sin * ys, cy[:, None] + sin * xs + cos * ys


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """(N, 4, 2) corners of each box in model pixels, in ring order, rotated by its angle."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 5)
    hw, hh = (boxes[:, 2] - boxes[:, 0])[:, None] / 2.0, (boxes[:, 3] - boxes[:, 1])[:, None] / 2.0
    xs = np.concatenate([-hw, -hw, hw, hw], axis=1)
    ys = np.concatenate([-hh, hh, hh, -hh], axis=1)
    return np.stack(_rotate(xs, ys, boxes), axis=2)


def ellipse_outlines(boxes: np.ndarray, vertices: int = ELLIPSE_VERTICES) -> np.ndarray:
    """(N, vertices, 2) outline of the ellipse inscribed in each box, in model pixels."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 5)
    t = np.linspace(0.0, 2.0 * np.pi, vertices, endpoint=False)[None, :]
    a, b = (boxes[:, 2] - boxes[:, 0])[:, None] / 2.0, (boxes[:, 3] - boxes[:, 1])[:, None] / 2.0
    return np.stack(_rotate(a * np.cos(t), b * np.sin(t), boxes), axis=2)


def _shape_mask(box: np.ndarray, shape: tuple[int, int], ellipse: bool) -> tuple[tuple[slice, slice], np.ndarray]:
    """The window of the tile a box covers and, in it, the pixels whose centre lies in the box (or its ellipse)."""
    corners = box_corners(box)[0]
    h, w = shape
    c0, r0 = max(0, int(math.floor(corners[:, 0].min()))), max(0, int(math.floor(corners[:, 1].min())))
    c1, r1 = min(w, int(math.ceil(corners[:, 0].max()))), min(h, int(math.ceil(corners[:, 1].max())))
    if c1 <= c0 or r1 <= r0:
        return (slice(0, 0), slice(0, 0)), np.zeros((0, 0), bool)
    (cx,), (cy,) = box_centres(box)
    xs = np.arange(c0, c1, dtype=np.float64)[None, :] + 0.5 - cx
    ys = np.arange(r0, r1, dtype=np.float64)[:, None] + 0.5 - cy
    cos, sin = math.cos(box[4]), math.sin(box[4])
    u, v = cos * xs + sin * ys, -sin * xs + cos * ys  # the pixel centre in the box's own axes
    a, b = max((box[2] - box[0]) / 2.0, 1e-9), max((box[3] - box[1]) / 2.0, 1e-9)
    inside = (u / a) ** 2 + (v / b) ** 2 <= 1.0 if ellipse else (np.abs(u) <= a) & (np.abs(v) <= b)
    return (slice(r0, r1), slice(c0, c1)), inside


def split_canopy(canopy: np.ndarray, boxes: np.ndarray, seg_thresh: float) -> np.ndarray:
    """Label image (int32; box i is label i + 1) of the canopy inside the boxes.

    Canopy pixels (``canopy > seg_thresh``) inside at least one box are split by a
    watershed of the inverted canopy seeded at the box centres, so boundaries follow
    the gaps between crowns; a pixel that drained to a box that does not hold it
    goes to the nearest centre, relative to box size, among the boxes holding it.
    Regions smaller than :data:`MIN_CANOPY_FRACTION` of their box's ellipse are dropped.
    """
    shape = canopy.shape
    boxes = np.asarray(boxes, np.float64).reshape(-1, 5)
    labels = np.zeros(shape, np.int32)
    if not len(boxes):
        return labels
    mask = canopy > seg_thresh
    holders = [_shape_mask(box, shape, ellipse=False) for box in boxes]
    covered = np.zeros(shape, bool)
    for window, inside in holders:
        covered[window] |= inside
    region = mask & covered
    if not region.any():
        return labels
    cx, cy = box_centres(boxes)
    markers = np.where(region, 0, -1).astype(np.int32)
    cols = np.clip(np.floor(cx).astype(int), 0, shape[1] - 1)
    rows = np.clip(np.floor(cy).astype(int), 0, shape[0] - 1)
    # Strongest box last, so it keeps a centre pixel two boxes share.
    for i in range(len(boxes) - 1, -1, -1):
        markers[rows[i], cols[i]] = i + 1
    cost = np.round((1.0 - np.clip(canopy, 0.0, 1.0)) * 255.0).astype(np.uint8)
    drained = ndimage.watershed_ift(cost, markers)
    drained[~region] = 0
    best = np.full(shape, np.inf)
    for i, (window, inside) in enumerate(holders):
        own = inside & (drained[window] == i + 1)
        labels[window][own] = i + 1
    for i, (window, inside) in enumerate(holders):
        todo = inside & region[window] & (labels[window] <= 0)
        if not todo.any():
            continue
        rr, cc = np.nonzero(todo)
        w, h = max(boxes[i, 2] - boxes[i, 0], 1e-9), max(boxes[i, 3] - boxes[i, 1], 1e-9)
        dist = ((cc + window[1].start + 0.5 - cx[i]) / w) ** 2 + ((rr + window[0].start + 0.5 - cy[i]) / h) ** 2
        sub_best = best[window]
        closer = dist < sub_best[rr, cc]
        sub_best[rr[closer], cc[closer]] = dist[closer]
        pending = np.zeros_like(todo)
        pending[rr[closer], cc[closer]] = True
        labels[window][pending] = -(i + 1)  # provisional: a later, nearer box may still take them
    labels = np.abs(labels)
    counts = np.bincount(labels.ravel(), minlength=len(boxes) + 1)
    ellipse_px = np.pi * (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / 4.0
    small = np.concatenate([[False], counts[1:] < MIN_CANOPY_FRACTION * ellipse_px])
    labels[small[labels]] = 0
    return labels


def box_confidence(shape: tuple[int, int], boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
                   n_classes: int, geometry: str, labels: np.ndarray | None = None) -> np.ndarray:
    """(n_classes, H, W) float32: the best score among each class's boxes whose crown covers the pixel.

    A box's crown is its region of ``labels`` (label i + 1) when it has one, else its
    inscribed ellipse (``crowns`` geometry) or the box itself (``boxes``).
    """
    probs = np.zeros((n_classes,) + tuple(shape), np.float32)
    has_region = np.zeros(len(boxes) + 1, bool)
    if labels is not None and len(boxes):
        has_region[np.unique(labels)] = True
    for i in np.argsort(scores, kind="stable"):  # best last, so it wins
        cls, score = int(classes[i]), np.float32(scores[i])
        if has_region[i + 1]:
            probs[cls][labels == i + 1] = np.maximum(probs[cls][labels == i + 1], score)
            continue
        window, inside = _shape_mask(boxes[i], shape, ellipse=geometry != BoxGeometry.BOXES.value)
        sub = probs[cls][window]
        sub[inside] = np.maximum(sub[inside], score)
    return probs


def _to_source(points: np.ndarray, tile: Tile, grid: CrownGrid) -> tuple[np.ndarray, np.ndarray]:
    """Model-pixel points (..., 2) of the tile → source-CRS x and y arrays of the same leading shape."""
    xs, ys = apply(tile.transform, points[..., 0], points[..., 1])
    if grid.to_src is not None:
        flat_x, flat_y = grid.to_src(np.ravel(xs), np.ravel(ys))
        xs, ys = np.reshape(flat_x, np.shape(xs)), np.reshape(flat_y, np.shape(ys))
    return np.asarray(xs, np.float64), np.asarray(ys, np.float64)


def _region_polygons(labels: np.ndarray, wanted: np.ndarray, tile: Tile, grid: CrownGrid) -> dict[int, object]:
    """Label value → its largest polygon in the working CRS, holes under MIN_HOLE_AREA_M2 filled, smoothed."""
    lut = np.zeros(max(int(labels.max()), int(wanted.max())) + 1, np.int32)
    lut[wanted] = wanted
    kept = lut[labels]
    values, polygons = label_polygons(kept, PIXEL_SPACE)
    if not len(values):
        return {}
    order = np.lexsort((-shapely.area(polygons), values))
    first = np.ones(order.size, bool)
    first[1:] = values[order][1:] != values[order][:-1]
    chosen = order[first]
    a, b, _, d, e, _ = tile.transform
    pixel_units2 = abs(a * e - b * d)
    polygons = _fill_small_holes(polygons[chosen], MIN_HOLE_AREA_M2 * grid.work_units_per_m**2 / pixel_units2)
    polygons, _ = smooth_outlines(polygons, kept)
    polygons = _map_coordinates(polygons, lambda x, y: apply(tile.transform, x, y))
    return dict(zip(values[chosen].tolist(), polygons))


def tile_box_crowns(spec: ModelSpec, inst: Instances, tile: Tile, grid: CrownGrid) -> list[Crown]:
    """The crowns of the boxes this tile owns (box centre in its core), in box order, in the source CRS."""
    boxes = np.asarray(inst.boxes, np.float64).reshape(-1, 5)[1:]
    if not len(boxes):
        return []
    cx, cy = box_centres(boxes)
    keep = np.flatnonzero(core_holds(tile, grid, cx, cy))
    if not keep.size:
        return []
    boxes = boxes[keep]
    as_boxes = spec.box_geometry == BoxGeometry.BOXES.value
    outlines = box_corners(boxes) if as_boxes else ellipse_outlines(boxes)
    xs, ys = _to_source(outlines, tile, grid)
    polygons = shapely.polygons(np.stack([xs, ys], axis=-1))
    if not as_boxes and inst.labels.any():
        regions = _region_polygons(inst.labels, keep + 1, tile, grid)
        for j, label in enumerate(keep + 1):
            region = regions.get(int(label))
            if region is None or region.is_empty:
                continue
            if grid.to_src is not None:
                region = _map_coordinates(np.asarray([region], dtype=object), grid.to_src)[0]
            polygons[j] = region
    if not as_boxes:
        # Crowns of overlapping boxes (ellipses, or an ellipse and a canopy region) are cut: the
        # better box (boxes come best first) keeps what both cover; one left with less than half
        # is the same tree twice and goes. Boxes stored as boxes stay whole, as asked.
        a, b, _, d, e, _ = grid.src_transform
        polygons, kept, _ = cut_overlaps(polygons, min_overlap=abs(a * e - b * d) * OVERLAP_TOLERANCE_PX2)
        polygons, boxes, keep = polygons[kept], boxes[kept], keep[kept]
    areas, perimeters, diameters = measure(polygons, grid)
    wkbs = shapely.to_wkb(polygons, byte_order=1)
    corner_x, corner_y = _to_source(box_corners(boxes), tile, grid)
    envelope = np.stack([corner_x.min(1), corner_y.min(1), corner_x.max(1), corner_y.max(1)], axis=1)
    extra = {name: np.asarray(column) for name, column in inst.attributes.items()}
    crowns = []
    for j, label in enumerate(keep + 1):
        class_i = int(inst.classes[label])
        attributes = {"area_m2": round(float(areas[j]), 3), "perimeter_m": round(float(perimeters[j]), 3),
                      "diam_m": round(float(diameters[j]), 3),
                      "box_xmin": round(float(envelope[j, 0]), 9), "box_ymin": round(float(envelope[j, 1]), 9),
                      "box_xmax": round(float(envelope[j, 2]), 9), "box_ymax": round(float(envelope[j, 3]), 9),
                      "box_angle": round(math.degrees(float(boxes[j, 4])), 3)}
        attributes.update({name: column[label].item() for name, column in extra.items()})
        crowns.append(Crown(wkbs[j], float(inst.scores[label]), spec.class_names[class_i], class_i, attributes))
    return crowns
