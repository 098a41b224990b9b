"""Deepness segmentation layouts run as Deepness 0.6.5 runs them.

Our own tiny models (``tests.onnx_models.band_maps_model``: each output holds chosen
input bands) exercise every layout in CI: one map or many outputs, with or without a
class axis, class names as a dict or a list of dicts, an output smaller than the
input, standardisation, ``seg_thresh`` and the per-run threshold, ``seg_small_segment``
beside the crown rules, and the models refused before any folder is written.

Where a checkout of Deepness 0.6.5 is named by ``TCD_DEEPNESS_DIR``, its own test
models run on its test raster and are held to the figures Deepness itself gave
(``benchmarks/deepness_compat.py`` ran it headless; the table is in docs/MODELS.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from engine import Job, predict
from engine.errors import CacheMismatchError, TCDError
from engine.models.kinds.semantic import deepness_class_map, median_of_labels, written_class_map
from engine.models.runner import OnnxModel
from engine.models.spec import spec_from_metadata
from tests.onnx_models import band_maps_model, constant_outputs_model, value_model
from tests.rasters import read_crowns, write_raster

GSD_M = 0.1
SIDE_PX = 128
IMAGE_M2 = (SIDE_PX * GSD_M) ** 2


def _image() -> np.ndarray:
    """Red: a 230 square (9 m²) and a 150 square (9 m²); green: a 240 square (9 m²); blue: a 230 square
    (7.2 m²) with a 4x4 px hole (0.16 m²) and a 6x6 px blob (0.36 m²). Everything else 20."""
    img = np.full((3, SIDE_PX, SIDE_PX), 20, np.uint8)
    img[0, 10:40, 10:40] = 230
    img[0, 70:100, 10:40] = 150
    img[1, 10:40, 70:100] = 240
    img[2, 100:124, 90:120] = 230
    img[2, 110:114, 103:107] = 20
    img[2, 80:86, 80:86] = 230
    return img


@pytest.fixture
def raster(tmp_path):
    return write_raster(tmp_path / "image.tif", _image(), gsd_m=GSD_M)


def _meta(names, **extra) -> dict:
    meta = {"model_type": "Segmentor", "class_names": names, "resolution": GSD_M * 100, "tile_size": 64,
            "tiles_overlap": 25, "seg_small_segment": 0}
    meta.update(extra)
    return meta


def _areas(cache) -> dict[str, float]:
    areas: dict[str, float] = {}
    for crown in read_crowns(cache):
        areas[crown["class"]] = areas.get(crown["class"], 0.0) + crown["area_m2"]
    return areas


def test_metadata_keys_tiling_and_names_in_every_documented_form():
    spec = spec_from_metadata(_meta({"0": "background", "1": "tree"}, resolution=5, tile_size=256, tiles_overlap=20))
    assert (spec.gsd_m, spec.tile_size_px, spec.overlap_px) == (0.05, 256, 51)
    assert spec.class_names == ("tree",)
    # Deepness's names key, a Python literal, and a list of dicts with one dict per output
    assert spec_from_metadata({"model_type": '"Segmentor"', "names": "{0: 'background', 1: 'road'}"}
                              ).class_names == ("road",)
    two = spec_from_metadata(_meta([{"0": "Coffee", "1": "Tea"}, {"0": "Juice"}]),
                             output_shapes=((1, 2, 64, 64), (1, 64, 64)))
    assert two.class_names == ("Coffee", "Tea", "Juice")
    assert two.channel_of_class == (0, 1, 2) and two.output_of_class == (0, 0, 1)
    assert two.output_channels == (2, 1)
    # A fixed input is the only tile such a model takes, whatever tile_size says; the overlap is its share.
    fixed = spec_from_metadata(_meta({"0": "tree"}, tile_size=256), input_shape=(1, 3, 64, 64))
    assert (fixed.tile_size_px, fixed.overlap_px) == (64, 16)
    # Metadata alone (no session) gives the same classes.
    assert spec_from_metadata(_meta([{"0": "Coffee", "1": "Tea"}, {"0": "Juice"}])).class_names == two.class_names


@pytest.mark.parametrize(("meta", "shapes", "words"), [
    (_meta({"0": "a", "2": "b"}), None, "without gaps"),
    (_meta([{"0": "a", "1": "b"}]), ((1, 3, 64, 64),), "output 1 has 3 channels but its class_names name 2"),
    (_meta([{"0": "a"}, {"0": "b"}]), ((1, 1, 64, 64),), "1 outputs but its class_names describe 2"),
    (_meta({"0": "a", "1": "b", "2": "c"}), ((1, 64, 64),), "single probability map"),
    (_meta({"0": "a"}), ((1, 1, 128, 128),), "larger than the input"),
    (_meta({"0": "a"}), ((1, 1, 61, 61),), "same even number"),
])
def test_unusable_layouts_are_refused_in_one_sentence(meta, shapes, words):
    with pytest.raises(TCDError) as err:
        spec_from_metadata(meta, input_shape=(1, 3, 64, 64), output_shapes=shapes)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_class_map_and_median_are_deepness_rules():
    probs = np.array([[[0.2, 0.6], [0.6, 0.1]], [[0.3, 0.7], [0.4, 0.1]]], np.float32)
    # Under the threshold counts as zero; nothing left: the first channel (value 1).
    assert deepness_class_map(probs, 0.5).tolist() == [[1, 2], [1, 1]]
    assert deepness_class_map(probs[1:], 0.5).tolist() == [[0, 1], [0, 0]]
    # Our format: the written classes' best above the threshold, the background channel aside, so a
    # threshold under 0.5 counts for a background/tree softmax (Deepness's argmax gives background there).
    softmax = np.array([[[0.6, 0.2]], [[0.4, 0.8]]], np.float32)
    assert deepness_class_map(softmax, 0.3).tolist() == [[1, 2]]
    assert written_class_map(softmax, [1], 0.3).tolist() == [[2, 2]]
    assert written_class_map(softmax, [1], 0.4).tolist() == [[0, 2]]  # above, not at
    labels = np.zeros((9, 9), np.uint8)
    labels[2:7, 2:7] = 2
    labels[4, 4] = 1  # a one-pixel speck inside: gone with 3 px
    labels[0, 8] = 2  # a lone pixel: gone
    smoothed = median_of_labels(labels, 3)
    assert smoothed[4, 4] == 2 and smoothed[0, 8] == 0
    # The same as the sorted-window median with repeated edges (OpenCV's medianBlur), for random maps.
    rng = np.random.default_rng(3)
    noisy = rng.integers(0, 4, (20, 23)).astype(np.uint8)
    padded = np.pad(noisy, 2, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (5, 5)).reshape(20, 23, 25)
    assert np.array_equal(median_of_labels(noisy, 5), np.sort(windows, axis=2)[..., 12])
    assert np.array_equal(median_of_labels(noisy, 4), median_of_labels(noisy, 5))  # Deepness rounds up to odd


@pytest.mark.parametrize(("class_axis", "names"), [(True, [{"0": "Coffee"}]), (False, {"0": "Coffee"})])
def test_one_map_with_or_without_class_axis(tmp_path, raster, class_axis, names):
    model = band_maps_model(tmp_path / "m.onnx", [(0,)], _meta(names), class_axis=class_axis)
    predict(Job(image=raster, cache_dir=tmp_path / "cache", model=model))
    areas = _areas(tmp_path / "cache")
    assert set(areas) == {"Coffee"}
    assert areas["Coffee"] == pytest.approx(18.0, rel=0.02)  # both red squares: 230 and 150 are >= 0.5


def test_run_threshold_is_used_recorded_and_resumed_with(tmp_path, raster):
    model = band_maps_model(tmp_path / "m.onnx", [(0,)], _meta({"0": "Coffee"}, seg_thresh=0.5))
    cache = tmp_path / "cache"
    predict(Job(image=raster, cache_dir=cache, model=model, seg_thresh=0.7))
    assert _areas(cache)["Coffee"] == pytest.approx(9.0, rel=0.02)  # only the 230 square
    with pytest.raises(CacheMismatchError) as err:
        predict(Job(image=raster, cache_dir=cache, model=model))  # the model's own threshold: another cache
    assert "probability threshold" in err.value.differences
    again = predict(Job(image=raster, cache_dir=cache, model=model, seg_thresh=0.7))
    assert again.state == "complete"
    # A threshold equal to the model's is the model's: no new fingerprint, nothing to resume differently.
    plain = tmp_path / "plain"
    predict(Job(image=raster, cache_dir=plain, model=model, seg_thresh=0.5))
    assert predict(Job(image=raster, cache_dir=plain, model=model)).state == "complete"
    with pytest.raises(TCDError, match="between 0 and 1"):
        Job(image=raster, cache_dir=cache, model=model, seg_thresh=1.5)


def test_two_outputs_each_decided_on_its_own(tmp_path, raster):
    names = [{"0": "Coffee", "1": "Tea"}, {"0": "Juice", "1": "Beer"}]
    model = band_maps_model(tmp_path / "m.onnx", [(0, 1), (1, 2)], _meta(names))
    assert OnnxModel(model, provider="cpu").spec.class_names == ("Coffee", "Tea", "Juice", "Beer")
    predict(Job(image=raster, cache_dir=tmp_path / "cache", model=model))
    areas = _areas(tmp_path / "cache")
    # Output 0: green wins its square; elsewhere nothing reaches 0.5 but red's squares, and
    # a pixel with nothing left is the first channel's (Deepness's argmax): Coffee.
    assert areas["Tea"] == pytest.approx(9.0, rel=0.02)
    assert areas["Coffee"] == pytest.approx(IMAGE_M2 - 9.0, rel=0.01)
    # Output 1 overlaps output 0: blue's square (its hole kept: not a crown class) and blob.
    assert areas["Beer"] == pytest.approx(7.2 - 0.16 + 0.36, rel=0.03)
    assert areas["Juice"] == pytest.approx(IMAGE_M2 - 7.4, rel=0.01)


def test_output_smaller_than_input_is_the_tiles_centre(tmp_path, raster):
    meta = _meta([{"0": "Coffee"}], tiles_overlap=10)  # 6 px: less than the 2 x 8 px the centre needs
    model = band_maps_model(tmp_path / "m.onnx", [(0,)], meta, inset_px=8)
    assert OnnxModel(model, provider="cpu").spec.output_inset_px == 8
    predict(Job(image=raster, cache_dir=tmp_path / "cache", model=model))  # overlap raised to 16 px
    assert _areas(tmp_path / "cache")["Coffee"] == pytest.approx(18.0, rel=0.02)
    with pytest.raises(TCDError, match="at least 16 px") as err:
        predict(Job(image=raster, cache_dir=tmp_path / "narrow", model=model, overlap_px=8))
    assert "\n" not in str(err.value) and not (tmp_path / "narrow").exists()


def test_standardisation_keys(tmp_path, raster):
    meta = _meta([{"0": "Coffee"}], standardization_mean=[0.5] * 3, standardization_std=[0.5] * 3)
    model = band_maps_model(tmp_path / "m.onnx", [(0,)], meta)
    predict(Job(image=raster, cache_dir=tmp_path / "cache", model=model))
    # (v / 255 - 0.5) / 0.5 >= 0.5 for v >= 191: the 230 square, not the 150 one.
    assert _areas(tmp_path / "cache")["Coffee"] == pytest.approx(9.0, rel=0.02)


@pytest.mark.parametrize(("name", "extra", "crown_rules"), [
    ("water", {}, False), ("tree", {}, True), ("water", {"crown_classes": ["water"]}, True)])
def test_small_segments_for_land_cover_crown_rules_for_crowns(tmp_path, raster, name, extra, crown_rules):
    model = band_maps_model(tmp_path / "m.onnx", [(2,)], _meta({"0": name}, seg_small_segment=5, **extra))
    predict(Job(image=raster, cache_dir=tmp_path / "cache", model=model))
    crowns = read_crowns(tmp_path / "cache")
    holes = sum(c["wkt"].count("),(") for c in crowns)
    blob = [c for c in crowns if c["area_m2"] < 1.0]
    if crown_rules:  # the 0.36 m² blob dropped, the 0.16 m² hole filled
        assert not blob and holes == 0
    else:  # Deepness's median of 5 px keeps both (the blob loses its corners)
        assert len(blob) == 1 and blob[0]["area_m2"] == pytest.approx(0.36 - 4 * 0.03, abs=0.03)
        assert holes == 1


@pytest.mark.parametrize("kind", ["regressor", "superresolution", "superresolution any size", "channels"])
def test_unusable_models_are_refused_before_any_folder(tmp_path, raster, kind):
    if kind == "regressor":
        model = value_model(tmp_path / "m.onnx", {"model_type": "Regressor", "resolution": 10})
    elif kind == "superresolution":
        model = value_model(tmp_path / "m.onnx", {}, scale_up=2)
    elif kind == "superresolution any size":  # output sizes known only by running it
        model = value_model(tmp_path / "m.onnx", {}, scale_up=2, tile_size_px=None)
    else:  # one map where the metadata names three classes
        model = value_model(tmp_path / "m.onnx", {"output_kind": "semantic",
                                                  "class_names": ["background", "a", "b"]}, tile_size_px=None)
    with pytest.raises(TCDError) as err:
        predict(Job(image=raster, cache_dir=tmp_path / "cache", model=model))
    assert "\n" not in str(err.value) and not (tmp_path / "cache").exists()


def test_cli_threshold(tmp_path, raster):
    import subprocess
    import sys

    model = band_maps_model(tmp_path / "m.onnx", [(0,)], _meta({"0": "Coffee"}))
    proc = subprocess.run([sys.executable, "-m", "engine", "predict", str(raster), "--model", str(model),
                           "--out", str(tmp_path / "cache"), "--threshold", "0.7", "--quiet"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
    assert _areas(tmp_path / "cache")["Coffee"] == pytest.approx(9.0, rel=0.02)


# ------------------------------------------------------------------ Deepness's own test models

DEEPNESS_DIR = os.environ.get("TCD_DEEPNESS_DIR")
# Deepness 0.6.5 run headless (benchmarks/deepness_compat.py) on test/data/dummy_fotomap_small.tif at
# 3 cm/px, tile = the model's input, 20 % overlap, its widget's threshold and small-segment defaults:
# per model, each class Deepness draws (background aside) and the share of the image it covers.
DEEPNESS_FIGURES = {
    "dummy_regression_models/one_output_sigmoid_bsx1x512x512.onnx": [("Happiness", 0.2614)],
    "dummy_regression_models/one_output_sigmoid_bsx512x512.onnx": [("channel_1", 0.0559)],
    "dummy_regression_models/two_outputs_sigmoid_bsx1x512x512.onnx": [("Luck", 0.0), ("Failure", 0.0)],
    "dummy_regression_models/two_outputs_sigmoid_bsx512x512.onnx": [("channel_1 (output 1)", 0.9586),
                                                                     ("channel_1 (output 2)", 0.9586)],
    "dummy_segmentation_models/different_output_size_512_to_484.onnx": [("channel_1", 0.0355)],
    "dummy_segmentation_models/dummy_model.onnx": [("channel_1", 0.0017), ("channel_2", 0.0393)],
    "dummy_segmentation_models/one_output_sigmoid_bsx1x512x512.onnx": [("Coffee", 0.0)],
    "dummy_segmentation_models/one_output_sigmoid_bsx512x512.onnx": [("Coffee", 0.041)],
    "dummy_segmentation_models/one_output_softmax_bsx2x512x512.onnx": [("channel_1", 0.0)],
    "dummy_segmentation_models/two_outputs_sigmoid_bsx1x512x512.onnx": [("Coffee", 0.4362), ("Juice", 0.4362)],
    "dummy_segmentation_models/two_outputs_sigmoid_bsx512x512.onnx": [("channel_1 (output 1)", 0.0),
                                                                      ("channel_1 (output 2)", 0.0)],
    "dummy_segmentation_models/two_outputs_softmax_bsx2x512x512.onnx": [("Coffee", 0.0), ("Tea", 1.0),
                                                                        ("Juice", 0.0), ("Beer", 1.0)],
    "one_output_sigmoid_red_detector.onnx": [("channel_1", 0.3669)],
}
DEEPNESS_REFUSED = ("dummy_recognition_model.onnx", "dummy_regression_models/dummy_regression_model.onnx",
                    "dummy_regression_models/dummy_regression_model_batched.onnx", "dummy_superresolution_model.onnx")
needs_deepness = pytest.mark.skipif(
    not DEEPNESS_DIR or not (Path(DEEPNESS_DIR) / "test" / "data" / "dummy_model").is_dir(),
    reason="set TCD_DEEPNESS_DIR to a checkout of PUTvision/qgis-plugin-deepness 0.6.5 to run its test models")


def _deepness(relative: str) -> tuple[Path, Path]:
    data = Path(DEEPNESS_DIR) / "test" / "data"
    return data / "dummy_fotomap_small.tif", data / "dummy_model" / relative


@needs_deepness
@pytest.mark.parametrize("relative", sorted(DEEPNESS_FIGURES))
def test_deepness_test_model_gives_deepness_classes_and_masks(tmp_path, relative):
    import rasterio

    raster, model = _deepness(relative)
    tile_px = OnnxModel(model, provider="cpu").spec.fixed_input_px or 512
    predict(Job(image=raster, cache_dir=tmp_path / "cache", model=model, gsd_m=0.03, tile_size_px=tile_px,
                overlap_px=int(tile_px * 20 / 100 * 2) // 2))
    with rasterio.open(raster) as src:
        image_m2 = abs(src.transform.a * src.transform.e) * src.width * src.height
    assert list(OnnxModel(model, provider="cpu").spec.class_names) == [n for n, _ in DEEPNESS_FIGURES[relative]]
    areas = _areas(tmp_path / "cache")
    for name, fraction in DEEPNESS_FIGURES[relative]:
        assert areas.get(name, 0.0) / image_m2 == pytest.approx(fraction, abs=0.01), name


@needs_deepness
@pytest.mark.parametrize("relative", DEEPNESS_REFUSED)
def test_deepness_value_models_are_refused_before_any_folder(tmp_path, relative):
    raster, model = _deepness(relative)
    with pytest.raises(TCDError) as err:
        predict(Job(image=raster, cache_dir=tmp_path / "cache", model=model, gsd_m=0.03))
    assert "\n" not in str(err.value) and not (tmp_path / "cache").exists()


def test_yolo_instance_segmentation_masks_are_the_crowns(tmp_path):
    """Deepness's YOLO_Ultralytics_segmentation (its model zoo's YOLOv8 instance model): one box whose mask,
    a disc on the 1/4 prototype grid, becomes its crown."""
    from engine.models.kinds.detector import mask_labels

    yy, xx = np.mgrid[0:16, 0:16]
    disc = (yy - 7.5) ** 2 + (xx - 7.5) ** 2 <= 4 ** 2
    protos = np.stack([np.where(disc, 10.0, -10.0), np.zeros((16, 16))])[None]
    # boxes as (4 + classes + masks, candidates): a kept box and one under det_conf
    rows = np.array([[32, 10], [32, 10], [40, 8], [40, 8], [0.9, 0.1], [1.0, 1.0], [0.0, 0.0]])[None]
    meta = {"model_type": "Detector", "det_type": "YOLO_Ultralytics_segmentation", "class_names": {"0": "litter"},
            "resolution": 10, "det_conf": 0.5, "det_iou_thresh": 0.5, "tiles_overlap": 25}
    model = constant_outputs_model(tmp_path / "seg.onnx", {"output0": rows, "output1": protos}, meta)
    raster = write_raster(tmp_path / "image.tif", np.full((3, 64, 64), 100, np.uint8), gsd_m=GSD_M)
    predict(Job(image=raster, cache_dir=tmp_path / "cache", model=model))
    (crown,) = read_crowns(tmp_path / "cache")
    assert crown["class"] == "litter" and crown["score"] == pytest.approx(0.9)
    # The disc of radius 4 prototype pixels is 16 tile pixels: 8.0 m², not the box's ellipse (12.6 m²).
    assert crown["area_m2"] == pytest.approx(np.pi * 1.6 ** 2, rel=0.05)
    # The mask is cut to the box on the prototype grid (Ultralytics' crop), before resizing.
    box = np.array([[20.0, 20.0, 36.0, 60.0, 0.0]])  # the left half of the disc only
    labels = mask_labels(protos[0], np.array([[1.0, 0.0]]), box, np.ones((64, 64), bool), (64, 64))
    assert labels[:, 36:].sum() == 0 and labels[:, :32].sum() > 0


def test_detector_drops_boxes_inside_larger_ones_as_deepness_does(tmp_path):
    """Deepness's map-level clean-up: after NMS, a box mostly inside a larger neighbour goes, whatever its score."""
    from tests.test_detectors import decode, detector_model

    rows = np.array([[50, 50, 60, 60, 0.6, 0.1],  # large, weaker: kept
                     [50, 50, 10, 10, 0.9, 0.1],  # small, inside it (IoU 0.03: NMS keeps it): dropped
                     [130, 130, 20, 20, 0.1, 0.8]])  # alone: kept
    boxes, scores, classes = decode(detector_model(tmp_path / "m.onnx", rows.T, det_type="YOLO_v9"))
    assert boxes[:, :4].tolist() == [[120, 120, 140, 140], [20, 20, 80, 80]]  # best first
    np.testing.assert_allclose(scores, [0.8, 0.6], rtol=1e-6)


@pytest.mark.parametrize("names", [{"0": "background", "1": "tree"}, {"0": "tree"}])
def test_one_class_shortcut_gives_the_class_maps_masks(names):
    """One written class and no smoothing skips the class map; its mask must be the class map's."""
    from engine.models.kinds.semantic import Semantic

    n_channels = 1 if len(names) == 1 else 2
    spec = spec_from_metadata(_meta(names, seg_thresh=0.4), output_shapes=((1, n_channels, 8, 8),))
    rng = np.random.default_rng(1)
    group = rng.random((n_channels, 8, 8)).astype(np.float32)
    group[:, 0, 0] = 0.1  # nothing reaches the threshold: Deepness's argmax gives the first channel
    valid = np.ones((8, 8), bool)
    valid[7] = False
    probs = Semantic().probabilities(spec, {"probs": group.copy()}, valid)
    class_map = deepness_class_map(group, spec.seg_thresh)
    (i, mask), = Semantic._masks(spec, group, 0, [0], (True,), probs, valid)  # a tree class: no smoothing
    assert np.array_equal(mask, (class_map == spec.channel_of_class[i] + 1) & valid)
    assert mask.any() and not mask.all()
