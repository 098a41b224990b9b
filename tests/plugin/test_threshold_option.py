"""The per-run probability threshold: in the dialog (segmentation models only) and in Processing, kept by the cache."""

import json

import pytest
from qgis.core import QgsProcessingContext, QgsProcessingException, QgsProcessingFeedback, QgsProject

from tests.plugin.dialogs import click_run, open_dialog
from tests.rasters import read_crowns
from tests.test_detectors import V5_ROWS, detector_model

ALG = "tcd:delineatecrowns"


@pytest.fixture
def detector_path(tmp_path):
    return detector_model(tmp_path / "models" / "trees.onnx", V5_ROWS, extra={"name": "tree detector"})


def test_dialog_threshold_for_segmentation_models_reaches_the_job(qgis_canvas, settings, raster_layer, model_path,
                                                                  detector_path):
    dialog = open_dialog(qgis_canvas, raster_layer, [model_path, detector_path], selected=model_path)
    try:
        assert dialog.threshold_spin.isVisibleTo(dialog)
        assert dialog.threshold_spin.specialValueText() == "Model default (0.5)"
        (job,) = click_run(dialog)
        assert job.seg_thresh is None
        dialog.threshold_spin.setValue(0.3)
        (job,) = click_run(dialog)
        assert job.seg_thresh == pytest.approx(0.3)
        dialog.select_model(detector_path)  # detectors have their own score threshold
        assert not dialog.threshold_spin.isVisibleTo(dialog)
        (job,) = click_run(dialog)
        assert job.seg_thresh is None
    finally:
        dialog.deleteLater()


def _run(parameters):
    import processing

    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    return processing.run(ALG, parameters, context=context, feedback=QgsProcessingFeedback())


def test_processing_threshold_is_used_and_kept_for_resume(qgis_processing, plugin, raster_path, model_path, tmp_path):
    folder = tmp_path / "strict_tcd"
    parameters = {"INPUT": str(raster_path), "MODEL": str(model_path), "OUTPUT_FOLDER": str(folder)}
    _run({**parameters, "THRESHOLD": 0.95})  # the squares' canopy is 230 / 255 = 0.9: none is canopy
    assert read_crowns(folder) == []
    header = json.loads((folder / "tiles.jsonl").read_text().splitlines()[0])
    assert header["fingerprints"]["settings"]["seg_thresh"] == 0.95
    with pytest.raises(QgsProcessingException, match="probability threshold"):
        _run(parameters)  # the model's own threshold is another run's
    _run({**parameters, "THRESHOLD": 0.95})  # the same: resumes (complete)
