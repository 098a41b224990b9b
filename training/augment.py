"""Augmented training crops: crown pasting, closed-canopy mosaics, hard negatives, photometry.

Everything is drawn from one seeded ``numpy.random.Generator`` so a run (and a
resumed run, whose generator state is checkpointed) is reproducible. Units: crops
are ``crop_px`` square at 0.1 m/px times the crop's scale factor.

What a :class:`Recipe` can switch on (the ablation in training/README.md):

- **scale jitter** (log-uniform) and the 8 flips/rotations;
- **crown pasting**: crowns cut from the training image(s) (box content under the
  inscribed ellipse, soft edge) pasted side by side into real crops, optionally with
  cast shadows;
- **closed-canopy mosaics**: whole crops built from pasted crowns packed edge to
  edge over a dark understorey, each crown casting its shadow onto the crowns and
  ground behind it (the training images are open stands; users bring closed canopy);
- **hard negatives**: roads (asphalt with markings, dirt tracks), bare soil and
  ploughed fields, grass and meadow, rock, water, buildings and shadows without
  crowns, painted under the real crowns of a crop (trees stay on top and cast
  shadows across the new surface), and crops with no tree at all;
- **photometry**: mild (per-band gain, saturation, contrast, brightness, gamma, blur,
  noise) or strong (also hue, haze, illumination gradients, Gaussian blur, JPEG).

Pseudo-labelled regions carry a loss weight (0 where the teacher was unsure); the
weight follows the crop through every transform and is 1 on painted surfaces and
pasted crowns, whose truth is known.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from training.data import OUTPUT_STRIDE, Region, render_targets


@dataclass(frozen=True)
class Recipe:
    """Network width and augmentation switches of one training recipe."""

    name: str
    widths: tuple[int, int, int, int] = (32, 64, 96, 128)
    scale_range: tuple[float, float] = (0.6, 1.6)
    paste_p: float = 0.5
    paste_overlap: float = 0.2
    shadows: bool = False
    mosaic_p: float = 0.0
    surfaces_p: float = 0.0
    negative_scene_p: float = 0.0
    photometric: str = "mild"
    snag_boost: float = 1.0
    selftrain: bool = False


_TO_YIQ = np.asarray([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float64)
_FROM_YIQ = np.linalg.inv(_TO_YIQ)

# --------------------------------------------------------------------------- textures


def fractal(rng: np.random.Generator, h: int, w: int, cell: int, octaves: int = 4, persistence: float = 0.55):
    """(h, w) float32 fractal noise with unit standard deviation; ``cell`` is the coarsest grid step in px."""
    out = np.zeros((h, w), np.float32)
    amp = 1.0
    for _ in range(octaves):
        cell = max(1, int(cell))
        gh, gw = h // cell + 3, w // cell + 3
        grid = rng.standard_normal((gh, gw)).astype(np.float32)
        if cell > 1:
            up = np.asarray(Image.fromarray(grid, mode="F").resize((gw * cell, gh * cell), Image.BICUBIC))
        else:
            up = grid
        oy, ox = int(rng.integers(cell)), int(rng.integers(cell))
        out += amp * up[oy : oy + h, ox : ox + w]
        amp *= persistence
        cell //= 2
    return out / max(float(out.std()), 1e-6)


def _colour(base, size, rng, spread=8.0):
    return np.asarray(base, np.float32) + rng.uniform(-spread, spread, 3).astype(np.float32)


def texture(kind: str, rng: np.random.Generator, h: int, w: int, px_per_m: float) -> np.ndarray:
    """(h, w, 3) float32 0..255 surface of a kind that must never hold crowns."""
    if kind == "asphalt":
        base = _colour([rng.uniform(70, 175)] * 3, 3, rng, 6)
        tex = base + fractal(rng, h, w, 2, 2)[..., None] * rng.uniform(4, 12)
        tex += fractal(rng, h, w, 6 * px_per_m, 3)[..., None] * rng.uniform(3, 10)
    elif kind == "track":
        base = _colour([rng.uniform(140, 205), rng.uniform(120, 180), rng.uniform(90, 150)], 3, rng, 8)
        tex = base + fractal(rng, h, w, 3, 3)[..., None] * rng.uniform(6, 16)
    elif kind == "soil":
        base = _colour([rng.uniform(110, 195), rng.uniform(80, 155), rng.uniform(55, 125)], 3, rng, 10)
        tex = base + fractal(rng, h, w, 2 * px_per_m, 4)[..., None] * rng.uniform(8, 22)
        if rng.random() < 0.5:  # ploughed furrows
            a = rng.uniform(0, math.pi)
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            period = rng.uniform(0.4, 1.5) * px_per_m
            wave = np.sin((xx * math.cos(a) + yy * math.sin(a)) * 2 * math.pi / period)
            tex += (wave * rng.uniform(6, 20))[..., None]
    elif kind == "grass":
        dry = rng.random() < 0.35
        base = ([rng.uniform(150, 200), rng.uniform(140, 185), rng.uniform(90, 130)] if dry
                else [rng.uniform(70, 150), rng.uniform(95, 170), rng.uniform(45, 110)])
        base = _colour(base, 3, rng, 8)
        fine = fractal(rng, h, w, 2, 2)[..., None] * rng.uniform(6, 18)
        coarse = fractal(rng, h, w, 4 * px_per_m, 3)[..., None] * rng.uniform(4, 14)
        tex = base + fine + coarse * np.asarray([0.8, 1.0, 0.6], np.float32)
    elif kind == "rock":
        base = _colour([rng.uniform(110, 210)] * 3, 3, rng, 10)
        tex = base + fractal(rng, h, w, rng.uniform(0.5, 2) * px_per_m, 5, 0.7)[..., None] * rng.uniform(15, 35)
        cracks = np.abs(fractal(rng, h, w, 1.5 * px_per_m, 3)) < 0.06
        tex[cracks] *= rng.uniform(0.4, 0.7)
    elif kind == "water":
        base = _colour([rng.uniform(15, 60), rng.uniform(30, 85), rng.uniform(40, 95)], 3, rng, 6)
        tex = base + fractal(rng, h, w, 8 * px_per_m, 3)[..., None] * rng.uniform(2, 8)
    elif kind == "roof":
        palette = ([rng.uniform(90, 200)] * 3, [rng.uniform(120, 180), 60, 50], [150, 110, 80], [220, 220, 215])
        base = _colour(palette[int(rng.integers(len(palette)))], 3, rng, 12)
        tex = base + fractal(rng, h, w, 2, 2)[..., None] * rng.uniform(1, 5)
    elif kind == "understorey":
        base = _colour([rng.uniform(25, 80), rng.uniform(35, 90), rng.uniform(25, 70)], 3, rng, 8)
        tex = base + fractal(rng, h, w, 1.5 * px_per_m, 4)[..., None] * rng.uniform(6, 18)
    else:
        raise ValueError(kind)
    return np.clip(tex, 0, 255).astype(np.float32)


# --------------------------------------------------------------------------- masks


def stripe_mask(rng, size, width_px, px_per_m):
    """Soft mask of a gently curving stripe across the crop, and the signed distance and along-track coordinate."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    a = rng.uniform(0, math.pi)
    n = (math.cos(a), math.sin(a))
    c = rng.uniform(0.2, 0.8) * size
    along = xx * -n[1] + yy * n[0]
    bend = rng.uniform(0, 0.15) * size * np.sin(along / size * rng.uniform(1, 4) + rng.uniform(0, 2 * math.pi))
    d = (xx - size / 2) * n[0] + (yy - size / 2) * n[1] + size / 2 - c + bend
    mask = np.clip((width_px / 2 - np.abs(d)) / 2 + 0.5, 0, 1)
    return mask.astype(np.float32), d, along


