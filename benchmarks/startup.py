"""Start-up: seconds for ``python -m engine predict`` on a complete cache, where nothing is left to do.

Predicts the bundled sample once into a temporary cache, then runs the same command again
``--runs`` times, each in a fresh process, and prints the median and the range, with the
target (0.5 s). Run on demand on a quiet machine:

    .venv/bin/python -m benchmarks.startup [--runs 7] [IMAGE]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAMPLE = Path(__file__).resolve().parent.parent / "resources" / "sample" / "OSBS_029.tif"
TARGET_S = 0.5


def run(image: Path, cache: Path) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of one run in a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "engine", "predict", str(image), "--out", str(cache), "--quiet"],
                   check=True, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", nargs="?", type=Path, default=SAMPLE)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        first, _ = run(args.image, cache)
        walls, cpus = zip(*(run(args.image, cache) for _ in range(args.runs)))
    median = statistics.median(walls)
    print(f"first run (predicts): {first:.2f} s")
    print(f"complete cache, {args.runs} runs: median {median:.3f} s, min {min(walls):.3f}, max {max(walls):.3f}; "
          f"CPU median {statistics.median(cpus):.3f} s (on a busy machine the CPU seconds say more)")
    print(f"target {TARGET_S} s: median / target = {median / TARGET_S:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
