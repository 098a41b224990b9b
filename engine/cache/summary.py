"""``summary.json``: what a run found so far, kept current as tiles commit.

A :class:`RunSummary` is a set of running totals over committed tiles: tiles
done and skipped, the area processed and the canopy area (from the confidence
of each tile's core), the crowns counted, and the distribution of crown areas
(and heights, when a canopy height raster was given) as fine histograms. Adding
a tile is O(crowns of that tile); nothing is re-read. Figures derived from the
totals (trees per hectare, canopy cover, quantiles) are computed on reading.

Quantiles are nearest-rank quantiles (the smallest value with at least that
fraction of crowns at or below it) read from histograms of constant relative bin
width (:data:`AREA_BIN_RATIO`, 1 %) for areas and constant absolute width
(:data:`HEIGHT_BIN_M`) for heights, clamped to the exact minimum and maximum: an
area quantile is within half a bin (0.5 %) of the exact one.

Each tile's processed and canopy areas are also in its manifest line, and each
crown's area and heights in the crowns file, so the summary can always be rebuilt
from the cache (:func:`rebuild_summary`). The file is therefore replaced
atomically (temporary file, rename) after each commit but not fsynced: a summary
whose ``tiles_done`` disagrees with the manifest (a crash between the two
writes) is rebuilt when the cache is next opened.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..errors import CacheCorruptError
from .manifest import TileRecord

logger = logging.getLogger(__name__)

SUMMARY_NAME = "summary.json"
SUMMARY_VERSION = 1
AREA_BIN_RATIO = 1.01  # crown-area bins grow by 1 %
AREA_BIN_MIN_M2 = 0.01  # smaller crowns fall in the first bin
HEIGHT_BIN_M = 0.1


@dataclass(frozen=True)
class SummaryRow:
    """One figure: a stable ``key`` (CSV), a ``label`` for people, its ``value`` and ``unit``."""

    key: str
    label: str
    value: float | int | str | None
    unit: str = ""


@dataclass
class Distribution:
    """Count, sum, min, max and a sparse histogram of positive values.

    ``log_ratio`` > 1: bin ``i`` holds ``[lo * r**i, lo * r**(i+1))``; otherwise
    bins are ``width`` wide from 0.
    """

    lo: float = AREA_BIN_MIN_M2
    ratio: float = AREA_BIN_RATIO
    width: float = 0.0
    n: int = 0
    total: float = 0.0
    min: float | None = None
    max: float | None = None
    bins: dict[int, int] = field(default_factory=dict)

    def _bin(self, value: float) -> int:
        if self.width:
            return max(int(math.floor(value / self.width)), 0)
        if value <= self.lo:
            return 0
        return int(math.floor(math.log(value / self.lo) / math.log(self.ratio)))

    def _bin_range(self, index: int) -> tuple[float, float]:
        if self.width:
            return index * self.width, (index + 1) * self.width
        return self.lo * self.ratio**index, self.lo * self.ratio ** (index + 1)

    def add(self, value: float) -> None:
        self.n += 1
        self.total += value
        self.min = value if self.min is None else min(self.min, value)
        self.max = value if self.max is None else max(self.max, value)
        index = self._bin(value)
        self.bins[index] = self.bins.get(index, 0) + 1

    @property
    def mean(self) -> float | None:
        return self.total / self.n if self.n else None

    def quantile(self, q: float) -> float | None:
        """The nearest-rank ``q`` quantile (0 < q <= 1), within half a bin, clamped to [min, max]."""
        if not self.n:
            return None
        rank = max(math.ceil(q * self.n), 1)
        if rank == 1:
            return self.min
        if rank == self.n:
            return self.max
        seen = 0
        for index in sorted(self.bins):
            seen += self.bins[index]
            if seen >= rank:
                lo, hi = self._bin_range(index)
                middle = math.sqrt(lo * hi) if not self.width and lo > 0 else (lo + hi) / 2
                return min(max(middle, self.min), self.max)
        return self.max

    def histogram(self, bins: int) -> tuple[list[float], list[int]] | None:
        """``bins`` equal bins from min to max: (edges, counts), counting each fine bin at its middle."""
        if not self.n:
            return None
        lo, hi = self.min, self.max
        if hi <= lo:  # one value: one bar
            return [lo, hi], [self.n]
        step = (hi - lo) / bins
        counts = [0] * bins
        for index, count in self.bins.items():
            a, b = self._bin_range(index)
            middle = min(max((a + b) / 2, lo), hi)
            counts[min(int((middle - lo) / step), bins - 1)] += count
        return [lo + i * step for i in range(bins + 1)], counts

    def to_json(self) -> dict:
        return {"lo": self.lo, "ratio": self.ratio, "width": self.width, "n": self.n, "total": self.total,
                "min": self.min, "max": self.max, "bins": {str(k): v for k, v in sorted(self.bins.items())}}

    @classmethod
    def from_json(cls, data: dict) -> Distribution:
        return cls(lo=float(data["lo"]), ratio=float(data["ratio"]), width=float(data["width"]), n=int(data["n"]),
                   total=float(data["total"]), min=data["min"], max=data["max"],
                   bins={int(k): int(v) for k, v in data["bins"].items()})


def crown_areas() -> Distribution:
    return Distribution(lo=AREA_BIN_MIN_M2, ratio=AREA_BIN_RATIO)


def crown_heights() -> Distribution:
    return Distribution(lo=0.0, ratio=1.0, width=HEIGHT_BIN_M)


@dataclass
class RunSummary:
    """Running totals of a cache's committed tiles (see the module docstring for what is exact).

    ``area_m2`` and ``canopy_m2`` are None for a cache whose tiles were committed
    by a version that did not measure them.
    """

    image: str = ""
    model: str = ""
    tiles_total: int = 0
    tiles_done: int = 0
    tiles_skipped: int = 0
    area_m2: float | None = 0.0  # valid (not nodata) pixels of the committed tile cores
    canopy_m2: float | None = 0.0  # of which the model's canopy confidence is at least 0.5
    trees: int = 0
    areas: Distribution = field(default_factory=crown_areas)
    heights: Distribution | None = None  # height_max_m of the crowns that have one
    heights_missing: int = 0  # crowns whose height is NULL (nodata, or outside the height raster)
    height_source: str | None = None
    time_s: float | None = 0.0
    updated: str = ""

    def add_tile(self, record: TileRecord, crowns=()) -> None:
        """Count one committed tile; ``crowns`` are its crowns' attribute mappings (``area_m2``, ``height_max_m``)."""
        self.tiles_done += 1
        self.tiles_skipped += int(record.status == "skipped")
        if record.area_m2 is None or self.area_m2 is None:
            self.area_m2 = self.canopy_m2 = None
        else:
            self.area_m2 += record.area_m2
            self.canopy_m2 += record.canopy_m2 or 0.0
        for attributes in crowns:
            self.add_crown(attributes)
        self.updated = datetime.now(timezone.utc).isoformat(timespec="seconds")

    def add_crown(self, attributes) -> None:
        self.trees += 1
        area = attributes.get("area_m2")
        if area is not None:
            self.areas.add(float(area))
        if self.heights is not None:
            height = attributes.get("height_max_m")
            if height is None:
                self.heights_missing += 1
            else:
                self.heights.add(float(height))

    # -- derived figures ------------------------------------------------------
    @property
    def area_ha(self) -> float | None:
        return None if self.area_m2 is None else self.area_m2 / 10_000

    @property
    def trees_per_ha(self) -> float | None:
        return self.trees / self.area_ha if self.area_m2 else None

    @property
    def canopy_cover_pct(self) -> float | None:
        return 100.0 * self.canopy_m2 / self.area_m2 if self.area_m2 else None

    def rows(self) -> list[SummaryRow]:
        """Every figure, in reading order: the CLI prints them, the plugin shows them, the CSV holds them."""
        a = self.areas
        rows = [
            SummaryRow("trees", "Trees", self.trees),
            SummaryRow("trees_per_ha", "Trees per hectare", self.trees_per_ha, "/ha"),
            SummaryRow("canopy_cover_pct", "Canopy cover", self.canopy_cover_pct, "%"),
            SummaryRow("area_processed_ha", "Area processed", self.area_ha, "ha"),
            SummaryRow("crown_area_median_m2", "Crown area, median", a.quantile(0.5), "m²"),
            SummaryRow("crown_area_p10_m2", "Crown area, 10th percentile", a.quantile(0.1), "m²"),
            SummaryRow("crown_area_p90_m2", "Crown area, 90th percentile", a.quantile(0.9), "m²"),
            SummaryRow("crown_area_min_m2", "Crown area, smallest", a.min, "m²"),
            SummaryRow("crown_area_max_m2", "Crown area, largest", a.max, "m²"),
            SummaryRow("crown_area_mean_m2", "Crown area, mean", a.mean, "m²"),
        ]
        if self.heights is not None:
            h = self.heights
            rows += [
                SummaryRow("height_max_median_m", "Crown height, median", h.quantile(0.5), "m"),
                SummaryRow("height_max_p90_m", "Crown height, 90th percentile", h.quantile(0.9), "m"),
                SummaryRow("height_max_max_m", "Crown height, tallest", h.max, "m"),
                SummaryRow("crowns_without_height", "Crowns without height", self.heights_missing),
                SummaryRow("height_source", "Height raster", self.height_source),
            ]
        rows += [
            SummaryRow("tiles_done", "Tiles done", self.tiles_done),
            SummaryRow("tiles_total", "Tiles in the run", self.tiles_total),
            SummaryRow("tiles_skipped", "Tiles skipped (empty or nodata)", self.tiles_skipped),
            SummaryRow("time_s", "Time taken", None if self.time_s is None else round(self.time_s, 1), "s"),
            SummaryRow("model", "Model", self.model),
            SummaryRow("image", "Image", self.image),
        ]
        return rows

    def histogram(self, name: str, bins: int) -> tuple[list[float], list[int]] | None:
        """Display histogram of ``crown_area_m2`` or ``height_max_m``: (edges, counts); None without values."""
        distribution = {"crown_area_m2": self.areas, "height_max_m": self.heights}[name]
        return None if distribution is None else distribution.histogram(bins)

    # -- JSON ------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "version": SUMMARY_VERSION,
            "figures": {row.key: row.value for row in self.rows()},
            "image": self.image, "model": self.model,
            "tiles_total": self.tiles_total, "tiles_done": self.tiles_done, "tiles_skipped": self.tiles_skipped,
            "area_m2": self.area_m2, "canopy_m2": self.canopy_m2, "trees": self.trees,
            "crown_areas": self.areas.to_json(),
            "crown_heights": None if self.heights is None else self.heights.to_json(),
            "heights_missing": self.heights_missing, "height_source": self.height_source,
            "time_s": self.time_s, "updated": self.updated,
        }

    @classmethod
    def from_json(cls, data: dict) -> RunSummary:
        heights = data.get("crown_heights")
        optional = lambda key: None if data.get(key) is None else float(data[key])  # noqa: E731
        return cls(
            image=str(data["image"]), model=str(data["model"]), tiles_total=int(data["tiles_total"]),
            tiles_done=int(data["tiles_done"]), tiles_skipped=int(data["tiles_skipped"]),
            area_m2=optional("area_m2"), canopy_m2=optional("canopy_m2"), trees=int(data["trees"]),
            areas=Distribution.from_json(data["crown_areas"]),
            heights=None if heights is None else Distribution.from_json(heights),
            heights_missing=int(data.get("heights_missing", 0)), height_source=data.get("height_source"),
            time_s=optional("time_s"), updated=str(data.get("updated", "")),
        )


