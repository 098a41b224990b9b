"""``canopy_centres``: one output (1, 2, H, W): canopy probability and a crown-centre heatmap.

Crowns are split by marker-controlled watershed on the heatmap
(:func:`engine.postprocess.crowns.delineate_crowns`), on the model's native grid
when its metadata gives ``crown_stride_px``; each crown is owned whole by the
tile whose core holds its centroid.
"""

from __future__ import annotations

import numpy as np

from ...errors import ModelError
from . import Instances, OutputKind, probability_map, register


@register
class CanopyCentres(OutputKind):
    name = "canopy_centres"
    filters_small = True

    def classes(self, names, n_output_channels):
        names = [n for n in (names or []) if n.lower() != "background"][:1] or ["tree"]
        return names, [0]

    def decode(self, spec, outputs, tile_hw):
        probs = probability_map(spec, outputs, tile_hw)
        if probs.shape[0] != 2:
            raise ModelError(f"A canopy_centres model must output 2 channels, not {probs.shape[0]}.")
        return {"probs": probs}

    def instances(self, spec, decoded, probs, valid, gsd_m):
        from scipy import ndimage

        from ...postprocess.crowns import block_mean, delineate_crowns

        centres = decoded["probs"][1] * valid
        canopy, stride = probs[0], spec.crown_stride_px
        if stride > 1:
            canopy, centres = block_mean(canopy, stride), block_mean(centres, stride)
        labels = delineate_crowns(
            canopy, centres, gsd_m=gsd_m * stride, seg_thresh=spec.seg_thresh, centre_thresh=spec.centre_thresh,
            peak_min_distance_m=spec.peak_min_distance_m, min_crown_area_m2=spec.min_crown_area_m2,
        )
        n = int(labels.max())
        scores = ndimage.mean(canopy, labels, np.arange(n + 1)) if n else np.zeros(1)
        return Instances(labels, np.asarray(scores, np.float64), np.zeros(n + 1, np.int64), stride=stride)
