"""summary.json: the run's figures against values computed by hand on a synthetic scene.

The scene: 320 x 320 px at 0.1 m (32 x 32 m); the bottom 64 rows are nodata, so 32 x 25.6 m =
819.2 m² are processed. Five rows of eight square crowns, the columns 8, 10, ..., 22 px wide:
40 crowns of 0.64, 1.00, 1.44, 1.96, 2.56, 3.24, 4.00, 4.84 m² (five each), 98.4 m² of canopy.
"""

import json

import pytest

from engine.cache import summary as summary_module
from engine.cache.status import cache_status
from engine.cache.summary import SUMMARY_NAME, read_summary, summary_csv
from engine.cli import main as cli
from engine.run.predict import predict
from engine.settings import Job
from tests.rasters import crowns_image, write_raster

SIZES = (8, 10, 12, 14, 16, 18, 20, 22)
SQUARES = [(10 + 40 * i, 12 + 40 * j, size) for i, size in enumerate(SIZES) for j in range(5)]
AREA_M2 = 32 * 25.6
CANOPY_M2 = 5 * sum(s * s for s in SIZES) * 0.01
TREES_PER_HA = 40 / (AREA_M2 / 10_000)


@pytest.fixture
def scene(tmp_path):
    img = crowns_image(320, 320, SQUARES)
    img[:, 256:, :] = 0
    return write_raster(tmp_path / "scene.tif", img, crs="EPSG:32633", nodata=0)


def figures(cache_dir) -> dict:
    return {row.key: row.value for row in read_summary(cache_dir).rows()}


def test_figures_match_the_hand_computed_values(scene, tmp_path, crown_model):
    cache = tmp_path / "c"
    predict(Job(image=scene, cache_dir=cache, model=crown_model))
    f = figures(cache)
    status = cache_status(cache)
    assert f["trees"] == 40
    assert f["area_processed_ha"] == pytest.approx(AREA_M2 / 10_000, rel=1e-9)
    assert f["trees_per_ha"] == pytest.approx(TREES_PER_HA, rel=1e-9)  # 488.28
    assert f["canopy_cover_pct"] == pytest.approx(100 * CANOPY_M2 / AREA_M2, rel=1e-9)  # 12.01 %
    # Nearest-rank quantiles of the 40 areas (five of each size): ranks 4, 20 and 36.
    assert f["crown_area_p10_m2"] == pytest.approx(0.64, rel=0.005)
    assert f["crown_area_median_m2"] == pytest.approx(1.96, rel=0.005)
    assert f["crown_area_p90_m2"] == pytest.approx(4.84, rel=0.005)
    assert (f["crown_area_min_m2"], f["crown_area_max_m2"]) == (pytest.approx(0.64), pytest.approx(4.84))
    assert f["crown_area_mean_m2"] == pytest.approx(sum(s * s for s in SIZES) / 800, rel=1e-6)  # 2.46
    assert (f["tiles_done"], f["tiles_total"]) == (status.done, status.total)
    assert f["tiles_skipped"] == status.skipped > 0  # the tiles wholly in the nodata rows
    assert f["model"] == "canopy+centres test model" and f["image"] == "scene.tif"
    assert f["time_s"] > 0
    assert "height_max_median_m" not in f  # no height raster


def test_kept_current_at_every_commit_without_rereading_crowns(scene, tmp_path, crown_model, monkeypatch):
    reads = []
    real = summary_module._crown_attributes
    monkeypatch.setattr(summary_module, "_crown_attributes",
                        lambda cache_dir, header, count: reads.append(count) or real(cache_dir, header, count))
    cache = tmp_path / "c"
    seen = []

    def progress(p):
        if p.done:
            summary = json.loads((cache / SUMMARY_NAME).read_text())
            seen.append((p.done, summary["tiles_done"], summary["trees"], p.features))

    predict(Job(image=scene, cache_dir=cache, model=crown_model), progress=progress)
    assert seen and all(done == tiles and trees == features for done, tiles, trees, features in seen)
    assert reads == [0]  # the crowns file is never read while tiles commit


def test_resume_after_a_crash_between_manifest_and_summary(scene, tmp_path, crown_model):
    clean = tmp_path / "clean"
    predict(Job(image=scene, cache_dir=clean, model=crown_model))
    cache = tmp_path / "c"
    job = Job(image=scene, cache_dir=cache, model=crown_model)
    predict(job, cancelled=lambda: cache_status(cache).done >= 20)
    # As if killed after the last manifest line but before its summary: one tile behind.
    stale = json.loads((cache / SUMMARY_NAME).read_text())
    stale["tiles_done"] -= 1
    (cache / SUMMARY_NAME).write_text(json.dumps(stale))
    predict(job)
    resumed, expected = figures(cache), figures(clean)
    for key in ("time_s",):
        resumed.pop(key), expected.pop(key)
    assert resumed == expected


def test_status_prints_the_summary_and_rebuilds_a_missing_one(scene, tmp_path, crown_model, capsys):
    cache = tmp_path / "c"
    predict(Job(image=scene, cache_dir=cache, model=crown_model))
    (cache / SUMMARY_NAME).unlink()  # a cache from before summaries
    assert cli(["status", str(cache), "--summary"]) == 0
    out = capsys.readouterr().out
    lines = {line.split(":")[0].strip(): line.split(":", 1)[1].strip() for line in out.splitlines() if ":" in line}
    assert lines["Trees"] == "40"
    assert lines["Trees per hectare"] == "488 /ha"
    assert lines["Canopy cover"] == "12.0 %"
    assert lines["Area processed"] == "0.08 ha"
    assert lines["Crown area, median"] == "1.96 m²"
    assert lines["Time taken"] == "-"  # unknown once rebuilt


def test_csv_holds_every_figure_unrounded(scene, tmp_path, crown_model):
    cache = tmp_path / "c"
    predict(Job(image=scene, cache_dir=cache, model=crown_model))
    lines = summary_csv(read_summary(cache)).splitlines()
    assert lines[0] == "key,label,value,unit"
    rows = {line.split(",")[0]: line for line in lines[1:]}
    assert rows["trees"] == "trees,Trees,40,"
    assert float(rows["trees_per_ha"].split(",")[2]) == pytest.approx(TREES_PER_HA, rel=1e-9)
    assert rows["canopy_cover_pct"].endswith(",%")
