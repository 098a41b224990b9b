"""The runs panel's summary of the selected run: figures, histograms, live updates, CSV export.

The cache is the conftest raster's 40 crowns of 1.2 x 1.2 m on 32 x 32 m (0.1024 ha): 390.6 trees
per hectare, 57.6 m² of canopy (5.625 %); heights from a CHM that gives 29 of them a 20 m leader
(tests.rasters.geographic_chm: crown 7 over nodata, the last two columns beyond its edge).
"""

import csv
from pathlib import Path

import pytest
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtTest import QTest
from qgis.PyQt.QtWidgets import QFileDialog

from tcd_qgis_plugin.engine.cache.status import cache_status
from tcd_qgis_plugin.engine.run.predict import predict
from tcd_qgis_plugin.engine.settings import Job
from tests.conftest import SQUARES
from tests.rasters import geographic_chm

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "summary_panel"


@pytest.fixture
def cache(raster_path, model_path, tmp_path):
    chm = geographic_chm(tmp_path / "chm.tif", SQUARES, nodata_crown=7)
    job = Job(image=raster_path, cache_dir=tmp_path / "ortho_tcd", model=model_path, canopy_height=chm, threads=1)
    predict(job)
    return job


def shown(plugin, cache_dir) -> dict:
    plugin.refresh_panel()
    plugin.panel.select(cache_dir)
    return dict(plugin.panel.summary.figures())


def test_figures_and_histograms_of_the_selected_run(plugin, cache, tmp_path):
    plugin.registry.remember_job(cache)
    figures = shown(plugin, cache.cache_dir)
    assert figures == {
        "Trees": "40",
        "Trees per hectare": "391",
        "Canopy cover": "5.63 %",  # just over 5.625 %: beyond the image the model sees it mirrored (plan 3)
        "Area processed": "0.10 ha",
        "Crown area, median": "1.44 m²",
        "Crown area, 10–90 %": "1.44 – 1.44 m²",
        "Crown height, median": "20.0 m",
        "Crown height, tallest": "20.0 m",
        "Crowns without height": "11",
        "Tiles": "49 of 49, 0 skipped",
        "Time taken": figures["Time taken"],
    }
    assert figures["Time taken"].endswith(" s")
    view = plugin.panel.summary
    assert not view.area_histogram.isHidden() and sum(view.area_histogram.counts) == 40
    assert not view.height_histogram.isHidden() and sum(view.height_histogram.counts) == 29
    assert view.export_button.isEnabled()

    plugin.panel.resize(420, 760)
    plugin.panel.show()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert plugin.panel.grab().save(str(ARTIFACTS / "runs_panel_summary.png"))
    assert view.height_histogram.grab().save(str(ARTIFACTS / "height_histogram.png"))


def test_export_csv(plugin, cache, tmp_path, monkeypatch):
    plugin.registry.remember_job(cache)
    shown(plugin, cache.cache_dir)
    target = tmp_path / "figures.csv"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *args, **kwargs: (str(target), "CSV files (*.csv)"))
    QTest.mouseClick(plugin.panel.summary.export_button, Qt.MouseButton.LeftButton)
    with open(target, encoding="utf-8-sig", newline="") as f:
        rows = {row["key"]: row for row in csv.DictReader(f)}
    assert rows["trees"]["value"] == "40"
    assert float(rows["trees_per_ha"]["value"]) == pytest.approx(40 / 0.1024)
    assert float(rows["canopy_cover_pct"]["value"]) == pytest.approx(100 * 57.6 / 1024)
    assert rows["height_max_median_m"]["unit"] == "m" and float(rows["height_max_median_m"]["value"]) == 20.0
    assert rows["height_source"]["value"] == "chm.tif"
    assert plugin.panel.summary.message.text() == "Saved figures.csv."


def test_follows_a_run_as_tiles_commit(plugin, raster_path, model_path, tmp_path):
    job = Job(image=raster_path, cache_dir=tmp_path / "live_tcd", model=model_path, threads=1)
    predict(job, cancelled=lambda: (job.cache_dir / "tiles.jsonl").exists() and cache_status(job.cache_dir).done >= 5)
    plugin.registry.remember_job(job)
    done = cache_status(job.cache_dir).done
    assert shown(plugin, job.cache_dir)["Tiles"] == f"{done} of 49, 0 skipped"
    predict(job)
    plugin.panel.update_progress(job.cache_dir, 49, 49)  # what a running task's progress event does
    assert dict(plugin.panel.summary.figures())["Tiles"] == "49 of 49, 0 skipped"
    assert dict(plugin.panel.summary.figures())["Trees"] == "40"


def test_nothing_selected_and_no_summary_yet(plugin, tmp_path):
    view = plugin.panel.summary
    plugin.refresh_panel()
    assert view.title.text() == "Select a run to see what it found." and not view.export_button.isEnabled()
    empty = tmp_path / "empty_tcd"
    empty.mkdir()
    (empty / "tiles.jsonl").write_text("")
    plugin.registry.add_cache(empty)
    shown(plugin, empty)
    assert view.title.text() == "empty_tcd: no summary yet." and view.figures() == []
    assert not view.export_button.isEnabled()
