"""The plugin from its ZIP in the real desktop QGIS (xvfb): dialog, run, live layers, runs panel.

The dev venv's site-packages are on PYTHONPATH so that QGIS and the worker see
onnxruntime, rasterio and scipy (the stock-QGIS test without them is
test_stock_qgis.py). The driver opens the dialog from the toolbar action, picks
a model, clicks Run, watches the run, then records the layers and the panel and
takes screenshots into ``test-artifacts/e2e_desktop_plugin/``.
"""

import os
import shutil
import sysconfig
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "resources" / "sample" / "OSBS_029.tif"

DRIVER = r'''
from qgis.core import QgsRasterLayer
from qgis.PyQt.QtWidgets import QAction
from qgis.utils import plugins

from tcd_qgis_plugin.engine.cache.status import cache_status

state = {"polls": 0}


def group_layers():
    group = QgsProject.instance().layerTreeRoot().findGroup(Path(CONFIG["cache_dir"]).name)
    return [] if group is None else [node.layer() for node in group.findLayers()]


@guarded
def open_dialog():
    iface.mainWindow().showMaximized()
    plugin = plugins["tcd_qgis_plugin"]
    toolbar_actions = [a for a in iface.mainWindow().findChildren(QAction) if a.objectName() == "TCDRunAction"]
    results["action_text"] = [a.text() for a in toolbar_actions]
    menu = [a for a in iface.rasterMenu().actions() if a.menu() and "Tree crown" in a.text()]
    results["raster_menu"] = [a.text() for m in menu for a in m.menu().actions()]
    layer = QgsRasterLayer(CONFIG["image"], "OSBS_029", "gdal")
    QgsProject.instance().addMapLayer(layer)
    iface.setActiveLayer(layer)
    iface.mapCanvas().setExtent(layer.extent())
    plugin.panel.show()
    toolbar_actions[0].trigger()  # what clicking the toolbar button does
    dialog = plugin.dialog
    dialog.select_model(CONFIG["model"])
    dialog.advanced.setCollapsed(False)
    dialog.tile_spin.setValue(96)
    dialog.overlap_spin.setValue(32)
    results["dialog"] = {
        "raster": dialog.raster_combo.currentText(),
        "model": dialog.model_combo.currentText(),
        "folder": dialog.folder_widget.filePath(),
        "run_enabled": dialog.run_button.isEnabled(),
        "message": dialog.message_label.text(),
    }
    shot("01_dialog.png", dialog)
    shot_screen("02_screen_with_dialog.png")
    dialog.run_button.click()
    results["dialog_hidden_after_run"] = not dialog.isVisible()
    QTimer.singleShot(100, poll)


@guarded
def poll():
    plugin = plugins["tcd_qgis_plugin"]
    state["polls"] += 1
    running = bool(plugin.tasks)
    if running and group_layers():
        results["layers_while_running"] = True
    if running and "panel_while_running" not in results:
        results["panel_while_running"] = plugin.panel.row_texts()
    if running and state["polls"] < CONFIG["max_polls"]:
        QTimer.singleShot(100, poll)
        return
    results["running_at_end"] = running
    results["status"] = cache_status(CONFIG["cache_dir"]).state
    results["bar"] = [item.text() for item in iface.messageBar().items()]
    results["layers"] = [
        {"name": l.name(), "valid": l.isValid(), "type": l.type(),
         "renderer": l.renderer().type() if l.renderer() else None,
         "features": l.featureCount() if hasattr(l, "featureCount") else None}
        for l in group_layers()
    ]
    results["panel"] = plugin.panel.row_texts()
    iface.mapCanvas().setExtent(group_layers()[0].extent() if group_layers() else iface.mapCanvas().extent())
    iface.mapCanvas().refreshAllLayers()
    QTimer.singleShot(3000, screenshot)


@guarded
def screenshot():
    iface.mapCanvas().waitWhileRendering()
    shot("03_result.png")
    root = QgsProject.instance().layerTreeRoot()
    for layer in group_layers():
        if layer.name() == "crowns":
            root.findLayer(layer.id()).setItemVisibilityChecked(False)
    iface.mapCanvas().refreshAllLayers()
    QTimer.singleShot(3000, screenshot_confidence)


@guarded
def screenshot_confidence():
    iface.mapCanvas().waitWhileRendering()
    shot("04_confidence_only.png")
    finish()


start(open_dialog)
'''


def test_dialog_run_layers_and_panel_in_desktop_qgis(tmp_path, desktop_qgis):
    sys_packages = sysconfig.get_paths()["purelib"]
    if ".venv" not in sys_packages:
        pytest.skip("run with the dev venv's python: its packages are lent to QGIS")
    from tests.onnx_models import passthrough_model

    image = tmp_path / "OSBS_029.tif"
    shutil.copy(SAMPLE, image)
    model = passthrough_model(tmp_path / "models" / "passthrough.onnx", band_index=1)
    cache_dir = tmp_path / "OSBS_029_tcd"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8", "PYTHONPATH": sys_packages}
    config = {"image": str(image), "model": str(model), "cache_dir": str(cache_dir), "max_polls": 1200}
    run = desktop_qgis(tmp_path, DRIVER, config, name="e2e_desktop_plugin", env=env, timeout_s=300)
    results = run.results
    assert "error" not in results, results["error"]
    assert results["action_text"] == ["Tree crown delineation…"]
    assert "Tree crown delineation…" in results["raster_menu"]
    assert results["dialog"] == {
        "raster": "OSBS_029",
        "model": "passthrough test model",
        "folder": str(cache_dir),
        "run_enabled": True,
        "message": "",
    }
    assert results["dialog_hidden_after_run"]
    assert results["panel_while_running"][0][1] == "running"
    assert not results["running_at_end"] and results["status"] == "complete"
    layers = {layer["name"]: layer for layer in results["layers"]}
    assert set(layers) == {"canopy confidence", "crowns"}
    assert all(layer["valid"] for layer in layers.values())
    assert layers["canopy confidence"]["renderer"] == "singlebandpseudocolor"
    assert layers["crowns"]["features"] > 0
    (row,) = results["panel"]
    assert row[:3] == ["OSBS_029_tcd", "complete", "49 / 49"]
    assert any("Delineated" in text for text in results["bar"])
    for name in ("01_dialog.png", "02_screen_with_dialog.png", "03_result.png"):
        assert (run.artifacts / name).stat().st_size > 10_000, name
    assert os.path.isdir(cache_dir / "semantic")
