"""A model's last Softmax over the channel axis, taken out of its ONNX graph and applied with numpy.

onnxruntime's CPU Softmax over any axis but the last transposes its input, twice.
Over the channel axis of a (N, C, H, W) map, as segmentation models end, that
costs more than a 1x1-convolution model's own work (10 of its 12 ms on a 512 px
tile) and 70 ms of SegFormer-b0's 770 ms on a 1024 px tile. numpy does the same
softmax in 1 and 4.5 ms. So on the CPU the engine runs such a model without that
Softmax and applies it to the output itself (:func:`softmax_`): the same function
of the logits, equal to onnxruntime's to float32 rounding.

The edit works on the model's protobuf bytes with the standard library (the
``onnx`` package is not a runtime dependency): the Softmax node is dropped and the
graph output it made is renamed to its input, everything else copied byte for byte.
A model is left as it is unless the edit is plainly safe: default-domain opset 13 or
later (earlier, ``axis=1`` meant a softmax over C*H*W), an explicit ``axis`` of 1,
an output no node reads, no subgraphs, no weights in external files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .onnx_meta import bytes_field, fields, read_varint

CHANNEL_AXIS = 1
_MIN_OPSET = 13  # Softmax's axis is one axis from opset 13; before, it flattened from that axis on


@dataclass(frozen=True)
class TakenSoftmax:
    """A graph output whose Softmax the engine applies: its index among the outputs, its name in the
    model as written (the session now calls it by the Softmax's input) and the softmax axis."""

    index: int
    name: str
    axis: int


def softmax_(x: np.ndarray, axis: int) -> np.ndarray:
    """Softmax of float32 ``x`` along ``axis``, in place (``x`` is the session's own output array)."""
    x -= x.max(axis=axis, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=axis, keepdims=True)
    return x


def _int64(buf: bytes, pos: int) -> int:
    value, _ = read_varint(buf, pos)
    return value - (1 << 64) if value >= 1 << 63 else value


@dataclass
class _Node:
    op_type: str = ""
    domain: str = ""
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    axis: int | None = None
    has_subgraph: bool = False


def _node(buf: bytes) -> _Node:
    node, inputs, outputs = _Node(), [], []
    for number, wire, _, s, e in fields(buf):
        if wire != 2:
            continue
        if number == 1:
            inputs.append(buf[s:e].decode())
        elif number == 2:
            outputs.append(buf[s:e].decode())
        elif number == 4:
            node.op_type = buf[s:e].decode()
        elif number == 7:
            node.domain = buf[s:e].decode()
        elif number == 5:  # AttributeProto: name 1, i 3, g 6, graphs 11
            attr, name, value = buf[s:e], "", None
            for a_number, a_wire, _, a_s, a_e in fields(attr):
                if a_number == 1 and a_wire == 2:
                    name = attr[a_s:a_e].decode()
                elif a_number == 3 and a_wire == 0:
                    value = _int64(attr, a_s)
                elif a_number in (6, 11):
                    node.has_subgraph = True
            if name == "axis":
                node.axis = value
    node.inputs, node.outputs = tuple(inputs), tuple(outputs)
    return node


def _name_of(value_info: bytes) -> str:
    return next((value_info[s:e].decode() for n, w, _, s, e in fields(value_info) if n == 1 and w == 2), "")


def _renamed(value_info: bytes, name: str) -> bytes:
    """A ValueInfoProto with its name (field 1) replaced, its type and doc kept."""
    out = bytearray(bytes_field(1, name))
    for number, _, start, _, end in fields(value_info):
        if number != 1:
            out += value_info[start:end]
    return bytes(out)


def _external_data(tensor: bytes) -> bool:
    """Whether a TensorProto keeps its values in another file (data_location, field 14, is EXTERNAL)."""
    return any(n == 14 and w == 0 and read_varint(tensor, s)[0] == 1 for n, w, _, s, _ in fields(tensor))


def _default_opset(model: bytes, model_fields: list) -> int:
    for number, wire, _, s, e in model_fields:
        if number == 8 and wire == 2:  # OperatorSetIdProto: domain 1, version 2
            entry, domain, version = model[s:e], "", 0
            for n, w, _, es, ee in fields(entry):
                if n == 1 and w == 2:
                    domain = entry[es:ee].decode()
                elif n == 2 and w == 0:
                    version = _int64(entry, es)
            if domain in ("", "ai.onnx"):
                return version
    return 0


def without_channel_softmax(model: bytes) -> tuple[bytes, tuple[TakenSoftmax, ...]] | None:
    """The model without the Softmax over axis 1 that makes any of its graph outputs, and what was taken;
    None when there is none to take (or the edit is not plainly safe, see the module docstring)."""
    try:
        return _without_channel_softmax(model)
    except (ValueError, UnicodeDecodeError, IndexError):  # not a model this edit understands: run it as it is
        return None


def _without_channel_softmax(model: bytes) -> tuple[bytes, tuple[TakenSoftmax, ...]] | None:
    model_fields = list(fields(model))
    graph_field = next((f for f in model_fields if f[0] == 7 and f[1] == 2), None)
    if graph_field is None or _default_opset(model, model_fields) < _MIN_OPSET:
        return None
    graph = model[graph_field[3] : graph_field[4]]
    graph_fields = list(fields(graph))
    nodes = {start: _node(graph[s:e]) for number, _, start, s, e in graph_fields if number == 1}
    if any(node.has_subgraph for node in nodes.values()):
        return None
    if any(_external_data(graph[s:e]) for number, _, _, s, e in graph_fields if number == 5):
        return None
    graph_inputs = {_name_of(graph[s:e]) for number, _, _, s, e in graph_fields if number == 11}
    outputs = [(start, _name_of(graph[s:e])) for number, _, start, s, e in graph_fields if number == 12]
    output_names = {name for _, name in outputs}
    read = {name for node in nodes.values() for name in node.inputs}
    producer = {name: start for start, node in nodes.items() for name in node.outputs}

    dropped: set[int] = set()
    renamed: dict[int, str] = {}
    taken = []
    for index, (start, name) in enumerate(outputs):
        node_start = producer.get(name)
        node = nodes.get(node_start)
        if (node is None or node.op_type != "Softmax" or node.domain not in ("", "ai.onnx")
                or node.axis != CHANNEL_AXIS or len(node.inputs) != 1 or name in read):
            continue
        logits = node.inputs[0]
        if logits in output_names or logits in graph_inputs or logits in renamed.values():
            continue  # the renamed output would clash with another
        dropped.add(node_start)
        renamed[start] = logits
        taken.append(TakenSoftmax(index, name, CHANNEL_AXIS))
    if not taken:
        return None

    new_graph = bytearray()
    for _, _, start, s, end in graph_fields:
        if start in dropped:
            continue
        if start in renamed:
            new_graph += bytes_field(12, _renamed(graph[s:end], renamed[start]))
        else:
            new_graph += graph[start:end]
    new_model = bytearray()
    for _, _, start, _, end in model_fields:
        new_model += bytes_field(7, bytes(new_graph)) if start == graph_field[2] else model[start:end]
    return bytes(new_model), tuple(taken)
