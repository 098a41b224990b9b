"""The plugin's dependency check and installer, in a pytest-qgis QgsApplication.

Installs run the real pip with the real interpreter, offline, from a folder of
small wheels each test builds, into a temporary package folder.
"""

import base64
import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy
import pytest
from qgis.core import Qgis, QgsApplication, QgsRasterLayer
from qgis.PyQt.QtWidgets import QPushButton

from tcd_qgis_plugin import dependencies
from tcd_qgis_plugin.about_dialog import AboutDialog
from tcd_qgis_plugin.engine.doctor import Requirement

ROOT = Path(__file__).resolve().parents[2]


def make_wheel(folder: Path, name: str, version: str, requires=()) -> Path:
    """A pure-Python wheel: module ``name`` with ``VERSION``, depending on ``requires``."""
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tcd-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/top_level.txt": f"{name}\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


@pytest.fixture
def target(tmp_path):
    folder = tmp_path / "profile" / "python" / "dependencies" / "tcd_qgis_plugin" / "python3"
    yield folder
    if str(folder) in sys.path:
        sys.path.remove(str(folder))


@pytest.fixture
def bar(qgis_iface):
    qgis_iface.messageBar().clear_messages()
    qgis_iface.messageBar().clearWidgets()
    return qgis_iface.messageBar()


def bar_texts(bar, level):
    """Texts of the widget items the bar holds at ``level``."""
    return [item.text() for item in bar.items() if item.level() == level]


def test_requirements_come_from_the_plugin_requirements_file():
    reqs = dependencies.requirements()
    lines = [line.split("#")[0].replace(" ", "") for line in (ROOT / "requirements.txt").read_text().splitlines()]
    assert [r.pip_spec for r in reqs] == [line for line in lines if line]
    assert "onnxruntime" in [r.name for r in reqs]


def test_missing_names_absent_and_too_old_packages_with_a_reason():
    pytest_version = importlib.metadata.version("pytest")
    reqs = [
        Requirement("tcd-no-such-package", ">=1"),
        Requirement("pytest", ">=999"),
        Requirement("pytest", ">=1"),
    ]
    absent, too_old = dependencies.missing(reqs)
    assert (absent.name, absent.found_version, absent.location) == ("tcd-no-such-package", None, None)
    assert absent.reason == "tcd-no-such-package is not installed."
    assert too_old.found_version == pytest_version
    assert too_old.reason == f"pytest {pytest_version} is too old (needs >=999)."
    assert Path(too_old.location, "pytest").is_dir()
    assert dependencies.missing() == []  # the dev venv has everything