def new_summary(header: dict) -> RunSummary:
    """An empty summary for a cache with this manifest header."""
    height_raster = header.get("fingerprints", {}).get("settings", {}).get("canopy_height")
    return RunSummary(
        image=Path(str(header.get("image", ""))).name,
        model=str(header.get("model", {}).get("name", "")),
        tiles_total=int(header.get("tiles_total", 0)),
        heights=crown_heights() if height_raster else None,
        height_source=Path(height_raster).name if height_raster else None,
    )


def rebuild_summary(cache_dir: Path, header: dict, records: list[TileRecord]) -> RunSummary:
    """The summary of ``records`` from the manifest and the crowns file (read once, in file order)."""
    summary = new_summary(header)
    crowns = _crown_attributes(cache_dir, header, records[-1].features_end if records else 0)
    for record in records:
        summary.add_tile(record, [next(crowns) for _ in range(record.features)])
    summary.time_s = None  # unknown: the runs' durations are only counted as they go
    return summary


def _crown_attributes(cache_dir: Path, header: dict, count: int):
    """The first ``count`` crowns' ``area_m2`` and ``height_max_m``, in file order (NULL as None)."""
    vector = header.get("vector_file")
    if not vector or not count:
        return iter(())
    from osgeo import ogr  # imported here: reading a summary needs only the standard library

    from .vectors import SHAPEFILE_NAMES

    path = Path(cache_dir) / vector
    ds = ogr.Open(str(path))
    if ds is None:
        raise CacheCorruptError(f"The crowns file {path} cannot be read.", cache_dir, start_afresh_fixes=True)
    layer = ds.GetLayer(0)
    defn = layer.GetLayerDefn()
    names = {defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())}
    shapefile = path.suffix.lower() == ".shp"
    wanted = {name: SHAPEFILE_NAMES.get(name, name) if shapefile else name for name in ("area_m2", "height_max_m")}
    rows = []
    for feature in layer:
        rows.append({name: (feature.GetField(column) if column in names and feature.IsFieldSetAndNotNull(column)
                            else None) for name, column in wanted.items()})
        if len(rows) == count:
            break
    ds = None
    return iter(rows)


