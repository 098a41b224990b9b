"""Running a job: plan its tiles, open its cache, and commit the tiles still missing, in plan order.

:func:`prepare` turns a :class:`~engine.settings.Job` into a :class:`RunPlan`,
the tile list and the header a new cache would get. :func:`predict` opens the
cache (lock, compatibility, rollback), has an executor turn each missing tile
into outputs, and commits them one by one. :func:`find_mismatch` answers, without
writing anything, whether a job can continue the cache in its folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ..cache.header import check_compatible, make_header
from ..cache.manifest import MANIFEST_NAME, read_manifest
from ..cache.semantic import VRT_NAME
from ..cache.store import Cache
from ..cache.vectors import BOX_FIELDS, HEIGHT_FIELDS, MEASUREMENT_FIELDS
from ..errors import CacheMismatchError, InputError, RasterError
from ..models.runner import OnnxModel
from ..models.spec import default_model_path, for_run
from ..postprocess.heights import CanopyHeightRaster
from ..postprocess.seams import CrownSeams, window_reach_px
from ..settings import BoxGeometry, Job, Output, VectorFormat, resolve_settings
from ..tiling.aoi import aoi_filter
from ..tiling.grid import LATEST_PLAN, PLAN_GROUND, PLAN_MARGIN, PLANS, Tile, plan_tiles
from ..tiling.raster import check_bands, describe_raster, point_mapper, working_crs
from ..tiling.stretch import cumulative_cut, needs_stretch
from .local import LocalExecutor
from .tile import RunPlan, TileProcessor

logger = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class Prepared:
    """A job resolved against its raster and model: the plan, the tiles, and a new cache's header."""

    plan: RunPlan
    tiles: list[Tile]
    header: dict
    model: OnnxModel


def _recorded_header(cache_dir: Path) -> dict | None:
    """The manifest's first line, or None if there is none or it does not parse (opening the cache says why)."""
    try:
        with open(Path(cache_dir) / MANIFEST_NAME, "rb") as f:
            header = json.loads(f.readline())
    except (OSError, ValueError):
        return None
    return header if isinstance(header, dict) else None


def recorded_plan(cache_dir: Path) -> int:
    """The tile plan a cache in ``cache_dir`` was made with (:data:`LATEST_PLAN` if there is none).

    Reads only the manifest's first line; caches from before plans were recorded used plan 1.
    An unreadable header gives the latest plan (opening the cache then says what is wrong).
    """
    header = _recorded_header(cache_dir)
    return LATEST_PLAN if header is None else header.get("plan", PLAN_MARGIN)


def recorded_value_range(cache_dir: Path):
    """The value range a cache in ``cache_dir`` reads its raster with, or None (none recorded, or no cache)."""
    header = _recorded_header(cache_dir) or {}
    value_range = header.get("fingerprints", {}).get("settings", {}).get("value_range")
    try:
        return None if value_range is None else tuple((float(lo), float(hi)) for lo, hi in value_range)
    except (TypeError, ValueError):
        return None


def value_range_for(job: Job, info, spec):
    """The stretch a run of ``job`` reads with: the job's own range for every band, else the one its cache
    recorded, else QGIS's default for a raster of another pixel type than the model's, else None."""
    if job.value_range is not None:
        return tuple(job.value_range for _ in spec.bands)
    if not job.overwrite and (recorded := recorded_value_range(job.cache_dir)) is not None:
        return recorded
    input_dtype = str(spec.metadata.get("input_dtype", "uint8")).strip('"')
    if needs_stretch(info, input_dtype):
        return cumulative_cut(info, spec.bands)
    if info.dtype != input_dtype and not info.paletted:
        raise RasterError(
            f"{Path(info.path).name} holds {info.dtype} pixels but this model expects {input_dtype}; "
            f"convert it first (GDAL translate, e.g. in QGIS: Raster > Conversion > Translate, output type "
            f"{input_dtype}).")
    return None


def prepare(job: Job, plan_version: int | None = None) -> Prepared:
    """Describe the raster, load the model, resolve the settings and plan the tiles; check they fit together.

    ``plan_version`` is the tile plan (:data:`~engine.tiling.grid.PLANS`); None: the one
    the job's cache was made with, or the latest for a new cache.
    """
    if plan_version is None:
        plan_version = LATEST_PLAN if job.overwrite else recorded_plan(job.cache_dir)
    if plan_version not in PLANS:
        raise CacheMismatchError(job.cache_dir, "plan")
    info = describe_raster(job.image, job.assign_crs)
    model_path = Path(job.model or default_model_path())
    model = OnnxModel(model_path, threads=job.threads, provider=job.provider)
    spec = model.spec
    check_bands(info, spec.bands)
    work_wkt = working_crs(info, true_scale=plan_version >= PLAN_GROUND)
    settings = resolve_settings(job, spec, work_wkt, value_range_for(job, info, spec))
    spec = for_run(spec, settings)  # a detector's thresholds and geometry, as the run chose them
    model.check_outputs(settings.tile_size_px)  # an output the kind cannot use: refused before any folder
    if settings.canopy_height is not None:
        CanopyHeightRaster(settings.canopy_height).close()  # unreadable: one sentence now, not at the first crown
    tiles = plan_tiles(info, settings.tile_size_px, settings.overlap_px, settings.gsd_m,
                       point_mapper(info.crs_wkt, work_wkt), aoi_filter(settings.aoi_wkt, info.transform),
                       plan_version)
    if not tiles:
        raise InputError("The area of interest does not overlap the raster.")
    plan = RunPlan(info, str(model_path), spec, settings, job.threads, job.provider,
                   fill_invalid=plan_version >= PLAN_GROUND)
    vector_file = VectorFormat(settings.vector_format).filename if Output.INSTANCES in job.outputs else None
    mosaic = VRT_NAME if Output.SEMANTIC in job.outputs else None
    header = make_header(info, spec, model_path, settings, len(tiles), Path(job.cache_dir), vector_file, mosaic,
                         plan_version)
    logger.info("%s: %d tiles of %d px at %g m with %s on %s", Path(info.path).name, len(tiles),
                settings.tile_size_px, settings.gsd_m, spec.name, model.provider)
    return Prepared(plan, tiles, header, model)


