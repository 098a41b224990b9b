"""The dialog, driven through its widgets as a user would."""

import gc
from pathlib import Path

import numpy as np
import pytest
import rasterio
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsGeometry,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtTest import QSignalSpy, QTest
from rasterio.transform import Affine

from tcd_qgis_plugin.engine.settings import Output, VectorFormat
from tests.onnx_models import passthrough_model
from tests.plugin.dialogs import click_run, open_dialog
from tests.rasters import crowns_image, write_raster


@pytest.fixture
def dialog(qgis_canvas, settings, raster_layer, model_path):
    dialog = open_dialog(qgis_canvas, raster_layer, [model_path], selected=model_path)
    yield dialog
    dialog.deleteLater()



def test_defaults_and_run_emit_the_job(dialog, raster_layer, raster_path, model_path):
    assert dialog.raster_combo.currentLayer() is raster_layer
    assert dialog.folder_widget.filePath() == str(raster_path.with_name("ortho_tcd"))
    names = [dialog.model_combo.itemText(i) for i in range(dialog.model_combo.count())]
    assert "crown test model" in names  # listed by its metadata name, not its file name
    assert dialog.model_combo.currentText() == "crown test model"
    assert dialog.run_button.isEnabled(), dialog.message_label.text()

    jobs = click_run(dialog)
    assert len(jobs) == 1
    job = jobs[0]
    assert job.image == raster_path
    assert job.cache_dir == raster_path.with_name("ortho_tcd")
    assert job.model == model_path.resolve()
    assert job.outputs == {Output.SEMANTIC, Output.INSTANCES}
    assert (job.tile_size_px, job.overlap_px, job.gsd_m, job.aoi_wkt) == (None, None, None, None)
    assert job.vector_format is VectorFormat.SHAPEFILE


def test_advanced_choices_reach_the_job(dialog, tmp_path):
    dialog.crowns_check.setChecked(False)
    dialog.tile_spin.setValue(128)
    dialog.overlap_spin.setValue(32)
    dialog.gsd_spin.setValue(0.2)
    dialog.format_combo.setCurrentIndex(dialog.format_combo.findData(VectorFormat.GEOPACKAGE))
    dialog.folder_widget.setFilePath(str(tmp_path / "elsewhere"))
    (job,) = click_run(dialog)
    assert job.outputs == {Output.SEMANTIC}
    assert (job.tile_size_px, job.overlap_px, job.gsd_m) == (128, 32, 0.2)
    assert job.vector_format is VectorFormat.GEOPACKAGE
    assert job.cache_dir == tmp_path / "elsewhere"


def test_the_folder_follows_the_raster_until_the_user_edits_it(dialog, raster_layer, tmp_path):
    from qgis.core import QgsRasterLayer

    from tests.rasters import squares_image, write_raster

    other_path = write_raster(tmp_path / "sub" / "other.tif", squares_image(64, 64, []))
    other = QgsRasterLayer(str(other_path), "other", "gdal")
    QgsProject.instance().addMapLayer(other)
    dialog.raster_combo.setLayer(other)
    assert dialog.folder_widget.filePath() == str(other_path.with_name("other_tcd"))
    dialog.folder_widget.setFilePath(str(tmp_path / "mine"))
    dialog.raster_combo.setLayer(raster_layer)
    assert dialog.folder_widget.filePath() == str(tmp_path / "mine")


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda d: (d.confidence_check.setChecked(False), d.crowns_check.setChecked(False)), "at least one output"),
        (lambda d: d.overlap_spin.setValue(64), "smaller than the tile size"),
        (lambda d: d.tile_spin.setValue(8), "at least 16 pixels"),
        (lambda d: d.folder_widget.setFilePath(""), "Choose an output folder"),
        (lambda d: d.folder_widget.setFilePath("relative/folder"), "full path"),
    ],
)
def test_invalid_choices_are_explained_and_disable_run(dialog, change, expected):
    change(dialog)
    assert not dialog.run_button.isEnabled()
    assert expected in dialog.message_label.text()
    assert click_run(dialog) == []


