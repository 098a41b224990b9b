"""The prediction task: its two halves called directly, then once through the task manager.

Every run goes through a real worker process (``tcd_qgis_plugin.engine.worker``) with
a real ONNX model on a real GeoTIFF.
"""

import json
import os
import signal
import sys

import pytest
from qgis.core import Qgis, QgsApplication, QgsPointXY, QgsProject, QgsRasterLayer, QgsVectorLayer

from tcd_qgis_plugin import dependencies
from tcd_qgis_plugin.core.layers import CacheLayerGroup
from tcd_qgis_plugin.core.task import PredictionTask
from tcd_qgis_plugin.engine.cache.status import cache_status
from tcd_qgis_plugin.engine.settings import Job

TOTAL = 169  # tiles of big_raster_path: 64 px tiles, 16 px overlap, 640 x 640 px


def manifest_tile_ids(cache_dir) -> list[int]:
    lines = (cache_dir / "tiles.jsonl").read_text().splitlines()[1:]
    return [json.loads(line)["tile_id"] for line in lines]


def make_task(job) -> PredictionTask:
    return PredictionTask(job, dependencies.find_qgis_python(), dependencies.worker_environment())


def group_layers(cache_dir):
    group = QgsProject.instance().layerTreeRoot().findGroup(cache_dir.name)
    assert group is not None, "no layer group for the run"
    return [node.layer() for node in group.findLayers()]


def test_run_then_finished_adds_styled_layers(plugin, raster_layer, raster_path, model_path, tmp_path, qgis_iface):
    job = Job(image=raster_path, cache_dir=tmp_path / "ortho_tcd", model=model_path, threads=1)
    plugin.registry.remember_job(job)
    task = make_task(job)
    seen = []
    task.tilesCommitted.connect(seen.append)
    task.tilesCommitted.connect(plugin._tiles_committed)
    task.runEnded.connect(plugin._run_ended)
    plugin.tasks[job.cache_dir.resolve()] = task
    plugin.groups[job.cache_dir.resolve()] = CacheLayerGroup(QgsProject.instance(), job.cache_dir)

    assert task.run() is True
    assert task.worker_pid is not None and task.worker_pid != os.getpid()
    assert [p.done for p in seen] == sorted(p.done for p in seen)
    assert seen[-1].done == seen[-1].total == 49
    # The layers appeared with the first tiles, before the run ended.
    assert len(group_layers(job.cache_dir)) == 2

    task.finished(True)
    assert task.outcome.state == "complete"
    assert task.outcome.features == 40
    confidence, crowns = sorted(group_layers(job.cache_dir), key=lambda layer: layer.type())
    assert isinstance(crowns, QgsVectorLayer) or isinstance(confidence, QgsVectorLayer)
    raster = confidence if isinstance(confidence, QgsRasterLayer) else crowns
    vector = crowns if raster is confidence else confidence
    assert raster.isValid() and vector.isValid()
    assert raster.renderer().type() == "singlebandpseudocolor"
    shader = raster.renderer().shader().rasterShaderFunction()
    assert shader.colorRampItemList()[0].color.alpha() == 0  # no confidence: transparent
    top = shader.colorRampItemList()[-1].color  # full confidence: magenta, not the forest's green
    assert top.red() > top.green() and top.blue() > top.green()
    outlines = vector.renderer().rootRule().children()[0]  # the crowns style's rule when zoomed in
    assert outlines.symbol().symbolLayer(0).brushStyle() == 0  # Qt.NoBrush: outlines only
    assert vector.featureCount() == 40
    # Loaded when only the first tile existed, the raster shows the last tiles after the reloads.
    value, ok = raster.dataProvider().sample(QgsPointXY(500000 + 296 * 0.1, 6000000 - 178 * 0.1), 1)
    assert ok and value == 230
    # QGIS must never write the engine's mosaic back (GDAL saves statistics into an open VRT on close).
    mosaic = (job.cache_dir / "confidence.vrt").read_text()
    QgsProject.instance().removeAllMapLayers()
    QgsApplication.processEvents()  # also shows the result, on the next turn of the event loop
    assert (job.cache_dir / "confidence.vrt").read_text() == mosaic
    assert qgis_iface.messageBar().get_messages(Qgis.Success)
    assert plugin.registry.failure(job.cache_dir) is None


