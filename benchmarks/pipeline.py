"""Engine benchmarks (run on demand, not in the test suite).

    .venv/bin/python -m benchmarks.pipeline [--size 4096] [--quick]

Prints, each measured in this one run:
  1. end-to-end speed (both caches written) / model-only speed on the same tiles,
     for a light 1x1-conv model at 512 px, the bundled default model at 1024 px (as
     shipped, and with crowns split on its native 1/4 grid, ``crown_stride_px`` 4, when
     it does not set that key itself) and, with ``--heavy MODEL.onnx``, a heavy model
     (e.g. the SegFormer-b0 that benchmarks/side_by_side.py builds); with megapixels per second;
  2. peak memory (RSS) for a raster 4x larger / peak memory for the base raster;
  3. resume start-up on a complete cache with ~10,000 tiles (seconds).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.rasters import make_raster
from engine.models.runner import OnnxModel
from engine.models.spec import default_model_path
from tests.onnx_models import conv1x1_model

ROOT = Path(__file__).resolve().parent.parent


def run_predict(image: Path, model: Path, cache: Path, **job_args) -> dict:
    """Predict in a fresh process; returns wall time and its peak RSS.

    The peak is the child's VmHWM: ``ru_maxrss`` is kept across exec, so it would
    report this process's own peak (a heavy model run for the model-only figure).
    """
    code = (
        "import json, resource, sys, time\n"
        "from engine.run.predict import predict; from engine.settings import Job\n"
        "t = time.perf_counter()\n"
        f"r = predict(Job(image={str(image)!r}, cache_dir={str(cache)!r}, model={str(model)!r}, **{job_args!r}))\n"
        "hwm = [int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('VmHWM:')]\n"
        "peak = hwm[0] / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "print(json.dumps({'seconds': time.perf_counter() - t, 'done': r.done, 'features': r.features,"
        " 'maxrss_mb': peak}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def model_only_seconds(model_path: Path, tile_px: int, n_tiles: int) -> float:
    model = OnnxModel(model_path)
    raw = np.random.default_rng(0).integers(0, 255, (3, tile_px, tile_px)).astype(np.float32)
    model.run(raw)  # warm-up
    t = time.perf_counter()
    for _ in range(n_tiles):
        model.run(raw)
    return time.perf_counter() - t


def with_metadata(src: Path, dst: Path, extra: dict) -> Path:
    """A copy of an ONNX model with metadata keys added or replaced."""
    import onnx

    model = onnx.load(str(src))
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in extra]
    del model.metadata_props[:]
    for key, value in kept + [(k, json.dumps(v)) for k, v in extra.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(dst))
    return dst


def speed(tmp: Path, image: Path, size: int, name: str, model: Path, tile_px: int):
    from engine.cache.status import cache_status

    e2e = run_predict(image, model, tmp / f"cache_{name}")
    n_tiles = cache_status(tmp / f"cache_{name}").total
    model_s = model_only_seconds(model, tile_px, n_tiles)
    mp = size * size / 1e6
    print(f"[{name}] {n_tiles} tiles of {tile_px} px, {e2e['features']} crowns")
    print(f"[{name}] end-to-end {mp / e2e['seconds']:.2f} MP/s, model-only {mp / model_s:.2f} MP/s "
          f"(same tiles), ratio end-to-end/model-only = {model_s / e2e['seconds']:.2f}; "
          f"peak RSS {e2e['maxrss_mb']:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=4096, help="base raster edge in pixels (0.1 m)")
    parser.add_argument("--quick", action="store_true", help="smaller rasters, fewer resume tiles")
    parser.add_argument("--heavy", type=Path, default=None, help="also measure this (heavy) ONNX model")
    args = parser.parse_args()
    size = 1024 if args.quick else args.size
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        image = make_raster(tmp / "base.tif", size)
        light = conv1x1_model(tmp / "light.onnx", tile_size_px=512, overlap_px=64)
        speed(tmp, image, size, "light 1x1 conv", light, 512)
        if default_model_path().is_file():
            spec = OnnxModel(default_model_path()).spec
            speed(tmp, image, size, "default model", default_model_path(), spec.tile_size_px)
            if "crown_stride_px" not in spec.metadata:
                native = with_metadata(default_model_path(), tmp / "default_stride4.onnx", {"crown_stride_px": 4})
                speed(tmp, image, size, "default model, crown_stride_px 4", native, spec.tile_size_px)
        if args.heavy is not None:
            speed(tmp, image, size, f"heavy {args.heavy.stem}", args.heavy, OnnxModel(args.heavy).spec.tile_size_px)

        big = make_raster(tmp / "big.tif", size * 2, seed=1)
        base_mem = run_predict(image, light, tmp / "mem_base")["maxrss_mb"]
        big_mem = run_predict(big, light, tmp / "mem_big")["maxrss_mb"]
        print(f"[memory] peak RSS {base_mem:.0f} MB at {size}^2, {big_mem:.0f} MB at {2 * size}^2 (4x pixels): "
              f"ratio {big_mem / base_mem:.3f} ({(big_mem / base_mem - 1) * 100:+.1f} %)")

        n_side = 40 if args.quick else 100
        resume_img = make_raster(tmp / "resume.tif", 64 * n_side, seed=2)
        first = run_predict(resume_img, light, tmp / "resume", tile_size_px=64, overlap_px=0,
                            outputs=frozenset({"semantic"}))
        again = run_predict(resume_img, light, tmp / "resume", tile_size_px=64, overlap_px=0,
                            outputs=frozenset({"semantic"}))
        print(f"[resume] {first['done']} tiles predicted in {first['seconds']:.1f} s; resuming the complete "
              f"cache took {again['seconds']:.2f} s (manifest of {first['done']} tiles)")


if __name__ == "__main__":
    main()
