"""Running an ONNX model on tiles with onnxruntime."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..errors import ModelError
from .graph_tail import softmax_, without_channel_softmax
from .onnx_meta import file_sha256, read_onnx_metadata
from .spec import spec_from_metadata

logger = logging.getLogger(__name__)

# ``Job.provider`` names → onnxruntime execution providers, in order of preference.
PROVIDERS = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
    "directml": ("DmlExecutionProvider", "CPUExecutionProvider"),
    "coreml": ("CoreMLExecutionProvider", "CPUExecutionProvider"),
}
_AUTO_ORDER = ("cuda", "directml", "coreml")
PROBE_TILE_PX = 64  # the blank tile a model that takes any size is tried on (OnnxModel.check_outputs)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def choose_providers(ort, provider: str | None) -> list[str]:
    """onnxruntime providers for a ``Job.provider`` choice; None picks a GPU provider when one is built in."""
    available = set(ort.get_available_providers())
    if provider is None:
        provider = next((p for p in _AUTO_ORDER if PROVIDERS[p][0] in available), "cpu")
    if provider not in PROVIDERS:
        raise ModelError(f"Unknown processor '{provider}': choose one of {', '.join(PROVIDERS)}.")
    if PROVIDERS[provider][0] not in available:
        raise ModelError(f"This onnxruntime has no {PROVIDERS[provider][0]}; choose another processor (or cpu).")
    return [p for p in PROVIDERS[provider] if p in available]


class OnnxModel:
    """An onnxruntime session with the spec that explains its inputs and outputs.

    ``provider`` is a ``Job.provider`` choice; :attr:`provider` is the
    onnxruntime provider actually running the model (a GPU provider that fails to
    start falls back to the CPU, which is logged).
    """

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None, provider: str | None = None):
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"The model file {path} does not exist.")
        meta = read_onnx_metadata(path)
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ModelError("onnxruntime is not installed; install the plugin's dependencies first.") from exc
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        # onnxruntime's intra-op threads spin while they wait for work by default: beside a
        # run's reader and post-processing threads that burns the cores those need (on 2
        # cores, about a third of a light model's CPU time).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        wanted = choose_providers(ort, provider)
        self.taken_softmax = ()
        self.session = None
        if wanted[0] == "CPUExecutionProvider":  # a GPU's Softmax is cheap, and numpy would run beside it
            edited = without_channel_softmax(path.read_bytes())
            if edited is not None:
                try:
                    self.session = ort.InferenceSession(edited[0], sess_options=options, providers=wanted)
                    self.taken_softmax = edited[1]
                except Exception as exc:  # the edit is at fault, or the model: the model as written says which
                    logger.debug("%s without its last Softmax does not load (%s); running it as written",
                                 path.name, _first_line(exc))
        if self.session is None:
            try:
                self.session = ort.InferenceSession(str(path), sess_options=options, providers=wanted)
            except Exception as exc:  # onnxruntime raises its own untyped errors
                raise ModelError(f"onnxruntime cannot load {path.name}: {_first_line(exc)}") from exc
        self.provider = self.session.get_providers()[0]
        if self.provider != wanted[0]:
            logger.warning("%s could not start; %s runs the model instead", wanted[0], self.provider)
        inputs = self.session.get_inputs()
        outputs = self.session.get_outputs()
        if len(inputs) != 1:
            raise ModelError(f"The model has {len(inputs)} inputs; exactly one image input is supported.")
        self.input_name = inputs[0].name
        shape = tuple(d if isinstance(d, int) else None for d in inputs[0].shape)
        if len(shape) != 4:
            raise ModelError(f"The model's input has {len(shape)} dimensions; expected (batch, bands, height, width).")
        self.input_type = inputs[0].type
        # Tiles can be stacked when the batch axis is free on the input and on every output.
        self.batchable = not isinstance(inputs[0].shape[0], int) and all(
            len(o.shape) >= 1 and not isinstance(o.shape[0], int) for o in outputs)
        self.output_names = [o.name for o in outputs]
        for taken in self.taken_softmax:  # the kinds know the outputs by the names the model gives them
            self.output_names[taken.index] = taken.name
        self.spec = spec_from_metadata(
            meta, path=str(path), sha256=file_sha256(path), input_shape=shape,
            output_shapes=tuple(tuple(o.shape) for o in outputs),
        )
        self.kind = self.spec.kind

    def check_outputs(self, tile_px: int) -> None:
        """Run the model once on a blank tile when its outputs' sizes are not fixed in the file, so that an
        output the model's kind cannot use is refused before any folder is written (ModelError).

        A model that takes any input size is tried on a small tile (cheap); a failure to run
        at all is left to the first real tile, which says why.
        """
        outputs = self.session.get_outputs()
        if all(isinstance(d, int) for o in outputs for d in o.shape[1:]):
            return  # the metadata reader checked fixed shapes already
        side = self.spec.fixed_input_px or min(tile_px, PROBE_TILE_PX)
        blank = np.zeros((len(self.spec.bands), side, side), np.float32)
        x = self.normalise(blank)
        if self.input_type == "tensor(float16)":
            x = x.astype(np.float16)
        try:
            results = self._activated(self.session.run(None, {self.input_name: x}))
        except Exception as exc:  # onnxruntime's own errors: the first tile reports them
            logger.debug("%s does not run on a blank %d px tile (%s)", self.spec.name, side, _first_line(exc))
            return
        self.kind.decode(self.spec, dict(zip(self.output_names, results)), (side, side))

    def normalise(self, raw: np.ndarray) -> np.ndarray:
        """(bands, H, W) raw pixel values → the model's (1, bands, H, W) float32 input."""
        spec = self.spec
        std = np.asarray(spec.std, np.float32)[:, None, None]
        # (raw * scale - mean) / std in two passes over the tile instead of four.
        x = np.multiply(raw, np.float32(spec.scale) / std, dtype=np.float32)
        x -= np.asarray(spec.mean, np.float32)[:, None, None] / std
        return x[None]

    def run(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        """Run one tile; ``raw`` is (bands, T, T) in source units. Returns the kind's decoded outputs."""
        x = self.normalise(raw)
        if self.input_type == "tensor(float16)":
            x = x.astype(np.float16)
        try:
            results = self._activated(self.session.run(None, {self.input_name: x}))
        except Exception as exc:
            raise ModelError(f"The model failed on a {x.shape[2]}x{x.shape[3]} px tile: {_first_line(exc)}") from exc
        return self.kind.decode(self.spec, dict(zip(self.output_names, results)), raw.shape[1:])

    def _activated(self, results: list) -> list:
        """The session's outputs with the softmax taken out of the graph (:mod:`.graph_tail`) applied."""
        for taken in self.taken_softmax:
            results[taken.index] = softmax_(np.asarray(results[taken.index], np.float32), taken.axis)
        return results

    @property
    def batch_size(self) -> int:
        """Tiles per inference call that pay off: several on a GPU (kept fed), one on the CPU.

        On 2 CPU cores stacking tiles did not speed up the models measured (a 1x1
        convolution, SegFormer-b0); a GPU gains from fewer, larger calls.
        """
        return 4 if self.batchable and self.provider != "CPUExecutionProvider" else 1

    def run_batch(self, raws: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Run tiles of one size together (one call when the model takes a batch); decoded outputs per tile."""
        if len(raws) == 1 or not self.batchable:
            return [self.run(raw) for raw in raws]
        x = np.concatenate([self.normalise(raw) for raw in raws])
        if self.input_type == "tensor(float16)":
            x = x.astype(np.float16)
        try:
            results = self._activated(self.session.run(None, {self.input_name: x}))
        except Exception as exc:
            raise ModelError(f"The model failed on {len(raws)} tiles of {x.shape[2]}x{x.shape[3]} px: "
                             f"{_first_line(exc)}") from exc
        if any(len(r) != len(raws) for r in results):
            raise ModelError("The model's outputs do not keep the batch axis; it cannot take several tiles at once.")
        return [self.kind.decode(self.spec, {name: r[i : i + 1] for name, r in zip(self.output_names, results)},
                                 raw.shape[1:]) for i, raw in enumerate(raws)]
