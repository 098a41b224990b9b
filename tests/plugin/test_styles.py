"""The layer styles read at every scale, drawn by QGIS over real imagery.

The bundled model delineates OSBS_029 (40 m of open pine forest, 0.1 m); the
image, its canopy confidence and its crowns are laid out 6 x 6 times side by side
(240 m), so that zoomed-out views hold as many crowns as a real forest would.
"""

from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import (
    QgsFeature,
    QgsGeometry,
    QgsRasterLayer,
    QgsVectorLayer,
)

from tcd_qgis_plugin.engine.run.predict import predict
from tcd_qgis_plugin.engine.settings import Job
from tcd_qgis_plugin.paths import style_path
from tests.maps import render_map

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "resources" / "sample" / "OSBS_029.tif"
COPIES = 6


@pytest.fixture(scope="module")
def forest(tmp_path_factory):
    """(image, confidence, crowns) layers over COPIES x COPIES copies of OSBS_029 and its run."""
    work = tmp_path_factory.mktemp("forest")
    cache = work / "osbs_tcd"
    predict(Job(image=SAMPLE, cache_dir=cache, threads=2))
    confidence = gdal.Translate(str(work / "confidence.tif"), str(cache / "confidence.vrt"))
    confidence = None  # noqa: F841 (closes the file)
    sample = gdal.Open(str(SAMPLE))
    width_px, height_px = sample.RasterXSize, sample.RasterYSize
    x0, gsd_m, _, y0, _, neg_gsd_m = sample.GetGeoTransform()
    sample = None
    mosaics = {}
    for name, source in (("image", SAMPLE), ("confidence", work / "confidence.tif")):
        parts = []
        for i in range(COPIES):
            for j in range(COPIES):
                part = work / f"{name}_{i}_{j}.tif"
                copy = gdal.Translate(str(part), str(source))
                origin = (x0 + i * width_px * gsd_m, y0 + j * height_px * neg_gsd_m)
                copy.SetGeoTransform([origin[0], gsd_m, 0, origin[1], 0, neg_gsd_m])
                copy = None
                parts.append(str(part))
        gdal.BuildVRT(str(work / f"{name}.vrt"), parts).FlushCache()
        mosaics[name] = QgsRasterLayer(str(work / f"{name}.vrt"), name, "gdal")
    crowns_one = QgsVectorLayer(str(cache / "crowns.shp"), "crowns", "ogr")
    crowns = QgsVectorLayer(f"Polygon?crs={crowns_one.crs().authid()}", "crowns", "memory")
    crowns.dataProvider().addAttributes(crowns_one.fields().toList())
    crowns.updateFields()
    features = []
    for i in range(COPIES):
        for j in range(COPIES):
            for feature in crowns_one.getFeatures():
                geometry = QgsGeometry(feature.geometry())
                geometry.translate(i * width_px * gsd_m, j * height_px * neg_gsd_m)
                copy = QgsFeature(crowns.fields())
                copy.setAttributes(feature.attributes())
                copy.setGeometry(geometry)
                features.append(copy)
    crowns.dataProvider().addFeatures(features)
    crowns.updateExtents()
    assert mosaics["confidence"].loadNamedStyle(str(style_path("confidence")))[1]
    assert crowns.loadNamedStyle(str(style_path("crowns")))[1]
    centre = (x0 + COPIES * width_px * gsd_m / 2, y0 + COPIES * height_px * neg_gsd_m / 2)
    layers = [mosaics["image"], mosaics["confidence"], crowns, centre]
    yield layers
    layers.clear()  # no layer may outlive QGIS's own shutdown at the end of the session
    mosaics.clear()
    del crowns, crowns_one


def render(layers, scale: float, centre, size_px: int = 400) -> np.ndarray:
    """The layers drawn at 1:``scale`` around ``centre`` into a square image, as an RGB array."""
    drawn, _settings = render_map(layers, scale, centre, size_px)
    image = drawn.convertToFormat(drawn.Format.Format_RGB888)
    row_bytes = image.bytesPerLine()
    data = np.frombuffer(bytes(image.constBits().asstring(row_bytes * size_px)), np.uint8)
    return data.reshape(size_px, row_bytes)[:, : size_px * 3].reshape(size_px, size_px, 3).astype(int)


def yellow(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0] > 200) & (rgb[..., 1] > 180) & (rgb[..., 2] < 80)


def test_confidence_shows_as_magenta_over_the_forest_and_clear_elsewhere(forest):
    image, confidence, _crowns, centre = forest
    under = render([image], 400, centre)
    over = render([confidence, image], 400, centre)
    values = render([QgsRasterLayer(confidence.source(), "raw", "gdal")], 400, centre)[..., 0]  # grey: the value
    canopy = values >= 0.8 * 255
    open_ground = values <= 0.3 * 255
    assert canopy.mean() > 0.05 and open_ground.mean() > 0.05
    # Over the canopy the forest's green gives way: red and blue above green, unlike in the image.
    assert (under[canopy][:, 1] > under[canopy][:, 0]).mean() > 0.5  # the image's canopy is green
    tinted = over[canopy]
    assert (tinted[:, 0] > tinted[:, 1] + 30).mean() > 0.9 and (tinted[:, 2] > tinted[:, 1]).mean() > 0.9
    # Where the model sees no canopy the image shows unchanged.
    assert np.abs(over[open_ground] - under[open_ground]).max() <= 2


@pytest.mark.parametrize(("scale", "most"), [(1500, 0.08), (3600, 0.04)])
def test_crown_centres_thin_out_as_the_map_zooms_out(forest, scale, most):
    image, _confidence, crowns, centre = forest
    drawn = render([crowns, image], scale, centre)
    alone = render([image], scale, centre)
    markers = yellow(drawn) & ~yellow(alone)
    # Dots on the crowns' centres, fewer of the view as it zooms out: the image stays readable (dots of
    # a fixed size on screen covered 9 % of it at 1:1,500 and 18 % at 1:3,600, a yellow carpet).
    assert 0.003 < markers.mean() < most, markers.mean()
