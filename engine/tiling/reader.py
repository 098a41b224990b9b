"""Reading the source raster: its description, and tiles resampled onto the model grid.

Reads are windowed (only the pixels a tile needs are ever in memory). A tile is
returned as raw band values (float32, source units) on the tile's model grid,
plus a validity mask: False outside the image and where the source is nodata,
masked or transparent (alpha).
"""


from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import RasterioIOError
from rasterio.warp import reproject
from rasterio.windows import Window

from ..errors import RasterError
from .grid import RasterInfo, Tile, apply, invert, window_transform
from .raster import check_bands, open_raster, point_mapper


class TileReader:
    """Reads tiles of one raster. Not thread-safe: use one per thread."""

    def __init__(self, info: RasterInfo, bands: tuple[int, ...], work_crs: str, tile_size_px: int, gsd_m: float):
        check_bands(info, bands)
        self.info = info
        self.bands = list(bands)
        self.size = tile_size_px
        # GDAL's block cache defaults to 5 % of RAM and fills as a large raster is read;
        # a row of blocks under the tile overlap is all that is ever read twice. 48 MB holds
        # that row of a 16384 px wide RGB raster in 512 px blocks with room to spare: the same
        # speed there as 64 MB (green model, 43 s), and peak memory grows 7 % from 4096² to
        # 16384² instead of 11 % (32 MB: 8 % slower).
        self._env = rasterio.Env(GDAL_CACHEMAX=48 * 1024 * 1024)
        self._env.__enter__()
        self.src = open_raster(info.path)
        # No nodata, alpha or mask band: every pixel is valid, and no mask need be read or applied.
        self.all_valid = all(flags == [MaskFlags.all_valid] for flags in self.src.mask_flag_enums)
        self.src_crs = self.src.crs
        self.work_crs = CRS.from_wkt(work_crs)
        self.to_src = point_mapper(work_crs, info.crs_wkt)
        src_px_m = math.sqrt(abs(info.transform[0] * info.transform[4] - info.transform[1] * info.transform[3]))
        if not info.crs_is_geographic:
            src_px_m /= info.units_per_m
        else:
            src_px_m *= 111_320.0  # degrees to metres near the equator; only picks the resampling kernel
        # Averaging when shrinking by more than 1.5x keeps small bright objects from aliasing away.
        self.resampling = Resampling.average if gsd_m > 1.5 * src_px_m else Resampling.bilinear

    def close(self):
        self.src.close()
        self._env.__exit__(None, None, None)

    def _read_window(self, window: Window):
        """Bands and validity of an in-image window (window already clipped)."""
        try:
            data = self.src.read(self.bands, window=window, out_dtype="float32")
            if self.all_valid:
                valid = np.ones(data.shape[1:], bool)
            else:
                valid = self.src.dataset_mask(window=window) > 0
        except RasterioIOError as exc:
            raise RasterError(
                f"Reading {Path(self.info.path).name} failed at pixels {int(window.col_off)},{int(window.row_off)}:"
                f" the file is damaged or truncated."
            ) from exc
        return data, valid

    def read(self, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
        """``(raw, valid)``: raw (bands, T, T) float32 source values, valid (T, T) bool."""
        n, size = len(self.bands), self.size
        W, H = self.info.width, self.info.height
        if tile.offset_px is not None:
            col, row = tile.offset_px
            c0, r0 = max(col, 0), max(row, 0)
            c1, r1 = min(col + size, W), min(row + size, H)
            if (c0, r0, c1, r1) == (col, row, col + size, row + size):  # inside the image: read as it comes
                raw, valid = self._read_window(Window(c0, r0, size, size))
                if not self.all_valid:
                    raw[:, ~valid] = 0
                return raw, valid
        raw = np.zeros((n, size, size), np.float32)
        valid = np.zeros((size, size), bool)
        if tile.offset_px is not None:
            if c1 > c0 and r1 > r0:
                data, mask = self._read_window(Window(c0, r0, c1 - c0, r1 - r0))
                raw[:, r0 - row : r1 - row, c0 - col : c1 - col] = data
                valid[r0 - row : r1 - row, c0 - col : c1 - col] = mask
        else:
            # Source window covering the tile's footprint, with a pixel to spare for the kernel.
            xs = np.array([0, size, size, 0, size / 2, 0, size / 2, size], float)
            ys = np.array([0, 0, size, size, 0, size / 2, size, size / 2], float)
            wx, wy = apply(tile.transform, xs, ys)
            if self.to_src is not None:
                wx, wy = self.to_src(wx, wy)
            px, py = apply(invert(self.info.transform), np.asarray(wx), np.asarray(wy))
            c0 = max(int(math.floor(px.min())) - 2, 0)
            r0 = max(int(math.floor(py.min())) - 2, 0)
            c1 = min(int(math.ceil(px.max())) + 2, W)
            r1 = min(int(math.ceil(py.max())) + 2, H)
            if c1 > c0 and r1 > r0:
                data, mask = self._read_window(Window(c0, r0, c1 - c0, r1 - r0))
                data[:, ~mask] = 0
                win_t = rasterio.Affine(*window_transform(self.info.transform, c0, r0))
                dst_t = rasterio.Affine(*tile.transform)
                reproject(data, raw, src_transform=win_t, src_crs=self.src_crs, dst_transform=dst_t,
                          dst_crs=self.work_crs, resampling=self.resampling, init_dest_nodata=False)
                vmask = np.zeros((size, size), np.uint8)
                reproject(mask.astype(np.uint8), vmask, src_transform=win_t, src_crs=self.src_crs,
                          dst_transform=dst_t, dst_crs=self.work_crs, resampling=Resampling.nearest,
                          src_nodata=None, dst_nodata=None, init_dest_nodata=False)
                valid = vmask > 0
        raw[:, ~valid] = 0
        return raw, valid
