"""``semantic``: per-class probability maps (Deepness "Segmentor"), one output or several.

Each output is (1, C, H, W) per-class probabilities, or (1, H, W) / (1, 1, H, W), one
class's probability (a sigmoid map; a ``background`` is implied). Outputs smaller than
the tile by an even number of pixels are the tile's centre (Deepness's rule).

A pixel's class is decided per output. For models in Deepness's format (no
``output_kind``) as Deepness 0.6.5 decides it: probabilities under ``seg_thresh`` count
as zero; a one-map output marks the pixels left, a many-channel output gives each pixel
the channel of its largest remaining value (the first channel where none is left). For
models in our format, the written class with the largest probability, where it is
above ``seg_thresh``. Outputs are independent: their masks may overlap.
Classes whose regions are not crowns (``ModelSpec.crown_classes``) then get Deepness's
small-segment rule, a median filter of ``small_segment_px`` over the output's class map.

Instances are the connected regions of each class's mask. They are canopy or land-cover
patches that can span any number of tiles, so each is clipped to the tile core: every
piece of ground is stored once, patches split along core borders as in tcd_pipeline's
semantic cache.
"""

from __future__ import annotations

import numpy as np

from ...errors import ModelError
from . import Instances, OutputKind, activate, register


@register
class Semantic(OutputKind):
    name = "semantic"
    deepness_types = ("segmentor", "segmentation")
    clips_to_core = True

    def class_layout(self, names, output_channels):
        n_outputs = len(output_channels) if output_channels else len(names) if names else 1
        if names is not None and len(names) != n_outputs:
            raise ModelError(f"The model has {n_outputs} outputs but its class_names describe {len(names)}.")
        written, channels, outputs, counts = [], [], [], []
        offset = 0
        for o in range(n_outputs):
            own = names[o] if names else None
            count = output_channels[o] if output_channels else None
            if count is None:
                count = len(own) if own else 2
            if count == 1:  # one probability map: the class it names, after an implied background
                if own is not None and len(own) > 2:
                    raise ModelError(f"The model's output {o + 1} is a single probability map but its class_names "
                                     f"name {len(own)} classes.")
                name = own[-1] if own else "channel_1"  # Deepness's name for an unnamed map
                written.append(name)
                channels.append(offset)
                outputs.append(o)
            else:
                if own is None:
                    own = ["background"] + [f"channel_{i}" for i in range(1, count)]  # Deepness's names
                if len(own) != count:
                    raise ModelError(f"The model's output {o + 1} has {count} channels but its class_names "
                                     f"name {len(own)} classes.")
                for i, name in enumerate(own):
                    if not (i == 0 and name.lower() == "background"):
                        written.append(name)
                        channels.append(offset + i)
                        outputs.append(o)
            counts.append(count)
            offset += count
        if len(set(written)) < len(written):  # same names in several outputs: say which output
            written = [f"{n} (output {o + 1})" if written.count(n) > 1 else n for n, o in zip(written, outputs)]
        return written, channels, outputs, counts

    def output_inset(self, output_shapes, input_px):
        insets = set()
        for o, shape in enumerate(output_shapes):
            h, w = (shape[-2], shape[-1]) if len(shape) in (3, 4) else (None, None)
            if len(shape) not in (3, 4):
                raise ModelError(f"The model's output {o + 1} has {len(shape)} dimensions; a segmentation model's "
                                 "outputs are (batch, classes, height, width) or (batch, height, width).")
            if input_px is None or h is None or w is None:
                insets.add(0)
                continue
            insets.add(_inset(o, (h, w), (input_px, input_px)))
        return max(insets, default=0)

    def decode(self, spec, outputs, tile_hw):
        arrays = list(outputs.values())
        counts = spec.output_channels or (None,) * len(arrays)
        if len(arrays) != len(counts):
            raise ModelError(f"The model gives {len(arrays)} outputs; its metadata describes {len(counts)}.")
        stack = []
        for o, (out, count) in enumerate(zip(arrays, counts)):
            out = np.asarray(out, np.float32)
            if out.ndim == 3:
                out = out[:, None]  # (1, H, W): one map, no class axis
            if out.ndim != 4 or out.shape[0] != 1 or (count is not None and out.shape[1] != count):
                raise ModelError(f"The model's output {o + 1} has shape {tuple(out.shape)}; expected (1, "
                                 f"{count or 'classes'}, height, width).")
            probs = activate(spec, out[0])
            if probs.shape[1:] != tuple(tile_hw):
                inset = _inset(o, probs.shape[1:], tuple(tile_hw))
                probs = np.pad(probs, ((0, 0), (inset, inset), (inset, inset)))
            stack.append(probs)
        probs = stack[0] if len(stack) == 1 else np.concatenate(stack)
        if not np.all(np.isfinite(probs)):
            raise ModelError("The model produced NaN or infinite values; it cannot be used on this image.")
        if max(spec.channel_of_class) >= probs.shape[0]:
            raise ModelError(f"The model outputs {probs.shape[0]} channels; its metadata names a class "
                             f"in channel {max(spec.channel_of_class) + 1}.")
        return {"probs": probs}

    def instances(self, spec, decoded, probs, valid, gsd_m):
        from scipy import ndimage

        full = decoded["probs"]
        counts = spec.output_channels or (full.shape[0],)
        crown = spec.crown_classes or (True,) * len(spec.class_names)
        of_output = spec.output_of_class or (0,) * len(spec.class_names)
        layers, scores, classes, pixels = [], [np.zeros(1)], [np.zeros(1, np.int64)], []
        count, offset = 0, 0
        for o, n_channels in enumerate(counts):
            written = [i for i in range(len(spec.class_names)) if of_output[i] == o]
            labels = np.zeros(valid.shape, np.int32)
            for i, mask in self._masks(spec, full[offset:offset + n_channels], offset, written, crown, probs, valid):
                comp, n = ndimage.label(mask)
                if not n:
                    continue
                means, sizes = _region_means(comp, mask, n, probs[i])
                if len(written) == 1:
                    labels = comp  # the output's only class: its regions are the labels as they come
                    if count:
                        labels[mask] += count
                else:
                    labels[mask] = comp[mask] + count
                scores.append(means)
                classes.append(np.full(n, i, np.int64))
                pixels.append(sizes)
                count += n
            layers.append(labels)
            offset += n_channels
        if len(layers) == 1:
            sizes = np.concatenate(pixels) if pixels else np.zeros(0, np.int64)
            return Instances(layers[0], np.concatenate(scores), np.concatenate(classes),
                             pixels=np.concatenate([[layers[0].size - sizes.sum()], sizes]))
        # Several outputs: one label image each (their masks may overlap), label values unique across them.
        return Instances(np.stack(layers), np.concatenate(scores), np.concatenate(classes))


    @staticmethod
    def _masks(spec, group: np.ndarray, offset: int, written: list[int], crown, probs: np.ndarray,
               valid: np.ndarray):
        """(class, mask) of each written class of one output (``group``: its channels; ``probs``: the written
        classes' confidence, zero where the source is invalid)."""
        thresh = spec.seg_thresh
        smooth = spec.small_segment_px > 1 and not all(crown[i] for i in written)
        if len(written) == 1 and not smooth and len(group) <= 2:
            # One class, no smoothing (most canopy models): its mask without a class map, a third of the time.
            (i,) = written
            p = probs[i]
            if not spec.deepness_rules:
                yield i, p > thresh
            elif len(group) == 1:
                yield i, (p >= thresh) & (p != 0)
            else:  # background and the class (channel 1): Deepness's argmax of the thresholded two (ties: background)
                background = group[0]
                yield i, np.where(p >= thresh, p, 0) > np.where(background >= thresh, background, 0)
            return
        if spec.deepness_rules:
            class_map = deepness_class_map(group, thresh)
        else:
            class_map = written_class_map(group, [spec.channel_of_class[i] - offset for i in written], thresh)
        smoothed = median_of_labels(class_map, spec.small_segment_px) if smooth else class_map
        for i in written:
            local = spec.channel_of_class[i] - offset
            yield i, ((class_map if crown[i] else smoothed) == local + 1) & valid