def blob_mask(rng, size):
    """Soft irregular region covering 20-70 % of the crop (a field, a meadow, a pond)."""
    f = fractal(rng, size, size, rng.uniform(48, 160), 3, 0.45)
    t = np.quantile(f, 1 - rng.uniform(0.2, 0.7))
    return np.clip((f - t) * rng.uniform(3, 12) + 0.5, 0, 1).astype(np.float32)


def rect_mask(rng, size, w, h, cx=None, cy=None, angle=None):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cx = rng.uniform(0, size) if cx is None else cx
    cy = rng.uniform(0, size) if cy is None else cy
    a = rng.uniform(0, math.pi) if angle is None else angle
    u = (xx - cx) * math.cos(a) + (yy - cy) * math.sin(a)
    v = -(xx - cx) * math.sin(a) + (yy - cy) * math.cos(a)
    m = np.clip(w / 2 - np.abs(u) + 0.5, 0, 1) * np.clip(h / 2 - np.abs(v) + 0.5, 0, 1)
    return m.astype(np.float32), u, v


def ellipse_alpha(boxes: np.ndarray, size: int) -> np.ndarray:
    """(size, size) union of the soft ellipses inscribed in the boxes."""
    alpha = np.zeros((size, size), np.float32)
    for x0, y0, x1, y1 in boxes:
        c0, r0, c1, r1 = max(0, int(x0)), max(0, int(y0)), min(size, int(math.ceil(x1))), min(size, int(math.ceil(y1)))
        if c1 <= c0 or r1 <= r0:
            continue
        rx, ry = max((x1 - x0) / 2, 1), max((y1 - y0) / 2, 1)
        xs = (np.arange(c0, c1) + 0.5 - (x0 + x1) / 2) / rx
        ys = (np.arange(r0, r1) + 0.5 - (y0 + y1) / 2) / ry
        r = np.sqrt(xs[None, :] ** 2 + ys[:, None] ** 2)
        alpha[r0:r1, c0:c1] = np.maximum(alpha[r0:r1, c0:c1], np.clip((1 - r) / 0.15, 0, 1))
    return alpha


