"""Drawing layers as QGIS draws them, for tests that look at what a user would see."""

from qgis.core import QgsMapRendererSequentialJob, QgsMapSettings, QgsRectangle
from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtGui import QColor

INCH_M = 0.0254
DPI = 96


def render_map(layers, scale: float, centre: tuple[float, float], size_px: int):
    """``layers`` drawn at 1:``scale`` around ``centre`` (map units: metres, in the last layer's CRS)
    into a square image ``size_px`` wide on white; returns the QImage and the map settings."""
    settings = QgsMapSettings()
    settings.setLayers(layers)
    settings.setDestinationCrs(layers[-1].crs())
    settings.setOutputSize(QSize(size_px, size_px))
    settings.setOutputDpi(DPI)
    settings.setBackgroundColor(QColor(255, 255, 255))
    half = scale * size_px / DPI * INCH_M / 2
    settings.setExtent(QgsRectangle(centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    return job.renderedImage(), settings
