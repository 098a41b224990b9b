"""The user's guide's pictures, taken from the real desktop QGIS under xvfb (1600 x 1000).

Two sessions with a fresh profile and the plugin from its ZIP: a stock QGIS, where
the plugin names the packages to install in the message bar; then QGIS with the
dev venv's packages, where the bundled model delineates OSBS_029 through the
dialog and the layers, their legend and the runs panel are shown. The test checks
what each picture must show; with TCD_UPDATE_PICTURES=1 it copies them, small, to
``docs/images/guide_*.png`` (what docs/USER_GUIDE.md shows).
"""

import os
import shutil
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "resources" / "sample" / "OSBS_029.tif"
PICTURE_WIDTH_PX = 800
PICTURES = {"install_bar.png": "guide_install.png", "dialog.png": "guide_dialog.png",
            "dialog_advanced.png": "guide_dialog_advanced.png", "layers.png": "guide_layers.png",
            "runs_panel.png": "guide_runs_panel.png"}

PRELUDE = r'''
from qgis.PyQt.QtCore import QRect
from qgis.utils import plugins


def plugin():
    return plugins["tcd_qgis_plugin"]


def fill_screen():
    # No window manager under xvfb: showMaximized() alone leaves the window as QGIS opened it.
    window = iface.mainWindow()
    window.showMaximized()
    window.setGeometry(QgsApplication.primaryScreen().availableGeometry())


def shot_top(name, height_px=220):
    """The top of the main window: menus, toolbars and the message bar."""
    QgsApplication.processEvents()
    window = iface.mainWindow()
    window.grab(QRect(0, 0, window.width(), height_px)).save(str(OUT / name))
'''

STOCK_DRIVER = PRELUDE + r'''
@guarded
def begin():
    fill_screen()
    QTimer.singleShot(2000, show_bar)


@guarded
def show_bar():
    bar = iface.messageBar()
    for item in list(bar.items()):
        if item.title() != "Tree crown delineation":
            bar.popWidget(item)  # QGIS's own notices of a bare test machine (fonts)
    QgsApplication.processEvents()
    results["bar"] = bar_items()
    shot_top("install_bar.png")
    finish()


start(begin, 1500)
'''

DRIVER = PRELUDE + r'''
from qgis.core import QgsRasterLayer

state = {"polls": 0}


@guarded
def begin():
    fill_screen()
    image = QgsRasterLayer(CONFIG["image"], "OSBS_029", "gdal")
    QgsProject.instance().addMapLayer(image)
    iface.setActiveLayer(image)
    iface.mapCanvas().setExtent(image.extent())
    iface.messageBar().clearWidgets()
    dialog = plugin().show_dialog()
    QTimer.singleShot(2500, dialog_shots)


@guarded
def dialog_shots():
    dialog = plugin().dialog
    results["dialog"] = {"model": dialog.model_combo.currentText(), "run": dialog.run_button.isEnabled(),
                         "message": dialog.message_label.text()}
    shot("dialog.png", dialog)
    dialog.advanced.setCollapsed(False)
    QTimer.singleShot(800, advanced_shot)


@guarded
def advanced_shot():
    dialog = plugin().dialog
    shot("dialog_advanced.png", dialog)
    results["detector_rows_shown"] = [w.isVisible() for w in dialog.detector_widgets]
    dialog.advanced.setCollapsed(True)
    dialog.run_button.click()
    QTimer.singleShot(200, wait)


@guarded
def wait():
    state["polls"] += 1
    if plugin().tasks and state["polls"] < 1200:
        QTimer.singleShot(100, wait)
        return
    QTimer.singleShot(1500, layers_shot)


@guarded
def layers_shot():
    group = QgsProject.instance().layerTreeRoot().findGroup("OSBS_029_tcd")
    results["layers"] = [node.layer().name() for node in group.findLayers()] if group else []
    for node in group.findLayers() if group else []:
        node.setExpanded(True)  # the legend under each layer
    results["bar"] = bar_items()
    iface.mapCanvas().refreshAllLayers()
    iface.mapCanvas().waitWhileRendering()
    QTimer.singleShot(2000, final_shots)


@guarded
def final_shots():
    iface.mapCanvas().waitWhileRendering()
    shot("layers.png")
    results["panel"] = plugin().panel.row_texts() if plugin().panel.isVisible() else None
    plugin().panel.tree.setCurrentItem(plugin().panel.tree.topLevelItem(0))
    QgsApplication.processEvents()
    QTimer.singleShot(1000, panel_shot)


@guarded
def panel_shot():
    shot("runs_panel.png", plugin().panel)
    finish()


start(begin, 1500)
'''


def test_the_user_guide_pictures(tmp_path, desktop_qgis, venv_env):
    stock = desktop_qgis(tmp_path / "stock", STOCK_DRIVER, {}, name="e2e_guide_stock",
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "stock"), "LANG": "C.UTF-8"},
                         timeout_s=180)
    assert "error" not in stock.results, stock.results["error"]
    (title, text, _level, _duration), *_ = stock.results["bar"]
    assert title == "Tree crown delineation" and text.startswith("Python packages to install:")

    image = tmp_path / "OSBS_029.tif"
    shutil.copy(SAMPLE, image)
    run = desktop_qgis(tmp_path / "run", DRIVER, {"image": str(image)}, name="e2e_guide", env=venv_env,
                       timeout_s=300)
    results = run.results
    assert "error" not in results, results["error"]
    assert results["dialog"]["run"] and "bundled default" in results["dialog"]["model"]
    assert results["detector_rows_shown"] == [False, False, False]  # the bundled model is no detector
    assert sorted(results["layers"]) == ["canopy confidence", "crowns"]
    assert results["panel"] and results["panel"][0][0] == "OSBS_029_tcd"
    assert results["bar"][0][1].startswith("Delineated ")

    artifacts = {**{name: stock.artifacts / name for name in ("install_bar.png",)},
                 **{name: run.artifacts / name for name in PICTURES if name != "install_bar.png"}}
    for name, path in artifacts.items():
        assert path.stat().st_size > 10_000, name
    if os.environ.get("TCD_UPDATE_PICTURES") == "1":
        update_pictures(artifacts)


def update_pictures(artifacts: dict) -> None:
    """Copy the pictures to docs/images: at most PICTURE_WIDTH_PX wide, 256 colours (each well under 300 KB)."""
    from qgis.PyQt.QtCore import Qt
    from qgis.PyQt.QtGui import QImage

    folder = ROOT / "docs" / "images"
    for name, path in artifacts.items():
        image = QImage(str(path))
        if image.width() > PICTURE_WIDTH_PX:
            image = image.scaledToWidth(PICTURE_WIDTH_PX, Qt.TransformationMode.SmoothTransformation)
        image = image.convertToFormat(QImage.Format.Format_Indexed8)
        assert image.save(str(folder / PICTURES[name])), name
        assert (folder / PICTURES[name]).stat().st_size < 300_000, name
