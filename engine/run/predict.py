"""Running a job: plan tiles, resume the cache, and predict what is missing.

Three stages overlap so reading and writing hide behind inference: a reader
thread fills a small queue with tiles, the calling thread runs the model, and a
writer thread post-processes, writes both caches and commits each tile to the
manifest, strictly in tile order. Queues are bounded, so memory does not grow
with the raster.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from osgeo import ogr
from rasterio.crs import CRS

from .. import __version__
from ..cache.lock import LOCK_NAME, CacheLock
from ..cache.manifest import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    ManifestState,
    ManifestWriter,
    TileRecord,
    read_manifest,
)
from ..cache.semantic import SEMANTIC_DIR, VRT_NAME, GeotiffSemanticCache
from ..cache.vectors import VECTOR_STEM, instance_cache_class
from ..errors import CacheMismatchError, CacheWriteError, InputError, RasterError
from ..models.runner import OnnxModel
from ..models.spec import default_model_path
from ..postprocess.confidence import class_probabilities, semantic_core
from ..postprocess.vectorise import instance_labels, tile_crowns
from ..settings import Job, Output, TileSettings, resolve_settings
from ..tiling.grid import RasterInfo, Tile, apply, plan_tiles
from ..tiling.raster import check_bands, describe_raster, point_mapper, working_crs
from ..tiling.reader import TileReader


@dataclass(frozen=True)
class Progress:
    """Committed tiles so far (resumed ones included); ``tile_id`` is the tile just committed."""

    done: int
    total: int
    skipped: int
    tile_id: int | None
    features: int


@dataclass(frozen=True)
class RunResult:
    state: str  # "complete" | "cancelled"
    done: int
    total: int
    skipped: int
    features: int
    cache_dir: Path


def image_fingerprint(info: RasterInfo) -> dict:
    return json.loads(json.dumps({
        "width": info.width, "height": info.height, "count": info.count, "dtype": info.dtype,
        "transform": list(info.transform), "crs": CRS.from_wkt(info.crs_wkt).to_string(),
        "file_size": info.file_size, "mtime_ns": info.mtime_ns}))


def settings_fingerprint(settings: TileSettings) -> dict:
    values = asdict(settings)
    values["work_crs"] = CRS.from_wkt(settings.work_crs).to_string()
    values["sha256"] = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()
    return json.loads(json.dumps(values))  # as it reads back from the manifest (tuples become lists)


_FINGERPRINT_LABELS = {"width": "width", "height": "height", "count": "band count", "dtype": "data type",
                       "transform": "georeferencing", "crs": "CRS", "file_size": "file size",
                       "mtime_ns": "modification time", "tile_size_px": "tile size", "overlap_px": "overlap",
                       "gsd_m": "gsd", "work_crs": "working CRS", "outputs": "outputs",
                       "vector_format": "vector format", "aoi_wkt": "area of interest"}


def _differences(old: dict, new: dict) -> list[str]:
    return [_FINGERPRINT_LABELS.get(k, k) for k in new if k != "sha256" and old.get(k) != new.get(k)]


def check_compatible(header: dict, new_header: dict) -> None:
    """Raise CacheMismatchError naming what differs between a cache and this job."""
    old_fp, new_fp = header.get("fingerprints", {}), new_header["fingerprints"]
    hint = "; use --overwrite (or another folder) to start afresh"
    diff = _differences(old_fp.get("image", {}), new_fp["image"])
    if diff:
        raise CacheMismatchError(f"This cache was made from another image ({', '.join(diff)} differ){hint}.")
    if old_fp.get("model", {}).get("sha256") != new_fp["model"]["sha256"]:
        old_name = old_fp.get("model", {}).get("name", "another model")
        raise CacheMismatchError(f"This cache was made with another model ({old_name}){hint}.")
    diff = _differences(old_fp.get("settings", {}), new_fp["settings"])
    if diff:
        raise CacheMismatchError(f"This cache was made with other settings ({', '.join(diff)} differ){hint}.")


def _aoi_filter(aoi_wkt: str | None, info: RasterInfo):
    if not aoi_wkt:
        return None
    try:
        aoi = ogr.CreateGeometryFromWkt(aoi_wkt)
    except RuntimeError as exc:
        raise InputError("The area of interest is not a valid polygon (WKT).") from exc
    if aoi is None or aoi.IsEmpty():
        raise InputError("The area of interest is empty.")

    def contains(core):
        c, r, w, h = core
        xs, ys = apply(info.transform, np.array([c, c + w, c + w, c, c]), np.array([r, r, r + h, r + h, r]))
        ring = ogr.Geometry(ogr.wkbLinearRing)
        for x, y in zip(xs, ys):
            ring.AddPoint_2D(float(x), float(y))
        poly = ogr.Geometry(ogr.wkbPolygon)
        poly.AddGeometry(ring)
        return poly.Intersects(aoi)

    return contains


def clear_cache(cache_dir: Path) -> None:
    """Delete what a run of this tool wrote in ``cache_dir`` (and nothing else)."""
    for name in (MANIFEST_NAME, VRT_NAME, f"{VECTOR_STEM}.gpkg"):
        (cache_dir / name).unlink(missing_ok=True)
    for suffix in (".shp", ".shx", ".dbf", ".prj", ".cpg", ".qix"):
        (cache_dir / f"{VECTOR_STEM}{suffix}").unlink(missing_ok=True)
    shutil.rmtree(cache_dir / SEMANTIC_DIR, ignore_errors=True)


class _Stop:
    """Shared by the pipeline's threads: the first error wins and stops every stage."""

    def __init__(self):
        self.error: BaseException | None = None
        self.event = threading.Event()

    def is_set(self) -> bool:
        return self.event.is_set()

    def set(self) -> None:
        self.event.set()

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.event.set()


