"""Canopy confidence: class probabilities of a tile, cut to its core on the source grid."""

from __future__ import annotations

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import reproject

from ..models.spec import ModelSpec, OutputKind
from ..tiling.grid import Tile


def class_probabilities(spec: ModelSpec, output: dict, valid: np.ndarray) -> np.ndarray:
    """(n_classes, T, T) float32 probabilities of the written classes, zero where the source is invalid."""
    if spec.output_kind is OutputKind.INSTANCE_MASKS:
        masks, scores, labels = output["masks"], output["scores"], output["labels"]
        probs = np.zeros((len(spec.class_names),) + valid.shape, np.float32)
        for i, label in enumerate(spec.channel_of_class):
            chosen = labels == label
            if chosen.any():
                probs[i] = np.max(masks[chosen] * scores[chosen, None, None], axis=0)
    else:
        probs = output["probs"][list(spec.channel_of_class)]
    probs = np.clip(probs, 0.0, 1.0)
    probs[:, ~valid] = 0.0
    return probs


def to_uint8(probs: np.ndarray) -> np.ndarray:
    """Probabilities 0..1 → confidence 0..255, rounded half up."""
    return np.floor(probs * 255.0 + 0.5).astype(np.uint8)


def semantic_core(probs: np.ndarray, tile: Tile, src_transform, src_crs: CRS, work_crs: CRS) -> np.ndarray:
    """Confidence (n_classes, h, w) uint8 for the tile's core window on the source grid."""
    col, row, w, h = tile.core_px
    if tile.offset_px is not None:
        oc, or_ = tile.offset_px
        return to_uint8(probs[:, row - or_ : row - or_ + h, col - oc : col - oc + w])
    a, b, c, d, e, f = src_transform
    core_t = rasterio.Affine(a, b, c + a * col + b * row, d, e, f + d * col + e * row)
    out = np.zeros((probs.shape[0], h, w), np.float32)
    reproject(probs, out, src_transform=rasterio.Affine(*tile.transform), src_crs=work_crs, dst_transform=core_t,
              dst_crs=src_crs, resampling=Resampling.bilinear, init_dest_nodata=False)
    return to_uint8(out)

