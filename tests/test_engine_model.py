"""Model metadata: our keys, Deepness's keys, and clear errors for unusable models."""

import json

import numpy as np
import onnx
import pytest

from engine.errors import InputError, ModelError
from engine.models.onnx_meta import read_onnx_metadata
from engine.models.runner import OnnxModel
from engine.models.spec import describe_model, spec_from_metadata
from engine.settings import Job, resolve_settings
from tests.onnx_models import conv1x1_model, passthrough_model


def deepness(**values):
    return {k: json.dumps(v) if not isinstance(v, str) else v for k, v in values.items()}


def test_our_metadata_round_trips(tmp_path):
    path = passthrough_model(tmp_path / "m.onnx", gsd_m=0.2, tile_size_px=128, overlap_px=32)
    spec = describe_model(path)
    assert (spec.gsd_m, spec.tile_size_px, spec.overlap_px) == (0.2, 128, 32)
    assert spec.class_names == ("tree",) and spec.channel_of_class == (1,)
    assert spec.output_kind == "semantic"
    assert read_onnx_metadata(path) == {p.key: p.value for p in onnx.load(str(path)).metadata_props}


@pytest.mark.parametrize("tile_key", ["tile_size", "tiles_size"])
def test_deepness_metadata(tile_key):
    meta = deepness(model_type="Segmentor", class_names={"0": "background", "1": "tree", "2": "shrub"},
                    resolution=20, tiles_overlap=15, seg_thresh=0.4, standardization_mean=[0.5, 0.5, 0.5],
                    standardization_std=[0.2, 0.2, 0.2], **{tile_key: 512})
    spec = spec_from_metadata(meta)
    assert spec.gsd_m == pytest.approx(0.2)
    assert spec.tile_size_px == 512 and spec.overlap_px == 76  # Deepness's count: int(2 * 76.8) // 2
    assert spec.class_names == ("tree", "shrub") and spec.channel_of_class == (1, 2)
    assert spec.scale == pytest.approx(1 / 255) and spec.mean == (0.5,) * 3 and spec.seg_thresh == 0.4


def test_deepness_detector_reads_as_a_detector_and_other_types_are_refused_clearly():
    spec = spec_from_metadata(deepness(model_type="Detector", class_names={"0": "tree"}, det_conf=0.3,
                                       det_iou_thresh=0.2))
    assert (spec.output_kind, spec.class_names, spec.det_conf, spec.det_iou_thresh) == ("detector", ("tree",), 0.3, 0.2)
    with pytest.raises(ModelError, match="Regressor"):
        spec_from_metadata(deepness(model_type="Regressor"))


def test_fixed_input_size_sets_the_tile_and_rejects_overrides(tmp_path):
    path = passthrough_model(tmp_path / "m.onnx", tile_size_px=96, fixed_tile=True, extra_metadata={"tile_size_px": 96})
    model = OnnxModel(path)
    assert model.spec.fixed_input_px == 96
    with pytest.raises(InputError, match="only takes 96 px"):
        resolve_settings(Job(image="x.tif", cache_dir="c", tile_size_px=128), model.spec, "EPSG:3857")


def test_bad_overlap_is_explained():
    spec = spec_from_metadata(deepness(output_kind="semantic", tile_size_px=64, overlap_px=16))
    with pytest.raises(InputError, match="smaller than the tile size"):
        resolve_settings(Job(image="x.tif", cache_dir="c", overlap_px=64), spec, "EPSG:3857")
    assert resolve_settings(Job(image="x.tif", cache_dir="c", overlap_px=40), spec, "EPSG:3857").core_px == 24


def test_corrupt_and_truncated_onnx_files(tmp_path):
    good = conv1x1_model(tmp_path / "good.onnx")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[:-37])
    for path in (truncated, tmp_path / "text.onnx"):
        if path.name == "text.onnx":
            path.write_text("hello, I am not a model")
        with pytest.raises(ModelError, match="not a valid ONNX model"):
            OnnxModel(path)


def test_model_expecting_other_channels(tmp_path):
    from engine.errors import RasterError
    from engine.run.predict import predict
    from tests.rasters import write_raster

    image = write_raster(tmp_path / "img.tif", np.zeros((3, 50, 50), np.uint8))
    path = passthrough_model(tmp_path / "m.onnx", n_bands=4)
    with pytest.raises(RasterError, match="needs bands 1, 2, 3, 4 but img.tif has 3 bands"):
        predict(Job(image=image, cache_dir=tmp_path / "c", model=path))


def test_normalisation_uses_scale_mean_std(tmp_path):
    model = OnnxModel(conv1x1_model(tmp_path / "c.onnx"))
    raw = np.full((3, 4, 4), 255, np.float32)
    x = model.normalise(raw)
    np.testing.assert_allclose(x[0, :, 0, 0], (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]),
                               rtol=1e-5)


def test_output_kinds_come_from_one_registry():
    from engine.models import kinds

    assert {"semantic", "canopy_centres", "instance_masks"} <= set(kinds.names())
    with pytest.raises(ModelError, match="expected one of .*canopy_centres.*semantic"):
        spec_from_metadata({"output_kind": '"hologram"'})


def test_a_new_output_kind_is_one_registered_class(monkeypatch):
    from engine.models import kinds
    from engine.models.kinds.semantic import Semantic

    class Heights(Semantic):  # a made-up kind: any class registered under a name
        name = "canopy_heights"
        deepness_types = ("regressor",)

    monkeypatch.setitem(kinds._REGISTRY, Heights.name, Heights)
    spec = spec_from_metadata({"output_kind": '"canopy_heights"', "class_names": '["background", "height"]'})
    assert isinstance(spec.kind, Heights) and spec.class_names == ("height",)
    assert isinstance(spec_from_metadata({"model_type": '"Regressor"'}).kind, Heights)
