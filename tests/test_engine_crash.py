"""Crash safety: SIGKILL a real prediction process at many points, resume, compare with a clean run."""

import os
import random
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
from tests.rasters import snapshot, write_raster

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DRIVER = textwrap.dedent(
    """
    import sys
    from engine.run.predict import predict
    from engine.settings import Job
    job = Job(image=sys.argv[1], cache_dir=sys.argv[2], model=sys.argv[3], vector_format=sys.argv[4])
    predict(job, progress=lambda p: print(p.done, flush=True))
    print("complete", flush=True)
    """
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("crash")
    rng = np.random.default_rng(7)
    img = np.full((3, 300, 300), 15, np.uint8)
    for _ in range(120):
        c, r, s = rng.integers(0, 288), rng.integers(0, 288), rng.integers(8, 14)
        img[:, r : r + s, c : c + s] = rng.integers(150, 255)
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
def test_sigkill_at_many_points_then_resume_equals_clean_run(setup, fmt):
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
    assert progress_seen == sorted(progress_seen)  # commits are never lost
    predict(Job(image=image, cache_dir=cache, model=model, vector_format=fmt))
    result = snapshot(cache, vector)
    assert result[0] == clean[0]
    assert result[1] == clean[1]
    np.testing.assert_array_equal(result[2], clean[2])
