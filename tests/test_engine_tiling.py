"""Tile plans: cores partition the image, whatever its size, resolution or CRS."""

import numpy as np
import pytest

from engine.tiling.grid import PLAN_EDGE, PLAN_MARGIN, PLANS, RasterInfo, apply, axis_windows, plan_tiles
from engine.tiling.raster import point_mapper


def info(width, height, gsd=0.1, crs_wkt="EPSG:32633", geographic=False, transform=None):
    return RasterInfo("x.tif", width, height, 3, "uint8", crs_wkt, geographic, 1.0,
                      transform or (gsd, 0.0, 500000.0, 0.0, -gsd, 6000000.0), 0, 0)


def coverage(tiles, width, height):
    hits = np.zeros((height, width), np.int32)
    for t in tiles:
        c, r, w, h = t.core_px
        assert w > 0 and h > 0
        hits[r : r + h, c : c + w] += 1
    return hits


def windows_hold_cores(tiles, i, tile_px, to_work=None):
    """Every core's footprint lies inside its tile's window (working CRS)."""
    for t in tiles:
        c, r, w, h = t.core_px
        xs, ys = apply(i.transform, np.array([c, c + w, c + w, c], float), np.array([r, r, r + h, r + h], float))
        if to_work is not None:
            xs, ys = to_work(xs, ys)
        gsd, x0, y0 = t.transform[0], t.transform[2], t.transform[5]
        tol = 1e-6 * max(1.0, abs(x0), abs(y0))
        assert np.all(np.asarray(xs) >= x0 - tol) and np.all(np.asarray(xs) <= x0 + tile_px * gsd + tol)
        assert np.all(np.asarray(ys) <= y0 + tol) and np.all(np.asarray(ys) >= y0 - tile_px * gsd - tol)


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("width,height", [(1, 1), (1000, 3), (3, 1000), (997, 211), (40, 40), (100, 100), (48, 97)])
@pytest.mark.parametrize("gsd", [0.05, 0.1, 0.3])
def test_cores_partition_awkward_images(width, height, gsd, plan):
    i = info(width, height, gsd)
    tiles = plan_tiles(i, 64, 16, 0.1, plan=plan)
    assert (coverage(tiles, width, height) == 1).all()
    assert [t.tile_id for t in tiles] == list(range(1, len(tiles) + 1))
    windows_hold_cores(tiles, i, 64)


def test_margin_plan_puts_a_margin_around_every_core():
    tiles = plan_tiles(info(100, 100), 64, 16, 0.1, plan=PLAN_MARGIN)
    assert all(t.offset_px is not None for t in tiles)
    assert tiles[0].core_px == (0, 0, 48, 48) and tiles[0].offset_px == (-8, -8)
    assert tiles[1].core_px == (48, 0, 48, 48) and tiles[2].core_px == (96, 0, 4, 48)


def test_edge_plan_keeps_windows_inside_the_image():
    # Deepness's count: 4096 px at 1024/256 is 5 windows per axis (25 tiles), not 6 (36).
    tiles = plan_tiles(info(4096, 4096), 1024, 256, 0.1, plan=PLAN_EDGE)
    assert len(tiles) == 25
    assert sorted({t.offset_px[0] for t in tiles}) == [0, 768, 1536, 2304, 3072]
    assert (coverage(tiles, 4096, 4096) == 1).all()
    windows_hold_cores(tiles, info(4096, 4096), 1024)
    # The outer cores grow to the border: 768 + 128 px at the edges, 768 in between.
    assert [t.core_px[2] for t in tiles[:5]] == [896, 768, 768, 768, 896]


@pytest.mark.parametrize("size", [1024, 1000, 64])
def test_edge_plan_image_no_larger_than_a_tile_is_one_tile(size):
    tiles = plan_tiles(info(size, size), 1024, 256, 0.1)
    assert len(tiles) == 1 and tiles[0].core_px == (0, 0, size, size) and tiles[0].offset_px == (0, 0)


@pytest.mark.parametrize("length,tile,stride", [(4096, 512, 384), (1025, 1024, 768), (3000, 1024, 768),
                                                (100, 64, 48), (777.0, 64.3, 40.1)])
