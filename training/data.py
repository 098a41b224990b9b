"""Training data: the permitted DeepForest sample images, their splits, targets and augmentation.

Only three files of the ``deepforest==2.1.0`` wheel are used (all NEON RGB at
0.1 m/px): ``2019_YELL_2_528000_4978000_image_crop2`` (Pascal-VOC boxes),
``OSBS_029`` (DeepForest CSV boxes) and the unlabelled ``SOAP_031`` (used only
for the input normalisation statistics). Every other annotated image in the
wheel is reserved for independent evaluation and is never extracted.

Splits, in image rows (y down): YELL rows [0, 1900) and OSBS rows [0, 260) train;
YELL rows [1950, 2472) and OSBS rows [280, 400) validate. The gaps keep crowns
that straddle a split line out of both sides' learning signal.

Targets are derived from boxes at 1/4 of the crop resolution (the network's
output grid): canopy = union of the ellipses inscribed in the boxes; centres =
a Gaussian at each box centre with sigma = max(2 px, min(w, h) / 8), and the
grid cell nearest each centre set to exactly 1 (the positives of the focal loss).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

DEEPFOREST_VERSION = "2.1.0"
YELL = "2019_YELL_2_528000_4978000_image_crop2"
OSBS = "OSBS_029"
SOAP = "SOAP_031"
PERMITTED_FILES = (f"{YELL}.png", f"{YELL}.xml", f"{OSBS}.png", f"{OSBS}.csv", f"{SOAP}.png")
OUTPUT_STRIDE = 4

# (image, first row, end row) of each split; rows are full-width bands.
TRAIN_BANDS = ((YELL, 0, 1900), (OSBS, 0, 260))
VAL_BANDS = ((YELL, 1950, 2472), (OSBS, 280, 400))


def fetch_data(data_dir: Path) -> dict[str, str]:
    """Download the deepforest wheel with pip and extract only the permitted files.

    Returns {file name: sha256} of the extracted files, for the model's provenance.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    if not all((data_dir / name).is_file() for name in PERMITTED_FILES):
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                 f"deepforest=={DEEPFOREST_VERSION}", "-d", tmp],
                check=True,
            )
            wheel = next(Path(tmp).glob("deepforest-*.whl"))
            with zipfile.ZipFile(wheel) as zf:
                for name in PERMITTED_FILES:
                    (data_dir / name).write_bytes(zf.read(f"deepforest/data/{name}"))
    return {name: hashlib.sha256((data_dir / name).read_bytes()).hexdigest() for name in PERMITTED_FILES}


def load_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    return np.asarray(Image.open(path).convert("RGB"))


