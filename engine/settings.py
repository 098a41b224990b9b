"""Run settings: what a user asks for, as frozen values safe to pass between threads.

A :class:`Job` names files and choices; the engine resolves it against the
model's metadata into :class:`TileSettings` (everything that decides which pixels
go into which tile), which is fingerprinted in the manifest so a cache is never
resumed with other settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from .errors import InputError


class Output(str, Enum):
    """The two caches a run can write."""

    SEMANTIC = "semantic"  # canopy confidence GeoTIFFs + VRT mosaic
    INSTANCES = "instances"  # crown polygons


CROWNS_STEM = "crowns"  # file stem and layer name of the crowns


class BoxGeometry(str, Enum):
    """What a detector's crowns file holds for each box."""

    CROWNS = "crowns"  # the canopy inside the box when there is one, else the ellipse inscribed in it
    BOXES = "boxes"  # the box itself


class VectorFormat(str, Enum):
    """The crowns file's format; the value is the file suffix, as users type it."""

    SHAPEFILE = "shp"
    GEOPACKAGE = "gpkg"

    @property
    def label(self) -> str:
        return {"shp": "Shapefile", "gpkg": "GeoPackage"}[self.value]

    @property
    def driver(self) -> str:
        """The OGR driver name."""
        return {"shp": "ESRI Shapefile", "gpkg": "GPKG"}[self.value]

    @property
    def filename(self) -> str:
        """The crowns file in the cache folder (the one a GIS opens)."""
        return f"{CROWNS_STEM}.{self.value}"

    @property
    def sidecars(self) -> tuple[str, ...]:
        """Every file the format may keep beside or instead of :attr:`filename` (indexes, journals)."""
        if self is VectorFormat.SHAPEFILE:
            return tuple(f"{CROWNS_STEM}{s}" for s in (".shx", ".dbf", ".prj", ".cpg", ".qix"))
        return tuple(f"{self.filename}{s}" for s in ("-wal", "-shm", "-journal"))


def default_cache_dir(image: str | Path) -> Path:
    """The cache folder used when none is given: ``IMAGE_tcd`` beside the image.

    For a raster that GDAL reads over the network (``/vsis3/...``, ``/vsicurl/...``)
    there is no folder beside it to write to: ``IMAGE_tcd`` in the current folder.
    """
    image = Path(image)
    if str(image).replace("\\", "/").startswith("/vsi"):
        return Path.cwd() / f"{image.stem}_tcd"
    return image.with_name(f"{image.stem}_tcd")


ALL_OUTPUTS = frozenset({Output.SEMANTIC, Output.INSTANCES})


def parse_outputs(text: str) -> frozenset[Output]:
    """``"semantic,instances"`` → a set of :class:`Output`; raises InputError on unknown names."""
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    aliases = {"semantic": Output.SEMANTIC, "canopy": Output.SEMANTIC, "confidence": Output.SEMANTIC,
               "instances": Output.INSTANCES, "instance": Output.INSTANCES, "crowns": Output.INSTANCES}
    unknown = [n for n in names if n not in aliases]
    if unknown or not names:
        raise InputError(f"Unknown output '{','.join(unknown) or text}': choose semantic, instances or both.")
    return frozenset(aliases[n] for n in names)


