"""The ``centre_boxes`` output kind: crowns as boxes from a centre heatmap and crown-size maps."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.errors import ModelError
from engine.models.kinds.centre_boxes import centre_boxes
from engine.models.spec import spec_from_metadata


def _blob(shape, row, col, sigma, peak=1.0):
    r, c = np.mgrid[: shape[0], : shape[1]]
    return peak * np.exp(-((r - row) ** 2 + (c - col) ** 2) / (2 * sigma**2))


def _maps(peaks, shape=(64, 64)):
    """Native-grid centre, width and height maps: one blob per (row, col, width px, height px, peak)."""
    centre = np.zeros(shape, np.float32)
    width = np.full(shape, 10.0, np.float32)
    height = np.full(shape, 10.0, np.float32)
    for row, col, w, h, p in peaks:
        blob = _blob(shape, row, col, 1.5, p)
        owns = blob > centre
        centre = np.maximum(centre, blob)
        width[owns], height[owns] = w, h
    return centre, width, height


def test_each_peak_is_a_box_of_its_predicted_size():
    boxes, scores = centre_boxes(*_maps([(10, 10, 40, 20, 0.9), (40, 50, 16, 16, 0.6)]), stride=4, conf=0.3,
                                 iou_thresh=0.5)
    assert scores.tolist() == pytest.approx([0.9, 0.6])
    # Cell (10, 10) on a stride-4 grid is centred at pixel (42, 42).
    assert boxes.tolist() == [[22.0, 32.0, 62.0, 52.0], [194.0, 154.0, 210.0, 170.0]]


def test_suppression_scales_with_crown_size():
    """Two peaks 5 cells (20 px) apart: one big crown's second peak is dropped, two small crowns both stay."""
    big = _maps([(20, 20, 80, 80, 0.9), (20, 25, 80, 80, 0.5)])
    small = _maps([(20, 20, 18, 18, 0.9), (20, 25, 18, 18, 0.5)])
    assert len(centre_boxes(*big, stride=4, conf=0.3, iou_thresh=0.4)[0]) == 1
    assert len(centre_boxes(*small, stride=4, conf=0.3, iou_thresh=0.4)[0]) == 2


def test_threshold_and_minimum_area():
    maps = _maps([(10, 10, 40, 40, 0.9), (40, 40, 8, 8, 0.8), (50, 10, 40, 40, 0.2)])
    boxes, _ = centre_boxes(*maps, stride=4, conf=0.3, iou_thresh=0.5)
    assert len(boxes) == 2  # the 0.2 peak is under the threshold
    boxes, _ = centre_boxes(*maps, stride=4, conf=0.3, iou_thresh=0.5, min_area_px=np.pi / 4 * 10 * 10)
    assert len(boxes) == 1  # the 8 x 8 px crown is under the minimum area


def test_kind_decodes_the_upsampled_maps_on_the_native_grid():
    meta = {k: json.dumps(v) for k, v in {"output_kind": "centre_boxes", "crown_stride_px": 4, "det_conf": 0.3,
                                            "det_iou_thresh": 0.5, "min_crown_area_m2": 0.0, "gsd_m": 0.1}.items()}
    spec = spec_from_metadata(meta)
    assert spec.kind.detects_boxes and spec.class_names == ("tree",)
    centre, width, height = _maps([(10, 10, 40, 20, 0.9)], shape=(32, 32))
    full = np.stack([np.zeros_like(centre), centre, width, height]).repeat(4, 1).repeat(4, 2)[None]
    decoded = spec.kind.decode(spec, {"maps": full}, (128, 128))
    assert "canopy" not in decoded  # crowns are the boxes' ellipses unless the model asks for canopy
    boxes, scores, classes = spec.kind.select(spec, decoded)
    assert boxes.tolist() == [[22.0, 32.0, 62.0, 52.0, 0.0]] and classes.tolist() == [0]
    with pytest.raises(ModelError, match="centre_boxes"):
        spec.kind.decode(spec, {"maps": full[:, :2]}, (128, 128))
    with pytest.raises(ModelError, match="NaN"):
        spec.kind.decode(spec, {"maps": full * np.nan}, (128, 128))
