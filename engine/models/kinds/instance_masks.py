"""``instance_masks``: outputs ``masks`` (N, H, W) or (N, 1, H, W), ``scores`` (N,), optionally ``labels`` (N,).

Each mask above ``seg_thresh`` is one instance, owned whole by the tile whose
core holds its centroid; where masks overlap the better-scored one wins the pixel.
"""

from __future__ import annotations

import numpy as np

from ...errors import ModelError
from . import Instances, OutputKind, register


@register
class InstanceMasks(OutputKind):
    name = "instance_masks"

    def decode(self, spec, outputs, tile_hw):
        results = list(outputs.values())
        masks = outputs.get("masks", results[0])
        scores = outputs.get("scores", results[1] if len(results) > 1 else None)
        labels = outputs.get("labels", results[2] if len(results) > 2 else None)
        masks = np.asarray(masks, np.float32)
        if masks.ndim == 4:
            masks = masks[:, 0]
        if masks.ndim != 3 or masks.shape[1:] != tuple(tile_hw):
            raise ModelError(f"The model's masks have shape {masks.shape}; expected (N, {tile_hw[0]}, {tile_hw[1]}).")
        n = masks.shape[0]
        scores = np.ones(n, np.float32) if scores is None else np.asarray(scores, np.float32).reshape(n)
        labels = (np.full(n, spec.channel_of_class[0], np.int64) if labels is None
                  else np.asarray(labels, np.int64).reshape(n))
        return {"masks": masks, "scores": scores, "labels": labels}

    def probabilities(self, spec, decoded, valid):
        masks, scores, labels = decoded["masks"], decoded["scores"], decoded["labels"]
        probs = np.zeros((len(spec.class_names),) + valid.shape, np.float32)
        for i, label in enumerate(spec.channel_of_class):
            chosen = labels == label
            if chosen.any():
                probs[i] = np.max(masks[chosen] * scores[chosen, None, None], axis=0)
        probs = np.clip(probs, 0.0, 1.0)
        probs[:, ~valid] = 0.0
        return probs

    def instances(self, spec, decoded, probs, valid, gsd_m):
        masks, m_scores, m_labels = decoded["masks"], decoded["scores"], decoded["labels"]
        labels = np.zeros(valid.shape, np.int32)
        scores, classes = [0.0], [0]
        class_of_label = {label: i for i, label in enumerate(spec.channel_of_class)}
        # Paint low scores first so a better-scored overlapping mask wins the pixel.
        for i in np.argsort(m_scores, kind="stable"):
            if m_scores[i] < spec.seg_thresh or int(m_labels[i]) not in class_of_label:
                continue
            pixels = (masks[i] > 0.5) & valid
            if pixels.any():
                labels[pixels] = len(scores)
                scores.append(float(m_scores[i]))
                classes.append(class_of_label[int(m_labels[i])])
        return Instances(labels, np.asarray(scores), np.asarray(classes, np.int64))
