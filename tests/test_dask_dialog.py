"""The dialog's optional Dask scheduler address (Advanced) reaches the job; empty means this computer."""

import pytest
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtTest import QSignalSpy, QTest

from tcd_qgis_plugin.core.runs import RunRegistry
from tcd_qgis_plugin.engine.worker import job_from_json, job_to_json
from tcd_qgis_plugin.gui.dialog import PredictDialog


@pytest.fixture
def dialog(qgis_canvas, settings, raster_layer, model_path):
    registry = RunRegistry()
    registry.add_recent_model(model_path)
    dialog = PredictDialog(registry, qgis_canvas)
    dialog.set_raster(raster_layer)
    dialog.select_model(model_path)
    yield dialog
    dialog.deleteLater()


def run_jobs(dialog) -> list:
    spy = QSignalSpy(dialog.runRequested)
    QTest.mouseClick(dialog.run_button, Qt.LeftButton)
    return [args[0] for args in spy]


@pytest.mark.parametrize("typed, expected", [("", None), ("  ", None), (" tcp://10.0.0.5:8786 ", "tcp://10.0.0.5:8786")])
def test_the_scheduler_address_reaches_the_job_and_the_worker(dialog, typed, expected):
    QTest.keyClicks(dialog.scheduler_edit, typed)
    assert dialog.run_button.isEnabled(), dialog.message_label.text()
    (job,) = run_jobs(dialog)
    assert job.scheduler == expected and job.workers is None
    assert job_from_json(job_to_json(job)) == job  # what the plugin sends its worker process
