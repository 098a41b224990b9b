"""Tile plans: cores partition the image, whatever its size, resolution or CRS."""

import numpy as np
import pytest

from engine.tiling.grid import RasterInfo, plan_tiles
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


@pytest.mark.parametrize("width,height", [(1, 1), (1000, 3), (3, 1000), (997, 211), (40, 40), (100, 100), (48, 97)])
@pytest.mark.parametrize("gsd", [0.05, 0.1, 0.3])
def test_cores_partition_awkward_images(width, height, gsd):
    tiles = plan_tiles(info(width, height, gsd), 64, 16, 0.1)
    assert (coverage(tiles, width, height) == 1).all()
    assert [t.tile_id for t in tiles] == list(range(1, len(tiles) + 1))


def test_aligned_grid_uses_integer_windows():
    tiles = plan_tiles(info(100, 100), 64, 16, 0.1)
    assert all(t.offset_px is not None for t in tiles)
    assert tiles[0].core_px == (0, 0, 48, 48) and tiles[0].offset_px == (-8, -8)
    assert tiles[1].core_px == (48, 0, 48, 48) and tiles[2].core_px == (96, 0, 4, 48)


def test_resampled_core_fits_inside_tile_context():
    # 0.05 m source, 0.1 m model: a 48 px model core covers at most 96 source pixels.
    tiles = plan_tiles(info(500, 500, 0.05), 64, 16, 0.1)
    assert all(t.offset_px is None for t in tiles)
    assert max(t.core_px[2] for t in tiles) <= 96


def test_geographic_plan_partitions_and_fits():
    from rasterio.crs import CRS

    wkt4326 = CRS.from_epsg(4326).to_wkt()
    utm = CRS.from_epsg(32633).to_wkt()
    deg = 1e-6 * 1.5  # ~0.1 m in latitude at 54 N
    i = info(300, 200, crs_wkt=wkt4326, geographic=True, transform=(deg * 1.7, 0, 15.0, 0, -deg, 54.0))
    tiles = plan_tiles(i, 64, 16, 0.1, point_mapper(wkt4326, utm))
    assert (coverage(tiles, 300, 200) == 1).all()


def test_aoi_drops_tiles_outside():
    tiles = plan_tiles(info(200, 200), 64, 16, 0.1, aoi_contains=lambda core: core[0] < 40 and core[1] < 40)
    assert [t.core_px[:2] for t in tiles] == [(0, 0)]
