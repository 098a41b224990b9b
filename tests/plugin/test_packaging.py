"""The plugin ZIP: what it carries, its metadata, and that it loads without the heavy packages."""

import configparser
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tcd_qgis_plugin import engine

ROOT = Path(__file__).resolve().parents[2]
REQUIRED_METADATA = ("name", "qgisMinimumVersion", "description", "about", "version", "author", "email",
                     "homepage", "repository", "tracker", "icon", "tags", "experimental", "supportsQt6")


@pytest.fixture(scope="module")
def plugin_zip(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist") / "tcd_qgis_plugin.zip"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build_plugin_zip.py"), "--out", str(out)], check=True,
                   capture_output=True)
    return out


def test_the_zip_carries_the_plugin_the_engine_and_resources_only(plugin_zip):
    names = zipfile.ZipFile(plugin_zip).namelist()
    assert all(n.startswith("tcd_qgis_plugin/") for n in names)
    inside = {n[len("tcd_qgis_plugin/"):] for n in names}
    for needed in ("__init__.py", "plugin.py", "dependencies.py", "core/task.py", "gui/dialog.py",
                   "gui/runs_panel.py", "engine/__init__.py", "engine/worker.py", "engine/run/predict.py",
                   "engine/cache/status.py", "resources/styles/confidence.qml", "resources/styles/crowns.qml",
                   "resources/icons/tcd.svg", "metadata.txt", "requirements.txt",
                   "README.md", "docs/USER_GUIDE.md", "docs/DEPENDENCIES.md"):  # the help
        assert needed in inside, needed
    # Every picture and document the user's guide links to travels with it, each picture small.
    guide = (ROOT / "docs" / "USER_GUIDE.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#:]+)\)", guide)
    assert any(link.startswith("images/") for link in links)
    for link in links:
        assert f"docs/{link}" in inside, link
        if link.startswith("images/"):
            assert (ROOT / "docs" / link).stat().st_size < 300_000, link
    engine_files = {p.relative_to(ROOT).as_posix() for p in (ROOT / "engine").rglob("*.py")
                    if "__pycache__" not in p.parts}
    assert engine_files <= inside
    plugin_dir = ROOT / "tcd_qgis_plugin"
    plugin_files = {p.relative_to(plugin_dir).as_posix() for p in plugin_dir.rglob("*.py")
                    if "__pycache__" not in p.parts}
    assert plugin_files <= inside, "a plugin module is missing from pb_tool.cfg"
    # Fine-tuning runs the default model's training code: only the modules it imports.
    finetune_modules = {f"training/{m}.py" for m in ("net", "data", "augment", "train_default_model",
                                                     "architectures", "finetune")}
    assert finetune_modules <= inside
    for name in inside:
        top = name.split("/")[0]
        assert top not in ("tests", "benchmarks", "scripts", ".venv"), name
        assert top != "training" or name in finetune_modules, name
        assert "__pycache__" not in name and not name.endswith(".pyc"), name
        assert not name.startswith("resources/sample"), name
    models = [n for n in inside if n.startswith("resources/models/")]
    # models, their weights for fine-tuning, and the model card
    assert models == [n for n in models if n.endswith((".onnx", ".finetune.pt", "README.md"))]
    if (ROOT / "resources" / "models" / "tcd_default.onnx").is_file():
        assert "resources/models/tcd_default.onnx" in models


def test_metadata_is_complete(plugin_zip):
    text = zipfile.ZipFile(plugin_zip).read("tcd_qgis_plugin/metadata.txt").decode("utf-8")
    cfg = configparser.ConfigParser()
    cfg.read_string(text)
    general = cfg["general"]
    for key in REQUIRED_METADATA:
        assert general.get(key, "").strip(), key
    assert general["qgisMinimumVersion"] == "3.22"
    assert general["version"] == engine.__version__
    assert general["experimental"] in ("True", "False") and general["supportsQt6"] in ("True", "False")
    for key in ("homepage", "repository", "tracker"):
        assert general[key].startswith("https://"), key
    assert f"tcd_qgis_plugin/{general['icon']}" in zipfile.ZipFile(plugin_zip).namelist()


LOAD_SCRIPT = r"""
import importlib.abc, sys
HEAVY = ("onnxruntime", "rasterio", "scipy", "shapely", "jsonlines")

class Refuse(importlib.abc.MetaPathFinder):
    # Exactly what Python raises for a package that is not installed: QGIS (3.40's qgis.core tries
    # shapely) catches ModuleNotFoundError only.
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in HEAVY:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, Refuse())
for name in list(sys.modules):
    if name.split(".")[0] in HEAVY:
        del sys.modules[name]
sys.path.insert(0, sys.argv[1])
from qgis.core import QgsApplication
app = QgsApplication([], False, sys.argv[2])
app.initQgis()
import tcd_qgis_plugin
plugin = tcd_qgis_plugin.classFactory(None)
from tcd_qgis_plugin.gui import dialog, runs_panel
from tcd_qgis_plugin.core import task
import tcd_qgis_plugin.engine
assert tcd_qgis_plugin.engine.__file__.startswith(sys.argv[1]), tcd_qgis_plugin.engine.__file__
assert "engine" not in sys.modules
from tcd_qgis_plugin.engine.models.spec import default_model_path, describe_model
describe_model(default_model_path())  # the dialog lists models before anything is installed
loaded = sorted(n for n in sys.modules if n.split(".")[0] in HEAVY)
print("LOADED", loaded)
"""


def test_the_plugin_loads_without_onnxruntime_rasterio_or_scipy(plugin_zip, tmp_path):
    plugins = tmp_path / "plugins"
    zipfile.ZipFile(plugin_zip).extractall(plugins)
    result = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(plugins), str(tmp_path / "profile")],
        capture_output=True, text=True, env={"QT_QPA_PLATFORM": "offscreen", "PATH": "/usr/bin:/bin",
                                             "HOME": str(tmp_path)},
        cwd=tmp_path, timeout=120, check=False,
    )
    assert "LOADED []" in result.stdout, result.stdout + result.stderr
