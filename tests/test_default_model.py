"""The bundled default model: present, small, fully described, and finding crowns on the bundled sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from engine.models.onnx_meta import read_onnx_metadata
from engine.models.runner import OnnxModel
from engine.models.spec import default_model_path
from engine.postprocess.crowns import delineate_crowns

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "resources" / "models" / "tcd_default.onnx"
SAMPLE = ROOT / "resources" / "sample" / "OSBS_029.tif"
REQUIRED_KEYS = {
    "name", "description", "output_kind", "class_names", "gsd_m", "tile_size_px", "overlap_px", "bands", "scale",
    "mean", "std", "seg_thresh", "centre_thresh", "peak_min_distance_m", "min_crown_area_m2", "license", "provenance",
}


def test_default_model_is_bundled_and_small():
    assert default_model_path() == MODEL
    assert MODEL.is_file()
    assert MODEL.stat().st_size < 20 * 1024 * 1024


def test_metadata_is_complete_json():
    meta = read_onnx_metadata(MODEL)
    assert REQUIRED_KEYS <= set(meta)
    values = {key: json.loads(meta[key]) for key in REQUIRED_KEYS}
    assert values["output_kind"] == "canopy_centres"
    assert values["class_names"] == ["tree"]
    assert values["gsd_m"] == pytest.approx(0.1)
    assert values["bands"] == [1, 2, 3]
    assert 0 < values["seg_thresh"] < 1 and 0 < values["centre_thresh"] < 1
    assert values["peak_min_distance_m"] > 0 and values["min_crown_area_m2"] >= 0
    assert values["license"] == "MIT"
    provenance = values["provenance"]
    assert provenance["script"] == "training/train_default_model.py"
    assert set(provenance["files_sha256"]) == {
        "2019_YELL_2_528000_4978000_image_crop2.png", "2019_YELL_2_528000_4978000_image_crop2.xml",
        "OSBS_029.png", "OSBS_029.csv", "SOAP_031.png",
    }


def test_model_loads_with_a_dynamic_tile_size():
    import onnx

    proto = onnx.load(str(MODEL), load_external_data=False)
    assert proto.ir_version <= 10
    model = OnnxModel(MODEL)
    assert model.spec.output_kind == "canopy_centres"
    assert model.spec.fixed_input_px is None
    probs = model.run(np.full((3, 100, 72), 128, np.uint8))["probs"]
    assert probs.shape == (2, 100, 72)


def test_finds_the_crowns_of_the_bundled_sample():
    """OSBS_029: 0.1 m, 61 annotated crowns. Most of it was training data, so this checks plumbing, not accuracy."""
    model = OnnxModel(MODEL)
    with rasterio.open(SAMPLE) as src:
        raw = src.read([1, 2, 3])
    probs = model.run(raw)["probs"]
    assert probs.shape == (2, 400, 400)
    assert probs.min() >= 0 and probs.max() <= 1
    canopy, centres = probs
    # Open pine stand: some canopy, far from all or nothing.
    assert 0.05 < float((canopy > model.spec.seg_thresh).mean()) < 0.8
    spec = model.spec
    labels = delineate_crowns(canopy, centres, gsd_m=spec.gsd_m, seg_thresh=spec.seg_thresh,
                              centre_thresh=spec.centre_thresh, peak_min_distance_m=spec.peak_min_distance_m,
                              min_crown_area_m2=spec.min_crown_area_m2)
    assert 30 <= labels.max() <= 120
