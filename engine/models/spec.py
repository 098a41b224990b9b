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
(the kinds say which they run), ``class_names`` (a dict ``{"0": "background", ...}``),
``resolution`` (cm/px), ``tile_size`` or ``tiles_size`` (px), ``tiles_overlap``
(percent of the tile), ``seg_thresh``, ``standardization_mean`` and
``standardization_std`` (applied after dividing by 255). Deepness detectors
(``model_type`` Detector) add ``det_type`` (the YOLO output layout), ``det_conf`` and
``det_iou_thresh``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import ModelError
from . import kinds
from .onnx_meta import read_onnx_metadata

DEFAULT_GSD_M = 0.1
DEFAULT_TILE_SIZE_PX = 1024


@dataclass(frozen=True)
class ModelSpec:
    """Everything the engine needs to know about a model, read from its metadata.

    ``output_kind`` names a kind of :mod:`engine.models.kinds` (:attr:`kind`).
    ``class_names`` lists the classes written to the caches, background excluded;
    ``channel_of_class`` maps each of them to its output channel (``semantic``) or
    label value (``instance_masks``).
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
    n_output_channels: int | None = None,
) -> ModelSpec:
    """Build a :class:`ModelSpec` from ONNX metadata (ours or Deepness's).

    ``input_shape`` is the first input's (N, C, H, W) shape, with None or strings
    for dynamic axes; fixed H and W set the tile size.
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
    tile_px = tile_px or fixed_px or DEFAULT_TILE_SIZE_PX
    if "overlap_px" in meta:
        overlap_px = _number(meta, "overlap_px", 0, int)
    elif "tiles_overlap" in meta:
        overlap_px = int(round(tile_px * _number(meta, "tiles_overlap", 0) / 100.0))
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

    names_raw = _json(meta, "class_names")
    if isinstance(names_raw, dict):
        try:
            names = [str(v) for _, v in sorted(names_raw.items(), key=lambda kv: int(kv[0]))]
        except ValueError as exc:
            raise ModelError("The model's metadata 'class_names' keys must be class numbers.") from exc
    elif isinstance(names_raw, list):
        names = [str(v) for v in names_raw]
    elif names_raw is None:
        names = None
    else:
        raise ModelError("The model's metadata 'class_names' must be a list or a dict.")
    names, channels = kind.classes(names, n_output_channels)
    if not names:
        raise ModelError("The model has no class other than background.")

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
        seg_thresh=float(_number(meta, "seg_thresh", 0.5)),
        centre_thresh=float(_number(meta, "centre_thresh", 0.3)),
        peak_min_distance_m=float(_number(meta, "peak_min_distance_m", 1.0)),
        min_crown_area_m2=float(_number(meta, "min_crown_area_m2", 1.0)),
        crown_stride_px=_crown_stride(meta),
        fixed_input_px=fixed_px,
        det_conf=_unit(meta, "det_conf", 0.5),
        det_iou_thresh=_unit(meta, "det_iou_thresh", 0.5),
        metadata=dict(meta),
    )


def _unit(meta, key: str, default: float) -> float:
    value = float(_number(meta, key, default))
    if not 0.0 <= value <= 1.0:
        raise ModelError(f"The model's metadata '{key}' must be between 0 and 1, not {value}.")
    return value


def for_run(spec: ModelSpec, settings) -> ModelSpec:
    """``spec`` with a run's detector choices (``settings.det_conf``, ... when set) in place of the model's."""
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