def test_a_folder_with_other_files_is_refused(dialog, tmp_path):
    folder = tmp_path / "busy"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    dialog.folder_widget.setFilePath(str(folder))
    assert not dialog.run_button.isEnabled()
    assert "holds other files" in dialog.message_label.text()


def test_an_unreadable_model_is_explained(dialog, tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\xff\xff\xff not onnx")
    dialog.select_model(bad)
    assert dialog.model_combo.currentText() == "broken.onnx (unreadable)"
    assert not dialog.run_button.isEnabled()
    assert "not a valid ONNX model" in dialog.message_label.text()


def test_a_bad_metadata_model_is_explained(dialog, tmp_path):
    odd = passthrough_model(tmp_path / "odd.onnx", extra_metadata={"output_kind": "hologram"})
    dialog.select_model(odd)
    assert not dialog.run_button.isEnabled()
    assert "hologram" in dialog.message_label.text()


def test_missing_packages_are_named_with_an_install_button(dialog):
    from tcd_qgis_plugin.engine.doctor import Requirement

    requirement = Requirement("onnxruntime", ">=1.16,<2")
    dialog.set_missing([requirement])
    assert dialog.dependency_row.isVisibleTo(dialog)
    assert "onnxruntime" in dialog.dependency_label.text()
    assert not dialog.run_button.isEnabled()
    spy = QSignalSpy(dialog.installRequested)
    QTest.mouseClick(dialog.install_button, Qt.LeftButton)
    assert len(spy) == 1
    dialog.set_missing([])
    assert not dialog.dependency_row.isVisibleTo(dialog)
    assert dialog.run_button.isEnabled()


def test_only_the_map_extent(dialog, qgis_canvas, raster_layer):
    # The canvas shows WGS 84; the job's area must come out in the raster's UTM CRS.
    wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
    qgis_canvas.setDestinationCrs(wgs84)
    extent = raster_layer.extent()
    qgis_canvas.setExtent(QgsRectangle(extent.xMinimum(), extent.yMinimum(), extent.center().x(),
                                       extent.center().y()))
    from qgis.core import QgsCoordinateTransform

    to_wgs = QgsCoordinateTransform(raster_layer.crs(), wgs84, QgsProject.instance())
    qgis_canvas.setExtent(to_wgs.transformBoundingBox(QgsRectangle(extent.xMinimum(), extent.yMinimum(),
                                                                   extent.center().x(), extent.center().y())))
    dialog.area_extent.click()
    (job,) = click_run(dialog)
    area = QgsGeometry.fromWkt(job.aoi_wkt)
    assert area.boundingBox().intersects(extent)
    # The lower-left quarter of the raster, in metres: well inside the raster, not degrees.
    centre = area.centroid().asPoint()
    assert extent.xMinimum() < centre.x() < extent.center().x()
    assert extent.yMinimum() < centre.y() < extent.center().y()


def test_only_inside_selected_features(dialog, raster_layer):
    polygons = QgsVectorLayer("Polygon?crs=EPSG:32633", "areas", "memory")
    extent = raster_layer.extent()
    inside = QgsFeature()
    inside.setGeometry(QgsGeometry.fromRect(QgsRectangle(extent.xMinimum(), extent.yMinimum(),
                                                         extent.xMinimum() + 5, extent.yMinimum() + 5)))
    outside = QgsFeature()
    outside.setGeometry(QgsGeometry.fromRect(QgsRectangle(0, 0, 10, 10)))
    polygons.dataProvider().addFeatures([inside, outside])
    QgsProject.instance().addMapLayer(polygons)
    dialog.aoi_layer_combo.setLayer(polygons)
    dialog.area_selection.click()
    assert not dialog.run_button.isEnabled()
    assert "Select at least one feature in areas" in dialog.message_label.text()

    ids = sorted(f.id() for f in polygons.getFeatures())
    polygons.selectByIds([ids[1]])  # the dialog follows the selection as it changes
    assert "does not overlap the raster" in dialog.message_label.text()
    polygons.selectByIds([ids[0]])
    assert dialog.run_button.isEnabled(), dialog.message_label.text()
    (job,) = click_run(dialog)
    assert QgsGeometry.fromWkt(job.aoi_wkt).equals(inside.geometry())


def test_a_non_file_raster_is_refused(dialog):
    from qgis.core import QgsRasterLayer

    wms = QgsRasterLayer("type=xyz&url=https://tile.invalid/{z}/{x}/{y}.png", "tiles", "wms")
    QgsProject.instance().addMapLayer(wms, False)
    dialog.raster_combo.setLayer(wms)
    assert dialog.raster_combo.currentLayer() is wms
    assert not dialog.run_button.isEnabled()
    assert "not a raster file on disk" in dialog.message_label.text()


def test_a_finished_run_in_the_folder_is_announced(dialog, raster_path, model_path):
    from tcd_qgis_plugin.engine.run.predict import predict
    from tcd_qgis_plugin.engine.settings import Job

    job = Job(image=raster_path, cache_dir=raster_path.with_name("ortho_tcd"), model=model_path, threads=1)
    predict(job)
    dialog.validate()
    assert dialog.run_button.isEnabled()
    assert "finished run of this raster" in dialog.message_label.text()
    assert Path(dialog.folder_widget.filePath()) == job.cache_dir


def add_raster(path):
    from qgis.core import QgsRasterLayer

    layer = QgsRasterLayer(str(path), path.stem, "gdal")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    return layer


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda d: write_raster(d / "nocrs.tif", crowns_image(64, 64, []), crs=None),
         "nocrs.tif has no coordinate reference system; set the layer's CRS in QGIS"),
        (lambda d: write_raster(d / "plain.tif", crowns_image(64, 64, []), crs=None, transform=Affine.identity()),
         "plain.tif is not georeferenced"),
        (lambda d: write_raster(d / "gray.tif", crowns_image(64, 64, [])[:1]),
         "The model needs bands 1, 2, 3 but gray.tif has 1 band."),
    ],
)
def test_rasters_the_engine_would_refuse_are_explained_and_keep_run_disabled(dialog, tmp_path, make, expected):
    dialog.raster_combo.setLayer(add_raster(make(tmp_path)))
    assert not dialog.run_button.isEnabled()
    assert expected in dialog.message_label.text()
    assert click_run(dialog) == []