class SummaryKeeper:
    """The summary of a cache held for writing: counts each committed tile and rewrites ``summary.json``.

    Opened after the cache's rollback: an existing summary that counts exactly the
    committed tiles is continued; any other is rebuilt. The time taken adds this
    run's wall time to the earlier runs'.
    """

    def __init__(self, cache_dir: Path, header: dict, records: list[TileRecord]):
        self.cache_dir = Path(cache_dir)
        try:
            summary = read_summary(self.cache_dir)
        except CacheCorruptError:
            summary = None
        if summary is None or summary.tiles_done != len(records):
            previous = summary
            summary = rebuild_summary(self.cache_dir, header, records)
            if previous is not None:
                summary.time_s = previous.time_s
            elif not records:
                summary.time_s = 0.0
        self.summary = summary
        self._time_before = summary.time_s
        self._started = time.monotonic()
        write_summary(self.cache_dir, summary)

    def add(self, tiles: list[tuple[TileRecord, object]]) -> None:
        """Count tiles just committed (``(record, crowns)``, crowns None for none) and rewrite the file once.

        A failed write is logged, not raised: the tiles are committed, and the
        summary, now behind the manifest, is rebuilt when the cache is next opened.
        """
        for record, crowns in tiles:
            self.summary.add_tile(record, [c.attributes for c in crowns or ()])
        if self._time_before is not None:
            self.summary.time_s = self._time_before + time.monotonic() - self._started
        try:
            write_summary(self.cache_dir, self.summary)
        except OSError as exc:
            logger.warning("could not update %s: %s", SUMMARY_NAME, exc)


