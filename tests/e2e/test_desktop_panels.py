"""The runs panel in a fresh profile leaves QGIS's own panels as wide as without the plugin.

Desktop QGIS under xvfb on a 1600 x 1000 and a 1366 x 768 screen, fresh profile, started twice: once
with the plugin installed but not enabled, once enabled. The Layers and Browser
panels must be as wide in both (screenshots of both windows in
``test-artifacts/e2e_panels_*``). Then the runs panel is opened as when a run
starts: QGIS's panels keep their width.
"""

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DRIVER = r'''
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import QDockWidget
from qgis.utils import plugins


def docks():
    window = iface.mainWindow()
    return {d.objectName(): {"width": d.width(), "area": int(window.dockWidgetArea(d)),
                             "tabified": [t.objectName() for t in window.tabifiedDockWidgets(d)]}
            for d in window.findChildren(QDockWidget) if d.isVisible()}


@guarded
def maximize():
    # No window manager under xvfb: showMaximized() alone leaves the window as QGIS opened it.
    window = iface.mainWindow()
    window.showMaximized()
    window.setGeometry(QgsApplication.primaryScreen().availableGeometry())
    QTimer.singleShot(2500, measure)


@guarded
def measure():
    results["window"] = [iface.mainWindow().width(), iface.mainWindow().height()]
    results["docks"] = docks()
    results["canvas_width"] = iface.mapCanvas().width()
    shot("01_start.png")
    plugin = plugins.get("tcd_qgis_plugin")
    if plugin is None:
        finish()
        return
    plugin.show_panel()  # what a run's start does
    QTimer.singleShot(1500, measure_open)


@guarded
def measure_open():
    results["docks_open"] = docks()
    shot("02_panel_open.png")
    finish()


start(maximize, 2000)
'''


def widths(docks: dict) -> dict:
    return {name: docks[name]["width"] for name in ("Layers", "Browser") if name in docks}


@pytest.mark.parametrize("screen", ["1600x1000", "1366x768"])
def test_qgis_panels_keep_their_width_with_the_plugin(desktop_qgis, tmp_path, screen):
    without = desktop_qgis(tmp_path / "without", DRIVER, {}, name=f"e2e_panels_without_{screen}",
                           plugin_enabled=False, timeout_s=180, screen=screen)
    with_plugin = desktop_qgis(tmp_path / "with", DRIVER, {}, name=f"e2e_panels_with_{screen}", timeout_s=180,
                               screen=screen)
    for run in (without, with_plugin):
        assert "error" not in run.results, run.results.get("error")
    before = widths(without.results["docks"])
    assert before and min(before.values()) > 150, without.results["docks"]  # QGIS's own layout, readable
    assert widths(with_plugin.results["docks"]) == before, with_plugin.results["docks"]
    assert "TCDRunsPanel" not in with_plugin.results["docks"] or with_plugin.results["docks"]["TCDRunsPanel"][
        "tabified"], "the runs panel took a column of its own at the first start"
    opened = with_plugin.results["docks_open"]
    assert "TCDRunsPanel" in opened
    assert widths(opened) == before, opened
