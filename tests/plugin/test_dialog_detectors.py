"""The dialog with a detector: listed with the other models, its thresholds and geometry in Advanced."""

import pytest

from tcd_qgis_plugin.engine.settings import BoxGeometry
from tests.plugin.dialogs import click_run, open_dialog
from tests.test_detectors import V5_ROWS, detector_model


@pytest.fixture
def detector_path(tmp_path):
    return detector_model(tmp_path / "models" / "trees.onnx", V5_ROWS, det_conf=0.4, det_iou=0.3,
                          extra={"name": "tree detector"})


@pytest.fixture
def dialog(qgis_canvas, settings, raster_layer, model_path, detector_path):
    dialog = open_dialog(qgis_canvas, raster_layer, [model_path, detector_path])
    yield dialog
    dialog.deleteLater()



def test_detector_thresholds_show_for_detectors_only_and_reach_the_job(dialog, model_path, detector_path):
    names = [dialog.model_combo.itemText(i) for i in range(dialog.model_combo.count())]
    assert "tree detector" in names and "crown test model" in names
    dialog.select_model(model_path)
    assert not any(w.isVisibleTo(dialog) for w in dialog.detector_widgets + dialog.detector_labels)
    (job,) = click_run(dialog)
    assert (job.det_conf, job.det_iou_thresh, job.box_geometry) == (None, None, None)

    dialog.select_model(detector_path)
    assert all(w.isVisibleTo(dialog) for w in dialog.detector_widgets + dialog.detector_labels)
    assert dialog.det_conf_spin.specialValueText() == "Model default (0.4)"
    assert dialog.det_iou_spin.specialValueText() == "Model default (0.3)"
    (job,) = click_run(dialog)
    assert (job.det_conf, job.det_iou_thresh, job.box_geometry) == (None, None, BoxGeometry.CROWNS)

    dialog.det_conf_spin.setValue(0.25)
    dialog.det_iou_spin.setValue(0.6)
    dialog.geometry_combo.setCurrentIndex(dialog.geometry_combo.findData(BoxGeometry.BOXES))
    (job,) = click_run(dialog)
    assert (job.det_conf, job.det_iou_thresh, job.box_geometry) == (0.25, 0.6, BoxGeometry.BOXES)


def detector_rows_shown(dialog) -> list:
    return [w.isVisibleTo(dialog) for w in dialog.detector_widgets + dialog.detector_labels]


def test_the_bundled_model_shows_no_detector_rows_even_before_an_install(qgis_canvas, settings, raster_layer,
                                                                         model_path, detector_path):
    from qgis.core import QgsApplication

    from tcd_qgis_plugin.engine.doctor import Requirement
    from tcd_qgis_plugin.engine.models.spec import default_model_path

    dialog = open_dialog(qgis_canvas, raster_layer, [detector_path], selected=default_model_path())
    try:
        dialog.set_missing([Requirement("onnxruntime")])  # Run stops early: the rows must still follow the model
        dialog.show()
        dialog.advanced.setCollapsed(False)
        QgsApplication.processEvents()
        assert not any(detector_rows_shown(dialog))
        dialog.select_model(detector_path)
        assert all(detector_rows_shown(dialog))
        dialog.advanced.setCollapsed(True)
        dialog.advanced.setCollapsed(False)  # opening the group again keeps each row as the model wants it
        assert all(detector_rows_shown(dialog))
        dialog.select_model(default_model_path())
        dialog.advanced.setCollapsed(True)
        dialog.advanced.setCollapsed(False)
        assert not any(detector_rows_shown(dialog))
        QgsApplication.processEvents()
        # No empty band where the detector's rows were: Area follows the row above at the form's spacing.
        from qgis.PyQt.QtWidgets import QFormLayout

        form = dialog.advanced_form
        area_row, _role = form.getLayoutPosition(dialog._area_box)
        above = form.itemAt(area_row - 1, QFormLayout.ItemRole.FieldRole).widget()
        assert above is dialog.threshold_spin  # the last row a segmentation model uses
        gap = dialog.area_all.geometry().top() - above.geometry().bottom()
        assert gap <= dialog.advanced_form.verticalSpacing() + 6, gap
    finally:
        dialog.hide()
        dialog.deleteLater()
