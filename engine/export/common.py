"""What every exporter to the engine's ONNX format shares: optional imports, saving with metadata, checking."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

from ..errors import ModelError

# float32 PyTorch and onnxruntime agree far closer than this; more means a broken export.
MAX_EXPORT_DIFF = 1e-2
OPSET = 17


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (libraries put pages of context after it)."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def require(module: str, package: str, requirements: str = "requirements-export.txt"):
    """Import an export-only package, or raise ModelError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModelError(f"Exporting this model needs {package}: pip install -r {requirements}.") from exc


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise ModelError(f"Cannot read {path}: {first_line(exc)}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path} does not hold a JSON object.")
    return data


def save_with_metadata(tmp_onnx: Path, out_path: Path, metadata: dict[str, object]) -> None:
    """Add the metadata (JSON values), then move the model into place in one rename.

    ``tmp_onnx`` lies in a folder beside ``out_path``, so a crash never leaves
    half a model where the plugin's model list would read it.
    """
    onnx = require("onnx", "onnx")
    model = onnx.load(str(tmp_onnx))
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = json.dumps(value)
    final = tmp_onnx.with_name("final.onnx")
    onnx.save(model, str(final))
    os.replace(final, out_path)


def onnx_max_diff(path: Path, x, expected) -> float:
    """Largest absolute difference between the ONNX model's first output on ``x`` and ``expected``."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    if got.shape != expected.shape:
        return float("inf")
    return float(np.max(np.abs(got - expected)))