def crown_seams(prepared: Prepared) -> CrownSeams | None:
    """The cut between neighbouring tiles' crowns, for runs whose crowns cross tile cores (None otherwise)."""
    plan = prepared.plan
    as_boxes = plan.spec.kind.detects_boxes and plan.spec.box_geometry == BoxGeometry.BOXES.value
    if not plan.writes_instances or plan.spec.kind.clips_to_core or as_boxes:
        return None  # regions cut to the core never overlap; boxes asked for as boxes stay whole
    info, settings = plan.info, plan.settings
    reach = window_reach_px(prepared.tiles[0], settings.tile_size_px, info.transform,
                            point_mapper(settings.work_crs, info.crs_wkt))
    a, b, _, d, e, _ = info.transform
    return CrownSeams(reach, plan.crown_grid(), abs(a * e - b * d), info.crs_wkt, settings.canopy_height)


def _seed_seams(seams: CrownSeams, cache: Cache, first_todo: Tile) -> None:
    """Give ``seams`` the committed crowns the tiles from ``first_todo`` on can meet (read from the crowns file)."""
    first = cache.done
    while first > 0 and seams.needs(tuple(cache.records[first - 1].bbox), tuple(first_todo.bbox_px)):
        first -= 1
    if first < cache.done:
        seams.seed(cache.committed_crowns(first))


def on_cluster(job: Job) -> bool:
    """Whether the job's tiles run on a Dask cluster (it names a scheduler or local workers)."""
    return job.scheduler is not None or job.workers is not None


def executor_for(job: Job, prepared: Prepared):
    """This process's threads, or a Dask cluster when the job names one (Dask is imported only then)."""
    if not on_cluster(job):
        return LocalExecutor(TileProcessor(prepared.plan, prepared.model))
    from .dask import DaskExecutor

    return DaskExecutor(prepared.plan, scheduler=job.scheduler, workers=job.workers)


def find_mismatch(job: Job) -> CacheMismatchError | None:
    """Why ``job`` cannot continue the cache in ``job.cache_dir``, or None if it can (or there is none).

    Reads the raster's header, the model's metadata and the manifest; writes nothing.
    """
    header = read_manifest(Path(job.cache_dir)).header
    if header is None or job.overwrite:
        return None
    try:
        check_compatible(Path(job.cache_dir), header, prepare(job).header)
    except CacheMismatchError as exc:
        return exc
    return None


def predict(job: Job, progress: Callable[[Progress], None] | None = None,
            cancelled: Callable[[], bool] | None = None) -> RunResult:
    """Predict ``job.image`` into ``job.cache_dir``, resuming whatever is already cached.

    ``progress`` is called after each committed tile (and once before the
    first). ``cancelled`` is polled between tiles; once it returns True the run
    stops within one tile, leaving a consistent cache that a later call resumes.
    """
    prepared = prepare(job)
    is_cancelled = cancelled or (lambda: False)
    total = len(prepared.tiles)
    fields = MEASUREMENT_FIELDS + (HEIGHT_FIELDS if prepared.plan.settings.canopy_height else ())
    fields += BOX_FIELDS if prepared.plan.spec.kind.detects_boxes else ()
    # A cluster's tiles reach this process faster than one thread commits them and keeps the
    # overviews (default model: 12 ms a tile against 135 ms of one worker's time): two threads.
    with Cache.open(job.cache_dir, prepared.header, prepared.plan.info, overwrite=job.overwrite,
                    crown_fields=fields, mosaic_thread=on_cluster(job)) as cache:

        def report(tile_id: int | None) -> None:
            if progress is not None:
                progress(Progress(cache.done, total, cache.skipped, tile_id, cache.features_end))

        report(None)
        todo = prepared.tiles[cache.done:]
        seams = crown_seams(prepared) if todo else None
        if todo and not is_cancelled():
            if seams is not None:
                _seed_seams(seams, cache, todo[0])
            results = executor_for(job, prepared).map(todo)
            try:
                for outputs in results:
                    if seams is not None:
                        crowns = seams.cut(outputs.bbox_px, outputs.crowns or ())
                        if outputs.crowns is not None:
                            outputs = replace(outputs, crowns=crowns)
                    committed = cache.commit(outputs)
                    if committed:
                        report(committed[-1].tile_id)
                    if is_cancelled():
                        break
            except BaseException:
                # The tiles finished before the error are good: keep them (a failing flush is the
                # error's own consequence; the error itself is what the caller needs to hear).
                with contextlib.suppress(Exception):
                    cache.flush()
                raise
            finally:
                results.close()
                if seams is not None:
                    seams.close()
            if cache.flush():  # the tiles still waiting in the last group
                report(cache.records[-1].tile_id)
        state = "complete" if cache.done == total else "cancelled"
        return RunResult(state, cache.done, total, cache.skipped, cache.features_end, Path(job.cache_dir))