def capsule_window(size, cx, cy, r, dx, dy, length):
    """Soft capsule from (cx, cy) to (cx + dx*length, cy + dy*length), radius r tapering to r/2.

    Returns ``(rows, cols, mask)``: the slices of the (size, size) crop it covers and
    the mask over them (a conifer's shadow narrows towards its tip).
    """
    ex, ey = cx + dx * length, cy + dy * length
    x0, x1 = int(max(0, min(cx, ex) - r - 2)), int(min(size, max(cx, ex) + r + 3))
    y0, y1 = int(max(0, min(cy, ey) - r - 2)), int(min(size, max(cy, ey) + r + 3))
    if x1 <= x0 or y1 <= y0:
        return slice(0, 0), slice(0, 0), np.zeros((0, 0), np.float32)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    t = np.clip((xx - cx) * dx + (yy - cy) * dy, 0, length)
    d = np.hypot(xx - cx - t * dx, yy - cy - t * dy)
    rad = r * (1 - 0.5 * t / max(length, 1e-6))
    return slice(y0, y1), slice(x0, x1), np.clip((rad - d) / 2 + 0.5, 0, 1)


def capsule(size, cx, cy, r, dx, dy, length):
    """(size, size) mask of :func:`capsule_window`."""
    out = np.zeros((size, size), np.float32)
    rows, cols, m = capsule_window(size, cx, cy, r, dx, dy, length)
    out[rows, cols] = m
    return out


def shadow_direction(image: np.ndarray, boxes: np.ndarray) -> tuple[float, float]:
    """Unit vector (dx, dy), in pixels, in which the crowns of an image cast their shadows.

    The darkest direction just beyond the crowns' edges, over all crowns; lets
    synthetic shadows fall the same way as the real ones of the pasted crowns.
    """
    lum = image.astype(np.float32).mean(2)
    h, w = lum.shape
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    r = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / 2
    best, best_lum = (1.0, 0.0), np.inf
    for a in np.linspace(0, 2 * math.pi, 36, endpoint=False):
        xs = np.round(cx + 1.5 * r * math.cos(a)).astype(int)
        ys = np.round(cy + 1.5 * r * math.sin(a)).astype(int)
        ok = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
        if ok.sum() and lum[ys[ok], xs[ok]].mean() < best_lum:
            best, best_lum = (math.cos(a), math.sin(a)), lum[ys[ok], xs[ok]].mean()
    return best


# --------------------------------------------------------------------------- sampler


