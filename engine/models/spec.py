"""A model's description of itself: the metadata keys the engine reads, as a :class:`ModelSpec`.

A model describes itself in ONNX metadata (``metadata_props``); every value is a
JSON string. Our keys:

``output_kind``      what the outputs hold, one of the kinds in
                     :mod:`engine.models.kinds` (``semantic``: per-class
                     probabilities; ``canopy_centres``: canopy probability and a
                     crown-centre heatmap; ``instance_masks``: masks with scores;
                     ``centre_boxes``: canopy, crown-centre heatmap, crown width and
                     height, decoded as boxes).
``class_names``      list of names, one per output channel (``semantic``) or per
                     label value; a first class named ``background`` is not written.
``crown_classes``    names of the classes whose regions are tree crowns: crown rules
                     (regions under ``min_crown_area_m2`` dropped, holes under 2 m² filled)
                     apply to them; other classes keep Deepness's small-segment rule
                     (``seg_small_segment``). Default: every class of a model that gives
                     ``output_kind``; for other models (Deepness's), the classes named
                     tree(s), crown(s) or canopy.
``gsd_m``            ground sampling distance of the input, metres per pixel.
``tile_size_px``     tile edge in model pixels.
``overlap_px``       overlap between neighbouring tiles in model pixels.
``bands``            1-based source band indices fed to the model, in order.
``scale``, ``mean``, ``std``   input = (raw * scale - mean) / std, per band.
``output_activation``  ``"none"`` (already probabilities), ``"softmax"``, ``"sigmoid"``.
``seg_thresh``       probability above which a pixel belongs to a class.
``centre_thresh``, ``peak_min_distance_m``, ``min_crown_area_m2``
                     crown splitting parameters (``canopy_centres``).
``crown_stride_px``  crowns are split and vectorised on a grid this many model pixels
                     coarser than the tile (default 1): the native grid of a model whose
                     heads predict at 1/4 and upsample in the graph (``canopy_centres``).
``det_conf``, ``det_iou_thresh``  detectors: the score a box needs and the IoU above which
                     the weaker of two overlapping boxes is dropped (Deepness's keys; each
                     detector kind applies its own library's comparison).
``input_dtype``      pixel type the model was trained on (default ``"uint8"``); rasters of
                     another type are refused rather than silently mis-scaled.
``name``, ``description``, ``license``, ``provenance``  free text.

Models made for the Deepness QGIS plugin work unchanged: ``model_type``
(the kinds say which they run), ``class_names`` (a dict ``{"0": "background", ...}``
for one output, a list of such dicts for one per output; ``names`` is read too),
``resolution`` (cm/px), ``tile_size`` or ``tiles_size`` (px), ``tiles_overlap``
(percent of the tile), ``seg_thresh``, ``seg_small_segment`` (the median filter's size
in pixels over each output's class map; Deepness's default 9), ``standardization_mean``
and ``standardization_std`` (applied after dividing by 255). Deepness detectors
(``model_type`` Detector) add ``det_type`` (the YOLO output layout), ``det_conf`` and
``det_iou_thresh``.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import ModelError
from . import kinds
from .onnx_meta import read_onnx_metadata

DEFAULT_GSD_M = 0.1
DEFAULT_TILE_SIZE_PX = 1024
DEEPNESS_SMALL_SEGMENT_PX = 9  # Deepness 0.6.5's default "remove small segments" size
_CROWN_WORDS = re.compile(r"\b(trees?|crowns?|canop(y|ies))\b", re.IGNORECASE)


@dataclass(frozen=True)
class ModelSpec:
    """Everything the engine needs to know about a model, read from its metadata.

    ``output_kind`` names a kind of :mod:`engine.models.kinds` (:attr:`kind`).
    ``class_names`` lists the classes written to the caches, background excluded;
    ``channel_of_class`` maps each of them to its output channel (``semantic``: the
    channels of all outputs, stacked in output order) or label value (``instance_masks``);
    ``output_of_class`` names the output each comes from and ``output_channels`` the
    channels of each output (a map with no class axis counts one). ``crown_classes``
    says, per class, whether crown rules apply to its regions; ``small_segment_px`` is
    the median filter over the other classes' class maps (Deepness's rule; 0 or 1: none).
    ``output_inset_px``: the model predicts only the centre of each tile, this many
    pixels in from each edge (an output smaller than its input). ``deepness_rules``:
    the model gives no ``output_kind`` (Deepness's format), so pixels get their class
    as Deepness gives it; a model in our format keeps the argmax among its written
    classes above the threshold (a threshold under 0.5 then matters for a
    background/tree softmax).
    """

    path: str
    sha256: str
    name: str
    output_kind: str
    class_names: tuple[str, ...]
    channel_of_class: tuple[int, ...]
    gsd_m: float
    tile_size_px: int
    overlap_px: int
    bands: tuple[int, ...]
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    output_activation: str = "none"
    seg_thresh: float = 0.5
    centre_thresh: float = 0.3
    peak_min_distance_m: float = 1.0
    min_crown_area_m2: float = 1.0
    crown_stride_px: int = 1
    fixed_input_px: int | None = None
    det_conf: float = 0.5
    det_iou_thresh: float = 0.5
    box_geometry: str = "crowns"  # a run's choice for detectors: "crowns" or "boxes"
    output_of_class: tuple[int, ...] = ()
    output_channels: tuple[int, ...] = ()
    crown_classes: tuple[bool, ...] = ()
    small_segment_px: int = DEEPNESS_SMALL_SEGMENT_PX
    output_inset_px: int = 0
    deepness_rules: bool = False
    metadata: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def kind(self) -> kinds.OutputKind:
        return kinds.kind_named(self.output_kind)



def _json(meta: Mapping[str, str], key: str, default=None):
    if key not in meta:
        return default
    raw = meta[key]
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        # Deepness writes some values as bare strings.
        return raw


def _number(meta, key, default, kind=float):
    value = _json(meta, key, None)
    if value is None:
        return default
    try:
        number = kind(value)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"The model's metadata '{key}' is not a number: {value!r}.") from exc
    if isinstance(number, float) and not math.isfinite(number):
        raise ModelError(f"The model's metadata '{key}' is not a finite number.")
    return number


def _per_band(value, n_bands: int, key: str) -> tuple[float, ...]:
    if isinstance(value, (int, float)):
        return (float(value),) * n_bands
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"The model's metadata '{key}' must be a number or a list of numbers.") from exc
    if len(values) != n_bands:
        raise ModelError(f"The model's metadata '{key}' has {len(values)} values for {n_bands} bands.")
    return values


def spec_from_metadata(
    meta: Mapping[str, str],
    *,
    path: str = "",
    sha256: str = "",
    input_shape: tuple | None = None,
    output_shapes: tuple[tuple, ...] | None = None,
) -> ModelSpec:
    """Build a :class:`ModelSpec` from ONNX metadata (ours or Deepness's).

    ``input_shape`` is the first input's (N, C, H, W) shape, with None or strings
    for dynamic axes; fixed H and W set the tile size. ``output_shapes`` are the
    outputs' shapes, likewise (None: not known, the metadata alone is read).
    """
    deepness_type = _json(meta, "model_type")
    kind_raw = _json(meta, "output_kind")
    if kind_raw is not None:
        kind = kinds.kind_named(str(kind_raw))
    elif deepness_type is not None:
        kind = kinds.kind_for_deepness(deepness_type)
    else:
        kind = kinds.kind_named("semantic")

    fixed_px = None
    n_in_channels = None
    if input_shape is not None and len(input_shape) == 4:
        n_in_channels = input_shape[1] if isinstance(input_shape[1], int) else None
        h, w = input_shape[2], input_shape[3]
        if isinstance(h, int) and isinstance(w, int) and h > 0:
            if h != w:
                raise ModelError(f"The model expects non-square {h}x{w} tiles; only square tiles are supported.")
            fixed_px = h

    if "gsd_m" in meta:
        gsd_m = _number(meta, "gsd_m", DEFAULT_GSD_M)
    elif "resolution" in meta:
        gsd_m = _number(meta, "resolution", DEFAULT_GSD_M * 100) / 100.0
    else:
        gsd_m = DEFAULT_GSD_M
    tile_key = next((k for k in ("tile_size_px", "tile_size", "tiles_size") if k in meta), None)
    tile_px = _number(meta, tile_key, None, int) if tile_key else None
    tile_px = fixed_px or tile_px or DEFAULT_TILE_SIZE_PX  # a fixed input is the only tile the model takes
    if "overlap_px" in meta:
        overlap_px = _number(meta, "overlap_px", 0, int)
    elif "tiles_overlap" in meta:
        overlap_px = int(tile_px * _number(meta, "tiles_overlap", 0) / 100.0 * 2) // 2  # Deepness's rounding
    else:
        overlap_px = tile_px // 4
    if gsd_m <= 0 or tile_px <= 0 or overlap_px < 0 or overlap_px >= tile_px:
        raise ModelError(
            f"The model's metadata gives an unusable tiling (gsd {gsd_m} m, tile {tile_px} px, "
            f"overlap {overlap_px} px)."
        )

    bands = _json(meta, "bands")
    if bands is None:
        bands = list(range(1, (n_in_channels or 3) + 1))
    try:
        bands = tuple(int(b) for b in bands)
    except (TypeError, ValueError) as exc:
        raise ModelError("The model's metadata 'bands' must be a list of band numbers.") from exc
    if not bands or min(bands) < 1:
        raise ModelError("The model's metadata 'bands' must list band numbers starting at 1.")
    if n_in_channels is not None and n_in_channels != len(bands):
        raise ModelError(f"The model takes {n_in_channels} channels but its metadata lists {len(bands)} bands.")

    if "standardization_mean" in meta or "standardization_std" in meta or deepness_type is not None:
        scale = 1.0 / 255.0
        mean = _per_band(_json(meta, "standardization_mean", 0.0), len(bands), "standardization_mean")
        std = _per_band(_json(meta, "standardization_std", 1.0), len(bands), "standardization_std")
    else:
        scale = _number(meta, "scale", 1.0 / 255.0)
        mean = _per_band(_json(meta, "mean", 0.0), len(bands), "mean")
        std = _per_band(_json(meta, "std", 1.0), len(bands), "std")
    if any(s == 0 for s in std):
        raise ModelError("The model's metadata 'std' contains a zero.")

    shapes = None if output_shapes is None else [tuple(_axis(d) for d in shape) for shape in output_shapes]
    output_channels = None if shapes is None else [_channels(shape) for shape in shapes]
    names, channels, outputs, n_channels = kind.class_layout(_class_names(meta), output_channels)
    if not names:
        raise ModelError("The model has no class other than background.")
    inset_px = kind.output_inset(shapes, fixed_px) if shapes is not None else 0
    crown_classes = _crown_classes(meta, names, kind_raw is None)
    small_segment = _number(meta, "seg_small_segment", DEEPNESS_SMALL_SEGMENT_PX, int)
    if small_segment < 0:
        raise ModelError(f"The model's metadata 'seg_small_segment' cannot be negative ({small_segment}).")

    activation = str(_json(meta, "output_activation", "none")).lower()
    if activation not in ("none", "softmax", "sigmoid"):
        raise ModelError(f"The model's output_activation '{activation}' is unknown.")

    return ModelSpec(
        path=str(path),
        sha256=sha256,
        name=str(_json(meta, "name", None) or Path(path).stem or "model"),
        output_kind=kind.name,
        class_names=tuple(names),
        channel_of_class=tuple(channels),
        gsd_m=float(gsd_m),
        tile_size_px=int(tile_px),
        overlap_px=int(overlap_px),
        bands=bands,
        scale=float(scale),
        mean=mean,
        std=std,
        output_activation=activation,
        seg_thresh=_unit(meta, "seg_thresh", 0.5),
        centre_thresh=float(_number(meta, "centre_thresh", 0.3)),
        peak_min_distance_m=float(_number(meta, "peak_min_distance_m", 1.0)),
        min_crown_area_m2=float(_number(meta, "min_crown_area_m2", 1.0)),
        crown_stride_px=_crown_stride(meta),
        fixed_input_px=fixed_px,
        det_conf=_unit(meta, "det_conf", 0.5),
        det_iou_thresh=_unit(meta, "det_iou_thresh", 0.5),
        output_of_class=tuple(outputs),
        output_channels=tuple(n_channels),
        crown_classes=crown_classes,
        small_segment_px=int(small_segment),
        output_inset_px=int(inset_px),
        deepness_rules=kind_raw is None,
        metadata=dict(meta),
    )


def _axis(d):
    return d if isinstance(d, int) and d > 0 else None


def _channels(shape: tuple) -> int | None:
    """Channels of an output: (N, H, W) is one map; (N, C, H, W) has C (None when dynamic)."""
    if len(shape) == 3:
        return 1
    if len(shape) == 4:
        return shape[1]
    return None


def _numbered_names(names: dict) -> list[str]:
    """A dict of numbered names as a list; the numbers must run 0, 1, 2, ... (as Deepness requires)."""
    try:
        numbered = sorted((int(k), str(v)) for k, v in names.items())
    except (TypeError, ValueError) as exc:
        raise ModelError("The model's metadata 'class_names' keys must be class numbers.") from exc
    if [k for k, _ in numbered] != list(range(len(numbered))):
        raise ModelError("The model's metadata 'class_names' must number its classes 0, 1, 2, ... without gaps.")
    return [v for _, v in numbered]


def _class_names(meta: Mapping[str, str]) -> list[list[str]] | None:
    """Class names per output: a list of names (ours, one output), a dict of numbered names
    (Deepness, one output) or a list of such dicts (Deepness, one per output)."""
    key = next((k for k in ("class_names", "names") if k in meta), None)
    raw = _json(meta, key) if key else None
    if isinstance(raw, str):  # Deepness also reads Python literals ({0: 'tree'})
        try:
            raw = ast.literal_eval(raw)
        except (ValueError, SyntaxError) as exc:
            raise ModelError(f"The model's metadata '{key}' is neither JSON nor a Python literal.") from exc
    if raw is None:
        return None
    if isinstance(raw, dict):
        return [_numbered_names(raw)]
    if isinstance(raw, list) and raw and all(isinstance(v, dict) for v in raw):
        return [_numbered_names(v) for v in raw]
    if isinstance(raw, list) and not any(isinstance(v, (dict, list)) for v in raw):
        return [[str(v) for v in raw]]
    raise ModelError("The model's metadata 'class_names' must be a list of names, a dict of numbered names, "
                     "or a list of such dicts (one per output).")


def _crown_classes(meta: Mapping[str, str], names: list[str], deepness_format: bool) -> tuple[bool, ...]:
    raw = _json(meta, "crown_classes")
    if raw is not None:
        if not isinstance(raw, list):
            raise ModelError("The model's metadata 'crown_classes' must be a list of class names.")
        wanted = {str(v) for v in raw}
        return tuple(n in wanted for n in names)
    if deepness_format:  # land-cover models keep Deepness's rule; tree classes are crowns
        return tuple(bool(_CROWN_WORDS.search(n)) for n in names)
    return (True,) * len(names)


def _unit(meta, key: str, default: float) -> float:
    value = float(_number(meta, key, default))
    if not 0.0 <= value <= 1.0:
        raise ModelError(f"The model's metadata '{key}' must be between 0 and 1, not {value}.")
    return value


def for_run(spec: ModelSpec, settings) -> ModelSpec:
    """``spec`` with a run's choices (``settings.det_conf``, ``settings.seg_thresh``, ... when set) in place
    of the model's."""
    if getattr(settings, "seg_thresh", None) is not None:
        spec = replace(spec, seg_thresh=settings.seg_thresh)
    if getattr(settings, "det_conf", None) is None:
        return spec
    return replace(spec, det_conf=settings.det_conf, det_iou_thresh=settings.det_iou_thresh,
                   box_geometry=settings.box_geometry)


def _crown_stride(meta) -> int:
    stride = _number(meta, "crown_stride_px", 1, int)
    if not 1 <= stride <= 64:
        raise ModelError(f"The model's metadata 'crown_stride_px' must be between 1 and 64, not {stride}.")
    return stride


def default_model_path() -> Path:
    """The bundled default model: ``resources/models/`` beside the engine folder.

    That is the repository root in a checkout and the plugin folder in the plugin ZIP.
    """
    return Path(__file__).resolve().parents[2] / "resources" / "models" / "tcd_default.onnx"


def describe_model(path: str | os.PathLike) -> ModelSpec:
    """Read a model's spec from its metadata alone (no runtime, no weights loaded)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"The model file {path} does not exist.")
    return spec_from_metadata(read_onnx_metadata(path), path=str(path))