def predict(job: Job, progress: Callable[[Progress], None] | None = None,
            cancelled: Callable[[], bool] | None = None) -> RunResult:
    """Predict ``job.image`` into ``job.cache_dir``, resuming whatever is already cached.

    ``progress`` is called from a worker thread after each committed tile.
    ``cancelled`` is polled before each tile; once it returns True the run stops
    within one tile, leaving a consistent cache that a later call resumes.
    """
    info = describe_raster(job.image)
    model_path = job.model or default_model_path()
    model = OnnxModel(model_path, threads=job.threads)
    spec = model.spec
    check_bands(info, spec.bands)
    expected_dtype = str(spec.metadata.get("input_dtype", "uint8")).strip('"')
    if info.dtype != expected_dtype:
        raise RasterError(
            f"{Path(info.path).name} holds {info.dtype} pixels but this model expects {expected_dtype}; "
            f"convert it first (in QGIS: Raster > Conversion > Translate, output type Byte, with scaling)."
        )
    work_wkt = working_crs(info)
    settings = resolve_settings(job, spec, work_wkt)
    to_work = point_mapper(info.crs_wkt, work_wkt)
    tiles = plan_tiles(info, settings.tile_size_px, settings.overlap_px, settings.gsd_m, to_work,
                       _aoi_filter(settings.aoi_wkt, info))
    if not tiles:
        raise InputError("The area of interest does not overlap the raster.")

    cache_dir = Path(job.cache_dir)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheWriteError(f"Cannot create the output folder {cache_dir}: {exc.strerror}.") from exc
    if not os.access(cache_dir, os.W_OK):
        raise CacheWriteError(f"The output folder {cache_dir} is not writable.")

    header = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "image": info.path,
        "image_relpath": os.path.relpath(info.path, cache_dir.resolve()),
        "classes": list(spec.class_names),
        "suffix": "",
        "outputs": list(settings.outputs),
        "model": {"name": spec.name, "path": str(Path(model_path).resolve()), "output_kind": spec.output_kind.value},
        "tiles_total": len(tiles),
        "vector_file": f"{VECTOR_STEM}.{settings.vector_format}" if Output.INSTANCES in job.outputs else None,
        "semantic_mosaic": VRT_NAME if Output.SEMANTIC in job.outputs else None,
        "fingerprints": {
            "image": image_fingerprint(info),
            "model": {"sha256": spec.sha256, "name": spec.name},
            "settings": settings_fingerprint(settings),
        },
        "engine_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }

    with CacheLock(cache_dir):
        if job.overwrite:
            clear_cache(cache_dir)
        state = read_manifest(cache_dir)
        if state.header is None:
            leftovers = [p.name for p in cache_dir.iterdir() if p.name != LOCK_NAME]
            if any(n in leftovers for n in (VRT_NAME, f"{VECTOR_STEM}.shp", f"{VECTOR_STEM}.gpkg", SEMANTIC_DIR)):
                clear_cache(cache_dir)  # a run that died before its first commit
        else:
            check_compatible(state.header, header)
            header = state.header
        return _run(job, model, info, settings, tiles, header, state, progress, cancelled)


