"""Export Restor's tree cover models (tcd_pipeline's model zoo) to ONNX for the engine.

Restor publishes two families of semantic models on Hugging Face, both with the
classes ``background`` and ``tree`` and trained on 10 cm imagery in 1024 px tiles:

* SegFormer (``restor/tcd-segformer-mit-b0`` ... ``-b5``), a ``transformers``
  checkpoint. tcd_pipeline feeds it through ``SegformerImageProcessor`` with
  ``do_resize=False``: raw values * ``rescale_factor`` (1/255), then ImageNet
  mean/std. Its logits come out at 1/4 of the tile and are upsampled bilinearly
  (``align_corners=False``) to the tile before the softmax.
* UNet (``restor/tcd-unet-r34``, ``-r50``, ``-r101``), a state dict ``model.pt`` of
  segmentation-models-pytorch's ``Unet`` with a ResNet encoder. tcd_pipeline feeds
  it raw 0-255 values (no scaling, no normalisation) and applies the softmax to its
  full-resolution logits.

The exported graph takes the normalised (1, 3, H, W) tile with dynamic H and W
and returns softmax probabilities (1, 2, H, W); the preprocessing lives in the
ONNX metadata (``scale``/``mean``/``std``) so the engine applies it, as for any
model. The UNet is rebuilt with smp's exact module layout and parameter names
(:mod:`engine.export.unet`).

torch, transformers and huggingface_hub are imported inside the functions, so
``import engine`` never needs them; they are only needed to export
(``requirements-export.txt``), never to run the exported model.
"""

from __future__ import annotations

import datetime
import os
import re
import tempfile
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ..errors import InputError, ModelError
from .common import (
    MAX_EXPORT_DIFF,
    OPSET,
    first_line,
    onnx_max_diff,
    read_json,
    require,
    save_with_metadata,
)

SEGFORMER_IDS = tuple(f"restor/tcd-segformer-mit-b{i}" for i in range(6))
UNET_ENCODER_OF_ID = {
    "restor/tcd-unet-r34": "resnet34",
    "restor/tcd-unet-r50": "resnet50",
    "restor/tcd-unet-r101": "resnet101",
}
RESTOR_MODEL_IDS = SEGFORMER_IDS + tuple(UNET_ENCODER_OF_ID)

RESTOR_LICENSE = "CC BY-NC 4.0"
CLASS_NAMES = ("background", "tree")
# tcd_pipeline's data config: 10 cm imagery, 1024 px tiles overlapping by 256 px.
GSD_M = 0.1
TILE_SIZE_PX = 1024
OVERLAP_PX = 256
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Traced at a small tile to keep the export fast; H and W stay dynamic.
EXPORT_TILE_PX = 256

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