def test_16_bit_and_paletted_rasters_run_and_a_value_range_goes_with_the_job(dialog, tmp_path):
    deep = write_raster(tmp_path / "deep.tif", crowns_image(64, 64, [(10, 10, 12)]).astype("uint16") * 200)
    dialog.raster_combo.setLayer(add_raster(deep))
    assert dialog.run_button.isEnabled(), dialog.message_label.text()
    dialog.value_range_edit.setText("100, 20")
    assert not dialog.run_button.isEnabled()
    assert "The value range must be two numbers, the minimum below the maximum" in dialog.message_label.text()
    dialog.value_range_edit.setText("0,46000")
    gc.collect()
    jobs = click_run(dialog)
    assert len(jobs) == 1 and jobs[0].value_range == (0.0, 46000.0)

    indexed = write_raster(tmp_path / "indexed.tif", np.zeros((1, 64, 64), np.uint8), photometric="palette")
    with rasterio.open(indexed, "r+") as dst:
        dst.write_colormap(1, {0: (40, 140, 40, 255)})
    dialog.value_range_edit.clear()
    dialog.raster_combo.setLayer(add_raster(indexed))
    assert dialog.run_button.isEnabled(), dialog.message_label.text()


def test_model_default_says_what_the_default_is(dialog):
    assert dialog.tile_spin.specialValueText() == "Model default (64 px)"
    assert dialog.overlap_spin.specialValueText() == "Model default (16 px)"
    assert dialog.gsd_spin.specialValueText() == "Model default (0.1 m)"
    assert dialog.tile_spin.text() == "Model default (64 px)"  # what the user sees at the minimum


