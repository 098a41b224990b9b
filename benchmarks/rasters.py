"""Synthetic forest-like rasters for the benchmarks (no engine import, so any engine version can use them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_raster(path: Path, size: int, seed: int = 0) -> Path:
    """A forest-like RGB raster at 0.1 m written block by block (never whole in memory).

    Tiled 512 x 512, deflate; EPSG:32633. Dark ground with bright green discs (crowns).
    """
    import rasterio
    from rasterio.transform import Affine
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32633",
                   transform=Affine(0.1, 0, 500000, 0, -0.1, 6000000), tiled=True, blockxsize=512,
                   blockysize=512, compress="deflate")
    yy, xx = np.mgrid[0:512, 0:512]
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, 512):
            for col in range(0, size, 512):
                h, w = min(512, size - row), min(512, size - col)
                block = np.full((512, 512), 40.0)
                for cx, cy, r in rng.uniform([0, 0, 15], [512, 512, 40], (40, 3)):
                    block[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(120, 200)
                img = np.stack([block * 0.6, block, block * 0.5]) + rng.normal(0, 8, (3, 512, 512))
                dst.write(np.clip(img, 0, 255).astype(np.uint8)[:, :h, :w], window=Window(col, row, w, h))
    return path
