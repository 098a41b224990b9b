"""The plugin from its ZIP in the real desktop QGIS (xvfb), walked through as a new user would.

The dev venv's site-packages are on PYTHONPATH so that QGIS and the worker see
onnxruntime, rasterio and scipy (the stock-QGIS test without them is
test_stock_qgis.py). In one QGIS session the driver:

1. opens the dialog from the toolbar with a one-band raster: Run stays disabled
   and the dialog says why (screenshot);
2. picks the orthophoto and the bundled default model, Shapefile crowns, and
   clicks Run (the dialog's screenshot is the README's picture);
3. watches the run: the crowns layer's fields are the file's from the first crown
   on, the result stays on top of the message bar (checked again seconds later),
   crowns over the orthophoto and the runs panel are screenshots (README pictures),
   and the attribute table shows the columns (screenshot);
4. runs again into the same folder with another tile size: the dialog asks what to
   do with the run that is there; Start afresh, then Yes, deletes it and predicts
   anew (screenshots of both questions);
5. starts a slow run and cancels it from QGIS's task manager: the bar says
   "cancelled", in blue, and keeps saying it (screenshot).

Screenshots go to ``test-artifacts/e2e_desktop_plugin/``; with TCD_UPDATE_PICTURES=1
the README's pictures in ``docs/images/`` are refreshed from them.
"""

import os
import shutil
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "resources" / "sample" / "OSBS_029.tif"
PICTURES = {"02_dialog.png": "dialog.png", "04_canvas.png": "crowns.png", "05_runs_panel.png": "runs_panel.png"}
PICTURE_WIDTH_PX = 640

