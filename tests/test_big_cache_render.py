"""Big caches in real QGIS (pytest-qgis): the mosaic's overviews are what QGIS reads when zoomed out, also
after a live reload; the crowns style draws outlines, then centres, then nothing as the map zooms out;
the crowns' spatial index is there for QGIS and follows a resumed run.
"""

import numpy as np
import pytest
from qgis.core import (
    QgsFeatureRequest,
    QgsFeatureSource,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)

import engine.cache.semantic as semantic
from engine.cache.status import cache_layers
from engine.cache.vrt import MosaicGeometry
from engine.run.predict import predict
from engine.settings import Job
from tcd_qgis_plugin.core.layers import _reload, layer_source
from tcd_qgis_plugin.paths import style_path
from tests.maps import render_map
from tests.rasters import crowns_image, read_overviews, write_raster

GSD_M = 0.1
ORIGIN = (500000.0, 6000000.0)  # top-left of the conftest rasters


@pytest.fixture
def small_mosaic(monkeypatch):
    monkeypatch.setattr(semantic, "mosaic_geometry",
                        lambda core_px: MosaicGeometry(tile_px=32, leaf_tiles=2, leaf0_px=64, fanout=2))
    monkeypatch.setattr(semantic.GeotiffSemanticCache, "refresh_interval_s", 0.0)
    monkeypatch.setattr(semantic.GeotiffSemanticCache, "refresh_share", float("inf"))


def confidence_layer(cache) -> QgsRasterLayer:
    (entry,) = [e for e in cache_layers(cache) if e.kind == "raster"]
    layer = QgsRasterLayer(layer_source(entry), "canopy confidence", "gdal")  # as the plugin opens it
    assert layer.isValid()
    return layer


def block(layer, width: int, height: int) -> np.ndarray:
    """Band 1 of the whole layer as QGIS's provider reads it into ``width`` x ``height`` pixels."""
    data = layer.dataProvider().block(1, layer.extent(), width, height)
    return np.frombuffer(bytes(data.data()), np.uint8).reshape(height, width)


def test_qgis_reads_the_overviews_when_zoomed_out(tmp_path, crown_model, small_mosaic):
    # Crowns of odd size at odd places, so that averaged overview pixels differ from picked ones.
    squares = [(11 + 40 * i, 13 + 40 * j, 13) for i in range(8) for j in range(8)]
    image = write_raster(tmp_path / "odd.tif", crowns_image(320, 320, squares))
    cache = tmp_path / "c"
    predict(Job(image=image, cache_dir=cache, model=crown_model))
    layer = confidence_layer(cache)
    assert layer.dataProvider().hasPyramids()
    levels = read_overviews(cache)
    assert [level.shape[1:] for level in levels] == [(160, 160), (80, 80), (40, 40), (20, 20)]
    full = block(layer, 320, 320)
    for level in levels:
        h, w = level.shape[1:]
        shown = block(layer, w, h)
        np.testing.assert_array_equal(shown, level[0])  # the averaged overview, not every n-th pixel of the tiles
        assert not np.array_equal(shown, full[:: 320 // w, :: 320 // h])


def test_a_reloaded_layer_shows_new_tiles_at_every_scale(tmp_path, raster_path, crown_model, small_mosaic):
    cache = tmp_path / "c"
    job = Job(image=raster_path, cache_dir=cache, model=crown_model)
    predict(job, cancelled=iter([False] * 12 + [True] * 99).__next__)
    layer = confidence_layer(cache)
    before = [block(layer, 40, 40), block(layer, 320, 320)]
    np.testing.assert_array_equal(before[0], read_overviews(cache)[2][0])
    assert not before[0][-8:].any()  # the bottom rows are not predicted yet
    predict(job)
    _reload(layer)  # what the plugin does as tiles land
    after = [block(layer, 40, 40), block(layer, 320, 320)]
    np.testing.assert_array_equal(after[0], read_overviews(cache)[2][0])
    assert after[0][-8:].any() and after[1][-64:].any()


def render(layer, scale: float, centre: tuple[float, float], size_px: int = 200):
    """The layer drawn at 1:``scale`` around ``centre`` (map units: metres) into a square image."""
    return render_map([layer], scale, centre, size_px)


def yellow(colour) -> bool:
    return colour.red() > 200 and colour.green() > 180 and colour.blue() < 80


def test_crowns_style_draws_outlines_then_centres_then_nothing(tmp_path, raster_path, crown_model):
    predict(Job(image=raster_path, cache_dir=tmp_path / "c", model=crown_model))
    layer = QgsVectorLayer(str(tmp_path / "c" / "crowns.shp"), "crowns", "ogr")
    assert layer.loadNamedStyle(str(style_path("crowns")))[1]
    # conftest's first crown: 12 px (1.2 m) square at column 10, row 12.
    centre = (ORIGIN[0] + 16 * GSD_M, ORIGIN[1] - 18 * GSD_M)

    image, settings = render(layer, 100, centre)  # 1:100: 1.2 m is 45 px
    mid = image.width() // 2
    assert not yellow(image.pixelColor(mid, mid))  # outlines only, as before: the inside is not filled
    assert any(yellow(image.pixelColor(x, mid)) for x in range(mid, image.width()))

    image, _ = render(layer, 2000, centre)  # 1:2,000: a dot on each crown's centre
    assert yellow(image.pixelColor(mid, mid))
    dots = sum(yellow(image.pixelColor(x, y)) for x in range(image.width()) for y in range(image.height()))
    assert 40 * 4 <= dots <= 40 * 40  # forty dots of about 1.2 mm (4.5 px)

    image, _ = render(layer, 8000, centre)  # 1:8,000: not drawn (the confidence raster shows the canopy)
    assert not any(yellow(image.pixelColor(x, y)) for x in range(image.width()) for y in range(image.height()))
    assert layer.hasScaleBasedVisibility() and not layer.isInScaleRange(8000) and layer.isInScaleRange(2000)


@pytest.mark.parametrize("fmt", ["shp", "gpkg"])
def test_crowns_spatial_index_is_there_and_follows_a_resumed_run(tmp_path, raster_path, crown_model, fmt):
    cache = tmp_path / "c"
    job = Job(image=raster_path, cache_dir=cache, model=crown_model, vector_format=fmt)
    predict(job, cancelled=iter([False] * 20 + [True] * 99).__next__)
    (entry,) = [e for e in cache_layers(cache) if e.kind == "vector"]
    layer = QgsVectorLayer(layer_source(entry), "crowns", "ogr")
    assert layer.dataProvider().hasSpatialIndex() == QgsFeatureSource.SpatialIndexPresent
    bottom = QgsRectangle(ORIGIN[0], ORIGIN[1] - 19.0, ORIGIN[0] + 32.0, ORIGIN[1] - 17.0)  # the last row of crowns
    found = lambda: len(list(layer.getFeatures(QgsFeatureRequest().setFilterRect(bottom))))  # noqa: E731
    assert found() == 0
    predict(job)  # appends the rest while QGIS holds the layer (and its index) open
    _reload(layer)
    assert found() == 8
    assert layer.dataProvider().hasSpatialIndex() == QgsFeatureSource.SpatialIndexPresent
    assert layer.featureCount() == 40
