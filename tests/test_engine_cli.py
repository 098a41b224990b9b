"""The command line: one clear line and a non-zero exit for every user error, no traceback."""

import subprocess
import sys

import numpy as np
import pytest

from tests.rasters import write_raster


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ".", timeout=120)


@pytest.fixture
def image(tmp_path):
    return write_raster(tmp_path / "img.tif", np.full((3, 100, 100), 200, np.uint8))


def assert_one_line_error(proc, pattern):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert pattern in lines[0], lines[0]


def test_predict_status_and_resume(tmp_path, image, model):
    proc = cli("predict", image, "--model", model, "--out", tmp_path / "c", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "complete: 4/4 tiles" in proc.stdout  # 2 x 2 windows inside the image
    status = cli("status", tmp_path / "c")
    assert status.returncode == 0
    assert "tiles:   4/4 done" in status.stdout and "state:   complete" in status.stdout
    again = cli("predict", image, "--model", model, "--out", tmp_path / "c")
    assert again.returncode == 0 and "complete: 4/4" in again.stdout


def test_user_errors_are_one_line(tmp_path, image, model):
    assert_one_line_error(cli("predict", tmp_path / "missing.tif", "--model", model), "does not exist")
    fake = tmp_path / "fake.tif"
    fake.write_text("this is not a raster")
    assert_one_line_error(cli("predict", fake, "--model", model), "not a raster")
    no_crs = write_raster(tmp_path / "nocrs.tif", np.zeros((3, 10, 10), np.uint8), crs=None)
    assert_one_line_error(cli("predict", no_crs, "--model", model),
                          "no coordinate reference system. Give it one with --assign-crs")
    bad_model = tmp_path / "bad.onnx"
    bad_model.write_bytes(b"\x08\x07garbage" * 10)
    assert_one_line_error(cli("predict", image, "--model", bad_model), "not a valid ONNX model")
    assert_one_line_error(cli("predict", image, "--model", tmp_path / "none.onnx"), "does not exist")
    assert_one_line_error(cli("predict", image, "--model", model, "--overlap", "-5"), "cannot be negative")
    assert_one_line_error(cli("predict", image, "--model", model, "--gsd", "0"), "must be positive")
    assert_one_line_error(cli("predict", image, "--model", model, "--outputs", "trees"), "Unknown output")
    cli("predict", image, "--model", model, "--out", tmp_path / "c", "--quiet")
    other = write_raster(tmp_path / "other.tif", np.zeros((3, 100, 100), np.uint8))
    assert_one_line_error(cli("predict", other, "--model", model, "--out", tmp_path / "c"),
                          "another image (file size, modification time differ). Run again with --overwrite")


def test_debug_shows_the_traceback(tmp_path, model):
    proc = cli("--debug", "predict", tmp_path / "missing.tif", "--model", model)
    assert proc.returncode == 2 and "Traceback" in proc.stderr


def test_status_of_a_folder_without_cache(tmp_path):
    proc = cli("status", tmp_path)
    assert proc.returncode == 0 and "no cache here yet" in proc.stdout
    assert_one_line_error(cli("status", tmp_path / "nope"), "is not a folder")


def test_engine_never_imports_qgis():
    code = ("import sys, engine, engine.run.predict, engine.cache.status, engine.cli; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('qgis', 'PyQt5', 'PyQt6')]; "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_reading_caches_needs_only_the_standard_library():
    code = ("import sys, engine; from engine import cache_status, cache_layers, describe_model; "
            "heavy = [m for m in ('rasterio', 'onnxruntime', 'scipy', 'osgeo') if m in sys.modules]; "
            "assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_assign_crs_predicts_a_raster_without_one(tmp_path, model):
    no_crs = write_raster(tmp_path / "nocrs.tif", np.full((3, 100, 100), 200, np.uint8), crs=None)
    proc = cli("predict", no_crs, "--model", model, "--out", tmp_path / "c", "--assign-crs", "EPSG:32633", "--quiet")
    assert proc.returncode == 0, proc.stderr
    other = cli("predict", no_crs, "--model", model, "--out", tmp_path / "c", "--assign-crs", "EPSG:32634")
    assert_one_line_error(other, "another image (CRS differs)")
    assert_one_line_error(cli("predict", no_crs, "--model", model, "--assign-crs", "EPSG:999999"), "not valid")
