"""v5 training crops: geometric and photometric augmentation of real annotated images, and their targets.

Every crop is real imagery with all of its boxes: nothing is pasted, and nothing
real is painted over, so no real crown is ever taught as background (v4's closed-canopy
mosaics darkened a real crop and dropped its boxes). A mosaic here is 2 x 2 real
sub-crops, each keeping its own boxes.

* geometry: scale 0.5-2x (log-uniform, low-pass filtered before shrinking so the
  network does not learn aliasing), any rotation (half the crops; the others a
  quarter turn), a flip, and a random sub-pixel position, so crowns are seen on every
  phase of the network's stride-32 grid;
* light: per-band gain, brightness, contrast, gamma, saturation; blur, JPEG, noise;
* pixels outside the source image get loss weight 0.

Targets on the 1/4 grid (:func:`render_targets`): canopy = the ellipses inscribed in
the boxes; centre = a Gaussian per crown whose width grows with the crown (sigma =
max(1 cell, min(w, h) / 8)), its centre cell 1; size = log of the box's width and
height in input pixels, regressed where a crown's Gaussian is at least 0.3 and it
is the strongest there.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image as PILImage
from scipy import ndimage

STRIDE = 4
SIZE_MIN_GAUSS = 0.3


@dataclass(frozen=True)
class AugmentSettings:
    scale_range: tuple[float, float] = (0.5, 2.0)
    rotate_p: float = 0.5
    mosaic_p: float = 0.25
    blur_p: float = 0.3
    jpeg_p: float = 0.3
    noise_p: float = 0.3


def render_targets(boxes: np.ndarray, size_px: int, weight_px: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Targets for boxes in crop pixels on the (size/4)² grid: canopy, centre, size (2, log px), size weight, weight."""
    n = size_px // STRIDE
    canopy = np.zeros((n, n), np.float32)
    centre = np.zeros((n, n), np.float32)
    size = np.zeros((2, n, n), np.float32)
    size_w = np.zeros((n, n), np.float32)
    cell = (np.arange(n) + 0.5) * STRIDE
    for x0, y0, x1, y1 in np.asarray(boxes, np.float64).reshape(-1, 4):
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        if rx < 1 or ry < 1:
            continue
        sigma = max(float(STRIDE), min(rx, ry) / 4)
        reach = max(rx, ry, 3 * sigma)
        c0, c1 = np.searchsorted(cell, [cx - reach, cx + reach])
        r0, r1 = np.searchsorted(cell, [cy - reach, cy + reach])
        if c0 >= c1 or r0 >= r1:
            continue
        dx = cell[c0:c1][None, :] - cx
        dy = cell[r0:r1][:, None] - cy
        inside = (dx / rx) ** 2 + (dy / ry) ** 2 <= 1.0
        canopy[r0:r1, c0:c1] = np.maximum(canopy[r0:r1, c0:c1], inside)
        gauss = np.exp(-(dx**2 + dy**2) / (2 * sigma**2)).astype(np.float32)
        j, i = int(cx // STRIDE), int(cy // STRIDE)
        if r0 <= i < r1 and c0 <= j < c1:
            gauss[i - r0, j - c0] = 1.0
        win = (slice(r0, r1), slice(c0, c1))
        owns = (gauss >= SIZE_MIN_GAUSS) & (gauss > size_w[win])
        size[0][win][owns] = math.log(2 * rx)
        size[1][win][owns] = math.log(2 * ry)
        size_w[win][owns] = gauss[owns]
        centre[win] = np.maximum(centre[win], gauss)
    weight = np.ones((n, n), np.float32)
    if weight_px is not None:
        # A cell counts when most of its pixels lie on the source image.
        weight = (weight_px[: n * STRIDE, : n * STRIDE].reshape(n, STRIDE, n, STRIDE).mean((1, 3)) > 0.5)
        weight = weight.astype(np.float32)
    return {"canopy": canopy, "centre": centre, "size": size, "size_w": size_w * weight, "weight": weight}


def _ellipse_envelope(boxes: np.ndarray, matrix: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Boxes of the ellipses inscribed in ``boxes`` after ``p -> matrix @ p + offset`` (x, y order)."""
    if not len(boxes):
        return boxes.reshape(0, 4)
    c = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
    r = np.stack([(boxes[:, 2] - boxes[:, 0]) / 2, (boxes[:, 3] - boxes[:, 1]) / 2], 1)
    c2 = c @ matrix.T + offset
    # Half extents of the transformed ellipse: sqrt(sum_k (M_ik r_k)^2).
    half = np.sqrt((matrix[None, :, :] ** 2 * r[:, None, :] ** 2).sum(-1))
    return np.concatenate([c2 - half, c2 + half], 1)


class Sampler:
    """Augmented training crops from annotated images, from one seeded generator (its state is checkpointed)."""

    def __init__(self, images, crop_px: int, seed: int, settings: AugmentSettings = AugmentSettings(),
                 weights=None):
        self.images = list(images)
        self.crop_px = crop_px
        self.settings = settings
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        w = np.asarray(weights if weights is not None else [1.0] * len(self.images), np.float64)
        self.p = w / w.sum()

    def _view(self, out_px: int):
        """One real view (out_px², 3) float32 0..1, its valid-pixel weight and boxes in its pixels."""
        rng, s = self.rng, self.settings
        im = self.images[rng.choice(len(self.images), p=self.p)]
        scale = math.exp(rng.uniform(math.log(s.scale_range[0]), math.log(s.scale_range[1])))
        angle = rng.uniform(0, 2 * math.pi) if rng.random() < s.rotate_p else rng.integers(4) * math.pi / 2
        flip = -1.0 if rng.random() < 0.5 else 1.0
        cos, sin = math.cos(angle), math.sin(angle)
        # Output (x, y) = matrix @ source (x, y) + offset.
        matrix = scale * np.array([[cos * flip, -sin], [sin * flip, cos]])
        h, w = im.rgb.shape[:2]
        # A sub-pixel centre, so crowns fall on every phase of the network's grid.
        # Mostly inside: the view's centre stays 0.35 of its span from the image edges where it can.
        q = 0.35 * out_px / scale
        src_c = np.array([rng.uniform(min(w / 2, q), max(w / 2, w - q)), rng.uniform(min(h / 2, q), max(h / 2, h - q))])
        offset = np.array([out_px / 2, out_px / 2]) - matrix @ src_c
        inverse = np.linalg.inv(matrix)
        # Pixel centres: out pixel (col, row) at (col + .5, row + .5).
        # ndimage works in (row, col): source = inv @ (out - offset), swapped to (y, x).
        inv_rc = inverse[::-1, ::-1]
        start_rc = inv_rc @ (np.array([0.5, 0.5]) - offset[::-1]) - 0.5
        src = im.rgb.astype(np.float32) / 255.0
        if scale < 1.0:
            src = ndimage.gaussian_filter(src, (0.5 / scale, 0.5 / scale, 0))
        view = np.stack([ndimage.affine_transform(src[..., b], inv_rc, offset=start_rc, output_shape=(out_px, out_px),
                                                  order=1, mode="constant", cval=0.0) for b in range(3)], -1)
        valid = ndimage.affine_transform(np.ones((h, w), np.float32), inv_rc, offset=start_rc,
                                         output_shape=(out_px, out_px), order=0, mode="constant", cval=0.0)
        boxes = _ellipse_envelope(im.boxes, matrix, offset)
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        near = (cx > -out_px / 4) & (cx < out_px * 1.25) & (cy > -out_px / 4) & (cy < out_px * 1.25)
        return view, valid, boxes[near]

    def _photometric(self, x: np.ndarray) -> np.ndarray:
        rng, s = self.rng, self.settings
        x = x * rng.uniform(0.85, 1.15, 3).astype(np.float32) * np.float32(rng.uniform(0.6, 1.4))
        m = x.mean()
        x = (x - m) * np.float32(rng.uniform(0.7, 1.3)) + m
        grey = x.mean(-1, keepdims=True)
        x = grey + (x - grey) * np.float32(rng.uniform(0.6, 1.4))
        x = np.clip(x, 0, 1) ** np.float32(rng.uniform(0.7, 1.4))
        if rng.random() < s.blur_p:
            x = ndimage.gaussian_filter(x, (rng.uniform(0.3, 1.5),) * 2 + (0,))
        if rng.random() < s.jpeg_p:
            buf = io.BytesIO()
            PILImage.fromarray((np.clip(x, 0, 1) * 255).astype(np.uint8)).save(buf, "JPEG",
                                                                               quality=int(rng.integers(30, 91)))
            x = np.asarray(PILImage.open(buf), np.float32) / 255.0
        if rng.random() < s.noise_p:
            x = x + rng.normal(0, rng.uniform(0.005, 0.03), x.shape).astype(np.float32)
        return np.clip(x, 0, 1).astype(np.float32)

    def crop(self):
        """(image (crop, crop, 3) float32 0..1, targets dict)."""
        n = self.crop_px
        if self.rng.random() < self.settings.mosaic_p:
            half = n // 2
            image = np.zeros((n, n, 3), np.float32)
            valid = np.zeros((n, n), np.float32)
            boxes = []
            for oy in (0, half):
                for ox in (0, half):
                    v, m, b = self._view(half)
                    image[oy:oy + half, ox:ox + half] = v
                    valid[oy:oy + half, ox:ox + half] = m
                    b = b.copy()
                    b[:, [0, 2]] = b[:, [0, 2]].clip(0, half) + ox
                    b[:, [1, 3]] = b[:, [1, 3]].clip(0, half) + oy
                    boxes.append(b)
            boxes = np.concatenate(boxes)
        else:
            image, valid, boxes = self._view(n)
        image = self._photometric(image) * valid[..., None]
        return image, render_targets(boxes, n, valid)

    def batch(self, size: int, iteration: int | None = None):
        """``size`` crops and their stacked targets.

        With ``iteration``, the crops come from a generator seeded by (seed, iteration) alone,
        so any process can make any iteration's batch (:class:`BatchPool`); without, from the
        sampler's own stream.
        """
        if iteration is not None:
            self.rng = np.random.default_rng([self.seed, iteration])
        crops = [self.crop() for _ in range(size)]
        images = np.stack([c[0] for c in crops])
        targets = {k: np.stack([c[1][k] for c in crops]) for k in crops[0][1]}
        return images, targets


_POOL_SAMPLER: Sampler | None = None


def _pool_init(sampler: Sampler) -> None:
    global _POOL_SAMPLER
    _POOL_SAMPLER = sampler


def _pool_batch(size: int, iteration: int):
    return _POOL_SAMPLER.batch(size, iteration)


class BatchPool:
    """Batches made ahead by worker processes, each seeded by its iteration: the same batches as
    ``sampler.batch(size, iteration)`` in order, whatever the number of workers (for a GPU, which
    would otherwise wait on the CPU's crops)."""

    def __init__(self, sampler: Sampler, size: int, workers: int, first: int, last: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.size, self.next, self.last = size, first, last
        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                        initializer=_pool_init, initargs=(sampler,))
        self.pending = []
        self.ahead = 2 * workers

    def get(self):
        while len(self.pending) < self.ahead and self.next <= self.last:
            self.pending.append(self.pool.submit(_pool_batch, self.size, self.next))
            self.next += 1
        return self.pending.pop(0).result()

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)
