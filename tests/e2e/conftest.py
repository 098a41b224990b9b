"""Helpers for end-to-end tests in the real desktop QGIS under xvfb.

The ``desktop_qgis`` fixture is :func:`run_desktop_qgis`, which starts Debian's
``qgis`` binary under ``xvfb-run`` with a fresh profile (``--profiles-path``)
that holds only the plugin unzipped from its ZIP and enabled in ``QGIS3.ini``,
runs a driver script with ``--code`` and returns what the driver wrote to
``results.json``. The driver's source gets
:data:`DRIVER_PRELUDE` in front of it, which provides:

``CONFIG``            the dict passed as ``config`` (paths as strings)
``OUT``               the artifacts folder (a Path): screenshots and results go there
``results``           a dict saved as ``OUT/results.json`` by ``save()`` and ``finish()``
``shot(name, widget=None)``   save a PNG of the main window (or a widget) into OUT
``shot_screen(name)``  save a PNG of the whole screen, dialogs included
``bar_items()``       (title, text, level, duration) of each message bar item, the top one first
``guarded(step)``     wrap a step: its name is recorded, an exception is stored as
                      ``results["error"]`` and ends the session
``finish()``          save the results and quit QGIS
``start(step, delay_ms=1000)``  run ``step`` once QGIS has finished starting

Screenshots are test artifacts under ``test-artifacts/`` (ignored by git).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"

DRIVER_PRELUDE = r'''
import functools, json, traceback
from pathlib import Path

from qgis.core import QgsApplication, QgsProject
from qgis.PyQt.QtCore import QTimer
from qgis.utils import iface

CONFIG = __CONFIG__
OUT = Path(CONFIG["out"])
results = {"steps": []}


def save():
    (OUT / "results.json").write_text(json.dumps(results, indent=1, default=str))


def shot(name, widget=None):
    QgsApplication.processEvents()
    (widget or iface.mainWindow()).grab().save(str(OUT / name))


def shot_screen(name):
    """The whole X screen: dialogs are windows of their own and a main-window grab misses them."""
    QgsApplication.processEvents()
    QgsApplication.primaryScreen().grabWindow(0).save(str(OUT / name))


def bar_items():
    return [(i.title(), i.text(), int(i.level()), i.duration()) for i in iface.messageBar().items()]


def finish():
    save()
    QgsProject.instance().setDirty(False)
    QTimer.singleShot(0, lambda: QgsApplication.exit(0))


def guarded(step):
    @functools.wraps(step)
    def run():
        try:
            results["steps"].append(step.__name__)
            save()
            step()
        except Exception:
            results["error"] = traceback.format_exc()
            finish()
    return run


def start(step, delay_ms=1000):
    go = lambda: QTimer.singleShot(delay_ms, step)
    if iface.mainWindow().isVisible():
        go()
    else:
        iface.initializationCompleted.connect(go)
'''


@dataclass
class DesktopRun:
    results: dict
    output: str
    returncode: int
    artifacts: Path


def build_plugin_zip(dest: Path) -> Path:
    """Build the plugin ZIP with scripts/build_plugin_zip.py into ``dest`` (a .zip path)."""
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build_plugin_zip.py"), "--out", str(dest)],
                   check=True, capture_output=True)
    return dest


def fresh_profile(profiles_path: Path, plugin_zip: Path, plugin_enabled: bool = True) -> Path:
    """A new ``default`` profile with only the plugin from the ZIP, enabled; returns the profile folder."""
    profile = profiles_path / "profiles" / "default"
    plugins = profile / "python" / "plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(plugin_zip) as archive:
        archive.extractall(plugins)
    (profile / "QGIS").mkdir()
    (profile / "QGIS" / "QGIS3.ini").write_text(
        f"[PythonPlugins]\ntcd_qgis_plugin={str(plugin_enabled).lower()}\n\n[qgis]\ncheckVersion=false\nshowTips=false\n"
    )
    return profile


def run_desktop_qgis(work: Path, driver: str, config: dict, *, name: str, env: dict | None = None,
                     timeout_s: int = 300, plugin_enabled: bool = True, screen: str = "1600x1000") -> DesktopRun:
    """Start QGIS with a fresh profile and the plugin ZIP, run ``driver``, return its results.

    ``name`` names the artifacts folder ``test-artifacts/<name>/`` (emptied first).
    ``env`` is the whole environment of QGIS (default: PATH, HOME=work, LANG).
    ``plugin_enabled=False``: the plugin is installed but not enabled (QGIS as without it).
    ``screen``: the virtual screen's size in pixels, WIDTHxHEIGHT.
    """
    if not shutil.which("qgis") or not shutil.which("xvfb-run"):
        pytest.skip("needs the qgis desktop binary and xvfb-run")
    artifacts = ARTIFACTS / name
    if artifacts.exists():
        shutil.rmtree(artifacts)
    artifacts.mkdir(parents=True)
    plugin_zip = build_plugin_zip(work / "tcd_qgis_plugin.zip")
    fresh_profile(work / "profiles", plugin_zip, plugin_enabled)
    script = work / "driver.py"
    config = {**config, "out": str(artifacts)}
    script.write_text(DRIVER_PRELUDE.replace("__CONFIG__", repr(config)) + driver)
    if env is None:
        env = {"PATH": os.environ["PATH"], "HOME": str(work), "LANG": "C.UTF-8"}
    command = [
        "xvfb-run", "-a", "-s", f"-screen 0 {screen}x24",
        "qgis", "--profiles-path", str(work / "profiles"), "--nologo", "--noversioncheck", "--code", str(script),
    ]  # fmt: skip
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    output = out.stdout + out.stderr
    (artifacts / "qgis_output.txt").write_text(output)
    results_file = artifacts / "results.json"
    assert results_file.is_file(), f"the driver wrote no results; QGIS said:\n{output[-3000:]}"
    return DesktopRun(json.loads(results_file.read_text()), output, out.returncode, artifacts)


@pytest.fixture(scope="session")
def desktop_qgis():
    """:func:`run_desktop_qgis` (a fixture, as test modules cannot import two conftests by name)."""
    return run_desktop_qgis


@pytest.fixture
def venv_env(tmp_path) -> dict:
    """QGIS's environment with the dev venv's site-packages lent to it (onnxruntime, rasterio, scipy...)."""
    import sysconfig

    sys_packages = sysconfig.get_paths()["purelib"]
    if ".venv" not in sys_packages:
        pytest.skip("run with the dev venv's python: its packages are lent to QGIS")
    return {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8", "PYTHONPATH": sys_packages}
