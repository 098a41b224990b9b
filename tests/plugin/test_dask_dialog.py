"""The dialog's optional Dask scheduler address (Advanced) reaches the job; empty means this computer."""

import pytest
from qgis.PyQt.QtTest import QTest

from tcd_qgis_plugin.engine.worker import job_from_json, job_to_json
from tests.plugin.dialogs import click_run, open_dialog


@pytest.fixture
def dialog(qgis_canvas, settings, raster_layer, model_path):
    dialog = open_dialog(qgis_canvas, raster_layer, [model_path], selected=model_path)
    yield dialog
    dialog.deleteLater()



@pytest.mark.parametrize("typed, expected", [("", None), ("  ", None), (" tcp://10.0.0.5:8786 ", "tcp://10.0.0.5:8786")])
def test_the_scheduler_address_reaches_the_job_and_the_worker(dialog, typed, expected):
    QTest.keyClicks(dialog.scheduler_edit, typed)
    assert dialog.run_button.isEnabled(), dialog.message_label.text()
    (job,) = click_run(dialog)
    assert job.scheduler == expected and job.workers is None
    assert job_from_json(job_to_json(job)) == job  # what the plugin sends its worker process
