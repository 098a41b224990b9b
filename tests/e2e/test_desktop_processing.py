"""``tcd:delineatecrowns`` in the Processing toolbox of the real desktop QGIS (xvfb).

The plugin comes from its ZIP into a fresh profile. The driver opens the
algorithm's Processing dialog as the toolbox does, takes screenshots, clicks Run
and waits until Processing has loaded the result layers; then it records them
and the dialog's log. The dev venv's site-packages are on PYTHONPATH so the
worker has onnxruntime, rasterio and scipy. Screenshots go to
``test-artifacts/e2e_desktop_processing/``.
"""

import shutil
import sysconfig
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "resources" / "sample" / "OSBS_029.tif"

DRIVER = r'''
import processing
from qgis.core import QgsRasterLayer
from qgis.PyQt.QtWidgets import QTextEdit

state = {"polls": 0}


def result_layers():
    return [l for l in QgsProject.instance().mapLayers().values() if "OSBS_029_tcd" in l.name()]


@guarded
def open_dialog():
    iface.mainWindow().showMaximized()
    layer = QgsRasterLayer(CONFIG["image"], "OSBS_029", "gdal")
    QgsProject.instance().addMapLayer(layer)
    iface.mapCanvas().setExtent(layer.extent())
    results["provider"] = QgsApplication.processingRegistry().providerById("tcd").name()
    dialog = processing.createAlgorithmDialog("tcd:delineatecrowns", {"INPUT": layer})
    state["dialog"] = dialog
    dialog.resize(900, 760)
    dialog.show()
    QTimer.singleShot(1000, screenshot_dialog)


@guarded
def screenshot_dialog():
    dialog = state["dialog"]
    shot("01_processing_dialog.png", dialog)
    shot_screen("02_screen_with_dialog.png")
    dialog.runButton().click()
    QTimer.singleShot(200, poll)


@guarded
def poll():
    state["polls"] += 1
    if len(result_layers()) < 2 and state["polls"] < CONFIG["max_polls"]:
        QTimer.singleShot(200, poll)
        return
    dialog = state["dialog"]
    QgsApplication.processEvents()
    results["log"] = "\n".join(w.toPlainText() for w in dialog.findChildren(QTextEdit) if w.isVisible())
    results["layers"] = [
        {"name": l.name(), "valid": l.isValid(), "source": l.source(),
         "renderer": l.renderer().type() if l.renderer() else None,
         "features": l.featureCount() if hasattr(l, "featureCount") else None}
        for l in result_layers()
    ]
    shot("03_processing_dialog_log.png", dialog)
    dialog.close()
    iface.mapCanvas().refreshAllLayers()
    QTimer.singleShot(3000, screenshot_map)


@guarded
def screenshot_map():
    iface.mapCanvas().waitWhileRendering()
    shot("04_result_layers.png")
    # The run is in the TCD runs panel: select it and read its summary.
    from qgis.utils import plugins

    panel = plugins["tcd_qgis_plugin"].panel
    panel.show()
    panel.select(Path(CONFIG["image"]).with_name("OSBS_029_tcd"))
    results["panel"] = panel.row_texts()
    results["summary"] = panel.summary.figures()
    results["area_histogram"] = panel.summary.area_histogram.counts
    QTimer.singleShot(500, screenshot_summary)


@guarded
def screenshot_summary():
    from qgis.utils import plugins

    shot("05_runs_panel_summary.png", plugins["tcd_qgis_plugin"].panel)
    shot("06_main_window_with_summary.png")
    finish()


start(open_dialog)
'''


def test_processing_dialog_runs_and_loads_styled_layers(tmp_path, desktop_qgis):
    sys_packages = sysconfig.get_paths()["purelib"]
    if ".venv" not in sys_packages:
        pytest.skip("run with the dev venv's python: its packages are lent to QGIS")
    image = tmp_path / "OSBS_029.tif"
    shutil.copy(SAMPLE, image)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8", "PYTHONPATH": sys_packages}
    config = {"image": str(image), "max_polls": 900}
    run = desktop_qgis(tmp_path, DRIVER, config, name="e2e_desktop_processing", env=env, timeout_s=300)
    results = run.results
    assert "error" not in results, results["error"]
    assert results["provider"] == "Tree crown delineation"
    cache_dir = tmp_path / "OSBS_029_tcd"
    assert f"into {cache_dir}" in results["log"]
    layers = {layer["name"]: layer for layer in results["layers"]}
    assert set(layers) == {"crowns (OSBS_029_tcd)", "canopy confidence (OSBS_029_tcd)"}
    crowns, confidence = layers["crowns (OSBS_029_tcd)"], layers["canopy confidence (OSBS_029_tcd)"]
    assert crowns["valid"] and crowns["features"] > 0 and crowns["renderer"] == "RuleRenderer"
    assert confidence["valid"] and confidence["renderer"] == "singlebandpseudocolor"
    assert confidence["source"] == f"vrt://{cache_dir / 'confidence.vrt'}"
    assert [row[:3] for row in results["panel"]] == [["OSBS_029_tcd", "complete", "1 / 1"]]
    summary = dict(results["summary"])
    assert int(summary["Trees"]) == crowns["features"]
    assert summary["Area processed"] == "0.16 ha"  # 400 x 400 px at 0.1 m
    assert sum(results["area_histogram"]) == crowns["features"]
    for name in ("01_processing_dialog.png", "03_processing_dialog_log.png", "04_result_layers.png",
                 "05_runs_panel_summary.png"):
        assert (run.artifacts / name).stat().st_size > 10_000, name
