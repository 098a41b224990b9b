"""``tcd:crownheights``: add crown heights from a canopy height raster to any polygon layer.

Each crown gets ``height_max_m``, ``height_p95_m`` (NULL where the raster has no
valid pixel under it, never 0) and ``height_src`` (the raster's file name),
measured by the same code the prediction worker uses per tile
(:mod:`tcd_qgis_plugin.engine.postprocess.heights`). The raster may have any CRS
and resolution. That code uses only GDAL's Python bindings and numpy, which QGIS
ships, so it runs here in QGIS's own process.
"""

from __future__ import annotations

from qgis.core import (
    QgsFeatureSink,
    QgsFields,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterRasterLayer,
    QgsVectorLayer,
)
from qgis.PyQt.QtGui import QIcon

from tcd_qgis_plugin.core.texts import translator
from tcd_qgis_plugin.engine.errors import TCDError
from tcd_qgis_plugin.engine.postprocess.heights import (
    HEIGHT_MAX,
    HEIGHT_P95,
    HEIGHT_SOURCE,
    CanopyHeightRaster,
    height_attributes,
)
from tcd_qgis_plugin.gui.dialog import raster_file
from tcd_qgis_plugin.paths import icon_path

INPUT = "INPUT"
CANOPY_HEIGHT = "CANOPY_HEIGHT"
OUTPUT = "OUTPUT"
BATCH = 256  # crowns measured per call


tr = translator("CrownHeightsAlgorithm")


def height_fields() -> QgsFields:
    """The three height fields. Made by a memory layer's URI: QgsField's type argument is a QVariant
    type in QGIS 3 and a QMetaType in QGIS 4, and the URI is the same in both."""
    uri = (f"None?field={HEIGHT_MAX}:double(12,3)&field={HEIGHT_P95}:double(12,3)"
           f"&field={HEIGHT_SOURCE}:string(254)")
    return QgsVectorLayer(uri, "heights", "memory").fields()


class CrownHeightsAlgorithm(QgsProcessingAlgorithm):
    def name(self) -> str:
        return "crownheights"

    def displayName(self) -> str:
        return tr("Add crown heights")

    def group(self) -> str:
        return ""

    def groupId(self) -> str:
        return ""

    def tags(self) -> list[str]:
        return tr("tree,crown,height,chm,ndsm,canopy height model,lidar").split(",")

    def icon(self) -> QIcon:
        return QIcon(str(icon_path()))

    def shortHelpString(self) -> str:
        return tr(
            "Adds height_max_m and height_p95_m (metres: the highest and the 95th percentile of the canopy "
            "height raster's pixels whose centres lie inside each crown) and height_src (the raster's file name) "
            "to every polygon of a crowns layer.\n\n"
            "The canopy height raster (a CHM or nDSM, heights above ground in metres) may have any CRS and "
            "resolution. A crown smaller than one of its pixels takes the pixels it touches. Where the raster "
            "has nodata, or does not reach a crown, its heights are NULL, never 0. Fields of these names "
            "already in the layer are overwritten.")

    def createInstance(self) -> CrownHeightsAlgorithm:
        return CrownHeightsAlgorithm()

    def initAlgorithm(self, config=None) -> None:
        self.addParameter(QgsProcessingParameterFeatureSource(
            INPUT, tr("Crowns"), [QgsProcessing.SourceType.TypeVectorPolygon]))
        self.addParameter(QgsProcessingParameterRasterLayer(
            CANOPY_HEIGHT, tr("Canopy height raster (CHM or nDSM, metres)")))
        self.addParameter(QgsProcessingParameterFeatureSink(
            OUTPUT, tr("Crowns with heights"), QgsProcessing.SourceType.TypeVectorPolygon))

    def processAlgorithm(self, parameters, context, feedback):
        source = self.parameterAsSource(parameters, INPUT, context)
        if source is None:
            raise QgsProcessingException(self.invalidSourceError(parameters, INPUT))
        layer = self.parameterAsRasterLayer(parameters, CANOPY_HEIGHT, context)
        path = raster_file(layer)
        if path is None:
            raise QgsProcessingException(tr("The canopy height raster must be a raster file on disk."))
        try:
            raster = CanopyHeightRaster(path.absolute())
        except TCDError as exc:
            raise QgsProcessingException(str(exc)) from exc

        fields = QgsFields(source.fields())
        for f in height_fields():
            if fields.indexOf(f.name()) < 0:
                fields.append(f)
        indexes = {name: fields.indexOf(name) for name in (HEIGHT_MAX, HEIGHT_P95, HEIGHT_SOURCE)}
        sink, dest_id = self.parameterAsSink(parameters, OUTPUT, context, fields, source.wkbType(),
                                             source.sourceCrs())
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, OUTPUT))

        crs_wkt = source.sourceCrs().toWkt()
        total = source.featureCount() or 1
        done = measured = 0
        batch = []

        def flush() -> None:
            nonlocal done, measured
            heights = raster.crown_heights([bytes(f.geometry().asWkb()) for f in batch], crs_wkt)
            for feature, height in zip(batch, heights):
                attributes = feature.attributes() + [None] * (fields.count() - len(feature.attributes()))
                for name, value in height_attributes(height, raster.name).items():
                    attributes[indexes[name]] = value
                feature.setFields(fields, False)
                feature.setAttributes(attributes)
                if not sink.addFeature(feature, QgsFeatureSink.Flag.FastInsert):
                    raise QgsProcessingException(self.writeFeatureError(sink, parameters, OUTPUT))
                measured += height.max_m is not None
            done += len(batch)
            batch.clear()
            feedback.setProgress(100.0 * done / total)

        for feature in source.getFeatures():
            if feedback.isCanceled():
                break
            if not feature.hasGeometry():
                continue
            batch.append(feature)
            if len(batch) >= BATCH:
                flush()
        if batch and not feedback.isCanceled():
            flush()
        raster.close()
        feedback.pushInfo(tr("{} of {} crowns have a height from {}.").format(measured, done, raster.name))
        return {OUTPUT: dest_id}
