"""Export DeepForest's RetinaNet tree model (or a checkpoint of its fine-tuning) to ONNX for the engine.

DeepForest (weecology) detects tree crowns as boxes with torchvision's
``retinanet_resnet50_fpn``. Its released tree model ``weecology/deepforest-tree``
is a Hugging Face repository written by ``PyTorchModelHubMixin``: ``config.json``
(``num_classes``, ``label_dict``, ...) and ``model.safetensors``. DeepForest runs
it on 400 px patches of 10 cm imagery overlapping by 5 %, keeps boxes scoring
above 0.1 and suppresses overlaps above IoU 0.05 (its ``config.yaml``, which
overrides the checkpoint's own values when DeepForest loads it).

The exported graph holds the network and torchvision's input transform for one
fixed tile size (``patch_size``, default 400): ``predict_image``'s scaling by
1/255, ImageNet normalisation, the bilinear resize to an 800 px shorter side and
padding to a multiple of 32. It outputs the heads' raw values per anchor; the
engine's ``retinanet`` kind decodes them as torchvision does (anchors,
regression, per-class NMS inside the tile), so the thresholds stay adjustable
per run. The network is rebuilt without torchvision (:mod:`engine.export.retinanet`).

Sources: a Hugging Face id (downloaded once into the Hugging Face cache), a local
folder holding ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``),
or a local checkpoint file: DeepForest's Lightning ``.ckpt``, a ``.pt``/``.pth``
state dict, or a ``.safetensors`` file. torch, safetensors and huggingface_hub
are imported inside the functions (``requirements-export.txt``).
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, ModelError
from .common import MAX_EXPORT_DIFF, OPSET, first_line, read_json, require, save_with_metadata

logger = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "weecology/deepforest-tree"
DEEPFOREST_LICENSE = "MIT"
GSD_M = 0.1
PATCH_SIZE_PX = 400
PATCH_OVERLAP = 0.05
SCORE_THRESH = 0.1
NMS_THRESH = 0.05
TOPK_CANDIDATES = 1000
DETECTIONS_PER_IMG = 300

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_deepforest` wrote; ``max_abs_diff`` compares ONNX with PyTorch heads on a test tile."""

    path: Path
    name: str
    class_names: tuple[str, ...]
    max_abs_diff: float


@dataclass(frozen=True)
class Checkpoint:
    """A RetinaNet state dict in torchvision's names, its classes, and where it came from."""

    state: dict
    class_names: tuple[str, ...]
    source: str
    transform: dict  # RetinaNet's transform arguments the checkpoint's config sets (min_size, max_size, ...)


def is_hub_id(source: str) -> bool:
    return bool(_HUB_ID.match(source)) and not Path(source).exists()


def _require_torch():
    return require("torch", "PyTorch")


def _load_file(path: Path) -> dict:
    torch = _require_torch()
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception:
            logger.warning("%s holds more than tensors; loading it in full (only do this with your own files)", path)
            return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:  # torch and safetensors raise many unrelated types for bad files
        raise ModelError(f"Cannot read the checkpoint {path}: {first_line(exc)}") from exc


def torchvision_state_dict(raw: dict) -> dict:
    """A checkpoint's tensors under torchvision's current RetinaNet names.

    Takes a Lightning checkpoint's ``state_dict`` (keys prefixed ``model.``) or a
    bare state dict; renames torchvision's older layouts (heads' ``conv.2i`` and
    FPN blocks without ``.0``) and drops BatchNorm counters.
    """
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else raw
    if not isinstance(state, dict):
        raise ModelError("The checkpoint does not hold a state dict.")
    out = {}
    for key, value in state.items():
        if key.startswith("model."):
            key = key[len("model."):]
        if not key.startswith(("backbone.", "head.")) or key.endswith("num_batches_tracked"):
            continue
        key = re.sub(r"^(head\.(?:classification|regression)_head\.conv\.)(\d+)\.(weight|bias)$",
                     lambda m: f"{m.group(1)}{int(m.group(2)) // 2}.0.{m.group(3)}", key)
        key = re.sub(r"^(backbone\.fpn\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)$", r"\1.0.\2", key)
        out[key] = value
    if "head.classification_head.cls_logits.weight" not in out:
        raise ModelError("The checkpoint is not a RetinaNet: it has no classification head.")
    return out


