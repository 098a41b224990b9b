"""What the message bar tells a user when a run ends, in a real QgsMessageBar.

QGIS reports the end of every task with its own item, "Task complete" or "Task
failed" and the task's description, when its window has no focus and no desktop
notification can be shown (QGIS pull request 7569); a user's cancel then reads as
a red "Task failed" over the plugin's sentence. ``qgis_generic_notice`` does what
QGIS does, on the task manager's ``statusChanged`` signal, which QGIS emits after
the task's ``finished()``.
"""

import gc
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from qgis.core import Qgis, QgsApplication, QgsTask
from qgis.gui import QgsMessageBar
from qgis.PyQt.QtWidgets import QPushButton

from tcd_qgis_plugin.engine.cache.status import cache_status
from tcd_qgis_plugin.engine.settings import Job
from tests.plugin.bars import CppBarIface, click_after_gc

ROOT = Path(__file__).resolve().parents[2]


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
        gc.collect()
        button.click()
        QgsApplication.processEvents()
        assert installs == [1] and not real_bar.items()
    finally:
        plugin.unload()


# ------------------------------------------------------------------ every message-bar button, after gc


@pytest.fixture
def cpp_iface(qgis_parent):
    return CppBarIface(qgis_parent)


def texts(iface) -> list:
    return [item.text() for item in iface.messageBar().items()]


def test_install_dependencies_button_after_gc_installs_and_goes(cpp_iface):
    from tcd_qgis_plugin import dependencies
    from tcd_qgis_plugin.engine.doctor import Requirement

    calls = []
    dependencies.show_missing_message(cpp_iface, lambda: calls.append(len(cpp_iface.messageBar().items())),
                                      reqs=[Requirement("tcd-no-such-package")])
    click_after_gc(cpp_iface, "Install dependencies…")
    # The install started once, after the warning had left the bar (not from inside its own button's slot).
    assert calls == [0]
    assert not cpp_iface.messageBar().items()


def test_retry_and_copy_command_buttons_after_gc(cpp_iface, tmp_path, wait_for_tasks):
    from qgis.PyQt.QtWidgets import QApplication

    from tcd_qgis_plugin import dependencies
    from tcd_qgis_plugin.engine.doctor import Requirement

    wheels = tmp_path / "empty-wheels"
    wheels.mkdir()
    failures = []
    task = dependencies.install(wait=True, wheel_dir=str(wheels), target=tmp_path / "deps", iface=cpp_iface,
                                reqs=[Requirement("tcd-no-such-package")], on_finished=failures.append)
    QgsApplication.processEvents()
    assert texts(cpp_iface) == [task.result.message]

    click_after_gc(cpp_iface, "Copy command")
    assert QApplication.clipboard().text() == task.result.command
    assert texts(cpp_iface) == [task.result.message]  # copying leaves the message up

    click_after_gc(cpp_iface, "Retry")
    wait_for_tasks()
    QgsApplication.processEvents()
    assert len(failures) == 2 and not failures[1].ok  # the install really ran again, to the same callback
    # The first failure went with its click; the retry's own result replaced it.
    assert texts(cpp_iface) == [failures[1].message]
    assert len([b for b in cpp_iface.messageBar().findChildren(QPushButton) if b.text() == "Retry"]) == 1


def test_a_successful_install_takes_down_the_packages_to_install_warning(cpp_iface, tmp_path):
    from tcd_qgis_plugin import dependencies
    from tcd_qgis_plugin.engine.doctor import Requirement
    from tests.plugin.test_dependencies import make_wheel

    wheels = tmp_path / "wheels"
    make_wheel(wheels, "tcd_probe_gone", "1.0")
    reqs = [Requirement("tcd_probe_gone")]
    target = tmp_path / "deps"
    try:
        assert dependencies.show_missing_message(cpp_iface, lambda: None, reqs=reqs) is not None
        task = dependencies.install(wait=True, wheel_dir=str(wheels), target=target, iface=cpp_iface, reqs=reqs)
        QgsApplication.processEvents()
        QgsApplication.processEvents()
        assert task.result.ok, task.result.output
        assert [(i.text(), i.level()) for i in cpp_iface.messageBar().items()] == [
            ("The TCD dependencies are installed and ready; no restart is needed.", Qgis.Success)]
    finally:
        if str(target) in sys.path:
            sys.path.remove(str(target))


def test_unload_takes_the_plugins_buttons_off_the_bar(qgis_iface, settings, cpp_iface, monkeypatch):
    from tcd_qgis_plugin import dependencies
    from tcd_qgis_plugin.engine.doctor import Requirement
    from tcd_qgis_plugin.plugin import TCDPlugin

    monkeypatch.setattr(qgis_iface, "messageBar", cpp_iface.messageBar)
    monkeypatch.setattr(dependencies, "requirements", lambda: [Requirement("tcd-no-such-package")])
    plugin = TCDPlugin(qgis_iface)
    plugin.initGui()
    QgsApplication.processEvents()
    assert len(cpp_iface.messageBar().items()) == 1
    plugin.unload()
    QgsApplication.processEvents()
    assert not cpp_iface.messageBar().items()
    gc.collect()  # nothing of the plugin's is left for a click or a timer to reach


CRASH_SCRIPT = textwrap.dedent("""
    import faulthandler, gc, sys
    faulthandler.enable()
    sys.path.insert(0, sys.argv[1])
    from qgis.core import QgsApplication
    app = QgsApplication([], True)
    app.initQgis()
    from tests.plugin.bars import CppBarIface, click_after_gc
    from tcd_qgis_plugin import dependencies
    from tcd_qgis_plugin.engine.doctor import Requirement

    iface = CppBarIface()
    calls = []
    dependencies.show_missing_message(iface, lambda: calls.append(1), reqs=[Requirement("tcd-no-such-package")])
    click_after_gc(iface, "Install dependencies…")
    print("installs started:", len(calls), flush=True)
""")


def test_the_install_button_clicked_after_gc_in_a_fresh_qgis_does_not_crash(tmp_path):
    # The crash QGIS users met: in a process of its own, so a segfault fails this test, not the whole run.
    script = tmp_path / "click.py"
    script.write_text(CRASH_SCRIPT)
    out = subprocess.run([sys.executable, str(script), str(ROOT)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "QT_QPA_PLATFORM": "offscreen"}, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "installs started: 1" in out.stdout
