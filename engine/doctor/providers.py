"""ONNX Runtime execution providers: whether each available one really starts on this machine."""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
from dataclasses import dataclass

from ..models.onnx_meta import bytes_field, int_field

# ONNX Runtime providers that need no local device check: the CPU always works
# and Azure is a remote endpoint, not an accelerator.
_NOT_ACCELERATORS = {"CPUExecutionProvider", "AzureExecutionProvider"}


def _tiny_model() -> bytes:
    """A valid ONNX model, ``y = x + x`` on a float tensor of shape (1,), as protobuf bytes.

    Built by hand so that checking a device needs no ``onnx`` package. Field
    numbers are those of onnx.proto (ModelProto, GraphProto, NodeProto, ...).
    """

    def value_info(name: str) -> bytes:
        dim = bytes_field(1, int_field(1, 1))  # Dimension.dim_value = 1
        tensor = int_field(1, 1) + bytes_field(2, dim)  # elem_type FLOAT, shape
        return bytes_field(1, name) + bytes_field(2, bytes_field(1, tensor))

    node = bytes_field(1, "x") + bytes_field(1, "x") + bytes_field(2, "y") + bytes_field(4, "Add")
    graph = bytes_field(1, node) + bytes_field(2, "tcd_doctor")
    graph += bytes_field(11, value_info("x")) + bytes_field(12, value_info("y"))
    opset = bytes_field(1, "") + int_field(2, 17)
    return int_field(1, 8) + bytes_field(2, "tcd-doctor") + bytes_field(7, graph) + bytes_field(8, opset)


TINY_MODEL = _tiny_model()


@dataclass(frozen=True)
class ProviderCheck:
    """Whether an available ONNX Runtime execution provider can really start."""

    name: str
    works: bool
    problem: str | None = None  # one sentence when it does not work
    details: str = ""  # what ONNX Runtime said, for the log


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _output_while(func):
    """Run ``func`` and return (its result, what it printed meanwhile, as plain text).

    ONNX Runtime logs why a provider failed from C++ straight to file
    descriptor 2, which ``sys.stderr`` redirection cannot catch, and its Python
    layer prints an "EP Error" banner to ``sys.stdout``; both are kept out of the
    report and returned instead.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    printed = io.StringIO()
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            with contextlib.redirect_stdout(printed):
                result = func()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        text = printed.getvalue() + capture.read().decode("utf-8", "replace")
    return result, _ANSI.sub("", text).strip()


def check_provider(ort, provider: str) -> ProviderCheck:
    """Start a session on :data:`TINY_MODEL` with ``provider`` and see whether it was used."""
    if provider in _NOT_ACCELERATORS:
        return ProviderCheck(provider, True)

    def start():
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        return ort.InferenceSession(TINY_MODEL, sess_options=options, providers=[provider, "CPUExecutionProvider"])

    try:
        session, said = _output_while(start)
    except Exception as exc:
        return ProviderCheck(
            provider, False, f"{provider} is installed but cannot start, so inference would fail on it.", str(exc)
        )
    if provider in session.get_providers():
        return ProviderCheck(provider, True, details=said)
    return ProviderCheck(
        provider,
        False,
        f"{provider} is listed by ONNX Runtime but cannot start here (driver or libraries missing), "
        "so inference would run on the CPU.",
        said,
    )
