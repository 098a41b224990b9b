"""Dask benchmarks (run on demand, never in the test suite).

    .venv/bin/python -m benchmarks.dask_scaling [--models default,segformer] [--size 3584] [--quick]

Prints, each measured in this one run:

1. scaling on this machine: the threaded single process (all cores) against 1 and 2
   single-threaded Dask workers (``LocalCluster`` started beforehand, as a running
   cluster would be) on the same raster and model; MP/s, speed against the threaded
   process, scaling efficiency E(N) = speed(N) / (N x speed(1)), and whether the
   caches are byte-identical to the single process's;
2. the committing side's cost per tile against a worker's time per tile, for each
   model: a worker's ``TileProcessor.process`` with a one-thread session; the bytes a
   tile sends back; and what the committer spends on it: Dask's round trip per task
   (submit, schedule, gather a result of that size: measured with tasks that do
   nothing else), shared by the tiles a task carries (``tiles_per_task``), unpickling,
   and ``Cache.commit`` (writes and fsyncs), once on one thread and once with the
   overviews on the mosaic's own thread, as a cluster run commits. Their ratio is
   the number of workers at which the committer saturates;
3. the alternative split, shards merged in order: each worker writes its own
   crash-safe sub-cache and one process merges them in plan order. The merge still
   writes every tile into the one cache (one crowns file with ids in plan order, one
   manifest), so it pays the commit plus reading each tile back from its sub-cache;
4. (``--parts resume``) resume start-up with a synthetic 1,000,000-tile manifest: reading
   it line by line, then with its checkpoint; ``Cache.open`` and ``predict`` on the
   complete cache; and, for a cache with a million confidence files, the check for
   lost files and the confidence folder's rollback.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from benchmarks.rasters import make_raster  # noqa: E402
from engine.models.spec import default_model_path  # noqa: E402


def timed_predict(image: Path, model: Path, cache: Path, **job_args) -> float:
    from engine.run.predict import predict
    from engine.settings import Job

    t = time.perf_counter()
    result = predict(Job(image=image, cache_dir=cache, model=model, **job_args))
    assert result.state == "complete"
    return time.perf_counter() - t


def same_cache(a: Path, b: Path) -> bool:
    import numpy as np

    from tests.rasters import snapshot

    sa, sb = snapshot(a), snapshot(b)
    return sa[0] == sb[0] and sa[1] == sb[1] and np.array_equal(sa[2], sb[2])


def _make_cpu_probe():
    def cpu_seconds():
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    return cpu_seconds  # a local function: Dask ships it by value


def scaling(tmp: Path, name: str, image: Path, warm_image: Path, model: Path, mp: float) -> None:
    """Wall time, and CPU seconds of the workers and of this process (client, scheduler, committer)."""
    from distributed import Client, LocalCluster

    cpu = time.process_time()
    threaded = timed_predict(image, model, tmp / f"{name}_threaded")
    rows = [("threaded single process", threaded, time.process_time() - cpu, None, None)]
    probe = _make_cpu_probe()
    for n in (1, 2):
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
                Client(cluster, set_as_default=False) as client:
            # A small run first warms the workers (imports, model session), as a long run would amortise them.
            timed_predict(warm_image, model, tmp / f"{name}_warm{n}", scheduler=cluster.scheduler_address)
            before, cpu = sum(client.run(probe).values()), time.process_time()
            seconds = timed_predict(image, model, tmp / f"{name}_dask{n}", scheduler=cluster.scheduler_address)
            workers_cpu, own_cpu = sum(client.run(probe).values()) - before, time.process_time() - cpu
        rows.append((f"{n} single-threaded worker{'s' if n > 1 else ''}", seconds, own_cpu, workers_cpu,
                     tmp / f"{name}_dask{n}"))
    one = rows[1][1]
    load = os.getloadavg()[0]
    print(f"\n[{name}] scaling, {mp:.1f} MP raster, {os.cpu_count()} cores, load average {load:.1f} at the end")
    print("| run | seconds | MP/s | speed / threaded | efficiency E(N) | workers' CPU s | this process's CPU s |"
          " cache identical |")
    print("|---|---|---|---|---|---|---|---|")
    for label, seconds, own_cpu, workers_cpu, cache in rows:
        n = 0 if cache is None else int(label[0])
        eff = f"{one / (n * seconds):.2f}" if n else "-"
        same = "-" if cache is None else ("yes" if same_cache(tmp / f"{name}_threaded", cache) else "NO")
        wcpu = "-" if workers_cpu is None else f"{workers_cpu:.1f}"
        print(f"| {label} | {seconds:.1f} | {mp / seconds:.3f} | {threaded / seconds:.2f} | {eff} | {wcpu} | "
              f"{own_cpu:.1f} | {same} |")


def dask_round_trip_s(blob_bytes: int, tasks: int = 400) -> float:
    """Client-side wall time per task when tasks return ``blob_bytes`` bytes and do nothing else."""
    from distributed import Client, LocalCluster, wait

    payload = os.urandom(blob_bytes)

    def make():
        def echo(i, data):
            return data

        return echo

    echo = make()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster, set_as_default=False) as client:
        data = client.scatter(payload, broadcast=True)
        client.gather([client.submit(echo, i, data, pure=False) for i in range(8)])  # warm-up
        window, in_flight, done = 8, [], 0
        t = time.perf_counter()
        submitted = 0
        while done < tasks:
            while submitted < tasks and len(in_flight) < window:
                in_flight.append(client.submit(echo, submitted, data, pure=False))
                submitted += 1
            with client.as_current():
                finished = wait(in_flight, return_when="FIRST_COMPLETED").done
            client.gather(list(finished))
            in_flight = [f for f in in_flight if f not in finished]
            done += len(finished)
        return (time.perf_counter() - t) / tasks


def committer(tmp: Path, name: str, image: Path, model: Path) -> dict:
    """Per tile: a worker's time, the bytes sent back, and the committing side's costs."""
    from engine.cache.store import Cache
    from engine.run.dask import _dumps, _loads, tiles_per_task
    from engine.run.predict import prepare
    from engine.run.tile import TileProcessor
    from engine.settings import Job

    job = Job(image=image, cache_dir=tmp / f"{name}_commit", model=model, threads=1)
    prepared = prepare(job)
    processor = TileProcessor(prepared.plan)
    tiles = prepared.tiles
    processor.process(tiles[0])  # warm-up (session, first read)
    worker_s, blobs = [], []
    for tile in tiles:
        t = time.perf_counter()
        outputs = processor.process(tile)
        worker_s.append(time.perf_counter() - t)
        blobs.append(_dumps(("ok", outputs)))
    processor.close()
    unpickle_s = []
    outputs_all = []
    for blob in blobs:
        t = time.perf_counter()
        _, outputs = _loads(blob)
        unpickle_s.append(time.perf_counter() - t)
        outputs_all.append(outputs)
    # One thread, the parts of a commit timed (the mosaic's refreshes included) ...
    cache = Cache.open(job.cache_dir, prepared.header, prepared.plan.info)
    parts = _time_parts(cache)
    t = time.perf_counter()
    for outputs in outputs_all:
        cache.commit(outputs)
    cache.close()  # the mosaic's last refresh: its work is per tile too, done every few seconds in a long run
    one_thread_s = (time.perf_counter() - t) / len(blobs)
    # ... and as a cluster run commits: the overviews on the mosaic's own thread.
    shutil.rmtree(job.cache_dir)
    cache = Cache.open(job.cache_dir, prepared.header, prepared.plan.info, mosaic_thread=True)
    mosaic_s = _time_background(cache)
    t = time.perf_counter()
    for outputs in outputs_all:
        cache.commit(outputs)
    cache.close()
    two_threads_s = (time.perf_counter() - t) / len(blobs)
    size = statistics.mean(len(b) for b in blobs)
    worker = statistics.mean(worker_s[1:] or worker_s)
    per_task = tiles_per_task(worker)
    round_trip = dask_round_trip_s(int(size * per_task)) / per_task
    merge_s = merge_cost(tmp, name, job.cache_dir, prepared)
    return {"worker": worker, "bytes": size, "per_task": per_task,
            "unpickle": statistics.mean(unpickle_s), "commit": one_thread_s, "commit_2t": two_threads_s,
            "mosaic_thread": sum(mosaic_s) / len(blobs),
            "round_trip": round_trip, "merge": merge_s, "tiles": len(tiles),
            "parts": {k: sum(v) / len(blobs) for k, v in parts.items()}}


def _time_background(cache) -> list:
    """Seconds of each refresh the mosaic's thread runs."""
    seconds = []
    semantic = cache._semantic
    inner = semantic._refresh_in_background

    def timed(*args):
        t = time.perf_counter()
        try:
            return inner(*args)
        finally:
            seconds.append(time.perf_counter() - t)

    semantic._refresh_in_background = timed
    return seconds


