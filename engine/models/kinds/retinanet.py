"""``retinanet``: torchvision's RetinaNet heads (DeepForest's tree model), decoded as torchvision decodes them.

The graph (written by ``python -m engine export-deepforest``) holds the network
and its input transform: the raw 0-255 tile is scaled to 0..1, normalised,
resized bilinearly to ``resized_px`` and padded to ``padded_px``. Its outputs are
the heads' raw values for every anchor of every pyramid level, levels in order:
``cls_logits`` (1, A, C) and ``bbox_regression`` (1, A, 4).

Decoding follows torchvision's ``RetinaNet.postprocess_detections`` and
``GeneralizedRCNNTransform.postprocess`` in float32: per level, the sigmoid
scores above ``det_conf`` (strictly), at most ``topk_candidates`` of them; their
anchors' boxes decoded (BoxCoder weights 1, widths clamped at
log(1000/16)) and clipped to the resized tile; then NMS per class (a box is
dropped when its IoU with a better one of its class is > ``det_iou_thresh``),
the ``detections_per_img`` best kept, and the boxes scaled back to the tile.
Anchors are torchvision's ``AnchorGenerator`` cells on each level's grid, from the
metadata block ``retinanet`` (``anchor_sizes``, ``aspect_ratios``, ``grid_sizes``).
"""

from __future__ import annotations

import json
import math
from functools import lru_cache

import numpy as np

from ...errors import ModelError
from . import register
from .detector import DetectorKind

BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def cell_anchors(sizes, aspect_ratios) -> np.ndarray:
    """(len(ratios) * len(sizes), 4) float32 anchors centred on 0, as torchvision's AnchorGenerator makes them."""
    scales = np.asarray(sizes, np.float32)
    ratios = np.asarray(aspect_ratios, np.float32)
    h_ratios = np.sqrt(ratios)
    w_ratios = np.float32(1) / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    return np.round(np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2))


