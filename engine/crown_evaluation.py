"""Score a cache's crowns against a reference layer, and write what matched, what was missed, what is false.

Everything is compared in the *cache's CRS* (the raster's): the reference (crown
polygons, boxes or tree-top points, any OGR format and CRS) is reprojected there by
:mod:`engine.reference`. Only what lies inside the **area** counts (a reference
polygon by a point on its surface; a crown when it matches a reference inside, else
by a point on its surface): the area is where the reference is
complete; without one, the envelope of the reference features within the raster.

- **polygons**: a crown matches a reference polygon when their IoU is at least the
  threshold (0.4), one-to-one, maximising the summed IoU;
- **boxes** (every reference polygon an axis-aligned rectangle): the crowns'
  bounding boxes (a detector's own box fields) against the boxes, the convention of
  the NeonTreeEvaluation benchmark;
- **points**: a tree top counts when it lies in exactly one crown; a crown holding
  several is matched once (:func:`engine.evaluate.match_points`).

:func:`evaluate_cache` writes ``evaluation.gpkg`` (layer ``evaluation``: matched and
false crowns, missed reference polygons, field ``status``; with points also layer
``reference_points``) and ``evaluation.json`` (the figures the runs panel shows)
into the cache folder, or beside the layer given as ``out``.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .evaluate import (
    DEFAULT_IOU_THRESH,
    Scores,
    iou_matrix,
    match_by_iou,
    match_points,
    polygon_iou_matrix,
    score_matches,
)
from .reference import (
    BOXES,
    POINTS,
    Reference,
    VectorData,
    default_area,
    make_area,
    make_reference,
    raster_bounds_polygon,
    read_vector,
    representative_points,
    to_crs,
)

log = logging.getLogger(__name__)

EVALUATION_LAYER = "evaluation.gpkg"
EVALUATION_JSON = "evaluation.json"
MATCHED, MISSED, FALSE = "matched", "missed", "false"
BOX_FIELDS = ("box_xmin", "box_ymin", "box_xmax", "box_ymax")


@dataclass(frozen=True)
class Comparison:
    """Crowns and references inside the area, each with its status (and IoU where it has one)."""

    scores: Scores
    kind: str
    crowns: tuple
    crown_status: tuple[str, ...]
    crown_iou: tuple[float | None, ...]
    references: tuple
    reference_status: tuple[str, ...]


def _inside(geometries, area) -> np.ndarray:
    import shapely

    if not len(geometries):
        return np.zeros(0, bool)
    return np.asarray(shapely.covered_by(representative_points(geometries), area), bool)


def compare(crowns: list, reference: Reference, area, iou_thresh: float = DEFAULT_IOU_THRESH,
            crown_boxes: np.ndarray | None = None) -> Comparison:
    """Match crowns (shapely polygons) with the reference inside ``area``; all in one CRS.

    ``crown_boxes`` (N, 4) ``xmin, ymin, xmax, ymax`` replaces the crowns' envelopes
    against a box reference (a detector stores its boxes beside its crown shapes).
    """
    keep_refs = _inside(reference.geometries, area)
    refs_in = [r for r, k in zip(reference.geometries, keep_refs) if k]
    # Every crown may match a reference inside the area (one straddling the edge included);
    # an unmatched crown counts as false only when it lies inside the area itself.
    iou = None
    if reference.kind == POINTS:
        pairs = match_points(crowns, refs_in)
    else:
        if reference.kind == BOXES:
            if crown_boxes is not None:
                pred = np.asarray(crown_boxes, np.float64).reshape(-1, 4)
            else:
                pred = np.asarray([c.bounds for c in crowns], np.float64).reshape(-1, 4)
            truth = np.asarray([r.bounds for r in refs_in], np.float64).reshape(-1, 4)
            iou = iou_matrix(pred, truth)
        else:
            iou = polygon_iou_matrix(crowns, refs_in)
        pairs = match_by_iou(iou, iou_thresh)
    keep_crowns = _inside(crowns, area)
    keep_crowns[pairs[:, 0]] = True
    index = np.cumsum(keep_crowns) - 1  # position of each kept crown among the kept ones
    crowns_in = [c for c, k in zip(crowns, keep_crowns) if k]
    if iou is not None:
        iou = iou[keep_crowns]
    pairs = np.stack([index[pairs[:, 0]], pairs[:, 1]], axis=1) if len(pairs) else pairs
    scores = score_matches(pairs, len(crowns_in), len(refs_in), iou_thresh, iou)
    crown_status = [FALSE] * len(crowns_in)
    crown_iou: list[float | None] = [None] * len(crowns_in)
    reference_status = [MISSED] * len(refs_in)
    for i, j in pairs:
        crown_status[i] = MATCHED
        reference_status[j] = MATCHED
        crown_iou[i] = None if iou is None else round(float(iou[i, j]), 4)
    return Comparison(scores, reference.kind, tuple(crowns_in), tuple(crown_status), tuple(crown_iou),
                      tuple(refs_in), tuple(reference_status))


# --------------------------------------------------------------------------- the cache's side


@dataclass(frozen=True)
class CacheGrid:
    """What evaluation needs of a cache: its crown file, its CRS as WKT and the raster's footprint."""

    cache_dir: Path
    crowns_source: str
    crs_wkt: str
    footprint: object  # shapely Polygon in the cache's CRS


