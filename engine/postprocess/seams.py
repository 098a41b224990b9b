"""Crowns of neighbouring tiles cut at their shared boundary, in plan order, as tiles commit.

Each tile owns the crowns centred in its core, traced from its own prediction;
a neighbour traces the same trees from another prediction, so a crown it owns
can reach into a crown this tile owns (both take the ground between them), or
the same tree can be owned twice when its two outlines are centred in the two
cores. :class:`CrownSeams` keeps the crowns of committed tiles within reach of the
tiles still to come and cuts each new tile's crowns against them
(:func:`~engine.postprocess.vectorise.cut_overlaps`): the earlier tile in plan
order keeps the ground, a crown left with less than half its outline is dropped,
and a cut crown is measured again.

Space: source pixels for tile cores (``bbox_px``, ``[x0, y0, x1, y1]``) and the
source CRS for crowns. Tiles commit in plan order, rows of cores from the top,
so the crowns a tile can meet are those of tiles whose core ends less than two
windows above its own. The state is a function of the tile being cut, so a
resumed run (seeded from the crowns file, :meth:`CrownSeams.seed`) cuts exactly
as the uninterrupted run did.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace

import numpy as np
import shapely

from ..tiling.grid import Tile, apply, invert
from .heights import CanopyHeightRaster, height_attributes
from .vectorise import OVERLAP_TOLERANCE_PX2, CrownGrid, cut_overlaps, measure


def window_reach_px(tile: Tile, tile_size_px: int, src_transform: tuple, to_src=None) -> int:
    """How far (source pixels) a tile's window can reach past its core: the window's larger side, rounded up.

    Measured on one tile; windows across a plan differ by a hair (a geographic
    source), so the bound is padded by a tenth.
    """
    t = np.linspace(0.0, tile_size_px, 9)
    ends = np.full_like(t, float(tile_size_px))
    xs = np.concatenate([t, ends, t, np.zeros_like(t)])
    ys = np.concatenate([np.zeros_like(t), t, ends, t])
    wx, wy = apply(tile.transform, xs, ys)
    if to_src is not None:
        wx, wy = to_src(wx, wy)
    sx, sy = apply(invert(src_transform), np.asarray(wx), np.asarray(wy))
    return int(math.ceil(1.1 * max(np.ptp(sx), np.ptp(sy)))) + 2


class CrownSeams:
    """Committed crowns near the tiles to come, and each new tile's crowns cut against them.

    ``reach_px`` bounds how far a tile's crowns lie past its core (source pixels,
    :func:`window_reach_px`); ``grid`` measures cut crowns; ``pixel_area`` is a
    source pixel's area in source CRS units (``crs_wkt``); ``canopy_height`` (a path)
    gives cut crowns their heights again.
    """

    def __init__(self, reach_px: int, grid: CrownGrid, pixel_area: float, crs_wkt: str,
                 canopy_height: str | None = None):
        self._crs_wkt = crs_wkt
        self._reach = 2 * reach_px  # two windows: one past each core
        self._grid = grid
        self._min_overlap = pixel_area * OVERLAP_TOLERANCE_PX2
        self._canopy_height = canopy_height
        self._heights: CanopyHeightRaster | None = None
        # (core bbox_px, crowns, their bounds), in plan order
        self._tiles: list[tuple[tuple[int, int, int, int], np.ndarray, np.ndarray]] = []

    def needs(self, bbox_px: tuple[int, int, int, int], first_todo_bbox_px: tuple[int, int, int, int]) -> bool:
        """Whether a committed tile's crowns can meet those of the tile ``first_todo_bbox_px`` or later ones."""
        return bbox_px[3] + self._reach >= first_todo_bbox_px[1]

    def seed(self, tiles: Iterable[tuple[tuple[int, int, int, int], list[bytes]]]) -> None:
        """Take committed tiles' crowns (core ``bbox_px`` and WKB in id order), in plan order."""
        for bbox_px, wkbs in tiles:
            self._keep(tuple(bbox_px), shapely.from_wkb(list(wkbs)) if wkbs else np.zeros(0, dtype=object))

    def _keep(self, bbox_px: tuple[int, int, int, int], polygons: np.ndarray) -> None:
        # Normalised, so that crowns read back from the file cut exactly as those kept in memory.
        polygons = shapely.normalize(polygons)
        self._tiles.append((bbox_px, polygons, shapely.bounds(polygons).reshape(-1, 4)))

    def cut(self, bbox_px: tuple[int, int, int, int], crowns: tuple) -> tuple:
        """The tile's crowns less what earlier tiles' crowns hold (some dropped); then keeps them for later tiles."""
        x0, y0, x1, y1 = bbox_px
        reach = self._reach
        self._tiles = [kept for kept in self._tiles if kept[0][3] + reach >= y0]
        if not crowns:
            self._keep(tuple(bbox_px), np.zeros(0, dtype=object))
            return crowns
        polygons = shapely.from_wkb([c.wkb for c in crowns])
        # Only earlier crowns whose boxes meet the box around this tile's crowns can overlap them.
        mine = shapely.bounds(polygons)
        lo, hi = mine[:, :2].min(axis=0), mine[:, 2:].max(axis=0)
        near = [p[(b[:, 0] <= hi[0]) & (b[:, 2] >= lo[0]) & (b[:, 1] <= hi[1]) & (b[:, 3] >= lo[1])]
                for core, p, b in self._tiles
                if core[0] - reach <= x1 and core[2] + reach >= x0 and p.size]
        near = [p for p in near if p.size]
        if near:
            polygons, kept, cut = cut_overlaps(polygons, np.concatenate(near), min_overlap=self._min_overlap,
                                               among=False)
            if cut.any() or not kept.all():
                crowns = self._updated(crowns, polygons, np.flatnonzero(cut & kept), kept)
                polygons = polygons[kept]
        self._keep(tuple(bbox_px), polygons)
        return crowns

    def _updated(self, crowns: tuple, polygons: np.ndarray, changed: np.ndarray, kept: np.ndarray) -> tuple:
        """``crowns`` with the ``changed`` ones given their cut outline and measured again, only ``kept`` ones."""
        crowns = list(crowns)
        areas, perimeters, diameters = measure(polygons[changed], self._grid)
        wkbs = shapely.to_wkb(polygons[changed], byte_order=1)
        heights = None
        if self._canopy_height is not None:
            if self._heights is None:
                self._heights = CanopyHeightRaster(self._canopy_height)
            heights = self._heights.crown_heights(list(wkbs), self._crs_wkt)
        for k, i in enumerate(changed):
            attributes = {**crowns[i].attributes, "area_m2": round(float(areas[k]), 3),
                          "perimeter_m": round(float(perimeters[k]), 3), "diam_m": round(float(diameters[k]), 3)}
            if heights is not None:
                attributes.update(height_attributes(heights[k], self._heights.name))
            crowns[i] = replace(crowns[i], wkb=wkbs[k], attributes=attributes)
        return tuple(c for c, keep in zip(crowns, kept) if keep)

    def close(self) -> None:
        if self._heights is not None:
            self._heights.close()
            self._heights = None
