"""One update of the confidence mosaic: new overview files, then the VRTs that list them, bottom-up.

Level 1 of the pyramid is one small GeoTIFF per tile (``mosaic/L1/tile_{id}.g{gen}.tif``),
listed by the level-1 VRT tree as level 0 lists the tiles' own GeoTIFFs; its bytes,
and the tile's level-2 pixels, are made where the tile is made (:func:`tile_overview`),
so committing a tile costs the mosaic no decoding and no compressing at that level.
Levels 2 and up are overview tiles of ``tile_px`` squares (``t{ix}_{iy}.g{gen}.tif``).

A :class:`MosaicPass` is either an **update** (tiles just committed, with their
:class:`TileOverview`: their level-1 files are written, their level-2 pixels are
pasted into the overview tiles they meet, and each level above is recomputed where
the level below changed) or a **recovery** (a list of source rectangles whose mosaic
may be wrong: the level-1 files of the tiles committed since the mosaic's last
update are made again from the tiles' files, every overview tile meeting the
rectangles is recomputed from scratch, level 2 from the committed tiles' files, each
level above from the four tiles below it). Both give the same bytes (see :mod:`.pyramid`).

The pass first works out which files it will replace (so the caller can record
them before anything is written), then :meth:`MosaicPass.write` writes the new
files (fsynced, under new names), the leaves that list them, and the inner nodes
that gain a child.
"""

from __future__ import annotations

import itertools
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from osgeo import gdal

from .durable import fsync_dir, write_synced
from .manifest import TileRecord
from .pyramid import Rect, grid_cells, halve_into, intersect, owned_pixels, paste, shrink, union
from .vrt import MOSAIC_DIR, Source, parse_sources

TILE_BLOCK_PX = 256  # block size of the tiles' GeoTIFFs (engine.postprocess.confidence) and overview tiles
_TILE_ID = re.compile(r"tile_(\d+)(?:\.g\d+)?\.tif$")  # a tile's GeoTIFF (level 0) or level-1 file
_OV_CELL = re.compile(r"t(\d+)_(\d+)\.g\d+\.tif$")
TILES_DECODED = 64  # committed tiles kept decoded during a recovery
RECENT_ARRAYS = 32  # and between passes (see GeotiffSemanticCache.recent)
_names = itertools.count()

gdal.UseExceptions()


def tile_source(record: TileRecord) -> Source:
    """A committed tile's GeoTIFF as a level-0 VRT source."""
    x0, y0, x1, y1 = record.bbox
    w, h = x1 - x0, y1 - y0
    return Source(record.cache_files["semantic"], (x0, y0, x1, y1), (w, h),
                  (min(w, TILE_BLOCK_PX), min(h, TILE_BLOCK_PX)))


def read_raster(path: Path) -> np.ndarray:
    """All bands of a GeoTIFF, (bands, rows, cols) (GDAL directly: opening is 20 times cheaper than rasterio's)."""
    ds = gdal.Open(str(path))
    data = ds.ReadAsArray()
    ds = None
    return data if data.ndim == 3 else data[None]


def decode_geotiff(data: bytes) -> np.ndarray:
    name = f"/vsimem/tcd_mosaic_{os.getpid()}_{next(_names)}.tif"
    gdal.FileFromMemBuffer(name, data)
    try:
        return read_raster(name)
    finally:
        gdal.Unlink(name)


def encode_overview(array: np.ndarray, block_px: int) -> bytes:
    """An overview tile as the bytes of a small tiled, compressed GeoTIFF (no georeferencing: the VRT places it).

    Encoded in memory, so that it is written with Python's file IO, which, unlike
    GDAL's, never loses a failed write (a full disk) without raising.
    """
    bands, h, w = array.shape
    mem = gdal.GetDriverByName("MEM").Create("", w, h, bands, gdal.GDT_Byte)
    for i in range(bands):
        mem.GetRasterBand(i + 1).WriteArray(array[i])
    name = f"/vsimem/tcd_mosaic_{os.getpid()}_{next(_names)}.tif"
    options = ["COMPRESS=DEFLATE", "ZLEVEL=1", "PREDICTOR=2", "TILED=YES", f"BLOCKXSIZE={block_px}",
               f"BLOCKYSIZE={block_px}"]
    try:
        gdal.GetDriverByName("GTiff").CreateCopy(name, mem, options=options)
        f = gdal.VSIFOpenL(name, "rb")
        try:
            return gdal.VSIFReadL(1, gdal.VSIStatL(name).size, f)
        finally:
            gdal.VSIFCloseL(f)
    finally:
        gdal.Unlink(name)


