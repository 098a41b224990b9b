"""DeepForest's RetinaNet tree model exported to ONNX: the engine's boxes equal torchvision's decoding.

Random weights stand in for DeepForest's (no hub here), saved as DeepForest
publishes them (``config.json`` + ``model.safetensors``, torchvision's names).
In CI torchvision is absent: the reference is the rebuilt network plus
torchvision's decoding written in torch (:mod:`engine.export.retinanet`). Where
DeepForest itself is importable, ``test_matches_deepforest_predict_image`` runs
DeepForest's own ``predict_image`` on the same tile and weights.

The checkpoints' config sets RetinaNet's ``min_size`` to 128 (DeepForest's is
800, its default): the same graph and decoding at 1/40 of the arithmetic, so the
suite stays fast on two cores.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("safetensors")

from engine.export.deepforest import export_deepforest, load_checkpoint, torchvision_state_dict  # noqa: E402
from engine.export.retinanet import DeepForestTile, RetinaNetNet, reference_detections  # noqa: E402
from engine.models.runner import OnnxModel  # noqa: E402

PATCH = 96
MIN_SIZE = 128
SCORE, NMS = 0.1, 0.05


def random_net(seed: int = 0, num_classes: int = 1) -> RetinaNetNet:
    """Random weights whose heads give a few dozen boxes above DeepForest's 0.1 score."""
    torch.manual_seed(seed)
    net = RetinaNetNet(num_classes).eval()
    with torch.no_grad():
        head = net.head
        head.classification_head.cls_logits.weight.normal_(0, 3.0)
        head.classification_head.cls_logits.bias.fill_(-2.5)
        head.regression_head.bbox_reg.weight.normal_(0, 0.5)
    return net


