"""Fixtures for the plugin tests: real QGIS (pytest-qgis), real rasters, real ONNX models.

The worker runs with this interpreter (the dev venv sees onnxruntime, rasterio
and scipy), as the plugin finds it through ``dependencies.find_qgis_python()``.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[2]
for path in (ROOT, ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from onnx_models import _save, canopy_centres_model
from qgis.core import QgsApplication, QgsProject, QgsRasterLayer, QgsSettings
from rasters import crowns_image, write_raster

# 40 crowns of 12 px (1.2 m) on a 320 x 320 px image at 0.1 m (band 1 canopy, band 2 a
# dot at each crown's centre, for the crown test model): 64 px tiles with a 16 px
# overlap give 7 x 7 = 49 tiles.
SQUARES = [(10 + 40 * i, 12 + 40 * j, 12) for i in range(8) for j in range(5)]


@pytest.fixture
def raster_path(tmp_path) -> Path:
    return write_raster(tmp_path / "ortho.tif", crowns_image(320, 320, SQUARES), crs="EPSG:32633")


@pytest.fixture
def big_raster_path(tmp_path) -> Path:
    """640 x 640 px: 196 tiles of 64 px, for runs that must still be going when cancelled."""
    squares = [(10 + 40 * i, 12 + 40 * j, 12) for i in range(16) for j in range(16)]
    return write_raster(tmp_path / "big.tif", crowns_image(640, 640, squares), crs="EPSG:32633")


@pytest.fixture
def model_path(tmp_path) -> Path:
    return canopy_centres_model(tmp_path / "models" / "crowns.onnx", extra_metadata={"name": "crown test model"})


@pytest.fixture
def slow_model_path(tmp_path) -> Path:
    return slow_model(tmp_path / "models" / "slow.onnx")


def slow_model(path, *, size: int = 256, matmuls: int = 8) -> Path:
    """The passthrough model plus matrix products that depend on the input and add zero.

    Each tile costs ``matmuls`` products of ``size`` x ``size`` matrices, so a run
    lasts long enough to be cancelled or killed halfway.
    """
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "size", "size"])
    y = helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 2, "size", "size"])
    nodes = [
        helper.make_node("Slice", ["image", "s0", "s1", "ax"], ["tree0"]),
        helper.make_node("ReduceMean", ["image"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["w", "mean"], ["m0"]),
    ]
    for i in range(matmuls):
        nodes.append(helper.make_node("MatMul", [f"m{i}", "half"], [f"m{i + 1}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"m{matmuls}"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["tree0", "nothing"], ["tree"]),
        helper.make_node("Sub", ["one", "tree"], ["bg"]),
        helper.make_node("Concat", ["bg", "tree"], ["probs"], axis=1),
    ]
    inits = [
        numpy_helper.from_array(np.array([0], np.int64), "s0"),
        numpy_helper.from_array(np.array([1], np.int64), "s1"),
        numpy_helper.from_array(np.array([1], np.int64), "ax"),
        numpy_helper.from_array(np.full((size, size), 0.01, np.float32), "w"),
        numpy_helper.from_array((np.eye(size) * 0.5).astype(np.float32), "half"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    graph = helper.make_graph(nodes, "slow_passthrough", [x], [y], inits)
    meta = {"name": "slow passthrough test model", "output_kind": "semantic", "class_names": ["background", "tree"],
            "gsd_m": 0.1, "tile_size_px": 64, "overlap_px": 16, "bands": [1, 2, 3], "scale": 1 / 255, "mean": 0.0,
            "std": 1.0, "seg_thresh": 0.5}
    return _save(graph, path, meta)


@pytest.fixture
def settings():
    """Start each test with no remembered runs or models, and leave none behind."""
    QgsSettings().remove("tcd")
    yield QgsSettings()
    QgsSettings().remove("tcd")


@pytest.fixture
def raster_layer(qgis_new_project, raster_path, qgis_iface) -> QgsRasterLayer:
    layer = QgsRasterLayer(str(raster_path), "ortho", "gdal")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    qgis_iface.setActiveLayer(layer)
    return layer


@pytest.fixture
def plugin(qgis_iface, settings):
    from tcd_qgis_plugin.plugin import TCDPlugin

    plugin = TCDPlugin(qgis_iface)
    plugin.initGui()
    qgis_iface.messageBar().clear_messages()
    yield plugin
    plugin.unload()


@pytest.fixture
def wait_for_tasks():
    """A function that processes events until the task manager has no active task."""
    return _wait_for_tasks


def _wait_for_tasks(timeout_s: float = 120.0) -> None:
    import time

    manager = QgsApplication.taskManager()
    deadline = time.monotonic() + timeout_s
    while manager.countActiveTasks() and time.monotonic() < deadline:
        QgsApplication.processEvents()
        time.sleep(0.02)
    QgsApplication.processEvents()
    assert not manager.countActiveTasks(), "tasks still running after the timeout"