def _time_parts(cache) -> dict:
    """Time what a commit calls (confidence file, crowns, manifest line, summary, mosaic), summed per part."""
    parts: dict[str, list] = {}

    def wrap(obj, attr, label):
        if obj is None or not hasattr(obj, attr):
            return
        inner = getattr(obj, attr)

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                parts.setdefault(label, []).append(time.perf_counter() - t)

        setattr(obj, attr, timed)

    wrap(cache._semantic, "write_tiles", "confidence files (write, fsync; one folder sync)")
    wrap(cache._vectors, "append", "crowns (append, one sync)")
    wrap(cache._manifest, "commit", "manifest lines (append, one fsync)")
    wrap(cache.summary, "add", "summary.json")
    wrap(cache._semantic, "refresh", "mosaic and overviews")
    return parts


def merge_cost(tmp: Path, name: str, shard: Path, prepared) -> float:
    """Per tile: read a tile back from a finished sub-cache (its GeoTIFF, its crowns) and commit it to the cache."""
    from osgeo import ogr

    from engine.cache.manifest import read_manifest
    from engine.cache.store import Cache, TileOutputs
    from engine.postprocess.vectorise import Crown

    records = read_manifest(shard).tiles
    fields = None
    seconds = []
    t_close = 0.0
    with Cache.open(tmp / f"{name}_merged", prepared.header, prepared.plan.info) as cache:
        ds = ogr.Open(str(shard / "crowns.shp"))
        layer = ds.GetLayer(0)
        defn = layer.GetLayerDefn()
        fields = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
        for record in records:
            t = time.perf_counter()
            rel = record.cache_files.get("semantic")
            tiff = (shard / rel).read_bytes() if rel else None
            crowns = []
            for fid in range(record.features_end - record.features, record.features_end):
                feat = layer.GetFeature(fid)
                attrs = {k: feat.GetField(k) for k in fields if k not in ("id", "score", "class", "class_idx",
                                                                           "tile_id")}
                crowns.append(Crown(bytes(feat.GetGeometryRef().ExportToWkb()), feat.GetField("score"),
                                    feat.GetField("class"), feat.GetField("class_idx"), attrs))
            cache.commit(TileOutputs(record.tile_id, tuple(record.bbox), record.status == "skipped", tiff,
                                     tuple(crowns)))
            seconds.append(time.perf_counter() - t)
        ds = None
        t_close = time.perf_counter()
    t_close = time.perf_counter() - t_close  # closing the merged cache: the mosaic's last refresh
    return (sum(seconds) + t_close) / len(seconds)