def test_find_qgis_python_is_this_interpreter_same_version_and_prefix():
    python = dependencies.find_qgis_python()
    out = subprocess.run(
        [str(python), "-c", "import sys; print(sys.version_info[:2], sys.prefix, sys.base_prefix)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == [*str(sys.version_info[:2]).split(), sys.prefix, sys.base_prefix]


def test_worker_environment_keeps_pythonpath_and_qgis_numpy(target, tmp_path, monkeypatch):
    extra = tmp_path / "extra"
    extra.mkdir()
    monkeypatch.setenv("PYTHONPATH", str(extra))
    env = dependencies.worker_environment(target)
    entries = env["PYTHONPATH"].split(os.pathsep)
    assert entries == [str(extra), str(target)]
    code = "import numpy, sys; print(numpy.__file__); print(sys.path)"
    out = subprocess.run(
        [str(dependencies.find_qgis_python()), "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.splitlines()[0] == numpy.__file__


def test_activate_appends_once_after_site_packages_and_removes_numpy(target):
    planted = [target / "numpy", target / "numpy-9.9.dist-info", target / "numpy.libs", target / "osgeo"]
    for folder in planted:
        folder.mkdir(parents=True)
    (target / "keepme").mkdir()
    dependencies.activate(target)
    dependencies.activate(target)
    assert sys.path.count(str(target)) == 1
    assert sys.path.index(str(target)) > sys.path.index(str(Path(numpy.__file__).parent.parent))
    assert sorted(p.name for p in target.iterdir()) == ["keepme"]
    assert importlib.util.find_spec("numpy").origin == numpy.__file__


def test_offline_install_from_a_wheel_folder_is_importable_at_once_without_numpy(target, tmp_path, bar):
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "tcd_probe_a", "1.0", requires=["numpy>=1.0", "tcd_probe_dep>=2"])
    make_wheel(wheels, "tcd_probe_dep", "2.1")
    dependencies.activate(target)
    with pytest.raises(ImportError):
        importlib.import_module("tcd_probe_a")
    reqs = [Requirement("tcd_probe_a", ">=1")]
    finished = []

    task = dependencies.install(
        wait=True, wheel_dir=str(wheels), target=target, reqs=reqs, on_finished=finished.append
    )

    assert task.result.ok, task.result.output
    assert finished == [task.result]
    assert task.result.installed == ["tcd_probe_a==1.0", "tcd_probe_dep==2.1"]
    assert importlib.import_module("tcd_probe_a").VERSION == "1.0"
    assert importlib.import_module("tcd_probe_dep").__file__.startswith(str(target))
    assert not [p for p in target.iterdir() if p.name.lower().startswith("numpy")]
    assert dependencies.missing(reqs) == []
    QgsApplication.processEvents()  # the result goes on top of the bar on the next turn of the event loop
    assert any("are installed" in m for m in bar.messages[Qgis.Success])


def test_install_through_the_task_manager_upgrades_in_place(target, tmp_path, bar):
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "tcd_probe_b", "1.0")
    dependencies.install(wait=True, wheel_dir=str(wheels), target=target, reqs=[Requirement("tcd_probe_b")])
    make_wheel(wheels, "tcd_probe_b", "2.0")
    results = []

    task = dependencies.install(
        wheel_dir=str(wheels), target=target, reqs=[Requirement("tcd_probe_b", ">=2")], on_finished=results.append
    )
    assert dependencies.install(wheel_dir=str(wheels), target=target) is task  # one install at a time
    deadline = 60_000
    while not results and deadline > 0:
        QgsApplication.processEvents()
        QgsApplication.instance().thread().msleep(20)
        deadline -= 20

    assert results and results[0].ok, results and results[0].output
    assert sorted(p.name for p in target.glob("tcd_probe_b*")) == ["tcd_probe_b", "tcd_probe_b-2.0.dist-info"]
    assert dependencies.missing([Requirement("tcd_probe_b", ">=2")]) == []


def test_old_pip_path_strips_the_numpy_pip_put_in(target, tmp_path, bar, monkeypatch):
    # pip before 22.2 cannot resolve against installed packages and installs a
    # requirement's whole tree into --target, numpy included; it must not stay.
    monkeypatch.setattr(dependencies, "_PIP_WITH_REPORT", (999, 0))
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "tcd_probe_c", "1.0", requires=["numpy"])
    make_wheel(wheels, "numpy", numpy.__version__)  # stands in for the numpy wheel pip would fetch
    task = dependencies.install(wait=True, wheel_dir=str(wheels), target=target, reqs=[Requirement("tcd_probe_c")])
    assert task.result.ok, task.result.output
    assert sorted(p.name for p in target.iterdir()) == ["tcd_probe_c", "tcd_probe_c-1.0.dist-info"]
    assert importlib.import_module("numpy").__file__ == numpy.__file__


def test_failed_install_gives_one_sentence_and_a_command_and_qgis_keeps_running(target, tmp_path, bar):
    wheels = tmp_path / "empty-wheels"
    wheels.mkdir()
    reqs = [Requirement("tcd-no-such-package", ">=1")]

    task = dependencies.install(wait=True, wheel_dir=str(wheels), target=target, reqs=reqs)

    result = task.result
    assert not result.ok
    assert result.message == (
        f"Installing the TCD dependencies failed: the wheel folder {wheels} has no file for tcd-no-such-package>=1; "
        "the TCD log tab has pip's output and a command to run by hand."
    )
    assert "No matching distribution found" in result.output
    assert result.command.startswith(str(dependencies.find_qgis_python()))
    assert "-m pip install" in result.command and "'tcd-no-such-package>=1'" in result.command
    QgsApplication.processEvents()
    (item,) = bar.items()
    assert item.level() == Qgis.Critical and item.text() == result.message
    assert {b.text() for b in item.findChildren(QPushButton)} >= {"Copy command", "Retry"}
    # QGIS is still alive and working after the failure.
    layer = QgsRasterLayer(str(ROOT / "resources" / "sample" / "OSBS_029.tif"), "sample")
    assert layer.isValid()


def test_a_package_needing_another_numpy_than_qgis_has_is_refused(target, tmp_path, bar):
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "tcd_probe_d", "1.0", requires=["numpy>=99"])
    task = dependencies.install(wait=True, wheel_dir=str(wheels), target=target, reqs=[Requirement("tcd_probe_d")])
    assert task.result.message == (
        f"Installing the TCD dependencies failed: the requirements cannot be met together with QGIS's numpy "
        f"{numpy.__version__}; the TCD log tab has pip's output and a command to run by hand."
    )
    assert not [p for p in target.iterdir() if p.name.lower().startswith("numpy")]


