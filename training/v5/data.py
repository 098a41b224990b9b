"""v5 training data: the NEON 2018 plots and three ``deepforest`` package images, every file checked by SHA-256.

Sources, all NEON AOP RGB orthophotos at 0.1 m/px with crown boxes:

* ``neon_2018_plots`` (TEAK, SJER both flights, OSBS), read from a folder
  (``../shared/data/neon_2018_plots`` beside the repository by default) or, with
  ``online=True``, fetched from ``weecology/DeepForest`` at the commit its
  ``SOURCES.tsv`` names. Either way each file's SHA-256 must equal the one in
  ``SOURCES.tsv``; a file that differs raises :class:`DataError`, never trains.
* From the ``deepforest`` wheels (pip download, MIT): ``2019_YELL_2_528000_4978000_image_crop2``
  and ``OSBS_029`` (2.1.0) and ``2018_SJER_3_252000_4107000_image_477`` (1.4.1, whose
  ``_truth.csv`` lists ``xmin,xmax,ymin,ymax``), pinned by :data:`WHEEL_FILES`.

Every other annotated ``deepforest`` image and any NEON HARV plot is reserved for
independent evaluation: nothing here can read them (only the names listed are extracted).

Folds are by site (:data:`SITES`): the 2017 and 2018 SJER flights and image_477 are
one site. Each site's images are split once into a *select* and a *report* half
(:func:`split_of`): choices use the select halves only, the report halves give the
unseen-site scores.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import subprocess
import sys
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_PLOTS_DIR = REPO.parent / "shared" / "data" / "neon_2018_plots"
DEFAULT_WHEEL_DIR = REPO / "training" / "data" / "v5"
RAW_URL = "https://raw.githubusercontent.com/weecology/DeepForest/{commit}/{path}"

YELL = "2019_YELL_2_528000_4978000_image_crop2"
OSBS_029 = "OSBS_029"
SJER_477 = "2018_SJER_3_252000_4107000_image_477"
# wheel version -> {file in deepforest/data/: sha256}. Nothing else is extracted.
WHEEL_FILES = {
    "2.1.0": {
        f"{YELL}.png": "a9bdb0f4447fdd899d22f567e0e20ba8320c5413b2ad0cd0ac8d9f3b6e0f9767",
        f"{YELL}.xml": "bd431af6a5086d721eb731b22f5ea28cd8a8eab06883efc1c665391acbc68e11",
        f"{OSBS_029}.png": "d9477c6a00e4902c7bee487d4c5582c3b8b9a2f77f3908a29628b816b291e6ee",
        f"{OSBS_029}.csv": "83ecd1fb6339eb0997c5a543300295fdd6e0d23c943f50429eb82d149905adba",
    },
    "1.4.1": {
        f"{SJER_477}.tif": "a8de02fd781091c699f251d7d820fbc7faab44b0fd3d75b6dd73fa7bacb8c705",
        f"{SJER_477}_truth.csv": "5b8fc3566c50f59ce8c18c95ed3f3b4a6a45ef60dc9172562bdb2ab5287a7651",
    },
}
# image name -> (image file, truth file, site)
WHEEL_IMAGES = {
    YELL: (f"{YELL}.png", f"{YELL}.xml", "YELL"),
    OSBS_029: (f"{OSBS_029}.png", f"{OSBS_029}.csv", "OSBS"),
    SJER_477: (f"{SJER_477}.tif", f"{SJER_477}_truth.csv", "SJER"),
}
SITES = ("OSBS", "SJER", "TEAK", "YELL")
# Plots of the annotated SJER 2017 re-flight miss small shrubs: trained on, never scored.
TRAIN_ONLY = ("SJER_2017_",)


class DataError(RuntimeError):
    """A training file is missing, unreadable or not the bytes its SHA-256 pins."""


@dataclass(frozen=True)
class Image:
    """One annotated image: RGB (H, W, 3) uint8, boxes (N, 4) xmin, ymin, xmax, ymax in its pixels."""

    name: str
    site: str
    rgb: np.ndarray
    boxes: np.ndarray
    sha256: tuple[str, ...]  # its image and truth files


def sha256_of(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def checked(raw: bytes, expected: str, what: str) -> bytes:
    got = sha256_of(raw)
    if got != expected:
        raise DataError(f"{what} has SHA-256 {got}, not the pinned {expected}: refusing to train on other bytes.")
    return raw


def read_sources(plots_dir: Path) -> list[dict]:
    path = Path(plots_dir) / "SOURCES.tsv"
    if not path.is_file():
        raise DataError(f"{path} is missing: the NEON plots folder needs its SOURCES.tsv.")
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def plot_bytes(plots_dir: Path, row: dict, online: bool, cache_dir: Path | None = None) -> bytes:
    """One plot file's bytes, local or fetched at its pinned commit, checked against its SHA-256."""
    if online:
        cache = Path(cache_dir or DEFAULT_WHEEL_DIR / "neon_2018_plots") / row["file"]
        if cache.is_file() and sha256_of(cache.read_bytes()) == row["sha256"]:
            return cache.read_bytes()
        url = RAW_URL.format(commit=row["source_commit"], path=row["source_path"])
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                raw = response.read()
        except OSError as exc:
            raise DataError(f"Could not fetch {url}: {exc}") from exc
        checked(raw, row["sha256"], url)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_bytes(raw)
        return raw
    path = Path(plots_dir) / "images" / row["file"]
    if not path.is_file():
        raise DataError(f"{path} is missing (run with --online to fetch it from weecology/DeepForest).")
    return checked(path.read_bytes(), row["sha256"], str(path))


