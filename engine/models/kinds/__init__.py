"""Model output kinds: what a model's output tensors hold, and how they become confidence and instances.

A kind is one :class:`OutputKind` subclass in one module of this package,
registered under the name a model's metadata gives as ``output_kind`` (and,
for models made for the Deepness plugin, the ``model_type`` values it stands
for). Adding a kind is adding a module here; nothing else names kinds. Describing a
model loads every kind module, also in a QGIS whose packages are not installed
yet: kind modules import only numpy and the standard library at module level,
anything heavier (scipy, shapely) inside the methods that need it.

Every method works on one tile in model pixels:

* :meth:`OutputKind.decode` turns the session's raw outputs into named arrays
  and checks their shapes;
* :meth:`OutputKind.probabilities` gives per-class confidence in 0..1, the
  semantic cache's content;
* :meth:`OutputKind.instances` labels the tile's instances (crowns, regions),
  the instance cache's content.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ...errors import ModelError

if TYPE_CHECKING:
    from ..spec import ModelSpec


@dataclass
class Instances:
    """A tile's instances: a label image and per-label facts (index 0, the background, is unused).

    ``labels`` is (T, T) int32, 0 where there is no instance; ``scores`` and
    ``classes`` have one entry per label value (class index into the spec's
    ``class_names``). ``attributes`` holds optional extra per-label arrays that
    become crown attributes of the same name. ``stride`` is the size of a label
    pixel in model pixels: labels on a grid ``stride`` times coarser than the tile,
    from its top-left corner (a model's native grid, ``crown_stride_px``).

    ``pixels`` (count + 1,), when given, is each label's number of pixels in ``labels``.

    ``boxes``, given by detectors, is (count + 1, 5) float64: each instance's box
    ``(xmin, ymin, xmax, ymax, angle)`` in model pixels of the tile (pixel edges,
    y down) with its rotation about the box centre in radians (0 for axis-aligned
    boxes). A detector's instance is owned by the tile whose core holds its box
    centre, and its crown is its label region, if it has one, else the ellipse
    inscribed in the box (:mod:`engine.postprocess.boxes`).
    """

    labels: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    attributes: Mapping[str, np.ndarray] = field(default_factory=dict)
    stride: int = 1
    boxes: np.ndarray | None = None
    pixels: np.ndarray | None = None  # label pixels per label value, when the kind counted them anyway

    @property
    def count(self) -> int:
        return len(self.scores) - 1


class OutputKind:
    """Base of the output kinds; see the module docstring."""

    name: ClassVar[str] = ""
    deepness_types: ClassVar[tuple[str, ...]] = ()  # Deepness ``model_type`` values (lower case)
    # True: instances are regions clipped to the tile core (closed canopy stored once);
    # False: each instance is owned whole by the tile whose core holds its centroid.
    clips_to_core: ClassVar[bool] = False
    # True: the kind drops instances below the spec's min_crown_area_m2 itself.
    filters_small: ClassVar[bool] = False
    # True: a detector; its instances carry boxes, and score/IoU thresholds apply.
    detects_boxes: ClassVar[bool] = False

    def classes(self, names: list[str] | None, n_output_channels: int | None) -> tuple[list[str], list[int]]:
        """Written class names (background excluded) and the output channel or label value of each."""
        if names is None:
            count = n_output_channels or 2
            names = ["background"] + [f"class_{i}" for i in range(1, count)] if count > 1 else ["tree"]
        channels = [i for i, n in enumerate(names) if not (i == 0 and n.lower() == "background")]
        return [names[i] for i in channels], channels

    def class_layout(self, names: list[list[str]] | None, output_channels: list[int | None] | None
                     ) -> tuple[list[str], list[int], list[int], list[int]]:
        """Written class names, the channel, output and channel count of each output (see ModelSpec).

        ``names`` holds the metadata's names per output, ``output_channels`` each output's
        channels (None where unknown). Kinds other than ``semantic`` read the first output's.
        """
        first = (output_channels or [None])[0]
        written, channels = self.classes(names[0] if names else None, first)
        return written, channels, [0] * len(written), [first] if first else []

    def output_inset(self, output_shapes: list[tuple], input_px: int | None) -> int:
        """Pixels from each tile edge the outputs leave unpredicted; ModelError for outputs the kind cannot use."""
        return 0

    def decode(self, spec: ModelSpec, outputs: dict[str, np.ndarray], tile_hw: tuple[int, int]) -> dict:
        raise NotImplementedError

    def probabilities(self, spec: ModelSpec, decoded: dict, valid: np.ndarray) -> np.ndarray:
        """(n_classes, T, T) float32 confidence of the written classes, zero where the source is invalid."""
        probs = np.clip(decoded["probs"][list(spec.channel_of_class)], 0.0, 1.0)
        probs[:, ~valid] = 0.0
        return probs

    def instances(self, spec: ModelSpec, decoded: dict, probs: np.ndarray, valid: np.ndarray,
                  gsd_m: float) -> Instances:
        raise NotImplementedError


_REGISTRY: dict[str, type[OutputKind]] = {}
_LOADED: list[bool] = []


def register(cls: type[OutputKind]) -> type[OutputKind]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def _load() -> dict[str, type[OutputKind]]:
    """The registry, after importing every module of this package once (each registers its kinds)."""
    if not _LOADED:
        for module in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{module.name}")
        _LOADED.append(True)
    return _REGISTRY


def names() -> list[str]:
    return sorted(_load())


def kind_named(name: str) -> OutputKind:
    """The kind registered as ``name``; ModelError naming the known kinds otherwise."""
    kinds = _load()
    if name not in kinds:
        raise ModelError(f"The model's output_kind '{name}' is unknown (expected one of {', '.join(names())}).")
    return kinds[name]()


def kind_for_deepness(model_type: str) -> OutputKind:
    """The kind that runs a Deepness model of ``model_type`` (Segmentor, Detector, ...)."""
    wanted = str(model_type).lower()
    for cls in _load().values():
        if wanted in cls.deepness_types:
            return cls()
    supported = sorted(t for cls in _load().values() for t in cls.deepness_types)
    raise ModelError(f"Deepness '{model_type}' models are not supported: the engine writes classes and boxes, "
                     f"not values or images (supported: {', '.join(supported)}).")


def activate(spec: ModelSpec, x: np.ndarray) -> np.ndarray:
    """Apply the model's declared output activation over the channel axis (axis 0)."""
    if spec.output_activation == "softmax":
        x = x - np.max(x, axis=0, keepdims=True)
        np.exp(x, out=x)
        x /= np.sum(x, axis=0, keepdims=True)
    elif spec.output_activation == "sigmoid":
        x = 1.0 / (1.0 + np.exp(-x))
    return x


def probability_map(spec: ModelSpec, outputs: dict[str, np.ndarray], tile_hw: tuple[int, int]) -> np.ndarray:
    """The first output as a (C, T, T) float32 map after activation; ModelError on a bad shape or NaN."""
    out = np.asarray(next(iter(outputs.values())), np.float32)
    if out.ndim == 3:
        out = out[None]
    if out.ndim != 4 or out.shape[0] != 1 or out.shape[2:] != tuple(tile_hw):
        raise ModelError(
            f"The model's output has shape {tuple(out.shape)}; expected (1, classes, {tile_hw[0]}, {tile_hw[1]})."
        )
    probs = activate(spec, out[0])
    if not np.all(np.isfinite(probs)):
        raise ModelError("The model produced NaN or infinite values; it cannot be used on this image.")
    return probs