def cache_grid(cache_dir: str | Path) -> CacheGrid:
    """The crown layer, CRS and raster footprint of a cache (from its manifest header)."""
    from osgeo import osr

    from .cache.manifest import read_manifest
    from .cache.status import cache_layers

    cache_dir = Path(cache_dir)
    header = read_manifest(cache_dir).header
    if not header:
        raise InputError(f"{cache_dir} is not a TCD cache (it has no manifest).")
    crowns = [layer for layer in cache_layers(cache_dir) if layer.kind == "vector"]
    if not crowns:
        raise InputError(f"The cache {cache_dir} has no crown layer; run predict with the instances output.")
    image = header["fingerprints"]["image"]
    srs = osr.SpatialReference()
    srs.SetFromUserInput(image["crs"])
    source = str(crowns[0].path) + (f"|layername={crowns[0].layer_name}" if crowns[0].layer_name else "")
    return CacheGrid(cache_dir, source, srs.ExportToWkt(),
                     raster_bounds_polygon(image["transform"], image["width"], image["height"]))


def read_crowns(grid: CacheGrid) -> tuple[list, np.ndarray | None]:
    """The cache's crown polygons and, for a detector's cache, its boxes (N, 4)."""
    import shapely
    from osgeo import ogr

    path, layer_name = grid.crowns_source.partition("|layername=")[::2]
    dataset = ogr.Open(path)
    layer = dataset.GetLayerByName(layer_name) if layer_name else dataset.GetLayer(0)
    defn = layer.GetLayerDefn()
    with_boxes = all(defn.GetFieldIndex(name) >= 0 for name in BOX_FIELDS)
    crowns, boxes = [], []
    for feature in layer:
        geometry = feature.GetGeometryRef()
        if geometry is None or geometry.IsEmpty():
            continue
        crowns.append(shapely.from_wkb(bytes(geometry.ExportToIsoWkb())))
        if with_boxes:
            boxes.append([feature.GetField(name) for name in BOX_FIELDS])
    return crowns, (np.asarray(boxes, np.float64).reshape(-1, 4) if with_boxes else None)


def load_reference(reference: VectorData | str | Path, crs_wkt: str, footprint) -> Reference:
    data = reference if isinstance(reference, VectorData) else read_vector(reference)
    return make_reference(to_crs(data, crs_wkt), footprint, data.name)


def load_area(area: VectorData | str | Path | None, reference: Reference, crs_wkt: str, footprint):
    if area is None:
        return default_area(reference, footprint)
    data = area if isinstance(area, VectorData) else read_vector(area, "area")
    return make_area(to_crs(data, crs_wkt, "area"), footprint, data.name)