def test_axis_windows_overlap_at_least_as_asked(length, tile, stride):
    starts, bounds = axis_windows(length, tile, stride)
    assert starts[0] == 0 and abs(starts[-1] + tile - length) < 1e-9
    assert all(b - a >= tile - stride - 1e-9 for a, b in zip(starts[1:], [s + tile for s in starts[:-1]]))
    assert bounds[0] == 0 and bounds[-1] == int(np.ceil(length)) and bounds == sorted(set(bounds))
    assert all(s <= lo and hi <= s + tile for s, lo, hi in zip(starts, bounds[:-1], bounds[1:]))


@pytest.mark.parametrize("plan", PLANS)
def test_resampled_core_fits_inside_tile_context(plan):
    # 0.05 m source, 0.1 m model: a 64 px model window covers at most 128 source pixels.
    i = info(500, 500, 0.05)
    tiles = plan_tiles(i, 64, 16, 0.1, plan=plan)
    assert all(t.offset_px is None for t in tiles)
    assert max(t.core_px[2] for t in tiles) <= (96 if plan == PLAN_MARGIN else 128)
    windows_hold_cores(tiles, i, 64)
    if plan == PLAN_EDGE:  # no window reaches past the image
        x_max = 500000.0 + 500 * 0.05
        assert all(t.transform[2] >= 500000.0 - 1e-6 and t.transform[2] + 6.4 <= x_max + 1e-6 for t in tiles)


def test_geographic_plan_partitions_and_fits():
    from rasterio.crs import CRS

    wkt4326 = CRS.from_epsg(4326).to_wkt()
    utm = CRS.from_epsg(32633).to_wkt()
    deg = 1e-6 * 1.5  # ~0.1 m in latitude at 54 N
    i = info(300, 200, crs_wkt=wkt4326, geographic=True, transform=(deg * 1.7, 0, 15.0, 0, -deg, 54.0))
    for plan in PLANS:
        tiles = plan_tiles(i, 64, 16, 0.1, point_mapper(wkt4326, utm), plan=plan)
        assert (coverage(tiles, 300, 200) == 1).all()
        windows_hold_cores(tiles, i, 64, point_mapper(wkt4326, utm))


def test_aoi_drops_tiles_outside():
    tiles = plan_tiles(info(200, 200), 64, 16, 0.1, aoi_contains=lambda core: core[0] < 40 and core[1] < 40)
    assert [t.core_px[:2] for t in tiles] == [(0, 0)]


@pytest.mark.parametrize("shift", [0, 2, 4, 8, 13])
def test_plan_3_starts_tiles_on_the_crs_lattice(shift):
    """The same ground cropped by ``shift`` px: every tile starts on the lattice of 32 px (3.2 m) from the
    CRS's origin, so the model meets the ground at the same phase whatever the crop; the windows reach
    past the image by less than 32 px; as many tiles as plan 2."""
    from engine.tiling.grid import PLAN_GROUND

    origin = (500000.0 + 0.1 * 7 + 0.1 * shift, 6000000.0 - 0.1 * 11 - 0.1 * shift)
    i = info(4096 - shift, 4096 - shift, transform=(0.1, 0.0, origin[0], 0.0, -0.1, origin[1]))
    tiles = plan_tiles(i, 1024, 128, 0.1, plan=PLAN_GROUND)
    assert len(tiles) == len(plan_tiles(i, 1024, 128, 0.1, plan=PLAN_EDGE))
    assert (coverage(tiles, i.width, i.height) == 1).all()
    windows_hold_cores(tiles, i, 1024)
    for t in tiles:
        x0, y0 = t.transform[2], t.transform[5]
        assert abs(x0 / 3.2 - round(x0 / 3.2)) < 1e-6 and abs(y0 / 3.2 - round(y0 / 3.2)) < 1e-6
        col, row = t.offset_px
        assert -32 < col and col + 1024 < i.width + 32 and -32 < row and row + 1024 < i.height + 32


def test_plan_3_puts_resampled_tiles_on_the_working_crs_lattice():
    from engine.tiling.grid import PLAN_GROUND

    i = info(997, 611, 0.05, transform=(0.05, 0.0, 500000.013, 0.0, -0.05, 6000000.021))
    tiles = plan_tiles(i, 256, 32, 0.1, plan=PLAN_GROUND)
    assert (coverage(tiles, 997, 611) == 1).all()
    windows_hold_cores(tiles, i, 256)
    for t in tiles:
        x0, y0 = t.transform[2], t.transform[5]
        assert abs(x0 / 3.2 - round(x0 / 3.2)) < 1e-6 and abs(y0 / 3.2 - round(y0 / 3.2)) < 1e-6
