"""Reading an ONNX file's metadata without loading its weights (standard library only)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import ModelError


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def fields(buf: bytes) -> Iterator[tuple[int, int, int, int, int]]:
    """``(number, wire type, field start, value start, value end)`` of each field of a protobuf message;
    ValueError on a truncated field or an unknown wire type."""
    pos = 0
    while pos < len(buf):
        start = pos
        key, pos = read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value_start = pos
            _, pos = read_varint(buf, pos)
        elif wire == 1:
            value_start, pos = pos, pos + 8
        elif wire == 5:
            value_start, pos = pos, pos + 4
        elif wire == 2:
            length, value_start = read_varint(buf, pos)
            pos = value_start + length
        else:
            raise ValueError(f"wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated field")
        yield number, wire, start, value_start, pos


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Read an ONNX file's ``metadata_props`` without loading its weights.

    Walks the top-level protobuf fields of ``ModelProto`` and seeks over the
    (large) graph, so listing models in a dialog stays fast.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"Cannot read the model file {path}: {exc.strerror or exc}.") from exc
    if not data:
        raise ModelError(f"{path.name} is not a valid ONNX model file.")
    meta: dict[str, str] = {}
    try:
        for number, wire, _, s, e in fields(data):
            if number == 14 and wire == 2:  # StringStringEntryProto: key 1, value 2
                entry, k, v = data[s:e], "", ""
                for e_number, _, _, es, ee in fields(entry):
                    if e_number == 1:
                        k = entry[es:ee].decode("utf-8")
                    elif e_number == 2:
                        v = entry[es:ee].decode("utf-8")
                meta[k] = v
    except (ValueError, UnicodeDecodeError, IndexError) as exc:
        raise ModelError(f"{path.name} is not a valid ONNX model file.") from exc
    return meta


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def encode_varint(value: int) -> bytes:
    """A protobuf varint (the inverse of :func:`read_varint`)."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def int_field(number: int, value: int) -> bytes:
    """A protobuf varint field."""
    return encode_varint(number << 3) + encode_varint(value)


def bytes_field(number: int, payload: bytes | str) -> bytes:
    """A protobuf length-delimited field (bytes, a string or an embedded message)."""
    payload = payload.encode() if isinstance(payload, str) else payload
    return encode_varint(number << 3 | 2) + encode_varint(len(payload)) + payload