def _inset(o: int, out_hw: tuple[int, int], tile_hw: tuple[int, int]) -> int:
    """Pixels an output smaller than its tile leaves on each side (it is the tile's centre)."""
    dh, dw = tile_hw[0] - out_hw[0], tile_hw[1] - out_hw[1]
    if dh < 0 or dw < 0:
        raise ModelError(f"The model's output {o + 1} is {out_hw[0]}x{out_hw[1]} px for {tile_hw[0]}x{tile_hw[1]} "
                         "px input tiles; outputs larger than the input (super-resolution) are not supported.")
    if dh != dw or dh % 2:
        raise ModelError(f"The model's output {o + 1} is {out_hw[0]}x{out_hw[1]} px for {tile_hw[0]}x{tile_hw[1]} "
                         "px input tiles; a smaller output must be the input's centre, smaller by the same even "
                         "number of pixels on both axes.")
    return dh // 2


def deepness_class_map(probs: np.ndarray, thresh: float) -> np.ndarray:
    """(T, T) uint8 class map of one output: 1 + the channel each pixel belongs to, 0 for none.

    As Deepness 0.6.5 (``MapProcessorSegmentation._process_tile``): values under
    ``thresh`` become zero; a one-map output marks what is left (channel 0); a
    many-channel output takes the largest left (channel 0 where nothing is left).
    """
    kept = np.where(probs >= thresh, probs, np.float32(0))
    if kept.shape[0] == 1:
        return (kept[0] != 0).astype(np.uint8)
    return (np.argmax(kept, axis=0) + 1).astype(np.uint8)


