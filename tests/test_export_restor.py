"""export-restor: Restor's SegFormer and UNet checkpoints to ONNX, checked against PyTorch.

The models are the real architectures with random weights (Hugging Face is out of
reach in tests), saved the way Restor publishes them: transformers'
save_pretrained for SegFormer, a ``model.pt`` state dict for the UNet. The
PyTorch references follow tcd_pipeline's own forward passes: SegFormer through
``SegformerImageProcessor(do_resize=False)``, logits upsampled bilinearly and
softmaxed; UNet on raw 0-255 values, softmaxed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.cli import main
from engine.errors import InputError, ModelError
from engine.export.restor import (
    Family,
    export_restor,
    family_of_dir,
    family_of_id,
    is_hub_id,
    load_checkpoint,
)
from engine.models.onnx_meta import read_onnx_metadata
from engine.models.runner import OnnxModel
from engine.models.spec import describe_model

ROOT = Path(__file__).resolve().parent.parent
TORCH_REASON = "torch is not installed (pip install -r requirements-export.txt)"
TOLERANCE = 1e-4
TILE_SIZES_PX = (128, 96)


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason=TORCH_REASON)


def _raw_tile(size_px: int, seed: int) -> np.ndarray:
    """An RGB uint8 tile with smooth structure plus noise, like imagery rather than pure noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size_px, 0:size_px] / size_px
    base = 127 + 100 * np.sin(6 * xx + 3 * seed) * np.cos(5 * yy)
    tile = base[None] + rng.normal(0, 25, (3, size_px, size_px))
    return np.clip(tile, 0, 255).astype(np.uint8)


def _spread_batchnorm(torch, model) -> None:
    """Give eval-mode BatchNorm non-trivial statistics, so a layer mix-up changes the output."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)


@pytest.fixture(scope="module")
def segformer(torch, tmp_path_factory):
    """A randomly initialised mit-b0 SegFormer saved as save_pretrained, and its ONNX export via the CLI."""
    transformers = pytest.importorskip("transformers", reason=TORCH_REASON)
    torch.manual_seed(0)
    config = transformers.SegformerConfig(num_labels=2)  # the defaults are mit-b0's
    model = transformers.SegformerForSemanticSegmentation(config).eval()
    with torch.no_grad():
        # Random init gives logits near 0 and probabilities near 0.5 everywhere,
        # which would hide differences; a steeper classifier spreads them over 0..1.
        model.decode_head.classifier.weight.mul_(200.0)
    folder = tmp_path_factory.mktemp("segformer") / "tcd-segformer-mit-b0"
    model.save_pretrained(folder)
    transformers.SegformerImageProcessorPil().save_pretrained(folder)
    out = folder.parent / "segformer.onnx"
    assert main(["export-restor", str(folder), str(out), "--name", "restor/tcd-segformer-mit-b0"]) == 0
    return model, transformers.SegformerImageProcessorPil.from_pretrained(folder, do_resize=False), out


@pytest.fixture(scope="module")
def unet(torch, tmp_path_factory):
    """A randomly initialised smp-layout UNet (resnet34) saved as Restor's model.pt, and its ONNX export."""
    from engine.export.unet import build_unet

    torch.manual_seed(0)
    model = build_unet("resnet34", classes=2).eval()
    _spread_batchnorm(torch, model)
    with torch.no_grad():
        model.segmentation_head[0].weight.mul_(20.0)  # spread the probabilities, as for the SegFormer
    folder = tmp_path_factory.mktemp("unet") / "tcd-unet-r34"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "model.pt")
    result = export_restor(str(folder), folder.parent / "unet.onnx")
    return model, folder, result


def _check_spread(probs: np.ndarray) -> None:
    # The comparison only means something if the tree probability varies.
    assert probs[1].std() > 0.05
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)


def test_segformer_onnx_matches_tcd_pipeline_forward(torch, segformer):
    model, processor, path = segformer
    engine_model = OnnxModel(path)
    for seed, size_px in enumerate(TILE_SIZES_PX):
        raw = _raw_tile(size_px, seed)
        # tcd_pipeline's Segformer.forward: float CHW tiles through the image processor.
        inputs = processor(images=[torch.from_numpy(raw.astype(np.float32))], return_tensors="pt")
        with torch.no_grad():
            logits = model(pixel_values=inputs.pixel_values).logits
            expected = (
                torch.nn.functional.interpolate(
                    logits, size=inputs.pixel_values.shape[-2:], mode="bilinear", align_corners=False
                )
                .softmax(dim=1)[0]
                .numpy()
            )
        got = engine_model.run(raw)["probs"]
        assert got.shape == (2, size_px, size_px)
        _check_spread(expected)
        assert np.max(np.abs(got - expected)) < TOLERANCE


def test_unet_onnx_matches_tcd_pipeline_forward(torch, unet):
    model, _, result = unet
    assert result.family is Family.UNET
    assert result.max_abs_diff < TOLERANCE
    engine_model = OnnxModel(result.path)
    for seed, size_px in enumerate(TILE_SIZES_PX):
        raw = _raw_tile(size_px, seed)
        # tcd_pipeline's SMPModel.forward: raw 0-255 floats, softmax of the logits.
        with torch.no_grad():
            expected = model(torch.from_numpy(raw.astype(np.float32))[None]).softmax(dim=1)[0].numpy()
        got = engine_model.run(raw)["probs"]
        assert got.shape == (2, size_px, size_px)
        _check_spread(expected)
        assert np.max(np.abs(got - expected)) < TOLERANCE


