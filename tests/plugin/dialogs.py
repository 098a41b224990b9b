"""The prediction dialog as the dialog tests drive it: opened on a raster with recent models, and Run clicked."""

from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtTest import QSignalSpy, QTest

from tcd_qgis_plugin.core.runs import RunRegistry
from tcd_qgis_plugin.gui.dialog import PredictDialog


def open_dialog(canvas, raster_layer, models, selected=None) -> PredictDialog:
    """A dialog on ``raster_layer`` with ``models`` as the recent models, ``selected`` chosen if given."""
    registry = RunRegistry()
    for model in models:
        registry.add_recent_model(model)
    dialog = PredictDialog(registry, canvas)
    dialog.set_raster(raster_layer)
    if selected is not None:
        dialog.select_model(selected)
    return dialog


def click_run(dialog) -> list:
    """Click Run; returns the jobs the dialog asked to start (none when it refused)."""
    spy = QSignalSpy(dialog.runRequested)
    QTest.mouseClick(dialog.run_button, Qt.MouseButton.LeftButton)
    return [args[0] for args in spy]