def print_committer(rows: dict) -> None:
    print("\n[committer] per tile, the committing process against one single-threaded worker (commit: every"
          " commit and the closing mosaic refresh, over the tiles; Dask's round trip shared by the tiles of a task)")
    print("| model | worker s/tile | bytes/tile | tiles/task | Dask round trip | unpickle | commit, one thread |"
          " commit, overviews on their thread (that thread's busy time) | committer s/tile |"
          " workers at saturation (one thread) | workers at saturation | shard merge s/tile |"
          " workers at saturation (shards) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        one = r["round_trip"] + r["unpickle"] + r["commit"]
        cost = r["round_trip"] + r["unpickle"] + r["commit_2t"]
        merge = r["round_trip"] + r["merge"]  # a shard's tile still costs its task's round trip
        print(f"| {name} | {r['worker']:.3f} | {r['bytes'] / 1024:.0f} KiB | {r['per_task']} | "
              f"{r['round_trip'] * 1000:.1f} ms | {r['unpickle'] * 1000:.2f} ms | {r['commit'] * 1000:.1f} ms | "
              f"{r['commit_2t'] * 1000:.1f} ms ({r['mosaic_thread'] * 1000:.1f} ms) | {cost * 1000:.1f} ms | "
              f"{r['worker'] / one:.0f} | {r['worker'] / cost:.0f} | {r['merge'] * 1000:.1f} ms | "
              f"{r['worker'] / merge:.0f} |")


def resume_million(tmp: Path, n_side: int = 1000) -> None:
    """Resume start-up on a synthetic cache of n_side² tiles of 64 px (the manifest is real; no tile was predicted)."""
    import rasterio
    from rasterio.transform import Affine

    from engine.cache.manifest import MANIFEST_NAME, TileRecord, read_manifest
    from engine.cache.semantic import GeotiffSemanticCache
    from engine.cache.store import Cache, _first_lost_file
    from engine.run.predict import prepare
    from engine.settings import Job
    from tests.onnx_models import passthrough_model

    size = 64 * n_side
    image = tmp / "country.tif"
    with rasterio.open(image, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=Affine(0.1, 0, 500000, 0, -0.1, 6000000), tiled=True,
                       blockxsize=512, blockysize=512, compress="deflate", sparse_ok=True):
        pass  # a sparse file: the header only
    model = passthrough_model(tmp / "tiny.onnx", tile_size_px=64, overlap_px=0)
    job = Job(image=image, cache_dir=tmp / "country_tcd", model=model, outputs={"instances"})
    t = time.perf_counter()
    prepared = prepare(job)
    plan_s = time.perf_counter() - t
    n = len(prepared.tiles)
    features_end = 0  # no crown in the crowns file: its size does not enter a resume (truncate reads its header)
    with Cache.open(job.cache_dir, prepared.header, prepared.plan.info) as cache:
        batch = []
        for tile in prepared.tiles:
            batch.append(TileRecord(tile.tile_id, tuple(tile.bbox_px), "done", {"instances": "crowns.shp"},
                                    0, 0, 40.96, 20.0))
            if len(batch) == 20000:
                cache._manifest.commit(batch)  # one fsync per batch: the lines are what commits write
                for record in batch:
                    cache.records.append(record)
                    cache.summary.summary.add_tile(record, [])
                batch = []
        cache._manifest.commit(batch)
        for record in batch:
            cache.records.append(record)
            cache.summary.summary.add_tile(record, [])
        cache.summary.add([(cache.records[-1], [])])  # summary.json as a run leaves it (counts the last tile twice:
        cache.summary.summary.tiles_done = n  # fixed here, since only the count matters to a resume)
        from engine.cache.summary import write_summary

        write_summary(job.cache_dir, cache.summary.summary)
    manifest_mb = (job.cache_dir / MANIFEST_NAME).stat().st_size / 1e6
    bare = tmp / "bare"
    bare.mkdir()
    shutil.copyfile(job.cache_dir / MANIFEST_NAME, bare / MANIFEST_NAME)
    t = time.perf_counter()
    state = read_manifest(bare)
    every_line_s = time.perf_counter() - t
    assert len(state.tiles) == n
    t = time.perf_counter()
    state = read_manifest(job.cache_dir)
    checkpoint_s = time.perf_counter() - t
    assert len(state.tiles) == n and state.features_end == features_end
    t = time.perf_counter()
    with Cache.open(job.cache_dir, prepared.header, prepared.plan.info) as cache:
        assert cache.done == n
    open_s = time.perf_counter() - t
    from engine.run.predict import predict

    t = time.perf_counter()
    result = predict(job)
    predict_s = time.perf_counter() - t
    assert result.state == "complete" and result.done == n

    # A cache with a confidence file per tile: the lost-file check, and the folder's rollback.
    folder = tmp / "semantic_cache"
    (folder / "semantic").mkdir(parents=True)
    for i in range(1, n + 1):
        open(folder / "semantic" / f"tile_{i:06d}.tif", "wb").close()
    records = [TileRecord(i, (0, 0, 1, 1), "done", {"semantic": f"semantic/tile_{i:06d}.tif"}) for i in range(1, n + 1)]
    from engine.cache.manifest import TileRecords, _Facts

    facts = _Facts()
    for record in records:
        facts.add(record, 0)
    lazy = TileRecords(path=None, prefix=facts)  # what a checkpointed manifest gives: no line parsed
    del records
    t = time.perf_counter()
    assert _first_lost_file(folder, lazy) is None
    lost_s = time.perf_counter() - t
    eager = TileRecords([TileRecord(i, (0, 0, 1, 1), "done", {"semantic": f"semantic/tile_{i:06d}.tif"})
                         for i in range(1, n + 1)])
    semantic = GeotiffSemanticCache(folder, 1, 1, prepared.plan.info.crs_wkt, prepared.plan.info.transform, ["tree"])
    t = time.perf_counter()
    semantic.rollback(eager)
    rollback_s = time.perf_counter() - t

    print(f"\n[resume] synthetic cache of {n:,} tiles, manifest {manifest_mb:.0f} MB")
    print("| step | seconds |")
    print("|---|---|")
    print(f"| read the manifest line by line (no checkpoint) | {every_line_s:.2f} |")
    print(f"| read the manifest with its checkpoint | {checkpoint_s:.2f} |")
    print(f"| Cache.open + close of the complete cache (resume start-up of the cache) | {open_s:.2f} |")
    print(f"| predict() on the complete cache (prepare, plan {n:,} tiles, open, close) | {predict_s:.2f} |")
    print(f"| of which prepare (describe, model, plan_tiles) | {plan_s:.2f} |")
    print(f"| lost-confidence-file check, {n:,} files (one listing) | {lost_s:.2f} |")
    print(f"| confidence folder rollback (semantic.py, iterates every record) | {rollback_s:.2f} |")


def print_commit_parts(rows: dict) -> None:
    print("\n[commit] where a commit's time goes, ms per tile (mean over the run's tiles)")
    names = sorted({k for r in rows.values() for k in r["parts"]})
    print("| model | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r['parts'].get(k, 0) * 1000:.1f}" for k in names) + " |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="default,segformer", help="comma-separated: default, segformer")
    parser.add_argument("--size", type=int, default=3584, help="raster edge in pixels (0.1 m)")
    parser.add_argument("--quick", action="store_true", help="a 1792 px raster")
    parser.add_argument("--commit-size", type=int, default=7168,
                        help="committer: raster edge in pixels (enough tiles to amortise the mosaic's per-run work)")
    parser.add_argument("--parts", default="scaling,committer", help="comma-separated: scaling, committer, resume")
    parser.add_argument("--resume-side", type=int, default=1000, help="resume: tiles per side of the synthetic cache")
    args = parser.parse_args()
    size = 1792 if args.quick else args.size
    parts = set(args.parts.split(","))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if "resume" in parts:
            resume_million(tmp, args.resume_side)
        if not parts & {"scaling", "committer"}:
            return
        image = make_raster(tmp / "forest.tif", size)
        warm_image = make_raster(tmp / "warm.tif", 1024, seed=3)
        commit_image = image if args.commit_size == size else make_raster(tmp / "commit.tif", args.commit_size, seed=4)
        models = {}
        for name in args.models.split(","):
            if name == "default":
                models["default model"] = default_model_path()
            elif name == "segformer":
                from benchmarks.side_by_side import build_segformer

                models["SegFormer-b0"] = build_segformer(tmp / "segformer_b0.onnx")
        rows = {}
        for name, model in models.items():
            key = name.split()[0].lower()
            if "scaling" in parts:
                scaling(tmp, key, image, warm_image, model, size * size / 1e6)
            if "committer" in parts:
                rows[name] = committer(tmp, key, commit_image, model)
        if rows:
            print_committer(rows)
            print_commit_parts(rows)


if __name__ == "__main__":
    main()
