"""ruff over the whole repository (engine, plugin, tests, benchmarks, training), with no finding left.

The rules are in ``pyproject.toml``; flake8-qgis adds the QGIS and Qt6 rules for the
plugin (tests/plugin/test_lint.py).
"""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ruff(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert exe, "ruff is not installed: pip install -r requirements-dev.txt"
    return subprocess.run([exe, "check", "--no-cache", "--output-format", "concise", *args], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=300, check=False)


def test_the_repository_has_no_ruff_finding():
    result = ruff(".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_reads_the_project_rules_and_can_fail():
    # Checked as if it were a file of the repository (so pyproject.toml's rules apply), never written there.
    sample = "import os\nfrom typing import Mapping\n\nX: Mapping = {}\n" + "Y = 1  # " + "x" * 120 + "\n"
    result = ruff("--stdin-filename", "benchmarks/_lint_sample.py", "-", stdin=sample)
    assert result.returncode == 1
    for code in ("F401", "UP035", "E501"):  # project settings: pyupgrade rules on, lines of 120
        assert code in result.stdout, result.stdout
