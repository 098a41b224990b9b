"""``detector``: Deepness detection models (YOLO output layouts), decoded as Deepness 0.6.5 decodes them.

Also the base of every box detector (:class:`DetectorKind`): a detector's
``decode`` keeps its raw candidates; :meth:`DetectorKind.select` applies the run's
score and IoU thresholds (``spec.det_conf``, ``spec.det_iou_thresh``) with the
semantics of the library the model comes from, and the crowns, confidence and
ownership come from :mod:`engine.postprocess.boxes`.

Deepness models say ``model_type: Detector``, ``det_conf``, ``det_iou_thresh``,
``class_names`` and ``det_type``, the layout of the first output (batch 0; N
candidates, C classes, boxes as centre x, centre y, width, height in tile pixels):

=============================  ======================  =====================================================
``det_type``                   output                  kept, ranked and scored by
=============================  ======================  =====================================================
``YOLO_v5_or_v7_default``      (1, N, 5 + C)           objectness (column 4) >= det_conf; score objectness
``YOLO_v6``                    (1, N, 5 + C)           best class probability >= det_conf; NMS ranks by
                                                       objectness; score the best class probability
``YOLO_v9``, ``YOLO_Ultralytics``  (1, 4 + C, N)       best class probability >= det_conf; score the same
``YOLO_Ultralytics_obb``       (1, 4 + C + 1, N)       as Ultralytics; the last row is the rotation (radians)
``YOLO_Ultralytics_            (1, 4 + C + M, N) and   as Ultralytics; the last M rows are mask coefficients
segmentation``                 (1, M, h, w)            over the second output's M prototype masks
=============================  ======================  =====================================================

The class of a box is the argmax of its class columns. Non-maximum suppression is
Deepness's: greedy by rank, box areas counted as (w + 1)(h + 1), a box dropped
when its IoU with a kept one is >= ``det_iou_thresh`` (oriented boxes: the IoU of
the rotated rectangles, over the same +1 areas). Kept boxes are truncated to whole
pixels, as Deepness does. Oriented boxes are normalised as Deepness does (width
the longer side, angle in [0, pi)). An instance segmentation model's mask of a box is
Deepness's (Ultralytics'): the sigmoid of its coefficients times the prototypes, cut to
the box on the prototypes' grid, resized bilinearly to the tile and kept at >= 0.5; it
is the box's region (its crown), the best box's where masks overlap.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ...errors import ModelError
from . import Instances, OutputKind, register

DET_TYPES = ("YOLO_v5_or_v7_default", "YOLO_v6", "YOLO_v9", "YOLO_Ultralytics", "YOLO_Ultralytics_obb",
             "YOLO_Ultralytics_segmentation")


class DetectorKind(OutputKind):
    """A box detector: candidates in ``decode``, thresholds in :meth:`select`, crowns from boxes."""

    detects_boxes: ClassVar[bool] = True

    def classes(self, names, n_output_channels):
        # A detector's classes are all real: no background channel.
        names = list(names) if names else ["tree"]
        return names, list(range(len(names)))

    def select(self, spec, decoded: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The tile's boxes after the score threshold and NMS, best first: (N, 5) boxes, (N,) scores, (N,) classes.

        Boxes are ``(xmin, ymin, xmax, ymax, angle)`` in tile pixels (see :mod:`engine.postprocess.boxes`).
        """
        raise NotImplementedError

    def _resolved(self, spec, decoded: dict, valid: np.ndarray):
        """Boxes whose centre lies on a valid pixel, and their canopy labels; computed once per tile and spec."""
        from ...postprocess.boxes import box_centres, split_canopy

        key = (spec.det_conf, spec.det_iou_thresh, spec.box_geometry)
        memo = decoded.get("_resolved")
        if memo is not None and memo[0] == key:
            return memo[1]
        boxes, scores, classes = self.select(spec, decoded)
        boxes = np.asarray(boxes, np.float64).reshape(-1, 5)
        scores = np.asarray(scores, np.float64).reshape(-1)
        classes = np.asarray(classes, np.int64).reshape(-1)
        coeffs = decoded.get("_coeffs")  # mask coefficients of the selected boxes (instance segmentation)
        if len(boxes):
            cx, cy = box_centres(boxes)
            h, w = valid.shape
            col, row = np.floor(cx).astype(int), np.floor(cy).astype(int)
            inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
            on_valid = np.zeros(len(boxes), bool)
            on_valid[inside] = valid[row[inside], col[inside]]
            boxes, scores, classes = boxes[on_valid], scores[on_valid], classes[on_valid]
            coeffs = None if coeffs is None else coeffs[on_valid]
        labels = None
        canopy = decoded.get("canopy")
        if coeffs is not None and spec.box_geometry == "crowns":
            labels = mask_labels(decoded["protos"], coeffs, boxes, valid, decoded["input_hw"])
        elif canopy is not None and spec.box_geometry == "crowns":
            labels = split_canopy(np.where(valid, canopy, 0.0), boxes, spec.seg_thresh)
        resolved = (boxes, scores, classes, labels)
        decoded["_resolved"] = (key, resolved)
        return resolved

    def probabilities(self, spec, decoded, valid):
        from ...postprocess.boxes import box_confidence

        boxes, scores, classes, labels = self._resolved(spec, decoded, valid)
        probs = box_confidence(valid.shape, boxes, scores, classes, len(spec.class_names), spec.box_geometry, labels)
        probs[:, ~valid] = 0.0
        return probs

    def instances(self, spec, decoded, probs, valid, gsd_m):
        boxes, scores, classes, labels = self._resolved(spec, decoded, valid)
        if labels is None:
            labels = np.zeros(valid.shape, np.int32)
        return Instances(labels, np.concatenate([[0.0], scores]), np.concatenate([[0], classes]).astype(np.int64),
                         boxes=np.concatenate([np.zeros((1, 5)), boxes]))