def test_a_failing_job_reports_one_sentence(plugin, raster_layer, raster_path, tmp_path, qgis_iface):
    from tests.onnx_models import passthrough_model

    five_bands = passthrough_model(tmp_path / "five.onnx", n_bands=5)
    job = Job(image=raster_path, cache_dir=tmp_path / "fails", model=five_bands, threads=1)
    plugin.registry.remember_job(job)  # as start_run does
    task = make_task(job)
    task.runEnded.connect(plugin._run_ended)
    plugin.tasks[job.cache_dir.resolve()] = task
    assert task.run() is False
    task.finished(False)
    assert task.outcome.state == "failed"
    assert task.outcome.message == "The model needs bands 1, 2, 3, 4, 5 but ortho.tif has 3 bands."
    assert "RasterError" in task.outcome.details
    QgsApplication.processEvents()
    critical = qgis_iface.messageBar().get_messages(Qgis.Critical)
    assert any("needs bands 1, 2, 3, 4, 5" in m for m in critical)
    # Refused before it wrote anything: the runs panel keeps no row for a run that never started.
    assert not (job.cache_dir / "tiles.jsonl").exists()
    assert plugin.registry.caches() == [] and plugin.run_rows() == []


def test_cancel_mid_run_leaves_a_resumable_cache(plugin, qgis_new_project, big_raster_path, slow_model_path,
                                                 tmp_path):
    job = Job(image=big_raster_path, cache_dir=tmp_path / "big_tcd", model=slow_model_path, threads=1)
    task = make_task(job)
    task.tilesCommitted.connect(lambda p: p.done >= 3 and task.cancel())
    assert task.run() is False
    task.finished(False)
    assert task.outcome.state == "cancelled", task.outcome
    status = cache_status(job.cache_dir)
    assert status.state == "partial"
    assert 3 <= status.done < status.total == TOTAL
    assert status.locked_by is None

    resumed = make_task(job)
    seen = []
    resumed.tilesCommitted.connect(seen.append)
    # The resumed run starts from the committed tiles; it only predicts the rest.
    assert resumed.run() is True, resumed.outcome
    assert seen[0].done == status.done
    assert all(p.done > status.done for p in seen[1:])
    ids = manifest_tile_ids(job.cache_dir)
    assert len(ids) == len(set(ids)) == TOTAL
    assert cache_status(job.cache_dir).state == "complete"


@pytest.mark.usefixtures("per_tile_commits")
def test_a_killed_worker_fails_the_run_and_resume_finishes_it(plugin, qgis_new_project, big_raster_path,
                                                              slow_model_path, tmp_path, qgis_iface, wait_for_tasks):
    job = Job(image=big_raster_path, cache_dir=tmp_path / "killed_tcd", model=slow_model_path, threads=1)
    plugin.registry.remember_job(job)
    task = make_task(job)
    task.runEnded.connect(plugin._run_ended)
    plugin.tasks[job.cache_dir.resolve()] = task
    task.tilesCommitted.connect(lambda p: p.done == 2 and os.kill(task.worker_pid, signal.SIGKILL))
    assert task.run() is False
    task.finished(False)
    assert task.outcome.state == "failed"
    assert "SIGKILL" in task.outcome.message and "Resume" in task.outcome.message
    QgsApplication.processEvents()
    assert any("SIGKILL" in m for m in qgis_iface.messageBar().get_messages(Qgis.Critical))
    status = cache_status(job.cache_dir)
    assert status.state == "partial" and status.done >= 2
    assert [row.state for row in plugin.run_rows()] == ["failed"]

    resumed = plugin.resume(job.cache_dir)
    wait_for_tasks()
    assert resumed.outcome.state == "complete", resumed.outcome
    ids = manifest_tile_ids(job.cache_dir)
    assert len(ids) == len(set(ids)) == TOTAL
    assert [row.state for row in plugin.run_rows()] == ["complete"]


@pytest.mark.parametrize("vector_format", ["shp", "gpkg"])
def test_through_the_task_manager(plugin, raster_layer, raster_path, model_path, tmp_path, qgis_iface,
                                  wait_for_tasks, vector_format):
    job = Job(image=raster_path, cache_dir=tmp_path / "managed_tcd", model=model_path, vector_format=vector_format,
              threads=1)
    task = plugin.start_run(job)
    assert task is not None
    assert QgsApplication.taskManager().tasks() and task in QgsApplication.taskManager().tasks()
    assert plugin.start_run(job) is None  # a second run into the same cache is refused
    assert any("already going on" in m for m in qgis_iface.messageBar().get_messages(Qgis.Warning))
    wait_for_tasks()
    assert task.outcome.state == "complete"
    layers = group_layers(job.cache_dir)
    assert sorted(layer.name() for layer in layers) == ["canopy confidence", "crowns"]
    assert all(layer.isValid() for layer in layers)
    crowns = next(layer for layer in layers if layer.name() == "crowns")
    assert crowns.featureCount() == 40
    assert crowns.source().split("|")[0].endswith(f"crowns.{vector_format}")
    assert not plugin.tasks
    assert any("Delineated 40 crowns" in m for m in qgis_iface.messageBar().get_messages(Qgis.Success))


