"""Crown delineation: split a canopy probability map into individual crowns.

Works on one tile in model pixels. Crown centres are the peaks of the centre
heatmap: local maxima above ``centre_thresh``, thinned so no two are closer than
``peak_min_distance_m`` (the stronger wins). Each canopy pixel then climbs the
heatmap, step by step to its highest 8-neighbour, and joins the crown of the peak
it reaches: the basins of a watershed of the inverted heatmap. A boundary between
two touching crowns thus follows the valley between their heatmap blobs, and a
model trained with blob size proportional to crown size puts it nearer the
smaller crown, where a nearest-centre split would cut into the larger one.
Pixels whose climb ends elsewhere (a weak or thinned-out peak, a flat stretch)
join the nearest crown of their canopy patch; patches with no centre become one
crown each.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def _centre_markers(centres: np.ndarray, mask: np.ndarray, centre_thresh: float, radius_px: float) -> np.ndarray:
    """Marker image (int32, 1..n) of the thinned heatmap peaks inside ``mask``."""
    size = 2 * int(np.ceil(radius_px)) + 1
    peaks = (centres == ndimage.maximum_filter(centres, size=size, mode="constant")) & (centres > centre_thresh) & mask
    ys, xs = np.nonzero(peaks)
    markers = np.zeros(centres.shape, np.int32)
    if len(ys) == 0:
        return markers
    # Equal maxima (plateaus, saturated probabilities) all pass the filter; keep the
    # strongest first, ties in raster order, and drop any peak within the radius of a kept one.
    order = np.lexsort((xs, ys, -centres[ys, xs]))
    points = np.stack([ys[order], xs[order]], axis=1).astype(np.float64)
    neighbours = cKDTree(points).query_ball_point(points, r=radius_px)
    suppressed = np.zeros(len(points), bool)
    kept = []
    for i in range(len(points)):
        if not suppressed[i]:
            kept.append(i)
            suppressed[neighbours[i]] = True
    kept = np.asarray(kept)
    markers[ys[order][kept], xs[order][kept]] = np.arange(1, len(kept) + 1, dtype=np.int32)
    return markers


def _climb(centres: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Flat index of the pixel each pixel reaches by steepest ascent of ``centres`` within ``mask``."""
    h, w = centres.shape
    height = np.where(mask, centres, np.float32(-1.0))
    padded = np.pad(height, 1, constant_values=-2.0)
    best = height.copy()
    index = np.arange(h * w, dtype=np.int64).reshape(h, w)
    target = index.copy()
    for dy, dx in _NEIGHBOURS:
        neighbour = padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        # Strictly higher only, so plateaus stop the climb instead of cycling.
        higher = neighbour > best
        best[higher] = neighbour[higher]
        target[higher] = index[higher] + dy * w + dx
    reach = target.ravel()
    # Pointer jumping: each pass doubles the path length followed.
    while True:
        further = reach[reach]
        if np.array_equal(further, reach):
            return reach
        reach = further


def _join_nearest(labels: np.ndarray, mask: np.ndarray, patches: np.ndarray) -> None:
    """Give unlabelled canopy pixels the label of the nearest labelled pixel of their own patch (in place)."""
    todo = mask & (labels == 0)
    if not todo.any() or not labels.any():
        return
    _, (iy, ix) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    labels[todo] = labels[iy[todo], ix[todo]]
    across = todo & (patches[iy, ix] != patches)
    if not across.any():
        return
    # The nearest labelled pixel lay across a gap: redo those patches on their own.
    slices = ndimage.find_objects(patches)
    for patch_id in np.unique(patches[across]):
        window = slices[patch_id - 1]
        own = patches[window] == patch_id
        sub = np.where(own, labels[window], 0)
        sub[todo[window]] = 0
        if not sub.any():
            labels[window][own] = 0
            continue
        _, (jy, jx) = ndimage.distance_transform_edt(sub == 0, return_indices=True)
        labels[window][own] = sub[jy, jx][own]


def block_mean(a: np.ndarray, k: int) -> np.ndarray:
    """Mean of each ``k`` x ``k`` block from the top-left corner (float32; missing pixels of edge blocks count 0).

    A model whose heads predict at 1/``k`` of the tile and upsample bilinearly in the
    graph gives back (to within its interpolation) its native map this way.
    """
    h, w = a.shape
    H, W = -(-h // k), -(-w // k)
    if (H * k, W * k) != (h, w):
        padded = np.zeros((H * k, W * k), np.float32)
        padded[:h, :w] = a
        a = padded
    return a.reshape(H, k, W, k).mean(axis=(1, 3), dtype=np.float32)


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
    centres = np.asarray(centres, np.float32)
    markers = _centre_markers(centres, mask, centre_thresh, max(1.0, peak_min_distance_m / gsd_m))
    n_markers = int(markers.max())
    patches, _ = ndimage.label(mask)
    if n_markers:
        labels = markers.ravel()[_climb(centres, mask)].reshape(mask.shape)
        labels[~mask] = 0
        _join_nearest(labels, mask, patches)
        # Patches without a marker are crowns of their own.
        has_marker = np.zeros(patches.max() + 1, bool)
        has_marker[patches[markers > 0]] = True
        orphan = mask & ~has_marker[patches]
        labels[orphan] = patches[orphan] + n_markers
    else:
        labels = patches.astype(np.int32)
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
