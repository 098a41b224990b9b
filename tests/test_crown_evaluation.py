"""Crowns of a real cache scored against real reference layers (GeoPackage, shapefile) in other CRSs.

The cache is the bundled model's prediction of the sample raster; reference layers
are its own crowns written back with OGR (whole, as boxes, as points, a subset, in
EPSG:4326 or EPSG:3857), so the expected figures are known exactly.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import shapely
from osgeo import ogr

from engine.crown_evaluation import EVALUATION_JSON, EVALUATION_LAYER, compare, evaluate_cache, read_figures
from engine.errors import InputError
from engine.evaluate import match_points
from engine.reference import BOXES, POINTS, POLYGONS, Reference
from engine.run.predict import predict
from engine.settings import Job
from tests.reference_layers import write_area, write_crowns_as, write_layer

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "resources" / "sample" / "OSBS_029.tif"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    cache_dir = tmp_path_factory.mktemp("eval") / "cache"
    predict(Job(image=SAMPLE, cache_dir=cache_dir))
    return cache_dir


@pytest.fixture
def crowns(cache) -> Path:
    return cache / "crowns.shp"


def n_crowns(crowns: Path) -> int:
    source = ogr.Open(str(crowns))  # kept: a layer outliving its dataset crashes OGR
    return source.GetLayer(0).GetFeatureCount()


def crowns_srs(crowns: Path):
    source = ogr.Open(str(crowns))
    return source.GetLayer(0).GetSpatialRef().Clone()


def evaluation_rows(path: Path, layer: str = "evaluation") -> list[tuple[str, str]]:
    source = ogr.Open(str(path))
    return [(f.GetField("status"), f.GetField("source")) for f in source.GetLayerByName(layer)]


def test_a_cache_scores_perfectly_against_its_own_crowns_in_every_kind_and_crs(cache, crowns, tmp_path):
    n = n_crowns(crowns)
    assert n > 20
    polygons = write_crowns_as(tmp_path / "polygons.gpkg", crowns, "polygon", "EPSG:4326")
    boxes = write_crowns_as(tmp_path / "boxes.shp", crowns, "box", "EPSG:3857")
    points = write_crowns_as(tmp_path / "points.gpkg", crowns, "point", "EPSG:4326")
    for reference, kind in ((polygons, POLYGONS), (boxes, BOXES), (points, POINTS)):
        comparison, out = evaluate_cache(cache, reference)
        s = comparison.scores
        assert comparison.kind == kind
        assert (s.tp, s.fp, s.fn) == (n, 0, 0), kind
        assert s.f1 == 1.0
        if kind == POINTS:
            assert s.mean_iou is None
        else:
            assert s.mean_iou > 0.999  # reprojected there and back: the same shapes
        assert out == cache / EVALUATION_LAYER
        figures = read_figures(cache)
        assert figures["reference_kind"] == kind and figures["f1"] == 1.0 and figures["tp"] == n
    # Tree tops get their own styled point layer beside the crowns.
    assert [s for s, _ in evaluation_rows(cache / EVALUATION_LAYER, "reference_points")] == ["matched"] * n


def test_missed_and_false_crowns_are_counted_and_written(cache, crowns, tmp_path):
    n = n_crowns(crowns)
    half = write_crowns_as(tmp_path / "half.gpkg", crowns, "polygon", "EPSG:4326", keep=slice(0, None, 2))
    comparison, out = evaluate_cache(cache, half, out=tmp_path / "result.gpkg")
    kept = (n + 1) // 2
    s = comparison.scores
    # The reference's envelope is the default area: crowns outside it do not count as false.
    assert s.tp == kept and s.fn == 0 and 0 < s.fp <= n - kept
    rows = evaluation_rows(out)
    assert rows.count(("matched", "crown")) == kept
    assert rows.count(("false", "crown")) == s.fp
    assert json.loads((tmp_path / "result.json").read_text())["fp"] == s.fp
    assert not (cache / EVALUATION_JSON).exists() or read_figures(cache)["layer"] == EVALUATION_LAYER
    # The other way round: a reference crown with no crown is missed, and drawn as one.
    shifted = tmp_path / "with_extra.gpkg"
    write_layer(shifted, SAMPLE, [[5, 5, 45, 45], [350, 350, 395, 395]], "ellipse")
    comparison, out = evaluate_cache(cache, shifted, area=write_area(tmp_path / "area.gpkg", SAMPLE, (0, 0, 400, 400)),
                                     out=tmp_path / "extra.gpkg")
    missed = comparison.reference_status.count("missed")
    assert comparison.scores.fn == missed and evaluation_rows(out).count(("missed", "reference")) == missed


def test_an_area_limits_what_counts(cache, crowns, tmp_path):
    everything = write_crowns_as(tmp_path / "all.gpkg", crowns, "polygon")
    left = write_area(tmp_path / "left.shp", SAMPLE, (0, 0, 200, 400), crs="EPSG:4326")
    comparison, _ = evaluate_cache(cache, everything, area=left)
    s = comparison.scores
    assert s.f1 == 1.0 and 0 < s.tp < n_crowns(crowns)
    centres_x = [c.representative_point().x for c in comparison.crowns]
    x_mid = 404211.9 + 20.0  # the sample's left edge + 200 px at 0.1 m
    assert max(centres_x) <= x_mid + 1e-6


def test_a_point_in_two_crowns_or_a_crown_with_two_points_counts_once():
    a, b = shapely.box(0, 0, 4, 4), shapely.box(3, 0, 7, 4)
    points = [shapely.Point(3.5, 2), shapely.Point(1, 1), shapely.Point(1.5, 1.5), shapely.Point(6, 2)]
    pairs = match_points([a, b], points)
    # (3.5, 2) lies in both: it counts for neither; a holds two points: matched once; b its own.
    assert sorted(map(tuple, pairs.tolist())) == [(0, 1), (1, 3)]
    reference = Reference(POINTS, tuple(points), "points")
    comparison = compare([a, b], reference, shapely.box(-1, -1, 8, 5))
    assert (comparison.scores.tp, comparison.scores.fp, comparison.scores.fn) == (2, 0, 2)


def test_polygon_iou_decides_a_match_at_0_4():
    crown = shapely.box(0, 0, 10, 10)
    near = shapely.box(3, 0, 13, 10)  # IoU 70 / 130 = 0.54
    far = shapely.box(6, 0, 16, 10)  # IoU 40 / 160 = 0.25
    for truth, matched in ((near, True), (far, False)):
        ellipse_like = Reference(POLYGONS, (truth,), "t")
        s = compare([crown], ellipse_like, shapely.box(-5, -5, 20, 15)).scores
        assert (s.tp == 1) == matched
    s = compare([crown], Reference(POLYGONS, (near,), "t"), shapely.box(-5, -5, 20, 15)).scores
    assert s.mean_iou == pytest.approx(70 / 130)


@pytest.mark.parametrize("case", ["no_crs", "away", "area_outside", "mixed", "lines"])
def test_bad_input_is_one_sentence_and_changes_nothing(cache, crowns, tmp_path, case):
    good = write_crowns_as(tmp_path / "good.gpkg", crowns, "polygon")
    evaluate_cache(cache, good)
    before = (cache / EVALUATION_LAYER).read_bytes(), (cache / EVALUATION_JSON).read_bytes()
    area = None
    boxes = np.array([[10, 10, 50, 50], [100, 100, 150, 160]], float)
    if case == "no_crs":
        reference = write_layer(tmp_path / "nocrs.gpkg", SAMPLE, boxes, "box", no_crs=True)
        expected = "has no coordinate reference system"
    elif case == "away":
        reference = write_layer(tmp_path / "away.shp", SAMPLE, boxes + 5000, "box", crs="EPSG:4326")
        expected = "None of the 2 features of the reference layer away.shp lies over the raster"
    elif case == "area_outside":
        reference = good
        area = write_area(tmp_path / "far.gpkg", SAMPLE, (2000, 2000, 2100, 2100))
        expected = "The area far.gpkg lies outside the raster"
    elif case == "mixed":
        reference = tmp_path / "mixed.gpkg"
        ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(reference))
        layer = ds.CreateLayer("mixed", crowns_srs(crowns), ogr.wkbUnknown)
        for wkt in ("POINT (404215 3285130)",
                    "POLYGON ((404212 3285130,404216 3285130,404216 3285134,404212 3285130))"):
            f = ogr.Feature(layer.GetLayerDefn())
            f.SetGeometry(ogr.CreateGeometryFromWkt(wkt))
            layer.CreateFeature(f)
        ds = None
        expected = "mixes points and polygons"
    else:
        reference = tmp_path / "lines.gpkg"
        ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(reference))
        layer = ds.CreateLayer("lines", crowns_srs(crowns), ogr.wkbLineString)
        f = ogr.Feature(layer.GetLayerDefn())
        f.SetGeometry(ogr.CreateGeometryFromWkt("LINESTRING (404212 3285130,404216 3285134)"))
        layer.CreateFeature(f)
        ds = None
        expected = "holds LineString features"
    with pytest.raises(InputError, match=expected) as info:
        evaluate_cache(cache, reference, area)
    assert str(info.value).count(". ") == 0 and str(info.value).endswith(".")
    assert ((cache / EVALUATION_LAYER).read_bytes(), (cache / EVALUATION_JSON).read_bytes()) == before


def test_the_cli_prints_the_figures_and_one_line_for_bad_input(cache, crowns, tmp_path):
    reference = write_crowns_as(tmp_path / "ref.shp", crowns, "polygon", "EPSG:3857")
    run = subprocess.run([sys.executable, "-m", "engine", "evaluate", str(cache), "--truth", str(reference)],
                         cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "F1        1.000" in run.stdout and "mean IoU  1.000" in run.stdout
    far = write_area(tmp_path / "far.gpkg", SAMPLE, (2000, 2000, 2100, 2100))
    run = subprocess.run([sys.executable, "-m", "engine", "evaluate", str(cache), "--truth", str(reference),
                          "--area", str(far)], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 2
    assert [line for line in run.stderr.splitlines() if line.startswith("error")] == [
        "error: The area far.gpkg lies outside the raster."]
