"""Predicting on a real Dask cluster (``dask scheduler`` and ``dask worker`` processes on loopback).

The cluster's cache must be the single-process cache: same manifest lines, crowns and
confidence. Workers read the raster themselves, from a shared path, an S3-compatible
server (moto) or an HTTP server; bad input gets the sentence it gets locally.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from engine import __version__
from engine.cache.manifest import read_manifest
from engine.errors import ClusterError, ModelError
from engine.run.predict import predict
from engine.settings import Job
from engine.worker import job_to_json
from tests.clusters import ROOT, DaskCluster, HttpServer, S3Server, free_port
from tests.onnx_models import canopy_centres_model
from tests.rasters import assert_same_cache, crowns_image, snapshot, write_raster
from tests.worker_process import drive_worker

SQUARES = [(10 + 40 * i, 12 + 40 * j, 12) for i in range(8) for j in range(5)]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 49-tile raster (also as a COG in a served folder), the crown model, and the single-process cache."""
    tmp = tmp_path_factory.mktemp("dask")
    image = write_raster(tmp / "ortho.tif", crowns_image(320, 320, SQUARES))
    served = tmp / "served"
    served.mkdir()
    write_raster(served / "ortho.tif", crowns_image(320, 320, SQUARES), driver="COG", blocksize=128)
    model = canopy_centres_model(tmp / "crowns.onnx", tile_size_px=64, overlap_px=16)
    predict(Job(image=image, cache_dir=tmp / "clean", model=model))
    return SimpleNamespace(tmp=tmp, image=image, served=served, model=model, clean=snapshot(tmp / "clean"))


@pytest.fixture(scope="module")
def s3(scene):
    server = S3Server(scene.tmp)
    yield server
    server.close()


@pytest.fixture(scope="module")
def cluster(scene, s3):
    """A scheduler and two single-threaded workers that can reach the S3 server."""
    with DaskCluster(scene.tmp / "cluster", env=s3.env) as c:
        c.add_worker("w1")
        c.add_worker("w2")
        c.wait_for_workers(2)
        yield c


def run_cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", "predict", *map(str, args), "--quiet"], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300)


def test_scheduler_option_writes_the_cache_a_single_process_writes(scene, cluster):
    out = scene.tmp / "cli_scheduler"
    done = run_cli(scene.image, "--model", scene.model, "--out", out, "--scheduler", cluster.address)
    assert done.returncode == 0, done.stderr
    assert_same_cache(snapshot(out), scene.clean)
    # Where tiles ran is no part of the cache: same fingerprints, and a local run finds nothing to do.
    header, clean_header = read_manifest(out).header, read_manifest(scene.tmp / "clean").header
    assert header["fingerprints"] == clean_header["fingerprints"]
    again = predict(Job(image=scene.image, cache_dir=out, model=scene.model))
    assert again.state == "complete" and again.done == 49


def test_workers_option_starts_a_local_cluster(scene):
    out = scene.tmp / "api_workers"
    result = predict(Job(image=scene.image, cache_dir=out, model=scene.model, workers=2))
    assert result.state == "complete" and result.done == 49
    assert_same_cache(snapshot(out), scene.clean)


