"""Only ``tcd_qgis_plugin`` enters QGIS's module namespace, in QGIS and in the worker process.

QGIS runs every plugin in one Python interpreter with the plugins folder on
``sys.path``. Other plugins' folders (or stray modules) named ``engine``, ``core``,
``gui``, ``paths``… must neither break us nor be broken by us.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tcd_qgis_plugin import dependencies
from tcd_qgis_plugin.core.launch import engine_command
from tcd_qgis_plugin.engine.settings import Job
from tcd_qgis_plugin.engine.worker import job_to_json
from tests.worker_process import drive_worker

ROOT = Path(__file__).resolve().parents[2]
# Top-level names the plugin once leaked, plus names of the engine's own modules.
DECOYS = ("engine", "core", "gui", "paths", "plugin", "dependencies", "errors", "settings", "worker", "cache",
          "models", "tiling", "run", "postprocess")


def plant_decoys(folder: Path) -> None:
    """Packages that fail loudly if anything imports them by their bare name."""
    for name in DECOYS:
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(f"raise ImportError('decoy {name} was imported')\n")


LOAD_SCRIPT = r"""
import json, sys
plugins = sys.argv[1]
sys.path.insert(0, plugins)  # as QGIS does with its plugins folder
from unittest import mock
from qgis.core import QgsApplication
from qgis.gui import QgsMapCanvas, QgsMessageBar
from qgis.PyQt.QtWidgets import QMainWindow
app = QgsApplication([], True, sys.argv[2])
app.initQgis()
window = QMainWindow()
iface = mock.MagicMock()
iface.mainWindow.return_value = window
iface.mapCanvas.return_value = QgsMapCanvas(window)
iface.messageBar.return_value = QgsMessageBar(window)
before = {name.split(".")[0] for name in sys.modules}
import tcd_qgis_plugin
plugin = tcd_qgis_plugin.classFactory(iface)
plugin.initGui()
plugin.show_dialog()
plugin.unload()
new = {}
for name, module in list(sys.modules.items()):
    top = name.split(".")[0]
    if top not in before and "." not in name:
        new[name] = getattr(module, "__file__", None)
print("MODULES " + json.dumps(new))
"""


def test_loading_the_plugin_adds_no_top_level_module_but_its_own(tmp_path):
    plugins = tmp_path / "plugins"
    plant_decoys(plugins)
    (plugins / "tcd_qgis_plugin").symlink_to(ROOT / "tcd_qgis_plugin", target_is_directory=True)
    result = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(plugins), str(tmp_path / "profile")],
                            capture_output=True, text=True, cwd=plugins, timeout=180)
    lines = [line for line in result.stdout.splitlines() if line.startswith("MODULES ")]
    assert lines, result.stdout + result.stderr
    new = json.loads(lines[0][len("MODULES "):])
    assert "tcd_qgis_plugin" in new
    plugin_dir = str((ROOT / "tcd_qgis_plugin").resolve())
    for name, origin in new.items():
        if name == "tcd_qgis_plugin" or name in sys.stdlib_module_names or origin is None:
            continue
        origin = str(Path(origin).resolve())
        # Third-party packages (site-packages or the plugin's own dependency folder) may load;
        # nothing of ours and nothing from the plugins folder may appear under a bare name.
        assert not origin.startswith(plugin_dir), f"{name} leaked from the plugin ({origin})"
        assert not origin.startswith(str(plugins.resolve())), f"{name} was imported from the plugins folder"
        assert name not in DECOYS, name


@pytest.mark.parametrize("with_decoys_on_pythonpath", [False, True])
def test_the_worker_imports_only_the_plugin_and_ignores_decoys(tmp_path, raster_path, model_path,
                                                               with_decoys_on_pythonpath):
    decoys = tmp_path / "decoys"
    plant_decoys(decoys)
    env = dependencies.worker_environment(tmp_path / "deps")
    if with_decoys_on_pythonpath:
        env["PYTHONPATH"] = str(decoys) + ":" + env.get("PYTHONPATH", "")
    job = Job(image=raster_path, cache_dir=tmp_path / "cache", model=model_path)
    events, stderr = drive_worker(job_to_json(job), cwd=decoys, env=env)
    assert events[-1]["event"] == "finished", (events, stderr)
    assert events[-1]["state"] == "complete"


def test_the_engine_command_line_runs_through_the_plugin(tmp_path):
    decoys = tmp_path / "decoys"
    plant_decoys(decoys)
    proc = subprocess.run(engine_command(sys.executable, "", "status", str(tmp_path)), capture_output=True,
                          text=True, cwd=decoys, env=dependencies.worker_environment(tmp_path / "deps"), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "no cache here yet" in proc.stdout