def _resize_bilinear(image: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """(..., h, w) resized to ``out_hw`` as OpenCV's INTER_LINEAR does (pixel centres aligned, edges repeated)."""
    def axis(n_in, n_out):
        src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo

    y0, y1, wy = axis(image.shape[-2], out_hw[0])
    x0, x1, wx = axis(image.shape[-1], out_hw[1])
    rows = image[..., y0, :] * (1 - wy)[:, None] + image[..., y1, :] * wy[:, None]
    return rows[..., x0] * (1 - wx) + rows[..., x1] * wx


def mask_labels(protos: np.ndarray, coeffs: np.ndarray, boxes: np.ndarray, valid: np.ndarray,
                input_hw: tuple[int, int]) -> np.ndarray:
    """(T, T) int32 labels: box i's instance mask as label i + 1 (boxes best first; the best keeps overlaps).

    Deepness's (Ultralytics') masks: sigmoid(coefficients @ prototypes), zero outside the
    box on the prototypes' grid, resized to the model's input (``input_hw``, the tile's
    top-left part the model saw), >= 0.5.
    """
    labels = np.zeros(valid.shape, np.int32)
    if not len(boxes):
        return labels
    m, mh, mw = protos.shape
    masks = 1.0 / (1.0 + np.exp(-(coeffs @ protos.reshape(m, -1).astype(np.float64)))).reshape(-1, mh, mw)
    th, tw = input_hw
    seen = labels[:th, :tw]
    seen_valid = valid[:th, :tw]
    x1, y1 = boxes[:, 0] * mw / tw, boxes[:, 1] * mh / th
    x2, y2 = boxes[:, 2] * mw / tw, boxes[:, 3] * mh / th
    cols, rows = np.arange(mw)[None, None, :], np.arange(mh)[None, :, None]
    masks *= ((cols >= x1[:, None, None]) & (cols < x2[:, None, None])
              & (rows >= y1[:, None, None]) & (rows < y2[:, None, None]))
    for i in range(len(boxes) - 1, -1, -1):  # worst first, so the best box paints last
        seen[(_resize_bilinear(masks[i], (th, tw)) >= 0.5) & seen_valid] = i + 1
    return labels


def _xywh_to_xyxy(rows: np.ndarray) -> np.ndarray:
    """Rows with columns 0..3 turned from centre/size to corners (other columns kept), in the rows' dtype."""
    out = rows.copy()
    half_w, half_h = rows[:, 2] / 2, rows[:, 3] / 2
    out[:, 0], out[:, 1] = rows[:, 0] - half_w, rows[:, 1] - half_h
    out[:, 2], out[:, 3] = rows[:, 0] + half_w, rows[:, 1] + half_h
    return out


def _rotated_rect(x1, y1, x2, y2, angle):
    import shapely.affinity

    rect = shapely.box(x1, y1, x2, y2)
    return shapely.affinity.rotate(rect, angle, origin=((x1 + x2) / 2, (y1 + y2) / 2), use_radians=True)


def deepness_nms(xyxy: np.ndarray, ranks: np.ndarray, iou_thresh: float, angles: np.ndarray | None = None) -> list[int]:
    """Indices kept by Deepness's greedy NMS, in the order they are picked (best rank first).

    Areas count both edge pixels ((w + 1)(h + 1)); a candidate is dropped when its
    IoU with the picked box is >= ``iou_thresh``. With ``angles``, the intersection
    is that of the rotated rectangles.
    """
    if not len(xyxy):
        return []
    x1, y1, x2, y2 = (xyxy[:, i] for i in range(4))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(ranks)
    picked = []
    while order.size:
        best, rest = order[-1], order[:-1]
        picked.append(int(best))
        if angles is None:
            w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
            h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
            inter = w * h
            iou = inter / (areas[best] + areas[rest] - inter)
        else:
            import shapely

            mine = _rotated_rect(x1[best], y1[best], x2[best], y2[best], angles[best])
            others = [_rotated_rect(x1[j], y1[j], x2[j], y2[j], angles[j]) for j in rest]
            inter = shapely.area(shapely.intersection(mine, np.asarray(others, dtype=object))) if others else \
                np.zeros(0)
            union = areas[best] + areas[rest] - inter
            iou = np.divide(inter, union, out=np.zeros(len(rest)), where=union > 0)
        order = rest[iou < iou_thresh]
    return picked


def deepness_containment(xyxy: np.ndarray, thresh: float) -> np.ndarray:
    """Indices of whole-pixel boxes kept by Deepness's last map-level step, in the given order (best first).

    Boxes are visited largest first ((w + 1)(h + 1), ties in the given order); a visited box
    not yet dropped is kept and drops, among the 10 boxes whose centres are nearest its
    own, those whose intersection ((w + 1)(h + 1)) over the smaller of the two areas
    (w * h) exceeds ``thresh``.
    """
    from scipy.spatial import cKDTree

    n = len(xyxy)
    if n < 2:
        return np.arange(n)
    x1, y1, x2, y2 = (xyxy[:, i].astype(np.int64) for i in range(4))
    order = np.argsort(-((x2 - x1 + 1) * (y2 - y1 + 1)), kind="stable")
    x1, y1, x2, y2 = x1[order], y1[order], x2[order], y2[order]
    centres = np.column_stack([(x1 + x2) // 2, (y1 + y2) // 2])
    tree = cKDTree(centres)
    area = (x2 - x1) * (y2 - y1)
    dropped = np.zeros(n, bool)
    kept = []
    for i in range(n):
        if dropped[i]:
            continue
        kept.append(i)
        _, near = tree.query(centres[i], k=min(10, n))
        for j in np.atleast_1d(near):
            if j == i or dropped[j]:
                continue
            inter = (max(0, min(x2[i], x2[j]) - max(x1[i], x1[j]) + 1)
                     * max(0, min(y2[i], y2[j]) - max(y1[i], y1[j]) + 1))
            smaller = min(area[i], area[j])
            if smaller > 0 and inter / smaller > thresh:
                dropped[j] = True
    return np.sort(order[kept])


@register
class Detector(DetectorKind):
    name = "detector"
    deepness_types = ("detector", "detection")

    def det_type(self, spec) -> str:
        raw = spec.metadata.get("det_type")
        if raw is None:
            return DET_TYPES[0]
        value = str(raw).strip().strip('"')
        for known in DET_TYPES:
            if value.lower() == known.lower():
                return known
        raise ModelError(f"The detector layout (det_type) '{value}' is not supported "
                         f"(supported: {', '.join(DET_TYPES)}).")

    def decode(self, spec, outputs, tile_hw):
        det_type = self.det_type(spec)
        if det_type == "YOLO_Ultralytics_segmentation":
            return self._decode_segmentation(spec, list(outputs.values()), tile_hw)
        out = np.asarray(next(iter(outputs.values())))
        if out.ndim != 3 or out.shape[0] < 1:
            raise ModelError(f"The detector's output has shape {tuple(out.shape)}; expected (1, candidates, values).")
        rows = out[0]
        if det_type not in ("YOLO_v5_or_v7_default", "YOLO_v6"):
            rows = rows.T  # (values, candidates) layouts
        n_extra = {"YOLO_v5_or_v7_default": 5, "YOLO_v6": 5, "YOLO_Ultralytics_obb": 5}.get(det_type, 4)
        n_classes = rows.shape[1] - n_extra
        if n_classes < 1:
            raise ModelError(f"The detector's output has {rows.shape[1]} values per box; {det_type} needs more.")
        if n_classes > len(spec.class_names):
            raise ModelError(f"The detector outputs {n_classes} classes but its metadata names "
                             f"{len(spec.class_names)}.")
        if not np.all(np.isfinite(rows)):
            raise ModelError("The model produced NaN or infinite values; it cannot be used on this image.")
        return {"rows": rows, "det_type": det_type}

    def _decode_segmentation(self, spec, outputs: list, tile_hw) -> dict:
        if len(outputs) < 2:
            raise ModelError("A YOLO_Ultralytics_segmentation detector needs two outputs (boxes and prototype "
                             f"masks); this model has {len(outputs)}.")
        out, protos = np.asarray(outputs[0]), np.asarray(outputs[1], np.float32)
        if out.ndim != 3 or protos.ndim != 4 or out.shape[0] < 1 or protos.shape[0] < 1:
            raise ModelError(f"The detector's outputs have shapes {tuple(out.shape)} and {tuple(protos.shape)}; "
                             "expected (1, 4 + classes + masks, candidates) and (1, masks, height, width).")
        rows, protos = out[0].T, protos[0]
        n_classes = len(spec.class_names)
        if rows.shape[1] != 4 + n_classes + protos.shape[0]:
            raise ModelError(f"The detector gives {rows.shape[1]} values per box; with {n_classes} classes and "
                             f"{protos.shape[0]} prototype masks it should give {4 + n_classes + protos.shape[0]}.")
        if not (np.all(np.isfinite(rows)) and np.all(np.isfinite(protos))):
            raise ModelError("The model produced NaN or infinite values; it cannot be used on this image.")
        return {"rows": rows, "det_type": "YOLO_Ultralytics_segmentation", "protos": protos,
                "n_classes": n_classes, "input_hw": tuple(tile_hw)}

    def select(self, spec, decoded):
        rows, det_type = decoded["rows"], decoded["det_type"]
        conf, iou = spec.det_conf, spec.det_iou_thresh
        angles = None
        coeffs = None
        if det_type == "YOLO_Ultralytics_segmentation":
            end = 4 + decoded["n_classes"]
            rows = rows[np.max(rows[:, 4:end], axis=1) >= conf] if len(rows) else rows
            class_cols, coeffs = rows[:, 4:end], rows[:, end:]
            ranks = scores = np.max(class_cols, axis=1) if len(rows) else rows[:, 4]
        elif det_type == "YOLO_v5_or_v7_default":
            rows = rows[rows[:, 4] >= conf]
            class_cols = rows[:, 5:]
            ranks = scores = rows[:, 4]
        elif det_type == "YOLO_v6":
            rows = rows[np.max(rows[:, 5:], axis=1) >= conf] if len(rows) else rows
            class_cols = rows[:, 5:]
            ranks, scores = rows[:, 4], np.max(class_cols, axis=1) if len(rows) else rows[:, 4]
        elif det_type == "YOLO_Ultralytics_obb":
            rows = rows[np.max(rows[:, 4:-1], axis=1) >= conf] if len(rows) else rows
            class_cols = rows[:, 4:-1]
            ranks = scores = np.max(class_cols, axis=1) if len(rows) else rows[:, 4]
            w, h, rot = rows[:, 2], rows[:, 3], rows[:, -1]
            longer = w > h
            rows = rows.copy()
            rows[:, 2], rows[:, 3] = np.where(longer, w, h), np.where(longer, h, w)
            angles = np.where(longer, rot, rot + np.pi / 2) % np.pi
        else:  # YOLO_v9, YOLO_Ultralytics
            rows = rows[np.max(rows[:, 4:], axis=1) >= conf] if len(rows) else rows
            class_cols = rows[:, 4:]
            ranks = scores = np.max(class_cols, axis=1) if len(rows) else rows[:, 4]
        if not len(rows):
            if coeffs is not None:
                decoded["_coeffs"] = coeffs
            return np.zeros((0, 5)), np.zeros(0), np.zeros(0, np.int64)
        xyxy = _xywh_to_xyxy(rows)[:, :4]
        keep = np.asarray(deepness_nms(xyxy, ranks, iou, angles), int)
        whole = np.asarray(xyxy[keep], dtype=int).astype(np.float64)  # Deepness truncates to whole pixels
        # Deepness's map-level clean-up, applied to the tile: NMS again ranked by score, then
        # boxes mostly inside a larger neighbour dropped.
        again = np.asarray(deepness_nms(whole, scores[keep], iou, None if angles is None else angles[keep]), int)
        keep, whole = keep[np.sort(again)], whole[np.sort(again)]
        inside = deepness_containment(whole, iou)
        keep, whole = keep[inside], whole[inside]
        if coeffs is not None:
            decoded["_coeffs"] = np.asarray(coeffs[keep], np.float64)
        boxes = np.zeros((len(keep), 5))
        boxes[:, :4] = whole
        if angles is not None:
            boxes[:, 4] = angles[keep]
        return boxes, np.asarray(scores[keep], np.float64), np.argmax(class_cols[keep], axis=1)
