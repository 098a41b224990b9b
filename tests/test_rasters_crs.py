"""Ground sampling distance and areas true on the ground in every family of CRS users' rasters come in.

One real forest (the bundled NEON OSBS_029 plot, 0.1 m, UTM 17N) warped by GDAL into UTM (the
grid moved by half a pixel), State Plane (US feet), Web Mercator, EPSG:4326 and a polar
stereographic CRS (the same pixels placed at 72 N first), each predicted by the bundled model:
the area processed, the canopy, the crowns' count, sizes and area must be those of the UTM
warp (every warp blurs alike, and the model answers blur), and every CRS whose metres are not
ground metres must be read in its local UTM zone.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal
from rasterio.crs import CRS

from engine.run.predict import predict
from engine.settings import Job
from engine.tiling.raster import describe_raster, ground_scale, working_crs
from tests.rasters import read_crowns

SAMPLE = Path(__file__).resolve().parents[1] / "resources" / "sample" / "OSBS_029.tif"
PLOT_M2 = 40.0 * 40.0  # 400 x 400 px at 0.1 m

gdal.UseExceptions()


def warp(src, dst, crs, *extra):
    gdal.Warp(str(dst), str(src), options=["-t_srs", crs, "-r", "bilinear", "-dstalpha", *extra])
    return dst


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crs")
    polar_src = folder / "osbs_at_72n.tif"  # the same pixels on UTM 24N at 72 N (east Greenland)
    gdal.Translate(str(polar_src), str(SAMPLE), options=["-a_srs", "EPSG:32624", "-a_ullr", "500000", "7990040",
                                                         "500040", "7990000"])
    return {
        "utm": (warp(SAMPLE, folder / "utm.tif", "EPSG:32617", "-tr", "0.1", "0.1", "-te", "404211.95",
                     "3285102.85", "404251.95", "3285142.85"), "EPSG:32617"),
        "state plane ft": (warp(SAMPLE, folder / "stateplane.tif", "EPSG:2238", "-tr", "0.328", "0.328"), "EPSG:2238"),
        "web mercator": (warp(SAMPLE, folder / "mercator.tif", "EPSG:3857"), "EPSG:32617"),
        "4326": (warp(SAMPLE, folder / "wgs84.tif", "EPSG:4326"), "EPSG:32617"),
        "polar stereographic": (warp(polar_src, folder / "polar.tif", "EPSG:3413"), "EPSG:32624"),
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory, variants):
    cache = tmp_path_factory.mktemp("ref") / "c"
    predict(Job(image=variants["utm"][0], cache_dir=cache))
    return read_crowns(cache), json.loads((cache / "summary.json").read_text())


def header(cache):
    return json.loads((cache / "tiles.jsonl").read_text().splitlines()[0])


@pytest.mark.parametrize("name", ["utm", "state plane ft", "web mercator", "4326", "polar stereographic"])
def test_every_crs_family_reads_at_true_ground_scale(tmp_path, variants, reference, name):
    path, work_crs = variants[name]
    ref_crowns, ref_summary = reference
    cache = tmp_path / "c"
    predict(Job(image=path, cache_dir=cache))
    assert CRS.from_string(header(cache)["fingerprints"]["settings"]["work_crs"]) == CRS.from_string(work_crs)
    crowns, summary = read_crowns(cache), json.loads((cache / "summary.json").read_text())
    seen = (len(crowns), summary["area_m2"], summary["canopy_m2"], np.median([c["diam_m"] for c in crowns]))
    # Area processed: the plot's valid pixels (the warp's transparent collar not counted), in ground m²;
    # Web Mercator's own metres would make it 1.32 times as large at OSBS (29.7 N).
    assert ref_summary["area_m2"] == pytest.approx(PLOT_M2, rel=0.01)
    assert summary["area_m2"] == pytest.approx(ref_summary["area_m2"], rel=0.01), seen
    # The same forest: as much canopy, crowns as wide, in ground metres. A warp's resampling blurs
    # the image a little, which the model answers with some more, smaller crowns.
    assert summary["canopy_m2"] == pytest.approx(ref_summary["canopy_m2"], rel=0.1), seen
    assert seen[3] == pytest.approx(np.median([c["diam_m"] for c in ref_crowns]), rel=0.1), seen
    # (Crown counts of the bundled model move by up to a fifth under a warp that also rotates, as
    # EPSG:3413's does by 6 degrees here; Web Mercator's own metres would add a third.)
    assert abs(len(crowns) - len(ref_crowns)) <= 0.25 * len(ref_crowns), seen
    ref_area = sum(c["area_m2"] for c in ref_crowns)
    assert sum(c["area_m2"] for c in crowns) == pytest.approx(ref_area, rel=0.2), seen
    perimeter = np.median([c["perim_m"] for c in crowns])
    assert perimeter == pytest.approx(np.median([c["perim_m"] for c in ref_crowns]), rel=0.15), seen

def test_scale_distortion_is_measured_on_the_ellipsoid(variants):
    mercator = describe_raster(variants["web mercator"][0])
    lo, hi = ground_scale(mercator)
    lat = 29.69  # OSBS
    # Spherical Mercator on the ellipsoid's latitudes: not quite conformal, cos(lat) within 0.5 % both ways.
    assert lo == pytest.approx(np.cos(np.radians(lat)), rel=5e-3) and hi == pytest.approx(np.cos(np.radians(lat)),
                                                                                          rel=5e-3)
    for name in ("utm", "state plane ft"):
        info = describe_raster(variants[name][0])
        lo, hi = ground_scale(info)
        assert abs(lo - 1) < 1e-3 and abs(hi - 1) < 1e-3
        assert working_crs(info) == info.crs_wkt
    polar = describe_raster(variants["polar stereographic"][0])
    lo, hi = ground_scale(polar)
    assert 0.002 < max(abs(lo - 1), abs(hi - 1)) < 0.01  # EPSG:3413 is true to scale at 70 N, 0.6 % off at 72 N
    assert CRS.from_wkt(working_crs(polar)) == CRS.from_epsg(32624)


def test_web_mercator_cache_of_an_older_plan_keeps_its_working_crs(tmp_path, variants, monkeypatch):
    """A cache made before true ground scale (tile plan 2) resumes as it was made: in the raster's own CRS."""
    import engine.run.predict as run_predict
    from engine.tiling.grid import PLAN_EDGE

    path = variants["web mercator"][0]
    with monkeypatch.context() as m:
        m.setattr(run_predict, "LATEST_PLAN", PLAN_EDGE)
        predict(Job(image=path, cache_dir=tmp_path / "old"))
    old = header(tmp_path / "old")
    assert old["plan"] == PLAN_EDGE and CRS.from_string(old["fingerprints"]["settings"]["work_crs"]) == \
        CRS.from_epsg(3857)
    again = predict(Job(image=path, cache_dir=tmp_path / "old"))  # nothing to redo, nothing refused
    assert again.state == "complete" and header(tmp_path / "old") == old