class Family(str, Enum):
    """Architecture of a Restor checkpoint."""

    SEGFORMER = "segformer"
    UNET = "unet"


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_restor` wrote; ``max_abs_diff`` compares ONNX with PyTorch on a test tile."""

    path: Path
    name: str
    family: Family
    max_abs_diff: float


@dataclass(frozen=True)
class _Loaded:
    """A checkpoint ready to trace: ``net`` maps the normalised tile to probabilities."""

    net: object
    family: Family
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    detail: str


def _require_torch():
    try:
        import torch
    except ImportError as exc:
        raise ModelError("Exporting Restor models needs PyTorch: pip install -r requirements-export.txt.") from exc
    return torch


def is_hub_id(source: str) -> bool:
    """True when ``source`` reads as a Hugging Face ``owner/name`` and is not an existing path."""
    return bool(_HUB_ID.match(source)) and not Path(source).exists()


def family_of_id(model_id: str) -> Family:
    """Architecture of a Hugging Face model id, from Restor's naming."""
    tail = model_id.rsplit("/", 1)[-1].lower()
    if "segformer" in tail:
        return Family.SEGFORMER
    if "unet" in tail:
        return Family.UNET
    known = ", ".join(RESTOR_MODEL_IDS)
    raise ModelError(
        f"'{model_id}' is not a folder here, and its name tells neither SegFormer nor UNet; Restor's "
        f"models are {known}."
    )


def family_of_dir(folder: Path) -> Family:
    """Architecture of a local checkpoint folder, from the files it holds.

    ``config.json`` with ``model_type: segformer`` (transformers' save_pretrained),
    Restor's ``model.pt`` state dict, or smp's save_pretrained (``config.json``
    with ``_model_class``).
    """
    config_path = folder / "config.json"
    config = read_json(config_path) if config_path.is_file() else {}
    if config.get("model_type") == "segformer":
        return Family.SEGFORMER
    if (folder / "model.pt").is_file() or "_model_class" in config:
        return Family.UNET
    if "model_type" in config:
        raise ModelError(
            f"{folder} holds a '{config['model_type']}' model; only SegFormer and UNet models can be exported."
        )
    raise ModelError(f"{folder} holds no SegFormer or UNet checkpoint (expected config.json or Restor's model.pt).")


def _segformer_preprocessing(folder: Path | None, model_id: str | None):
    """scale, mean, std of the model's ``preprocessor_config.json`` as tcd_pipeline applies it.

    Without that file, ``SegformerImageProcessor``'s defaults apply (1/255, ImageNet).
    """
    config = {}
    if folder is not None and (folder / "preprocessor_config.json").is_file():
        config = read_json(folder / "preprocessor_config.json")
    elif model_id is not None:
        hub = require("huggingface_hub", "huggingface_hub")
        try:
            config = read_json(Path(hub.hf_hub_download(model_id, "preprocessor_config.json")))
        except hub.errors.EntryNotFoundError:
            config = {}
        except Exception as exc:  # network and authentication errors alike
            raise ModelError(
                f"Cannot download {model_id}/preprocessor_config.json from Hugging Face: {first_line(exc)}"
            ) from exc
    scale = float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else 1.0
    if config.get("do_normalize", True):
        mean = tuple(float(v) for v in config.get("image_mean", IMAGENET_MEAN))
        std = tuple(float(v) for v in config.get("image_std", IMAGENET_STD))
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return scale, mean, std


def _load_segformer(folder: Path | None, model_id: str | None) -> _Loaded:
    torch = _require_torch()
    transformers = require("transformers", "transformers")
    try:
        model = transformers.SegformerForSemanticSegmentation.from_pretrained(
            str(folder) if folder is not None else model_id, local_files_only=folder is not None
        )
    except (OSError, ValueError) as exc:
        if folder is None:
            raise ModelError(
                f"Cannot download {model_id} from Hugging Face (the export needs internet once): {first_line(exc)}"
            ) from exc
        raise ModelError(f"Cannot load the SegFormer checkpoint in {folder}: {first_line(exc)}") from exc
    if model.config.num_labels != len(CLASS_NAMES):
        raise ModelError(
            f"The SegFormer has {model.config.num_labels} classes; only background/tree models (2 "
            f"classes) can be exported."
        )
    if model.config.num_channels != 3:
        raise ModelError(f"The SegFormer takes {model.config.num_channels} bands; only RGB models can be exported.")
    scale, mean, std = _segformer_preprocessing(folder, model_id)

    class SegformerProbs(torch.nn.Module):
        def __init__(self, segformer):
            super().__init__()
            self.segformer = segformer

        def forward(self, image):
            logits = self.segformer(pixel_values=image).logits
            # tcd_pipeline upsamples the 1/4-resolution logits, then takes the softmax.
            logits = torch.nn.functional.interpolate(
                logits, size=image.shape[-2:], mode="bilinear", align_corners=False
            )
            return logits.softmax(dim=1)

    detail = f"transformers {transformers.__version__}"
    return _Loaded(SegformerProbs(model).eval(), Family.SEGFORMER, scale, mean, std, detail)


def _load_unet(folder: Path | None, model_id: str | None) -> _Loaded:
    torch = _require_torch()
    from . import unet
    if folder is None:
        hub = require("huggingface_hub", "huggingface_hub")
        try:
            weights = Path(hub.hf_hub_download(model_id, "model.pt"))
        except Exception as exc:  # network, authentication and missing-file errors alike
            raise ModelError(
                f"Cannot download {model_id}/model.pt from Hugging Face (the export needs internet "
                f"once): {first_line(exc)}"
            ) from exc
        encoder = UNET_ENCODER_OF_ID.get(model_id)
        source = f"{model_id}/model.pt"
    elif (folder / "model.pt").is_file():
        weights, encoder, source = folder / "model.pt", None, "model.pt"
    else:
        encoder, classes = unet.check_smp_config(read_json(folder / "config.json"), folder / "config.json")
        weights, source = folder / "model.safetensors", "smp save_pretrained"
        if not weights.is_file():
            raise ModelError(f"{folder} has smp's config.json but no model.safetensors.")
    try:
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(weights))
        else:
            state = torch.load(str(weights), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and safetensors raise many unrelated types for bad files
        raise ModelError(f"Cannot read the UNet weights {weights}: {first_line(exc)}") from exc
    if not isinstance(state, dict) or "segmentation_head.0.weight" not in state:
        raise ModelError(f"{weights} is not a state dict of an smp Unet.")
    encoder = encoder or unet.encoder_of_state_dict(state)
    classes = int(state["segmentation_head.0.weight"].shape[0])
    if classes != len(CLASS_NAMES):
        raise ModelError(f"The UNet has {classes} classes; only background/tree models (2 classes) can be exported.")
    model = unet.build_unet(encoder, classes)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(
            f"The UNet weights do not fit an smp Unet with a {encoder} encoder: {first_line(exc)}"
        ) from exc

    class UnetProbs(torch.nn.Module):
        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, image):
            # Full-resolution logits: tcd_pipeline applies the softmax directly.
            return self.unet(image).softmax(dim=1)

    detail = f"smp Unet, {encoder} encoder, weights from {source}"
    # tcd_pipeline feeds its UNets raw 0-255 values.
    return _Loaded(UnetProbs(model).eval(), Family.UNET, 1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), detail)


def load_checkpoint(source: str) -> _Loaded:
    """Load a Restor checkpoint from a Hugging Face id or a local folder, ready to trace."""
    if is_hub_id(source):
        folder, model_id = None, source
        family = family_of_id(source)
    else:
        folder, model_id = Path(source).expanduser(), None
        if not folder.exists():
            raise InputError(f"The model folder {folder} does not exist.")
        if not folder.is_dir():
            raise InputError(f"{folder} is not a folder; give a model folder or a Hugging Face id.")
        family = family_of_dir(folder)
    if family is Family.SEGFORMER:
        return _load_segformer(folder, model_id)
    return _load_unet(folder, model_id)


def _metadata(loaded: _Loaded, name: str, source: str, license_: str) -> dict[str, object]:
    torch = _require_torch()
    kind = "SegFormer" if loaded.family is Family.SEGFORMER else "UNet"
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    return {
        "name": name,
        "description": f"Restor tree cover segmentation ({kind}, {name}); per-pixel tree probability.",
        "output_kind": "semantic",
        "class_names": list(CLASS_NAMES),
        "gsd_m": GSD_M,
        "tile_size_px": TILE_SIZE_PX,
        "overlap_px": OVERLAP_PX,
        "bands": [1, 2, 3],
        "scale": loaded.scale,
        "mean": list(loaded.mean),
        "std": list(loaded.std),
        "output_activation": "none",
        "license": license_,
        "provenance": (
            f"Exported from {source} ({loaded.detail}) with torch {torch.__version__} on {when} by "
            "python -m engine export-restor; preprocessing and softmax as in Restor's tcd_pipeline."
        ),
    }


def export_restor(
    source: str,
    out_path: str | os.PathLike,
    *,
    name: str | None = None,
    license_: str = RESTOR_LICENSE,
) -> ExportResult:
    """Convert a Restor SegFormer or UNet checkpoint to an ONNX model the engine can run.

    ``source`` is a Hugging Face id (``restor/tcd-segformer-mit-b0``; downloads
    once, then uses the Hugging Face cache) or a local folder (save_pretrained
    output, or a folder holding Restor's ``model.pt``). ``name`` defaults to the
    id, or to the folder's name. The export is checked by running the ONNX model
    and PyTorch on the same random tile.
    """
    out_path = Path(out_path).expanduser()
    if out_path.suffix.lower() != ".onnx":
        raise InputError(f"The output file {out_path} must end in .onnx.")
    if not out_path.parent.is_dir():
        raise InputError(f"The output folder {out_path.parent} does not exist.")
    torch = _require_torch()
    require("onnx", "onnx")
    loaded = load_checkpoint(source)
    name = name or (source if is_hub_id(source) else Path(source).expanduser().resolve().name)
    generator = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 256, (1, 3, EXPORT_TILE_PX, EXPORT_TILE_PX), generator=generator).float()
    mean = torch.tensor(loaded.mean).view(1, 3, 1, 1)
    std = torch.tensor(loaded.std).view(1, 3, 1, 1)
    example = (raw * loaded.scale - mean) / std
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".export-") as tmp:
        tmp_onnx = Path(tmp) / "model.onnx"
        with torch.no_grad():
            expected = loaded.net(example).numpy()
            try:
                # The TorchScript exporter (deprecated, still in the pinned torch):
                # about 5x faster than the dynamo exporter on SegFormer, and it needs
                # no onnxscript. Both give the same probabilities on any tile size.
                torch.onnx.export(
                    loaded.net,
                    (example,),
                    str(tmp_onnx),
                    input_names=["image"],
                    output_names=["probs"],
                    dynamic_axes={
                        "image": {0: "batch", 2: "height", 3: "width"},
                        "probs": {0: "batch", 2: "height", 3: "width"},
                    },
                    opset_version=OPSET,
                    dynamo=False,
                )
            except Exception as exc:  # the exporter raises many internal types
                raise ModelError(f"PyTorch could not export {source} to ONNX: {first_line(exc)}") from exc
        max_diff = onnx_max_diff(tmp_onnx, example.numpy(), expected)
        if not max_diff <= MAX_EXPORT_DIFF:
            raise ModelError(
                f"The exported model differs from PyTorch by {max_diff:.2g} on a test tile; the export is not usable."
            )
        save_with_metadata(tmp_onnx, out_path, _metadata(loaded, name, source, license_))
    return ExportResult(out_path, name, loaded.family, max_diff)