def save_hub_folder(folder, net: RetinaNetNet, label_dict=None):
    """A folder as PyTorchModelHubMixin.save_pretrained writes DeepForest's RetinaNetHub."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    config = {"num_classes": net.head.classification_head.num_classes, "nms_thresh": 0.05, "score_thresh": 0.1,
              "label_dict": label_dict or {"Tree": 0}, "min_size": MIN_SIZE}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("deepforest")
    net = random_net()
    folder = save_hub_folder(root / "deepforest-tree", net)
    result = export_deepforest(str(folder), root / "deepforest.onnx", patch_size_px=PATCH)
    return result, net, folder


def _engine_boxes(model: OnnxModel, raw: np.ndarray):
    decoded = model.run(raw)
    return model.spec.kind.select(model.spec, decoded)


def test_metadata_says_what_deepforest_uses(exported):
    result, _, _ = exported
    spec = OnnxModel(result.path).spec
    block = json.loads(spec.metadata["retinanet"])
    assert spec.output_kind == "retinanet" and spec.kind.detects_boxes
    assert spec.class_names == ("Tree",)
    assert (spec.gsd_m, spec.tile_size_px, spec.overlap_px) == (0.1, PATCH, round(PATCH * 0.05))
    assert (spec.det_conf, spec.det_iou_thresh) == (0.1, 0.05)
    assert spec.fixed_input_px == PATCH
    assert json.loads(spec.metadata["license"]) == "MIT"
    assert "deepforest-tree" in json.loads(spec.metadata["provenance"])
    assert block["resized_px"] == MIN_SIZE and block["padded_px"] == MIN_SIZE
    assert result.max_abs_diff < 1e-4


@pytest.mark.parametrize("seed", [1, 2])
def test_engine_boxes_equal_torchvision_decoding(exported, seed):
    result, net, _ = exported
    model = OnnxModel(result.path)
    raw = np.random.default_rng(seed).integers(0, 256, (3, PATCH, PATCH)).astype(np.float32)
    boxes, scores, classes = _engine_boxes(model, raw)
    reference = reference_detections(DeepForestTile(net, PATCH, min_size=MIN_SIZE), torch.from_numpy(raw[None]),
                                     SCORE, NMS)
    assert len(reference["boxes"]) >= 3, "the random weights should give boxes"
    assert len(boxes) == len(reference["boxes"])
    np.testing.assert_allclose(boxes[:, :4], reference["boxes"].numpy(), atol=1e-3)
    np.testing.assert_allclose(scores, reference["scores"].numpy(), atol=1e-5)
    assert np.array_equal(classes, reference["labels"].numpy())
    assert np.all(boxes[:, 4] == 0)


def test_run_thresholds_change_the_boxes(exported):
    from dataclasses import replace

    result, _, _ = exported
    model = OnnxModel(result.path)
    raw = np.random.default_rng(1).integers(0, 256, (3, PATCH, PATCH)).astype(np.float32)
    decoded = model.run(raw)
    strict = replace(model.spec, det_conf=0.2)
    loose_nms = replace(model.spec, det_iou_thresh=0.5)
    n = len(model.spec.kind.select(model.spec, decoded)[0])
    assert len(model.spec.kind.select(strict, decoded)[0]) < n < len(model.spec.kind.select(loose_nms, decoded)[0])


def test_legacy_and_lightning_names_load(tmp_path):
    net = random_net(3)
    state = net.state_dict()
    legacy = {}
    for key, value in state.items():
        # torchvision < 0.13 heads (conv.2i) and FPN blocks (no .0), inside a Lightning checkpoint.
        key = key.replace("classification_head.conv.1.0.", "classification_head.conv.2.")
        key = key.replace("inner_blocks.2.0.", "inner_blocks.2.")
        legacy["model." + key] = value
    legacy["model.backbone.body.bn1.num_batches_tracked"] = torch.tensor(0)
    assert torchvision_state_dict({"state_dict": legacy}).keys() == state.keys()
    path = tmp_path / "finetuned.ckpt"
    torch.save({"state_dict": legacy, "hyper_parameters": {"label_dict": {"Tree": 0}}}, path)
    checkpoint = load_checkpoint(str(path))
    assert checkpoint.class_names == ("Tree",)
    for key, value in state.items():
        assert torch.equal(checkpoint.state[key], value)


def test_export_refuses_what_is_not_a_retinanet(tmp_path):
    from engine.errors import InputError, ModelError

    bad = tmp_path / "unet.pt"
    torch.save({"segmentation_head.0.weight": torch.zeros(2, 16, 3, 3)}, bad)
    with pytest.raises(ModelError, match="not a RetinaNet"):
        export_deepforest(str(bad), tmp_path / "out.onnx")
    with pytest.raises(InputError, match="must end in .onnx"):
        export_deepforest(str(bad), tmp_path / "out.bin")


def test_predict_with_the_exported_model_stores_boxes(exported, tmp_path):
    from engine import Job, predict
    from tests.rasters import read_crowns, write_raster

    result, _, _ = exported
    rng = np.random.default_rng(5)
    image = write_raster(tmp_path / "ortho.tif", rng.integers(0, 256, (3, 150, 150)).astype(np.uint8))
    run = predict(Job(image=image, cache_dir=tmp_path / "cache", model=result.path, outputs={"instances"}))
    assert run.state == "complete" and run.features > 0
    crowns = read_crowns(tmp_path / "cache")
    assert {"box_xmin", "box_ymin", "box_xmax", "box_ymax", "box_angle"} <= set(crowns[0])
    for crown in crowns:
        assert crown["box_xmin"] < crown["box_xmax"] and crown["box_ymin"] < crown["box_ymax"]
        assert crown["score"] > 0.1


def test_matches_deepforest_predict_image(exported):
    """Only where DeepForest (and so torchvision) is importable: its own predict_image on the same tile."""
    pytest.importorskip("deepforest")
    from tests.deepforest_reference import deepforest_boxes

    result, _, folder = exported
    model = OnnxModel(result.path)
    raw = np.random.default_rng(7).integers(0, 256, (3, PATCH, PATCH)).astype(np.float32)
    boxes, scores, _ = _engine_boxes(model, raw)
    expected = deepforest_boxes(folder, raw)
    assert len(expected) >= 3 and len(boxes) == len(expected)
    np.testing.assert_allclose(boxes[:, :4], expected[["xmin", "ymin", "xmax", "ymax"]].to_numpy(), atol=1e-3)
    np.testing.assert_allclose(scores, expected["score"].to_numpy(), atol=1e-5)
