"""Crash safety: SIGKILL a real prediction process at many points, resume, compare with a clean run."""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from engine.cache.status import cache_status
from engine.run.predict import predict
from engine.settings import Job
from tests.onnx_models import passthrough_model
from tests.rasters import overview_oracle, read_confidence, read_overviews, snapshot, speckled_image, write_raster

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A small mosaic geometry, so that this 300 px image gets five overview levels of several
# tiles and VRT trees several nodes deep; the mosaic is refreshed after every commit, so that
# kills also land while it is being written.
MOSAIC_SETUP = textwrap.dedent(
    """
    import engine.cache.semantic as semantic
    from engine.cache.vrt import MosaicGeometry
    semantic.mosaic_geometry = lambda core_px: MosaicGeometry(tile_px=16, leaf_tiles=2, leaf0_px=64, fanout=2)
    semantic.GeotiffSemanticCache.refresh_interval_s = 0.0
    semantic.GeotiffSemanticCache.refresh_share = float("inf")
    """
)
OVERVIEW_TILE_PX = 16

DRIVER = MOSAIC_SETUP + textwrap.dedent(
    """
    import sys
    from engine.run.predict import predict
    from engine.settings import Job
    job = Job(image=sys.argv[1], cache_dir=sys.argv[2], model=sys.argv[3], vector_format=sys.argv[4])
    predict(job, progress=lambda p: print(p.done, flush=True))
    print("complete", flush=True)
    """
)


@pytest.fixture
def small_mosaic():
    """The driver's mosaic geometry in this process too (a cache keeps the geometry it was made with)."""
    import engine.cache.semantic as semantic

    cls = semantic.GeotiffSemanticCache
    saved = semantic.mosaic_geometry, cls.refresh_interval_s, cls.refresh_share
    exec(MOSAIC_SETUP, {})
    yield
    semantic.mosaic_geometry, cls.refresh_interval_s, cls.refresh_share = saved


def committed_cores(cache) -> list:
    lines = (cache / "tiles.jsonl").read_text().splitlines()[1:]
    return [rec["bbox"] for rec in map(json.loads, lines) if rec["cache_files"].get("semantic")]


def assert_mosaic_readable(cache) -> None:
    """Whatever the moment of the kill, the mosaic and each overview level open and read in full."""
    if not (cache / "confidence.vrt").exists():
        return
    read_confidence(cache)
    read_overviews(cache)


def assert_overviews_hold_the_committed_tiles(cache, image, model, fmt, scratch) -> None:
    """Opening the cache (here a copy of it) rebuilds what the kill left half-done: the overviews then
    hold exactly the committed tiles."""
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(cache, scratch)
    predict(Job(image=image, cache_dir=scratch, model=model, vector_format=fmt), cancelled=lambda: True)
    if not (scratch / "confidence.vrt").exists():
        return
    cores = committed_cores(scratch)
    got = read_overviews(scratch)
    if not cores:  # overviews start with the first tile
        assert got == []
        return
    want = overview_oracle(read_confidence(scratch), cores, OVERVIEW_TILE_PX)
    assert len(got) == len(want) == 5
    for level, (g, w) in enumerate(zip(got, want), start=1):
        np.testing.assert_array_equal(g, w, err_msg=f"overview level {level}")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("crash")
    img = speckled_image(120, seed=7)
    image = write_raster(tmp / "img.tif", img)
    model = passthrough_model(tmp / "m.onnx", tile_size_px=64, overlap_px=16)
    return tmp, image, model, DRIVER


def run_and_kill(driver, image, cache, model, fmt, after_tiles, jitter_s):
    """Start a prediction; SIGKILL it once ``after_tiles`` tiles have committed, plus ``jitter_s``."""
    # Run from the repository root, so ``-c`` code imports this checkout's engine.
    proc = subprocess.Popen([sys.executable, "-c", driver, str(image), str(cache), str(model), fmt], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.strip() == "complete":
                break
            if int(line) >= after_tiles:
                time.sleep(jitter_s)
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.wait(timeout=60)
        proc.stdout.close()


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["shp", "gpkg"])
def test_sigkill_at_many_points_then_resume_equals_clean_run(setup, fmt, small_mosaic):
    tmp, image, model, driver = setup
    vector = f"crowns.{fmt}"
    predict(Job(image=image, cache_dir=tmp / f"clean_{fmt}", model=model, vector_format=fmt))
    clean = snapshot(tmp / f"clean_{fmt}", vector)
    total = cache_status(tmp / f"clean_{fmt}").total
    assert total == 36  # 300 px at 64/16: 6 x 6 windows inside the image

    rng = random.Random(fmt)
    cache = tmp / f"killed_{fmt}"
    # Kill points spread over the run: before the first commit, during, and near the end,
    # each with a random delay so the kill lands in reading, inference or mid-write.
    targets = [0, 1, 3, 8, 13, 20, 27, 33, 40, 46, 48]
    progress_seen = []
    for after in targets:
        run_and_kill(driver, image, cache, model, fmt, after, rng.uniform(0, 0.02))
        status = cache_status(cache)
        assert status.state in ("partial", "complete", "empty")
        progress_seen.append(status.done)
        assert_mosaic_readable(cache)
        assert_overviews_hold_the_committed_tiles(cache, image, model, fmt, tmp / f"scratch_{fmt}")
    assert progress_seen == sorted(progress_seen)  # commits are never lost
    predict(Job(image=image, cache_dir=cache, model=model, vector_format=fmt))
    result = snapshot(cache, vector)
    assert result[0] == clean[0]
    assert result[1] == clean[1]
    np.testing.assert_array_equal(result[2], clean[2])
    for level, (got, want) in enumerate(zip(read_overviews(cache), read_overviews(tmp / f"clean_{fmt}")), start=1):
        np.testing.assert_array_equal(got, want, err_msg=f"overview level {level}")
    assert_no_stray_mosaic_files(cache)
    if fmt == "shp":  # the spatial index is rebuilt after the kills and lists every crown
        assert (cache / "crowns.qix").exists() and not (cache / "crowns.qix.writing").exists()
        assert indexed_crowns(cache / "crowns.shp") == len(clean[1])


def assert_no_stray_mosaic_files(cache) -> None:
    """Every overview tile on disk is listed by the mosaic (superseded ones were deleted)."""
    listed = set()
    for vrt in [cache / "confidence.vrt", *(cache / "mosaic").rglob("*.vrt")]:
        for src in re.findall(r'relativeToVRT="1">([^<]+)<', vrt.read_text()):
            listed.add(os.path.normpath(vrt.parent / src))
    on_disk = {os.path.normpath(p) for p in (cache / "mosaic").rglob("*.tif")}
    assert on_disk and on_disk <= listed


def indexed_crowns(shp) -> int:
    """Crowns a spatial query over the whole layer finds through the .qix."""
    from osgeo import ogr

    ds = ogr.Open(str(shp))
    layer = ds.GetLayer(0)
    assert layer.TestCapability(ogr.OLCFastSpatialFilter)  # GDAL found and uses the index
    minx, maxx, miny, maxy = layer.GetExtent()
    layer.SetSpatialFilterRect(minx, miny, maxx, maxy)
    return layer.GetFeatureCount()