def read_rgb(raw: bytes) -> np.ndarray:
    """(H, W, 3) uint8 of a PNG or GeoTIFF (first three bands)."""
    import warnings

    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.io import MemoryFile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile(raw) as mem, mem.open() as src:
            bands = src.read([1, 2, 3])
    if bands.dtype != np.uint8:
        raise DataError(f"expected 8-bit RGB, got {bands.dtype}")
    return np.ascontiguousarray(bands.transpose(1, 2, 0))


def voc_boxes(raw: bytes) -> np.ndarray:
    import xml.etree.ElementTree as ET

    rows = [[float(o.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
            for o in ET.fromstring(raw).iter("object")]
    return np.asarray(rows, np.float64).reshape(-1, 4)


def csv_boxes(raw: bytes) -> np.ndarray:
    """Boxes of a CSV by column name (``_truth.csv`` orders them xmin, xmax, ymin, ymax)."""
    rows = list(csv.DictReader(io.StringIO(raw.decode())))
    return np.asarray([[float(r[k]) for k in ("xmin", "ymin", "xmax", "ymax")] for r in rows],
                      np.float64).reshape(-1, 4)


def load_plots(plots_dir: Path = DEFAULT_PLOTS_DIR, online: bool = False, cache_dir: Path | None = None) -> list[Image]:
    """The annotated NEON 2018 plots (image + VOC XML), each file checked."""
    rows = read_sources(plots_dir)
    by_file = {r["file"]: r for r in rows}
    images = []
    for row in rows:
        if row["labels"] != "annotated" or not row["file"].endswith(".tif"):
            continue
        xml_row = by_file.get(row["file"][:-4] + ".xml")
        if xml_row is None:
            raise DataError(f"SOURCES.tsv lists {row['file']} as annotated but has no XML for it.")
        rgb = read_rgb(plot_bytes(plots_dir, row, online, cache_dir))
        boxes = voc_boxes(plot_bytes(plots_dir, xml_row, online, cache_dir))
        images.append(Image(row["file"][:-4], row["site"], rgb, boxes, (row["sha256"], xml_row["sha256"])))
    return images


def wheel_files(wheel_dir: Path = DEFAULT_WHEEL_DIR) -> dict[str, bytes]:
    """The pinned files of :data:`WHEEL_FILES`, extracted once from ``pip download``-ed wheels, checked."""
    wheel_dir = Path(wheel_dir)
    out = {}
    for version, files in WHEEL_FILES.items():
        missing = [n for n in files if not (wheel_dir / n).is_file()]
        if missing:
            wheel_dir.mkdir(parents=True, exist_ok=True)
            wheels = sorted(wheel_dir.glob(f"deepforest-{version}-*.whl"))
            if not wheels:
                try:
                    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                                    f"deepforest=={version}", "-d", str(wheel_dir)],
                                   check=True, stdout=subprocess.DEVNULL)
                except (OSError, subprocess.CalledProcessError) as exc:
                    raise DataError(f"pip could not download deepforest=={version}: {exc}") from exc
                wheels = sorted(wheel_dir.glob(f"deepforest-{version}-*.whl"))
            with zipfile.ZipFile(wheels[0]) as zf:
                for name in missing:
                    (wheel_dir / name).write_bytes(checked(zf.read(f"deepforest/data/{name}"), files[name],
                                                           f"deepforest {version} {name}"))
        for name, expected in files.items():
            out[name] = checked((wheel_dir / name).read_bytes(), expected, str(wheel_dir / name))
    return out


