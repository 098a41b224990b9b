"""Engine errors carry facts; the engine never words a remedy that names an interface."""

import json
import subprocess
import sys

import numpy as np
import pytest

from engine.errors import CacheCorruptError, CacheMismatchError, MissingCRSError
from engine.run.predict import find_mismatch, predict
from engine.settings import Job
from engine.worker import job_to_json
from tests.rasters import write_raster


@pytest.fixture
def image(tmp_path):
    return write_raster(tmp_path / "img.tif", np.full((3, 100, 100), 200, np.uint8))


def test_a_mismatch_carries_what_differs_and_no_command_line_flag(tmp_path, image, model):
    predict(Job(image=image, cache_dir=tmp_path / "c", model=model))
    with pytest.raises(CacheMismatchError) as caught:
        predict(Job(image=image, cache_dir=tmp_path / "c", model=model, tile_size_px=96))
    err = caught.value
    assert err.what == "settings" and "tile size" in err.differences and err.start_afresh_fixes
    assert err.cache_dir == tmp_path / "c"
    assert "--" not in str(err) and str(err).endswith("(tile size differs).")


def test_find_mismatch_answers_without_writing(tmp_path, image, model):
    cache = tmp_path / "c"
    assert find_mismatch(Job(image=image, cache_dir=cache, model=model)) is None  # nothing there yet
    assert not cache.exists()
    predict(Job(image=image, cache_dir=cache, model=model))
    before = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert find_mismatch(Job(image=image, cache_dir=cache, model=model)) is None
    mismatch = find_mismatch(Job(image=image, cache_dir=cache, model=model, overlap_px=8))
    assert mismatch.what == "settings" and mismatch.differences == ("overlap",)
    assert find_mismatch(Job(image=image, cache_dir=cache, model=model, overlap_px=8, overwrite=True)) is None
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == before


def test_a_damaged_shapefile_says_starting_afresh_fixes_it(tmp_path, image, crown_model):
    predict(Job(image=image, cache_dir=tmp_path / "c", model=crown_model))
    (tmp_path / "c" / "crowns.dbf").unlink()
    with pytest.raises(CacheCorruptError) as caught:
        predict(Job(image=image, cache_dir=tmp_path / "c", model=crown_model))
    assert caught.value.start_afresh_fixes and "--" not in str(caught.value)


def test_missing_crs_is_its_own_error(tmp_path, model):
    no_crs = write_raster(tmp_path / "nocrs.tif", np.zeros((3, 10, 10), np.uint8), crs=None)
    with pytest.raises(MissingCRSError):
        predict(Job(image=no_crs, cache_dir=tmp_path / "c", model=model))
    result = predict(Job(image=no_crs, cache_dir=tmp_path / "c", model=model, assign_crs="EPSG:32633"))
    assert result.state == "complete"
    header = json.loads((tmp_path / "c" / "tiles.jsonl").read_text().splitlines()[0])
    assert header["fingerprints"]["image"]["crs"] == "EPSG:32633"


def test_the_worker_reports_the_facts_of_an_error(tmp_path, image, model):
    predict(Job(image=image, cache_dir=tmp_path / "c", model=model))
    job = Job(image=image, cache_dir=tmp_path / "c", model=model, gsd_m=0.2)
    proc = subprocess.run([sys.executable, "-m", "engine.worker"], input=json.dumps(job_to_json(job)) + "\n",
                          capture_output=True, text=True, timeout=120)
    error = [json.loads(line) for line in proc.stdout.splitlines()][-1]
    assert proc.returncode == 2 and error["event"] == "error" and error["type"] == "CacheMismatchError"
    assert error["data"] == {"what": "settings", "differences": ["gsd"], "start_afresh_fixes": True,
                             "cache_dir": str(tmp_path / "c")}
