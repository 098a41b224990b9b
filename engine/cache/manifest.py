"""The ``tiles.jsonl`` manifest: what a cache holds, committed one tile at a time.

Line 1 is the header (as in tcd_pipeline: ``image``, ``classes``, ``suffix``; plus a
format version, fingerprints of image, model and settings, and the tile count).
Each further line commits one tile: ``tile_id``, ``bbox`` (core, source pixels
``[x0, y0, x1, y1]``), ``status`` (``done`` or ``skipped``), ``cache_file`` and
``cache_files`` (paths relative to the cache folder), ``features`` (crowns this
tile added) and ``features_end`` (crowns in the cache after it).

A line is appended and fsynced only after the tile's files are durable, so the
manifest is the commit log: on open, a torn last line is cut, and everything
after the last good line belongs to no tile and is rolled back by the caller.
Tiles commit in plan order, so committed tiles are always tiles 1..k.

Lines are read and written with ``jsonlines``, imported when first needed: the
plugin imports this module in a QGIS that may not have its packages installed yet.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import CacheCorruptError, CacheWriteError
from .durable import write_atomic

MANIFEST_NAME = "tiles.jsonl"
FORMAT_NAME = "tcd-qgis-cache"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TileRecord:
    tile_id: int
    bbox: tuple[int, int, int, int]
    status: str  # "done" | "skipped"
    cache_files: dict = field(default_factory=dict, compare=False, hash=False)
    features: int = 0
    features_end: int = 0
    area_m2: float | None = None  # valid pixels of the core, in m² (None: not measured, older caches)
    canopy_m2: float | None = None  # of which canopy confidence >= 0.5

    def to_json(self) -> dict:
        files = dict(sorted(self.cache_files.items()))
        primary = files.get("instances") or files.get("semantic")
        line = {
            "tile_id": self.tile_id,
            "bbox": list(self.bbox),
            "status": self.status,
            "cache_file": primary,
            "cache_files": files,
            "features": self.features,
            "features_end": self.features_end,
        }
        if self.area_m2 is not None:
            line["area_m2"] = self.area_m2
            line["canopy_m2"] = self.canopy_m2
        return line


@dataclass
class ManifestState:
    """A manifest as read from disk. ``good_bytes``: length of the trusted prefix of the file."""

    header: dict | None
    tiles: list[TileRecord]
    good_bytes: int
    dropped_lines: int  # torn or garbage lines found after the trusted prefix

    @property
    def features_end(self) -> int:
        return self.tiles[-1].features_end if self.tiles else 0


def safe_relpath(cache_dir: Path, rel: str) -> Path:
    """Resolve a manifest path inside the cache folder; refuse absolute paths and escapes."""
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or ":" in rel or rel.startswith("\\"):
        raise CacheCorruptError(f"The cache manifest names a file outside the cache folder ({rel}); refusing it.")
    return cache_dir / Path(*p.parts)


def _parse_tile(obj: dict, expected_id: int) -> TileRecord:
    if not isinstance(obj, dict) or obj.get("tile_id") != expected_id:
        raise ValueError("unexpected tile line")
    status = obj.get("status", "done")
    if status not in ("done", "skipped"):
        raise ValueError("bad status")
    bbox = tuple(int(v) for v in obj["bbox"])
    if len(bbox) != 4:
        raise ValueError("bad bbox")
    files = obj.get("cache_files") or {}
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise ValueError("bad cache_files")
    area, canopy = obj.get("area_m2"), obj.get("canopy_m2")
    return TileRecord(expected_id, bbox, status, dict(files), int(obj.get("features", 0)),
                      int(obj.get("features_end", 0)), None if area is None else float(area),
                      None if canopy is None else float(canopy))


class _Lines:
    """The raw lines of a file for jsonlines to parse, remembering the last one handed out."""

    def __init__(self, f):
        self._f = f
        self.last = b""

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        self.last = next(self._f)
        return self.last


def read_manifest(cache_dir: Path) -> ManifestState:
    """Read ``tiles.jsonl`` line by line (never loading any other file of the cache).

    Stops trusting the file at the first line that is torn (no newline), not
    JSON, not an object or out of sequence; those lines and all after them are
    counted in ``dropped_lines``. Raises CacheCorruptError if a trusted line points
    outside the cache folder or the header is of an unknown format.
    """
    import jsonlines

    cache_dir = Path(cache_dir)
    path = cache_dir / MANIFEST_NAME
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return ManifestState(None, [], 0, 0)
    except OSError as exc:
        raise CacheCorruptError(f"The cache manifest {path} cannot be read: {exc.strerror}.", cache_dir) from exc
    header, tiles, good, dropped = None, [], 0, 0
    prev_end = 0
    with f:
        lines = _Lines(f)
        reader = jsonlines.Reader(lines)
        while True:
            try:
                obj = reader.read(type=dict)
            except EOFError:
                break
            except (jsonlines.InvalidLineError, UnicodeDecodeError):
                dropped = 1 + sum(1 for _ in f)
                break
            try:
                if not lines.last.endswith(b"\n"):
                    raise ValueError("torn line")
                if header is None:
                    header = _check_header(obj, path)
                else:
                    record = _parse_tile(obj, len(tiles) + 1)
                    if record.features_end != prev_end + record.features:
                        raise ValueError("feature count out of step")
                    for rel in record.cache_files.values():
                        safe_relpath(cache_dir, rel)
                    prev_end = record.features_end
                    tiles.append(record)
                good += len(lines.last)
            except (ValueError, KeyError, TypeError):
                dropped = 1 + sum(1 for _ in f)
                break
    return ManifestState(header, tiles, good, dropped)


def _check_header(obj: dict, path: Path) -> dict:
    if obj.get("format") != FORMAT_NAME:
        raise CacheCorruptError(f"{path} is not a manifest of this tool's caches; choose another output folder.",
                                path.parent)
    if int(obj.get("version", 0)) > FORMAT_VERSION:
        raise CacheCorruptError(f"The cache in {path.parent} was written by a newer version of this tool; update it.",
                                path.parent)
    return obj


def encode_lines(objects) -> bytes:
    """JSON lines of ``objects``, as written to the manifest."""
    import jsonlines

    buffer = io.BytesIO()
    with jsonlines.Writer(buffer) as writer:
        writer.write_all(objects)
    return buffer.getvalue()


class ManifestWriter:
    """Appends commit lines to ``tiles.jsonl``; each append is fsynced before returning."""

    def __init__(self, cache_dir: Path, state: ManifestState, header: dict):
        self.path = Path(cache_dir) / MANIFEST_NAME
        try:
            if state.header is None:
                write_atomic(self.path, encode_lines([header]))
            elif state.dropped_lines or self.path.stat().st_size != state.good_bytes:
                with open(self.path, "r+b") as f:
                    f.truncate(state.good_bytes)
                    f.flush()
                    os.fsync(f.fileno())
            self._f = open(self.path, "ab")
        except OSError as exc:
            raise CacheWriteError(f"Cannot write the cache manifest {self.path}: {exc.strerror}.", cache_dir) from exc

    def commit(self, records: list[TileRecord]) -> None:
        """Append the lines of ``records`` and fsync once: the records are committed when this returns."""
        try:
            self._f.write(encode_lines(r.to_json() for r in records))
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as exc:
            raise CacheWriteError(f"Cannot append to the cache manifest: {exc.strerror}.",
                                  self.path.parent) from exc

    def close(self) -> None:
        self._f.close()
