"""Model-only CPU speed: megapixels per second of an ONNX model on square tiles.

Runs the model through the engine's OnnxModel (onnxruntime, default threads
unless --threads) on random tiles, after a warm-up run, and prints the median
time per tile and the throughput. Run on demand on a quiet machine:

    .venv/bin/python -m benchmarks.model_speed [MODEL] [--tile 1024] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from engine.models.runner import OnnxModel
from engine.models.spec import default_model_path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", type=Path, default=default_model_path())
    parser.add_argument("--tile", type=int, default=1024, help="tile edge in pixels")
    parser.add_argument("--runs", type=int, default=5, help="timed runs after one warm-up")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    args = parser.parse_args()

    model = OnnxModel(args.model, threads=args.threads)
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 256, (len(model.spec.bands), args.tile, args.tile), dtype=np.uint8)
    model.run(tile)
    seconds = []
    for _ in range(args.runs):
        start = time.perf_counter()
        model.run(tile)
        seconds.append(time.perf_counter() - start)
    median_s = statistics.median(seconds)
    megapixels = args.tile * args.tile / 1e6
    print(f"{args.model.name}: {args.tile}x{args.tile} tile, median {median_s:.3f} s "
          f"(min {min(seconds):.3f}, max {max(seconds):.3f}) -> {megapixels / median_s:.2f} MP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
