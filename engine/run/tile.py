"""One tile's work as a plain function of the tile: read → infer → post-process → outputs to commit.

:class:`RunPlan` holds everything that work needs (small, frozen, picklable, so
any executor — threads here, worker processes on a cluster — can carry it).
:class:`TileProcessor` keeps the per-process state (an open reader, a model
session) and splits the work into its three stages, so an executor can overlap
them; :meth:`TileProcessor.process` runs all three. The result,
:class:`~engine.cache.store.TileOutputs`, holds bytes and records only; the
cache commits it in plan order.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

import numpy as np
from rasterio.crs import CRS

from ..cache.mosaic_pass import tile_overview
from ..cache.store import TileOutputs
from ..models.runner import OnnxModel
from ..models.spec import ModelSpec
from ..postprocess.confidence import encode_geotiff, semantic_core
from ..postprocess.heights import CanopyHeightRaster, height_attributes
from ..postprocess.vectorise import CrownGrid, tile_crowns
from ..settings import Output, TileSettings
from ..tiling.grid import RasterInfo, Tile, apply
from ..tiling.raster import point_mapper
from ..tiling.reader import TileReader

# Crops of a tile (TileProcessor.crop_of) are rounded up to this: the strides of common encoders divide it.
CROP_MULTIPLE_PX = 32


@dataclass(frozen=True)
class RunPlan:
    """What turning any tile of one run into :class:`TileOutputs` needs.

    ``model_path`` is read by each process that runs the model; ``spec`` is the
    model's description (its ``sha256`` identifies the file). ``threads`` and
    ``provider`` configure the model session. ``fill_invalid``: the model sees the
    image mirrored beyond valid pixels rather than black (tile plan 3 on).
    """

    info: RasterInfo
    model_path: str
    spec: ModelSpec
    settings: TileSettings
    threads: int | None = None
    provider: str | None = None
    fill_invalid: bool = False

    @property
    def writes_semantic(self) -> bool:
        return Output.SEMANTIC.value in self.settings.outputs

    @property
    def writes_instances(self) -> bool:
        return Output.INSTANCES.value in self.settings.outputs

    def crown_grid(self) -> CrownGrid:
        """The source grid and the mappers between the source and working CRS that crowns are drawn with."""
        info, settings = self.info, self.settings
        work_units_per_m = info.units_per_m if info.crs_wkt == settings.work_crs else 1.0
        return CrownGrid(info.transform, point_mapper(settings.work_crs, info.crs_wkt),
                         point_mapper(info.crs_wkt, settings.work_crs), work_units_per_m)


class TileProcessor:
    """Per-process state for one run: a raster reader and a model session, opened on first use.

    Not thread-safe: each thread reads with its own processor, or calls only the
    stage it owns (see :mod:`engine.run.local`).
    """

    def __init__(self, plan: RunPlan, model: OnnxModel | None = None):
        self.plan = plan
        self._model = model
        self._reader: TileReader | None = None
        info, settings = plan.info, plan.settings
        self._src_crs = CRS.from_wkt(info.crs_wkt)
        self._work_crs = CRS.from_wkt(settings.work_crs)
        self._grid = plan.crown_grid()
        work_units_per_m = self._grid.work_units_per_m
        self._min_area_px = plan.spec.min_crown_area_m2 / (settings.gsd_m**2)
        self._work_units_per_m = work_units_per_m
        self._local = threading.local()  # a canopy height raster per post-processing thread (GDAL handles)
        self._height_rasters: list[CanopyHeightRaster] = []

    @property
    def model(self) -> OnnxModel:
        if self._model is None:
            self._model = OnnxModel(self.plan.model_path, threads=self.plan.threads, provider=self.plan.provider)
        return self._model

    def read(self, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
        """``(raw, valid)`` of the tile on its model grid (see :class:`~engine.tiling.reader.TileReader`)."""
        if self._reader is None:
            plan = self.plan
            self._reader = TileReader(plan.info, plan.spec.bands, plan.settings.work_crs,
                                      plan.settings.tile_size_px, plan.settings.gsd_m,
                                      plan.settings.value_range, plan.fill_invalid)
        return self._reader.read(tile)

    def infer(self, raw: np.ndarray, valid: np.ndarray) -> dict | None:
        """The model's decoded outputs, or None for a tile with no valid pixel (skipped, never run).

        A tile whose data fills only its top-left part (an image smaller than a tile along an
        axis) is run on that part when the model takes any input size (see :meth:`crop_of`).
        """
        if not valid.any():
            return None
        crop = self.crop_of(valid)
        if crop is None:
            return self.model.run(raw)
        data_h, data_w, h, w = crop
        part = np.pad(raw[:, :data_h, :data_w], ((0, 0), (0, h - data_h), (0, w - data_w)), mode="symmetric")
        decoded = self.model.run(part)
        size_h, size_w = raw.shape[1:]
        return {name: np.pad(value, [(0, 0)] * (value.ndim - 2) + [(0, size_h - h), (0, size_w - w)])
                if isinstance(value, np.ndarray) and value.ndim >= 2 and value.shape[-2:] == (h, w) else value
                for name, value in decoded.items()}

    def crop_of(self, valid: np.ndarray) -> tuple[int, int, int, int] | None:
        """``(data_h, data_w, h, w)``: run the model on the tile's top-left ``h x w`` model pixels, the data
        being its top-left ``data_h x data_w``; None to run it on the whole tile. ``valid`` has a valid pixel.

        When a tile's valid pixels lie in its top-left ``data_h x data_w`` and the model takes
        any input size, the model sees that part, padded by mirroring to a multiple of
        :data:`CROP_MULTIPLE_PX`, rather than the whole tile with zeros beyond the image: the
        zeros were context no real image has (the default model lost a quarter of its crowns
        on a 400 px image run in a 1024 px tile) and cost inference for nothing.
        """
        if self.plan.spec.fixed_input_px is not None:
            return None
        data_h = int(np.flatnonzero(valid.any(axis=1))[-1]) + 1
        data_w = int(np.flatnonzero(valid.any(axis=0))[-1]) + 1
        size_h, size_w = valid.shape
        h = min(size_h, -(-data_h // CROP_MULTIPLE_PX) * CROP_MULTIPLE_PX)
        w = min(size_w, -(-data_w // CROP_MULTIPLE_PX) * CROP_MULTIPLE_PX)
        return None if (h, w) == (size_h, size_w) else (data_h, data_w, h, w)

    def postprocess(self, tile: Tile, valid: np.ndarray, decoded: dict | None) -> TileOutputs:
        """Confidence GeoTIFF bytes, crowns and the core's areas of the tile, ready to commit."""
        plan = self.plan
        if decoded is None:
            return TileOutputs(tile.tile_id, tuple(tile.bbox_px), True)
        kind = plan.spec.kind
        probs = kind.probabilities(plan.spec, decoded, valid)
        confidence = semantic_core(probs, tile, plan.info.transform, self._src_crs, self._work_crs)
        area_m2, canopy_m2 = self._core_areas(tile, valid, confidence)
        tiff = overview = None
        if plan.writes_semantic:
            tiff = encode_geotiff(confidence, tile, plan.info.transform, plan.info.crs_wkt, plan.spec.class_names)
            overview = tile_overview(confidence, tuple(tile.bbox_px))
        crowns = None
        if plan.writes_instances:
            instances = kind.instances(plan.spec, decoded, probs, valid, plan.settings.gsd_m)
            crowns = tuple(tile_crowns(plan.spec, instances, tile, self._grid, self._min_area_px))
            if plan.settings.canopy_height and crowns:
                crowns = self._with_heights(crowns)
        return TileOutputs(tile.tile_id, tuple(tile.bbox_px), False, tiff, crowns, area_m2, canopy_m2, overview)

    def _core_areas(self, tile: Tile, valid: np.ndarray, confidence: np.ndarray) -> tuple[float, float]:
        """The core's valid area and the part of it whose canopy confidence (any class) is >= 0.5, in m².

        A core pixel's area is the core's area in the metric working CRS over its
        pixel count: exact on projected rasters, within a hair on geographic ones.
        """
        plan = self.plan
        col, row, w, h = tile.core_px
        window = tile.core_in_tile
        if window is not None:
            valid_core = valid[window]
        else:
            valid_core = semantic_core(valid[None].astype(np.float32), tile, plan.info.transform, self._src_crs,
                                       self._work_crs)[0] >= 128
        canopy_core = valid_core & ((confidence[0] if len(confidence) == 1 else confidence.max(axis=0)) >= 128)
        xs, ys = apply(plan.info.transform, np.array([col, col + w, col + w, col], float),
                       np.array([row, row, row + h, row + h], float))
        if self._grid.to_work is not None:
            xs, ys = self._grid.to_work(xs, ys)
        xs, ys = xs - xs[0], ys - ys[0]  # the shoelace formula loses digits on coordinates in the millions
        core_m2 = 0.5 * abs(float(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))))
        pixel_m2 = core_m2 / self._work_units_per_m**2 / (w * h)
        return float(valid_core.sum()) * pixel_m2, float(canopy_core.sum()) * pixel_m2

    def _with_heights(self, crowns: tuple) -> tuple:
        """The crowns with ``height_max_m``, ``height_p95_m`` and ``height_src`` from the canopy height raster."""
        raster = getattr(self._local, "heights", None)
        if raster is None:
            raster = self._local.heights = CanopyHeightRaster(self.plan.settings.canopy_height)
            self._height_rasters.append(raster)
        heights = raster.crown_heights([c.wkb for c in crowns], self.plan.info.crs_wkt)
        return tuple(replace(c, attributes={**c.attributes, **height_attributes(h, raster.name)})
                     for c, h in zip(crowns, heights))

    def process(self, tile: Tile) -> TileOutputs:
        raw, valid = self.read(tile)
        return self.postprocess(tile, valid, self.infer(raw, valid))

    def close(self) -> None:
        """Close the reader; call it from the thread that read (GDAL's settings are per thread)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        for raster in self._height_rasters:
            raster.close()
        self._height_rasters.clear()
        self._local = threading.local()