def test_segformer_metadata_is_what_the_engine_and_plugin_read(segformer):
    path = segformer[2]
    spec = describe_model(path)
    assert spec.name == "restor/tcd-segformer-mit-b0"
    assert spec.output_kind == "semantic"
    assert spec.class_names == ("tree",) and spec.channel_of_class == (1,)
    assert (spec.gsd_m, spec.tile_size_px, spec.overlap_px) == (0.1, 1024, 256)
    assert spec.bands == (1, 2, 3)
    assert spec.scale == pytest.approx(1 / 255)
    assert spec.mean == pytest.approx((0.485, 0.456, 0.406))
    assert spec.std == pytest.approx((0.229, 0.224, 0.225))
    assert spec.output_activation == "none"
    meta = read_onnx_metadata(path)
    assert json.loads(meta["license"]) == "CC BY-NC 4.0"
    assert json.loads(meta["class_names"]) == ["background", "tree"]
    assert "tcd-segformer-mit-b0" in json.loads(meta["provenance"])


def test_unet_metadata_feeds_raw_values(unet):
    result = unet[2]
    spec = describe_model(result.path)
    assert result.name == spec.name == "tcd-unet-r34"  # a folder's name when no --name is given
    assert (spec.scale, spec.mean, spec.std) == (1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert (spec.gsd_m, spec.tile_size_px, spec.overlap_px) == (0.1, 1024, 256)
    assert spec.class_names == ("tree",)


def test_onnx_input_has_dynamic_height_and_width(unet, segformer):
    import onnxruntime as ort

    for path in (unet[2].path, segformer[2]):
        shape = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0].shape
        assert shape[1] == 3 and not isinstance(shape[2], int) and not isinstance(shape[3], int)


def test_smp_save_pretrained_folder_exports_the_same_model(torch, unet, tmp_path):
    from safetensors.torch import save_file

    model, _, result = unet
    folder = tmp_path / "smp"
    folder.mkdir()
    # What segmentation-models-pytorch's save_pretrained writes for smp.Unet("resnet34", classes=2).
    config = {
        "_model_class": "Unet",
        "activation": None,
        "aux_params": None,
        "classes": 2,
        "decoder_attention_type": None,
        "decoder_channels": [256, 128, 64, 32, 16],
        "decoder_interpolation": "nearest",
        "decoder_use_norm": "batchnorm",
        "encoder_depth": 5,
        "encoder_name": "resnet34",
        "encoder_weights": None,
        "in_channels": 3,
    }
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    assert family_of_dir(folder) is Family.UNET
    other = export_restor(str(folder), tmp_path / "smp.onnx", name="restor/tcd-unet-r34")
    assert describe_model(other.path).name == "restor/tcd-unet-r34"
    raw = _raw_tile(64, 5)
    np.testing.assert_allclose(
        OnnxModel(other.path).run(raw)["probs"], OnnxModel(result.path).run(raw)["probs"], atol=1e-6
    )


@pytest.mark.parametrize(
    ("name", "bottleneck"), [("resnet18", False), ("resnet34", False), ("resnet50", True), ("resnet101", True)]
)
def test_unet_encoder_is_recognised_from_its_weights(torch, name, bottleneck):
    from engine.export.unet import build_unet, encoder_of_state_dict

    with torch.device("meta"):  # layout only: no memory, no initialisation time
        state = build_unet(name).state_dict()
    assert encoder_of_state_dict(state) == name
    assert ("encoder.layer1.0.conv3.weight" in state) is bottleneck


def test_unet_with_other_than_two_classes_is_refused(torch, tmp_path):
    from engine.export.unet import build_unet

    with torch.device("meta"):
        state = build_unet("resnet18", classes=3).state_dict()
    torch.save({k: torch.zeros(v.shape, dtype=v.dtype) for k, v in state.items()}, tmp_path / "model.pt")
    with pytest.raises(ModelError, match="3 classes"):
        load_checkpoint(str(tmp_path))


def test_family_is_told_from_ids_and_folders(tmp_path):
    assert family_of_id("restor/tcd-segformer-mit-b3") is Family.SEGFORMER
    assert family_of_id("restor/tcd-unet-r101") is Family.UNET
    with pytest.raises(ModelError, match="neither SegFormer nor UNet"):
        family_of_id("restor/tcd-maskrcnn")
    assert is_hub_id("restor/tcd-unet-r50")
    assert not is_hub_id(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "segformer"}))
    assert family_of_dir(tmp_path) is Family.SEGFORMER
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "detr"}))
    with pytest.raises(ModelError, match="'detr'"):
        family_of_dir(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(ModelError, match="no SegFormer or UNet checkpoint"):
        family_of_dir(tmp_path)


def test_missing_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_checkpoint(str(tmp_path / "absent"))


def test_cli_reports_a_missing_folder_in_one_line(tmp_path, capsys):
    pytest.importorskip("torch", reason=TORCH_REASON)
    assert main(["export-restor", str(tmp_path / "absent"), str(tmp_path / "out.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: The model folder") and "\n" not in err
    assert not (tmp_path / "out.onnx").exists()


def test_output_must_be_an_onnx_file(tmp_path):
    with pytest.raises(InputError, match=r"must end in \.onnx"):
        export_restor(str(tmp_path), tmp_path / "model.pt")


def test_without_torch_the_error_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes "import torch" raise ImportError
    with pytest.raises(ModelError, match="requirements-export.txt"):
        export_restor(str(tmp_path), tmp_path / "model.onnx")


def test_importing_the_engine_and_its_cli_never_imports_torch():
    code = (
        "import sys, engine.export.restor, engine.cli.export_restor; "
        "print(sorted(m for m in ('torch', 'transformers', 'huggingface_hub') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
