"""The semantic cache: canopy confidence GeoTIFFs on the source grid, and their mosaic with overviews.

One tiled, compressed uint8 GeoTIFF per tile core under ``semantic/`` (one band
per class, 0–255 for confidence 0–1), written durably before the tile commits.
The mosaic ``confidence.vrt`` is derived from the committed tiles and kept by
:class:`GeotiffSemanticCache` as tiles commit (at most every couple of seconds,
and on close):

* **overviews**: a pyramid of small GeoTIFFs under ``mosaic/L{k}/`` (:mod:`.pyramid`;
  level 1 one per tile, made with the tile, :mod:`.mosaic_pass`), each level a raster
  GDAL and QGIS use as the mosaic's overview;
* **VRT trees**: each level is a tree of small VRTs (:mod:`.vrt`), so opening the
  mosaic reads one small file, and a refresh rewrites the few files the new
  tiles touch (their leaves, their overview tiles and those above them) however
  large the cache.

Overview tiles are never rewritten in place: each update writes a new file named
with the update's generation (``t{ix}_{iy}.g{gen}.tif``) and the leaf VRT that
lists it is replaced atomically, so a reader (QGIS) sees the old picture or the
new one, and on Windows no file another program holds open has to be replaced.
Superseded files are deleted one refresh later (a reader still drawing the old
picture can finish).

``mosaic/state.json`` says which committed tiles the mosaic holds (``through``)
and, while an update is being written, which tiles it may already show
(``upto``, ``writing``). Opening the cache compares it with the manifest and
rebuilds the parts of the mosaic a crash left behind or ahead of the committed
tiles (:meth:`GeotiffSemanticCache.open`): the mosaic is derived data, never part
of a commit, and never blocks one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path

from .durable import disk_error, fsync_dir, write_synced
from .manifest import TileRecord, TileRecords
from .mosaic_pass import MosaicPass, TileOverview, decode_geotiff, tile_overview
from .pyramid import Rect, level_sizes, row_major_span
from .vrt import MOSAIC_DIR, VRT_NAME, LevelTree, MosaicGeometry, leaf0_px_for, vrt_xml

logger = logging.getLogger(__name__)

SEMANTIC_DIR = "semantic"
STATE_PATH = f"{MOSAIC_DIR}/state.json"
TMP_DIR = f"{MOSAIC_DIR}/.tmp"
STATE_FORMAT = "tcd-mosaic"
STATE_VERSION = 2  # 2: level 1 is one file per tile (a mosaic of version 1 is rebuilt)


def mosaic_geometry(core_px: int) -> MosaicGeometry:
    """The geometry of a new mosaic whose first tile core is ``core_px`` pixels wide."""
    return MosaicGeometry(leaf0_px=leaf0_px_for(core_px))


@dataclass
class MosaicState:
    """``mosaic/state.json``: what the mosaic holds (see the module docstring)."""

    geometry: MosaicGeometry
    size: tuple[int, int]
    bands: int
    gen: int = 0
    writing: int | None = None  # the generation being written, if an update was under way
    through: int = 0  # the mosaic holds committed tiles 1..through
    upto: int = 0  # and may show tiles up to this one (> through while writing)
    upto_bbox: Rect | None = None
    garbage: list = field(default_factory=list)  # [path, generation that superseded it]

    def to_json(self) -> dict:
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "geometry": self.geometry.to_json(),
                "size": list(self.size), "bands": self.bands, "gen": self.gen, "writing": self.writing,
                "through": self.through, "upto": self.upto,
                "upto_bbox": None if self.upto_bbox is None else list(self.upto_bbox), "garbage": self.garbage}

    @classmethod
    def from_json(cls, obj: dict) -> MosaicState:
        if obj.get("format") != STATE_FORMAT or obj.get("version") != STATE_VERSION:
            raise ValueError("not a mosaic state")
        bbox = obj.get("upto_bbox")
        return cls(MosaicGeometry(**obj["geometry"]), tuple(obj["size"]), int(obj["bands"]), int(obj["gen"]),
                   obj.get("writing"), int(obj["through"]), int(obj["upto"]),
                   None if bbox is None else tuple(int(v) for v in bbox), [list(g) for g in obj["garbage"]])


class GeotiffSemanticCache:
    """Per-tile confidence GeoTIFFs plus a mosaic with overviews that is valid at every moment."""

    refresh_interval_s = 2.0
    refresh_share = 0.05
    # Tiles wait for the next refresh as their TileOverview (level-1 file, level-2 pixels): past
    # this many bytes of them it comes at once, whatever the time share, so memory stays flat
    # however long refreshes of a big mosaic take (they grow with it, and so did the wait): green
    # model, 4096² -> 16384², peak RSS +53 % with no cap, +8 % with a cap of 8 MB (then of decoded
    # tiles, decoded at once by the refresh).
    pending_bytes_max = 8 * 2**20
    encode_threads = 1  # overview tiles a refresh encodes at once (more on the mosaic's own thread)

    def __init__(self, cache_dir: Path, width: int, height: int, crs_wkt: str, transform, class_names):
        self.cache_dir = Path(cache_dir)
        self.dir = self.cache_dir / SEMANTIC_DIR
        self.width, self.height = width, height
        self.crs_wkt = crs_wkt
        self.transform = transform
        self.class_names = tuple(class_names)
        self.state: MosaicState | None = None
        self._pending: list[tuple[TileRecord, TileOverview | None]] = []
        self._pending_bytes = 0  # bytes of the pending tiles' TileOverviews
        self._done = 0  # committed tiles: 1.._done
        self._last_bbox: Rect | None = None
        self._last_flush = 0.0
        self._flush_s = 0.0  # how long the last refresh took
        self._background = False  # refresh on a thread (start_background)
        self._thread: threading.Thread | None = None  # the last background refresh
        self._failure: BaseException | None = None  # what the last background refresh raised
        # Overview tiles as last written, by path (a path names one content forever): the few a
        # refresh rewrites are mostly those the previous one did.
        self.recent: OrderedDict[str, object] = OrderedDict()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise disk_error(f"the folder {self.dir}", exc) from exc

    # -- tiles -----------------------------------------------------------------------------

    @staticmethod
    def tile_name(tile_id: int) -> str:
        return f"{SEMANTIC_DIR}/tile_{tile_id:06d}.tif"

    def write_tiles(self, tiles: list[tuple[int, bytes]]) -> list[str]:
        """Write tiles' encoded confidence GeoTIFFs durably; returns their paths relative to the cache.

        Each file is written under its final name and fsynced, then the folder once:
        a file of a tile whose manifest line never followed is deleted on the next
        open (:meth:`rollback`), so no temporary name is needed, and a group of
        tiles costs one folder sync.
        """
        rels = []
        for tile_id, encoded in tiles:
            rel = self.tile_name(tile_id)
            try:
                write_synced(self.cache_dir / rel, encoded)
            except OSError as exc:
                raise disk_error(f"the confidence tile {rel}", exc) from exc
            rels.append(rel)
        if rels:
            fsync_dir(self.dir)
        return rels

    def rollback(self, committed: list[TileRecord]) -> int:
        """Delete tile files no committed record names; returns how many were removed."""
        keep = {rel for _, rel in TileRecords.of(committed).semantic_files()}
        removed = 0
        if self.dir.is_dir():
            for p in self.dir.iterdir():
                rel = f"{SEMANTIC_DIR}/{p.name}"
                if rel not in keep:
                    p.unlink(missing_ok=True)
                    removed += 1
        return removed

    # -- the mosaic ---------------------------------------------------------------------------

    @property
    def sizes(self) -> list[tuple[int, int]]:
        return level_sizes(self.width, self.height, self.state.geometry.tile_px)

    def open(self, records: list[TileRecord]) -> None:
        """Bring the mosaic in line with the committed ``records`` (tiles 1..n), after a crash too.

        Reads ``mosaic/state.json``; rebuilds the parts of the mosaic that hold
        tiles committed since its last update or tiles no longer committed, or
        the whole mosaic if the state is missing, unreadable or of another layout.
        """
        n = len(records)
        self._done, self._last_bbox = n, (tuple(records[-1].bbox) if records else None)
        self._pending.clear()
        self._pending_bytes = 0
        try:
            shutil.rmtree(self.cache_dir / TMP_DIR, ignore_errors=True)
            (self.cache_dir / TMP_DIR).mkdir(parents=True, exist_ok=True)
            state = self._read_state()
            if state is None or not (self.cache_dir / VRT_NAME).is_file():
                self._rebuild(records)
                return
            self.state = state
            stale = self._stale_rects(state, records)
            if stale or state.writing is not None:
                try:
                    self._run(MosaicPass.recovery(self, stale, records), through=n, bbox=self._last_bbox,
                              collect_all=True)
                except (SyntaxError, RuntimeError, ValueError, KeyError, AttributeError) as exc:
                    # A file the repair needed is unreadable (a power cut can tear what a kill cannot).
                    logger.warning("rebuilding the confidence mosaic: %s", exc)
                    self._rebuild(records)
                return
            if state.through != n:
                self._save_state(replace(state, through=n, upto=n, upto_bbox=self._last_bbox))
            self._collect(everything=True)
        except OSError as exc:
            raise disk_error(f"the mosaic {VRT_NAME}", exc) from exc

    def committed(self, record: TileRecord, encoded: bytes | None, overview: TileOverview | None = None) -> None:
        """Note a tile just committed (its line is in the manifest); the next refresh adds it to the mosaic.

        ``overview`` is the tile's share of the overviews (:func:`~.mosaic_pass.tile_overview`),
        made with the tile; without it, it is made here from ``encoded``.
        """
        self._done, self._last_bbox = record.tile_id, tuple(record.bbox)
        if encoded is not None and record.cache_files.get("semantic"):
            if overview is None:
                overview = tile_overview(decode_geotiff(encoded), record.bbox)
            self._pending.append((record, overview))
            if overview is not None:
                self._pending_bytes += overview.nbytes

    def refresh(self, *, force: bool = True) -> None:
        """Add the tiles committed since the last refresh to the mosaic.

        Unless ``force``, at most every :attr:`refresh_interval_s`, and never more
        than :attr:`refresh_share` of the time: a refresh writes a few files
        however many tiles it adds, so on a slow disk refreshes come less often.
        After :meth:`start_background`, a refresh that is not forced runs on the
        mosaic's own thread and this call returns at once (it waits only when a
        previous one is still running and twice :attr:`pending_bytes_max` wait);
        a forced one first waits for it. A background refresh's error is raised by
        the next call.
        """
        self._join(block=force)
        now = time.monotonic()
        wait_s = max(self.refresh_interval_s, self._flush_s / self.refresh_share)
        if not force and now - self._last_flush < wait_s and self._pending_bytes < self.pending_bytes_max:
            return
        if self._background and not force:
            if self._thread is not None and self._thread.is_alive():
                if self._pending_bytes < 2 * self.pending_bytes_max:
                    return
                self._join(block=True)
            job = (self._take_pending(), self._done, self._last_bbox)
            self._thread = threading.Thread(target=self._refresh_in_background, args=job,
                                            name="tcd-mosaic", daemon=True)
            self._thread.start()
            return
        self._refresh_now(self._take_pending(), self._done, self._last_bbox)

    def start_background(self) -> None:
        """Refresh on a thread of the mosaic's own from now on (see :meth:`refresh`): for a committing process
        whose commits come faster than one thread can both commit and keep the overviews."""
        self._background = True
        self.encode_threads = max(1, min(4, os.cpu_count() or 1))

    def _take_pending(self) -> list:
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        return pending

    def _refresh_now(self, pending: list, done: int, last_bbox: Rect | None) -> None:
        started = time.monotonic()
        try:
            if pending:
                if self.state is None:
                    self._start(pending[0][0].bbox)
                self._run(MosaicPass.update(self, pending), through=done, bbox=last_bbox)
            elif self.state is not None and self.state.through != done:
                self._save_state(replace(self.state, through=done, upto=done, upto_bbox=last_bbox))
        except OSError as exc:
            raise disk_error(f"the mosaic {VRT_NAME}", exc) from exc
        self._last_flush = time.monotonic()
        self._flush_s = self._last_flush - started

    def _refresh_in_background(self, pending: list, done: int, last_bbox: Rect | None) -> None:
        try:
            self._refresh_now(pending, done, last_bbox)
        except BaseException as exc:  # raised again by the committing thread (_join)
            self._failure = exc

    def _join(self, *, block: bool) -> None:
        """Wait for a background refresh if ``block``; raise the error a finished one left."""
        if self._thread is not None and block:
            self._thread.join()
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def close(self, *, flush: bool = True) -> None:
        """Refresh the mosaic with every committed tile (unless ``flush`` is False) and delete superseded files."""
        if not flush:
            if self._thread is not None:
                self._thread.join()  # a refresh under way finishes its files (or a crash leaves them to repair)
            return
        self.refresh()
        try:
            self._collect(everything=True)
        except OSError as exc:
            raise disk_error(f"the mosaic {VRT_NAME}", exc) from exc

    # -- building blocks ---------------------------------------------------------------------

    def tree(self, level: int) -> LevelTree:
        w, h = self.sizes[level]
        g = self.state.geometry
        return LevelTree(level, w, h, g.leaf_px(level), g.fanout)

    def write_vrt_file(self, level: int, node: tuple[int, int, int], sources, *, sync_dir: bool = True) -> Path:
        """Replace one VRT of the mosaic (read-only: see :func:`write_file`); returns its path."""
        tree = self.tree(level)
        path = tree.path(node)
        extra = {}
        if level == 0 and node == tree.root:
            extra = self._top_extras()
        xml = vrt_xml(path, tree.rect(node), len(self.class_names), sources, **extra)
        write_file(self.cache_dir / path, xml.encode(), self.cache_dir / TMP_DIR, read_only=True, sync_dir=sync_dir)
        return self.cache_dir / path

    def _top_extras(self) -> dict:
        a, b, c, d, e, f = self.transform
        overviews = [self.tree(k).path(self.tree(k).root) for k in range(1, len(self.sizes))] if self.state else []
        return dict(srs=self.crs_wkt, geotransform=(c, a, b, f, d, e), descriptions=self.class_names,
                    overviews=overviews)

    def _write_empty_top(self) -> None:
        """A mosaic with no tile yet (no overviews either)."""
        a, b, c, d, e, f = self.transform
        xml = vrt_xml(VRT_NAME, (0, 0, self.width, self.height), len(self.class_names), [], srs=self.crs_wkt,
                      geotransform=(c, a, b, f, d, e), descriptions=self.class_names)
        write_file(self.cache_dir / VRT_NAME, xml.encode(), self.cache_dir / TMP_DIR, read_only=True)

    def _start(self, first_bbox: Rect, through: int = 0) -> None:
        """Create the pyramid's empty level roots and a top VRT naming them, then the state."""
        x0, y0, x1, y1 = first_bbox
        # Generations count on from the clock, so a rebuilt mosaic never reuses the name of an
        # overview tile an earlier one left behind (Windows cannot delete a file QGIS holds open).
        self.state = MosaicState(mosaic_geometry(max(x1 - x0, y1 - y0)), (self.width, self.height),
                                 len(self.class_names), gen=int(time.time()))
        for level in range(len(self.sizes)):
            (self.cache_dir / MOSAIC_DIR / f"L{level}").mkdir(parents=True, exist_ok=True)
        for level in range(len(self.sizes) - 1, -1, -1):
            self.write_vrt_file(level, self.tree(level).root, [])
        fsync_dir(self.cache_dir / MOSAIC_DIR)
        self._save_state(self.state)

    def _rebuild(self, records: list[TileRecord]) -> None:
        """Make the whole mosaic afresh from the committed tiles."""
        self.state = None
        shutil.rmtree(self.cache_dir / MOSAIC_DIR, ignore_errors=True)
        (self.cache_dir / TMP_DIR).mkdir(parents=True)
        first = next((r for r in records if r.cache_files.get("semantic")), None)
        if first is None:
            self._write_empty_top()
            return
        logger.info("building the confidence mosaic's overviews from %d committed tiles", len(records))
        self._start(first.bbox)
        whole = [(0, 0, self.width, self.height)]
        self._run(MosaicPass.recovery(self, whole, records), through=len(records), bbox=self._last_bbox,
                  collect_all=True)

    def _stale_rects(self, state: MosaicState, records: list[TileRecord]) -> list[Rect]:
        """Source pixels whose mosaic may disagree with the committed tiles."""
        n = len(records)
        rects = [tuple(r.bbox) for r in records[min(state.through, n):] if r.cache_files.get("semantic")]
        if state.upto > n and state.upto_bbox is not None:
            after = tuple(records[-1].bbox) if records else None
            rects += row_major_span(after, state.upto_bbox, self.width)
        return rects

    def _run(self, mosaic_pass: MosaicPass, *, through: int, bbox: Rect | None, collect_all: bool = False) -> None:
        """Write one pass in a crash-safe order: intent, new files, VRTs bottom-up, state, then collect garbage."""
        state = self.state
        gen = state.gen + (1 if state.writing is None else state.writing - state.gen + 1)
        superseded = [[p, gen] for p in mosaic_pass.superseded(state.writing)]
        if state.upto >= through:
            upto, upto_bbox = state.upto, state.upto_bbox
        else:
            upto, upto_bbox = through, bbox
        self._save_state(replace(state, writing=gen, through=min(state.through, through), upto=upto,
                                 upto_bbox=upto_bbox, garbage=state.garbage + superseded))
        mosaic_pass.write(gen)  # every file it writes is fsynced before this returns
        self._save_state(replace(self.state, gen=gen, writing=None, through=through, upto=through, upto_bbox=bbox),
                         durable=False)
        self._collect(everything=collect_all)

    def _collect(self, *, everything: bool = False) -> None:
        """Delete superseded files (those of an earlier refresh, or all); keep what cannot be deleted yet."""
        if self.state is None or not self.state.garbage:
            return
        keep = []
        for path, gen in self.state.garbage:
            if everything or gen < self.state.gen:
                try:
                    (self.cache_dir / path).unlink(missing_ok=True)
                    continue
                except PermissionError:  # Windows: another program (QGIS) still has it open
                    pass
            keep.append([path, gen])
        if len(keep) != len(self.state.garbage):
            self._save_state(replace(self.state, garbage=keep), durable=False)

    def _read_state(self) -> MosaicState | None:
        try:
            state = MosaicState.from_json(json.loads((self.cache_dir / STATE_PATH).read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if state.size != (self.width, self.height) or state.bands != len(self.class_names):
            return None
        return state

    def _save_state(self, state: MosaicState, *, durable: bool = True) -> None:
        """Replace the state; ``durable`` False for one that a power cut may lose (it then reads as the
        intent before it, and the refresh is redone)."""
        write_file(self.cache_dir / STATE_PATH, json.dumps(state.to_json()).encode(), self.cache_dir / TMP_DIR,
                   durable=durable)
        self.state = state


def write_file(path: Path, data: bytes, tmp_dir: Path, *, read_only: bool = False, sync_dir: bool = True,
               durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically (temp file in ``tmp_dir``, fsync, rename, fsync the folder).

    ``read_only`` leaves the file without write permission (POSIX), so GDAL, which
    writes statistics back into a VRT it opened, cannot overwrite it. Windows
    refuses to replace a read-only file, so its mode is reset first there.
    ``sync_dir`` False leaves the folder's fsync to the caller (one for many files);
    ``durable`` False skips both fsyncs (the file may be lost to a power cut, not torn
    by a crash of this process).
    """
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f"{path.name}.{os.getpid()}.tmp"
    try:
        write_synced(tmp, data, durable=durable)
        if read_only:
            os.chmod(tmp, 0o444)
        if os.name == "nt" and path.exists():
            os.chmod(path, 0o666)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir and durable:
        fsync_dir(path.parent)
