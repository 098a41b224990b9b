"""``qgis_process`` from a shell: the plugin's Processing algorithm in a fresh profile.

Debian's ``/usr/bin/qgis_process`` is a wrapper that adds ``--noversioncheck``
(from ``/etc/default/qgis``), which ``qgis_process`` refuses; the real program is
``qgis_process.bin``, as the README says. The plugin is unzipped from its ZIP
into a new profile (``QGIS_CUSTOM_CONFIG_PATH``), enabled with ``qgis_process
plugins enable tcd_qgis_plugin``, then run on a real raster with a real model.
The dev venv's site-packages are on PYTHONPATH so the worker has onnxruntime,
rasterio and scipy.
"""

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import SQUARES
from tests.onnx_models import canopy_centres_model
from tests.rasters import crowns_image, read_crowns, write_raster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
QGIS_PROCESS = shutil.which("qgis_process.bin")


@pytest.fixture
def shell(tmp_path):
    """A function running ``qgis_process.bin ARGS`` in ``tmp_path`` with a fresh profile holding the plugin."""
    if QGIS_PROCESS is None:
        pytest.skip("needs Debian's qgis_process.bin")
    packages = sysconfig.get_paths()["purelib"]
    if ".venv" not in packages:
        pytest.skip("run with the dev venv's python: its packages are lent to the worker")
    plugin_zip = tmp_path / "tcd_qgis_plugin.zip"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build_plugin_zip.py"), "--out", str(plugin_zip)],
                   check=True, capture_output=True)
    config = tmp_path / "config"
    plugins = config / "profiles" / "default" / "python" / "plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(plugin_zip) as archive:
        archive.extractall(plugins)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8", "QT_QPA_PLATFORM": "offscreen",
           "QGIS_CUSTOM_CONFIG_PATH": str(config), "PYTHONPATH": packages}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([QGIS_PROCESS, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300, check=False)

    return run


def test_enable_list_run_resume_and_refuse(shell, tmp_path):
    write_raster(tmp_path / "ortho.tif", crowns_image(320, 320, SQUARES), crs="EPSG:32633")
    canopy_centres_model(tmp_path / "crowns.onnx")

    enabled = shell("plugins", "enable", "tcd_qgis_plugin")
    assert enabled.returncode == 0, enabled.stderr
    assert "* tcd_qgis_plugin" in enabled.stdout
    listed = shell("list")
    assert "tcd:delineatecrowns" in listed.stdout
    helped = shell("help", "tcd:delineatecrowns")
    assert "INPUT" in helped.stdout and "OUTPUT_FOLDER" in helped.stdout

    # Relative paths, as typed in a shell.
    first = shell("--json", "run", "tcd:delineatecrowns", "--", "INPUT=ortho.tif", "OUTPUT_FOLDER=ortho_tcd",
                  "MODEL=crowns.onnx")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    report = json.loads(first.stdout)
    folder = tmp_path / "ortho_tcd"
    assert report["results"] == {"OUTPUT_FOLDER": str(folder), "CROWNS": str(folder / "crowns.shp"),
                                 "CONFIDENCE": str(folder / "confidence.vrt")}
    assert report["log"]["info"] == [f"Predicting 49 tiles into {folder}.",
                                     "Delineated 40 crowns in 49 tiles of ortho.tif."]
    assert len(read_crowns(folder)) == 40
    manifest = (folder / "tiles.jsonl").read_text()

    again = shell("run", "tcd:delineatecrowns", "--", "INPUT=ortho.tif", "OUTPUT_FOLDER=ortho_tcd",
                  "MODEL=crowns.onnx")
    assert again.returncode == 0, again.stderr
    assert f"All 49 tiles are already in {folder}." in again.stdout
    assert (folder / "tiles.jsonl").read_text() == manifest

    for parameter, sentence in [("TILE_SIZE=8", "Incorrect parameter value for TILE_SIZE"),
                                ("MODEL=nothere.onnx", f"The model file {tmp_path / 'nothere.onnx'} does not exist.")]:
        refused = shell("run", "tcd:delineatecrowns", "--", "INPUT=ortho.tif", parameter)
        assert refused.returncode != 0
        assert sentence in refused.stdout + refused.stderr
        assert "Traceback" not in refused.stdout + refused.stderr
    assert (folder / "tiles.jsonl").read_text() == manifest  # refused before anything ran