def load_annotated(data_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{image name: (RGB image, boxes (N, 4) in pixels)} of the two annotated images."""
    from engine.evaluate import read_boxes

    return {
        YELL: (load_image(data_dir / f"{YELL}.png"), read_boxes(data_dir / f"{YELL}.xml")),
        OSBS: (load_image(data_dir / f"{OSBS}.png"), read_boxes(data_dir / f"{OSBS}.csv", f"{OSBS}.png")),
    }


@dataclass(frozen=True)
class Region:
    """A band of an annotated image with the boxes whose centre lies inside, clipped and shifted to it."""

    name: str
    image: np.ndarray  # (H, W, 3) uint8
    boxes: np.ndarray  # (N, 4) pixels of this band


def cut_band(name: str, image: np.ndarray, boxes: np.ndarray, row0: int, row1: int) -> Region:
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    inside = boxes[(cy >= row0) & (cy < row1)].copy()
    inside[:, [1, 3]] = np.clip(inside[:, [1, 3]], row0, row1) - row0
    return Region(f"{name}[{row0}:{row1}]", image[row0:row1], inside)


def regions(annotated, bands) -> list[Region]:
    return [cut_band(name, *annotated[name], r0, r1) for name, r0, r1 in bands]


def normalisation_stats(images: list[np.ndarray]) -> tuple[list[float], list[float]]:
    """Per-band mean and std of pixel values scaled to 0..1, over all given images."""
    flat = np.concatenate([im.reshape(-1, 3) for im in images]).astype(np.float64) / 255.0
    return flat.mean(0).round(4).tolist(), flat.std(0).round(4).tolist()


def render_targets(boxes: np.ndarray, size_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Canopy and centre targets (2 arrays of (size/4, size/4) float32) for boxes in crop pixels."""
    n = size_px // OUTPUT_STRIDE
    canopy = np.zeros((n, n), np.float32)
    centres = np.zeros((n, n), np.float32)
    cell = (np.arange(n) + 0.5) * OUTPUT_STRIDE  # cell centres in crop pixels
    for x0, y0, x1, y1 in boxes:
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        if rx <= 0 or ry <= 0:
            continue
        sigma = max(2.0, min(rx, ry) / 4)
        reach = max(rx, ry, 3 * sigma)
        c0, c1 = np.searchsorted(cell, [cx - reach, cx + reach])
        r0, r1 = np.searchsorted(cell, [cy - reach, cy + reach])
        if c0 >= c1 or r0 >= r1:
            continue
        dx = (cell[c0:c1][None, :] - cx)
        dy = (cell[r0:r1][:, None] - cy)
        inside = (dx / rx) ** 2 + (dy / ry) ** 2 <= 1.0
        canopy[r0:r1, c0:c1] = np.maximum(canopy[r0:r1, c0:c1], inside)
        gauss = np.exp(-(dx**2 + dy**2) / (2 * sigma**2))
        centres[r0:r1, c0:c1] = np.maximum(centres[r0:r1, c0:c1], gauss)
        j, i = int(cx // OUTPUT_STRIDE), int(cy // OUTPUT_STRIDE)
        if 0 <= i < n and 0 <= j < n:
            centres[i, j] = 1.0
    return canopy, centres


def crown_bank(train_regions: list[Region], rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """(RGB patch, alpha) of every training crown: the box content under its inscribed ellipse.

    The alpha fades over the outer 15% of the ellipse so pasted crowns have no hard seam.
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
            bank.append((patch, alpha))
    order = rng.permutation(len(bank))
    return [bank[i] for i in order]


class Sampler:
    """Random augmented training crops with their targets, from a seeded generator.

    Augmentations (all seeded): scale jitter 0.6-1.6x, log-uniform (tree sizes
    of other stands); pasting 8-60 crowns from the crown bank into half of the
    crops, side by side with little overlap (closed canopy with touching crowns,
    which the open permitted stands lack); the 8 flips/rotations; brightness,
    contrast, saturation, per-band gain and gamma jitter, blur and noise (other
    sensors, seasons and illumination).
    """

    def __init__(self, train_regions: list[Region], crop_px: int, seed: int, region_weights: list[float]):
        self.regions = train_regions
        self.crop_px = crop_px
        self.rng = np.random.default_rng(seed)
        self.weights = np.asarray(region_weights, np.float64) / np.sum(region_weights)
        self.bank = crown_bank(train_regions, self.rng)

    def _crop(self):
        rng = self.rng
        region = self.regions[rng.choice(len(self.regions), p=self.weights)]
        scale = float(np.exp(rng.uniform(np.log(0.6), np.log(1.6))))
        h, w = region.image.shape[:2]
        src = min(round(self.crop_px / scale), h, w)
        scale = self.crop_px / src
        y0 = int(rng.integers(0, h - src + 1))
        x0 = int(rng.integers(0, w - src + 1))
        patch = torch.from_numpy(region.image[y0 : y0 + src, x0 : x0 + src].copy()).permute(2, 0, 1).float()[None]
        patch = F.interpolate(patch, size=(self.crop_px, self.crop_px), mode="bilinear", align_corners=False,
                              antialias=scale < 1)[0]
        boxes = region.boxes - [x0, y0, x0, y0]
        boxes = np.clip(boxes, 0, src) * scale
        keep = ((boxes[:, 2] - boxes[:, 0]) > 2) & ((boxes[:, 3] - boxes[:, 1]) > 2)
        return patch.numpy().transpose(1, 2, 0), boxes[keep], scale

    def _paste(self, image: np.ndarray, boxes: np.ndarray, scale: float):
        rng = self.rng
        size = self.crop_px
        placed = list(boxes)
        for _ in range(rng.integers(8, 61)):
            patch, alpha = self.bank[rng.integers(len(self.bank))]
            s = scale * float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
            h, w = max(4, round(patch.shape[0] * s)), max(4, round(patch.shape[1] * s))
            if h >= size or w >= size:
                continue
            x0, y0 = int(rng.integers(-w // 4, size - 3 * w // 4)), int(rng.integers(-h // 4, size - 3 * h // 4))
            new = np.array([x0, y0, x0 + w, y0 + h], np.float64)
            if placed:
                others = np.asarray(placed)
                ix = np.clip(np.minimum(others[:, 2], new[2]) - np.maximum(others[:, 0], new[0]), 0, None)
                iy = np.clip(np.minimum(others[:, 3], new[3]) - np.maximum(others[:, 1], new[1]), 0, None)
                smaller = np.minimum((others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1]), w * h)
                # Touching and slightly interlocking crowns, but no crown hidden under another.
                if np.any(ix * iy > 0.2 * smaller):
                    continue
            rgb = np.asarray(Image.fromarray(patch).resize((w, h), Image.BILINEAR), np.float32)
            a = np.asarray(Image.fromarray(alpha).resize((w, h), Image.BILINEAR), np.float32)[..., None]
            cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(size, x0 + w), min(size, y0 + h)
            sub = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
            image[cy0:cy1, cx0:cx1] = image[cy0:cy1, cx0:cx1] * (1 - a[sub]) + rgb[sub] * a[sub]
            placed.append(new)
        out = np.asarray(placed, np.float64).reshape(-1, 4)
        return image, np.clip(out, 0, size)

    def _colour(self, image: np.ndarray) -> np.ndarray:
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

    def sample(self):
        """(image (crop, crop, 3) float 0..255, canopy target, centre target)."""
        image, boxes, scale = self._crop()
        if self.rng.random() < 0.5:
            image, boxes = self._paste(image, boxes, scale)
        size = self.crop_px
        if self.rng.random() < 0.5:
            image = image[:, ::-1]
            boxes = np.stack([size - boxes[:, 2], boxes[:, 1], size - boxes[:, 0], boxes[:, 3]], 1)
        for _ in range(int(self.rng.integers(4))):
            # rot90 counter-clockwise: new x = y, new y = size - x.
            image = np.rot90(image)
            boxes = np.stack([boxes[:, 1], size - boxes[:, 2], boxes[:, 3], size - boxes[:, 0]], 1)
        image = self._colour(np.ascontiguousarray(image))
        canopy, centres = render_targets(boxes, size)
        return image.astype(np.float32), canopy, centres

    def batch(self, n: int, mean, std):
        images, canopies, centres = zip(*(self.sample() for _ in range(n)))
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) / 255.0
        x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
        y = torch.from_numpy(np.stack([np.stack(canopies), np.stack(centres)], 1))
        return x.float(), y