def write_geotiff(path: Path, array: np.ndarray, block_px: int) -> None:
    """An overview tile's GeoTIFF (:func:`encode_overview`) written to ``path`` and fsynced."""
    write_synced(path, encode_overview(array, block_px))


def level1_block_px(rect: Rect) -> int:
    """Block size of a tile's level-1 file: one block for a small one, as GeoTIFF blocks are multiples of 16."""
    return min(TILE_BLOCK_PX, 16 * -(-max(rect[2] - rect[0], rect[3] - rect[1]) // 16))


@dataclass(frozen=True)
class TileOverview:
    """A tile's share of the pyramid's per-tile levels (:mod:`.pyramid`), made where the tile is made.

    ``level1_rect``: the level-1 pixels the tile owns; ``level1_tiff``: them as the
    bytes of the tile's level-1 file; ``level2``: its level-2 pixels ``(rect, values)``,
    pasted into the level-2 overview tiles (None: it owns none).
    """

    level1_rect: Rect
    level1_tiff: bytes
    level2: tuple[Rect, np.ndarray] | None

    @property
    def nbytes(self) -> int:
        return len(self.level1_tiff) + (0 if self.level2 is None else self.level2[1].nbytes)


def tile_overview(core: np.ndarray, bbox: Rect) -> TileOverview | None:
    """A tile's :class:`TileOverview` from its core's confidence (bands, rows, cols) at ``bbox`` (source pixels);
    None if it owns no level-1 pixel."""
    level1, level2 = owned_pixels(core, bbox)  # levels 1 and 2: OWNED_LEVELS
    if level1 is None:
        return None
    return TileOverview(level1[0], encode_overview(level1[1], level1_block_px(level1[0])), level2)


def level1_path(tile_id: int, gen: int) -> str:
    return f"{MOSAIC_DIR}/L1/tile_{tile_id:06d}.g{gen}.tif"


def level1_source(path: str, rect: Rect) -> Source:
    block = level1_block_px(rect)
    return Source(path, rect, (rect[2] - rect[0], rect[3] - rect[1]), (block, block))


class MosaicPass:
    """What one refresh or recovery changes; see the module docstring."""

    def __init__(self, cache, cells: dict[int, set], leaves: set, n_committed: int):
        self.cache = cache
        self.geometry = cache.state.geometry
        self.sizes = cache.sizes
        self.cells = cells  # level >= 2 -> {(ix, iy)} to recompute
        self.n_committed = n_committed
        self.items: dict[tuple, dict] = {}  # (level, leaf node) -> {key: Source}
        self.dirty: set[tuple] = set()  # (level, leaf node)
        self.new: dict[tuple, Source | None] = {}  # (level, ix, iy) -> new overview tile, None: no longer exists
        self.memo: dict[tuple, np.ndarray] = {}
        self.pending: list[tuple[TileRecord, TileOverview | None]] = []  # (tile, its overview)
        self.level1_tiles: list[TileRecord] = []  # tiles whose level-1 file a recovery makes again
        self.dropped: list[str] = []  # level-1 files of tiles no longer committed (recovery)
        self.recovering = False
        self._tiles: dict[str, np.ndarray] = {}  # decoded tile GeoTIFFs (recovery)
        for level, node in leaves:  # leaves of levels 0 and 1
            self._leaf(level, node)
            self.dirty.add((level, node))

    @property
    def has_level1(self) -> bool:
        return len(self.sizes) > 1

    @classmethod
    def update(cls, cache, pending: list[tuple[TileRecord, TileOverview | None]]) -> MosaicPass:
        """Tiles just committed, each with its :class:`TileOverview` (None if it owns no level-1 pixel)."""
        tree0 = cache.tree(0)
        tree1 = cache.tree(1) if len(cache.sizes) > 1 else None
        cells: dict[int, set] = {k: set() for k in range(2, len(cache.sizes))}
        leaves = set()
        for record, overview in pending:
            leaves.update((0, node) for node in tree0.leaves(record.bbox))
            if overview is not None and tree1 is not None:
                leaves.update((1, node) for node in tree1.leaves(overview.level1_rect))
                if overview.level2 is not None and cells:
                    cells[2].update(grid_cells(overview.level2[0], cache.state.geometry.tile_px))
        for k in range(3, len(cache.sizes)):  # exactly the tiles above those that change
            cells[k] = {(cx // 2, cy // 2) for cx, cy in cells[k - 1]}
        p = cls(cache, cells, leaves, pending[-1][0].tile_id)
        p.pending = pending
        for record, _ in pending:
            for node in tree0.leaves(record.bbox):
                p.items[(0, node)][record.tile_id] = tile_source(record)
        return p

    @classmethod
    def recovery(cls, cache, stale: list[Rect], records: list[TileRecord]) -> MosaicPass:
        tree0 = cache.tree(0)
        tree1 = cache.tree(1) if len(cache.sizes) > 1 else None
        s = cache.state.geometry.tile_px
        cells: dict[int, set] = {k: set() for k in range(2, len(cache.sizes))}
        leaves = set()
        for rect in stale:
            leaves.update((0, node) for node in tree0.leaves(rect))
            if tree1 is not None:
                leaves.update((1, node) for node in tree1.leaves(shrink(rect, 1)))
            for k in cells:
                cells[k].update(grid_cells(shrink(rect, k), s))
        for k in cells:
            w, h = cache.sizes[k]
            cells[k] = {c for c in cells[k] if c[0] * s < w and c[1] * s < h}
        p = cls(cache, cells, leaves, len(records))
        p.recovering = True
        tail = records[min(cache.state.through, len(records)):]
        for level, node in leaves:  # committed tiles only
            items = p.items[(level, node)]
            for key in [key for key in items if key > p.n_committed]:
                src = items.pop(key)
                if level == 1:  # (a tile's own file at level 0 is the cache's rollback's to delete)
                    p.dropped.append(src.path)
        for record in tail:
            if record.cache_files.get("semantic"):
                for node in tree0.leaves(record.bbox):
                    if (0, node) in p.items:
                        p.items[(0, node)][record.tile_id] = tile_source(record)
                p.level1_tiles.append(record)
        return p

    # -- what is there now -------------------------------------------------------------------

    def _leaf(self, level: int, node: tuple) -> dict:
        key = (level, node)
        if key not in self.items:
            tree = self.cache.tree(level)
            path = tree.path(node)
            items = {}
            file = self.cache.cache_dir / path
            if file.is_file():
                for src in parse_sources(path, tree.rect(node), file.read_text()):
                    m = (_TILE_ID if level <= 1 else _OV_CELL).search(src.path)
                    if m:
                        items[int(m.group(1)) if level <= 1 else (int(m.group(1)), int(m.group(2)))] = src
            self.items[key] = items
        return self.items[key]

    def _cell_rect(self, level: int, cell: tuple[int, int]) -> Rect:
        s = self.geometry.tile_px
        w, h = self.sizes[level]
        return cell[0] * s, cell[1] * s, min((cell[0] + 1) * s, w), min((cell[1] + 1) * s, h)

    def _cell_leaf(self, cell: tuple[int, int]) -> tuple:
        b = self.geometry.leaf_tiles
        return 0, cell[0] // b, cell[1] // b

    def current(self, level: int, cell: tuple[int, int]) -> Source | None:
        key = (level, *cell)
        if key in self.new:
            return self.new[key]
        return self._leaf(level, self._cell_leaf(cell)).get(cell)

    def array(self, level: int, cell: tuple[int, int]) -> np.ndarray | None:
        """An overview tile's pixels as this pass leaves them (None: it does not exist)."""
        key = (level, *cell)
        if key in self.memo:
            return self.memo[key]
        src = self.current(level, cell)
        if src is None:
            return None
        recent = self.cache.recent
        if src.path in recent:
            recent.move_to_end(src.path)
            return recent[src.path].copy()  # the pass pastes into what it gets
        return read_raster(self.cache.cache_dir / src.path)

    def superseded(self, writing: int | None) -> list[str]:
        """Files this pass replaces: the level-1 files and overview tiles it makes again (and a crashed pass's
        new ones)."""
        paths = list(self.dropped)
        orphans = []
        for record in self.level1_tiles:
            paths += [items[record.tile_id].path for items in self._level1_items() if record.tile_id in items]
            if writing is not None:
                orphans.append(level1_path(record.tile_id, writing))
        for k, cells in self.cells.items():
            for cell in cells:
                src = self.current(k, cell)
                if src is not None:
                    paths.append(src.path)
                if self.recovering and writing is not None:
                    orphans.append(f"{MOSAIC_DIR}/L{k}/t{cell[0]}_{cell[1]}.g{writing}.tif")
        paths += [orphan for orphan in orphans if (self.cache.cache_dir / orphan).exists()]
        return list(dict.fromkeys(paths))

    def _level1_items(self) -> list[dict]:
        """The level-1 leaves this pass has read, as {tile id: Source}."""
        return [items for (level, _), items in self.items.items() if level == 1]

    # -- writing ----------------------------------------------------------------------------

    def write(self, gen: int) -> None:
        if self.has_level1:
            self._write_level1(gen)
        changed: dict[tuple, Rect] = {}
        for level in range(2, len(self.sizes)):
            computed = self._level2(changed) if level == 2 else self._level_up(level, changed)
            self.memo = {}
            stored = [(self._store(level, cell, array, gen), array) for cell, array in sorted(computed.items())]
            self._in_parallel(lambda f: write_geotiff(*f),
                              [(self.cache.cache_dir / src.path, array, src.block[0]) for src, array in stored if src])
            fsync_dir(self.cache.cache_dir / MOSAIC_DIR / f"L{level}")
            changed = {cell: rect for cell, rect in changed.items() if cell[0] == level}
        self._write_vrts()

    def _in_parallel(self, fn, items: list) -> None:
        threads = min(self.cache.encode_threads, len(items))
        if threads > 1:  # GDAL lets go of the GIL while it compresses
            with ThreadPoolExecutor(threads, thread_name_prefix="tcd-overviews") as pool:
                for _ in pool.map(fn, items):
                    pass
        else:
            for item in items:
                fn(item)

    def _write_level1(self, gen: int) -> None:
        """The tiles' level-1 files: an update's as they came, a recovery's made again from the tiles' files."""
        tree1 = self.cache.tree(1)
        if self.recovering:
            def made(record):
                return record, tile_overview(self._tile_data(tile_source(record)), record.bbox)
            overviews = []
            self._in_parallel(lambda r: overviews.append(made(r)), self.level1_tiles)
            overviews.sort(key=lambda item: item[0].tile_id)
        else:
            overviews = self.pending
        files = []
        for record, overview in overviews:
            for items in self._level1_items():
                items.pop(record.tile_id, None)
            if overview is None:
                continue
            path = level1_path(record.tile_id, gen)
            files.append((self.cache.cache_dir / path, overview.level1_tiff))
            for node in tree1.leaves(overview.level1_rect):
                self._leaf(1, node)[record.tile_id] = level1_source(path, overview.level1_rect)
                self.dirty.add((1, node))
        self._in_parallel(lambda f: write_synced(*f), files)
        if files:
            fsync_dir(self.cache.cache_dir / MOSAIC_DIR / "L1")

    def _store(self, level: int, cell: tuple[int, int], array: np.ndarray | None, gen: int) -> Source | None:
        """List an overview tile's new version (None: the tile no longer exists); returns it, to be written."""
        key = (level, *cell)
        leaf = self._leaf(level, self._cell_leaf(cell))
        self.dirty.add((level, self._cell_leaf(cell)))
        if array is None:
            self.new[key] = None
            leaf.pop(cell, None)
            return None
        path = f"{MOSAIC_DIR}/L{level}/t{cell[0]}_{cell[1]}.g{gen}.tif"
        block = min(TILE_BLOCK_PX, self.geometry.tile_px)
        rect = self._cell_rect(level, cell)
        src = Source(path, rect, (rect[2] - rect[0], rect[3] - rect[1]), (block, block))
        self.new[key] = leaf[cell] = src
        self.memo[key] = array  # the level above reads it (the pass holds the whole level anyway)
        recent = self.cache.recent
        recent[path] = array
        while len(recent) > RECENT_ARRAYS:
            recent.popitem(last=False)
        return src

    def _zeros(self, level: int, cell: tuple[int, int]) -> np.ndarray:
        x0, y0, x1, y1 = self._cell_rect(level, cell)
        return np.zeros((len(self.cache.class_names), y1 - y0, x1 - x0), np.uint8)

    def _level2(self, changed: dict) -> dict:
        out = {}
        if self.recovering:
            for cell in sorted(self.cells.get(2, ())):
                out[cell] = self._recompute_level2(cell)
            for cell, array in out.items():
                if array is not None:
                    changed[(2, *cell)] = self._cell_rect(2, cell)
            return out
        for _, overview in self.pending:
            if overview is None or overview.level2 is None:
                continue
            rect2, values = overview.level2
            for cell in grid_cells(rect2, self.geometry.tile_px):
                if cell not in out:
                    out[cell] = self.array(2, cell)
                    if out[cell] is None:
                        out[cell] = self._zeros(2, cell)
                written = paste(out[cell], self._cell_rect(2, cell), values, rect2)
                if written is not None:
                    changed[(2, *cell)] = union(changed.get((2, *cell)), written)
        return out

    def _recompute_level2(self, cell: tuple[int, int]) -> np.ndarray | None:
        """A level-2 overview tile from the committed tiles that own its pixels (None if none does)."""
        x0, y0, x1, y1 = self._cell_rect(2, cell)
        w0, h0 = self.sizes[0]
        footprint = (4 * x0, 4 * y0, min(4 * x1, w0), min(4 * y1, h0))
        tree0 = self.cache.tree(0)
        sources = {}
        for node in tree0.leaves(footprint):
            for tile_id, src in self._leaf(0, node).items():
                if tile_id <= self.n_committed and intersect(src.rect, footprint):
                    sources[tile_id] = src
        array, any_owned = None, False
        for _, src in sorted(sources.items()):
            owned = owned_pixels(self._tile_data(src), src.rect)[1]  # its level-2 pixels
            if owned is None or intersect(owned[0], (x0, y0, x1, y1)) is None:
                continue
            if array is None:
                array = self._zeros(2, cell)
            paste(array, (x0, y0, x1, y1), owned[1], owned[0])
            any_owned = True
        return array if any_owned else None

    def _tile_data(self, src: Source) -> np.ndarray:
        cache = self._tiles
        if src.path not in cache:
            if len(cache) >= TILES_DECODED:
                cache.clear()
            cache[src.path] = read_raster(self.cache.cache_dir / src.path)
        return cache[src.path]

    def _level_up(self, level: int, changed: dict) -> dict:
        out = {}
        if self.recovering:
            for cell in sorted(self.cells.get(level, ())):
                array = None
                for dy in (0, 1):
                    for dx in (0, 1):
                        child = (2 * cell[0] + dx, 2 * cell[1] + dy)
                        data = self.array(level - 1, child)
                        if data is None:
                            continue
                        if array is None:
                            array = self._zeros(level, cell)
                        crect = self._cell_rect(level - 1, child)
                        halve_into(array, self._cell_rect(level, cell), data, crect, crect)
                out[cell] = array
            return out
        for (k, cx, cy), rect in sorted(changed.items()):
            if k != level - 1:
                continue
            cell = (cx // 2, cy // 2)
            if cell not in out:
                out[cell] = self.array(level, cell)
                if out[cell] is None:
                    out[cell] = self._zeros(level, cell)
            child = self.array(level - 1, (cx, cy))
            written = halve_into(out[cell], self._cell_rect(level, cell), child, self._cell_rect(level - 1, (cx, cy)),
                                 rect)
            changed[(level, *cell)] = union(changed.get((level, *cell)), written)
        return out

    def _write_vrts(self) -> None:
        """The leaves that changed, then their ancestors: each must list its child (a crash may have cut
        the chain anywhere above a leaf it wrote), so every ancestor is checked, and rewritten if not."""
        cache = self.cache
        written = set()
        for level, node in sorted(self.dirty):
            items = self.items[(level, node)]
            written.add(cache.write_vrt_file(level, node, [items[k] for k in sorted(items)], sync_dir=False).parent)
        for folder in written:  # the leaves are on disk before any node above names them
            fsync_dir(folder)
        for level in sorted({level for level, _ in self.dirty}):
            tree = cache.tree(level)
            frontier = {node for lv, node in self.dirty if lv == level}
            while frontier:
                parents: dict[tuple, list] = {}
                for node in frontier:
                    if node[0] < tree.top:
                        parents.setdefault(tree.parent(node), []).append(node)
                for parent, kids in sorted(parents.items()):
                    path = tree.path(parent)
                    file = cache.cache_dir / path
                    sources = parse_sources(path, tree.rect(parent), file.read_text()) if file.is_file() else []
                    listed = {s.path for s in sources}
                    missing = [tree.node_source(kid) for kid in sorted(kids) if tree.path(kid) not in listed]
                    if missing or not file.is_file():
                        cache.write_vrt_file(level, parent, sources + missing)
                frontier = set(parents)
