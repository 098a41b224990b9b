"""Accuracy of crowns against annotated boxes: precision, recall and F1.

Everything here works in the *pixel space of the annotated image*: boxes are
``(xmin, ymin, xmax, ymax)`` float arrays of shape (N, 4), x to the right and y
down, in pixels, as DeepForest CSV files and Pascal-VOC XML files store them.
Predicted crowns are compared through their bounding boxes, the convention of
the NeonTreeEvaluation benchmark: a prediction and a truth box match when their
intersection over union is at least ``iou_thresh`` (0.4 there), and each box
matches at most one other (Hungarian assignment maximising the summed IoU).
"""

from __future__ import annotations

import csv
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from .errors import InputError

DEFAULT_IOU_THRESH = 0.4


@dataclass(frozen=True)
class Scores:
    """Counts and rates of one comparison; rates are 0 when undefined (no boxes)."""

    tp: int
    fp: int
    fn: int
    iou_thresh: float
    # Mean IoU of the matched pairs; None where matches have no IoU (tree-top points) or there are none.
    mean_iou: float | None = None

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def summary(self) -> str:
        iou = "" if self.mean_iou is None else f"  mean IoU {self.mean_iou:.3f}"
        return (
            f"precision {self.precision:.3f}  recall {self.recall:.3f}  F1 {self.f1:.3f}{iou}  "
            f"(TP {self.tp}, FP {self.fp}, FN {self.fn}, IoU >= {self.iou_thresh:g})"
        )


def _as_boxes(rows) -> np.ndarray:
    boxes = np.asarray(rows, np.float64).reshape(-1, 4)
    if len(boxes) and np.any(boxes[:, 2:] <= boxes[:, :2]):
        raise InputError("An annotation box has its maximum corner not beyond its minimum corner.")
    return boxes


