"""Reading an ONNX file's metadata without loading its weights (standard library only)."""

from __future__ import annotations

import hashlib
import os
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
    meta: dict[str, str] = {}
    pos = 0
    try:
        while pos < len(data):
            key, pos = read_varint(data, pos)
            field_no, wire = key >> 3, key & 7
            if wire == 0:
                _, pos = read_varint(data, pos)
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            elif wire == 2:
                length, pos = read_varint(data, pos)
                if pos + length > len(data):
                    raise ValueError("truncated field")
                if field_no == 14:
                    entry, k, v, epos = data[pos : pos + length], "", "", 0
                    while epos < len(entry):
                        ekey, epos = read_varint(entry, epos)
                        elen, epos = read_varint(entry, epos)
                        text = entry[epos : epos + elen].decode("utf-8")
                        epos += elen
                        if ekey >> 3 == 1:
                            k = text
                        elif ekey >> 3 == 2:
                            v = text
                    meta[k] = v
                pos += length
            else:
                raise ValueError(f"wire type {wire}")
    except (ValueError, UnicodeDecodeError, IndexError) as exc:
        raise ModelError(f"{path.name} is not a valid ONNX model file.") from exc
    if pos != len(data) or not data:
        raise ModelError(f"{path.name} is not a valid ONNX model file.")
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
