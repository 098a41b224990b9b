"""Training data: the permitted DeepForest sample images, leave-one-image-out folds and targets.

Only five files of the ``deepforest==2.1.0`` wheel are used (all NEON RGB at
0.1 m/px): ``2019_YELL_2_528000_4978000_image_crop2`` (Pascal-VOC boxes),
``OSBS_029`` (DeepForest CSV boxes) and the unlabelled ``SOAP_031`` (input
statistics and, as an option, pseudo-labels for self-training). Every other
annotated image in the wheel is reserved for independent evaluation and is
never extracted.

Model choices are made by leave-one-image-out (LOIO) validation: a model
trained on the whole YELL image is scored on the whole OSBS image and the
reverse (:data:`FOLDS`); the final model is trained on both whole images.
The old horizontal bands (:data:`TRAIN_BANDS`, :data:`VAL_BANDS`) are kept
only to report in-site scores comparable with earlier models; they never
choose anything.

Targets are derived from boxes at 1/4 of the crop resolution (the network's
output grid): canopy = union of the ellipses inscribed in the boxes; centres =
a Gaussian at each box centre with sigma = max(2 px, min(w, h) / 8), and the
grid cell nearest each centre set to exactly 1 (the positives of the focal loss).

This module needs numpy and Pillow only (no torch), so the engine's
``evaluate --loio`` can fetch the same files.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

DEEPFOREST_VERSION = "2.1.0"
YELL = "2019_YELL_2_528000_4978000_image_crop2"
OSBS = "OSBS_029"
SOAP = "SOAP_031"
PERMITTED_FILES = (f"{YELL}.png", f"{YELL}.xml", f"{OSBS}.png", f"{OSBS}.csv", f"{SOAP}.png")
TRUTH_FILES = {YELL: f"{YELL}.xml", OSBS: f"{OSBS}.csv"}
OUTPUT_STRIDE = 4
DEFAULT_DATA_DIR = Path(__file__).resolve().parent / "data"

# Leave-one-image-out folds: name -> (training images, held-out image).
FOLDS = {
    "heldout-OSBS": ((YELL,), OSBS),
    "heldout-YELL": ((OSBS,), YELL),
}
FINAL_IMAGES = (YELL, OSBS)
# Share of the training crops drawn from each image when several are used (OSBS is
# small and a different forest type: a quarter of the crops).
IMAGE_WEIGHTS = {YELL: 0.75, OSBS: 0.25}

# (image, first row, end row) of the in-site bands of earlier models; report only.
TRAIN_BANDS = ((YELL, 0, 1900), (OSBS, 0, 260))
VAL_BANDS = ((YELL, 1950, 2472), (OSBS, 280, 400))


def fetch_data(data_dir: Path = DEFAULT_DATA_DIR) -> dict[str, str]:
    """Download the deepforest wheel with pip and extract only the permitted files.

    Returns {file name: sha256} of the extracted files, for the model's provenance.
    Raises ``subprocess.CalledProcessError`` when pip cannot download the wheel.
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    if not all((data_dir / name).is_file() for name in PERMITTED_FILES):
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                 f"deepforest=={DEEPFOREST_VERSION}", "-d", tmp],
                check=True, stdout=subprocess.DEVNULL,
            )
            wheel = next(Path(tmp).glob("deepforest-*.whl"))
            with zipfile.ZipFile(wheel) as zf:
                for name in PERMITTED_FILES:
                    (data_dir / name).write_bytes(zf.read(f"deepforest/data/{name}"))
    return {name: hashlib.sha256((data_dir / name).read_bytes()).hexdigest() for name in PERMITTED_FILES}


def load_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    return np.asarray(Image.open(path).convert("RGB"))


def load_boxes(data_dir: Path, name: str) -> np.ndarray:
    from engine.evaluate import read_boxes

    return read_boxes(Path(data_dir) / TRUTH_FILES[name], f"{name}.png")


def load_annotated(data_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{image name: (RGB image, boxes (N, 4) in pixels)} of the two annotated images."""
    return {name: (load_image(Path(data_dir) / f"{name}.png"), load_boxes(data_dir, name)) for name in (YELL, OSBS)}


@dataclass(frozen=True)
class Region:
    """An image (or a band of one) with its boxes in its own pixels.

    ``weight`` is an optional (H, W) float32 loss weight (0 = ignore), used for
    pseudo-labelled images where the teacher was unsure.
    """

    name: str
    image: np.ndarray  # (H, W, 3) uint8
    boxes: np.ndarray  # (N, 4) pixels of this region
    weight: np.ndarray | None = field(default=None, compare=False)


def cut_band(name: str, image: np.ndarray, boxes: np.ndarray, row0: int, row1: int) -> Region:
    """The rows [row0, row1) with the boxes whose centre lies inside, clipped and shifted to it."""
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    inside = boxes[(cy >= row0) & (cy < row1)].copy()
    inside[:, [1, 3]] = np.clip(inside[:, [1, 3]], row0, row1) - row0
    return Region(f"{name}[{row0}:{row1}]", image[row0:row1], inside)


def regions(annotated, bands) -> list[Region]:
    return [cut_band(name, *annotated[name], r0, r1) for name, r0, r1 in bands]


def whole(annotated, names) -> list[Region]:
    return [Region(name, *annotated[name]) for name in names]


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
