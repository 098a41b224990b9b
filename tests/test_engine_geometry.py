"""Crown geometry with shapely: measurements in metres in every CRS, pin-holes filled, real gaps kept."""

import math

import numpy as np
import pytest
import shapely
from rasterio.transform import Affine

from engine.run.predict import predict
from engine.settings import Job
from tests.rasters import crowns_image, read_crowns, squares_image, write_raster

# (col, row, size) in pixels: squares well inside their tiles' cores and apart from each other.
SQUARES = [(10, 10, 12), (70, 20, 16), (20, 90, 20)]


def by_area(crowns):
    return sorted(crowns, key=lambda c: c["area_m2"])


@pytest.mark.parametrize("vector_format", ["shp", "gpkg"])
def test_square_crowns_are_measured_in_square_metres(tmp_path, crown_model, vector_format):
    path = write_raster(tmp_path / "img.tif", crowns_image(120, 120, SQUARES), gsd_m=0.1)
    predict(Job(image=path, cache_dir=tmp_path / "c", model=crown_model, vector_format=vector_format))
    crowns = by_area(read_crowns(tmp_path / "c", f"crowns.{vector_format}"))
    perimeter = "perim_m" if vector_format == "shp" else "perimeter_m"
    assert len(crowns) == 3
    for crown, (_, _, size) in zip(crowns, sorted(SQUARES, key=lambda s: s[2])):
        side_m = size * 0.1
        assert crown["area_m2"] == pytest.approx(side_m**2, abs=1e-3)
        assert crown[perimeter] == pytest.approx(4 * side_m, abs=1e-3)
        assert crown["diam_m"] == pytest.approx(2 * math.sqrt(side_m**2 / math.pi), abs=1e-3)
        assert crown["area_m2"] == pytest.approx(shapely.from_wkt(crown["wkt"]).area, abs=1e-3)


def test_geographic_raster_crowns_are_measured_in_metres(tmp_path, crown_model):
    lat0, lon0 = 47.0, 8.0
    dy = 0.1 / 111_132.0
    dx = 0.1 / (111_320.0 * np.cos(np.radians(lat0)))
    path = write_raster(tmp_path / "img.tif", crowns_image(120, 120, SQUARES), crs="EPSG:4326",
                        transform=Affine(dx, 0, lon0, 0, -dy, lat0))
    predict(Job(image=path, cache_dir=tmp_path / "c", model=crown_model))
    crowns = by_area(read_crowns(tmp_path / "c"))
    for crown, (_, _, size) in zip(crowns, sorted(SQUARES, key=lambda s: s[2])):
        # Resampled onto a UTM grid: the outline moves by up to a pixel, so allow a pixel's ring.
        side_m = size * 0.1
        assert crown["area_m2"] == pytest.approx(side_m**2, rel=4 * 0.1 / side_m)
        assert shapely.from_wkt(crown["wkt"]).area < 1e-6  # the stored geometry is in degrees


def test_crowns_in_a_feet_crs_are_measured_in_metres(tmp_path, crown_model):
    ft = 0.1 / 0.3048006096  # 0.1 m pixels in US survey feet
    path = write_raster(tmp_path / "img.tif", crowns_image(120, 120, SQUARES), crs="EPSG:2229",
                        transform=Affine(ft, 0, 6_000_000.0, 0, -ft, 2_000_000.0))
    predict(Job(image=path, cache_dir=tmp_path / "c", model=crown_model))
    crowns = by_area(read_crowns(tmp_path / "c"))
    for crown, (_, _, size) in zip(crowns, sorted(SQUARES, key=lambda s: s[2])):
        side_m = size * 0.1
        assert crown["area_m2"] == pytest.approx(side_m**2, rel=1e-3)
        assert shapely.from_wkt(crown["wkt"]).area == pytest.approx((size * ft) ** 2, rel=1e-3)  # feet squared


def test_pin_holes_in_crowns_are_filled(tmp_path, crown_model):
    img = crowns_image(120, 120, SQUARES)
    img[0, 26:28, 76:78] = 20  # a 2 x 2 px (0.04 m²) gap inside the 16 px crown, away from its centre dot
    path = write_raster(tmp_path / "img.tif", img, gsd_m=0.1)
    predict(Job(image=path, cache_dir=tmp_path / "c", model=crown_model))
    crowns = read_crowns(tmp_path / "c")
    assert len(crowns) == 3
    assert all(shapely.get_num_interior_rings(shapely.from_wkt(c["wkt"])) == 0 for c in crowns)
    assert by_area(crowns)[1]["area_m2"] == pytest.approx(1.6**2, abs=1e-3)


def test_canopy_gaps_larger_than_pin_holes_are_kept(tmp_path, model):
    img = squares_image(60, 60, [(5, 5, 50)])  # 5 x 5 m of canopy, inside one 48 px core... and more
    img[:, 15:35, 15:35] = 20  # a 2 x 2 m clearing: a real gap
    img[:, 40:42, 40:42] = 20  # a 0.2 x 0.2 m pin-hole
    path = write_raster(tmp_path / "img.tif", img, gsd_m=0.1)
    predict(Job(image=path, cache_dir=tmp_path / "c", model=model, tile_size_px=128, overlap_px=16))
    (region,) = read_crowns(tmp_path / "c")
    polygon = shapely.from_wkt(region["wkt"])
    assert shapely.get_num_interior_rings(polygon) == 1
    assert polygon.area == pytest.approx(25.0 - 4.0, abs=1e-6)
