"""A cache folder opened for writing: lock, compatibility, rollback, ordered commits, close.

:meth:`Cache.open` takes the folder's lock, reads the manifest, refuses a cache
made from another image, model or settings (:class:`CacheMismatchError`), and
rolls back whatever a crash left after the last committed tile.
:meth:`Cache.commit` then takes each tile's :class:`TileOutputs`, in plan order,
and commits them in groups: the group's confidence GeoTIFFs are written and
fsynced, their crowns appended and synced, and only then their manifest lines
are appended and fsynced. Those lines are the commit: a crash at any moment
leaves a cache that opens to exactly the tiles committed before it. A group
closes after :attr:`Cache.group_s` seconds or :attr:`Cache.group_tiles` tiles,
so fast models pay a few fsyncs for many tiles and slow ones commit each tile
at once.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CacheWriteError
from ..postprocess.vectorise import Crown
from ..settings import Output, VectorFormat
from ..tiling.grid import RasterInfo
from .header import check_compatible
from .lock import CacheLock
from .manifest import (
    CHECKPOINT_NAME,
    MANIFEST_NAME,
    ManifestState,
    ManifestWriter,
    TileRecord,
    TileRecords,
    read_manifest,
)
from .mosaic_pass import TileOverview
from .semantic import MOSAIC_DIR, SEMANTIC_DIR, VRT_NAME, GeotiffSemanticCache
from .summary import SUMMARY_NAME, SummaryKeeper
from .vectors import MEASUREMENT_FIELDS, CrownField, VectorInstanceCache, instance_cache_class

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TileOutputs:
    """What one tile adds to the cache, ready to commit: bytes and records, no open handles (picklable).

    ``confidence_tiff`` is the encoded GeoTIFF of the tile core's confidence
    (None when the run writes no semantic output or the tile was skipped);
    ``crowns`` the crowns the tile owns (None when the run writes no instances).
    ``area_m2`` is the core's area of valid pixels and ``canopy_m2`` the part of it
    where the canopy confidence is at least 0.5 (both 0 for a skipped tile).
    ``overview`` is the tile's share of the mosaic's overviews
    (:func:`~engine.cache.mosaic_pass.tile_overview`: its level-1 file, its level-2
    pixels), made where the tile was made, so that the committing process neither
    decodes its GeoTIFF again nor compresses at that level; None to have the mosaic
    make it from ``confidence_tiff``.
    """

    tile_id: int
    bbox_px: tuple[int, int, int, int]
    skipped: bool
    confidence_tiff: bytes | None = None
    crowns: tuple[Crown, ...] | None = None
    area_m2: float = 0.0
    canopy_m2: float = 0.0
    # Derived from confidence_tiff (which equality compares); arrays have no plain ==.
    overview: TileOverview | None = field(default=None, compare=False, repr=False)


def clear_cache(cache_dir: Path) -> None:
    """Delete what a run of this tool wrote in ``cache_dir`` (and nothing else)."""
    for name in (MANIFEST_NAME, CHECKPOINT_NAME, VRT_NAME, SUMMARY_NAME):
        (cache_dir / name).unlink(missing_ok=True)
    for fmt in VectorFormat:
        for name in (fmt.filename, *fmt.sidecars):
            (cache_dir / name).unlink(missing_ok=True)
    shutil.rmtree(cache_dir / SEMANTIC_DIR, ignore_errors=True)
    shutil.rmtree(cache_dir / MOSAIC_DIR, ignore_errors=True)


def _prefix_bytes(cache_dir: Path, n_tiles: int) -> int:
    """Byte length of the header plus the first ``n_tiles`` lines of the manifest."""
    size = 0
    with open(cache_dir / MANIFEST_NAME, "rb") as f:
        for i, line in enumerate(f):
            if i > n_tiles:
                break
            size += len(line)
    return size


def _first_lost_file(cache_dir: Path, tiles) -> int | None:
    """Index of the first committed tile whose confidence file is gone (None: none is).

    One listing of the confidence folder instead of a stat per tile: a cache of a
    million tiles is checked in about a second.
    """
    try:
        with os.scandir(cache_dir / SEMANTIC_DIR) as entries:
            present = {entry.name for entry in entries if entry.is_file()}
    except OSError:
        present = set()
    folder = SEMANTIC_DIR + "/"
    for tile_id, rel in TileRecords.of(tiles).semantic_files():
        name = rel[len(folder):]
        if rel.startswith(folder) and "/" not in name:
            if name not in present:
                return tile_id - 1
        elif not (cache_dir / rel).is_file():
            return tile_id - 1
    return None


class Cache:
    """A cache folder held for writing. Use :meth:`open`, then :meth:`commit` tiles in plan order, then close."""

    group_tiles = 32  # most tiles committed under one manifest fsync
    # A group waiting this long since the last commit is committed with the next tile; 0 commits
    # every tile at once (TCD_COMMIT_GROUP_S sets it, e.g. for tests that act after each tile).
    group_s = float(os.environ.get("TCD_COMMIT_GROUP_S", "0.5"))

    def __init__(self, cache_dir: Path, header: dict, lock: CacheLock, state: ManifestState,
                 semantic: GeotiffSemanticCache | None, vectors: VectorInstanceCache | None,
                 summary: SummaryKeeper):
        self.cache_dir = cache_dir
        self.header = header
        self._lock = lock
        self.records: TileRecords = TileRecords.of(state.tiles)  # tiles a checkpoint stands for stay on disk
        self.features_end = state.features_end
        self.skipped = self.records.skipped
        self._semantic = semantic
        self._vectors = vectors
        self.summary = summary
        self._manifest = ManifestWriter(cache_dir, state, header)
        self._pending: list[TileOutputs] = []
        self._failed = False
        self._last_commit = time.monotonic()
        if semantic is not None:
            semantic.open(self.records)

    @classmethod
    def open(cls, cache_dir: Path, header: dict, info: RasterInfo, *, overwrite: bool = False,
             crown_fields: tuple[CrownField, ...] = MEASUREMENT_FIELDS, mosaic_thread: bool = False) -> Cache:
        """Hold ``cache_dir`` for a run whose new-cache header is ``header``.

        An existing cache is continued with its own header once it is found
        compatible; ``overwrite`` discards it first. Raises CacheLockedError while
        another process writes the folder. ``mosaic_thread`` keeps the mosaic's
        overviews on a thread of their own (see :meth:`GeotiffSemanticCache.refresh`),
        for a process that only commits (a cluster's tiles).
        """
        cache_dir = Path(cache_dir)
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheWriteError(f"Cannot create the output folder {cache_dir}: {exc.strerror}.", cache_dir) from exc
        if not os.access(cache_dir, os.W_OK):
            raise CacheWriteError(f"The output folder {cache_dir} is not writable.", cache_dir)
        lock = CacheLock(cache_dir).__enter__()
        try:
            if overwrite:
                clear_cache(cache_dir)
            state = read_manifest(cache_dir)
            if state.header is None:
                if any((cache_dir / name).exists() for name in cls._written_names()):
                    logger.info("clearing the files of a run that stopped before its first commit")
                    clear_cache(cache_dir)
            else:
                check_compatible(cache_dir, state.header, header)
                header = state.header
            outputs = header.get("outputs", ())
            semantic = (GeotiffSemanticCache(cache_dir, info.width, info.height, info.crs_wkt, info.transform,
                                             header["classes"]) if Output.SEMANTIC.value in outputs else None)
            vector_cls = (instance_cache_class(Path(header["vector_file"]).suffix[1:])
                          if Output.INSTANCES.value in outputs else None)
            state = cls._rollback(cache_dir, state, semantic, vector_cls)
            summary = SummaryKeeper(cache_dir, header, state.tiles)  # before the crowns file is held open
            vectors = vector_cls(cache_dir, info.crs_wkt, crown_fields) if vector_cls is not None else None
            cache = cls(cache_dir, header, lock, state, semantic, vectors, summary)
            if semantic is not None and mosaic_thread:
                semantic.start_background()
            return cache
        except BaseException:
            lock.__exit__(None, None, None)
            raise

    @staticmethod
    def _written_names() -> tuple[str, ...]:
        return (VRT_NAME, SEMANTIC_DIR, MOSAIC_DIR) + tuple(fmt.filename for fmt in VectorFormat)

    @staticmethod
    def _rollback(cache_dir: Path, state: ManifestState, semantic, vector_cls) -> ManifestState:
        """Undo what was written after the last committed tile; also drop committed tiles whose files vanished."""
        tiles = state.tiles
        lost = _first_lost_file(cache_dir, tiles)
        if lost is not None:
            logger.warning("tile %d lost its confidence file; it and the tiles after it are redone", lost + 1)
            tiles = TileRecords(tiles[:lost])
            state = ManifestState(state.header, tiles, _prefix_bytes(cache_dir, len(tiles)), 1)
        if semantic is not None:
            semantic.rollback(tiles)
        if vector_cls is not None:
            vector_cls.truncate(cache_dir / vector_cls.format.filename, state.features_end)
        return state

    @property
    def done(self) -> int:
        """Committed tiles (tiles 1..done of the plan)."""
        return len(self.records)

    def committed_crowns(self, first_index: int) -> list[tuple[tuple[int, int, int, int], list[bytes]]]:
        """Core ``bbox_px`` and crowns (WKB, in id order) of committed tiles ``first_index`` onwards, in plan order."""
        records = self.records[first_index:]
        if not records or self._vectors is None:
            return [(tuple(r.bbox), []) for r in records]
        first_id = records[0].features_end - records[0].features + 1
        by_tile: dict[int, list[bytes]] = {}
        for tile_id, wkb in self._vectors.read(first_id, self.features_end):
            by_tile.setdefault(tile_id, []).append(wkb)
        return [(tuple(r.bbox), by_tile.get(r.tile_id, [])) for r in records]

    def commit(self, outputs: TileOutputs) -> list[TileRecord]:
        """Take the next tile's outputs; returns the records committed by this call (often none yet).

        The tile waits in the open group until the group is due; :meth:`flush`
        (and a clean :meth:`close`) commits it at once.
        """
        self._pending.append(outputs)
        due = len(self._pending) >= self.group_tiles or time.monotonic() - self._last_commit >= self.group_s
        return self.flush() if due else []

    def flush(self) -> list[TileRecord]:
        """Commit every waiting tile: files durable first, then one manifest fsync. Returns their records."""
        group, self._pending = self._pending, []
        if not group:
            return []
        if self._failed:
            raise CacheWriteError("An earlier write to this cache failed; resume the run to continue.", self.cache_dir)
        self._failed = True  # until the group is committed: its files may be half written
        rels = iter(self._semantic.write_tiles([(o.tile_id, o.confidence_tiff) for o in group
                                                if o.confidence_tiff is not None]) if self._semantic else ())
        records, appended, features_end = [], [], self.features_end
        for outputs in group:
            files: dict[str, str] = {}
            if outputs.confidence_tiff is not None:
                files["semantic"] = next(rels)
            crowns = outputs.crowns
            if crowns is not None and self._vectors is not None:
                appended.append((outputs.tile_id, features_end + 1, crowns))
                files["instances"] = self._vectors.rel
            n_new = len(crowns) if crowns else 0
            features_end += n_new
            records.append(TileRecord(outputs.tile_id, tuple(outputs.bbox_px),
                                      "skipped" if outputs.skipped else "done", files, n_new, features_end,
                                      outputs.area_m2, outputs.canopy_m2))
        if appended:
            self._vectors.append(appended)
        self._manifest.commit(records)
        self._failed = False
        self._last_commit = time.monotonic()
        self.summary.add([(record, outputs.crowns) for record, outputs in zip(records, group)])
        for record, outputs in zip(records, group):
            self.records.append(record)
            if outputs.skipped:
                self.skipped += 1
            if self._semantic is not None:
                self._semantic.committed(record, outputs.confidence_tiff, outputs.overview)
        self.features_end = features_end
        if self._semantic is not None:
            self._semantic.refresh(force=False)
        return records

    def close(self, *, complete_mosaic: bool = True) -> None:
        """Release the cache; ``complete_mosaic`` commits the waiting tiles and brings the mosaic and its
        overviews up to every committed tile (after an error, waiting tiles are dropped: they are redone)."""
        try:
            if complete_mosaic:
                self.flush()
            if self._vectors is not None:
                # Windows cannot delete a file another program holds open, and GDAL deletes the
                # index on the next append: with QGIS showing a partial cache's crowns, resuming
                # would fail. So there, only a complete cache (never appended again) gets one.
                complete = self.done >= int(self.header.get("tiles_total", 0))
                self._vectors.close(index=complete_mosaic and (complete or os.name != "nt"))
            if self._semantic is not None:
                self._semantic.close(flush=complete_mosaic)
        finally:
            try:
                self._manifest.close()
            finally:
                self._lock.__exit__(None, None, None)

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(complete_mosaic=exc_type is None)
