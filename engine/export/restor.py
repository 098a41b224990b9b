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
model. The UNet is rebuilt here with smp's exact module layout and parameter
names instead of importing smp: smp and timm import torchvision at import time,
and a torchvision that matches a CPU-only torch is not always installable, while
the architecture (torchvision ResNet + smp's Unet decoder) is small and fixed.

torch, transformers and huggingface_hub are imported inside the functions, so
``import engine`` never needs them; they are only needed to export
(``requirements-export.txt``), never to run the exported model.
"""

from __future__ import annotations

import datetime
import functools
import importlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ..errors import InputError, ModelError

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
OPSET = 17
# float32 PyTorch and onnxruntime agree far closer than this; more means a broken export.
MAX_EXPORT_DIFF = 1e-2

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# ResNet variants of torchvision (and so of smp's "resnetNN" encoders):
# (bottleneck blocks, blocks per stage).
_RESNETS = {
    "resnet18": (False, (2, 2, 2, 2)),
    "resnet34": (False, (3, 4, 6, 3)),
    "resnet50": (True, (3, 4, 6, 3)),
    "resnet101": (True, (3, 4, 23, 3)),
    "resnet152": (True, (3, 8, 36, 3)),
}
_UNET_DECODER_CHANNELS = (256, 128, 64, 32, 16)


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


def _require(module: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModelError(f"Exporting this model needs {package}: pip install -r requirements-export.txt.") from exc


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
        f"'{model_id}' is not a folder here, and its name tells neither SegFormer nor UNet; Restor's models are {known}."
    )


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"Cannot read {path}: {exc}.") from exc
    if not isinstance(value, dict):
        raise ModelError(f"{path} does not hold a JSON object.")
    return value


def family_of_dir(folder: Path) -> Family:
    """Architecture of a local checkpoint folder, from the files it holds.

    ``config.json`` with ``model_type: segformer`` (transformers' save_pretrained),
    Restor's ``model.pt`` state dict, or smp's save_pretrained (``config.json``
    with ``_model_class``).
    """
    config_path = folder / "config.json"
    config = _read_json(config_path) if config_path.is_file() else {}
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
        config = _read_json(folder / "preprocessor_config.json")
    elif model_id is not None:
        hub = _require("huggingface_hub", "huggingface_hub")
        try:
            config = _read_json(Path(hub.hf_hub_download(model_id, "preprocessor_config.json")))
        except hub.errors.EntryNotFoundError:
            config = {}
        except Exception as exc:  # network and authentication errors alike
            raise ModelError(
                f"Cannot download {model_id}/preprocessor_config.json from Hugging Face: {_first_line(exc)}"
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
    transformers = _require("transformers", "transformers")
    try:
        model = transformers.SegformerForSemanticSegmentation.from_pretrained(
            str(folder) if folder is not None else model_id, local_files_only=folder is not None
        )
    except (OSError, ValueError) as exc:
        if folder is None:
            raise ModelError(
                f"Cannot download {model_id} from Hugging Face (the export needs internet once): {_first_line(exc)}"
            ) from exc
        raise ModelError(f"Cannot load the SegFormer checkpoint in {folder}: {_first_line(exc)}") from exc
    if model.config.num_labels != len(CLASS_NAMES):
        raise ModelError(
            f"The SegFormer has {model.config.num_labels} classes; only background/tree models (2 classes) can be exported."
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


@functools.cache
def _unet_class():
    """smp's ``Unet`` with a torchvision ResNet encoder, same modules and parameter names.

    Restor's ``model.pt`` (and smp's own save_pretrained weights) load into it
    with ``strict=True``, so a layout difference fails loudly instead of silently.
    """
    torch = _require_torch()
    nn = torch.nn
    F = torch.nn.functional

    class BasicBlock(nn.Module):
        expansion = 1

        def __init__(self, c_in, planes, stride, downsample):
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = downsample

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + identity)

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, c_in, planes, stride, downsample):
            super().__init__()
            # Stride on the 3x3 conv: torchvision's "ResNet v1.5", which smp uses.
            self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes * 4)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = downsample

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return self.relu(out + identity)

    class ResNetEncoder(nn.Module):
        def __init__(self, bottleneck, blocks, in_channels):
            super().__init__()
            block = Bottleneck if bottleneck else BasicBlock
            self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            c_in = 64
            self.out_channels = [in_channels, 64]
            for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
                stride = 1 if stage == 1 else 2
                downsample = None
                if stride != 1 or c_in != planes * block.expansion:
                    downsample = nn.Sequential(
                        nn.Conv2d(c_in, planes * block.expansion, 1, stride, bias=False),
                        nn.BatchNorm2d(planes * block.expansion),
                    )
                layers = [block(c_in, planes, stride, downsample)]
                c_in = planes * block.expansion
                layers += [block(c_in, planes, 1, None) for _ in range(n - 1)]
                setattr(self, f"layer{stage}", nn.Sequential(*layers))
                self.out_channels.append(c_in)

        def forward(self, x):
            features = [x]
            x = self.relu(self.bn1(self.conv1(x)))
            features.append(x)
            x = self.layer1(self.maxpool(x))
            features.append(x)
            for layer in (self.layer2, self.layer3, self.layer4):
                x = layer(x)
                features.append(x)
            return features

    def conv_bn_relu(c_in, c_out):
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))

    class DecoderBlock(nn.Module):
        def __init__(self, c_in, c_skip, c_out):
            super().__init__()
            self.conv1 = conv_bn_relu(c_in + c_skip, c_out)
            self.conv2 = conv_bn_relu(c_out, c_out)

        def forward(self, x, size, skip):
            # Upsampling to the skip's size (smp >= 0.5) equals smp's older 2x
            # nearest upsampling on tiles that are multiples of 32, and also
            # works on other tile sizes.
            x = F.interpolate(x, size=size, mode="nearest")
            if skip is not None:
                x = torch.cat([x, skip], dim=1)
            return self.conv2(self.conv1(x))

    class UnetDecoder(nn.Module):
        def __init__(self, encoder_channels):
            super().__init__()
            reversed_channels = list(encoder_channels[1:])[::-1]
            c_in = [reversed_channels[0]] + list(_UNET_DECODER_CHANNELS[:-1])
            c_skip = reversed_channels[1:] + [0]
            self.blocks = nn.ModuleList(DecoderBlock(i, s, o) for i, s, o in zip(c_in, c_skip, _UNET_DECODER_CHANNELS))

        def forward(self, features):
            sizes = [f.shape[2:] for f in features][::-1]
            features = features[1:][::-1]
            x, skips = features[0], features[1:]
            for i, block in enumerate(self.blocks):
                x = block(x, sizes[i + 1], skips[i] if i < len(skips) else None)
            return x

    class Unet(nn.Module):
        def __init__(self, encoder_name, classes, in_channels=3):
            super().__init__()
            bottleneck, blocks = _RESNETS[encoder_name]
            self.encoder = ResNetEncoder(bottleneck, blocks, in_channels)
            self.decoder = UnetDecoder(self.encoder.out_channels)
            self.segmentation_head = nn.Sequential(nn.Conv2d(_UNET_DECODER_CHANNELS[-1], classes, 3, padding=1))

        def forward(self, image):
            return self.segmentation_head(self.decoder(self.encoder(image)))

    return Unet


def build_unet(encoder_name: str, classes: int = 2, in_channels: int = 3):
    """A randomly initialised smp-layout ``Unet`` (PyTorch module) with a ResNet encoder."""
    if encoder_name not in _RESNETS:
        raise ModelError(f"The UNet encoder '{encoder_name}' is not supported; use one of {', '.join(_RESNETS)}.")
    return _unet_class()(encoder_name, classes, in_channels)


def encoder_of_state_dict(state: dict) -> str:
    """The ResNet encoder a UNet state dict was trained with, from its layer count and block type."""
    bottleneck = "encoder.layer1.0.conv3.weight" in state
    blocks = []
    for stage in range(1, 5):
        prefix = f"encoder.layer{stage}."
        blocks.append(len({key[len(prefix) :].split(".", 1)[0] for key in state if key.startswith(prefix)}))
    for name, layout in _RESNETS.items():
        if layout == (bottleneck, tuple(blocks)):
            return name
    raise ModelError("The UNet's weights do not match a ResNet-18/34/50/101/152 encoder.")


def _check_smp_config(config: dict, path: Path) -> tuple[str, int]:
    """encoder name and class count of smp's save_pretrained ``config.json``; refuses other layouts."""
    if config.get("_model_class") != "Unet":
        raise ModelError(f"{path} describes an smp '{config.get('_model_class')}'; only Unet models can be exported.")
    unsupported = {
        "encoder_depth": (5,),
        "decoder_channels": (list(_UNET_DECODER_CHANNELS),),
        "decoder_attention_type": (None,),
        "decoder_use_norm": ("batchnorm", True),
        "decoder_use_batchnorm": (True, "batchnorm"),
        "decoder_interpolation": ("nearest",),
        "decoder_interpolation_mode": ("nearest",),
        "activation": (None,),
        "aux_params": (None,),
        "in_channels": (3,),
    }
    for key, allowed in unsupported.items():
        if key in config and config[key] not in allowed:
            raise ModelError(f"The UNet's setting {key}={config[key]!r} is not supported by the exporter.")
    return str(config.get("encoder_name", "resnet34")), int(config.get("classes", 1))


def _load_unet(folder: Path | None, model_id: str | None) -> _Loaded:
    torch = _require_torch()
    if folder is None:
        hub = _require("huggingface_hub", "huggingface_hub")
        try:
            weights = Path(hub.hf_hub_download(model_id, "model.pt"))
        except Exception as exc:  # network, authentication and missing-file errors alike
            raise ModelError(
                f"Cannot download {model_id}/model.pt from Hugging Face (the export needs internet once): {_first_line(exc)}"
            ) from exc
        encoder = UNET_ENCODER_OF_ID.get(model_id)
        source = f"{model_id}/model.pt"
    elif (folder / "model.pt").is_file():
        weights, encoder, source = folder / "model.pt", None, "model.pt"
    else:
        encoder, classes = _check_smp_config(_read_json(folder / "config.json"), folder / "config.json")
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
        raise ModelError(f"Cannot read the UNet weights {weights}: {_first_line(exc)}") from exc
    if not isinstance(state, dict) or "segmentation_head.0.weight" not in state:
        raise ModelError(f"{weights} is not a state dict of an smp Unet.")
    encoder = encoder or encoder_of_state_dict(state)
    classes = int(state["segmentation_head.0.weight"].shape[0])
    if classes != len(CLASS_NAMES):
        raise ModelError(f"The UNet has {classes} classes; only background/tree models (2 classes) can be exported.")
    model = build_unet(encoder, classes)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(
            f"The UNet weights do not fit an smp Unet with a {encoder} encoder: {_first_line(exc)}"
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


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


def _add_metadata_and_save(tmp_onnx: Path, out_path: Path, metadata: dict[str, object]) -> None:
    """Add the metadata, then move the model into place in one rename.

    ``tmp_onnx`` lies in a folder beside ``out_path``, so a crash never leaves
    half a model where the plugin's model list would read it.
    """
    onnx = _require("onnx", "onnx")
    model = onnx.load(str(tmp_onnx))
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = json.dumps(value)
    final = tmp_onnx.with_name("final.onnx")
    onnx.save(model, str(final))
    os.replace(final, out_path)


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
    _require("onnx", "onnx")
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
                raise ModelError(f"PyTorch could not export {source} to ONNX: {_first_line(exc)}") from exc
        max_diff = _onnx_max_diff(tmp_onnx, example.numpy(), expected)
        if not max_diff <= MAX_EXPORT_DIFF:
            raise ModelError(
                f"The exported model differs from PyTorch by {max_diff:.2g} on a test tile; the export is not usable."
            )
        _add_metadata_and_save(tmp_onnx, out_path, _metadata(loaded, name, source, license_))
    return ExportResult(out_path, name, loaded.family, max_diff)


def _onnx_max_diff(path: Path, x, expected) -> float:
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    if got.shape != expected.shape:
        return float("inf")
    return float(np.max(np.abs(got - expected)))