def crown_bank(train_regions: list[Region], rng: np.random.Generator):
    """(RGB patch, alpha, grey) of every training crown: the box content under its inscribed ellipse.

    The alpha fades over the outer 15% of the ellipse so pasted crowns have no hard
    seam; ``grey`` marks low-saturation crowns (snags), which a recipe may oversample.
    """
    bank = []
    for region in train_regions:
        for x0, y0, x1, y1 in region.boxes.astype(int):
            if x1 - x0 < 8 or y1 - y0 < 8:
                continue
            patch = region.image[y0:y1, x0:x1]
            h, w = patch.shape[:2]
            yy, xx = np.mgrid[0:h, 0:w]
            r = np.sqrt(((xx + 0.5 - w / 2) / (w / 2)) ** 2 + ((yy + 0.5 - h / 2) / (h / 2)) ** 2)
            alpha = np.clip((1.0 - r) / 0.15, 0, 1).astype(np.float32)
            p = patch.astype(np.float32)[alpha > 0.5]
            sat = float(np.mean((p.max(1) - p.min(1)) / np.maximum(p.max(1), 1)))
            bank.append((patch, alpha, sat < 0.2))
    order = rng.permutation(len(bank))
    return [bank[i] for i in order]


class Sampler:
    """Random augmented training crops with their targets and loss weights, from a seeded generator."""

    SURFACES = ("asphalt", "track", "soil", "grass", "rock", "water", "building", "shadow")

    def __init__(self, train_regions: list[Region], crop_px: int, seed: int, region_weights: list[float],
                 recipe: Recipe = Recipe("baseline")):
        self.regions = train_regions
        self.crop_px = crop_px
        self.recipe = recipe
        self.rng = np.random.default_rng(seed)
        self.weights = np.asarray(region_weights, np.float64) / np.sum(region_weights)
        labelled = [r for r in train_regions if r.weight is None]
        self.bank = crown_bank(labelled, self.rng)
        grey = np.array([g for _, _, g in self.bank], bool)
        p = np.where(grey, recipe.snag_boost, 1.0)
        self.bank_p = p / p.sum()
        self.bank_hw = np.asarray([a.shape for _, a, _ in self.bank], np.int64).reshape(-1, 2)
        self.sun = [shadow_direction(r.image, r.boxes) if len(r.boxes) else (1.0, 0.0) for r in train_regions]
        bank_sun = [self.sun[i] for i, r in enumerate(train_regions) if r.weight is None]
        self.bank_sun = bank_sun[0] if bank_sun else (1.0, 0.0)

    # -- real crops

    def _crop(self):
        rng = self.rng
        index = int(rng.choice(len(self.regions), p=self.weights))
        region = self.regions[index]
        lo, hi = self.recipe.scale_range
        scale = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        h, w = region.image.shape[:2]
        src = min(round(self.crop_px / scale), h, w)
        scale = self.crop_px / src
        y0 = int(rng.integers(0, h - src + 1))
        x0 = int(rng.integers(0, w - src + 1))
        # PIL's bilinear resize widens its kernel when shrinking (antialiased), like torch's antialias=True.
        patch = Image.fromarray(region.image[y0 : y0 + src, x0 : x0 + src]).resize(
            (self.crop_px, self.crop_px), Image.BILINEAR)
        boxes = region.boxes - [x0, y0, x0, y0]
        boxes = np.clip(boxes, 0, src) * scale
        keep = ((boxes[:, 2] - boxes[:, 0]) > 2) & ((boxes[:, 3] - boxes[:, 1]) > 2)
        if region.weight is None:
            weight = np.ones((self.crop_px, self.crop_px), np.float32)
        else:
            idx = np.minimum(((np.arange(self.crop_px) + 0.5) / scale).astype(int), src - 1)
            weight = region.weight[y0 : y0 + src, x0 : x0 + src][idx[:, None], idx[None, :]].astype(np.float32)
        return np.asarray(patch, np.float32), boxes[keep], weight, scale, self.sun[index]

    # -- crowns

    def _pick_crowns(self, scale, n):
        """n candidate crowns to paste at ``scale``: bank index, quarter turns, flip, height, width (arrays)."""
        rng = self.rng
        idx = rng.choice(len(self.bank), size=n, p=self.bank_p)
        if self.recipe.mosaic_p > 0:  # per-crown flips/rotations: more variety from a small bank
            k, flip = rng.integers(0, 4, n), rng.random(n) < 0.5
        else:
            k, flip = np.zeros(n, np.int64), np.zeros(n, bool)
        s = scale * np.exp(rng.uniform(np.log(0.8), np.log(1.25), n))
        hw = self.bank_hw[idx]
        h = np.where(k % 2, hw[:, 1], hw[:, 0])
        w = np.where(k % 2, hw[:, 0], hw[:, 1])
        return idx, k, flip, np.maximum(4, np.round(h * s)).astype(int), np.maximum(4, np.round(w * s)).astype(int)

    def _render_crown(self, i, k, flip, h, w):
        patch, alpha, _ = self.bank[i]
        patch, alpha = np.rot90(patch, k), np.rot90(alpha, k)
        if flip:
            patch, alpha = patch[:, ::-1], alpha[:, ::-1]
        rgb = np.asarray(Image.fromarray(np.ascontiguousarray(patch)).resize((w, h), Image.BILINEAR), np.float32)
        a = np.asarray(Image.fromarray(np.ascontiguousarray(alpha)).resize((w, h), Image.BILINEAR), np.float32)
        if self.recipe.mosaic_p > 0:  # crowns in a stand differ in vigour and light
            rgb = rgb * self.rng.uniform(0.65, 1.1)
        return rgb, a

    def _place(self, boxes, n, max_overlap, scale, attempts):
        """Crowns placed side by side, at most ``max_overlap`` of the smaller box overlapped: [(rgb, a, x0, y0)]."""
        rng = self.rng
        size = self.crop_px
        idx, k, flip, hs, ws = self._pick_crowns(scale, attempts)
        xs = (rng.random(attempts) * (size - ws // 2) - ws // 4).astype(int)
        ys = (rng.random(attempts) * (size - hs // 2) - hs // 4).astype(int)
        placed = np.zeros((len(boxes) + attempts, 4), np.float64)
        placed[: len(boxes)] = np.asarray(boxes, np.float64).reshape(-1, 4)
        count = len(boxes)
        accepted = []
        for j in range(attempts):
            if len(accepted) >= n:
                break
            h, w, x0, y0 = hs[j], ws[j], xs[j], ys[j]
            if h >= size or w >= size:
                continue
            if count:
                others = placed[:count]
                ix = np.minimum(others[:, 2], x0 + w) - np.maximum(others[:, 0], x0)
                iy = np.minimum(others[:, 3], y0 + h) - np.maximum(others[:, 1], y0)
                smaller = np.minimum((others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1]), w * h)
                # Touching and interlocking crowns, but no crown hidden under another.
                if np.any((ix > 0) & (iy > 0) & (ix * iy > max_overlap * smaller)):
                    continue
            placed[count] = (x0, y0, x0 + w, y0 + h)
            count += 1
            accepted.append(j)
        return [(*self._render_crown(idx[j], k[j], flip[j], hs[j], ws[j]), xs[j], ys[j]) for j in accepted]

    def _paint(self, image, weight, placements, sun, shadows):
        """Composite placed crowns; with ``shadows`` each first darkens what lies behind it, away from the sun.

        Crowns farther along the shadow direction are painted first, so a crown's shadow
        falls on the crowns behind it and never on itself or the crowns in front of it.
        """
        rng = self.rng
        size = self.crop_px
        dx, dy = sun
        jitter = rng.uniform(-0.3, 0.3)
        dx, dy = dx * math.cos(jitter) - dy * math.sin(jitter), dx * math.sin(jitter) + dy * math.cos(jitter)
        dark = rng.uniform(0.35, 0.65)
        tint = np.asarray([dark, dark * 1.03, min(1.0, dark * 1.2)], np.float32)
        stretch = rng.uniform(0.8, 2.5)
        order = sorted(placements, key=lambda p: -((p[2] + p[1].shape[1] / 2) * dx + (p[3] + p[1].shape[0] / 2) * dy))
        boxes = []
        for rgb, a, x0, y0 in order:
            h, w = a.shape
            cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(size, x0 + w), min(size, y0 + h)
            if cx1 <= cx0 or cy1 <= cy0:
                continue
            sub = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
            if shadows:
                r = min(w, h) / 2 * 0.85
                rows, cols, s = capsule_window(size, x0 + w / 2, y0 + h / 2, r, dx, dy,
                                               stretch * r * rng.uniform(0.8, 1.25))
                # A crown does not shade itself: clear its alpha where the two windows meet.
                iy0, iy1 = max(rows.start, cy0), min(rows.stop, cy1)
                ix0, ix1 = max(cols.start, cx0), min(cols.stop, cx1)
                if iy1 > iy0 and ix1 > ix0:
                    s[iy0 - rows.start : iy1 - rows.start, ix0 - cols.start : ix1 - cols.start] *= (
                        1 - a[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0])
                image[rows, cols] *= 1 - s[..., None] * (1 - tint)
            aa = a[sub][..., None]
            image[cy0:cy1, cx0:cx1] = image[cy0:cy1, cx0:cx1] * (1 - aa) + rgb[sub] * aa
            weight[cy0:cy1, cx0:cx1] = np.maximum(weight[cy0:cy1, cx0:cx1], a[sub] > 0.5)
            boxes.append([x0, y0, x0 + w, y0 + h])
        return np.clip(np.asarray(boxes, np.float64).reshape(-1, 4), 0, size)

    def _paste(self, image, boxes, weight, scale, sun):
        n = int(self.rng.integers(8, 61))
        placements = self._place(boxes, n, self.recipe.paste_overlap, scale, n)
        new = self._paint(image, weight, placements, sun, self.recipe.shadows)
        return image, np.concatenate([boxes.reshape(-1, 4), new])

    def _mosaic(self):
        """A crop of closed canopy: crowns packed edge to edge over a dark understorey, with cast shadows."""
        rng = self.rng
        size = self.crop_px
        lo, hi = self.recipe.scale_range
        scale = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        px_per_m = 10 * scale
        if rng.random() < 0.6:
            image = texture("understorey", rng, size, size, px_per_m)
        else:
            image, _, _, _, _ = self._crop()
            image *= rng.uniform(0.35, 0.7)
        weight = np.ones((size, size), np.float32)
        placements = self._place([], 400, rng.uniform(0.1, 0.35), scale, 400)
        boxes = self._paint(image, weight, placements, self.bank_sun, True)
        return image, boxes, weight, scale

    # -- hard negatives

    def _surface(self, image, crowns, scale, sun, kind):
        """Paint one non-tree surface under the crowns (alpha ``crowns``); returns its mask."""
        rng = self.rng
        size = self.crop_px
        px_per_m = 10 * scale
        if kind == "shadow":  # shadows without crowns: dark patches cast from outside the crop
            m = np.zeros((size, size), np.float32)
            for _ in range(int(rng.integers(1, 5))):
                r = rng.uniform(1.0, 4.0) * px_per_m
                m = np.maximum(m, capsule(size, rng.uniform(0, size), rng.uniform(0, size), r, *sun,
                                          rng.uniform(2, 6) * r))
            m *= 1 - crowns
            dark = rng.uniform(0.3, 0.6)
            image *= 1 - m[..., None] * (1 - np.asarray([dark, dark * 1.03, min(1, dark * 1.2)], np.float32))
            return m
        if kind in ("asphalt", "track"):
            width = rng.uniform(3, 10 if kind == "asphalt" else 5) * px_per_m
            m, d, along = stripe_mask(rng, size, width, px_per_m)
            tex = texture(kind, rng, size, size, px_per_m)
            if kind == "asphalt" and rng.random() < 0.6:  # centre and edge markings
                colour = np.asarray([235, 235, 230] if rng.random() < 0.6 else [225, 190, 60], np.float32)
                line = np.abs(d) < 0.08 * px_per_m + 0.5
                if rng.random() < 0.6:
                    line &= (along % (6 * px_per_m)) < 3 * px_per_m
                edge = np.abs(np.abs(d) - (width / 2 - 0.3 * px_per_m)) < 0.06 * px_per_m + 0.5
                tex[line | (edge & (rng.random() < 0.5))] = colour
            elif kind == "track":  # two darker wheel ruts
                ruts = np.abs(np.abs(d) - 0.8 * px_per_m) < 0.25 * px_per_m
                tex[ruts] *= rng.uniform(0.7, 0.9)
        elif kind == "building":
            m = np.zeros((size, size), np.float32)
            tex = texture("soil" if rng.random() < 0.5 else "asphalt", rng, size, size, px_per_m)
            for _ in range(int(rng.integers(1, 4))):
                w, h = rng.uniform(6, 25) * px_per_m, rng.uniform(5, 15) * px_per_m
                cx, cy, a = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(0, math.pi)
                roof, u, v = rect_mask(rng, size, w, h, cx, cy, a)
                shade, _, _ = rect_mask(rng, size, w, h, cx + sun[0] * 0.15 * h, cy + sun[1] * 0.15 * h, a)
                yard = np.clip(shade - roof, 0, 1)
                tex *= 1 - yard[..., None] * 0.55
                colour = texture("roof", rng, size, size, px_per_m)
                colour[v > 0] *= rng.uniform(0.75, 1.0)  # the two faces of a gable roof
                tex = tex * (1 - roof[..., None]) + colour * roof[..., None]
                m = np.maximum(m, np.maximum(roof, yard))
            if rng.random() < 0.5:  # the plot around the house
                plot = rect_mask(rng, size, rng.uniform(20, 40) * px_per_m, rng.uniform(20, 40) * px_per_m)[0]
                m = np.maximum(m, plot)
        else:
            m = blob_mask(rng, size) if rng.random() < 0.7 else rect_mask(
                rng, size, rng.uniform(0.4, 1.5) * size, rng.uniform(0.4, 1.5) * size)[0]
            tex = texture(kind, rng, size, size, px_per_m)
        m = m * (1 - crowns)
        image[:] = image * (1 - m[..., None]) + tex * m[..., None]
        return m

    def _surfaces(self, image, boxes, weight, scale, sun, n):
        crowns = ellipse_alpha(boxes, self.crop_px)
        painted = np.zeros_like(weight)
        for _ in range(n):
            kind = self.SURFACES[int(self.rng.integers(len(self.SURFACES)))]
            painted = np.maximum(painted, self._surface(image, crowns, scale, sun, kind))
        if len(boxes):  # the crowns cast shadows across the new surfaces
            dark = self.rng.uniform(0.35, 0.65)
            tint = np.asarray([dark, dark * 1.03, min(1.0, dark * 1.2)], np.float32)
            stretch = self.rng.uniform(0.8, 2.5)
            shade = np.zeros_like(weight)
            for x0, y0, x1, y1 in boxes:
                r = min(x1 - x0, y1 - y0) / 2 * 0.85
                shade = np.maximum(shade, capsule(self.crop_px, (x0 + x1) / 2, (y0 + y1) / 2, r, *sun, stretch * r))
            shade *= painted * (1 - crowns)
            image *= 1 - shade[..., None] * (1 - tint)
        weight[painted > 0.01] = 1.0
        return image

    def _negative_scene(self):
        """A crop with no tree: a ground surface with roads, buildings, fields, shadows."""
        rng = self.rng
        size = self.crop_px
        lo, hi = self.recipe.scale_range
        scale = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        ground = ("soil", "grass", "rock", "asphalt", "water", "track")[int(rng.integers(6))]
        image = texture(ground, rng, size, size, 10 * scale)
        weight = np.ones((size, size), np.float32)
        image = self._surfaces(image, np.zeros((0, 4)), weight, scale, self.bank_sun, int(rng.integers(1, 4)))
        return image, np.zeros((0, 4)), weight

    # -- photometry

    def _colour_mild(self, image: np.ndarray) -> np.ndarray:
        rng = self.rng
        x = image / 255.0
        x = x * rng.uniform(0.9, 1.1, 3)  # per-band gain
        grey = x.mean(2, keepdims=True)
        x = grey + (x - grey) * rng.uniform(0.6, 1.4)  # saturation
        x = (x - x.mean()) * rng.uniform(0.7, 1.3) + x.mean()  # contrast
        x = x * rng.uniform(0.7, 1.3)  # brightness
        x = np.clip(x, 0, 1) ** rng.uniform(0.8, 1.25)  # gamma
        if rng.random() < 0.2:
            t = torch.from_numpy(x.transpose(2, 0, 1).astype(np.float32))[None]
            k = torch.tensor([1, 2, 1], dtype=torch.float32)
            k = (k[:, None] * k[None, :] / 16).expand(3, 1, 3, 3)
            x = F.conv2d(F.pad(t, (1, 1, 1, 1), mode="replicate"), k, groups=3)[0].numpy().transpose(1, 2, 0)
        if rng.random() < 0.3:
            x = x + rng.normal(0, rng.uniform(0.005, 0.03), x.shape)
        return np.clip(x, 0, 1) * 255.0

    def _colour_strong(self, image: np.ndarray) -> np.ndarray:
        rng = self.rng
        size = image.shape[0]
        x = image.astype(np.float32) / 255.0
        x = x * rng.uniform(0.85, 1.15, 3).astype(np.float32)  # per-band gain (sensor, white balance)
        # Hue: rotate the chroma plane of YIQ.
        a = rng.uniform(-0.35, 0.35)
        rot = np.asarray([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]], np.float32)
        sat = np.diag([1, *(2 * [rng.uniform(0.45, 1.5)])]).astype(np.float32)
        m = _FROM_YIQ @ sat @ rot @ _TO_YIQ
        x = np.einsum("hwc,dc->hwd", x, m.astype(np.float32))
        mean = x.mean()
        x = (x - mean) * rng.uniform(0.6, 1.5) + mean  # contrast
        x = x * rng.uniform(0.55, 1.45)  # brightness
        if rng.random() < 0.3:  # illumination gradient (vignetting, terrain)
            yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
            b = rng.uniform(-0.5, 0.5, 2)
            x = x * (1 + xx[..., None] * b[0] + yy[..., None] * b[1])
        x = np.clip(x, 0, 1) ** rng.uniform(0.7, 1.45)  # gamma
        if rng.random() < 0.25:  # haze
            h = rng.uniform(0.05, 0.4)
            haze = np.asarray([0.78, 0.82, 0.9], np.float32) * rng.uniform(0.8, 1.1)
            x = x * (1 - h) + haze * h
        if rng.random() < 0.3:
            x = x + rng.normal(0, rng.uniform(0.005, 0.03), x.shape).astype(np.float32)
        img = Image.fromarray((np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8))
        if rng.random() < 0.3:
            img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.6)))
        if rng.random() < 0.3:
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=int(rng.integers(20, 81)))
            img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        return np.asarray(img, np.float32)

    # -- assembly

    def sample(self):
        """(image (crop, crop, 3) float 0..255, canopy target, centre target, loss weight), targets at 1/4."""
        rng = self.rng
        recipe = self.recipe
        size = self.crop_px
        u = rng.random()
        if u < recipe.mosaic_p:
            image, boxes, weight, _ = self._mosaic()
        elif u < recipe.mosaic_p + recipe.negative_scene_p:
            image, boxes, weight = self._negative_scene()
        else:
            image, boxes, weight, scale, sun = self._crop()
            if rng.random() < recipe.paste_p:
                image, boxes = self._paste(image, boxes, weight, scale, sun)
            if rng.random() < recipe.surfaces_p:
                image = self._surfaces(image, boxes, weight, scale, sun, int(rng.integers(1, 3)))
        if rng.random() < 0.5:
            image, weight = image[:, ::-1], weight[:, ::-1]
            boxes = np.stack([size - boxes[:, 2], boxes[:, 1], size - boxes[:, 0], boxes[:, 3]], 1)
        for _ in range(int(rng.integers(4))):
            # rot90 counter-clockwise: new x = y, new y = size - x.
            image, weight = np.rot90(image), np.rot90(weight)
            boxes = np.stack([boxes[:, 1], size - boxes[:, 2], boxes[:, 3], size - boxes[:, 0]], 1)
        image = np.ascontiguousarray(image)
        image = self._colour_strong(image) if recipe.photometric == "strong" else self._colour_mild(image)
        canopy, centres = render_targets(boxes, size)
        n = size // OUTPUT_STRIDE
        w = np.ascontiguousarray(weight).reshape(n, OUTPUT_STRIDE, n, OUTPUT_STRIDE).mean((1, 3))
        return image.astype(np.float32), canopy, centres, w.astype(np.float32)

    def batch(self, n: int, mean, std):
        """Normalised images (n, 3, crop, crop), targets (n, 2, crop/4, crop/4), weights (n, crop/4, crop/4)."""
        images, canopies, centres, weights = zip(*(self.sample() for _ in range(n)))
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) / 255.0
        x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
        y = torch.from_numpy(np.stack([np.stack(canopies), np.stack(centres)], 1))
        return x.float(), y, torch.from_numpy(np.stack(weights))
