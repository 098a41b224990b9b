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

Country-sized manifests (a million lines) are not parsed line by line on every
open. The writer keeps a SHA-256 of everything it has committed and, every
:data:`CHECKPOINT_EVERY` tiles and on close, replaces ``tiles.jsonl.ckpt``
atomically with what the lines so far hold (their count, byte length and digest,
running totals, where every :data:`OFFSET_STRIDE`-th line starts, which tiles have
confidence files). On open, a checkpoint whose digest matches the manifest's first
bytes stands for those lines (they are exactly the bytes that were validated or
written before); only the lines after it are parsed, as strictly as ever, and the
checkpointed lines are read back only when asked for (:class:`TileRecords`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import CacheCorruptError, CacheWriteError
from .durable import write_atomic

logger = logging.getLogger(__name__)

MANIFEST_NAME = "tiles.jsonl"
CHECKPOINT_NAME = "tiles.jsonl.ckpt"
CHECKPOINT_FORMAT = "tcd-manifest-checkpoint"
CHECKPOINT_EVERY = 4096  # tile lines between the checkpoints a writer makes during a run
OFFSET_STRIDE = 1024  # a checkpoint keeps where every OFFSET_STRIDE-th tile line starts
SEMANTIC_TILE = "semantic/tile_{:06d}.tif"  # the name a cache gives tile N's confidence file
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


class _Facts:
    """Running facts about tile lines 1..n, kept alike by the reader, the writer and checkpoints."""

    def __init__(self):
        self.n = 0
        self.features_end = 0
        self.skipped = 0
        self.offsets: list[int] = []  # byte offset of tile lines 1, 1 + OFFSET_STRIDE, ...
        self.semantic: list[list[int]] = []  # [first, last] tile ids whose confidence file is SEMANTIC_TILE's
        self.other_semantic: dict[int, str] = {}  # tile id -> confidence file named otherwise
        self.in_order = True  # every line followed the rules the reader checks (ids 1..n, running crown count)

    def add(self, record: TileRecord, offset: int) -> None:
        if record.tile_id != self.n + 1 or record.features_end != self.features_end + record.features:
            self.in_order = False
        if self.n % OFFSET_STRIDE == 0:
            self.offsets.append(offset)
        self.n += 1
        self.features_end = record.features_end
        self.skipped += record.status == "skipped"
        rel = record.cache_files.get("semantic")
        if not rel:
            return
        if rel != SEMANTIC_TILE.format(record.tile_id):
            self.other_semantic[record.tile_id] = rel
        elif self.semantic and self.semantic[-1][1] == record.tile_id - 1:
            self.semantic[-1][1] = record.tile_id
        else:
            self.semantic.append([record.tile_id, record.tile_id])

    def copy(self) -> _Facts:
        other = _Facts()
        other.__dict__.update(self.__dict__)
        other.offsets = list(self.offsets)
        other.semantic = [list(r) for r in self.semantic]
        other.other_semantic = dict(self.other_semantic)
        return other

    def to_json(self, size: int, digest: str) -> dict:
        return {"format": CHECKPOINT_FORMAT, "version": 1, "bytes": size, "sha256": digest, "tiles": self.n,
                "features_end": self.features_end, "skipped": self.skipped, "stride": OFFSET_STRIDE,
                "offsets": self.offsets, "semantic": self.semantic,
                "other_semantic": {str(k): v for k, v in self.other_semantic.items()}}

    @classmethod
    def from_json(cls, obj: dict) -> _Facts:
        if obj.get("format") != CHECKPOINT_FORMAT or obj.get("version") != 1 or obj.get("stride") != OFFSET_STRIDE:
            raise ValueError("not a checkpoint of this version")
        facts = cls()
        facts.n, facts.features_end, facts.skipped = int(obj["tiles"]), int(obj["features_end"]), int(obj["skipped"])
        facts.offsets = [int(v) for v in obj["offsets"]]
        facts.semantic = [[int(a), int(b)] for a, b in obj["semantic"]]
        facts.other_semantic = {int(k): str(v) for k, v in obj["other_semantic"].items()}
        if len(facts.offsets) != -(-facts.n // OFFSET_STRIDE) or facts.offsets != sorted(set(facts.offsets)):
            raise ValueError("inconsistent checkpoint")
        return facts


class TileRecords(Sequence):
    """The committed tiles of a cache, in plan order: a list of :class:`TileRecord`.

    The tiles a checkpoint stands for stay in the manifest file until asked for
    (indexing, slicing and iterating read and parse their lines then); the count,
    the crowns and skipped totals and :meth:`semantic_files` need no line at all.
    Tiles after them, and tiles appended as they commit, are held in memory.
    """

    def __init__(self, records=(), *, path: Path | None = None, prefix: _Facts | None = None):
        self._path = path
        self._prefix = prefix if prefix is not None else _Facts()
        self._tail: list[TileRecord] = []
        self._features_end = self._prefix.features_end
        self._skipped = self._prefix.skipped
        for record in records:
            self.append(record)

    @classmethod
    def of(cls, records) -> TileRecords:
        return records if isinstance(records, TileRecords) else cls(records)

    def __len__(self) -> int:
        return self._prefix.n + len(self._tail)

    @property
    def skipped(self) -> int:
        """How many of the tiles are skipped (empty or nodata)."""
        return self._skipped

    @property
    def features_end(self) -> int:
        """Crowns in the cache after the last tile."""
        return self._features_end

    def append(self, record: TileRecord) -> None:
        self._tail.append(record)
        self._features_end = record.features_end
        self._skipped += record.status == "skipped"

    def __getitem__(self, index):
        n, k = len(self), self._prefix.n
        if isinstance(index, slice):
            start, stop, step = index.indices(n)
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            head = list(self._read(start, min(stop, k))) if start < k else []
            return head + self._tail[max(start - k, 0):max(stop - k, 0)]
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError("tile index out of range")
        return self._tail[index - k] if index >= k else next(self._read(index, index + 1))

    def __iter__(self) -> Iterator[TileRecord]:
        yield from self._read(0, self._prefix.n)
        yield from self._tail

    def __eq__(self, other) -> bool:
        if not isinstance(other, (list, TileRecords)):
            return NotImplemented
        return len(self) == len(other) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"TileRecords({len(self)} tiles, {self._prefix.n} on disk)"

    def _read(self, start: int, stop: int) -> Iterator[TileRecord]:
        """Parse checkpointed tile lines ``start..stop-1`` (0-based) from the manifest."""
        if start >= stop:
            return
        block = start // OFFSET_STRIDE
        with open(self._path, "rb") as f:
            f.seek(self._prefix.offsets[block])
            for i in range(block * OFFSET_STRIDE, stop):
                line = f.readline()
                if i >= start:
                    yield _parse_tile(json.loads(line), i + 1)

    def semantic_files(self) -> Iterator[tuple[int, str]]:
        """``(tile_id, path relative to the cache)`` of every confidence file the tiles name, in order."""
        other = self._prefix.other_semantic
        ids = sorted([i for first, last in self._prefix.semantic for i in range(first, last + 1)] + list(other))
        for tile_id in ids:
            yield tile_id, other.get(tile_id) or SEMANTIC_TILE.format(tile_id)
        for record in self._tail:
            rel = record.cache_files.get("semantic")
            if rel:
                yield record.tile_id, rel


@dataclass
class ManifestState:
    """A manifest as read from disk. ``good_bytes``: length of the trusted prefix of the file.

    ``digest`` (SHA-256 of those bytes) and ``facts`` about its tile lines let a
    writer continue the manifest and its checkpoints without reading it again.
    """

    header: dict | None
    tiles: Sequence[TileRecord]
    good_bytes: int
    dropped_lines: int  # torn or garbage lines found after the trusted prefix
    digest: object = None  # hashlib.sha256 of the first good_bytes bytes
    facts: _Facts | None = None

    @property
    def features_end(self) -> int:
        if isinstance(self.tiles, TileRecords):
            return self.tiles.features_end
        return self.tiles[-1].features_end if self.tiles else 0

    @property
    def skipped(self) -> int:
        if isinstance(self.tiles, TileRecords):
            return self.tiles.skipped
        return sum(1 for t in self.tiles if t.status == "skipped")


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


def _checkpoint(cache_dir: Path, f, header_bytes: int, digest) -> tuple[_Facts, object] | None:
    """The checkpoint's facts and the digest through its bytes, if it stands for the file's first bytes.

    ``f`` is positioned just after the header line and ``digest`` holds the header's
    bytes; on success ``f`` is left after the checkpointed bytes, else where it was.
    """
    try:
        obj = json.loads((cache_dir / CHECKPOINT_NAME).read_bytes())
        facts = _Facts.from_json(obj)
        size, expected = int(obj["bytes"]), str(obj["sha256"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        logger.info("ignoring the manifest checkpoint: %s", exc)
        return None
    if size < header_bytes or (facts.offsets and (facts.offsets[0] != header_bytes or facts.offsets[-1] >= size)):
        return None
    digest = digest.copy()
    left = size - header_bytes
    while left > 0:
        chunk = f.read(min(left, 1 << 24))
        if not chunk:
            break
        digest.update(chunk)
        left -= len(chunk)
    if left or digest.hexdigest() != expected:
        logger.info("the manifest checkpoint does not match the manifest; reading every line")
        f.seek(header_bytes)
        return None
    return facts, digest


def read_manifest(cache_dir: Path) -> ManifestState:
    """Read ``tiles.jsonl`` line by line (never loading any other file of the cache).

    Stops trusting the file at the first line that is torn (no newline), not
    JSON, not an object or out of sequence; those lines and all after them are
    counted in ``dropped_lines``. Raises CacheCorruptError if a trusted line points
    outside the cache folder or the header is of an unknown format. Lines a valid
    checkpoint stands for (see the module docstring) are not parsed now.
    """
    import jsonlines

    cache_dir = Path(cache_dir)
    path = cache_dir / MANIFEST_NAME
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return ManifestState(None, TileRecords(path=path), 0, 0, hashlib.sha256(), _Facts())
    except OSError as exc:
        raise CacheCorruptError(f"The cache manifest {path} cannot be read: {exc.strerror}.", cache_dir) from exc
    header, good, dropped = None, 0, 0
    digest, facts = hashlib.sha256(), _Facts()
    tiles = TileRecords(path=path)
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
                    good += len(lines.last)
                    digest.update(lines.last)
                    trusted = _checkpoint(cache_dir, f, good, digest)
                    if trusted is not None:
                        facts, digest = trusted
                        tiles = TileRecords(path=path, prefix=facts.copy())
                        good = int(f.tell())
                    continue
                record = _parse_tile(obj, len(tiles) + 1)
                if record.features_end != tiles.features_end + record.features:
                    raise ValueError("feature count out of step")
                for rel in record.cache_files.values():
                    safe_relpath(cache_dir, rel)
                tiles.append(record)
                facts.add(record, good)
                good += len(lines.last)
                digest.update(lines.last)
            except (ValueError, KeyError, TypeError):
                dropped = 1 + sum(1 for _ in f)
                break
    return ManifestState(header, tiles, good, dropped, digest, facts)


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
    """Appends commit lines to ``tiles.jsonl``; each append is fsynced before returning.

    Keeps the manifest's digest and facts as lines are appended, and replaces the
    checkpoint every :data:`CHECKPOINT_EVERY` tiles and on :meth:`close`.
    """

    def __init__(self, cache_dir: Path, state: ManifestState, header: dict):
        self.path = Path(cache_dir) / MANIFEST_NAME
        self._checkpoint_path = Path(cache_dir) / CHECKPOINT_NAME
        try:
            if state.header is None:
                data = encode_lines([header])
                write_atomic(self.path, data)
                self._digest, self._facts, self._size = hashlib.sha256(data), _Facts(), len(data)
            else:
                if state.dropped_lines or self.path.stat().st_size != state.good_bytes:
                    with open(self.path, "r+b") as f:
                        f.truncate(state.good_bytes)
                        f.flush()
                        os.fsync(f.fileno())
                self._digest, self._facts = state.digest, state.facts
                if self._digest is None or self._facts is None or self._facts.n != len(state.tiles):
                    self._digest, self._facts = self._rescan(state)
                self._digest = self._digest.copy()
                self._facts = self._facts.copy()
                self._size = state.good_bytes
            self._f = open(self.path, "ab")
        except OSError as exc:
            raise CacheWriteError(f"Cannot write the cache manifest {self.path}: {exc.strerror}.", cache_dir) from exc
        self._checkpointed = self._facts.n

    def _rescan(self, state: ManifestState):
        """Digest and facts of a manifest cut short by the caller (files of committed tiles lost)."""
        digest, facts = hashlib.sha256(), _Facts()
        with open(self.path, "rb") as f:
            data = f.read(state.good_bytes)
        digest.update(data)
        offset = data.index(b"\n") + 1
        for record in state.tiles:
            facts.add(record, offset)
            offset = data.index(b"\n", offset) + 1
        return digest, facts

    def commit(self, records: list[TileRecord]) -> None:
        """Append the lines of ``records`` and fsync once: the records are committed when this returns."""
        lines = [encode_lines([r.to_json()]) for r in records]
        data = b"".join(lines)
        try:
            self._f.write(data)
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as exc:
            raise CacheWriteError(f"Cannot append to the cache manifest: {exc.strerror}.",
                                  self.path.parent) from exc
        self._digest.update(data)
        for record, line in zip(records, lines):
            self._facts.add(record, self._size)
            self._size += len(line)
        if self._facts.n - self._checkpointed >= CHECKPOINT_EVERY:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Replace the checkpoint with one standing for every line committed so far.

        Only a speed-up for the next open: a failure is logged, never raised, and a
        writer whose lines broke the reader's rules (never the engine's) writes none.
        """
        if not self._facts.in_order:
            return
        try:
            data = json.dumps(self._facts.to_json(self._size, self._digest.hexdigest()), separators=(",", ":"))
            write_atomic(self._checkpoint_path, data.encode())
        except OSError as exc:
            logger.warning("could not write the manifest checkpoint: %s", exc)
            return
        self._checkpointed = self._facts.n

    def close(self) -> None:
        try:
            if self._facts.n != self._checkpointed or not self._checkpoint_path.exists():
                self.checkpoint()
        finally:
            self._f.close()