def evaluate_cache(cache_dir: str | Path, reference: VectorData | str | Path,
                   area: VectorData | str | Path | None = None, iou_thresh: float = DEFAULT_IOU_THRESH,
                   out: str | Path | None = None) -> tuple[Comparison, Path]:
    """Score a cache's crowns against a reference layer; write the styled layer and the figures.

    Returns the comparison and the GeoPackage written (``out``, default
    ``CACHE/evaluation.gpkg``); ``evaluation.json`` goes beside it. Every input is
    checked before anything is written.
    """
    if not 0 < iou_thresh <= 1:
        raise InputError(f"The IoU threshold must be in (0, 1], not {iou_thresh}.")
    grid = cache_grid(cache_dir)
    ref = load_reference(reference, grid.crs_wkt, grid.footprint)
    area_crs = load_area(area, ref, grid.crs_wkt, grid.footprint)
    crowns, boxes = read_crowns(grid)
    comparison = compare(crowns, ref, area_crs, iou_thresh, boxes)
    out = Path(out) if out else Path(cache_dir) / EVALUATION_LAYER
    write_layer(comparison, out, grid.crs_wkt)
    figures = figures_json(comparison, ref.name, None if area is None else _name(area), area_crs.area, out)
    write_json_atomic(out.with_name(EVALUATION_JSON) if out.name == EVALUATION_LAYER
                      else out.with_suffix(".json"), figures)
    return comparison, out


def _name(source) -> str:
    return source.name if isinstance(source, VectorData) else Path(str(source).partition("|")[0]).name


def figures_json(comparison: Comparison, reference_name: str, area_name: str | None, area_m2: float,
                 layer: Path) -> dict:
    s = comparison.scores
    return {
        "reference": reference_name, "reference_kind": comparison.kind, "area": area_name,
        "area_crs_units2": round(float(area_m2), 2), "iou_thresh": s.iou_thresh,
        "precision": round(s.precision, 4), "recall": round(s.recall, 4), "f1": round(s.f1, 4),
        "mean_iou": None if s.mean_iou is None else round(s.mean_iou, 4),
        "tp": s.tp, "fp": s.fp, "fn": s.fn, "layer": layer.name,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def read_figures(cache_dir: str | Path) -> dict | None:
    """The figures of the cache's last evaluation, or None when it has none (or an unreadable one)."""
    try:
        return json.loads((Path(cache_dir) / EVALUATION_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_json_atomic(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def write_layer(comparison: Comparison, out: Path, crs_wkt: str) -> None:
    """``evaluation`` (polygons: crowns matched/false, reference polygons missed) and, for a point
    reference, ``reference_points`` (matched/missed), into a new GeoPackage at ``out``."""
    from osgeo import ogr, osr

    ogr.UseExceptions()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.gpkg")
    if tmp.exists():
        tmp.unlink()
    srs = osr.SpatialReference()
    srs.ImportFromWkt(crs_wkt)
    dataset = ogr.GetDriverByName("GPKG").CreateDataSource(str(tmp))
    polygons = dataset.CreateLayer("evaluation", srs, ogr.wkbMultiPolygon)
    for name, kind in (("status", ogr.OFTString), ("source", ogr.OFTString), ("iou", ogr.OFTReal)):
        polygons.CreateField(ogr.FieldDefn(name, kind))
    rows = [(g, status, "crown", iou) for g, status, iou in
            zip(comparison.crowns, comparison.crown_status, comparison.crown_iou)]
    if comparison.kind != POINTS:
        rows += [(g, status, "reference", None) for g, status in
                 zip(comparison.references, comparison.reference_status) if status == MISSED]
    _add_rows(polygons, rows, multi=True)
    if comparison.kind == POINTS:
        points = dataset.CreateLayer("reference_points", srs, ogr.wkbPoint)
        for name in ("status", "source"):
            points.CreateField(ogr.FieldDefn(name, ogr.OFTString))
        _add_rows(points, [(g, status, "reference", None) for g, status in
                           zip(comparison.references, comparison.reference_status)], multi=False)
    dataset = None
    for sidecar in (out, out.with_name(out.name + "-wal"), out.with_name(out.name + "-shm")):
        if sidecar.exists():
            sidecar.unlink()
    os.replace(tmp, out)


def _add_rows(layer, rows, multi: bool) -> None:
    import shapely
    from osgeo import ogr

    layer.StartTransaction()
    for geometry, status, source, iou in rows:
        if multi and geometry.geom_type == "Polygon":
            geometry = shapely.MultiPolygon([geometry])
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetGeometry(ogr.CreateGeometryFromWkb(shapely.to_wkb(geometry)))
        feature.SetField("status", status)
        feature.SetField("source", source)
        if iou is not None:
            feature.SetField("iou", float(iou))
        layer.CreateFeature(feature)
    layer.CommitTransaction()