def read_summary(cache_dir: str | Path) -> RunSummary | None:
    """The summary in ``cache_dir``; None when there is none yet. An unreadable one raises CacheCorruptError."""
    path = Path(cache_dir) / SUMMARY_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CacheCorruptError(f"The run summary {path} cannot be read ({exc}).") from exc
    try:
        if data.get("version") != SUMMARY_VERSION:
            raise ValueError(f"version {data.get('version')}")
        return RunSummary.from_json(data)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise CacheCorruptError(f"The run summary {path} is not one this version reads ({exc}).") from exc


def write_summary(cache_dir: Path, summary: RunSummary) -> None:
    """Replace ``summary.json`` atomically (no fsync: it is rebuilt from the manifest when it lags)."""
    path = Path(cache_dir) / SUMMARY_NAME
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(summary.to_json(), ensure_ascii=False, indent=1), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def format_figure(value, unit: str = "") -> str:
    """A figure as people read it: ``-`` when unknown, thousands grouped, fewer decimals for larger numbers."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        text = f"{value:,}"
    elif abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}" if unit else text


def summary_csv(summary: RunSummary) -> str:
    """The figures as CSV: ``key,label,value,unit`` (numbers unrounded, empty when unknown)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["key", "label", "value", "unit"])
    for row in summary.rows():
        writer.writerow([row.key, row.label, "" if row.value is None else row.value, row.unit])
    return out.getvalue()


def write_summary_csv(summary: RunSummary, path: Path) -> None:
    # With a BOM: spreadsheet programs then read the units (m², %) as UTF-8.
    Path(path).write_text(summary_csv(summary), encoding="utf-8-sig")
