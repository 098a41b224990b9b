"""Overview pyramid of the confidence mosaic: pure functions on pixel rectangles and uint8 arrays.

Level 0 is the source grid (the tiles' cores). Level ``k`` halves level ``k - 1``:
``size_k = ceil(size_{k-1} / 2)``, so level-``k`` pixel ``(i, j)`` covers level
``k - 1`` pixels ``2i .. 2i+1`` by ``2j .. 2j+1`` (those inside the raster).

Every overview pixel is a fixed function of the committed tiles, so building it
tile by tile, as tiles commit, and rebuilding it from scratch give the same bytes:

* **levels 1 and 2** (:data:`OWNED_LEVELS`) — a pixel's *owner* is the tile whose
  core holds its top-left source pixel (``(2^k i, 2^k j)``); its value is the rounded
  mean of its 2 × 2 pixels of level ``k - 1`` that the same tile owns. Each such
  pixel thus depends on one tile only, and a tile's pixels of these levels are
  computed from that tile alone (:func:`owned_pixels`), where the tile is made;
* **level k ≥ 3** — the rounded mean of the pixel's 2 × 2 level ``k - 1`` pixels
  (:func:`halve`), where pixels no tile has reached yet are 0.

Rectangles are ``(x0, y0, x1, y1)``, half-open, in pixels of the level named.
Arrays are ``(bands, rows, cols)`` uint8.
"""

from __future__ import annotations

import numpy as np

Rect = tuple[int, int, int, int]

OWNED_LEVELS = 2  # overview levels whose pixels each belong to one tile (see the module docstring)


def level_sizes(width: int, height: int, tile_px: int) -> list[tuple[int, int]]:
    """``(width, height)`` of levels 0, 1, ... down to the first that fits in one ``tile_px`` square."""
    sizes = [(width, height)]
    while max(sizes[-1]) > tile_px:
        w, h = sizes[-1]
        sizes.append(((w + 1) // 2, (h + 1) // 2))
    return sizes


def intersect(a: Rect, b: Rect) -> Rect | None:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def union(a: Rect | None, b: Rect) -> Rect:
    if a is None:
        return b
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def shrink(rect: Rect, levels: int = 1) -> Rect:
    """The pixels ``levels`` levels up whose sources meet ``rect``."""
    f = 1 << levels
    x0, y0, x1, y1 = rect
    return x0 // f, y0 // f, -(-x1 // f), -(-y1 // f)


def grid_cells(rect: Rect, cell_px: int) -> list[tuple[int, int]]:
    """``(ix, iy)`` of the ``cell_px`` squares of a regular grid that meet ``rect``."""
    x0, y0, x1, y1 = rect
    xs, ys = range(x0 // cell_px, -(-x1 // cell_px)), range(y0 // cell_px, -(-y1 // cell_px))
    return [(ix, iy) for iy in ys for ix in xs]


def halve(src: np.ndarray) -> np.ndarray:
    """Each 2 × 2 block of ``src`` as its rounded mean; a last odd row or column averages what it has."""
    bands, h, w = src.shape
    h2, w2 = (h + 1) // 2, (w + 1) // 2
    he, we = h - h % 2, w - w % 2  # the even part: four strided sums, far cheaper than a 5-D reduction
    total = np.zeros((bands, h2, w2), np.uint16)
    count = np.zeros((h2, w2), np.uint16)
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        part = src[:, dy::2, dx::2]
        total[:, : part.shape[1], : part.shape[2]] += part
        count[: part.shape[1], : part.shape[2]] += 1
    if he == h and we == w:
        return ((total + 2) >> 2).astype(np.uint8)
    return ((total + count // 2) // count).astype(np.uint8)


def level1_of_tile(data: np.ndarray, bbox: Rect) -> tuple[Rect, np.ndarray] | None:
    """The pixels one level up that a tile owns and their values; None if it owns none.

    ``data`` is what the tile owns at some level ``(bands, y1 - y0, x1 - x0)`` (at
    level 0: its core) and ``bbox`` that part in pixels of the level. The tile owns
    pixel ``i`` one level up when column ``2i`` is in ``bbox``; the pixel's value uses
    the columns ``2i`` and ``2i + 1`` it owns.
    """
    x0, y0, x1, y1 = bbox
    i0, j0 = -(-x0 // 2), -(-y0 // 2)
    if 2 * i0 >= x1 or 2 * j0 >= y1:
        return None
    owned = data[:, 2 * j0 - y0 :, 2 * i0 - x0 :]
    values = halve(owned)
    return (i0, j0, i0 + values.shape[2], j0 + values.shape[1]), values


def owned_pixels(core: np.ndarray, bbox: Rect, levels: int = OWNED_LEVELS) -> list:
    """A tile's pixels at levels 1 .. ``levels``: ``[(rect, values) or None, ...]`` (None: it owns none)."""
    out = []
    owned = (bbox, core)
    for _ in range(levels):
        owned = level1_of_tile(owned[1], owned[0]) if owned is not None else None
        out.append(owned)
    return out


def paste(dst: np.ndarray, dst_rect: Rect, src: np.ndarray, src_rect: Rect) -> Rect | None:
    """Copy the part of ``src`` (covering ``src_rect``) that falls in ``dst`` (covering ``dst_rect``).

    Returns the rectangle written, in the level's pixels, or None if they do not meet.
    """
    common = intersect(dst_rect, src_rect)
    if common is None:
        return None
    x0, y0, x1, y1 = common
    dst[:, y0 - dst_rect[1] : y1 - dst_rect[1], x0 - dst_rect[0] : x1 - dst_rect[0]] = \
        src[:, y0 - src_rect[1] : y1 - src_rect[1], x0 - src_rect[0] : x1 - src_rect[0]]
    return common


def halve_into(parent: np.ndarray, parent_rect: Rect, child: np.ndarray, child_rect: Rect,
               changed: Rect) -> Rect:
    """Recompute the parent pixels whose sources meet ``changed`` (inside ``child_rect``) from ``child``.

    The parent's 2 × 2 sources of those pixels all lie in ``child`` because child
    tiles start at even positions. Returns the parent rectangle rewritten.
    """
    up = shrink(changed)
    cx0, cy0 = 2 * up[0] - child_rect[0], 2 * up[1] - child_rect[1]
    cx1 = min(2 * up[2], child_rect[2]) - child_rect[0]
    cy1 = min(2 * up[3], child_rect[3]) - child_rect[1]
    values = halve(child[:, cy0:cy1, cx0:cx1])
    rect = (up[0], up[1], up[0] + values.shape[2], up[1] + values.shape[1])
    paste(parent, parent_rect, values, rect)
    return rect


def row_major_span(after: Rect | None, upto: Rect, width: int) -> list[Rect]:
    """Source pixels of the tiles after tile ``after`` up to tile ``upto`` in plan order.

    Tiles are planned row by row, left to right, on one grid of rows and columns,
    so whatever comes after a tile lies right of it in its row or in rows below;
    ``after`` None means from the first tile.
    """
    if after is None:
        rects = [(0, 0, width, upto[1]), (0, upto[1], upto[2], upto[3])]
    elif after[1] == upto[1]:
        rects = [(after[2], after[1], upto[2], upto[3])]
    else:
        rects = [(after[2], after[1], width, after[3]), (0, after[3], width, upto[1]),
                 (0, upto[1], upto[2], upto[3])]
    return [r for r in rects if r[0] < r[2] and r[1] < r[3]]
