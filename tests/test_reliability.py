"""The bad-input and fault catalogue of docs/RELIABILITY.md, engine side: each case fed for real.

Every case must give one clear sentence (a TCDError) and leave what is already in the
cache intact and resumable.
"""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine

from engine.cache.status import cache_status
from engine.errors import CacheWriteError, ModelError, RasterError, TCDError
from engine.run.predict import predict
from engine.settings import Job
from tests.onnx_models import canopy_centres_model, constant_model
from tests.rasters import crowns_image, read_confidence, read_crowns, write_raster


def noisy_image(path, size=(3, 200, 200), seed=0, **kw):
    rng = np.random.default_rng(seed)
    return write_raster(path, rng.integers(0, 256, size, dtype=np.uint8), **kw)


@pytest.mark.usefixtures("per_tile_commits")
def test_truncated_geotiff_fails_with_one_sentence_and_keeps_committed_tiles(tmp_path, model):
    path = noisy_image(tmp_path / "img.tif", (3, 400, 400))  # uncompressed, striped
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(RasterError, match="damaged or truncated"):
        predict(Job(image=path, cache_dir=tmp_path / "c", model=model))
    status = cache_status(tmp_path / "c")
    assert status.state == "partial" and status.done > 0
    assert read_confidence(tmp_path / "c").shape == (1, 400, 400)


def test_rotated_geotransform_is_predicted_on_its_own_grid(tmp_path):
    model = canopy_centres_model(tmp_path / "crowns.onnx", tile_size_px=64, overlap_px=32)
    angle = np.radians(20)
    a, b = 0.1 * np.cos(angle), 0.1 * np.sin(angle)
    transform = Affine(a, -b, 500000, -b, -a, 6000000)
    img = crowns_image(120, 100, [(30, 30, 16), (70, 50, 14)])
    path = write_raster(tmp_path / "img.tif", img, transform=transform)
    predict(Job(image=path, cache_dir=tmp_path / "c", model=model))
    with rasterio.open(tmp_path / "c" / "confidence.vrt") as src:
        assert src.transform.almost_equals(transform)
        conf = src.read(1)
    assert conf[38, 38] > 200 and conf[5, 5] < 60
    crowns = read_crowns(tmp_path / "c")
    assert len(crowns) == 2
    for (c, r, s), crown in zip(sorted([(30, 30, 16), (70, 50, 14)]), sorted(crowns, key=lambda k: k["centroid"])):
        x, y = transform * (c + s / 2, r + s / 2)
        assert np.hypot(crown["centroid"][0] - x, crown["centroid"][1] - y) <= 0.1


def test_single_band_raster_for_rgb_model(tmp_path, model):
    path = write_raster(tmp_path / "gray.tif", np.zeros((1, 50, 50), np.uint8))
    with pytest.raises(RasterError, match="needs bands 1, 2, 3 but gray.tif has 1 band"):
        predict(Job(image=path, cache_dir=tmp_path / "c", model=model))


def test_16_bit_raster_for_8_bit_model_is_stretched(tmp_path, model):
    """Values 1000..1990 across the columns: QGIS's 2-98 % cut is about 1010..1970, stretched onto 0..255
    (the passthrough model's confidence is band 1 as the model read it)."""
    img = np.broadcast_to((1000 + 10 * np.arange(100, dtype=np.uint16))[None, None], (3, 60, 100)).copy()
    path = write_raster(tmp_path / "deep.tif", img)
    predict(Job(image=path, cache_dir=tmp_path / "c", model=model))
    header = json.loads((tmp_path / "c" / "tiles.jsonl").read_text().splitlines()[0])
    (lo, hi), *_ = header["fingerprints"]["settings"]["value_range"]
    assert 1010 <= lo <= 1020 and 1970 <= hi <= 1980
    conf = read_confidence(tmp_path / "c")[0].astype(float)
    expected = np.clip((img[0].astype(float) - lo) / (hi - lo), 0, 1) * 255
    assert np.abs(conf - expected).max() <= 1.0
    with pytest.raises(RasterError, match="holds the same value"):
        predict(Job(image=write_raster(tmp_path / "flat.tif", np.full((3, 50, 50), 4000, np.uint16)),
                    cache_dir=tmp_path / "flat", model=model))