DRIVER = r'''
from osgeo import gdal
from qgis.core import Qgis, QgsApplication, QgsRasterLayer, QgsVectorLayer
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import QAction, QApplication
from qgis.utils import plugins

from tcd_qgis_plugin.engine.cache.status import cache_status
from tcd_qgis_plugin.engine.settings import Job

state = {"polls": 0}


def plugin():
    return plugins["tcd_qgis_plugin"]


def group_layers(cache_dir):
    group = QgsProject.instance().layerTreeRoot().findGroup(Path(cache_dir).name)
    return [] if group is None else [node.layer() for node in group.findLayers()]


def crowns_fields(cache_dir):
    layers = [l for l in group_layers(cache_dir) if l.name() == "crowns"]
    return [f.name() for f in layers[0].fields()] if layers and layers[0].featureCount() else None


@guarded
def open_dialog():
    iface.mainWindow().showMaximized()
    toolbar_actions = [a for a in iface.mainWindow().findChildren(QAction) if a.objectName() == "TCDRunAction"]
    results["action_text"] = [a.text() for a in toolbar_actions]
    menu = [a for a in iface.rasterMenu().actions() if a.menu() and "Tree crown" in a.text()]
    results["raster_menu"] = [a.text() for m in menu for a in m.menu().actions()]
    gray = QgsRasterLayer(CONFIG["gray"], "gray", "gdal")
    ortho = QgsRasterLayer(CONFIG["image"], "OSBS_029", "gdal")
    QgsProject.instance().addMapLayers([ortho, gray])
    iface.setActiveLayer(gray)
    iface.mapCanvas().setExtent(ortho.extent())
    plugin().panel.show()
    toolbar_actions[0].trigger()  # what clicking the toolbar button does
    dialog = plugin().dialog
    dialog.model_combo.setCurrentIndex(0)  # the bundled default model
    results["gray"] = {"run_enabled": dialog.run_button.isEnabled(), "message": dialog.message_label.text()}
    shot("01_dialog_refuses_one_band.png", dialog)
    dialog.raster_combo.setLayer(ortho)
    QgsProject.instance().removeMapLayer(gray.id())  # the user gives up on it
    dialog.advanced.setCollapsed(False)
    dialog.tile_spin.setValue(256)
    dialog.overlap_spin.setValue(32)
    results["dialog"] = {
        "raster": dialog.raster_combo.currentText(),
        "model": dialog.model_combo.currentText(),
        "folder": dialog.folder_widget.filePath(),
        "run_enabled": dialog.run_button.isEnabled(),
        "message": dialog.message_label.text(),
        "gsd_default": dialog.gsd_spin.text(),
    }
    QTimer.singleShot(300, click_run)


@guarded
def click_run():
    dialog = plugin().dialog
    shot("02_dialog.png", dialog)
    shot_screen("02_screen_with_dialog.png")
    dialog.run_button.click()
    results["dialog_hidden_after_run"] = not dialog.isVisible()
    results["fields_seen"] = []
    QTimer.singleShot(50, poll)


@guarded
def poll():
    state["polls"] += 1
    running = bool(plugin().tasks)
    fields = crowns_fields(CONFIG["cache_dir"])
    if fields is not None and fields not in results["fields_seen"]:
        results["fields_seen"].append(fields)
    if running and "panel_while_running" not in results:
        results["panel_while_running"] = plugin().panel.row_texts()
    if running and state["polls"] < CONFIG["max_polls"]:
        QTimer.singleShot(50, poll)
        return
    results["running_at_end"] = running
    results["status"] = cache_status(CONFIG["cache_dir"]).state
    results["layers"] = [
        {"name": l.name(), "valid": l.isValid(), "type": l.type(),
         "renderer": l.renderer().type() if l.renderer() else None,
         "features": l.featureCount() if hasattr(l, "featureCount") else None,
         "fields": [f.name() for f in l.fields()] if hasattr(l, "fields") else None}
        for l in group_layers(CONFIG["cache_dir"])
    ]
    crowns = QgsVectorLayer(str(Path(CONFIG["cache_dir"]) / "crowns.shp"), "file", "ogr")
    results["file_fields"] = [f.name() for f in crowns.fields()]
    results["panel"] = plugin().panel.row_texts()
    QTimer.singleShot(200, lambda: results.update(bar_after_run=bar_items()))
    QTimer.singleShot(7000, screenshot_result)  # longer than QGIS's default 5 s message timeout


@guarded
def screenshot_result():
    results["bar_7s_after_run"] = bar_items()
    iface.mapCanvas().setExtent(group_layers(CONFIG["cache_dir"])[0].extent())
    iface.mapCanvas().refreshAllLayers()
    iface.mapCanvas().waitWhileRendering()
    QTimer.singleShot(1500, screenshot_crowns)


@guarded
def screenshot_crowns():
    iface.mapCanvas().waitWhileRendering()
    shot("04_crowns.png")
    shot("04_canvas.png", iface.mapCanvas())
    iface.mainWindow().resizeDocks([plugin().panel], [560], Qt.Orientation.Horizontal)
    QgsApplication.processEvents()
    shot("05_runs_panel.png", plugin().panel)
    crowns = [l for l in group_layers(CONFIG["cache_dir"]) if l.name() == "crowns"][0]
    state["table"] = iface.showAttributeTable(crowns)
    QTimer.singleShot(1500, screenshot_table)


@guarded
def screenshot_table():
    shot_screen("06_attribute_table.png")
    if state.get("table") is not None:
        state["table"].close()
    crowns = [l for l in group_layers(CONFIG["cache_dir"]) if l.name() == "crowns"][0]
    results["interior_rings"] = sum(max(0, len(polygon) - 1) for f in crowns.getFeatures()
                                    for polygon in f.geometry().asMultiPolygon() or [f.geometry().asPolygon()])
    iface.messageBar().clearWidgets()
    # 4: the same folder with other settings: the dialog asks what to do with the run that is there.
    dialog = plugin().show_dialog()
    dialog.tile_spin.setValue(512)
    QTimer.singleShot(1500, lambda: answer_question("afresh", "08_question.png"))
    dialog.run_button.click()  # returns once the questions are answered
    results["tasks_after_afresh"] = [str(p) for p in plugin().tasks]
    QTimer.singleShot(100, wait_for_afresh)


def answer_question(button_name, screenshot):
    box = QApplication.activeModalWidget()
    if box is None:
        results["error"] = "no question was shown"
        return
    shot_screen(screenshot)
    results.setdefault("questions", []).append(
        {"text": box.text(), "buttons": sorted(b.text().replace("&", "") for b in box.buttons())})
    (button,) = [b for b in box.buttons() if b.objectName() == button_name or b.text().replace("&", "") == button_name]
    if button_name == "afresh":
        QTimer.singleShot(1500, lambda: answer_question("Yes", "09_confirm.png"))
    button.click()


@guarded
def wait_for_afresh():
    if plugin().tasks:
        QTimer.singleShot(100, wait_for_afresh)
        return
    status = cache_status(CONFIG["cache_dir"])
    results["afresh"] = {"state": status.state, "total": status.total}
    iface.messageBar().clearWidgets()
    job = Job(image=CONFIG["image"], cache_dir=CONFIG["slow_cache_dir"], model=CONFIG["slow_model"], threads=1)
    state["slow"] = plugin().start_run(job)
    state["slow_description"] = state["slow"].description()
    QTimer.singleShot(100, cancel_when_started)


@guarded
def cancel_when_started():
    task = plugin().tasks.get(Path(CONFIG["slow_cache_dir"]).resolve())
    done = cache_status(CONFIG["slow_cache_dir"]).done if Path(CONFIG["slow_cache_dir"], "tiles.jsonl").exists() else 0
    if task is not None and done < 2:
        QTimer.singleShot(100, cancel_when_started)
        return
    # What the cancel button of QGIS's task manager does.
    for queued in QgsApplication.taskManager().activeTasks():
        if queued.description() == state["slow_description"]:
            queued.cancel()
    QTimer.singleShot(100, wait_for_cancel)


@guarded
def wait_for_cancel():
    if plugin().tasks:
        QTimer.singleShot(100, wait_for_cancel)
        return
    QTimer.singleShot(300, lambda: results.update(bar_after_cancel=bar_items()))
    QTimer.singleShot(7000, screenshot_cancelled)


@guarded
def screenshot_cancelled():
    results["bar_7s_after_cancel"] = bar_items()
    results["slow_status"] = cache_status(CONFIG["slow_cache_dir"]).state
    shot("07_cancelled.png")
    finish()


start(open_dialog)
'''


