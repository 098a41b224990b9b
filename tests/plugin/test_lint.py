"""flake8-qgis over the plugin: its QGIS rules and its Qt6 rules, with no finding left.

The configuration is ``.flake8`` at the repository root (which rules run, which are
left out and why); ruff does the general lint.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def flake8(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flake8", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.fixture(scope="module")
def flake8_qgis():
    version = flake8("--version")
    if "flake8-qgis" not in version.stdout:
        pytest.fail("flake8 with flake8-qgis is not installed: pip install -r requirements-dev.txt\n"
                    + version.stdout + version.stderr)


def test_the_plugin_has_no_flake8_qgis_finding(flake8_qgis):
    result = flake8("tcd_qgis_plugin")
    assert result.returncode == 0 and not result.stdout, result.stdout + result.stderr


def test_the_qt6_rules_are_on_and_find_an_unscoped_enum(flake8_qgis, tmp_path):
    # The lint must be able to fail: the enum that kept the plugin from loading in QGIS 4.
    sample = tmp_path / "sample.py"
    sample.write_text("from qgis.PyQt.QtCore import Qt\n\nAREA = Qt.RightDockWidgetArea\n")
    result = flake8(str(sample))
    assert "QGS403" in result.stdout, result.stdout + result.stderr
