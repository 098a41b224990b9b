"""Processing ``tcd:evaluatecrowns`` and ``tcd:finetunemodel`` in real QGIS, on real layers, with real runs.

The cache is the bundled model's prediction of the sample raster; the reference
layers are its crowns written back with OGR in other CRSs and opened as QGIS layers.
Fine-tuning runs the real child process (``python -m engine finetune``) for two steps.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest
from qgis.core import (
    QgsApplication,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)

from tcd_qgis_plugin import dependencies
from tcd_qgis_plugin.core.user_models import user_models, user_models_dir
from tcd_qgis_plugin.engine.doctor import Requirement
from tcd_qgis_plugin.engine.run.predict import predict
from tcd_qgis_plugin.engine.settings import Job
from tcd_qgis_plugin.gui.dialog import PredictDialog
from tcd_qgis_plugin.gui.runs_panel import RunsPanel
from tests.reference_layers import write_crowns_as, write_layer

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "resources" / "sample" / "OSBS_029.tif"


@pytest.fixture
def processing(qgis_processing, plugin):
    import processing

    return processing


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    cache_dir = tmp_path_factory.mktemp("pe") / "OSBS_029_tcd"
    predict(Job(image=SAMPLE, cache_dir=cache_dir))
    return cache_dir


def run(processing, alg, parameters, feedback=None):
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    return processing.run(alg, parameters, context=context, feedback=feedback or QgsProcessingFeedback())


def layer(path: Path, name: str) -> QgsVectorLayer:
    result = QgsVectorLayer(str(path), name, "ogr")
    assert result.isValid()
    QgsProject.instance().addMapLayer(result)
    return result


def test_both_algorithms_are_in_the_provider(processing):
    registry = QgsApplication.processingRegistry()
    for alg_id, title in (("tcd:evaluatecrowns", "Evaluate crowns against a reference"),
                          ("tcd:finetunemodel", "Fine-tune a model on your crowns")):
        alg = registry.algorithmById(alg_id)
        assert alg is not None and alg.displayName() == title


def test_evaluate_a_cache_against_a_layer_in_another_crs(processing, qgis_new_project, cache, tmp_path):
    reference = layer(write_crowns_as(tmp_path / "mine.gpkg", cache / "crowns.shp", "polygon", "EPSG:4326"), "mine")
    result = run(processing, "tcd:evaluatecrowns", {"CACHE": str(cache), "REFERENCE": reference})
    assert result["F1"] == 1.0 and result["PRECISION"] == 1.0 and result["MEAN_IOU"] > 0.999
    evaluation = QgsVectorLayer(result["EVALUATION"], "e", "ogr")
    assert evaluation.isValid() and {f["status"] for f in evaluation.getFeatures()} == {"matched"}
    figures = json.loads((cache / "evaluation.json").read_text())
    assert figures["reference"] == "mine" and figures["f1"] == 1.0
    # The runs panel shows the figures with that cache.
    panel = RunsPanel()
    text = panel.evaluation_text(cache)
    assert "Against mine (polygons): precision 1.000, recall 1.000, F1 1.000" in text
    assert panel.evaluation_text(tmp_path) == ""
    panel.deleteLater()
    # Tree tops from a shapefile: the points layer is written and styled too.
    tops = layer(write_crowns_as(tmp_path / "tops.shp", cache / "crowns.shp", "point", "EPSG:3857"), "tops")
    result = run(processing, "tcd:evaluatecrowns", {"CACHE": str(cache), "REFERENCE": tops})
    assert result["F1"] == 1.0 and result["MEAN_IOU"] is None
    points = QgsVectorLayer(f"{cache / 'evaluation.gpkg'}|layername=reference_points", "p", "ogr")
    assert points.isValid() and points.featureCount() == reference.featureCount()


def test_evaluate_a_raster_predicts_it_first(processing, qgis_new_project, cache, tmp_path):
    image = tmp_path / "plot.tif"
    image.write_bytes(SAMPLE.read_bytes())
    raster = QgsRasterLayer(str(image), "plot")
    assert raster.isValid()
    QgsProject.instance().addMapLayer(raster)
    reference = layer(write_crowns_as(tmp_path / "ref.gpkg", cache / "crowns.shp", "box"), "ref")
    result = run(processing, "tcd:evaluatecrowns", {"INPUT": raster, "REFERENCE": reference})
    assert (tmp_path / "plot_tcd" / "evaluation.gpkg").is_file()
    assert result["F1"] == 1.0  # the same model on the same pixels: the same crowns


def test_bad_reference_is_one_sentence_and_changes_nothing(processing, qgis_new_project, cache, tmp_path):
    before = (cache / "evaluation.json").read_bytes() if (cache / "evaluation.json").exists() else None
    far = write_layer(tmp_path / "far.gpkg", SAMPLE, [[9000, 9000, 9040, 9040]], "box")
    with pytest.raises(QgsProcessingException, match="None of the 1 feature of the reference layer far lies over "
                                                      "the raster"):
        run(processing, "tcd:evaluatecrowns", {"CACHE": str(cache), "REFERENCE": layer(far, "far")})
    after = (cache / "evaluation.json").read_bytes() if (cache / "evaluation.json").exists() else None
    assert after == before


def test_fine_tune_from_processing_lands_in_the_model_list(processing, qgis_new_project, cache, tmp_path, qgis_canvas):
    raster = QgsRasterLayer(str(SAMPLE), "osbs")
    QgsProject.instance().addMapLayer(raster)
    mine = layer(write_crowns_as(tmp_path / "mine.shp", cache / "crowns.shp", "polygon", "EPSG:3857"), "mine")
    feedback = QgsProcessingFeedback()
    progress = []
    feedback.progressChanged.connect(progress.append)
    result = run(processing, "tcd:finetunemodel", {"INPUT": raster, "REFERENCE": mine, "ITERATIONS": 2}, feedback)
    out = Path(result["OUTPUT"])
    assert out.parent == user_models_dir() and out.name == "OSBS_029_finetuned.onnx" and out.is_file()
    assert 0 <= result["F1_BEFORE"] <= 1 and 0 <= result["F1_AFTER"] <= 1
    assert progress and max(progress) == 100.0
    assert out in user_models()
    gc.collect()
    from tcd_qgis_plugin.core.runs import RunRegistry

    dialog = PredictDialog(RunRegistry(), qgis_canvas)
    paths = [dialog.model_combo.itemData(i) for i in range(dialog.model_combo.count())]
    assert str(out) in paths
    label = dialog.model_combo.itemText(paths.index(str(out)))
    assert label.startswith("TCD default (CrownNet, NEON 0.1 m), fine-tuned on OSBS_029")
    dialog.deleteLater()
    out.unlink()


def test_fine_tune_refuses_points_and_missing_torch_in_one_sentence(processing, qgis_new_project, cache, tmp_path,
                                                                    monkeypatch):
    raster = QgsRasterLayer(str(SAMPLE), "osbs")
    QgsProject.instance().addMapLayer(raster)
    tops = layer(write_crowns_as(tmp_path / "tops.gpkg", cache / "crowns.shp", "point"), "tops")
    out = tmp_path / "never.onnx"
    with pytest.raises(QgsProcessingException, match="^Fine-tuning needs crown polygons or boxes; tops.gpkg holds "
                                                     "tree-top points, which can only score crowns.$"):
        run(processing, "tcd:finetunemodel", {"INPUT": raster, "REFERENCE": tops, "ITERATIONS": 1,
                                              "OUTPUT": str(out)})
    assert not out.exists()
    # A QGIS without PyTorch: the real check of a requirement that is not installed.
    absent = dependencies.doctor.missing([Requirement(name="tcd-no-such-torch")])
    assert absent
    monkeypatch.setattr(dependencies, "missing_for_finetune", lambda: absent)
    with pytest.raises(QgsProcessingException, match="Fine-tuning needs the Python packages tcd-no-such-torch: "
                                                     "choose Raster ▸ Tree crown delineation ▸ Install PyTorch"):
        run(processing, "tcd:finetunemodel", {"INPUT": raster, "REFERENCE": tops, "OUTPUT": str(out)})


def test_pytorch_installs_as_a_cpu_build_with_qgis_numpy_pinned(tmp_path):
    reqs = dependencies.finetune_requirements()
    assert [r.name for r in reqs] == ["torch", "onnx", "Pillow"]
    assert dependencies.missing_for_finetune() == []  # the dev venv has them
    task = dependencies.InstallTask(["torch>=2.1"], tmp_path / "deps", None, None, None, reqs)
    task.extra_index_url = dependencies.TORCH_CPU_INDEX
    command = task.manual_command("python3")
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in command
    assert f"--constraint {task.constraints}" in command and "numpy" in task.pins