@lru_cache(maxsize=8)
def _anchors(block_json: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """All anchors (float32, levels in order, each level row-major with the cell anchors innermost) and level sizes."""
    block = json.loads(block_json)
    padded = int(block["padded_px"])
    levels, sizes = [], []
    for (gh, gw), scales, ratios in zip(block["grid_sizes"], block["anchor_sizes"], block["aspect_ratios"]):
        base = cell_anchors(scales, ratios)
        sy, sx = padded // gh, padded // gw
        shift_y, shift_x = np.meshgrid(np.arange(gh, dtype=np.int64) * sy, np.arange(gw, dtype=np.int64) * sx,
                                       indexing="ij")
        shifts = np.stack([shift_x.ravel(), shift_y.ravel(), shift_x.ravel(), shift_y.ravel()], axis=1)
        level = (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4).astype(np.float32)
        levels.append(level)
        sizes.append(len(level))
    return np.concatenate(levels), tuple(sizes)


def decode_boxes(deltas: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """torchvision's ``BoxCoder.decode_single`` with weights (1, 1, 1, 1), in float32."""
    widths = anchors[:, 2] - anchors[:, 0]
    heights = anchors[:, 3] - anchors[:, 1]
    ctr_x = anchors[:, 0] + np.float32(0.5) * widths
    ctr_y = anchors[:, 1] + np.float32(0.5) * heights
    dx, dy = deltas[:, 0], deltas[:, 1]
    dw = np.minimum(deltas[:, 2], np.float32(BBOX_XFORM_CLIP))
    dh = np.minimum(deltas[:, 3], np.float32(BBOX_XFORM_CLIP))
    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    half_w = np.float32(0.5) * (np.exp(dw) * widths)
    half_h = np.float32(0.5) * (np.exp(dh) * heights)
    return np.stack([pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h], axis=1)


def torchvision_nms(boxes: np.ndarray, scores: np.ndarray, iou_thresh: float) -> np.ndarray:
    """Indices kept by torchvision's ``nms`` (best score first; dropped when IoU > ``iou_thresh``), float32."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    areas = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(len(boxes), bool)
    keep = []
    for position, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[position + 1:]
        rest = rest[~suppressed[rest]]
        w = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest[iou > np.float32(iou_thresh)]] = True
    return np.asarray(keep, np.int64)


@register
class RetinaNet(DetectorKind):
    name = "retinanet"

    def block(self, spec) -> dict:
        raw = spec.metadata.get("retinanet")
        try:
            block = json.loads(raw)
            for key in ("tile_px", "resized_px", "padded_px", "grid_sizes", "anchor_sizes", "aspect_ratios"):
                block[key]
        except (TypeError, ValueError, KeyError) as exc:
            raise ModelError("The RetinaNet model's metadata 'retinanet' is missing or incomplete.") from exc
        return block

    def decode(self, spec, outputs, tile_hw):
        block = self.block(spec)
        if tuple(tile_hw) != (block["tile_px"],) * 2:
            raise ModelError(f"This RetinaNet model was exported for {block['tile_px']} px tiles, not {tile_hw[0]} px.")
        logits = np.asarray(outputs.get("cls_logits", next(iter(outputs.values()))), np.float32)
        deltas = np.asarray(outputs.get("bbox_regression", list(outputs.values())[-1]), np.float32)
        anchors, _ = _anchors(json.dumps(block, sort_keys=True))
        if logits.ndim != 3 or deltas.shape != (1, len(anchors), 4) or logits.shape[1] != len(anchors):
            raise ModelError(f"The RetinaNet outputs have shapes {logits.shape} and {deltas.shape}; "
                             f"expected (1, {len(anchors)}, classes) and (1, {len(anchors)}, 4).")
        if logits.shape[2] > len(spec.class_names):
            raise ModelError(f"The model outputs {logits.shape[2]} classes but its metadata names "
                             f"{len(spec.class_names)}.")
        return {"logits": logits[0], "deltas": deltas[0], "block": block}

    def select(self, spec, decoded):
        logits, deltas, block = decoded["logits"], decoded["deltas"], decoded["block"]
        anchors, level_sizes = _anchors(json.dumps(block, sort_keys=True))
        n_classes = logits.shape[1]
        topk = int(block.get("topk_candidates", 1000))
        resized = float(block["resized_px"])
        all_boxes, all_scores, all_labels = [], [], []
        start = 0
        for size in level_sizes:
            stop = start + size
            scores = (np.float32(1) / (np.float32(1) + np.exp(-logits[start:stop]))).reshape(-1)
            candidates = np.flatnonzero(scores > np.float32(spec.det_conf))
            best = np.argsort(-scores[candidates], kind="stable")[:topk]
            candidates = candidates[best]
            anchor_idx, labels = candidates // n_classes + start, candidates % n_classes
            boxes = decode_boxes(deltas[anchor_idx], anchors[anchor_idx])
            boxes = np.clip(boxes, np.float32(0), np.float32(resized))
            all_boxes.append(boxes)
            all_scores.append(scores[candidates])
            all_labels.append(labels)
            start = stop
        boxes = np.concatenate(all_boxes)
        scores = np.concatenate(all_scores)
        labels = np.concatenate(all_labels)
        keep = []
        for label in np.unique(labels):
            members = np.flatnonzero(labels == label)
            keep.append(members[torchvision_nms(boxes[members], scores[members], spec.det_iou_thresh)])
        keep = np.concatenate(keep) if keep else np.zeros(0, np.int64)
        keep = keep[np.argsort(-scores[keep], kind="stable")][: int(block.get("detections_per_img", 300))]
        ratio = np.float32(block["tile_px"]) / np.float32(resized)
        out = np.zeros((len(keep), 5))
        out[:, :4] = boxes[keep] * ratio
        return out, scores[keep].astype(np.float64), labels[keep]
