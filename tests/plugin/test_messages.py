"""What the message bar tells a user when a run ends, in a real QgsMessageBar.

QGIS reports the end of every task with its own item, "Task complete" or "Task
failed" and the task's description, when its window has no focus and no desktop
notification can be shown (QGIS pull request 7569); a user's cancel then reads as
a red "Task failed" over the plugin's sentence. ``qgis_generic_notice`` does what
QGIS does, on the task manager's ``statusChanged`` signal, which QGIS emits after
the task's ``finished()``.
"""

import pytest
from qgis.core import Qgis, QgsApplication, QgsTask
from qgis.gui import QgsMessageBar

from tcd_qgis_plugin.engine.cache.status import cache_status
from tcd_qgis_plugin.engine.settings import Job


@pytest.fixture
def real_bar(qgis_iface, qgis_parent, monkeypatch):
    bar = QgsMessageBar(qgis_parent)
    monkeypatch.setattr(qgis_iface, "messageBar", lambda: bar)
    return bar


@pytest.fixture
def qgis_generic_notice(real_bar):
    manager = QgsApplication.taskManager()

    def notice(task_id, status):
        task = manager.task(task_id)
        if task is not None and status == QgsTask.TaskStatus.Terminated:
            real_bar.pushMessage("Task failed", task.description(), Qgis.Critical)
        elif task is not None and status == QgsTask.TaskStatus.Complete:
            real_bar.pushMessage("Task complete", task.description(), Qgis.Info)

    manager.statusChanged.connect(notice)
    yield
    manager.statusChanged.disconnect(notice)


def items(bar) -> list:
    """(title, text, level, duration) of each item, the one on top first."""
    return [(i.title(), i.text(), i.level(), i.duration()) for i in bar.items()]


def test_a_cancel_reads_as_cancelled_and_stays_on_top(plugin, qgis_new_project, big_raster_path, slow_model_path,
                                                      tmp_path, real_bar, qgis_generic_notice, wait_for_tasks):
    job = Job(image=big_raster_path, cache_dir=tmp_path / "big_tcd", model=slow_model_path, threads=1)
    task = plugin.start_run(job)
    description = task.description()
    task.tilesCommitted.connect(lambda p: p.done >= 2 and task.cancel())
    wait_for_tasks()
    QgsApplication.processEvents()
    assert cache_status(job.cache_dir).state == "partial"
    (title, text, level, duration), *_ = items(real_bar)
    assert title == "Tree crown delineation"
    assert "was cancelled after" in text and "Resume" in text
    assert level == Qgis.Info and duration == 0  # information, not a failure; there until closed
    assert not [i for i in items(real_bar) if i[1] == description], "QGIS's 'Task failed' is still shown"


def test_a_result_stays_until_closed_on_top(plugin, raster_layer, raster_path, model_path, tmp_path, real_bar,
                                            qgis_generic_notice, wait_for_tasks):
    job = Job(image=raster_path, cache_dir=tmp_path / "ortho_tcd", model=model_path, threads=1)
    task = plugin.start_run(job)
    wait_for_tasks()
    QgsApplication.processEvents()
    assert items(real_bar) == [("Tree crown delineation", "Delineated 40 crowns in 49 tiles of ortho.tif.",
                                Qgis.Success, 0)]
    assert task.outcome.state == "complete"


def test_the_install_result_stays_on_top(qgis_iface, real_bar, tmp_path):
    from tcd_qgis_plugin import dependencies
    from tcd_qgis_plugin.engine.doctor import Requirement

    real_bar.pushMessage("Earlier", "something else", Qgis.Info, 0)
    task = dependencies.install(wait=True, target=tmp_path / "deps", reqs=[Requirement("pytest")], iface=qgis_iface)
    QgsApplication.processEvents()
    assert task.result.ok
    (title, text, level, duration), *_ = items(real_bar)
    assert (title, level, duration) == ("Tree crown delineation", Qgis.Success, 0)
    assert text == "The TCD dependencies are installed and ready; no restart is needed."


def test_missing_packages_are_announced_once_at_start_with_the_install_button(qgis_iface, settings, real_bar,
                                                                              monkeypatch):
    from qgis.PyQt.QtWidgets import QPushButton

    from tcd_qgis_plugin import dependencies
    from tcd_qgis_plugin.engine.doctor import Requirement
    from tcd_qgis_plugin.plugin import TCDPlugin

    monkeypatch.setattr(dependencies, "requirements", lambda: [Requirement("tcd-no-such-package", ">=1")])
    installs = []
    monkeypatch.setattr(TCDPlugin, "install_dependencies", lambda self, wait=False: installs.append(1))
    plugin = TCDPlugin(qgis_iface)
    plugin.initGui()
    try:
        QgsApplication.processEvents()
        QgsApplication.processEvents()
        (item,) = real_bar.items()
        assert item.level() == Qgis.Warning
        assert item.text() == "Python packages to install: tcd-no-such-package."
        (button,) = [b for b in item.findChildren(QPushButton) if b.text() == "Install dependencies…"]
        button.click()
        assert installs == [1] and not real_bar.items()
    finally:
        plugin.unload()
