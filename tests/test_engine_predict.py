"""End-to-end prediction on synthetic rasters with known shapes, through real onnxruntime."""

import json

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine

from engine.run.predict import predict
from engine.settings import Job
from tests.onnx_models import canopy_centres_model
from tests.rasters import crowns_image, read_confidence, read_crowns, squares_image, write_raster

# Squares (col, row, size) in source pixels; the second crosses the corner of the first
# four tiles (cores are 48 model px), the third a vertical tile border.
SQUARES_01 = [(10, 10, 14), (41, 41, 14), (90, 60, 12), (130, 20, 16), (20, 120, 20)]


def truth_centres(transform, squares):
    return [transform * (c + s / 2, r + s / 2) for c, r, s in squares]


def assert_found_within_one_pixel(crowns, centres, pixel_size):
    assert len(crowns) == len(centres), (len(crowns), len(centres))
    found = np.array([c["centroid"] for c in crowns])
    for x, y in centres:
        d = np.hypot(found[:, 0] - x, found[:, 1] - y).min()
        assert d <= pixel_size, (x, y, d, pixel_size)


def test_aligned_raster_exact_semantics_and_crowns(tmp_path, crown_model):
    img = crowns_image(160, 150, SQUARES_01)
    path = write_raster(tmp_path / "img.tif", img, gsd_m=0.1)
    result = predict(Job(image=path, cache_dir=tmp_path / "cache", model=crown_model))
    assert result.state == "complete" and result.done == result.total == 9  # 3 x 3 windows inside the image
    conf = read_confidence(tmp_path / "cache")
    # P(tree) = band / 255, stored as round(P * 255): the band itself, every pixel written exactly once.
    np.testing.assert_array_equal(conf[0], img[0])
    crowns = read_crowns(tmp_path / "cache")
    with rasterio.open(path) as src:
        assert_found_within_one_pixel(crowns, truth_centres(src.transform, SQUARES_01), 0.1)
    assert sorted(c["id"] for c in crowns) == list(range(1, len(crowns) + 1))
    assert {c["class"] for c in crowns} == {"tree"} and {c["class_idx"] for c in crowns} == {0}
    assert all(0.85 < c["score"] <= 0.91 for c in crowns)


