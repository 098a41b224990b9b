"""Nothing lost, nothing twice: real processes killed with SIGKILL during a run on a Dask cluster.

Each test starts its own ``dask scheduler`` and ``dask worker`` processes on loopback,
kills one of them (a worker, the committing process, the scheduler) while tiles are
in flight, and checks that the cache ends up identical to a clean single-process run.
"""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from types import SimpleNamespace

import pytest

from engine.cache.status import cache_status
from engine.run.predict import predict
from engine.settings import Job
from tests.clusters import ROOT, DaskCluster
from tests.onnx_models import slow_model
from tests.rasters import assert_same_cache, crowns_image, snapshot, write_raster

SQUARES = [(10 + 40 * i, 12 + 40 * j, 12) for i in range(8) for j in range(5)]

# Predicts on the cluster at argv[4], printing each commit; the committing process of the tests.
DRIVER = textwrap.dedent(
    """
    import sys
    from engine.run.predict import predict
    from engine.settings import Job
    job = Job(image=sys.argv[1], cache_dir=sys.argv[2], model=sys.argv[3], scheduler=sys.argv[4])
    predict(job, progress=lambda p: print(p.done, flush=True))
    print("complete", flush=True)
    """
)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """49 tiles with a model slow enough (tens of ms a tile) to be caught mid-run; the clean cache."""
    tmp = tmp_path_factory.mktemp("dask_kill")
    image = write_raster(tmp / "ortho.tif", crowns_image(320, 320, SQUARES))
    model = slow_model(tmp / "slow.onnx", size=384, matmuls=16)
    predict(Job(image=image, cache_dir=tmp / "clean", model=model))
    return SimpleNamespace(tmp=tmp, image=image, model=model, clean=snapshot(tmp / "clean"))


@pytest.mark.usefixtures("per_tile_commits")
def test_a_worker_killed_mid_run_loses_nothing(scene, tmp_path, monkeypatch):
    from distributed import Client

    from engine.run import dask as dask_run

    # One tile a task: with tasks of several tiles, the victim could hand in its last task before the
    # killer sees a fifth commit, and never be caught holding a tile.
    monkeypatch.setattr(dask_run, "TASK_S", 0.0)

    with DaskCluster(tmp_path / "cluster") as cluster:
        cluster.add_worker("survivor")
        victim = cluster.add_worker("victim", nanny=False)
        cluster.wait_for_workers(2)
        with Client(cluster.address, set_as_default=False) as client:
            address = next(a for a, w in client.scheduler_info()["workers"].items() if w["name"] == "victim")
            held, done, finished = [], [0], threading.Event()

            def kill_while_it_holds_tiles():
                # Polled, not from the progress callback: tasks carry several tiles and commits
                # come in plan order, so commits can jump past a task the victim has just finished.
                while not finished.is_set():
                    if done[0] >= 5:
                        tiles = [k for k in client.processing(workers=[address]).get(address, ()) if "tcd-tile" in k]
                        if tiles:  # once: then the scheduler forgets the worker
                            held.extend(tiles)
                            os.killpg(victim.pid, signal.SIGKILL)
                            return
                    time.sleep(0.02)

            killer = threading.Thread(target=kill_while_it_holds_tiles)
            killer.start()
            try:
                result = predict(Job(image=scene.image, cache_dir=tmp_path / "c", model=scene.model,
                                     scheduler=cluster.address), progress=lambda p: done.__setitem__(0, p.done))
            finally:
                finished.set()
                killer.join()
            survivors = len(client.nthreads())
    assert held, "the victim was never caught holding a tile"
    assert victim.wait(timeout=10) == -signal.SIGKILL
    assert survivors == 1
    assert result.state == "complete" and result.done == 49
    assert_same_cache(snapshot(tmp_path / "c"), scene.clean)


def run_driver_and_kill(cache, scene, address, after_tiles):
    """Run DRIVER; SIGKILL it once ``after_tiles`` tiles have committed. Returns the tiles it reported."""
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(scene.image), str(cache), str(scene.model), address],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    last = 0
    try:
        for line in proc.stdout:
            if line.strip() == "complete":
                break
            last = int(line)
            if last >= after_tiles:
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.wait(timeout=60)
        proc.stdout.close()
    return last


@pytest.mark.usefixtures("per_tile_commits")
def test_the_committing_process_killed_resumes_on_the_cluster_or_locally(scene, tmp_path):
    cache = tmp_path / "c"
    with DaskCluster(tmp_path / "cluster") as cluster:
        cluster.add_worker("w1")
        cluster.add_worker("w2")
        cluster.wait_for_workers(2)
        first = run_driver_and_kill(cache, scene, cluster.address, 8)
        after_first = cache_status(cache)
        # Killed again while resuming on the cluster, then finished on this machine alone.
        second = run_driver_and_kill(cache, scene, cluster.address, after_first.done + 12)
        after_second = cache_status(cache)
    assert 8 <= first and after_first.state == "partial" and after_first.done >= first
    assert after_second.state == "partial" and after_second.done >= second > after_first.done
    resumed = []
    result = predict(Job(image=scene.image, cache_dir=cache, model=scene.model),
                     progress=lambda p: p.tile_id and resumed.append(p.tile_id))
    assert result.state == "complete"
    assert resumed == list(range(after_second.done + 1, 50))  # nothing twice: only the missing tiles
    assert_same_cache(snapshot(cache), scene.clean)


def test_losing_the_scheduler_stops_the_run_in_one_sentence_and_it_resumes(scene, tmp_path):
    cache = tmp_path / "c"
    with DaskCluster(tmp_path / "cluster") as cluster:
        cluster.add_worker("w1")
        cluster.wait_for_workers(1)
        proc = subprocess.Popen([sys.executable, "-m", "engine", "predict", str(scene.image), "--model",
                                 str(scene.model), "--out", str(cache), "--scheduler", cluster.address, "--quiet"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while cache_status(cache).done < 8 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.killpg(cluster.scheduler.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0] == (f"error: The connection to the Dask scheduler at {cluster.address} was lost during the run; "
                        f"the tiles committed so far are kept. Run the same predict again, with or without "
                        f"--scheduler, to resume from there.")
    status = cache_status(cache)
    assert status.state == "partial" and 8 <= status.done < 49
    result = predict(Job(image=scene.image, cache_dir=cache, model=scene.model))
    assert result.state == "complete"
    assert_same_cache(snapshot(cache), scene.clean)