def test_unload_during_a_run_cancels_it_cleanly(qgis_iface, settings, qgis_new_project, big_raster_path,
                                                slow_model_path, tmp_path, wait_for_tasks):
    from tcd_qgis_plugin.plugin import TCDPlugin

    plugin = TCDPlugin(qgis_iface)
    plugin.initGui()
    job = Job(image=big_raster_path, cache_dir=tmp_path / "unload_tcd", model=slow_model_path, threads=1)
    task = plugin.start_run(job)
    while not (job.cache_dir / "tiles.jsonl").exists() or cache_status(job.cache_dir).done < 1:
        QgsApplication.processEvents()
    plugin.unload()
    wait_for_tasks()
    assert task.outcome.state == "cancelled"
    status = cache_status(job.cache_dir)
    assert status.state == "partial" and status.locked_by is None
    assert sys.modules["tcd_qgis_plugin.plugin"]  # nothing was torn down under the task


def test_closing_the_project_cancels_the_run(plugin, raster_layer, big_raster_path, slow_model_path, tmp_path,
                                             wait_for_tasks):
    job = Job(image=big_raster_path, cache_dir=tmp_path / "closed_tcd", model=slow_model_path, threads=1)
    task = plugin.start_run(job)
    while not (job.cache_dir / "tiles.jsonl").exists() or cache_status(job.cache_dir).done < 1:
        QgsApplication.processEvents()
    QgsProject.instance().clear()
    wait_for_tasks()
    assert task.outcome.state == "cancelled"
    assert cache_status(job.cache_dir).state == "partial"
    assert not QgsProject.instance().mapLayers()  # nothing was added to the new, empty project
    assert QgsProject.instance().layerTreeRoot().findGroup("closed_tcd") is None


def test_removing_the_raster_layer_during_a_run_does_not_disturb_it(plugin, raster_layer, raster_path, model_path,
                                                                     tmp_path, qgis_iface, wait_for_tasks):
    # The task holds the raster's path and a frozen job, never the layer.
    job = Job(image=raster_path, cache_dir=tmp_path / "removed_tcd", model=model_path, threads=1)
    task = plugin.start_run(job)
    QgsProject.instance().removeMapLayer(raster_layer.id())
    QgsApplication.processEvents()
    wait_for_tasks()
    assert task.outcome.state == "complete" and task.outcome.features == 40
    assert sorted(layer.name() for layer in group_layers(job.cache_dir)) == ["canopy confidence", "crowns"]
    assert not qgis_iface.messageBar().get_messages(Qgis.Critical)


def test_a_fresh_shapefile_layer_gets_its_fields_with_the_first_crown(plugin, raster_layer, tmp_path, model_path,
                                                                      wait_for_tasks):
    # Crowns only in the lower half: the first tiles commit no crown, so the layer is added while
    # crowns.dbf has no field list yet (the Shapefile driver writes it with the first record).
    from tests.rasters import crowns_image, write_raster

    squares = [(10 + 40 * i, 180 + 40 * j, 12) for i in range(8) for j in range(3)]
    image = write_raster(tmp_path / "south.tif", crowns_image(320, 320, squares), crs="EPSG:32633")
    job = Job(image=image, cache_dir=tmp_path / "south_tcd", model=model_path, threads=1)
    seen = []
    task = plugin.start_run(job)
    task.tilesCommitted.connect(lambda p: seen.append([f.name() for f in crowns_layer(job).fields()]
                                                      if crowns_layer(job) else None))
    wait_for_tasks()
    assert task.outcome.state == "complete" and task.outcome.features == 24, task.outcome
    assert seen and seen[0] is not None and seen[0] == [], "the layer was not added before the first crown"
    layer = crowns_layer(job)
    on_disk = QgsVectorLayer(layer.source(), "file", "ogr").fields().names()
    assert on_disk[:5] == ["id", "score", "class", "class_idx", "tile_id"]
    assert [f.name() for f in layer.fields()] == on_disk
    assert layer.featureCount() == 24
    assert {f["tile_id"] for f in layer.getFeatures()} and all(f["id"] is not None for f in layer.getFeatures())
    outlines = layer.renderer().rootRule().children()[0]
    assert outlines.symbol().symbolLayer(0).brushStyle() == 0  # still the crowns style: outlines only


def crowns_layer(job):
    group = QgsProject.instance().layerTreeRoot().findGroup(job.cache_dir.name)
    layers = [] if group is None else [n.layer() for n in group.findLayers() if n.layer().name() == "crowns"]
    return layers[0] if layers else None


def test_a_run_leaves_no_unclosed_file(qgis_new_project, raster_path, model_path, tmp_path):
    import gc
    import warnings

    job = Job(image=raster_path, cache_dir=tmp_path / "closed_files_tcd", model=model_path, threads=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        task = make_task(job)
        assert task.run() is True
        task.finished(True)
        del task
        gc.collect()
    assert not [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