@pytest.mark.parametrize("gsd_m", [0.05, 0.3])
def test_resampled_rasters_place_shapes_within_one_source_pixel(tmp_path, crown_model, gsd_m):
    scale = 0.1 / gsd_m
    squares = [(int(c * scale), int(r * scale), max(int(s * scale), 6)) for c, r, s in SQUARES_01]
    w, h = int(160 * scale), int(150 * scale)
    img = crowns_image(w, h, squares, dot=3 if gsd_m < 0.1 else 1)
    path = write_raster(tmp_path / "img.tif", img, gsd_m=gsd_m, origin=(500000.37, 6000000.11))
    predict(Job(image=path, cache_dir=tmp_path / "cache", model=crown_model))
    with rasterio.open(path) as src:
        transform = src.transform
    assert_found_within_one_pixel(read_crowns(tmp_path / "cache"), truth_centres(transform, squares), gsd_m)
    conf = read_confidence(tmp_path / "cache")[0]
    assert conf.shape == (h, w)
    for c, r, s in squares:  # inside each square the confidence is the square's value
        core = conf[r + s // 2 - 1 : r + s // 2 + 1, c + s // 2 - 1 : c + s // 2 + 1]
        assert np.all(np.abs(core.astype(int) - 230) <= 2)
    assert conf[img[0] == 20].mean() < 40


def test_geographic_raster_is_predicted_in_utm_and_mapped_back(tmp_path, crown_model):
    # ~0.1 m pixels at 47 N: 1e-6 deg latitude = 0.111 m, longitude scaled by cos(lat).
    lat0, lon0 = 47.0, 8.0
    dy = 0.1 / 111_132.0
    dx = 0.1 / (111_320.0 * np.cos(np.radians(lat0)))
    transform = Affine(dx, 0, lon0, 0, -dy, lat0)
    img = crowns_image(160, 150, SQUARES_01)
    path = write_raster(tmp_path / "img.tif", img, crs="EPSG:4326", transform=transform)
    predict(Job(image=path, cache_dir=tmp_path / "cache", model=crown_model))
    crowns = read_crowns(tmp_path / "cache")
    found = np.array([c["centroid"] for c in crowns])
    assert len(crowns) == len(SQUARES_01)
    for x, y in truth_centres(transform, SQUARES_01):
        dpx = np.hypot((found[:, 0] - x) / dx, (found[:, 1] - y) / dy).min()
        assert dpx <= 1.0
    with rasterio.open(tmp_path / "cache" / "confidence.vrt") as src:
        assert src.crs == CRS.from_epsg(4326) and src.transform == transform


@pytest.mark.parametrize("width,height", [(1, 1), (1000, 3), (97, 61), (30, 20)])
def test_awkward_sizes_write_every_pixel_once(tmp_path, model, width, height):
    rng = np.random.default_rng(width)
    img = rng.integers(0, 256, (3, height, width), dtype=np.uint8)
    path = write_raster(tmp_path / "img.tif", img)
    result = predict(Job(image=path, cache_dir=tmp_path / "cache", model=model, outputs={"semantic"}))
    np.testing.assert_array_equal(read_confidence(tmp_path / "cache")[0], img[0])
    lines = (tmp_path / "cache" / "tiles.jsonl").read_text().splitlines()
    hits = np.zeros((height, width), int)
    for line in lines[1:]:
        x0, y0, x1, y1 = json.loads(line)["bbox"]
        hits[y0:y1, x0:x1] += 1
    assert (hits == 1).all() and result.done == len(lines) - 1


def test_tile_larger_than_image(tmp_path, model):
    img = squares_image(30, 25, [(5, 5, 12)])
    path = write_raster(tmp_path / "img.tif", img)
    result = predict(Job(image=path, cache_dir=tmp_path / "cache", model=model, tile_size_px=256, overlap_px=32))
    assert result.total == 1 and len(read_crowns(tmp_path / "cache")) == 1


def test_nodata_tiles_are_skipped_and_recorded(tmp_path, model):
    img = squares_image(160, 60, [(10, 10, 14)])
    img[:, :, 48:] = 0
    path = write_raster(tmp_path / "img.tif", img, nodata=0)
    result = predict(Job(image=path, cache_dir=tmp_path / "cache", model=model))
    # Windows at columns 0, 48 and 96 (one row): the last two see only nodata.
    assert result.skipped == 2 and result.done == result.total == 3
    lines = [json.loads(x) for x in (tmp_path / "cache" / "tiles.jsonl").read_text().splitlines()[1:]]
    assert [x["status"] for x in lines] == ["done", "skipped", "skipped"]
    assert all(x["cache_files"] == {} for x in lines if x["status"] == "skipped")


def test_geopackage_output(tmp_path, crown_model):
    img = crowns_image(160, 150, SQUARES_01)
    path = write_raster(tmp_path / "img.tif", img)
    predict(Job(image=path, cache_dir=tmp_path / "cache", model=crown_model, vector_format="gpkg",
                outputs={"instances"}))
    crowns = read_crowns(tmp_path / "cache", "crowns.gpkg")
    assert len(crowns) == len(SQUARES_01)
    assert not (tmp_path / "cache" / "confidence.vrt").exists()


@pytest.mark.parametrize("stride", [1, 4])
def test_canopy_centres_split_touching_crowns(tmp_path, stride):
    # crown_stride_px 4: split and vectorised on a 4x coarser grid, same crowns within a coarse pixel.
    model = canopy_centres_model(tmp_path / "cc.onnx", extra_metadata={"crown_stride_px": stride})
    # Band 1: one canopy blob made of two touching squares; band 2: a centre blob in each.
    img = np.zeros((3, 80, 80), np.uint8)
    img[0, 20:40, 10:50] = 255
    img[1, 28:32, 16:20] = 255
    img[1, 28:32, 40:44] = 255
    path = write_raster(tmp_path / "img.tif", img)
    predict(Job(image=path, cache_dir=tmp_path / "cache", model=model, outputs={"instances"}))
    crowns = read_crowns(tmp_path / "cache")
    assert len(crowns) == 2
    xs = sorted(c["centroid"][0] for c in crowns)
    assert xs[0] < 500000 + 3.0 < xs[1]
    assert all(abs(c["area_m2"] - 4.0) <= 1.0 for c in crowns)  # 2 m x 2 m each, within a coarse pixel


def test_semantic_regions_are_clipped_to_cores_and_stored_once(tmp_path, model):
    from osgeo import ogr

    # One 30 px canopy patch spanning the corner of four tiles (core bounds at 46 and 74 px).
    img = squares_image(120, 120, [(30, 30, 30)])
    path = write_raster(tmp_path / "img.tif", img)
    predict(Job(image=path, cache_dir=tmp_path / "cache", model=model, outputs={"instances"}))
    pieces = read_crowns(tmp_path / "cache")
    assert len(pieces) == 4 and len({p["tile_id"] for p in pieces}) == 4
    geoms = [ogr.CreateGeometryFromWkt(p["wkt"]) for p in pieces]
    union = geoms[0]
    for g in geoms[1:]:
        assert union.Intersection(g).GetArea() < 1e-9  # no piece overlaps another
        union = union.Union(g)
    assert abs(union.GetArea() - 3.0 * 3.0) < 1e-6
    assert sum(g.GetArea() for g in geoms) == pytest.approx(9.0)


def test_mosaic_is_read_only_so_gdal_cannot_write_statistics_over_it(tmp_path, model):
    import os
    import stat

    from osgeo import gdal

    img = squares_image(160, 150, SQUARES_01)
    path = write_raster(tmp_path / "img.tif", img)
    predict(Job(image=path, cache_dir=tmp_path / "cache", model=model, outputs={"semantic"}))
    vrt = tmp_path / "cache" / "confidence.vrt"
    assert not vrt.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    if os.geteuid() != 0:  # root writes through any permission
        gdal.UseExceptions()
        with pytest.raises(RuntimeError):
            gdal.OpenEx(str(vrt), gdal.OF_RASTER | gdal.OF_UPDATE)
    # A resume rewrites the read-only mosaic without trouble.
    predict(Job(image=path, cache_dir=tmp_path / "cache", model=model, outputs={"semantic"}))
    assert vrt.is_file()


@pytest.mark.parametrize(("width", "height"), [(96, 64), (70, 45)])
def test_an_image_smaller_than_a_tile_is_all_the_model_sees(tmp_path, width, height):
    """A model taking any input size is run on the image (mirrored up to a multiple of 32 px), not on a
    tile of zeros around it; a model with a fixed input size still gets the whole tile, filled beyond
    the image with the image mirrored, never zeros."""
    from tests.onnx_models import image_mean_model

    rng = np.random.default_rng(5)
    img = rng.integers(60, 200, (3, height, width)).astype(np.uint8)
    image = write_raster(tmp_path / "small.tif", img)
    predict(Job(image=image, cache_dir=tmp_path / "any", model=image_mean_model(tmp_path / "any.onnx")))
    seen = read_confidence(tmp_path / "any")[0]
    h32, w32 = -(-height // 32) * 32, -(-width // 32) * 32
    mirrored = np.pad(img[0].astype(np.float64), ((0, h32 - height), (0, w32 - width)), mode="symmetric")
    expected = np.round(mirrored.mean() / 255 * 255)
    assert np.abs(seen.astype(float) - expected).max() <= 1

    predict(Job(image=image, cache_dir=tmp_path / "fixed",
                model=image_mean_model(tmp_path / "fixed.onnx", fixed_tile=True)))
    filled = read_confidence(tmp_path / "fixed")[0].astype(float)
    zeros_around = img[0].astype(float).sum() / (256 * 256)
    assert np.abs(filled - img[0].mean()).max() <= 8 and filled.min() > 2 * zeros_around