def test_without_a_cluster_dask_is_never_imported(scene):
    code = ("import sys\nfrom engine.run.predict import predict\nfrom engine.settings import Job\n"
            f"predict(Job(image={str(scene.image)!r}, cache_dir={str(scene.tmp / 'no_dask')!r}, "
            f"model={str(scene.model)!r}))\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_workers_read_a_raster_on_s3(scene, s3, cluster, monkeypatch):
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    path = s3.upload("orthos", "city/ortho.tif", scene.image)
    out = scene.tmp / "s3"
    result = predict(Job(image=path, cache_dir=out, model=scene.model, scheduler=cluster.address))
    assert result.state == "complete"
    assert_same_cache(snapshot(out), scene.clean)
    header = read_manifest(out).header
    assert header["image"] == "/vsis3/orthos/city/ortho.tif"
    fingerprint = header["fingerprints"]["image"]
    assert fingerprint["file_size"] == scene.image.stat().st_size and fingerprint["mtime_ns"] > 0


def test_workers_read_a_cloud_optimised_geotiff_over_http(scene, cluster):
    server = HttpServer(scene.served, scene.tmp)
    try:
        out = scene.tmp / "http"
        url = f"/vsicurl/{server.url}/ortho.tif"
        result = predict(Job(image=url, cache_dir=out, model=scene.model, scheduler=cluster.address))
        assert result.state == "complete"
        assert_same_cache(snapshot(out), scene.clean)
        assert read_manifest(out).header["image"] == url
    finally:
        server.close()


def test_a_worker_that_cannot_open_the_raster_says_what_a_local_run_says(scene, cluster):
    # The client sends the header the server wants; the workers were started without it.
    server = HttpServer(scene.served, scene.tmp, token="secret")
    try:
        url = f"/vsicurl/{server.url}/ortho.tif"
        local = run_cli(url, "--model", scene.model, "--out", scene.tmp / "refused_local")
        on_cluster = run_cli(url, "--model", scene.model, "--out", scene.tmp / "refused_cluster", "--scheduler",
                             cluster.address, env={"GDAL_HTTP_HEADERS": "X-Token: secret"})
    finally:
        server.close()
    assert local.returncode == on_cluster.returncode == 2
    line = local.stderr.strip().splitlines()
    assert len(line) == 1 and line[0].startswith(f"error: GDAL cannot open the raster {url} (")
    assert on_cluster.stderr.strip().splitlines()[-1] == line[0]
    assert read_manifest(scene.tmp / "refused_cluster").tiles == []  # the header only: a valid, empty cache


def test_an_unreachable_scheduler_is_one_sentence(scene):
    address = f"tcp://127.0.0.1:{free_port()}"
    done = run_cli(scene.image, "--model", scene.model, "--out", scene.tmp / "unreachable", "--scheduler", address,
                   env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: No Dask scheduler answers at {address} (")
    assert "start a scheduler there with: dask scheduler" in lines[0]


def test_a_worker_with_another_engine_version_is_refused(scene, tmp_path):
    other = tmp_path / "other_engine"
    shutil.copytree(ROOT / "engine", other / "engine", ignore=shutil.ignore_patterns("__pycache__"))
    init = other / "engine" / "__init__.py"
    init.write_text(init.read_text().replace(f'__version__ = "{__version__}"', '__version__ = "0.0.1"'))
    with DaskCluster(tmp_path / "cluster") as c:
        c.add_worker("old", pythonpath=other)
        c.wait_for_workers(1)
        with pytest.raises(ClusterError) as caught:
            predict(Job(image=scene.image, cache_dir=tmp_path / "c", model=scene.model, scheduler=c.address))
    assert caught.value.what == "engine"
    assert str(caught.value) == (f"The Dask worker at {caught.value.address} runs version 0.0.1 of the engine and "
                                 f"this run version {__version__}.")


def test_the_model_is_checked_by_its_sha256_on_the_worker(scene, cluster):
    from distributed import Client

    from engine.run import dask as cluster_run
    from engine.run.predict import prepare

    # A model no worker has seen yet (a worker checks a model once, when it first gets it).
    model = canopy_centres_model(scene.tmp / "unseen.onnx", tile_size_px=64, overlap_px=16,
                                 extra_metadata={"name": "a model the workers have not seen"})
    prepared = prepare(Job(image=scene.image, cache_dir=scene.tmp / "unused", model=model))
    damaged = bytearray(Path(model).read_bytes())
    damaged[-1] ^= 0xFF
    with Client(cluster.address, set_as_default=False) as client:
        blob = client.submit(cluster_run._TASK, cluster_run._dumps(prepared.plan), bytes(damaged),
                             [cluster_run._tile_args(prepared.tiles[0])], __version__, pure=False).result()
    kind, error, _ = cluster_run._loads(blob)
    assert kind == "error" and isinstance(error, ModelError)
    assert "is not the one this run uses (its SHA-256 differs)" in str(error)


def test_the_plugins_worker_drives_a_cluster_of_plain_engine_workers(scene, cluster):
    """The plugin's engine is tcd_qgis_plugin.engine, the workers' is engine: what travels names neither."""
    out = scene.tmp / "plugin"
    job = Job(image=scene.image, cache_dir=out, model=scene.model, scheduler=cluster.address)
    events, stderr = drive_worker(job_to_json(job), cwd=scene.tmp)
    assert events[-1]["event"] == "finished", (events[-1], stderr)
    assert_same_cache(snapshot(out), scene.clean)