def test_no_pip_is_a_clear_sentence(target, tmp_path, bar, monkeypatch):
    fake_python = tmp_path / "python3"
    fake_python.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")  # -S: no site, so no pip
    fake_python.chmod(0o755)
    monkeypatch.setattr(dependencies, "find_qgis_python", lambda: fake_python)
    task = dependencies.install(wait=True, target=target, reqs=[Requirement("tcd-no-such-package")])
    assert task.result.message == "QGIS's Python has no pip (on Debian or Ubuntu: sudo apt install python3-pip)."


def test_missing_message_names_each_package_and_its_button_installs(bar):
    calls = []
    reqs = [Requirement("tcd-no-such-package", ">=1"), Requirement("pytest", ">=999")]
    item = dependencies.show_missing_message(dependencies_iface(bar), lambda: calls.append(1), reqs=reqs)
    found = importlib.metadata.version("pytest")
    assert item.text() == f"Python packages to install: tcd-no-such-package, pytest>=999 (found {found})."
    (button,) = [b for b in item.findChildren(QPushButton) if b.text() == "Install dependencies…"]
    button.click()
    QgsApplication.processEvents()  # the warning goes, then the install starts, after the click's slot
    assert calls == [1]
    assert dependencies.show_missing_message(dependencies_iface(bar), calls.append,
                                             reqs=[Requirement("pytest")]) is None


def dependencies_iface(bar):
    class Iface:
        def messageBar(self):
            return bar

    return Iface()


def test_about_dialog_shows_the_doctor_report(qgis_parent):
    from qgis.PyQt.QtCore import QEventLoop, QTimer

    dialog = AboutDialog(qgis_parent)
    reports = []
    loop = QEventLoop()
    dialog.reportReady.connect(lambda text, code: (reports.append((text, code)), loop.quit()))
    QTimer.singleShot(60_000, loop.quit)
    loop.exec()
    (text, code) = reports[0]
    assert code == 0, text
    for req in dependencies.requirements():
        assert req.name in text
    assert "CPUExecutionProvider" in text and "provided by QGIS/system" in text
    assert not dialog.install_button.isVisible()


@pytest.mark.parametrize("layout", ["qgis3", "qgis4"])
def test_qgis_python_is_found_in_the_macos_app_of_qgis_3_and_4(tmp_path, monkeypatch, layout):
    contents = tmp_path / "QGIS.app" / "Contents"
    qgis = contents / "MacOS" / "QGIS"
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    python = contents / "MacOS" / ("bin/python3" if layout == "qgis3" else "python")
    for path in (qgis, python, contents / "MacOS" / version):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(sys, "executable", str(qgis))
    monkeypatch.setattr(sys, "prefix", str(contents / "Frameworks"))
    monkeypatch.setattr(sys, "exec_prefix", str(contents / "Frameworks"))
    found = dependencies._candidates()
    assert python in found


def shown_in_the_log_panel(message: str) -> str:
    """The text QGIS 3.40's Log Messages panel shows for ``message``.

    QgsMessageLogViewer::logMessage (src/gui) prefixes time and level, turns each
    newline into ``<br>`` and seven non-breaking spaces, and appends it as HTML.
    """
    from qgis.PyQt.QtWidgets import QPlainTextEdit

    view = QPlainTextEdit()
    prefix = "<font color=\"#000000\">2026-01-01T00:00:00 &nbsp;&nbsp;&nbsp; INFO &nbsp;&nbsp;&nbsp;</font>"
    view.appendHtml((prefix + message).replace("\n", "<br>&nbsp; &nbsp; &nbsp; &nbsp; &nbsp; &nbsp; &nbsp;"))
    return view.toPlainText()


def test_the_package_report_keeps_its_columns_in_the_log_panel(monkeypatch):
    report = ("package      needs                    found   location\n"
              "onnxruntime  >=1.16,<2                1.32.0  /x/site-packages\n"
              "numpy        provided by QGIS/system  1.26.4  /usr/lib/python3/dist-packages")
    logged = []
    monkeypatch.setattr(dependencies, "log", lambda message, level=Qgis.Info: logged.append(message))
    dependencies.log_report("Environment check (python -m engine doctor):", report)
    lines = shown_in_the_log_panel(logged[0]).splitlines()
    table = [line for line in lines if "found" in line or "1.32.0" in line or "1.26.4" in line]
    assert len(table) == 3, lines
    assert len({line.index(word) for line, word in zip(table, ("found", "1.32.0", "1.26.4"))}) == 1, table
    assert "<=1.16" not in "".join(lines) and ">=1.16,<2" in "".join(lines)  # escaped, not read as HTML
