"""Live layers on a real map canvas: a growing crowns layer never disappears from the screen.

A crowns Shapefile of ten thousand polygons grows by a few hundred every second
while the plugin's reload runs, as during a run; the canvas is grabbed every
30 ms, as a user's eye would see it, and the crowns' outline colour is counted in
each frame.
"""

import time

import numpy as np
import pytest
from osgeo import ogr, osr
from qgis.core import QgsApplication, QgsProject, QgsRectangle, QgsVectorLayer
from qgis.gui import QgsMapCanvas
from qgis.PyQt.QtGui import QColor, QImage

from tcd_qgis_plugin.core.layers import SteadyCanvas, _reload
from tcd_qgis_plugin.paths import style_path

SIDE = 120  # crowns per row; 14,400 in all
ORIGIN = (500000.0, 6000000.0)


def add_rows(layer, first: int, last: int) -> None:
    for row in range(first, last):
        for col in range(SIDE):
            x, y = ORIGIN[0] + col * 10, ORIGIN[1] + row * 10
            feature = ogr.Feature(layer.GetLayerDefn())
            feature.SetField("id", row * SIDE + col)
            feature.SetGeometry(ogr.CreateGeometryFromWkt(
                f"POLYGON(({x} {y},{x + 6} {y},{x + 6} {y + 6},{x} {y + 6},{x} {y}))"))
            layer.CreateFeature(feature)
    layer.SyncToDisk()


def crown_pixels(image) -> int:
    """Pixels of the crowns style's yellow (outlines, or the centre dots, small and blended with the white)."""
    image = image.convertToFormat(QImage.Format.Format_RGB888)
    row_bytes = image.bytesPerLine()
    data = np.frombuffer(bytes(image.constBits().asstring(row_bytes * image.height())), np.uint8)
    rgb = data.reshape(image.height(), row_bytes)[:, : image.width() * 3].reshape(image.height(), image.width(), 3)
    red, green, blue = (rgb[..., i].astype(int) for i in range(3))
    return int(((red > 200) & (green > 170) & (blue < red - 60)).sum())


@pytest.fixture
def growing_crowns(tmp_path, qgis_new_project):
    path = tmp_path / "crowns.shp"
    source = ogr.GetDriverByName("ESRI Shapefile").CreateDataSource(str(path))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    writer = source.CreateLayer("crowns", srs, ogr.wkbPolygon)
    writer.CreateField(ogr.FieldDefn("id", ogr.OFTInteger))
    add_rows(writer, 0, 80)
    layer = QgsVectorLayer(str(path), "crowns", "ogr")
    layer.loadNamedStyle(str(style_path("crowns")))
    QgsProject.instance().addMapLayer(layer)
    yield layer, writer
    QgsProject.instance().removeMapLayer(layer.id())
    writer = source = None


def test_reloads_never_show_a_frame_without_the_crowns(growing_crowns):
    layer, writer = growing_crowns
    canvas = QgsMapCanvas()
    canvas.resize(800, 800)
    canvas.setCanvasColor(QColor("white"))
    canvas.setDestinationCrs(layer.crs())
    canvas.setLayers([layer])
    # 700 m across 800 px (about 1:3,400): the crowns style draws a dot per crown at this scale.
    canvas.setExtent(QgsRectangle(ORIGIN[0], ORIGIN[1], ORIGIN[0] + 700, ORIGIN[1] + 700))
    canvas.show()
    canvas.refresh()
    canvas.waitWhileRendering()
    steady = SteadyCanvas(canvas)
    steady.hold()  # what the plugin does while a run is live

    frames, reloads, row = [], 0, 80
    start = time.monotonic()
    next_reload = start + 1.0
    while time.monotonic() - start < 7.0:
        now = time.monotonic()
        if now >= next_reload:
            if row < SIDE:
                add_rows(writer, row, row + 5)
                row += 5
            if steady.busy():  # the plugin's refresh waits for the canvas to finish drawing
                next_reload = now + 0.2
            else:
                _reload(layer)
                reloads += 1
                next_reload = now + 1.0
        QgsApplication.processEvents()
        frames.append(crown_pixels(canvas.grab().toImage()))
        time.sleep(0.03)
    canvas.waitWhileRendering()
    steady.release()

    assert reloads >= 5 and layer.featureCount() > 80 * SIDE
    full = max(frames)
    blank = [i for i, pixels in enumerate(frames) if pixels < 0.9 * frames[0]]
    assert full > 1000 and not blank, f"{len(blank)} of {len(frames)} frames without the crowns"
    assert canvas.mapUpdateInterval() == 250  # the user's setting is back


def test_the_confidence_legend_reads_in_percent(raster_path):
    from qgis.core import QgsLayerTreeLayer, QgsRasterLayer

    layer = QgsRasterLayer(str(raster_path), "canopy confidence", "gdal")
    assert layer.loadNamedStyle(str(style_path("confidence")))[1]
    (ramp,) = [node for node in layer.legend().createLayerTreeModelLegendNodes(QgsLayerTreeLayer(layer))
               if type(node).__name__ == "QgsColorRampLegendNode"]
    # Without labels the legend prints the stored values, 0 and 255.
    assert (ramp.settings().minimumLabel(), ramp.settings().maximumLabel()) == ("0 %", "100 %")
