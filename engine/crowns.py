"""Crown delineation: split a canopy probability map into individual crowns.

Works on one tile in model pixels. Crown centres are local maxima of the centre
heatmap; each canopy pixel goes to the nearest centre within its connected
canopy patch (a marker-controlled split). Canopy patches with no centre become
one crown each.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def delineate_crowns(
    canopy: np.ndarray,
    centres: np.ndarray,
    *,
    gsd_m: float,
    seg_thresh: float = 0.5,
    centre_thresh: float = 0.3,
    peak_min_distance_m: float = 1.0,
    min_crown_area_m2: float = 1.0,
) -> np.ndarray:
    """Label image of crowns (int32, 0 = no crown) from (H, W) canopy and centre maps in 0..1.

    ``gsd_m`` is the pixel size in metres; distances and areas are given in metres
    so the parameters do not depend on the tile's resolution.
    """
    mask = canopy > seg_thresh
    if not mask.any():
        return np.zeros(canopy.shape, np.int32)
    radius = max(1, int(round(peak_min_distance_m / gsd_m)))
    size = 2 * radius + 1
    peaks = (centres == ndimage.maximum_filter(centres, size=size, mode="constant")) & (centres > centre_thresh) & mask
    markers, n_markers = ndimage.label(peaks)
    if n_markers:
        # A plateau can give several adjacent peak pixels: one marker each connected group.
        _, (iy, ix) = ndimage.distance_transform_edt(markers == 0, return_indices=True)
        labels = np.where(mask, markers[iy, ix], 0).astype(np.int32)
        patches, n_patches = ndimage.label(mask)
        # Patches the nearest-marker rule cannot reach correctly (no marker inside) get their own label.
        has_marker = np.zeros(n_patches + 1, bool)
        has_marker[np.unique(patches[markers > 0])] = True
        orphan = mask & ~has_marker[patches]
        labels[orphan] = patches[orphan] + n_markers
        # Markers of another patch must not claim pixels across a gap.
        owner_patch = patches[markers > 0]
        marker_patch = np.zeros(n_markers + 1, np.int64)
        marker_patch[markers[markers > 0]] = owner_patch
        stray = mask & has_marker[patches] & (marker_patch[np.where(labels <= n_markers, labels, 0)] != patches)
        if stray.any():
            sub_markers = np.where(patches == 0, 0, markers)
            for patch_id in np.unique(patches[stray]):
                region = patches == patch_id
                m = np.where(region, sub_markers, 0)
                _, (jy, jx) = ndimage.distance_transform_edt(m == 0, return_indices=True)
                labels[region] = m[jy, jx][region]
    else:
        labels, _ = ndimage.label(mask)
        labels = labels.astype(np.int32)
    min_px = min_crown_area_m2 / (gsd_m * gsd_m)
    if min_px > 1:
        counts = np.bincount(labels.ravel())
        small = counts < min_px
        small[0] = False
        labels[small[labels]] = 0
    # Renumber 1..n in raster order so results do not depend on the order above.
    uniq, first = np.unique(labels.ravel(), return_index=True)
    order = uniq[np.argsort(first)]
    order = order[order > 0]
    lut = np.zeros(int(labels.max()) + 1, np.int32)
    lut[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    return lut[labels]