def test_a_raster_far_smaller_than_a_tile_is_pointed_out(dialog, tmp_path):
    tiny = write_raster(tmp_path / "tiny.tif", crowns_image(16, 16, []))
    dialog.raster_combo.setLayer(add_raster(tiny))
    dialog.tile_spin.setValue(1024)
    assert dialog.run_button.isEnabled()  # it runs, but the user knows what to expect
    assert "tiny.tif covers only 1.6 × 1.6 m, far less than one tile of this model (1024 px at 0.1 m" in \
        dialog.message_label.text()


def test_a_file_without_a_crs_takes_the_layers(dialog, tmp_path, model_path):
    from tcd_qgis_plugin.engine.run.predict import predict

    path = write_raster(tmp_path / "nocrs.tif", crowns_image(128, 128, [(20, 20, 12), (80, 60, 12)]), crs=None)
    layer = add_raster(path)
    dialog.raster_combo.setLayer(layer)
    assert not dialog.run_button.isEnabled()
    layer.setCrs(QgsCoordinateReferenceSystem("EPSG:32633"))  # Layer ▸ Layer CRS ▸ Set Layer CRS…
    dialog.validate()
    assert dialog.run_button.isEnabled(), dialog.message_label.text()
    assert "nocrs.tif has no CRS in the file: the layer's CRS, EPSG:32633, is used." in dialog.message_label.text()
    (job,) = click_run(dialog)
    assert job.assign_crs == "EPSG:32633"
    result = predict(job)  # the engine takes it, and the crowns are in that CRS
    assert result.state == "complete" and result.features == 2
    crowns = QgsVectorLayer(str(job.cache_dir / "crowns.shp"), "crowns", "ogr")
    assert crowns.crs().authid() == "EPSG:32633"


def test_the_processor_list_holds_what_starts_here(dialog):
    names = lambda: [dialog.processor_combo.itemText(i) for i in range(dialog.processor_combo.count())]  # noqa: E731
    assert names() == ["Automatic", "CPU"]
    dialog.set_processors(["cpu", "cuda"])
    assert names() == ["Automatic", "CPU", "NVIDIA GPU (CUDA)"]
    dialog.processor_combo.setCurrentIndex(dialog.processor_combo.findData("cuda"))
    (job,) = click_run(dialog)
    assert job.provider == "cuda"
    dialog.set_processors(["cpu"])  # the choice is kept only while it is offered
    (job,) = click_run(dialog)
    assert job.provider is None


def test_a_canopy_height_raster_reaches_the_job(dialog, tmp_path):
    assert dialog.chm_combo.currentLayer() is None  # optional: none until chosen
    (job,) = click_run(dialog)
    assert job.canopy_height is None

    chm_path = write_raster(tmp_path / "chm.tif", np.full((1, 40, 40), 12, np.uint8))
    chm = QgsRasterLayer(str(chm_path), "chm")
    QgsProject.instance().addMapLayer(chm)
    dialog.chm_combo.setLayer(chm)
    (job,) = click_run(dialog)
    assert job.canopy_height == chm_path

    # Heights are measured per crown: without crowns the choice cannot run, and the dialog says why.
    dialog.crowns_check.setChecked(False)
    assert click_run(dialog) == []
    assert "turn crowns on" in dialog.message_label.text()


def test_the_dialog_is_as_tall_as_what_it_shows(dialog):
    from qgis.core import QgsApplication

    def settle():
        for _ in range(3):
            QgsApplication.processEvents()

    def empty_px() -> int:
        """The height between the last row above the buttons and the buttons."""
        above = dialog.message_label if dialog.message_label.text() else dialog.advanced
        return dialog.buttons.geometry().top() - above.geometry().bottom()

    dialog.show()
    settle()
    closed = dialog.height()
    assert empty_px() < 40, empty_px()
    dialog.advanced.setCollapsed(False)
    settle()
    assert dialog.height() > closed + 150 and empty_px() < 40
    dialog.advanced.setCollapsed(True)
    settle()
    assert dialog.height() == closed and empty_px() < 40
    dialog.hide()