def _class_names(label_dict, num_classes: int) -> tuple[str, ...]:
    if isinstance(label_dict, dict) and len(label_dict) == num_classes:
        try:
            return tuple(str(name) for name, _ in sorted(label_dict.items(), key=lambda kv: int(kv[1])))
        except (TypeError, ValueError):
            pass
    if num_classes == 1:
        return ("Tree",)
    return tuple(f"class_{i}" for i in range(num_classes))


def _label_dict_of(raw: dict):
    """The label_dict a DeepForest checkpoint records (hub config or Lightning hyper-parameters)."""
    if "label_dict" in raw:
        return raw["label_dict"]
    hyper = raw.get("hyper_parameters") if isinstance(raw, dict) else None
    if isinstance(hyper, dict):
        config = hyper.get("config", hyper)
        try:
            return dict(config.get("label_dict") or {}) or None
        except (AttributeError, TypeError, ValueError):
            return None
    return None


def load_checkpoint(source: str) -> Checkpoint:
    """A DeepForest RetinaNet from a Hugging Face id, a save_pretrained folder or a checkpoint file."""
    config: dict = {}
    if is_hub_id(source):
        hub = require("huggingface_hub", "huggingface_hub")
        try:
            config = read_json(Path(hub.hf_hub_download(source, "config.json")))
        except ModelError:
            raise
        except Exception as exc:  # network, authentication and missing-file errors alike
            raise ModelError(
                f"Cannot download {source}/config.json from Hugging Face (the export needs internet once): "
                f"{first_line(exc)}") from exc
        weights = None
        for name in _WEIGHT_FILES:
            try:
                weights = Path(hub.hf_hub_download(source, name))
                break
            except Exception:
                continue
        if weights is None:
            raise ModelError(f"{source} on Hugging Face holds no model.safetensors or pytorch_model.bin.")
        raw = _load_file(weights)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise InputError(f"The model {path} does not exist.")
        if path.is_dir():
            weights = next((path / name for name in _WEIGHT_FILES if (path / name).is_file()), None)
            if weights is None:
                raise ModelError(f"{path} holds no model.safetensors or pytorch_model.bin.")
            if (path / "config.json").is_file():
                config = read_json(path / "config.json")
            raw = _load_file(weights)
        else:
            raw = _load_file(path)
    state = torchvision_state_dict(raw)
    num_classes = int(state["head.classification_head.cls_logits.weight"].shape[0]) // 9
    label_dict = config.get("label_dict") if config else _label_dict_of(raw if isinstance(raw, dict) else {})
    # RetinaNetHub stores its extra RetinaNet arguments in config.json; DeepForest
    # overrides the thresholds with its own config, but not the transform.
    transform = {key: config[key] for key in ("min_size", "max_size", "image_mean", "image_std") if key in config}
    return Checkpoint(state, _class_names(label_dict, num_classes), source, transform)


def build_tile_model(checkpoint: Checkpoint, patch_size_px: int):
    """The checkpoint in the rebuilt network, wrapped with the input transform for ``patch_size_px`` tiles."""
    from .retinanet import DeepForestTile, RetinaNetNet

    net = RetinaNetNet(len(checkpoint.class_names))
    try:
        net.load_state_dict(checkpoint.state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"The weights do not fit torchvision's RetinaNet ResNet-50 FPN: {first_line(exc)}") from exc
    return DeepForestTile(net.eval(), patch_size_px, **checkpoint.transform).eval()


