"""Crown heights from a canopy height raster in another CRS and resolution, with known values per crown."""

import numpy as np
import pytest
import shapely
from rasterio.crs import CRS

from engine.errors import CacheMismatchError, RasterError
from engine.postprocess.heights import CanopyHeightRaster
from engine.run.predict import predict
from engine.settings import Job
from tests.conftest import SQUARES
from tests.rasters import LEADER_M, ORIGIN, crown_height, crowns_by_square, crowns_image, geographic_chm, write_raster


@pytest.fixture
def scene(tmp_path):
    image = write_raster(tmp_path / "ortho.tif", crowns_image(320, 320, SQUARES), crs="EPSG:32633")
    chm = geographic_chm(tmp_path / "chm.tif", SQUARES, nodata_crown=7)
    return image, chm


def test_heights_of_crowns_with_known_values(scene, tmp_path, crown_model):
    image, chm = scene
    cache = tmp_path / "c"
    predict(Job(image=image, cache_dir=cache, model=crown_model, vector_format="gpkg", canopy_height=chm))
    crowns = crowns_by_square(cache / "crowns.gpkg", SQUARES, ("height_max_m", "height_p95_m", "height_src"))
    assert len(crowns) == 40
    for i, (col, _, _) in enumerate(SQUARES):
        covered = col < 40 * 6
        if i == 7 or not covered:  # over nodata, or beyond the raster's edge: NULL, never 0
            assert crowns[i] == {"height_max_m": None, "height_p95_m": None, "height_src": "chm.tif"}, i
        else:
            # A 1.2 m crown holds about 40 pixels of 0.16 x 0.22 m: one leader among them is above
            # the 95th percentile, so p95 is the crown's height and the maximum is the leader's.
            assert crowns[i] == {"height_max_m": LEADER_M, "height_p95_m": crown_height(i), "height_src": "chm.tif"}, i


def test_shapefile_columns_and_nulls(scene, tmp_path, crown_model):
    image, chm = scene
    cache = tmp_path / "c"
    predict(Job(image=image, cache_dir=cache, model=crown_model, canopy_height=chm))
    crowns = crowns_by_square(cache / "crowns.shp", SQUARES, ("height_max", "height_p95", "height_src"))
    assert crowns[0] == {"height_max": LEADER_M, "height_p95": crown_height(0), "height_src": "chm.tif"}
    assert crowns[7]["height_max"] is None and crowns[7]["height_p95"] is None


def test_the_height_raster_is_part_of_the_settings(scene, tmp_path, crown_model):
    image, chm = scene
    cache = tmp_path / "c"
    predict(Job(image=image, cache_dir=cache, model=crown_model, canopy_height=chm),
            cancelled=lambda: (cache / "tiles.jsonl").exists())
    with pytest.raises(CacheMismatchError) as info:
        predict(Job(image=image, cache_dir=cache, model=crown_model))
    assert info.value.differences == ("canopy height raster",)


def test_an_unreadable_height_raster_is_one_sentence(tmp_path, crown_model):
    image = write_raster(tmp_path / "ortho.tif", crowns_image(64, 64, [(10, 10, 12)]))
    (tmp_path / "chm.tif").write_bytes(b"not a raster")
    with pytest.raises(RasterError, match=r"^The canopy height raster .*chm.tif cannot be read\.$"):
        predict(Job(image=image, cache_dir=tmp_path / "c", model=crown_model, canopy_height=tmp_path / "chm.tif"))
    assert not (tmp_path / "c").exists()


def test_a_crown_smaller_than_a_pixel_takes_the_pixels_it_touches(tmp_path):
    chm = np.array([[1, 2], [3, 4]], np.float32)
    path = write_raster(tmp_path / "chm.tif", chm, crs="EPSG:32633", gsd_m=1.0)
    raster = CanopyHeightRaster(path)
    x, y = ORIGIN
    tiny = shapely.box(x + 0.1, y - 0.3, x + 0.3, y - 0.1)  # inside the top-left pixel, missing its centre
    straddling = shapely.box(x + 0.9, y - 1.1, x + 1.1, y - 0.9)  # a corner of all four pixels
    heights = raster.crown_heights([shapely.to_wkb(tiny), shapely.to_wkb(straddling)], _wkt("EPSG:32633"))
    assert [(h.max_m, h.p95_m) for h in heights] == [(1.0, 1.0), (4.0, pytest.approx(3.85))]
    raster.close()


def _wkt(code: str) -> str:
    return CRS.from_string(code).to_wkt()