def read_csv_boxes(path: str | os.PathLike, image_name: str | None = None) -> np.ndarray:
    """Boxes of a DeepForest CSV (``image_path,xmin,ymin,xmax,ymax,label``).

    A CSV may annotate several images; with ``image_name`` only rows whose
    ``image_path`` has the same file name, or the same name without extension
    (annotations often name the PNG of a GeoTIFF), are kept.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise InputError(f"Cannot read the annotation file {path}: {exc.strerror or exc}.") from exc
    needed = {"xmin", "ymin", "xmax", "ymax"}
    if not rows or not needed <= set(rows[0]):
        raise InputError(f"{path.name} is not a DeepForest CSV with xmin, ymin, xmax and ymax columns.")
    if image_name is not None and "image_path" in rows[0]:
        wanted = Path(image_name)
        named = [
            r for r in rows
            if Path(r["image_path"]).name == wanted.name or Path(r["image_path"]).stem == wanted.stem
        ]
        if not named:
            names = sorted({Path(r["image_path"]).name for r in rows})
            listed = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            raise InputError(f"{path.name} has no boxes for {wanted.name} (it annotates {listed}).")
        rows = named
    try:
        return _as_boxes([[float(r[k]) for k in ("xmin", "ymin", "xmax", "ymax")] for r in rows])
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path.name} has a box coordinate that is not a number.") from exc


def read_voc_boxes(path: str | os.PathLike) -> np.ndarray:
    """Boxes of a Pascal-VOC XML file (``<object><bndbox><xmin>...``)."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except OSError as exc:
        raise InputError(f"Cannot read the annotation file {path}: {exc.strerror or exc}.") from exc
    except ET.ParseError as exc:
        raise InputError(f"{path.name} is not a valid XML file.") from exc
    rows = []
    for obj in root.iter("object"):
        box = obj.find("bndbox")
        if box is None:
            continue
        try:
            rows.append([float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")])
        except (TypeError, ValueError) as exc:
            raise InputError(f"{path.name} has a box without a numeric xmin, ymin, xmax or ymax.") from exc
    return _as_boxes(rows)


def read_boxes(path: str | os.PathLike, image_name: str | None = None) -> np.ndarray:
    """Annotation boxes from a DeepForest ``.csv`` or a Pascal-VOC ``.xml`` file."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return read_csv_boxes(path, image_name)
    if suffix == ".xml":
        return read_voc_boxes(path)
    raise InputError(f"Annotations must be a DeepForest .csv or a Pascal-VOC .xml file, not {Path(path).name}.")


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box of ``a`` (N, 4) with every box of ``b`` (M, 4): (N, M)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ix = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    iy = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(ix, 0, None) * np.clip(iy, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_boxes(pred: np.ndarray, truth: np.ndarray, iou_thresh: float = DEFAULT_IOU_THRESH) -> np.ndarray:
    """One-to-one matches as (K, 2) index pairs ``(pred_i, truth_j)`` with IoU >= ``iou_thresh``.

    The assignment maximises the summed IoU over all pairs, so one large
    prediction cannot take the truth box a better-fitting prediction needs.
    """
    return match_by_iou(iou_matrix(pred, truth), iou_thresh)


def score_boxes(pred: np.ndarray, truth: np.ndarray, iou_thresh: float = DEFAULT_IOU_THRESH) -> Scores:
    """Precision/recall/F1 counts of predicted boxes against truth boxes."""
    n_pred = len(np.asarray(pred).reshape(-1, 4))
    n_truth = len(np.asarray(truth).reshape(-1, 4))
    tp = len(match_boxes(pred, truth, iou_thresh))
    return Scores(tp=tp, fp=n_pred - tp, fn=n_truth - tp, iou_thresh=float(iou_thresh))


def label_boxes(labels: np.ndarray) -> np.ndarray:
    """Pixel bounding boxes (N, 4) of the labels 1..max of a label image, in label order.

    Box edges are pixel edges: a label covering only pixel (row 3, col 5) gets
    ``(5, 3, 6, 4)``, the convention of annotation boxes. Missing labels are skipped.
    """
    boxes = [
        (s[1].start, s[0].start, s[1].stop, s[0].stop)
        for s in ndimage.find_objects(np.asarray(labels)) if s is not None
    ]
    return np.asarray(boxes, np.float64).reshape(-1, 4)


def map_boxes_to_pixels(boxes_crs: np.ndarray, inverse_transform) -> np.ndarray:
    """Boxes in a raster's CRS → pixel boxes, through the inverse of its affine transform.

    ``inverse_transform`` holds the coefficients ``(a, b, c, d, e, f)`` of
    ``col = a*x + b*y + c``, ``row = d*x + e*y + f``, in the order of
    ``affine.Affine`` (so ``~dataset.transform`` works); all four corners are
    mapped so north-up and south-up rasters both work.
    """
    boxes_crs = np.asarray(boxes_crs, np.float64).reshape(-1, 4)
    xs = boxes_crs[:, [0, 2, 2, 0]]
    ys = boxes_crs[:, [1, 1, 3, 3]]
    a, b, c, d, e, f = (inverse_transform[i] for i in range(6))
    cols = a * xs + b * ys + c
    rows = d * xs + e * ys + f
    return np.stack([cols.min(1), rows.min(1), cols.max(1), rows.max(1)], axis=1)


# --------------------------------------------------------------------------- crowns against map geometries
# The functions below work in one map CRS (the cache's): crowns and reference are shapely
# geometries there, and nothing is converted to pixels.


def polygon_iou_matrix(pred: list, truth: list) -> np.ndarray:
    """IoU (N, M) of shapely polygons ``pred`` and ``truth``; only pairs whose envelopes meet are computed."""
    import shapely

    iou = np.zeros((len(pred), len(truth)), np.float64)
    if not len(pred) or not len(truth):
        return iou
    tree = shapely.STRtree(truth)
    i_pred, j_truth = tree.query(pred, predicate="intersects")
    if len(i_pred):
        a = np.asarray(pred, object)[i_pred]
        b = np.asarray(truth, object)[j_truth]
        inter = shapely.area(shapely.intersection(a, b))
        union = shapely.area(a) + shapely.area(b) - inter
        iou[i_pred, j_truth] = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return iou


def match_by_iou(iou: np.ndarray, iou_thresh: float = DEFAULT_IOU_THRESH) -> np.ndarray:
    """One-to-one (K, 2) pairs of an IoU matrix at ``iou_thresh``, maximising the summed IoU."""
    if iou.size == 0:
        return np.zeros((0, 2), np.int64)
    from scipy.optimize import linear_sum_assignment  # here: only matching needs it

    # Pairs below the threshold are worth nothing, so they never displace a valid pair.
    gain = np.where(iou >= iou_thresh, iou, 0.0)
    rows, cols = linear_sum_assignment(gain, maximize=True)
    keep = gain[rows, cols] > 0
    return np.stack([rows[keep], cols[keep]], axis=1).astype(np.int64)


def match_points(crowns: list, points: list) -> np.ndarray:
    """(K, 2) pairs ``(crown_i, point_j)``: a point counts when it lies in exactly one crown.

    A crown holding several such points is matched to one of them (the first): the
    others are trees the crown merged, so they stay missed.
    """
    import shapely

    if not len(crowns) or not len(points):
        return np.zeros((0, 2), np.int64)
    # covered_by: a point on a crown's edge lies in it, as a user would see it.
    j_point, i_crown = shapely.STRtree(crowns).query(points, predicate="covered_by")
    counts = np.bincount(j_point, minlength=len(points))
    pairs, taken = [], set()
    for j, i in sorted(zip(j_point.tolist(), i_crown.tolist())):
        if counts[j] == 1 and i not in taken:
            taken.add(i)
            pairs.append((i, j))
    return np.asarray(pairs, np.int64).reshape(-1, 2)


def is_box(polygon, rel_tol: float = 0.01) -> bool:
    """True for an axis-aligned rectangle (an annotation box), within ``rel_tol`` of its envelope's area."""
    if polygon.geom_type != "Polygon" or polygon.interiors:
        return False
    envelope_area = polygon.envelope.area
    return envelope_area > 0 and abs(polygon.area - envelope_area) <= rel_tol * envelope_area


def score_matches(pairs: np.ndarray, n_pred: int, n_truth: int, iou_thresh: float,
                  iou: np.ndarray | None = None) -> Scores:
    """Scores of one-to-one ``pairs`` among ``n_pred`` crowns and ``n_truth`` references."""
    tp = len(pairs)
    mean_iou = float(iou[pairs[:, 0], pairs[:, 1]].mean()) if iou is not None and tp else None
    return Scores(tp=tp, fp=n_pred - tp, fn=n_truth - tp, iou_thresh=float(iou_thresh), mean_iou=mean_iou)