def _metadata(tile, checkpoint: Checkpoint, name: str, license_: str) -> dict[str, object]:
    torch = _require_torch()
    from .retinanet import ANCHOR_SIZES, ASPECT_RATIOS

    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    patch = tile.tile_px
    return {
        "name": name,
        "description": f"DeepForest tree crown detector ({name}): RetinaNet ResNet-50 FPN boxes.",
        "output_kind": "retinanet",
        "class_names": list(checkpoint.class_names),
        "gsd_m": GSD_M,
        "tile_size_px": patch,
        "overlap_px": int(round(patch * PATCH_OVERLAP)),
        "bands": [1, 2, 3],
        "scale": 1.0,
        "mean": [0.0, 0.0, 0.0],
        "std": [1.0, 1.0, 1.0],
        "output_activation": "none",
        "det_conf": SCORE_THRESH,
        "det_iou_thresh": NMS_THRESH,
        "retinanet": {
            "tile_px": patch,
            "resized_px": tile.resized,
            "padded_px": tile.padded,
            "grid_sizes": tile.grid_sizes(),
            "anchor_sizes": [list(s) for s in ANCHOR_SIZES],
            "aspect_ratios": [list(r) for r in ASPECT_RATIOS],
            "topk_candidates": TOPK_CANDIDATES,
            "detections_per_img": DETECTIONS_PER_IMG,
        },
        "license": license_,
        "provenance": (
            f"Exported from {checkpoint.source} (torchvision RetinaNet ResNet-50 FPN, rebuilt) with torch "
            f"{torch.__version__} on {when} by python -m engine export-deepforest; DeepForest's predict_image "
            f"transform for {patch} px patches in the graph, its decoding in the engine."
        ),
    }


def export_deepforest(source: str, out_path: str | os.PathLike, *, name: str | None = None,
                      license_: str = DEEPFOREST_LICENSE, patch_size_px: int = PATCH_SIZE_PX) -> ExportResult:
    """Convert DeepForest's tree model (or a fine-tuned checkpoint) to an ONNX model the engine runs.

    The export is checked by running ONNX and PyTorch on the same random tile.
    """
    out_path = Path(out_path).expanduser()
    if out_path.suffix.lower() != ".onnx":
        raise InputError(f"The output file {out_path} must end in .onnx.")
    if not out_path.parent.is_dir():
        raise InputError(f"The output folder {out_path.parent} does not exist.")
    if not 32 <= patch_size_px <= 4096:
        raise InputError(f"The patch size must be between 32 and 4096 px, not {patch_size_px}.")
    torch = _require_torch()
    require("onnx", "onnx")
    checkpoint = load_checkpoint(source)
    tile = build_tile_model(checkpoint, patch_size_px)
    name = name or (source if is_hub_id(source) else Path(source).expanduser().resolve().stem)
    generator = torch.Generator().manual_seed(0)
    example = torch.randint(0, 256, (1, 3, patch_size_px, patch_size_px), generator=generator).float()
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".export-") as tmp:
        tmp_onnx = Path(tmp) / "model.onnx"
        with torch.no_grad():
            expected = [t.numpy() for t in tile(example)]
            try:
                torch.onnx.export(tile, (example,), str(tmp_onnx), input_names=["image"],
                                  output_names=["cls_logits", "bbox_regression"], opset_version=OPSET, dynamo=False)
            except Exception as exc:  # the exporter raises many internal types
                raise ModelError(f"PyTorch could not export {source} to ONNX: {first_line(exc)}") from exc
        max_diff = _max_diff(tmp_onnx, example.numpy(), expected)
        if not max_diff <= MAX_EXPORT_DIFF:
            raise ModelError(
                f"The exported model differs from PyTorch by {max_diff:.2g} on a test tile; the export is not usable.")
        save_with_metadata(tmp_onnx, out_path, _metadata(tile, checkpoint, name, license_))
    return ExportResult(out_path, name, checkpoint.class_names, max_diff)


def _max_diff(path: Path, x, expected) -> float:
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})
    if any(g.shape != e.shape for g, e in zip(got, expected)):
        return float("inf")
    return max(float(np.max(np.abs(g - e))) for g, e in zip(got, expected))