def load_wheel_images(wheel_dir: Path = DEFAULT_WHEEL_DIR) -> list[Image]:
    files = wheel_files(wheel_dir)
    hashes = {n: h for f in WHEEL_FILES.values() for n, h in f.items()}
    images = []
    for name, (image_file, truth_file, site) in WHEEL_IMAGES.items():
        raw = files[truth_file]
        boxes = voc_boxes(raw) if truth_file.endswith(".xml") else csv_boxes(raw)
        images.append(Image(name, site, read_rgb(files[image_file]), boxes,
                            (hashes[image_file], hashes[truth_file])))
    return images


def load_all(plots_dir: Path = DEFAULT_PLOTS_DIR, wheel_dir: Path = DEFAULT_WHEEL_DIR,
             online: bool = False) -> list[Image]:
    return load_plots(plots_dir, online) + load_wheel_images(wheel_dir)


def fingerprint(images: list[Image]) -> str:
    """SHA-256 over the sorted (name, file hashes) of the images used: the model's data fingerprint."""
    items = sorted((im.name, *im.sha256) for im in images)
    return sha256_of(json.dumps(items).encode())


def plot_id(name: str) -> str:
    """The plot a file shows, the same for both SJER flights (``SJER_SJER_012``, ``SJER_2017_SJER_012``)."""
    return name.split("_")[-1] if name.startswith(("SJER_", "TEAK_", "OSBS_")) else name


def splits(images: list[Image]) -> dict[str, str]:
    """{image name: ``select``, ``report`` or ``both``}: a fixed half of each site's plots.

    A site's plot ids (both SJER flights of a plot share one) are ordered by their
    SHA-256 and alternate select, report, ..., so each site's halves are balanced and
    the split does not depend on the order the data came in. The one large YELL image
    is ``both``: its top half selects, its bottom half reports (:func:`halves`).
    """
    by_site: dict[str, set] = {}
    for im in images:
        by_site.setdefault(im.site, set()).add(plot_id(im.name))
    rank = {site: sorted(ids, key=lambda p: sha256_of(p.encode())) for site, ids in by_site.items()}
    return {im.name: "both" if im.name == YELL else
            ("select" if rank[im.site].index(plot_id(im.name)) % 2 == 0 else "report") for im in images}


def scored(image: Image) -> bool:
    return not image.name.startswith(TRAIN_ONLY)


def halves(image: Image, split: str) -> dict[str, Image]:
    """{"select": ..., "report": ...} parts of an image for scoring (``both``: cut at mid-height)."""
    if split != "both":
        return {split: image}
    h = image.rgb.shape[0] // 2
    cy = (image.boxes[:, 1] + image.boxes[:, 3]) / 2
    top, bottom = image.boxes[cy < h].copy(), image.boxes[cy >= h].copy()
    top[:, 3] = top[:, 3].clip(max=h)
    bottom[:, [1, 3]] = bottom[:, [1, 3]].clip(min=h) - h
    return {"select": Image(image.name + "[top]", image.site, image.rgb[:h], top, image.sha256),
            "report": Image(image.name + "[bottom]", image.site, image.rgb[h:], bottom, image.sha256)}
