"""Value ranges: how pixels of another type than the model's become the 0–255 it was trained on.

A model trained on 8-bit imagery reads a 16-bit or float raster the way QGIS shows it by
default: each band stretched linearly from a minimum to a maximum, clipped, where the
minimum and maximum are a cumulative count cut of 2 % and 98 % of the band's estimated
statistics (QGIS's ``QgsRasterMinMaxOrigin`` defaults: CumulativeCut, 0.02–0.98,
Estimated accuracy, which samples about 250,000 pixels). The range is worked out once, from
the raster's overviews where it has them, and recorded in the cache's settings, so a
resumed run stretches as the run that started it; a user may give one range for every band.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from rasterio.enums import Resampling

from ..errors import RasterError
from .grid import RasterInfo
from .raster import open_raster

logger = logging.getLogger(__name__)

CUT_LOWER, CUT_UPPER = 0.02, 0.98
SAMPLE_PX = 250_000  # QGIS's estimated statistics read about this many pixels of a band

ValueRange = tuple[tuple[float, float], ...]  # (minimum, maximum) per band the model reads


def needs_stretch(info: RasterInfo, input_dtype: str) -> bool:
    """Whether the raster's pixels must be stretched for a model reading ``input_dtype`` pixels."""
    return input_dtype == "uint8" and info.dtype != "uint8" and not info.paletted


def cumulative_cut(info: RasterInfo, bands: tuple[int, ...], lower: float = CUT_LOWER,
                   upper: float = CUT_UPPER) -> ValueRange:
    """Each band's ``lower`` and ``upper`` quantiles over its valid pixels, from a sample of about
    :data:`SAMPLE_PX` pixels (nearest neighbour, GDAL taking an overview where one fits).

    Raises RasterError when a band holds one value only (nothing to stretch) or no valid pixel.
    """
    name = Path(info.path).name
    scale = max(1.0, math.sqrt(info.width * info.height / SAMPLE_PX))
    shape = (max(1, round(info.height / scale)), max(1, round(info.width / scale)))
    with open_raster(info.path) as src:
        sample = src.read(list(bands), out_shape=(len(bands), *shape), resampling=Resampling.nearest, masked=True)
    value_range = []
    for band, values in zip(bands, sample):
        values = values.compressed().astype(np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise RasterError(f"{name} has no valid pixel in band {band}.")
        lo, hi = (float(v) for v in np.quantile(values, [lower, upper], method="inverted_cdf"))
        if hi <= lo:  # mostly one value: the full range, as long as there is one
            lo, hi = float(values.min()), float(values.max())
        if hi <= lo:
            raise RasterError(f"{name} holds the same value ({lo:g}) in every pixel of band {band}: "
                              "there is no image to stretch.")
        value_range.append((lo, hi))
    logger.info("%s: value range %s (cumulative cut %g-%g %%)", name, value_range, 100 * lower, 100 * upper)
    return tuple(value_range)


def stretch(data: np.ndarray, value_range: ValueRange) -> np.ndarray:
    """(bands, H, W) float32 source values → 0–255, linear between each band's minimum and maximum, clipped
    (in place)."""
    for band, (lo, hi) in zip(data, value_range):
        band -= np.float32(lo)
        band *= np.float32(255.0 / (hi - lo))
        np.clip(band, 0.0, 255.0, out=band)
    return data
