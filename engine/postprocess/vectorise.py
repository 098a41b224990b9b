"""From one tile's model output to cache records: confidence rasters and crown polygons.

Input is in model pixels of the tile; output is in the source raster's grid
(semantic) and CRS (crowns). A crown belongs to the tile whose core holds its
centroid, so a crown seen by two overlapping tiles is stored exactly once.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import rasterio
from osgeo import ogr, osr
from rasterio.features import shapes
from scipy import ndimage

from ..models.spec import ModelSpec, OutputKind
from ..tiling.grid import Tile, apply, invert
from .crowns import delineate_crowns

ogr.UseExceptions()
osr.UseExceptions()


@dataclass(frozen=True)
class Crown:
    """One crown polygon in the source CRS, as WKB, with its attributes (id given at write time)."""

    wkb: bytes
    score: float
    class_name: str
    class_idx: int


def instance_labels(spec: ModelSpec, output: dict, probs: np.ndarray, valid: np.ndarray, gsd_m: float):
    """Label image (T, T) int32 of instances with per-label score and class index arrays (index 0 unused)."""
    if spec.output_kind is OutputKind.CANOPY_CENTRES:
        centres = output["probs"][1] * valid
        labels = delineate_crowns(
            probs[0], centres, gsd_m=gsd_m, seg_thresh=spec.seg_thresh, centre_thresh=spec.centre_thresh,
            peak_min_distance_m=spec.peak_min_distance_m, min_crown_area_m2=spec.min_crown_area_m2,
        )
        n = int(labels.max())
        scores = ndimage.mean(probs[0], labels, np.arange(n + 1)) if n else np.zeros(1)
        return labels, np.asarray(scores, np.float64), np.zeros(n + 1, np.int64)
    if spec.output_kind is OutputKind.INSTANCE_MASKS:
        masks, m_scores, m_labels = output["masks"], output["scores"], output["labels"]
        labels = np.zeros(valid.shape, np.int32)
        scores, classes = [0.0], [0]
        class_of_label = {label: i for i, label in enumerate(spec.channel_of_class)}
        # Paint low scores first so a better-scored overlapping mask wins the pixel.
        for i in np.argsort(m_scores, kind="stable"):
            if m_scores[i] < spec.seg_thresh or int(m_labels[i]) not in class_of_label:
                continue
            pixels = (masks[i] > 0.5) & valid
            if pixels.any():
                labels[pixels] = len(scores)
                scores.append(float(m_scores[i]))
                classes.append(class_of_label[int(m_labels[i])])
        return labels, np.asarray(scores), np.asarray(classes, np.int64)
    # Semantic: connected regions of each class's mask (argmax among classes, above threshold).
    labels = np.zeros(valid.shape, np.int32)
    best = np.argmax(probs, axis=0) if probs.shape[0] > 1 else np.zeros(valid.shape, np.int64)
    scores, classes = [0.0], [0]
    for i in range(probs.shape[0]):
        mask = (best == i) & (probs[i] > spec.seg_thresh)
        comp, n = ndimage.label(mask)
        if not n:
            continue
        means = ndimage.mean(probs[i], comp, np.arange(1, n + 1))
        labels[comp > 0] = comp[comp > 0] + len(scores) - 1
        scores.extend(float(m) for m in means)
        classes.extend([i] * n)
    return labels, np.asarray(scores), np.asarray(classes, np.int64)


def tile_crowns(
    spec: ModelSpec,
    labels: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    tile: Tile,
    src_transform,
    to_src,
    min_area_px: float,
) -> list[Crown]:
    """Crowns owned by this tile, as polygons in the source CRS.

    Crowns (``canopy_centres`` and ``instance_masks`` models) belong to the tile
    whose core holds their centroid: neighbouring tiles see a crown within their
    shared margin identically, so exactly one of them owns it. A crown reaching
    further than the margin (``overlap_px // 2``) past a core is still kept, cut
    at the tile's edge, rather than lost; overlaps should exceed the largest
    crown radius.

    Regions of a ``semantic`` model are canopy patches that can span any number
    of tiles (closed canopy), so they are clipped to the core instead: each
    piece of ground is stored once, patches split along core borders as in
    tcd_pipeline's semantic cache.
    """
    n = int(labels.max())
    if n == 0:
        return []
    idx = np.arange(1, n + 1)
    flat = labels.ravel()
    counts = np.bincount(flat, minlength=n + 1)[1:]
    present = counts > 0
    rows, cols = np.divmod(np.arange(flat.size), labels.shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        # Pixel centres: model pixel (col, row) covers [col, col + 1).
        cx = np.bincount(flat, weights=cols, minlength=n + 1)[1:] / counts + 0.5
        cy = np.bincount(flat, weights=rows, minlength=n + 1)[1:] / counts + 0.5
    if tile.offset_px is not None:
        sx, sy = cx + tile.offset_px[0], cy + tile.offset_px[1]
    else:
        wx, wy = apply(tile.transform, cx, cy)
        if to_src is not None:
            wx, wy = to_src(wx, wy)
        sx, sy = apply(invert(src_transform), np.asarray(wx), np.asarray(wy))
    col, row, w, h = tile.core_px
    clip = spec.output_kind is OutputKind.SEMANTIC
    owned = present & (counts >= min_area_px)
    if not clip:
        owned &= (sx >= col) & (sx < col + w) & (sy >= row) & (sy < row + h)
    keep = idx[owned]
    if keep.size == 0:
        return []

    lut = np.zeros(n + 1, np.int32)
    lut[keep] = keep
    kept = lut[labels]
    window_t = tile.transform
    core = None
    if clip and tile.offset_px is not None:
        # Aligned grids: the core is a window of the tile, so cut the labels there
        # instead of intersecting polygons (exact, and far cheaper).
        c0, r0 = col - tile.offset_px[0], row - tile.offset_px[1]
        kept = np.ascontiguousarray(kept[r0 : r0 + h, c0 : c0 + w])
        a, b, c, d, e, f = tile.transform
        window_t = (a, b, c + a * c0 + b * r0, d, e, f + d * c0 + e * r0)
    elif clip:
        core = _core_polygon(tile, src_transform)
    polygons: dict[int, list] = {}
    for geom, value in shapes(kept, mask=kept > 0, connectivity=4, transform=rasterio.Affine(*window_t)):
        polygons.setdefault(int(value), []).append(ogr.CreateGeometryFromWkb(_polygon_wkb(geom["coordinates"])))

    gsd = abs(tile.transform[0])
    crowns = []
    for label in keep:
        parts = polygons.get(int(label))
        if not parts:
            continue
        if not clip:
            parts = [max(parts, key=lambda g: g.GetArea())]
        class_i = int(classes[label])
        for geom in parts:
            geom = geom.SimplifyPreserveTopology(gsd * 0.5)
            if geom is None or geom.IsEmpty():
                continue
            if to_src is not None:
                geom = _map_geometry(geom, to_src)
            pieces = _polygons(geom.Intersection(core)) if core is not None else _polygons(geom)
            if not clip:
                pieces = sorted(pieces, key=lambda g: -g.GetArea())[:1]
            for piece in pieces:
                crowns.append(Crown(bytes(piece.ExportToWkb(ogr.wkbNDR)), float(scores[label]),
                                    spec.class_names[class_i], class_i))
    return crowns


def _polygon_wkb(rings) -> bytes:
    """Little-endian WKB of a polygon from GeoJSON-style rings (built without a JSON round trip)."""
    out = [struct.pack("<BII", 1, ogr.wkbPolygon, len(rings))]
    for ring in rings:
        points = np.asarray(ring, "<f8")
        out.append(struct.pack("<I", len(points)))
        out.append(points.tobytes())
    return b"".join(out)


def _polygons(geom: ogr.Geometry | None) -> list[ogr.Geometry]:
    """The non-empty polygons of a geometry (a polygon, a multipolygon or a collection)."""
    if geom is None or geom.IsEmpty():
        return []
    kind = ogr.GT_Flatten(geom.GetGeometryType())
    if kind == ogr.wkbPolygon:
        return [geom.Clone()] if geom.GetArea() > 0 else []
    if kind in (ogr.wkbMultiPolygon, ogr.wkbGeometryCollection):
        return [p for i in range(geom.GetGeometryCount()) for p in _polygons(geom.GetGeometryRef(i))]
    return []


def _core_polygon(tile: Tile, src_transform) -> ogr.Geometry:
    """The tile's core as a polygon in the source CRS."""
    col, row, w, h = tile.core_px
    xs, ys = apply(src_transform, np.array([col, col + w, col + w, col, col], float),
                   np.array([row, row, row + h, row + h, row], float))
    ring = ogr.Geometry(ogr.wkbLinearRing)
    for x, y in zip(xs, ys):
        ring.AddPoint_2D(float(x), float(y))
    poly = ogr.Geometry(ogr.wkbPolygon)
    poly.AddGeometry(ring)
    return poly


def _map_geometry(geom: ogr.Geometry, mapper) -> ogr.Geometry:
    """Apply a point mapper (working CRS → source CRS) to every vertex of a polygon."""
    out = ogr.Geometry(ogr.wkbPolygon)
    for i in range(geom.GetGeometryCount()):
        ring = geom.GetGeometryRef(i)
        pts = np.asarray(ring.GetPoints(), float)
        xs, ys = mapper(pts[:, 0], pts[:, 1])
        new_ring = ogr.Geometry(ogr.wkbLinearRing)
        for x, y in zip(np.asarray(xs), np.asarray(ys)):
            new_ring.AddPoint_2D(float(x), float(y))
        out.AddGeometry(new_ring)
    return out
