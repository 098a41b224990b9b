"""The Processing algorithm ``tcd:delineatecrowns``: parameters, runs, batch, cancel and resume, AOI.

Every run goes through the real worker process with a real ONNX model on real
GeoTIFFs, as from the toolbox or ``processing.run()``.
"""

import json
import threading
import time

import pytest
from qgis.core import (
    NULL,
    QgsApplication,
    QgsFeature,
    QgsGeometry,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis.PyQt import sip

from tcd_qgis_plugin.engine.cache.status import cache_status
from tcd_qgis_plugin.engine.run.local import IN_FLIGHT
from tests.conftest import SQUARES
from tests.onnx_models import slow_model
from tests.rasters import (
    LEADER_M,
    crown_height,
    crowns_by_square,
    crowns_image,
    geographic_chm,
    read_crowns,
    square_m,
    write_raster,
)

ALG = "tcd:delineatecrowns"


@pytest.fixture
def processing(qgis_processing, plugin):
    """Processing initialised and the plugin's provider registered, as in desktop QGIS."""
    import processing

    return processing


@pytest.fixture
def layer_tree_view(qgis_iface, monkeypatch):
    """A real layer tree view of the project, as desktop QGIS's iface has.

    Processing loads a batch's result layers through ``iface.layerTreeView()``, and QGIS 3.44 hands
    it to C++, which refuses pytest-qgis's stand-in (a MagicMock).
    """
    from qgis.core import QgsLayerTreeModel
    from qgis.gui import QgsLayerTreeView

    view = QgsLayerTreeView()
    view.setModel(QgsLayerTreeModel(QgsProject.instance().layerTreeRoot(), view))
    monkeypatch.setattr(qgis_iface, "layerTreeView", lambda: view, raising=False)
    yield view
    view.deleteLater()


def manifest_tile_ids(cache_dir) -> list[int]:
    lines = (cache_dir / "tiles.jsonl").read_text().splitlines()[1:]
    return [json.loads(line)["tile_id"] for line in lines]


def run(processing, parameters, feedback=None):
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    return processing.run(ALG, parameters, context=context, feedback=feedback or QgsProcessingFeedback())


def test_provider_and_parameters(processing, plugin):
    registry = QgsApplication.processingRegistry()
    provider = registry.providerById("tcd")
    assert provider is not None and provider.name() == "Tree crown delineation"
    alg = registry.algorithmById(ALG)
    assert alg is not None and alg.displayName() == "Delineate tree crowns"
    names = [p.name() for p in alg.parameterDefinitions()]
    assert names[:2] == ["INPUT", "MODEL"]
    assert set(names) >= {"OUTPUTS", "OUTPUT_FOLDER", "VECTOR_FORMAT", "AOI", "TILE_SIZE", "OVERLAP", "GSD"}
    advanced = {p.name() for p in alg.parameterDefinitions() if p.flags() & p.Flag.FlagAdvanced}
    assert advanced == {"TILE_SIZE", "OVERLAP", "GSD", "VALUE_RANGE", "THRESHOLD"}
    assert {o.name() for o in alg.outputDefinitions()} == {"CROWNS", "CONFIDENCE", "OUTPUT_FOLDER"}
    assert alg.flags() & alg.Flag.FlagSupportsBatch and alg.flags() & alg.Flag.FlagCanCancel
    plugin.unload()
    assert registry.providerById("tcd") is None
    plugin.initGui()  # the fixture unloads it again


def test_run_writes_the_cache_and_returns_paths(processing, plugin, raster_path, model_path, tmp_path):
    folder = tmp_path / "run_tcd"
    results = run(processing, {"INPUT": str(raster_path), "MODEL": str(model_path), "OUTPUT_FOLDER": str(folder)})
    QgsApplication.processEvents()  # the provider's queued runsChanged
    assert [row[:3] for row in plugin.panel.row_texts()] == [["run_tcd", "complete", "49 / 49"]]
    assert results["OUTPUT_FOLDER"] == str(folder)
    assert results["CROWNS"] == str(folder / "crowns.shp")
    assert results["CONFIDENCE"] == str(folder / "confidence.vrt")
    assert len(read_crowns(folder)) == 40
    status = cache_status(folder)
    assert status.state == "complete" and status.done == status.total == 49
    # Running it again on the same folder finds the run complete: nothing is predicted twice.
    again = run(processing, {"INPUT": str(raster_path), "MODEL": str(model_path), "OUTPUT_FOLDER": str(folder)})
    assert again == results
    assert manifest_tile_ids(folder) == sorted(set(manifest_tile_ids(folder)))


def test_default_folder_is_beside_the_raster_and_geopackage(processing, raster_path, model_path):
    results = run(processing, {"INPUT": str(raster_path), "MODEL": str(model_path), "VECTOR_FORMAT": 1,
                               "OUTPUTS": [0]})
    folder = raster_path.parent / "ortho_tcd"
    assert results["OUTPUT_FOLDER"] == str(folder)
    assert results["CROWNS"] == f"{folder / 'crowns.gpkg'}|layername=crowns"
    assert results["CONFIDENCE"] is None
    layer = QgsVectorLayer(results["CROWNS"], "crowns", "ogr")
    assert layer.isValid() and layer.featureCount() == 40
    assert not (folder / "confidence.vrt").exists()


@pytest.mark.parametrize(("parameters", "message"), [
    ({"MODEL": "/nowhere/model.onnx"}, "The model file /nowhere/model.onnx does not exist."),
    ({"TILE_SIZE": 64, "OVERLAP": 64}, "The overlap (64 px) must be smaller than the tile size (64 px)."),
    ({"OUTPUTS": []}, "Incorrect parameter value for OUTPUTS"),
    ({"VALUE_RANGE": "5,1"}, "The value range must be two numbers, the minimum below the maximum, not '5,1'."),
])
def test_bad_parameters_give_one_sentence(processing, raster_path, model_path, parameters, message):
    with pytest.raises(QgsProcessingException) as info:
        run(processing, {"INPUT": str(raster_path), "MODEL": str(model_path), **parameters})
    # Processing's own form: its heading line, then the algorithm's sentence.
    assert str(info.value).splitlines() == ["Unable to execute algorithm", message]
    assert not (raster_path.parent / "ortho_tcd").exists()


def test_a_value_range_is_recorded_in_the_caches_settings(processing, raster_path, model_path, tmp_path):
    import json

    folder = tmp_path / "stretched_tcd"
    run(processing, {"INPUT": str(raster_path), "MODEL": str(model_path), "OUTPUT_FOLDER": str(folder),
                     "VALUE_RANGE": "0, 200"})
    header = json.loads((folder / "tiles.jsonl").read_text().splitlines()[0])
    value_range = header["fingerprints"]["settings"]["value_range"]
    assert value_range and all(pair == [0.0, 200.0] for pair in value_range)


def test_a_folder_with_other_files_is_refused(processing, raster_path, model_path, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(QgsProcessingException, match="holds other files"):
        run(processing, {"INPUT": str(raster_path), "MODEL": str(model_path), "OUTPUT_FOLDER": str(folder)})
    assert sorted(p.name for p in folder.iterdir()) == ["holiday.jpg"]


@pytest.mark.usefixtures("per_tile_commits")
def test_cancel_stops_within_one_tile_then_resume(processing, tmp_path):
    # About 0.3 s of inference per tile (1024 px products): slow enough that the tile after the cancel
    # has begun, fast enough that the resume is quick. 160 px at 64 px tiles with a 16 px overlap: a few tiles a side.
    model = slow_model(tmp_path / "slower.onnx", size=1024, matmuls=40)
    image = write_raster(tmp_path / "small.tif", crowns_image(160, 160, [(10, 12, 12), (90, 100, 12)]))
    folder = tmp_path / "small_tcd"
    parameters = {"INPUT": str(image), "MODEL": str(model), "OUTPUT_FOLDER": str(folder)}
    feedback = QgsProcessingFeedback()
    at_cancel = []

    def cancel_after_two(progress):
        total = cache_status(folder).total
        done = round(progress * total / 100)
        if done >= 2 and not at_cancel:
            at_cancel.append(done)
            feedback.cancel()

    feedback.progressChanged.connect(cancel_after_two)
    with pytest.raises(QgsProcessingException) as info:
        run(processing, parameters, feedback)
    assert "run the algorithm again with the same cache folder to resume" in str(info.value)
    status = cache_status(folder)
    assert status.state == "partial" and status.locked_by is None and status.total > 3
    # No tile starts after the cancel. The one being predicted is still committed, and so are the tiles
    # already predicted and waiting in the executor's bounded queue: post-processing runs at a lower
    # priority, so beside a model that keeps the cores busy they can be ready together just then.
    assert at_cancel[0] <= status.done <= at_cancel[0] + 1 + IN_FLIGHT

    logged = []
    feedback = QgsProcessingFeedback()
    feedback.pushInfo = logged.append
    run(processing, parameters, feedback)
    assert logged[0] == f"{status.done} of {status.total} tiles are already in {folder}; predicting the rest."
    ids = manifest_tile_ids(folder)
    assert len(ids) == len(set(ids)) == status.total
    assert cache_status(folder).state == "complete"


def test_area_of_interest_in_another_crs(processing, raster_path, model_path, tmp_path):
    # The left quarter of the image (x < 500008 m in EPSG:32633), given in WGS 84.
    aoi = QgsVectorLayer("Polygon?crs=EPSG:32633", "aoi", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromRect(QgsRectangle(500000, 5999968, 500008, 6000000)))
    aoi.dataProvider().addFeatures([feature])
    wgs84 = processing.run("native:reprojectlayer", {"INPUT": aoi, "TARGET_CRS": "EPSG:4326",
                                                     "OUTPUT": str(tmp_path / "aoi.gpkg")})["OUTPUT"]
    folder = tmp_path / "aoi_tcd"
    run(processing, {"INPUT": str(raster_path), "MODEL": str(model_path), "OUTPUT_FOLDER": str(folder),
                     "AOI": wgs84})
    crowns = read_crowns(folder)
    status = cache_status(folder)
    assert status.state == "complete" and status.total < 49
    assert crowns and all(c["centroid"][0] < 500000 + 12.0 for c in crowns)
    assert len(crowns) < 40

    outside = QgsVectorLayer("Polygon?crs=EPSG:32633", "far", "memory")
    feature.setGeometry(QgsGeometry.fromRect(QgsRectangle(600000, 5000000, 600010, 5000010)))
    outside.dataProvider().addFeatures([feature])
    with pytest.raises(QgsProcessingException, match="does not overlap the raster"):
        run(processing, {"INPUT": str(raster_path), "MODEL": str(model_path), "AOI": outside,
                         "OUTPUT_FOLDER": str(tmp_path / "far_tcd")})


@pytest.mark.usefixtures("layer_tree_view")
def test_batch_of_two_rasters_loads_styled_layers(processing, qgis_new_project, raster_path, model_path, tmp_path,
                                                  wait_for_tasks):
    from processing.gui.BatchAlgorithmDialog import BatchAlgorithmDialog

    second = tmp_path / "second" / "ortho2.tif"
    second.parent.mkdir()
    second.write_bytes(raster_path.read_bytes())
    dialog = BatchAlgorithmDialog(QgsApplication.processingRegistry().createAlgorithmById(ALG))
    panel = dialog.mainWidget()
    panel.addRow()
    context = QgsProcessingContext()
    for row, image in enumerate((raster_path, second)):
        panel.wrappers[row][panel.parameter_to_column["INPUT"]].setParameterValue(str(image), context)
        panel.wrappers[row][panel.parameter_to_column["MODEL"]].setParameterValue(str(model_path), context)
    assert panel.batchRowCount() == 2
    # Shown, as when a user presses Run: QGIS (3.24 and newer) deletes a hidden batch dialog, and with it the
    # batch's feedback, as its last row ends, and pytest-qgis delivers that deletion while the row's layers load.
    dialog.show()
    dialog.runAlgorithm()
    # QGIS 3.22 runs the rows inside runAlgorithm(); from 3.24 on they run as tasks after it returns.
    wait_for_tasks(300)
    for image in (raster_path, second):
        folder = image.with_name(f"{image.stem}_tcd")
        assert cache_status(folder).state == "complete", folder
        assert len(read_crowns(folder)) == 40
    layers = {layer.name(): layer for layer in QgsProject.instance().mapLayers().values()}
    assert set(layers) == {"crowns (ortho_tcd)", "canopy confidence (ortho_tcd)", "crowns (ortho2_tcd)",
                           "canopy confidence (ortho2_tcd)"}
    crowns = layers["crowns (ortho2_tcd)"]
    assert crowns.featureCount() == 40
    outlines = crowns.renderer().rootRule().children()[0]
    assert outlines.symbol().symbolLayer(0).brushStyle() == 0  # the plugin's style: outlines only
    confidence = layers["canopy confidence (ortho_tcd)"]
    assert isinstance(confidence, QgsRasterLayer)
    assert confidence.source().startswith("vrt://")  # never written back by GDAL
    assert confidence.renderer().type() == "singlebandpseudocolor"
    dialog.deleteLater()


@pytest.mark.usefixtures("per_tile_commits")
def test_a_run_outlives_its_feedback_and_provider(processing, plugin, tmp_path):
    """A run whose feedback is deleted and whose provider is removed meanwhile stops cleanly, resumable.

    As a batch row does when QGIS deletes the dialog or the plugin is unloaded while the row's task
    runs on. The algorithm runs on a thread of its own here, as Processing runs it, with QGIS's own
    code (which would use the feedback after the algorithm) left out.
    """
    model = slow_model(tmp_path / "slower.onnx", size=1024, matmuls=40)
    image = write_raster(tmp_path / "small.tif", crowns_image(160, 160, [(10, 12, 12), (90, 100, 12)]))
    folder = tmp_path / "small_tcd"
    parameters = {"INPUT": str(image), "MODEL": str(model), "OUTPUT_FOLDER": str(folder)}
    algorithm = QgsApplication.processingRegistry().algorithmById(ALG).create()
    feedback = QgsProcessingFeedback()
    raised = []

    def run_on_a_thread():
        context = QgsProcessingContext()  # a context belongs to the thread that made it
        try:
            algorithm.processAlgorithm(parameters, context, feedback)
        except QgsProcessingException as exc:
            raised.append(str(exc))
        except Exception as exc:  # any other exception is the failure this test looks for
            raised.append(repr(exc))

    thread = threading.Thread(target=run_on_a_thread)
    thread.start()
    deadline = time.monotonic() + 120
    while not ((folder / "tiles.jsonl").is_file() and cache_status(folder).done >= 1):
        assert time.monotonic() < deadline and thread.is_alive(), raised
        QgsApplication.processEvents()
        time.sleep(0.05)
    plugin.unload()  # QGIS deletes the provider
    sip.delete(feedback)  # as the batch dialog's feedback goes with the dialog
    thread.join(timeout=120)
    assert not thread.is_alive()
    QgsApplication.processEvents()
    assert len(raised) == 1 and "run the algorithm again with the same cache folder to resume" in raised[0], raised
    status = cache_status(folder)
    assert status.state == "partial" and status.locked_by is None
    plugin.initGui()  # the fixture unloads it again


def expected_heights(i, col):
    """Heights of crown square ``i`` in geographic_chm(nodata_crown=7): NULL over nodata or beyond the raster."""
    if i == 7 or col >= 40 * 6:
        return None, None
    return LEADER_M, crown_height(i)


def test_heights_from_a_canopy_height_raster(processing, raster_path, model_path, tmp_path):
    chm = geographic_chm(tmp_path / "chm.tif", SQUARES, nodata_crown=7)
    folder = tmp_path / "h_tcd"
    run(processing, {"INPUT": str(raster_path), "MODEL": str(model_path), "OUTPUT_FOLDER": str(folder),
                     "VECTOR_FORMAT": 1, "CANOPY_HEIGHT": str(chm)})
    crowns = crowns_by_square(folder / "crowns.gpkg", SQUARES, ("height_max_m", "height_p95_m", "height_src"))
    assert len(crowns) == 40
    for i, (col, _, _) in enumerate(SQUARES):
        assert (crowns[i]["height_max_m"], crowns[i]["height_p95_m"]) == expected_heights(i, col), i
        assert crowns[i]["height_src"] == "chm.tif"


def test_crown_heights_added_to_an_existing_layer(processing, tmp_path):
    chm = geographic_chm(tmp_path / "chm.tif", SQUARES, nodata_crown=7)
    layer = QgsVectorLayer("Polygon?crs=EPSG:32633&field=name:string(20)&field=height_max_m:double", "mine",
                           "memory")
    features = []
    for i, square in enumerate(SQUARES):
        feature = QgsFeature(layer.fields())
        feature.setGeometry(QgsGeometry.fromRect(QgsRectangle(*square_m(*square))))
        feature.setAttributes([f"tree {i}", 99.0])  # a stale height: overwritten
        features.append(feature)
    layer.dataProvider().addFeatures(features)
    out = processing.run("tcd:crownheights", {"INPUT": layer, "CANOPY_HEIGHT": str(chm),
                                              "OUTPUT": "TEMPORARY_OUTPUT"})["OUTPUT"]
    assert out.fields().names() == ["name", "height_max_m", "height_p95_m", "height_src"]
    plain = lambda value: None if value == NULL else value  # noqa: E731
    rows = {f["name"]: [plain(f[n]) for n in ("height_max_m", "height_p95_m", "height_src")]
            for f in out.getFeatures()}
    assert len(rows) == 40
    for i, (col, _, _) in enumerate(SQUARES):
        assert rows[f"tree {i}"] == [*expected_heights(i, col), "chm.tif"], i



def test_in_a_model_crowns_chain_into_crown_heights(processing, raster_path, model_path, tmp_path):
    """Model Builder: delineate, then add heights to its CROWNS output; the model's inputs feed both."""
    from qgis.core import (
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildParameterSource,
        QgsProcessingModelOutput,
        QgsProcessingModelParameter,
        QgsProcessingParameterFeatureSink,
        QgsProcessingParameterRasterLayer,
    )

    model = QgsProcessingModelAlgorithm("crowns and heights", "tests")
    for name in ("ortho", "chm"):
        model.addModelParameter(QgsProcessingParameterRasterLayer(name, name), QgsProcessingModelParameter(name))
    delineate = QgsProcessingModelChildAlgorithm("tcd:delineatecrowns")
    delineate.setChildId("delineate")
    delineate.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromModelParameter("ortho")])
    delineate.addParameterSources("MODEL", [QgsProcessingModelChildParameterSource.fromStaticValue(str(model_path))])
    delineate.addParameterSources("OUTPUT_FOLDER", [
        QgsProcessingModelChildParameterSource.fromStaticValue(str(tmp_path / "model_tcd"))])
    model.addChildAlgorithm(delineate)
    heights = QgsProcessingModelChildAlgorithm("tcd:crownheights")
    heights.setChildId("heights")
    heights.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromChildOutput("delineate",
                                                                                               "CROWNS")])
    heights.addParameterSources("CANOPY_HEIGHT", [QgsProcessingModelChildParameterSource.fromModelParameter("chm")])
    output = QgsProcessingModelOutput("crowns_with_heights")
    output.setChildOutputName("OUTPUT")
    heights.setModelOutputs({"crowns_with_heights": output})
    model.addChildAlgorithm(heights)
    assert any(isinstance(p, QgsProcessingParameterFeatureSink) for p in model.parameterDefinitions())
    sink = next(p.name() for p in model.parameterDefinitions() if isinstance(p, QgsProcessingParameterFeatureSink))

    chm = geographic_chm(tmp_path / "chm.tif", SQUARES, nodata_crown=7)
    target = tmp_path / "with_heights.gpkg"
    results = processing.run(model, {"ortho": str(raster_path), "chm": str(chm), sink: str(target)})
    layer = QgsVectorLayer(results[sink], "out", "ogr")
    assert layer.isValid() and layer.featureCount() == 40
    values = sorted((f["height_max_m"], f["height_p95_m"]) for f in layer.getFeatures() if f["height_max_m"] != NULL)
    assert len(values) == 29 and all(high == LEADER_M for high, _ in values)
