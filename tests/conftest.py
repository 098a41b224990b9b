"""Shared fixtures: real rasters, real ONNX models, and real QGIS (pytest-qgis) for the plugin tests.

The worker runs with this interpreter (the dev venv sees onnxruntime, rasterio
and scipy), as the plugin finds it through ``dependencies.find_qgis_python()``.
"""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path

import pytest
from qgis.core import QgsApplication, QgsProject, QgsRasterLayer, QgsSettings

from tests.onnx_models import canopy_centres_model, passthrough_model, slow_model
from tests.rasters import crowns_image, write_raster

# 40 crowns of 12 px (1.2 m) on a 320 x 320 px image at 0.1 m (band 1 canopy, band 2 a
# dot at each crown's centre, for the crown test model): 64 px tiles with a 16 px
# overlap give 7 x 7 = 49 tiles.
SQUARES = [(10 + 40 * i, 12 + 40 * j, 12) for i in range(8) for j in range(5)]


@pytest.fixture
def per_tile_commits(monkeypatch):
    """Commit every tile at once, here and in child processes, for tests that act after each tile.

    Runs group the commits of fast tiles (see engine.cache.store.Cache.group_s); tests that
    cancel or kill a run after n tiles need each tile committed (and reported) on its own.
    """
    from engine.cache import store
    from tcd_qgis_plugin.engine.cache import store as plugin_store  # the same file under the plugin's name

    monkeypatch.setattr(store.Cache, "group_s", 0.0)
    monkeypatch.setattr(plugin_store.Cache, "group_s", 0.0)
    monkeypatch.setenv("TCD_COMMIT_GROUP_S", "0")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """Semantic model: P(tree) = band 1 / 255 on 64 px tiles with a 16 px overlap."""
    return passthrough_model(tmp_path_factory.mktemp("m") / "passthrough.onnx", tile_size_px=64, overlap_px=16)


@pytest.fixture(scope="module")
def crown_model(tmp_path_factory) -> Path:
    """Crown model: canopy = band 1 / 255, crown centres = band 2 / 255, 64 px tiles, 16 px overlap."""
    return canopy_centres_model(tmp_path_factory.mktemp("m") / "crowns.onnx", tile_size_px=64, overlap_px=16)


@pytest.fixture
def raster_path(tmp_path) -> Path:
    return write_raster(tmp_path / "ortho.tif", crowns_image(320, 320, SQUARES), crs="EPSG:32633")


@pytest.fixture
def big_raster_path(tmp_path) -> Path:
    """640 x 640 px: 169 tiles of 64 px, for runs that must still be going when cancelled."""
    squares = [(10 + 40 * i, 12 + 40 * j, 12) for i in range(16) for j in range(16)]
    return write_raster(tmp_path / "big.tif", crowns_image(640, 640, squares), crs="EPSG:32633")


@pytest.fixture
def model_path(tmp_path) -> Path:
    return canopy_centres_model(tmp_path / "models" / "crowns.onnx", extra_metadata={"name": "crown test model"})


@pytest.fixture
def slow_model_path(tmp_path) -> Path:
    return slow_model(tmp_path / "models" / "slow.onnx")


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