def test_rgba_alpha_is_a_mask(tmp_path, model):
    img = np.full((4, 100, 160), 230, np.uint8)
    img[3] = 255
    img[3, :, 80:] = 0  # right half transparent
    path = write_raster(tmp_path / "rgba.tif", img, photometric="RGB", alpha="YES")
    result = predict(Job(image=path, cache_dir=tmp_path / "c", model=model))
    conf = read_confidence(tmp_path / "c")[0]
    assert (conf[:, :80] == 230).all() and (conf[:, 96:] == 0).all()
    assert result.skipped >= 2


def test_zero_overlap_works(tmp_path, model):
    path = noisy_image(tmp_path / "img.tif", (3, 100, 100))
    result = predict(Job(image=path, cache_dir=tmp_path / "c", model=model, overlap_px=0))
    assert result.total == 4
    np.testing.assert_array_equal(read_confidence(tmp_path / "c")[0], rasterio.open(path).read(1))


def test_model_that_outputs_nan(tmp_path):
    nan_model = constant_model(tmp_path / "nan.onnx", float("nan"))
    path = noisy_image(tmp_path / "img.tif", (3, 100, 100))
    with pytest.raises(ModelError, match="NaN"):
        predict(Job(image=path, cache_dir=tmp_path / "c", model=nan_model))
    assert cache_status(tmp_path / "c").done == 0


def test_paths_with_spaces_and_non_ascii_letters(tmp_path, model):
    folder = tmp_path / "Forêt de Bialowieża" / "år 2024"
    path = write_raster(folder / "orto foto ł.tif", crowns_image(100, 100, [(20, 20, 14)]))
    cache = folder / "résultats tcd"
    predict(Job(image=path, cache_dir=cache, model=model))
    assert len(read_crowns(cache)) == 1
    assert read_confidence(cache).shape == (1, 100, 100)
    assert cache_status(cache).image_path == path


def test_output_folder_that_cannot_be_created(tmp_path, model):
    path = noisy_image(tmp_path / "img.tif", (3, 50, 50))
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(CacheWriteError, match="Cannot create the output folder"):
        predict(Job(image=path, cache_dir=blocker / "cache", model=model))


def _mount_tmpfs(where: Path, options: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    where = tmp_path / "small_disk"
    if not _mount_tmpfs(where, "size=160k"):
        pytest.skip("mounting a tmpfs needs root")
    yield where
    subprocess.run(["umount", "-l", str(where)])


def test_read_only_output_folder(tmp_path, model):
    where = tmp_path / "ro"
    if not _mount_tmpfs(where, "ro,size=64k"):
        pytest.skip("mounting a tmpfs needs root")
    try:
        path = noisy_image(tmp_path / "img.tif", (3, 50, 50))
        with pytest.raises(CacheWriteError):
            predict(Job(image=path, cache_dir=where / "cache", model=model))
        with pytest.raises(CacheWriteError, match="not writable|Cannot create"):
            predict(Job(image=path, cache_dir=where, model=model))
    finally:
        subprocess.run(["umount", "-l", str(where)])


@pytest.mark.usefixtures("per_tile_commits")
def test_disk_full_mid_run_then_resume_elsewhere(tmp_path, model, small_disk):
    path = noisy_image(tmp_path / "img.tif", (3, 480, 480), seed=3)
    predict(Job(image=path, cache_dir=tmp_path / "clean", model=model))
    cache = small_disk / "cache"
    with pytest.raises(CacheWriteError, match="disk is full"):
        predict(Job(image=path, cache_dir=cache, model=model))
    done = cache_status(cache).done
    assert 0 < done < cache_status(tmp_path / "clean").total
    # Nothing committed is lost: move the cache to a disk with room and resume there.
    moved = tmp_path / "moved"
    shutil.copytree(cache, moved)
    predict(Job(image=path, cache_dir=moved, model=model))
    np.testing.assert_array_equal(read_confidence(moved), read_confidence(tmp_path / "clean"))
    strip = [{k: v for k, v in c.items()} for c in read_crowns(moved)]
    assert strip == read_crowns(tmp_path / "clean")


def test_every_engine_error_is_a_tcd_error():
    import engine.errors as errors

    for name in dir(errors):
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, Exception) and obj is not TCDError:
            assert issubclass(obj, TCDError), name
