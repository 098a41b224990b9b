"""Reading the source raster: its description, and tiles resampled onto the model grid.

Reads are windowed (only the pixels a tile needs are ever in memory). A tile is
returned as band values (float32) on the tile's model grid, plus a validity mask:
False outside the image and where the source is nodata, masked or transparent
(alpha, or a colour table entry with alpha 0). Band values are the source's own,
except that a paletted raster reads as the red, green and blue of its colour table
and a raster given a value range reads stretched to 0–255 (:mod:`.stretch`).

What the model sees beyond the valid pixels (``fill_invalid``) is the valid image
mirrored at the nearest edge of valid data, or the tile's mean where the mirror
falls outside it too: black there was context no forest has, and canopy beside a
collar or an alpha edge was called as ground.
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
from .stretch import ValueRange, stretch


def fill_invalid(raw: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``raw`` (bands, H, W) with every invalid pixel given the value of its mirror image through the
    nearest valid ground, or the valid pixels' mean where that mirror image is not valid (in place).

    Valid pixels forming a rectangle (a window reaching past the image) are mirrored at its sides.
    """
    invalid = ~valid
    if not invalid.any() or not valid.any():
        return raw
    rows_in, cols_in = np.flatnonzero(valid.any(axis=1)), np.flatnonzero(valid.any(axis=0))
    r0, r1, c0, c1 = rows_in[0], rows_in[-1] + 1, cols_in[0], cols_in[-1] + 1
    if valid[r0:r1, c0:c1].all():
        h, w = valid.shape
        mode = "reflect" if min(r1 - r0, c1 - c0) > 1 else "symmetric"
        raw[:] = np.pad(raw[:, r0:r1, c0:c1], ((0, 0), (r0, h - r1), (c0, w - c1)), mode=mode)
        return raw
    # Imported here: scipy.ndimage takes a quarter of a second to import, which a run with nothing
    # left to predict (a resume of a complete cache) should not pay.
    from scipy import ndimage

    # The nearest valid pixel by city-block distance: a point on the edge as the Euclidean one is, at
    # a quarter of its cost (60 ms against 290 ms for a 1024 px tile on a busy machine).
    _, (near_r, near_c) = ndimage.distance_transform_cdt(invalid, metric="taxicab", return_indices=True)
    rows, cols = np.nonzero(invalid)
    h, w = valid.shape
    mirror_r = 2 * near_r[rows, cols] - rows
    mirror_c = 2 * near_c[rows, cols] - cols
    inside = (mirror_r >= 0) & (mirror_r < h) & (mirror_c >= 0) & (mirror_c < w)
    mirrored = np.zeros(rows.shape, bool)
    mirrored[inside] = valid[mirror_r[inside], mirror_c[inside]]
    mean = raw[:, valid].mean(axis=1)
    for band, value in zip(raw, mean):
        band[rows, cols] = value
        band[rows[mirrored], cols[mirrored]] = band[mirror_r[mirrored], mirror_c[mirrored]]
    return raw


class TileReader:
    """Reads tiles of one raster. Not thread-safe: use one per thread."""

    def __init__(self, info: RasterInfo, bands: tuple[int, ...], work_crs: str, tile_size_px: int, gsd_m: float,
                 value_range: ValueRange | None = None, fill: bool = False):
        check_bands(info, bands)
        self.info = info
        self.bands = list(bands)
        self.size = tile_size_px
        self.value_range = value_range
        self.fill = fill
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
        self.palette = None
        if info.paletted:  # colour table as a lookup: index -> (red, green, blue, alpha)
            colours = self.src.colormap(1)
            self.palette = np.zeros((max(max(colours), int(np.iinfo(info.dtype).max)) + 1, 4), np.float32)
            for index, rgba in colours.items():
                self.palette[index] = rgba
            self.all_valid = self.all_valid and bool((self.palette[:, 3] > 0).all())
        self.maybe_nan = np.dtype(info.dtype).kind == "f"
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
            if self.palette is not None:
                colours = self.palette[self.src.read(1, window=window)]
                data = np.ascontiguousarray(np.moveaxis(colours, -1, 0)[[b - 1 for b in self.bands]])
            else:
                data = self.src.read(self.bands, window=window, out_dtype="float32")
            if self.all_valid:
                valid = np.ones(data.shape[1:], bool)
            else:
                valid = self.src.dataset_mask(window=window) > 0
                if self.palette is not None:
                    valid &= colours[..., 3] > 0
        except RasterioIOError as exc:
            raise RasterError(
                f"Reading {Path(self.info.path).name} failed at pixels {int(window.col_off)},{int(window.row_off)}:"
                f" the file is damaged or truncated."
            ) from exc
        if self.maybe_nan:  # NaN that is not declared nodata is no value either
            finite = np.isfinite(data).all(axis=0)
            if not finite.all():
                valid = valid & finite
                data[:, ~finite] = 0
        if self.value_range is not None:
            stretch(data, self.value_range)
        return data, valid

    def _finish(self, raw: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.fill:
            fill_invalid(raw, valid)
        else:
            raw[:, ~valid] = 0
        return raw, valid

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
                return self._finish(raw, valid) if not valid.all() else (raw, valid)
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
                if self.fill:  # no black from beyond the valid pixels smeared in by the kernel
                    fill_invalid(data, mask)
                else:
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
        return self._finish(raw, valid)
