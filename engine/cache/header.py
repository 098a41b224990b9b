"""The manifest's header: what a cache was made from, and whether a job may continue it.

The header keeps tcd_pipeline's keys (``image``, ``classes``, ``suffix``) and adds
a format version, the tile count, the layers' file names and fingerprints of the
image, the model and the settings. A cache is resumed only when all three
fingerprints match the job's; otherwise :class:`CacheMismatchError` says what
differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from .. import __version__
from ..errors import CacheMismatchError
from ..settings import TileSettings
from ..tiling.grid import LATEST_PLAN, PLAN_MARGIN, RasterInfo
from .manifest import FORMAT_NAME, FORMAT_VERSION

# Tiling plans (engine.tiling.grid): a cache records the plan it was made with and is
# continued with it; a header without one was made with plan 1.
PLAN_VERSION = LATEST_PLAN

_LABELS = {"width": "width", "height": "height", "count": "band count", "dtype": "data type",
           "transform": "georeferencing", "crs": "CRS", "file_size": "file size",
           "mtime_ns": "modification time", "tile_size_px": "tile size", "overlap_px": "overlap",
           "gsd_m": "gsd", "work_crs": "working CRS", "outputs": "outputs",
           "vector_format": "vector format", "aoi_wkt": "area of interest",
           "canopy_height": "canopy height raster", "det_conf": "score threshold",
           "det_iou_thresh": "IoU threshold", "box_geometry": "box geometry", "value_range": "value range",
           "seg_thresh": "probability threshold"}


def _as_stored(value):
    """A value as it reads back from the manifest (tuples become lists)."""
    return json.loads(json.dumps(value))


def _crs_string(wkt: str) -> str:
    from rasterio.crs import CRS

    return CRS.from_wkt(wkt).to_string()


def image_fingerprint(info: RasterInfo) -> dict:
    return _as_stored({
        "width": info.width, "height": info.height, "count": info.count, "dtype": info.dtype,
        "transform": list(info.transform), "crs": _crs_string(info.crs_wkt),
        "file_size": info.file_size, "mtime_ns": info.mtime_ns})


def settings_fingerprint(settings: TileSettings) -> dict:
    values = asdict(settings)
    values["work_crs"] = _crs_string(settings.work_crs)
    values["sha256"] = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()
    return _as_stored(values)


def make_header(info: RasterInfo, spec, model_path: Path, settings: TileSettings, tiles_total: int,
                cache_dir: Path, vector_file: str | None, mosaic: str | None,
                plan: int = PLAN_VERSION) -> dict:
    """The header line of a new cache of ``info`` predicted with ``spec`` and ``settings``."""
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "image": info.path,
        "image_relpath": os.path.relpath(info.path, Path(cache_dir).resolve()),
        "classes": list(spec.class_names),
        "suffix": "",
        "outputs": list(settings.outputs),
        "model": {"name": spec.name, "path": str(Path(model_path).resolve()), "output_kind": spec.output_kind},
        "tiles_total": tiles_total,
        "plan": plan,
        "vector_file": vector_file,
        "semantic_mosaic": mosaic,
        "fingerprints": {
            "image": image_fingerprint(info),
            "model": {"sha256": spec.sha256, "name": spec.name},
            "settings": settings_fingerprint(settings),
        },
        "engine_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _differences(old: dict, new: dict) -> tuple[str, ...]:
    return tuple(_LABELS.get(k, k) for k in new if k != "sha256" and old.get(k) != new.get(k))


def check_compatible(cache_dir: Path, header: dict, new_header: dict) -> None:
    """Raise CacheMismatchError naming what differs between a cache's header and a job's."""
    old_fp, new_fp = header.get("fingerprints", {}), new_header["fingerprints"]
    diff = _differences(old_fp.get("image", {}), new_fp["image"])
    if diff:
        raise CacheMismatchError(cache_dir, "image", diff)
    if old_fp.get("model", {}).get("sha256") != new_fp["model"]["sha256"]:
        raise CacheMismatchError(cache_dir, "model", (old_fp.get("model", {}).get("name", "another model"),))
    diff = _differences(old_fp.get("settings", {}), new_fp["settings"])
    if diff:
        raise CacheMismatchError(cache_dir, "settings", diff)
    if header.get("plan", PLAN_MARGIN) != new_header.get("plan", PLAN_MARGIN):
        raise CacheMismatchError(cache_dir, "plan")