def written_class_map(probs: np.ndarray, channels: list[int], thresh: float) -> np.ndarray:
    """(T, T) uint8 class map of one output, our format's rule: 1 + the written channel with the largest
    probability where that probability is above ``thresh``, 0 elsewhere (a background channel takes no part)."""
    written = probs[channels]
    best = np.argmax(written, axis=0)
    above = np.take_along_axis(written, best[None], axis=0)[0] > thresh
    return np.where(above, np.asarray(channels, np.uint8)[best] + 1, 0).astype(np.uint8)


def median_of_labels(class_map: np.ndarray, size_px: int) -> np.ndarray:
    """The median filter Deepness applies to a class map (OpenCV ``medianBlur``: odd size, edges repeated).

    The kernel is ``size_px // 2 * 2 + 1`` pixels (Deepness's rounding). Exact, by counting:
    the median is at least ``v`` where more than half the window is at least ``v``, so
    it is one box count per class value instead of sorting every window.
    """
    k = size_px // 2 * 2 + 1
    if k <= 1:
        return class_map
    r = k // 2
    padded = np.pad(class_map, r, mode="edge")
    h, w = class_map.shape
    half = k * k // 2
    median = np.zeros(class_map.shape, np.uint8)
    for v in range(1, int(class_map.max()) + 1):
        at_least = np.zeros((h + 2 * r + 1, w + 2 * r + 1), np.int32)
        np.cumsum(np.cumsum(padded >= v, axis=0, dtype=np.int32), axis=1, out=at_least[1:, 1:])
        window = at_least[k:, k:] - at_least[:-k, k:] - at_least[k:, :-k] + at_least[:-k, :-k]
        median += window > half
    return median


def _region_means(comp: np.ndarray, mask: np.ndarray, n: int, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``values`` over each of the ``n`` regions ``comp`` labels in ``mask``, and their pixel counts.

    By bincount (a noisy mask has thousands of one-pixel regions, for which ndimage.mean is far
    slower) over the mask's pixels only: canopy is often a small part of a tile (1.4 instead of
    10 ms on a 1024 px tile with 5 % canopy), and the sums are the same, added in the same order.
    """
    region_of = comp[mask]
    sums = np.bincount(region_of, weights=values[mask], minlength=n + 1)[1:]
    pixels = np.bincount(region_of, minlength=n + 1)[1:]
    return sums / pixels, pixels
