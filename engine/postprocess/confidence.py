"""Canopy confidence of one tile: cut to its core on the source grid, and encoded as a GeoTIFF.

Confidence is stored as uint8, 0–255 for probability 0–1, one band per class.
"""

from __future__ import annotations

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import reproject

from ..tiling.grid import Tile, window_transform


def to_uint8(probs: np.ndarray) -> np.ndarray:
    """Probabilities 0..1 → confidence 0..255, rounded half up (the cast truncates: the floor of a value >= 0)."""
    scaled = np.multiply(probs, np.float32(255.0), dtype=np.float32)
    scaled += np.float32(0.5)
    return scaled.astype(np.uint8)


def semantic_core(probs: np.ndarray, tile: Tile, src_transform, src_crs: CRS, work_crs: CRS) -> np.ndarray:
    """Confidence (n_classes, h, w) uint8 for the tile's core window on the source grid.

    ``probs`` is (n_classes, T, T) in model pixels of the tile. On aligned grids
    the core is a plain window of the tile; otherwise it is resampled (bilinear).
    """
    window = tile.core_in_tile
    if window is not None:
        return to_uint8(probs[(slice(None), *window)])
    col, row, w, h = tile.core_px
    out = np.zeros((probs.shape[0], h, w), np.float32)
    reproject(probs, out, src_transform=rasterio.Affine(*tile.transform), src_crs=work_crs,
              dst_transform=rasterio.Affine(*window_transform(src_transform, col, row)), dst_crs=src_crs,
              resampling=Resampling.bilinear, init_dest_nodata=False)
    return to_uint8(out)


def encode_geotiff(confidence: np.ndarray, tile: Tile, src_transform, crs_wkt: str,
                   class_names: tuple[str, ...]) -> bytes:
    """A core's confidence (n_classes, h, w) uint8 as the bytes of a compressed GeoTIFF on the source grid.

    Encoded in memory, so the cache writes it with Python's file IO: GDAL can lose
    a failed write (disk full) without raising, Python cannot.
    """
    col, row, w, h = tile.core_px
    profile = dict(driver="GTiff", width=w, height=h, count=confidence.shape[0], dtype="uint8",
                   crs=CRS.from_wkt(crs_wkt), transform=rasterio.Affine(*window_transform(src_transform, col, row)),
                   compress="deflate", zlevel=1, predictor=2)
    if w >= 256 and h >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    with rasterio.MemoryFile() as memfile:
        with memfile.open(**profile) as dst:
            dst.write(confidence)
            for i, name in enumerate(class_names, start=1):
                dst.set_band_description(i, name)
        return memfile.read()
