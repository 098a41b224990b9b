"""A folder that holds a run this one cannot continue: the user chooses, in the dialog and the runs panel.

The cache is made by the engine with 96 px tiles; the dialog then asks for the
model's default tiles into the same folder. Whether the two differ is asked of the
engine (``find_mismatch``) in a child process, before anything runs.
"""

import pytest
from qgis.core import Qgis, QgsApplication
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtWidgets import QApplication, QFileDialog

from tcd_qgis_plugin.engine.cache.status import cache_status
from tcd_qgis_plugin.engine.run.predict import predict
from tcd_qgis_plugin.engine.settings import Job
from tcd_qgis_plugin.gui import mismatch


def tiles_total(cache_dir) -> int:
    return cache_status(cache_dir).total


@pytest.fixture
def old_run(plugin, raster_path, model_path):
    """A finished cache of ortho.tif made with 96 px tiles, where the dialog puts its folder."""
    job = Job(image=raster_path, cache_dir=raster_path.with_name("ortho_tcd"), model=model_path, tile_size_px=96,
              overlap_px=32, threads=1)
    predict(job)
    plugin.registry.remember_job(job)
    return job


@pytest.fixture
def dialog(plugin, raster_layer, model_path, old_run):
    dialog = plugin.show_dialog()
    dialog.select_model(model_path)
    dialog.set_raster(raster_layer)
    assert dialog.run_button.isEnabled(), dialog.message_label.text()
    yield dialog
    dialog.hide()


def answer(monkeypatch, choice, confirm=True):
    asked = []

    def ask(parent, folder, sentence, choices=()):
        asked.append((folder.name, sentence, tuple(choices)))
        return choice

    monkeypatch.setattr(mismatch, "ask", ask)
    monkeypatch.setattr(mismatch, "confirm_afresh", lambda *args: confirm)
    return asked


def test_resume_as_it_was(plugin, dialog, old_run, monkeypatch, wait_for_tasks):
    before = tiles_total(old_run.cache_dir)
    asked = answer(monkeypatch, mismatch.RESUME)
    dialog.run_button.click()
    assert asked == [("ortho_tcd", "This cache was made with other settings (tile size, overlap differ).",
                      (mismatch.RESUME, mismatch.AFRESH, mismatch.OTHER_FOLDER))]
    (task,) = plugin.tasks.values()
    assert task.job == old_run  # the run that is there, as it was made
    wait_for_tasks()
    assert tiles_total(old_run.cache_dir) == before and cache_status(old_run.cache_dir).state == "complete"


def test_start_afresh_deletes_the_old_cache_after_asking(plugin, dialog, old_run, monkeypatch, wait_for_tasks):
    before = tiles_total(old_run.cache_dir)
    plugin.load_layers(old_run.cache_dir)
    answer(monkeypatch, mismatch.AFRESH, confirm=False)
    dialog.run_button.click()
    assert not plugin.tasks and tiles_total(old_run.cache_dir) == before  # the user said No: nothing happens

    answer(monkeypatch, mismatch.AFRESH, confirm=True)
    dialog.run_button.click()
    (task,) = plugin.tasks.values()
    assert task.job.overwrite
    wait_for_tasks()
    assert task.outcome.state == "complete", task.outcome
    assert tiles_total(old_run.cache_dir) == 49 != before  # the model's 64 px tiles now
    assert plugin.registry.job(old_run.cache_dir).overwrite is False  # Resume never starts over


def test_choose_another_folder(plugin, dialog, old_run, monkeypatch, tmp_path):
    answer(monkeypatch, mismatch.OTHER_FOLDER)
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *args: str(tmp_path / "elsewhere"))
    dialog.run_button.click()
    assert not plugin.tasks and dialog.isVisible()
    assert dialog.folder_widget.filePath() == str(tmp_path / "elsewhere")
    assert cache_status(old_run.cache_dir).state == "complete"


def test_cancel_leaves_everything(plugin, dialog, old_run, monkeypatch):
    answer(monkeypatch, None)
    dialog.run_button.click()
    assert not plugin.tasks and dialog.isVisible()


def test_the_question_in_real_widgets(plugin, dialog, old_run, tmp_path):
    # The real modal question: its buttons, then Start afresh and the No of the confirmation.
    seen = {}

    def click(name, tries=50):
        # A slot must not raise (QGIS would abort): failures are kept for the assertions below.
        try:
            box = QApplication.activeModalWidget()
            if box is None or not hasattr(box, "buttons"):
                if tries:
                    QTimer.singleShot(100, lambda: click(name, tries - 1))
                return
            seen.setdefault("texts", []).append(box.text())
            seen.setdefault("buttons", []).append(sorted(b.text().replace("&", "") for b in box.buttons()))
            (button,) = [b for b in box.buttons() if b.objectName() == name or b.text().replace("&", "") == name]
            button.click()
            if name == mismatch.AFRESH:
                QTimer.singleShot(300, lambda: click("No"))
        except Exception as exc:
            seen["error"] = repr(exc)
            box.reject()

    QTimer.singleShot(200, lambda: click(mismatch.AFRESH))
    dialog.run_button.click()
    assert "error" not in seen, seen
    assert "ortho_tcd already holds a run that this one cannot continue" in seen["texts"][0]
    assert seen["buttons"][0] == ["Cancel", "Choose another folder…", "Resume it as it was", "Start afresh…"]
    assert "Delete the run in" in seen["texts"][1] and "tiles done" in seen["texts"][1]
    assert not plugin.tasks and cache_status(old_run.cache_dir).state == "complete"


def test_resume_from_the_panel_offers_to_start_afresh(plugin, old_run, monkeypatch, wait_for_tasks):
    # The image changed on disk since the run: the remembered job cannot continue the cache.
    image = old_run.image
    image.write_bytes(image.read_bytes() + b"\0" * 16)
    asked = answer(monkeypatch, mismatch.AFRESH)
    plugin.refresh_panel()
    task = plugin.resume(old_run.cache_dir)
    assert asked[0][2] == (mismatch.AFRESH,)
    assert "another image" in asked[0][1]
    wait_for_tasks()
    assert task.outcome.state == "complete", task.outcome


def test_a_run_refused_for_its_folder_offers_to_start_afresh(plugin, old_run, model_path, monkeypatch,
                                                             qgis_iface, wait_for_tasks):
    # Checked before starting only from the dialog and the panel; a run started otherwise is refused
    # by the engine, and the bar offers the same remedy.
    from tests.plugin.bars import CppBarIface, click_after_gc

    cpp_iface = CppBarIface()
    monkeypatch.setattr(qgis_iface, "messageBar", cpp_iface.messageBar)
    answer(monkeypatch, mismatch.AFRESH)
    other = Job(image=old_run.image, cache_dir=old_run.cache_dir, model=model_path, threads=1)
    task = plugin.start_run(other)
    wait_for_tasks()
    QgsApplication.processEvents()
    assert task.outcome.state == "failed" and task.outcome.data["start_afresh_fixes"]
    assert [(i.level(), "other settings" in i.text()) for i in cpp_iface.messageBar().items()] == [
        (Qgis.Critical, True)]
    click_after_gc(qgis_iface, "Start afresh…")
    (again,) = plugin.tasks.values()
    assert again.job.overwrite
    wait_for_tasks()
    assert again.outcome.state == "complete" and tiles_total(old_run.cache_dir) == 49
