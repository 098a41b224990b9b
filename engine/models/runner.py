"""Running an ONNX model on tiles with onnxruntime."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ModelError
from .onnx_meta import file_sha256, read_onnx_metadata
from .spec import OutputKind, spec_from_metadata


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    x = x - np.max(x, axis=axis, keepdims=True)
    np.exp(x, out=x)
    x /= np.sum(x, axis=axis, keepdims=True)
    return x


class OnnxModel:
    """An onnxruntime session with the spec that explains its inputs and outputs."""

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None, providers: list[str] | None = None):
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
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"onnxruntime cannot load {path.name}: {first_line[:200]}") from exc
        inputs = self.session.get_inputs()
        outputs = self.session.get_outputs()
        if len(inputs) != 1:
            raise ModelError(f"The model has {len(inputs)} inputs; exactly one image input is supported.")
        self.input_name = inputs[0].name
        shape = tuple(d if isinstance(d, int) else None for d in inputs[0].shape)
        if len(shape) != 4:
            raise ModelError(f"The model's input has {len(shape)} dimensions; expected (batch, bands, height, width).")
        self.input_type = inputs[0].type
        out_shape = outputs[0].shape
        n_out = out_shape[1] if len(out_shape) == 4 and isinstance(out_shape[1], int) else None
        self.output_names = [o.name for o in outputs]
        self.spec = spec_from_metadata(
            meta, path=str(path), sha256=file_sha256(path), input_shape=shape, n_output_channels=n_out
        )

    def normalise(self, raw: np.ndarray) -> np.ndarray:
        """(bands, H, W) raw pixel values → the model's (1, bands, H, W) float32 input."""
        spec = self.spec
        x = raw.astype(np.float32) * np.float32(spec.scale)
        x -= np.asarray(spec.mean, np.float32)[:, None, None]
        x /= np.asarray(spec.std, np.float32)[:, None, None]
        return x[None]

    def run(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        """Run one tile; ``raw`` is (bands, T, T) in source units. Returns named outputs.

        For ``semantic`` and ``canopy_centres`` models ``"probs"`` is (C, T, T)
        float32 probabilities; ``instance_masks`` models return ``masks`` (N, T, T),
        ``scores`` (N,) and ``labels`` (N,).
        """
        x = self.normalise(raw)
        if self.input_type == "tensor(float16)":
            x = x.astype(np.float16)
        try:
            results = self.session.run(None, {self.input_name: x})
        except Exception as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"The model failed on a {x.shape[2]}x{x.shape[3]} px tile: {first_line[:200]}") from exc
        kind = self.spec.output_kind
        tile = raw.shape[1:]
        if kind is OutputKind.INSTANCE_MASKS:
            named = dict(zip(self.output_names, results))
            masks = named.get("masks", results[0])
            scores = named.get("scores", results[1] if len(results) > 1 else None)
            labels = named.get("labels", results[2] if len(results) > 2 else None)
            masks = np.asarray(masks, np.float32)
            if masks.ndim == 4:
                masks = masks[:, 0]
            if masks.ndim != 3 or masks.shape[1:] != tile:
                raise ModelError(f"The model's masks have shape {masks.shape}; expected (N, {tile[0]}, {tile[1]}).")
            n = masks.shape[0]
            scores = np.ones(n, np.float32) if scores is None else np.asarray(scores, np.float32).reshape(n)
            labels = (
                np.full(n, self.spec.channel_of_class[0], np.int64)
                if labels is None
                else np.asarray(labels, np.int64).reshape(n)
            )
            return {"masks": masks, "scores": scores, "labels": labels}
        out = np.asarray(results[0], np.float32)
        if out.ndim == 3:
            out = out[:, None] if kind is OutputKind.SEMANTIC and out.shape[0] == 1 else out[None]
        if out.ndim != 4 or out.shape[0] != 1 or out.shape[2:] != tile:
            raise ModelError(
                f"The model's output has shape {tuple(out.shape)}; expected (1, classes, {tile[0]}, {tile[1]})."
            )
        probs = out[0]
        if self.spec.output_activation == "softmax":
            probs = _softmax(probs, axis=0)
        elif self.spec.output_activation == "sigmoid":
            probs = 1.0 / (1.0 + np.exp(-probs))
        if kind is OutputKind.CANOPY_CENTRES and probs.shape[0] != 2:
            raise ModelError(f"A canopy_centres model must output 2 channels, not {probs.shape[0]}.")
        if kind is OutputKind.SEMANTIC and max(self.spec.channel_of_class) >= probs.shape[0]:
            raise ModelError(
                f"The model outputs {probs.shape[0]} channels but names {len(self.spec.class_names)} classes."
            )
        if not np.all(np.isfinite(probs)):
            raise ModelError("The model produced NaN or infinite values; it cannot be used on this image.")
        return {"probs": probs}