@dataclass(frozen=True)
class Job:
    """One prediction request.

    ``model`` None means the bundled default model. ``tile_size_px``,
    ``overlap_px`` (model pixels) and ``gsd_m`` (metres per pixel) override the
    model's own values when given. ``aoi_wkt`` is a polygon in the image's CRS:
    only tiles whose core touches it are predicted. ``assign_crs`` (WKT or an
    authority code such as ``EPSG:32633``) is used only when the raster file has
    no CRS of its own, and is then part of the cache's image fingerprint.
    ``provider`` picks the execution device (``"cpu"``, ``"cuda"``, or None for
    the best working one); it changes speed, not results, so it is not part of
    the cache fingerprint. ``threads`` sets inference threads (None: all cores).
    ``det_conf`` and ``det_iou_thresh`` (0..1) override a detector's score and IoU
    thresholds, and ``box_geometry`` picks what it stores per box
    (:class:`BoxGeometry`); all three are part of a detector cache's settings
    fingerprint, and only detectors take them.
    ``seg_thresh`` (0..1) overrides a segmentation model's probability threshold
    (metadata ``seg_thresh``, Deepness's "probability threshold"); a value other than
    the model's own is part of the settings fingerprint, so a cache resumes with it.
    ``canopy_height`` is a canopy height raster (CHM or nDSM, metres, any CRS and
    resolution): each crown then gets ``height_max_m``, ``height_p95_m`` and
    ``height_src``; its path is part of the settings fingerprint.
    ``workers`` (a number of local Dask worker processes) or ``scheduler`` (the
    address of a running Dask scheduler, ``tcp://host:8786``) run the tiles on a
    Dask cluster (:mod:`engine.run.dask`); like ``provider`` they change where tiles
    are computed, not the result, so neither is part of the cache fingerprint.
    ``value_range`` ``(minimum, maximum)`` stretches every band the model reads linearly
    from the minimum to the maximum onto 0–255 (clipped); None: a 16-bit or float raster
    is stretched as QGIS shows it (:mod:`engine.tiling.stretch`), an 8-bit one read as it is.
    The range used is part of the settings fingerprint, and a resumed run keeps it.
    """

    image: Path
    cache_dir: Path
    model: Path | None = None
    outputs: frozenset[Output] = ALL_OUTPUTS
    tile_size_px: int | None = None
    overlap_px: int | None = None
    gsd_m: float | None = None
    vector_format: VectorFormat = VectorFormat.SHAPEFILE
    overwrite: bool = False
    aoi_wkt: str | None = None
    threads: int | None = None
    assign_crs: str | None = None
    provider: str | None = None
    det_conf: float | None = None
    det_iou_thresh: float | None = None
    box_geometry: BoxGeometry | None = None
    seg_thresh: float | None = None
    canopy_height: Path | None = None
    workers: int | None = None
    scheduler: str | None = None
    value_range: tuple[float, float] | None = None

    def __post_init__(self):
        object.__setattr__(self, "image", Path(self.image))
        object.__setattr__(self, "cache_dir", Path(self.cache_dir))
        if self.model is not None:
            object.__setattr__(self, "model", Path(self.model))
        if self.canopy_height is not None:
            object.__setattr__(self, "canopy_height", Path(self.canopy_height))
        object.__setattr__(self, "outputs", frozenset(Output(o) for o in self.outputs))
        object.__setattr__(self, "vector_format", VectorFormat(self.vector_format))
        if self.box_geometry is not None:
            try:
                object.__setattr__(self, "box_geometry", BoxGeometry(self.box_geometry))
            except ValueError as exc:
                raise InputError(f"Unknown box geometry '{self.box_geometry}': choose crowns or boxes.") from exc
        for name in ("det_conf", "det_iou_thresh"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                label = "score" if name == "det_conf" else "IoU"
                raise InputError(f"The {label} threshold must be between 0 and 1, not {value}.")
        if self.seg_thresh is not None and not 0.0 <= self.seg_thresh <= 1.0:
            raise InputError(f"The probability threshold must be between 0 and 1, not {self.seg_thresh}.")
        if not self.outputs:
            raise InputError("Choose at least one output: semantic, instances or both.")
        if self.tile_size_px is not None and self.tile_size_px < 16:
            raise InputError(f"The tile size must be at least 16 pixels, not {self.tile_size_px}.")
        if self.overlap_px is not None and self.overlap_px < 0:
            raise InputError(f"The overlap cannot be negative ({self.overlap_px} px).")
        if self.gsd_m is not None and not self.gsd_m > 0:
            raise InputError(f"The ground sampling distance must be positive, not {self.gsd_m} m.")
        if self.workers is not None and (isinstance(self.workers, bool) or not isinstance(self.workers, int)
                                         or self.workers < 1):
            raise InputError(f"The number of Dask workers must be a whole number of at least 1, not {self.workers}.")
        if self.scheduler is not None and not str(self.scheduler).strip():
            object.__setattr__(self, "scheduler", None)
        if self.workers is not None and self.scheduler is not None:
            raise InputError("Give either a number of local Dask workers or a scheduler address, not both.")
        if self.value_range is not None:
            object.__setattr__(self, "value_range", check_value_range(self.value_range))


def check_value_range(value) -> tuple[float, float]:
    """``(minimum, maximum)`` as floats; raises InputError unless both are finite numbers, the minimum lower."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        lo = hi = float("nan")
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise InputError(f"The value range must be two numbers, the minimum below the maximum, not {value}.")
    return lo, hi


def parse_value_range(text: str) -> tuple[float, float] | None:
    """``"MIN,MAX"`` → ``(minimum, maximum)``; an empty text is None. Raises InputError otherwise."""
    text = (text or "").strip()
    if not text:
        return None
    parts = [p.strip() for p in text.replace(";", ",").split(",")]
    if len(parts) != 2:
        raise InputError(f"The value range must be two numbers, the minimum below the maximum, not '{text}'.")
    try:
        return check_value_range((float(parts[0]), float(parts[1])))
    except ValueError as exc:
        raise InputError(f"The value range must be two numbers, the minimum below the maximum, not '{text}'.") from exc


@dataclass(frozen=True)
class TileSettings:
    """The resolved tiling: model pixels at ``gsd_m`` metres in ``work_crs``.

    ``overlap_px`` is shared between neighbours, so each tile's core is
    ``tile_size_px - overlap_px`` model pixels wide and the context margin on each
    side is ``overlap_px // 2``.
    """

    tile_size_px: int
    overlap_px: int
    gsd_m: float
    work_crs: str
    outputs: tuple[str, ...]
    vector_format: str
    aoi_wkt: str | None
    canopy_height: str | None = None  # absolute path of the canopy height raster
    # Detectors only (None otherwise, so other caches keep their fingerprints):
    det_conf: float | None = None
    det_iou_thresh: float | None = None
    box_geometry: str | None = None
    # (minimum, maximum) per band the model reads, stretched onto 0-255; None: read as they are.
    value_range: tuple[tuple[float, float], ...] | None = None
    # A probability threshold other than the model's own (None otherwise, so caches keep their fingerprints):
    seg_thresh: float | None = None

    @property
    def margin_px(self) -> int:
        return self.overlap_px // 2

    @property
    def core_px(self) -> int:
        return self.tile_size_px - 2 * self.margin_px


def resolve_settings(job: Job, spec, work_crs: str, value_range=None) -> TileSettings:
    """Combine a job's overrides with the model's defaults; raise InputError if unusable.

    ``value_range`` is the stretch the run reads with (see :class:`Job`), per band.
    """
    tile = job.tile_size_px or spec.tile_size_px
    if spec.fixed_input_px is not None and tile != spec.fixed_input_px:
        raise InputError(f"This model only takes {spec.fixed_input_px} px tiles, not {tile} px.")
    overlap = spec.overlap_px if job.overlap_px is None else job.overlap_px
    if job.overlap_px is None and job.tile_size_px is not None and overlap >= tile // 2:
        overlap = tile // 4  # the model's overlap was meant for its own, larger tile
    if overlap >= tile - 1:
        raise InputError(f"The overlap ({overlap} px) must be smaller than the tile size ({tile} px).")
    inset = spec.output_inset_px
    if inset and overlap // 2 < inset:
        if job.overlap_px is not None:
            raise InputError(f"The model predicts only the centre of each tile ({inset} px in from each edge); "
                             f"use an overlap of at least {2 * inset} px.")
        overlap = 2 * inset  # the model's centre must cover each tile's core
    gsd = job.gsd_m or spec.gsd_m
    detector = spec.kind.detects_boxes
    if detector and job.seg_thresh is not None:
        raise InputError(f"{spec.name} is a detection model: set its score threshold instead of a probability "
                         "threshold.")
    if not detector and (job.det_conf is not None or job.det_iou_thresh is not None or job.box_geometry is not None):
        raise InputError("Score and IoU thresholds and box geometry apply to detection models only; "
                         f"{spec.name} is not one.")
    return TileSettings(
        tile_size_px=int(tile),
        overlap_px=int(overlap),
        gsd_m=float(gsd),
        work_crs=work_crs,
        outputs=tuple(sorted(o.value for o in job.outputs)),
        vector_format=job.vector_format.value,
        aoi_wkt=job.aoi_wkt,
        canopy_height=None if job.canopy_height is None else str(Path(job.canopy_height).resolve()),
        det_conf=(spec.det_conf if job.det_conf is None else float(job.det_conf)) if detector else None,
        det_iou_thresh=(spec.det_iou_thresh if job.det_iou_thresh is None else float(job.det_iou_thresh))
        if detector else None,
        box_geometry=(job.box_geometry or BoxGeometry.CROWNS).value if detector else None,
        value_range=None if value_range is None else tuple((float(lo), float(hi)) for lo, hi in value_range),
        seg_thresh=None if job.seg_thresh is None or float(job.seg_thresh) == spec.seg_thresh
        else float(job.seg_thresh),
    )
