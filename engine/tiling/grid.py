"""Tiling: which source pixels each tile owns, and the model grid each tile is read on.

Two pixel spaces meet here:

* **source pixels** — the input raster's own grid (``transform``, ``crs``). Every
  tile owns a *core*, a rectangle of source pixels; the cores partition the image,
  so each source pixel belongs to exactly one tile.
* **model pixels** — a north-up grid at ``gsd_m`` metres per pixel in the
  *working CRS* (the source CRS when it is projected, else the local UTM zone).
  A tile is ``tile_size_px`` model pixels square around its core; neighbouring
  tiles overlap by at least ``overlap_px`` (see :func:`plan_tiles` for the plans).

When the source grid already is a model grid (same CRS, north-up, pixel size equal
to the gsd) a tile is a plain integer window of the source and nothing is
resampled: :attr:`Tile.offset_px` then holds the tile's top-left source pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Affine6 = tuple[float, float, float, float, float, float]  # a, b, c, d, e, f (rasterio/affine order)


@dataclass(frozen=True)
class RasterInfo:
    """What the engine needs to know about the source raster (no open handles)."""

    path: str
    width: int
    height: int
    count: int
    dtype: str
    crs_wkt: str
    crs_is_geographic: bool
    units_per_m: float  # source CRS linear units per metre (1 for metres; 1/0.3048 for feet)
    transform: Affine6
    file_size: int
    mtime_ns: int
    paletted: bool = False  # one band of colour-table indices, read as red, green, blue

    @property
    def is_north_up(self) -> bool:
        a, b, _, d, e, _ = self.transform
        return b == 0 and d == 0 and a > 0 and e < 0


@dataclass(frozen=True)
class Tile:
    """One tile of the plan.

    ``core_px`` is ``(col_off, row_off, width, height)`` in source pixels.
    ``transform`` maps model pixels of this tile to working-CRS coordinates.
    ``offset_px`` is the source pixel (col, row) of model pixel (0, 0) when the
    grids coincide, else None.
    """

    tile_id: int
    core_px: tuple[int, int, int, int]
    transform: Affine6
    offset_px: tuple[int, int] | None

    @property
    def bbox_px(self) -> list[int]:
        """Core as ``[x0, y0, x1, y1]`` source pixels (the manifest's ``bbox``)."""
        c, r, w, h = self.core_px
        return [c, r, c + w, r + h]

    @property
    def core_in_tile(self) -> tuple[slice, slice] | None:
        """``(rows, cols)``: the core as a window of the tile's model pixels when the grids coincide, else None."""
        if self.offset_px is None:
            return None
        c, r, w, h = self.core_px
        c0, r0 = c - self.offset_px[0], r - self.offset_px[1]
        return slice(r0, r0 + h), slice(c0, c0 + w)


def apply(t: Affine6, x, y):
    """Map pixel coordinates (x = column, y = row; arrays allowed) through affine ``t``."""
    a, b, c, d, e, f = t
    return a * x + b * y + c, d * x + e * y + f


def window_transform(t: Affine6, col: float, row: float) -> Affine6:
    """The transform of a window whose top-left pixel is (``col``, ``row``) of the grid ``t``."""
    a, b, c, d, e, f = t
    return (a, b, c + a * col + b * row, d, e, f + d * col + e * row)


def invert(t: Affine6) -> Affine6:
    a, b, c, d, e, f = t
    det = a * e - b * d
    if det == 0:
        raise ValueError("degenerate transform")
    ia, ib, id_, ie = e / det, -b / det, -d / det, a / det
    return (ia, ib, -(ia * c + ib * f), id_, ie, -(id_ * c + ie * f))


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the UTM zone holding (lon, lat) degrees, WGS 84."""
    zone = int(math.floor((lon + 180.0) / 6.0)) % 60 + 1
    return (32600 if lat >= 0 else 32700) + zone


def _rect_outline(c0: float, r0: float, w: float, h: float, n: int = 8):
    """Points along a pixel rectangle's edges (x, y arrays), for bounding it after a warp."""
    t = np.linspace(0.0, 1.0, n + 1)
    xs = np.concatenate([c0 + t * w, np.full_like(t, c0 + w), c0 + (1 - t) * w, np.full_like(t, c0)])
    ys = np.concatenate([np.full_like(t, r0), r0 + t * h, np.full_like(t, r0 + h), r0 + (1 - t) * h])
    return xs, ys


# Tile plans. A cache records the plan it was made with and is continued with it.
# 1: every window is its core plus ``overlap_px // 2`` on each side, so the outer
#    windows hang over the image's edges (padding) and small images take several tiles.
# 2: edge-aware: along each axis ``ceil((size - tile) / (tile - overlap)) + 1`` windows,
#    evenly spaced from the image's first pixel to its last, none reaching outside the
#    image (Deepness's count); cores split each overlap in the middle, so the outer cores
#    grow to the border. An image no larger than a tile is one tile.
# 3: ground-anchored: as plan 2, but every tile starts on a lattice fixed in the CRS (every
#    lattice_px model pixels from the CRS's origin: the source grid's own pixels when it is the
#    model grid, else the working CRS's), so two rasters of one place (shifted, cropped,
#    re-encoded, reprojected) show the model their ground at the same phase of its strides and
#    get the same crowns; the first and last windows reach past the image by less than one
#    lattice step, which the reader fills with the image mirrored. The run that makes a plan-3
#    cache also reads at true ground scale (engine.tiling.raster.working_crs) and fills what
#    lies beyond valid pixels (engine.tiling.reader.fill_invalid); caches of plans 1 and 2 are
#    continued without either.
PLAN_MARGIN = 1
PLAN_EDGE = 2
PLAN_GROUND = 3
LATEST_PLAN = PLAN_GROUND
PLANS = (PLAN_MARGIN, PLAN_EDGE, PLAN_GROUND)


def axis_windows(length: float, tile: float, stride: float) -> tuple[list[float], list[int]]:
    """Evenly spaced window starts along one axis, and the core bounds between them.

    Windows are ``tile`` long and lie inside ``[0, length]`` (one window at 0 when
    the axis is no longer than a tile); neighbours overlap by at least
    ``tile - stride``. Core ``i`` is ``[bounds[i], bounds[i + 1])``: integer bounds
    from 0 to ``ceil(length)``, each in the middle of an overlap, so every core lies
    inside its window. Integer inputs give integer starts.
    """
    end = int(math.ceil(length))
    if length <= tile:
        return [0], [0, end]
    n = int(math.ceil((length - tile) / stride - 1e-9)) + 1
    span = length - tile
    if isinstance(length, int) and isinstance(tile, int):
        starts = [(2 * i * span + (n - 1)) // (2 * (n - 1)) for i in range(n)]
    else:
        starts = [i * span / (n - 1) for i in range(n)]
    bounds = [0] + [int((starts[i] + tile + starts[i + 1]) // 2) for i in range(n - 1)] + [end]
    return starts, bounds


def lattice_px(stride_px: int) -> int:
    """The spacing, in model pixels, of the lattice plan 3 starts tiles on: 32 (a multiple of the
    strides of common encoders: the default model's outputs repeat under 16 px shifts, within 0.5 %
    of a probability, and move by 3 % under others), or 8 for small tiles, whose neighbours the
    lattice would otherwise space unevenly (48 and 32 px instead of 43)."""
    return 32 if stride_px >= 128 else 8 if stride_px >= 8 else 1


def lattice_windows(length: int, tile: int, stride: int, phase: int, step: int) -> tuple[list[int], list[int]]:
    """Window starts along one axis on the lattice ``phase + k * step`` (integers), and the core bounds.

    The first window starts at the lattice point at or before 0 and the last ends at or after
    ``length``, so each reaches past the image by less than ``step`` (the reader fills that
    with the image mirrored); neighbours are at most ``stride`` apart, rounded down to a
    multiple of ``step``, so they overlap by at least ``tile - stride``. Cores are as in
    :func:`axis_windows`. An axis no longer than a tile is one window at 0.
    """
    if length <= tile:
        return [0], [0, length]
    first = phase % step - (step if phase % step else 0)
    last = first + step * -(-(length - tile - first) // step)
    stride = max(step, stride // step * step)
    steps = (last - first) // step
    n = -(-(last - first) // stride) + 1
    starts = sorted({first + step * ((2 * i * steps + (n - 1)) // (2 * (n - 1))) for i in range(n)})
    bounds = [0] + [(starts[i] + tile + starts[i + 1]) // 2 for i in range(len(starts) - 1)] + [length]
    return starts, bounds


def crs_phase(origin: float, step: float, lattice_px: float) -> int:
    """Where, in whole pixels from the raster's first pixel along one axis, the CRS's lines
    ``k * lattice_px * |step|`` fall (``origin``, ``step``: the axis's geotransform terms)."""
    return int(round((-origin / step) % lattice_px)) % int(lattice_px)


def plan_tiles(info: RasterInfo, tile_size_px: int, overlap_px: int, gsd_m: float, to_work=None,
               aoi_contains=None, plan: int = LATEST_PLAN) -> list[Tile]:
    """Cut the source image into tiles whose cores partition it.

    ``to_work(xs, ys) -> (xs, ys)`` maps source-CRS coordinates to the working
    CRS (None when they are the same CRS). ``gsd_m`` is converted to working-CRS
    units with ``info.units_per_m`` when the source CRS is the working CRS.
    ``aoi_contains(core_px) -> bool`` drops tiles whose core is outside the area
    of interest. Tile ids count 1, 2, ... in row-major order over kept tiles.
    ``plan`` is one of :data:`PLANS` (see above).
    """
    if plan not in PLANS:
        raise ValueError(f"unknown tile plan {plan}")
    gsd_work = gsd_m * (info.units_per_m if to_work is None else 1.0)
    a, b, c, d, e, f = info.transform
    aligned = (
        to_work is None
        and info.is_north_up
        and math.isclose(a, gsd_work, rel_tol=1e-6)
        and math.isclose(-e, gsd_work, rel_tol=1e-6)
    )
    px_w = px_h = 1.0
    if not aligned:
        # Extent of one source pixel along x and y in working units, largest over the image
        # (a reprojection stretches pixels unevenly), with 1 % to spare for curvature.
        sx = np.array([0.0, info.width / 2, info.width, 0.0, info.width, 0.0, info.width / 2])
        sy = np.array([0.0, info.height / 2, 0.0, info.height, info.height, info.height / 2, 0.0])
        px_w = px_h = 0.0
        for dx, dy in ((1.0, 0.0), (0.0, 1.0)):
            x0, y0 = apply(info.transform, sx, sy)
            x1, y1 = apply(info.transform, sx + dx, sy + dy)
            if to_work is not None:
                x0, y0 = to_work(x0, y0)
                x1, y1 = to_work(x1, y1)
            px_w += float(np.max(np.abs(np.asarray(x1) - np.asarray(x0))))
            px_h += float(np.max(np.abs(np.asarray(y1) - np.asarray(y0))))
    if plan == PLAN_MARGIN:
        return _plan_margin(info, tile_size_px, overlap_px, gsd_work, to_work, aoi_contains, aligned, px_w, px_h)
    return _plan_edge(info, tile_size_px, overlap_px, gsd_work, to_work, aoi_contains, aligned, px_w, px_h,
                      anchored=plan == PLAN_GROUND)


def _snap(value: float, step: float, up: bool) -> float:
    q = value / step
    return (math.ceil(q - 1e-9) if up else math.floor(q + 1e-9)) * step


def _plan_edge(info, tile_px, overlap_px, gsd_work, to_work, aoi_contains, aligned, px_w, px_h,
               anchored=False) -> list[Tile]:
    a, _, c, _, e, f = info.transform
    step = lattice_px(tile_px - overlap_px) if anchored else 1
    if aligned and anchored:
        stride = tile_px - overlap_px
        cols, col_bounds = lattice_windows(info.width, tile_px, stride, crs_phase(c, a, step), step)
        rows, row_bounds = lattice_windows(info.height, tile_px, stride, crs_phase(f, e, step), step)
    elif aligned:
        cols, col_bounds = axis_windows(info.width, tile_px, tile_px - overlap_px)
        rows, row_bounds = axis_windows(info.height, tile_px, tile_px - overlap_px)
    else:
        # Windows and cores in source pixels: a window of ``tile_w`` source pixels fits
        # inside the tile's model grid whatever the warp (see the 1 % above).
        # Plan 3 moves each tile's model grid onto the working CRS's lattice, by less than one
        # lattice step: the window leaves that much room.
        fit_px = tile_px - (step if anchored and step > 1 else 0)
        if to_work is None and info.is_north_up:
            tile_w, tile_h = 0.99 * fit_px * gsd_work / px_w, 0.99 * fit_px * gsd_work / px_h
        else:  # rotated or reprojected: a square window bounds the footprint in both directions
            tile_w = tile_h = 0.99 * fit_px * gsd_work / max(px_w, px_h)
        stride = (tile_px - overlap_px) / tile_px
        cols, col_bounds = axis_windows(float(info.width), tile_w, max(tile_w * stride, 1.0))
        rows, row_bounds = axis_windows(float(info.height), tile_h, max(tile_h * stride, 1.0))
        # The window's far edge stays inside the image on the last row and column.
        last_col, last_row = len(cols) - 1 if info.width > tile_w else -1, len(rows) - 1 if info.height > tile_h else -1
    tiles: list[Tile] = []
    for j in range(len(rows)):
        for i in range(len(cols)):
            c0, c1, r0, r1 = col_bounds[i], col_bounds[i + 1], row_bounds[j], row_bounds[j + 1]
            core = (c0, r0, c1 - c0, r1 - r0)
            if aoi_contains is not None and not aoi_contains(core):
                continue
            if aligned:
                x0, y0 = apply(info.transform, cols[i], rows[j])
                transform = (gsd_work, 0.0, x0, 0.0, -gsd_work, y0)
                offset = (int(cols[i]), int(rows[j]))
            else:
                xs, ys = apply(info.transform, *_rect_outline(cols[i], rows[j], tile_w, tile_h))
                if to_work is not None:
                    xs, ys = to_work(xs, ys)
                minx = float(np.min(xs)) if i != last_col else float(np.max(xs)) - tile_px * gsd_work
                maxy = float(np.max(ys)) if j != last_row else float(np.min(ys)) + tile_px * gsd_work
                if anchored and step > 1:  # tiles start on the working CRS's lattice; the last reach past the image
                    minx = _snap(minx, step * gsd_work, up=i == last_col)
                    maxy = _snap(maxy, step * gsd_work, up=j != last_row)
                transform = (gsd_work, 0.0, minx, 0.0, -gsd_work, maxy)
                offset = None
            tiles.append(Tile(len(tiles) + 1, core, transform, offset))
    return tiles


def _plan_margin(info, tile_size_px, overlap_px, gsd_work, to_work, aoi_contains, aligned, px_w, px_h) -> list[Tile]:
    margin = overlap_px // 2
    core_model_px = tile_size_px - 2 * margin
    if aligned:
        core_w = core_h = core_model_px
    else:
        span = core_model_px * gsd_work * 0.99
        core_w = max(1, int(math.floor(span / px_w + 1e-9)))
        core_h = max(1, int(math.floor(span / px_h + 1e-9)))

    tiles: list[Tile] = []
    for row in range(0, info.height, core_h):
        for col in range(0, info.width, core_w):
            core = (col, row, min(core_w, info.width - col), min(core_h, info.height - row))
            if aoi_contains is not None and not aoi_contains(core):
                continue
            if aligned:
                x0, y0 = apply(info.transform, col, row)
                transform = (gsd_work, 0.0, x0 - margin * gsd_work, 0.0, -gsd_work, y0 + margin * gsd_work)
                offset = (col - margin, row - margin)
            else:
                xs, ys = apply(info.transform, *_rect_outline(*core))
                if to_work is not None:
                    xs, ys = to_work(xs, ys)
                minx, maxy = float(np.min(xs)), float(np.max(ys))
                transform = (gsd_work, 0.0, minx - margin * gsd_work, 0.0, -gsd_work, maxy + margin * gsd_work)
                offset = None
            tiles.append(Tile(len(tiles) + 1, core, transform, offset))
    return tiles
