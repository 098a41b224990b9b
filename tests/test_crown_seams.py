"""CrownSeams: a tile's crowns cut against earlier tiles' crowns, measured and given heights again, seeded alike."""

import numpy as np
import pytest
import shapely
from rasterio.crs import CRS

from engine.postprocess.heights import HEIGHT_MAX
from engine.postprocess.seams import CrownSeams
from engine.postprocess.vectorise import Crown, CrownGrid
from tests.rasters import write_raster

X0, Y0 = 500000.0, 6000000.0
GRID = CrownGrid((0.1, 0.0, X0, 0.0, -0.1, Y0))
WKT = CRS.from_epsg(32633).to_wkt()


def box_crown(x0, y0, x1, y1, score=0.9) -> Crown:
    """An axis-aligned crown given in metres east and south of the raster's corner."""
    polygon = shapely.box(X0 + x0, Y0 - y1, X0 + x1, Y0 - y0)
    return Crown(shapely.to_wkb(polygon, byte_order=1), score, "tree", 0,
                 {"area_m2": round(polygon.area, 3), "perimeter_m": round(polygon.length, 3), "diam_m": 0.0})


def seams(canopy_height=None) -> CrownSeams:
    return CrownSeams(100, GRID, 0.01, WKT, canopy_height)


# Tile 1's core is columns 0-49 (0-5 m), tile 2's columns 50-99: their crowns reach past the seam at 5 m.
CORE_1, CORE_2 = (0, 0, 50, 50), (50, 0, 100, 50)
TILE_1 = (box_crown(1, 1, 6, 4), box_crown(0.5, 4.5, 3, 4.9))
TILE_2 = (box_crown(5, 1, 9, 4, 0.8),     # takes 1 m of tile 1's first crown: cut at its edge
          box_crown(1.2, 1.2, 5.8, 3.8),  # the same tree, centred in the other core: dropped
          box_crown(6, 4.5, 9, 4.9))      # meets nothing: as it came


def test_later_crowns_lose_what_earlier_crowns_hold_and_are_measured_again():
    cutter = seams()
    assert cutter.cut(CORE_1, TILE_1) == TILE_1
    cut = cutter.cut(CORE_2, TILE_2)
    assert len(cut) == 2 and cut[1] is TILE_2[2]
    polygon = shapely.from_wkb(cut[0].wkb)
    assert polygon.equals(shapely.box(X0 + 6, Y0 - 4, X0 + 9, Y0 - 1))
    assert cut[0].attributes["area_m2"] == pytest.approx(9.0)
    assert cut[0].attributes["perimeter_m"] == pytest.approx(12.0)
    assert cut[0].attributes["diam_m"] == pytest.approx(2 * np.sqrt(9.0 / np.pi), abs=1e-3)
    assert cut[0].score == 0.8
    everything = shapely.from_wkb([c.wkb for c in TILE_1 + cut])
    mine, other = shapely.STRtree(everything).query(everything, predicate="intersects")
    assert shapely.area(shapely.intersection(everything[mine], everything[other]))[mine != other].max() < 1e-9


def test_seeded_from_committed_crowns_cuts_as_the_run_that_kept_them():
    kept = seams()
    kept.cut(CORE_1, TILE_1)
    seeded = seams()
    assert seeded.needs(CORE_1, CORE_2)
    seeded.seed([(CORE_1, [c.wkb for c in TILE_1])])
    assert seeded.cut(CORE_2, TILE_2) == kept.cut(CORE_2, TILE_2)


def test_crowns_out_of_reach_are_forgotten():
    cutter = CrownSeams(10, GRID, 0.01, WKT)
    cutter.cut(CORE_1, TILE_1)
    far_below = (0, 100, 50, 150)  # 50 px below tile 1's core: more than two reaches of 10 px
    assert not cutter.needs(CORE_1, far_below)
    # Tile 1's crown, moved onto the far tile's ground, is not cut: tile 1 is forgotten by then.
    assert cutter.cut(far_below, TILE_1) == TILE_1


def test_cut_crowns_get_their_heights_again(tmp_path):
    chm = np.zeros((60, 100), np.float32)
    chm[10:40, 10:60] = 20.0  # tile 1's first crown's ground: 20 m
    chm[10:40, 60:90] = 12.0  # what is left of tile 2's first crown: 12 m
    path = write_raster(tmp_path / "chm.tif", chm, origin=(X0, Y0))
    first = box_crown(5, 1, 9, 4, 0.8)
    first = Crown(first.wkb, first.score, "tree", 0, {**first.attributes, HEIGHT_MAX: 20.0})
    cutter = seams(str(path))
    cutter.cut(CORE_1, TILE_1)
    (cut,) = cutter.cut(CORE_2, (first,))
    cutter.close()
    assert cut.attributes[HEIGHT_MAX] == pytest.approx(12.0)
