"""The "TCD runs" panel: each state as a user reads it, and each button."""

import json
import time

import pytest
from qgis.core import QgsApplication, QgsProject
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtTest import QTest
from qgis.PyQt.QtWidgets import QFileDialog, QMessageBox

from tcd_qgis_plugin.engine.cache.status import cache_status
from tcd_qgis_plugin.engine.run.predict import predict
from tcd_qgis_plugin.engine.settings import Job
from tcd_qgis_plugin.gui.runs_panel import COLUMNS
from tcd_qgis_plugin.plugin import TCDPlugin


def states(panel) -> dict:
    return {row[0]: row[1] for row in panel.row_texts()}


def click(panel, cache_dir, button) -> None:
    panel.select(cache_dir)
    assert button.isEnabled(), button.text()
    QTest.mouseClick(button, Qt.LeftButton)


def test_each_state(plugin, qgis_new_project, raster_path, big_raster_path, model_path, slow_model_path, tmp_path,
                    wait_for_tasks):
    complete = Job(image=raster_path, cache_dir=tmp_path / "complete", model=model_path, threads=1)
    predict(complete)
    partial = Job(image=raster_path, cache_dir=tmp_path / "partial", model=model_path, threads=1)
    predict(partial, progress=None, cancelled=lambda: (partial.cache_dir / "tiles.jsonl").exists()
            and cache_status(partial.cache_dir).done >= 5)
    failed = Job(image=raster_path, cache_dir=tmp_path / "failed", model=model_path, threads=1)
    predict(failed, cancelled=lambda: (failed.cache_dir / "tiles.jsonl").exists()
            and cache_status(failed.cache_dir).done >= 2)
    for job in (complete, partial, failed):
        plugin.registry.remember_job(job)
    plugin.registry.set_failure(failed.cache_dir, "The prediction process was killed (SIGKILL).")
    plugin.registry.add_cache(tmp_path / "gone")
    plugin.refresh_panel()
    panel = plugin.panel
    assert states(panel) == {"complete": "complete", "partial": "partial", "failed": "failed", "gone": "missing"}
    rows = {row[0]: row for row in panel.row_texts()}
    assert rows["complete"] == ["complete", "complete", "49 / 49", "ortho.tif", "crown test model"]
    assert rows["partial"][2].endswith("/ 49") and rows["partial"][2] != "49 / 49"

    panel.select(complete.cache_dir)
    assert not panel.resume_button.isEnabled() and panel.load_button.isEnabled()
    panel.select(tmp_path / "gone")
    assert not panel.folder_button.isEnabled() and panel.delete_button.isEnabled()

    running = Job(image=big_raster_path, cache_dir=tmp_path / "running", model=slow_model_path, threads=1)
    task = plugin.start_run(running)
    deadline = time.monotonic() + 60
    assert states(panel)["running"] == "running"
    assert {row[0]: row[4] for row in panel.row_texts()}["running"] == "slow passthrough test model"

    def tiles():
        return {row[0]: row[2] for row in panel.row_texts()}["running"]

    while (tiles() in ("–", "0 / 169") or int(tiles().split(" / ")[0]) < 10) and time.monotonic() < deadline:
        QgsApplication.processEvents()
    assert tiles().endswith("/ 169") and states(panel)["running"] == "running"
    # The tile count is never cut off, however it grows.
    column = COLUMNS.index("tiles")
    assert panel.tree.header().sectionSize(column) >= panel.tree.fontMetrics().horizontalAdvance(tiles()) + 4
    panel.select(running.cache_dir)
    assert not panel.delete_button.isEnabled()
    task.cancel()
    wait_for_tasks()
    assert states(panel)["running"] == "partial"


@pytest.mark.usefixtures("per_tile_commits")
def test_resume_from_the_panel_after_a_restart(qgis_iface, settings, qgis_new_project, raster_path, model_path,
                                               tmp_path, wait_for_tasks):
    job = Job(image=raster_path, cache_dir=tmp_path / "ortho_tcd", model=model_path, tile_size_px=96,
              overlap_px=32, threads=1)
    first = TCDPlugin(qgis_iface)
    first.initGui()
    first.registry.remember_job(job)  # what start_run does before the worker starts
    predict(job, cancelled=lambda: (job.cache_dir / "tiles.jsonl").exists() and cache_status(job.cache_dir).done >= 4)
    done_before = cache_status(job.cache_dir).done
    first.unload()

    # A new session: a new plugin object reading the same profile settings.
    second = TCDPlugin(qgis_iface)
    second.initGui()
    try:
        assert states(second.panel) == {"ortho_tcd": "partial"}
        click(second.panel, job.cache_dir, second.panel.resume_button)
        wait_for_tasks()
        assert states(second.panel) == {"ortho_tcd": "complete"}
        status = cache_status(job.cache_dir)
        lines = (job.cache_dir / "tiles.jsonl").read_text().splitlines()[1:]
        assert len(lines) == status.total > done_before  # each tile committed exactly once
        group = QgsProject.instance().layerTreeRoot().findGroup("ortho_tcd")
        assert sorted(n.layer().name() for n in group.findLayers()) == ["canopy confidence", "crowns"]
    finally:
        second.unload()