def test_a_new_users_path_through_the_dialog_a_run_and_a_cancel(tmp_path, desktop_qgis, venv_env):
    from tests.onnx_models import slow_model
    from tests.rasters import write_raster

    image = tmp_path / "OSBS_029.tif"
    shutil.copy(SAMPLE, image)
    import rasterio

    with rasterio.open(image) as src:
        gray = write_raster(tmp_path / "gray.tif", src.read(1), crs=src.crs, transform=src.transform)
    cache_dir = tmp_path / "OSBS_029_tcd"
    config = {"image": str(image), "gray": str(gray), "cache_dir": str(cache_dir), "max_polls": 2400,
              # Tens of ms a tile: the run must outlast its first commit (commits are grouped up to
              # 0.5 s) and the cancel; with the default 8 small products the 64 tiles took 0.4 s.
              "slow_model": str(slow_model(tmp_path / "models" / "slow.onnx", size=384, matmuls=16)),
              "slow_cache_dir": str(tmp_path / "slow_tcd")}
    run = desktop_qgis(tmp_path, DRIVER, config, name="e2e_desktop_plugin", env=venv_env, timeout_s=400)
    results = run.results
    assert "error" not in results, results["error"]
    assert results["action_text"] == ["Tree crown delineation…"]
    assert "Tree crown delineation…" in results["raster_menu"]

    # 2: a raster the engine would refuse is explained in the dialog and cannot be run.
    assert results["gray"] == {"run_enabled": False,
                               "message": "The model needs bands 1, 2, 3 but gray.tif has 1 band."}
    assert results["dialog"]["raster"] == "OSBS_029" and results["dialog"]["run_enabled"]
    assert results["dialog"]["model"].endswith("(bundled default)")
    assert results["dialog"]["folder"] == str(cache_dir)
    assert results["dialog"]["gsd_default"].startswith("Model default (")
    assert results["dialog_hidden_after_run"]

    # 1: the crowns layer has the file's fields from its first crown on.
    assert not results["running_at_end"] and results["status"] == "complete"
    layers = {layer["name"]: layer for layer in results["layers"]}
    assert set(layers) == {"canopy confidence", "crowns"}
    assert all(layer["valid"] for layer in layers.values())
    assert layers["canopy confidence"]["renderer"] == "singlebandpseudocolor"
    assert layers["crowns"]["features"] > 0
    assert results["file_fields"][:5] == ["id", "score", "class", "class_idx", "tile_id"]
    assert layers["crowns"]["fields"] == results["file_fields"]
    assert results["fields_seen"] == [results["file_fields"]]
    (row,) = [r for r in results["panel"] if r[0] == "OSBS_029_tcd"]
    assert row[1] == "complete" and row[4]

    # 7: the result is on top of the bar and still there after QGIS's 5 s timeout.
    title, text, level, _ = results["bar_after_run"][0]
    assert (title, level) == ("Tree crown delineation", 3) and text.startswith("Delineated ")
    assert results["bar_7s_after_run"][0] == results["bar_after_run"][0]
    # A cancel from QGIS's task manager reads as cancelled (information, not failure) and stays.
    title, text, level, _ = results["bar_after_cancel"][0]
    assert (title, level) == ("Tree crown delineation", 0) and "was cancelled after" in text
    assert results["bar_7s_after_cancel"][0] == results["bar_after_cancel"][0]
    assert not [item for item in results["bar_after_cancel"] if "failed" in item[0].lower()]
    assert results["slow_status"] == "partial"

    # 4: another run into a folder that holds one: the user is asked, answers Start afresh, then Yes.
    question, confirm = results["questions"]
    assert "OSBS_029_tcd already holds a run that this one cannot continue: This cache was made with other " \
           "settings (tile size differs)." in question["text"]
    assert question["buttons"] == ["Cancel", "Choose another folder…", "Resume it as it was", "Start afresh…"]
    assert "Delete the run in" in confirm["text"] and confirm["buttons"] == ["No", "Yes"]
    assert results["tasks_after_afresh"] == [str(cache_dir)]
    assert results["afresh"] == {"state": "complete", "total": 1}  # one 512 px tile now, not 4 of 256 px
    # 8: crowns carry no pin-holes.
    assert results["interior_rings"] == 0

    for name in ("01_dialog_refuses_one_band.png", "02_dialog.png", "04_crowns.png", "05_runs_panel.png",
                 "06_attribute_table.png", "07_cancelled.png", "08_question.png", "09_confirm.png"):
        assert (run.artifacts / name).stat().st_size > 10_000, name
    assert os.path.isdir(cache_dir / "semantic")
    if os.environ.get("TCD_UPDATE_PICTURES") == "1":
        update_pictures(run.artifacts)


def update_pictures(artifacts: Path) -> None:
    """Copy the README's pictures from this run's screenshots: at most PICTURE_WIDTH_PX wide, 256 colours."""
    from qgis.PyQt.QtCore import Qt
    from qgis.PyQt.QtGui import QImage

    folder = ROOT / "docs" / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for shot, picture in PICTURES.items():
        image = QImage(str(artifacts / shot))
        if image.width() > PICTURE_WIDTH_PX:
            image = image.scaledToWidth(PICTURE_WIDTH_PX, Qt.TransformationMode.SmoothTransformation)
        image = image.convertToFormat(QImage.Format.Format_Indexed8)
        assert image.save(str(folder / picture)), picture