def _rollback(cache_dir: Path, state: ManifestState, semantic, vector_cls) -> ManifestState:
    """Undo what was written after the last committed tile; also drop committed tiles whose files vanished."""
    tiles = state.tiles
    for i, record in enumerate(tiles):
        rel = record.cache_files.get("semantic")
        if rel and not (cache_dir / rel).is_file():
            tiles = tiles[:i]
            break
    if len(tiles) != len(state.tiles):
        state = ManifestState(state.header, tiles, _prefix_bytes(cache_dir, len(tiles)), 1)
    if semantic is not None:
        semantic.rollback(tiles)
    if vector_cls is not None:
        vector_cls.truncate(cache_dir / f"{VECTOR_STEM}{vector_cls.suffix}", state.features_end)
    return state


def _prefix_bytes(cache_dir: Path, n_tiles: int) -> int:
    """Byte length of the header plus the first ``n_tiles`` lines of the manifest."""
    size = 0
    with open(cache_dir / MANIFEST_NAME, "rb") as f:
        for i, line in enumerate(f):
            if i > n_tiles:
                break
            size += len(line)
    return size


def _run(job, model, info, settings, tiles, header, state, progress, cancelled) -> RunResult:
    cache_dir = Path(job.cache_dir)
    spec = model.spec
    want_semantic = Output.SEMANTIC.value in settings.outputs
    want_instances = Output.INSTANCES.value in settings.outputs
    semantic = (GeotiffSemanticCache(cache_dir, info.width, info.height, info.crs_wkt, info.transform,
                                     spec.class_names) if want_semantic else None)
    vector_cls = instance_cache_class(settings.vector_format) if want_instances else None
    state = _rollback(cache_dir, state, semantic, vector_cls)
    writer = ManifestWriter(cache_dir, state, header)
    committed = list(state.tiles)
    if semantic is not None:
        semantic.write_vrt(committed)
    vectors = vector_cls(cache_dir, info.crs_wkt) if vector_cls is not None else None

    total = len(tiles)
    counters = {"skipped": sum(1 for r in committed if r.status == "skipped"), "features": state.features_end}
    todo = tiles[len(committed):]
    pipeline = _Stop()
    is_cancelled = cancelled or (lambda: False)
    src_crs, work_crs = CRS.from_wkt(info.crs_wkt), CRS.from_wkt(settings.work_crs)
    to_src = point_mapper(settings.work_crs, info.crs_wkt)
    min_area_px = spec.min_crown_area_m2 / (settings.gsd_m ** 2) if spec.output_kind.value != "canopy_centres" else 0

    read_q: queue.Queue = queue.Queue(maxsize=2)
    # Tiles being post-processed or waiting to be written; bounds memory to a few tiles.
    write_q: queue.Queue = queue.Queue(maxsize=3)
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tcd-post")
    DONE = object()

    def put(q, item) -> bool:
        while not pipeline.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def reader_stage():
        reader = None
        try:
            reader = TileReader(info, spec.bands, settings.work_crs, settings.tile_size_px, settings.gsd_m)
            for tile in todo:
                if pipeline.is_set():
                    break
                raw, valid = reader.read(tile)
                if not put(read_q, (tile, raw, valid)):
                    break
        except BaseException as exc:  # handed to the calling thread
            pipeline.fail(exc)
        finally:
            if reader is not None:
                reader.close()
            put(read_q, DONE)  # returns at once if the run is stopping

    def postprocess(tile: Tile, valid, output):
        """The CPU-heavy part of a tile's output, computed in a pool beside inference."""
        if output is None:
            return None, None
        probs = class_probabilities(spec, output, valid)
        confidence = semantic_core(probs, tile, info.transform, src_crs, work_crs) if semantic is not None else None
        crowns = None
        if vectors is not None:
            labels, scores, classes = instance_labels(spec, output, probs, valid, settings.gsd_m)
            crowns = tile_crowns(spec, labels, scores, classes, tile, info.transform, to_src, min_area_px)
        return confidence, crowns

    def writer_stage():
        """Writes and commits tiles strictly in plan order, as their post-processing completes."""
        try:
            while True:
                try:
                    item = write_q.get(timeout=0.1)
                except queue.Empty:
                    if pipeline.is_set() and pipeline.error is not None:
                        return
                    continue
                if item is DONE:
                    return
                tile, skipped, future = item
                confidence, crowns = future.result()
                files: dict[str, str] = {}
                if confidence is not None:
                    files["semantic"] = semantic.write_tile(tile, confidence)
                if crowns is not None:
                    vectors.append(crowns, counters["features"] + 1, tile.tile_id)
                    files["instances"] = vectors.rel
                n_new = len(crowns) if crowns else 0
                counters["features"] += n_new
                status = "skipped" if skipped else "done"
                record = TileRecord(tile.tile_id, tuple(tile.bbox_px), status, files, n_new, counters["features"])
                writer.commit(record)
                committed.append(record)
                if skipped:
                    counters["skipped"] += 1
                elif semantic is not None:
                    semantic.write_vrt(committed, force=False)
                if progress is not None:
                    progress(Progress(len(committed), total, counters["skipped"], tile.tile_id, counters["features"]))
        except BaseException as exc:
            pipeline.fail(exc)

    reader_thread = threading.Thread(target=reader_stage, name="tcd-reader", daemon=True)
    writer_thread = threading.Thread(target=writer_stage, name="tcd-writer", daemon=True)
    try:
        if progress is not None:
            progress(Progress(len(committed), total, counters["skipped"], None, counters["features"]))
        reader_thread.start()
        writer_thread.start()
        while True:
            if is_cancelled():
                break
            try:
                item = read_q.get(timeout=0.1)
            except queue.Empty:
                if pipeline.is_set():
                    break
                continue
            if item is DONE:
                break
            tile, raw, valid = item
            output = model.run(raw) if valid.any() else None
            if not put(write_q, (tile, output is None, pool.submit(postprocess, tile, valid, output))):
                break
        put(write_q, DONE)  # the writer commits what is queued, then stops
        writer_thread.join()
        pipeline.set()
        reader_thread.join()
    except BaseException as exc:
        pipeline.fail(exc)
        for thread in (writer_thread, reader_thread):
            if thread.is_alive():
                thread.join()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        try:
            if vectors is not None:
                vectors.close()
            if semantic is not None and pipeline.error is None:
                semantic.write_vrt(committed)
        finally:
            writer.close()
    if pipeline.error is not None:
        raise pipeline.error
    done = len(committed)
    state_name = "complete" if done == total else "cancelled"
    return RunResult(state_name, done, total, counters["skipped"], counters["features"], cache_dir)
