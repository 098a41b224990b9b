"""Crown measurements against hand-computed values: a rectangle, and a crown across a tile border."""

import math

import pytest

from engine.run.predict import predict
from engine.settings import Job
from tests.rasters import crowns_image, read_crowns, write_raster


def rectangle_image(width, height, col, row, w, h):
    """The crown test model's input with one ``w`` x ``h`` px crown at (``col``, ``row``)."""
    img = crowns_image(width, height, [])
    img[0, row : row + h, col : col + w] = 230
    img[2, row : row + h, col : col + w] = 230
    img[1, row + h // 2 - 1 : row + h // 2 + 2, col + w // 2 - 1 : col + w // 2 + 2] = 255
    return img


@pytest.mark.parametrize("vector_format", ["shp", "gpkg"])
def test_a_rectangle_crown(tmp_path, crown_model, vector_format):
    # 1.2 x 2.0 m: 2.4 m², perimeter 6.4 m, equivalent diameter 2 * sqrt(2.4 / pi) = 1.748 m.
    path = write_raster(tmp_path / "img.tif", rectangle_image(120, 120, 10, 10, 12, 20), gsd_m=0.1)
    predict(Job(image=path, cache_dir=tmp_path / "c", model=crown_model, vector_format=vector_format))
    (crown,) = read_crowns(tmp_path / "c", f"crowns.{vector_format}")
    perimeter = crown["perim_m" if vector_format == "shp" else "perimeter_m"]
    assert crown["area_m2"] == pytest.approx(2.4, abs=1e-3)
    assert perimeter == pytest.approx(6.4, abs=1e-3)
    assert crown["diam_m"] == pytest.approx(1.748, abs=1e-3)
    assert crown["diam_m"] == pytest.approx(2 * math.sqrt(crown["area_m2"] / math.pi), abs=1e-3)


def test_a_crown_across_a_tile_border_is_measured_whole(tmp_path, crown_model):
    # 64 px tiles with a 16 px overlap: cores are 48 px, so columns 40..56 cross the first core border.
    path = write_raster(tmp_path / "img.tif", crowns_image(120, 120, [(40, 10, 16)]), gsd_m=0.1)
    predict(Job(image=path, cache_dir=tmp_path / "c", model=crown_model))
    (crown,) = read_crowns(tmp_path / "c")
    assert crown["area_m2"] == pytest.approx(2.56, abs=1e-3)
    assert crown["perim_m"] == pytest.approx(6.4, abs=1e-3)
