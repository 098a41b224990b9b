"""``centre_boxes``: one output (1, 4, H, W): canopy probability, crown-centre heatmap, crown width and height.

A CenterNet-style crown detector (the v5 default model): each local maximum of the
centre heatmap above ``det_conf`` is a crown centre, and the width and height maps
(model pixels) at that peak give its box. Boxes overlapping a stronger one by an IoU
above ``det_iou_thresh`` are dropped, so how close two crowns may be scales with their
size; boxes whose inscribed ellipse is under ``min_crown_area_m2`` are dropped.
Peaks are found on the model's native grid (``crown_stride_px``: block means of the
upsampled maps), the box centred on the peak cell's centre.

A crown is the ellipse inscribed in its box (the whole crown, its shaded side
included), or, when the metadata sets ``crowns_from_canopy`` true, the canopy inside
the box as for any detector with a canopy map (:mod:`engine.postprocess.boxes`).
"""

from __future__ import annotations

import json
import math

import numpy as np

from ...errors import ModelError
from . import register
from .detector import DetectorKind

PEAK_WINDOW_CELLS = 3


def centre_boxes(centre: np.ndarray, width: np.ndarray, height: np.ndarray, *, stride: int, conf: float,
                 iou_thresh: float, min_area_px: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (N, 4) xmin, ymin, xmax, ymax in tile pixels and scores (N,), best first, from native-grid maps.

    ``centre``, ``width`` and ``height`` are (h, w) maps on the grid ``stride`` model
    pixels coarse; widths and heights are in model pixels.
    """
    from scipy import ndimage

    from .retinanet import torchvision_nms

    centre = np.asarray(centre, np.float32)
    peaks = (centre == ndimage.maximum_filter(centre, size=PEAK_WINDOW_CELLS, mode="constant")) & (centre > conf)
    rows, cols = np.nonzero(peaks)
    if not len(rows):
        return np.zeros((0, 4)), np.zeros(0)
    cx, cy = (cols + 0.5) * stride, (rows + 0.5) * stride
    w, h = np.asarray(width, np.float64)[rows, cols], np.asarray(height, np.float64)[rows, cols]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    scores = centre[rows, cols].astype(np.float64)
    big = math.pi / 4 * w * h >= min_area_px
    boxes, scores = boxes[big], scores[big]
    # Plateaus pass the maximum filter at several cells; NMS keeps one (the first in raster order).
    keep = torchvision_nms(boxes.astype(np.float32), scores.astype(np.float32), iou_thresh)
    return boxes[keep], scores[keep]


@register
class CentreBoxes(DetectorKind):
    name = "centre_boxes"
    filters_small = True

    def classes(self, names, n_output_channels):
        names = [n for n in (names or []) if n.lower() != "background"][:1] or ["tree"]
        return names, [0]

    def decode(self, spec, outputs, tile_hw):
        out = np.asarray(next(iter(outputs.values())), np.float32)
        if out.ndim != 4 or out.shape[:2] != (1, 4) or out.shape[2:] != tuple(tile_hw):
            raise ModelError(f"A centre_boxes model must output (1, 4, {tile_hw[0]}, {tile_hw[1]}), "
                             f"not {tuple(out.shape)}.")
        if not np.all(np.isfinite(out)):
            raise ModelError("The model produced NaN or infinite values; it cannot be used on this image.")
        decoded = {"maps": out[0]}
        if _flag(spec.metadata.get("crowns_from_canopy")):
            decoded["canopy"] = out[0, 0]
        return decoded

    def select(self, spec, decoded):
        from ...postprocess.crowns import block_mean

        maps, stride = decoded["maps"], spec.crown_stride_px
        native = [block_mean(m, stride) if stride > 1 else m for m in maps[1:4]]
        min_area_px = spec.min_crown_area_m2 / (spec.gsd_m * spec.gsd_m)
        boxes, scores = centre_boxes(*native, stride=stride, conf=spec.det_conf, iou_thresh=spec.det_iou_thresh,
                                     min_area_px=min_area_px)
        out = np.zeros((len(boxes), 5))
        out[:, :4] = boxes
        return out, scores, np.zeros(len(boxes), np.int64)


def _flag(raw) -> bool:
    if raw is None:
        return False
    try:
        return bool(json.loads(raw))
    except (TypeError, ValueError):
        return str(raw).lower() == "true"