def test_open_cache_load_layers_and_delete(plugin, qgis_new_project, raster_path, model_path, tmp_path, monkeypatch,
                                           wait_for_tasks):
    elsewhere = Job(image=raster_path, cache_dir=tmp_path / "from_cli", model=model_path, overlap_px=8, threads=1)
    predict(elsewhere, cancelled=lambda: (elsewhere.cache_dir / "tiles.jsonl").exists()
            and cache_status(elsewhere.cache_dir).done >= 3)
    panel = plugin.panel

    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *args: str(tmp_path))
    QTest.mouseClick(panel.open_cache_button, Qt.LeftButton)
    assert states(panel) == {}  # tmp_path itself is no cache
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *args: str(elsewhere.cache_dir))
    QTest.mouseClick(panel.open_cache_button, Qt.LeftButton)
    assert states(panel) == {"from_cli": "partial"}

    click(panel, elsewhere.cache_dir, panel.load_button)
    group = QgsProject.instance().layerTreeRoot().findGroup("from_cli")
    assert len(group.findLayers()) == 2
    click(panel, elsewhere.cache_dir, panel.load_button)  # loading again reloads, it does not double
    assert len(group.findLayers()) == 2

    # A cache made elsewhere resumes with the settings in its manifest (here a non-default overlap).
    click(panel, elsewhere.cache_dir, panel.resume_button)
    wait_for_tasks()
    assert states(panel) == {"from_cli": "complete"}

    monkeypatch.setattr(QMessageBox, "question", lambda *args: QMessageBox.No)
    click(panel, elsewhere.cache_dir, panel.delete_button)
    assert elsewhere.cache_dir.is_dir()
    monkeypatch.setattr(QMessageBox, "question", lambda *args: QMessageBox.Yes)
    click(panel, elsewhere.cache_dir, panel.delete_button)
    assert not elsewhere.cache_dir.exists()
    assert raster_path.is_file()
    assert states(panel) == {}
    assert QgsProject.instance().layerTreeRoot().findGroup("from_cli") is None
    assert not QgsProject.instance().mapLayers()


def test_help_from_the_panel_and_the_dialog_shows_the_users_guide(plugin, qgis_new_project):
    QTest.mouseClick(plugin.panel.help_button, Qt.MouseButton.LeftButton)
    window = plugin.help
    assert window is not None and window.isVisible()
    assert window.source().name == "USER_GUIDE.md"  # not the developers' README
    text = window.browser.toPlainText()
    for section in ("Installing", "A first run", "Reading the layers", "Resuming and the runs panel",
                    "Choosing and bringing models", "Big rasters", "Clusters", "Troubleshooting"):
        assert section in text, section
    assert "Quick start" not in text and "pytest" not in text
    window.hide()
    dialog = plugin.show_dialog()
    QTest.mouseClick(dialog.help_button, Qt.MouseButton.LeftButton)
    assert plugin.help is window and window.isVisible()
    dialog.hide()


def test_the_dialog_lists_the_processors_the_worker_can_start(plugin, qgis_new_project, raster_path, model_path,
                                                              tmp_path, wait_for_tasks):
    logs = []
    QgsApplication.messageLog().messageReceived.connect(lambda message, tag, level: logs.append(message))
    dialog = plugin.show_dialog()
    deadline = time.monotonic() + 60
    while plugin.processors is None and time.monotonic() < deadline:
        QgsApplication.processEvents()
    assert plugin.processors == ["cpu"]  # no GPU on this machine; the doctor's check decides
    assert [dialog.processor_combo.itemText(i) for i in range(dialog.processor_combo.count())] == ["Automatic", "CPU"]
    dialog.hide()
    job = Job(image=raster_path, cache_dir=tmp_path / "on_cpu", model=model_path, provider="cpu", threads=1)
    plugin.start_run(job)
    wait_for_tasks()
    assert "Processor for on_cpu: cpu." in logs  # in the run's log; not in the cache's fingerprint
    fingerprints = json.loads((tmp_path / "on_cpu" / "tiles.jsonl").read_text().splitlines()[0])["fingerprints"]
    assert "provider" not in json.dumps(fingerprints)


def test_the_processor_list_is_asked_again_after_an_install(plugin, qgis_new_project, monkeypatch):
    from tcd_qgis_plugin import dependencies
    from tcd_qgis_plugin.dependencies import InstallResult
    from tcd_qgis_plugin.engine.doctor import Requirement

    # Before the install: a package is missing, so no worker can say what starts here.
    monkeypatch.setattr(dependencies, "missing", lambda reqs=None: [Requirement("onnxruntime")])
    dialog = plugin.show_dialog()
    QgsApplication.processEvents()
    assert plugin.processors is None and plugin._processor_probe is None
    monkeypatch.undo()
    plugin._dependencies_changed(InstallResult(True, "installed"))  # what the install task calls when done
    deadline = time.monotonic() + 60
    while plugin.processors is None and time.monotonic() < deadline:
        QgsApplication.processEvents()
    assert plugin.processors == ["cpu"]
    assert [dialog.processor_combo.itemText(i) for i in range(dialog.processor_combo.count())] == ["Automatic", "CPU"]
    assert not dialog.dependency_row.isVisibleTo(dialog)
    dialog.hide()
