"""``tcd:evaluatecrowns``: score a cache's crowns against a reference layer the user drew or measured.

The reference (crown polygons, boxes or tree-top points, any layer QGIS opens, in
any CRS) and the optional area are handed to the engine as WKB with their CRS
(:class:`~tcd_qgis_plugin.engine.reference.VectorData`), and
:func:`~tcd_qgis_plugin.engine.crown_evaluation.evaluate_cache` does the rest in
this process (OGR, shapely and scipy only): figures, ``evaluation.gpkg`` and
``evaluation.json`` in the cache, which the runs panel shows. Given a raster instead
of a cache, ``tcd:delineatecrowns`` predicts it first (into ``<raster>_tcd``).
"""

from __future__ import annotations

from pathlib import Path

from qgis.core import (
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingOutputVectorLayer,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingUtils,
    QgsVectorLayer,
)
from qgis.PyQt.QtGui import QIcon

from tcd_qgis_plugin import dependencies
from tcd_qgis_plugin.core.texts import translator
from tcd_qgis_plugin.paths import icon_path

CACHE = "CACHE"
INPUT = "INPUT"
MODEL = "MODEL"
REFERENCE = "REFERENCE"
AREA = "AREA"
IOU = "IOU"
EVALUATION = "EVALUATION"
PRECISION, RECALL, F1, MEAN_IOU = "PRECISION", "RECALL", "F1", "MEAN_IOU"
SUMMARY = "SUMMARY"

tr = translator("EvaluateCrownsAlgorithm")


def vector_data(source, name: str):
    """A feature source's geometries as the engine reads them: WKB, the source's CRS as WKT, a name."""
    from tcd_qgis_plugin.engine.reference import VectorData

    crs = source.sourceCrs()
    wkbs = tuple(bytes(f.geometry().asWkb()) for f in source.getFeatures()
                 if f.hasGeometry() and not f.geometry().isEmpty())
    return VectorData(wkbs, crs.toWkt() if crs.isValid() else None, name)


def source_name(algorithm, parameters, name: str, context) -> str:
    layer = algorithm.parameterAsVectorLayer(parameters, name, context)
    return layer.name() if layer is not None else name.lower()


class EvaluateCrownsAlgorithm(QgsProcessingAlgorithm):
    def __init__(self):
        super().__init__()
        self._layer: Path | None = None
        self._points = False

    def name(self) -> str:
        return "evaluatecrowns"

    def displayName(self) -> str:
        return tr("Evaluate crowns against a reference")

    def group(self) -> str:
        return ""

    def groupId(self) -> str:
        return ""

    def tags(self) -> list[str]:
        return tr("accuracy,precision,recall,f1,iou,validation,reference,ground truth,tree,crown").split(",")

    def icon(self) -> QIcon:
        return QIcon(str(icon_path()))

    def shortHelpString(self) -> str:
        return tr(
            "Scores the crowns of a TCD cache against reference crowns you drew or measured: crown polygons, "
            "boxes or tree-top points, in any CRS (reprojected to the cache's).\n\n"
            "Polygons and boxes match a crown when their intersection over union (IoU) is at least the "
            "threshold (0.4), one to one; a tree-top point counts when it lies in exactly one crown.\n\n"
            "Area: where the reference is complete; only crowns and reference features inside it count. Empty: "
            "the envelope of the reference features.\n\n"
            "Gives precision, recall, F1 and the mean IoU of the matches, and writes evaluation.gpkg into the "
            "cache: matched crowns (green), missed reference crowns (orange) and false crowns (red). The TCD "
            "runs panel shows the figures with the run.\n\n"
            "Give a cache folder, or a raster (and a model) to predict first into <raster>_tcd.")

    def createInstance(self) -> EvaluateCrownsAlgorithm:
        return EvaluateCrownsAlgorithm()

    def initAlgorithm(self, config=None) -> None:
        self.addParameter(QgsProcessingParameterFile(
            CACHE, tr("Cache folder (a TCD run)"), behavior=QgsProcessingParameterFile.Behavior.Folder,
            optional=True))
        self.addParameter(QgsProcessingParameterRasterLayer(
            INPUT, tr("Or a raster to predict first"), optional=True))
        self.addParameter(QgsProcessingParameterFile(
            MODEL, tr("Model for the raster (ONNX; empty for the bundled default model)"),
            behavior=QgsProcessingParameterFile.Behavior.File, extension="onnx", optional=True))
        self.addParameter(QgsProcessingParameterFeatureSource(
            REFERENCE, tr("Reference crowns (polygons, boxes or tree-top points)"),
            [QgsProcessing.SourceType.TypeVectorPolygon, QgsProcessing.SourceType.TypeVectorPoint]))
        self.addParameter(QgsProcessingParameterFeatureSource(
            AREA, tr("Area where the reference is complete"), [QgsProcessing.SourceType.TypeVectorPolygon],
            optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            IOU, tr("IoU a crown needs with a reference polygon or box"),
            QgsProcessingParameterNumber.Type.Double, defaultValue=0.4, minValue=0.01, maxValue=1.0))
        self.addOutput(QgsProcessingOutputVectorLayer(EVALUATION, tr("Matched, missed and false crowns")))
        for name, label in ((PRECISION, tr("Precision")), (RECALL, tr("Recall")), (F1, tr("F1")),
                            (MEAN_IOU, tr("Mean IoU of the matches"))):
            self.addOutput(QgsProcessingOutputNumber(name, label))
        self.addOutput(QgsProcessingOutputString(SUMMARY, tr("Summary")))

    def _cache_dir(self, parameters, context, feedback) -> Path:
        folder = self.parameterAsFile(parameters, CACHE, context).strip()
        if folder:
            return Path(folder)
        if parameters.get(INPUT) in (None, ""):
            raise QgsProcessingException(tr("Give a cache folder, or a raster to predict first."))
        from qgis import processing

        feedback.pushInfo(tr("Predicting the raster's crowns first (tcd:delineatecrowns)."))
        result = processing.run("tcd:delineatecrowns", {
            "INPUT": parameters[INPUT], "MODEL": parameters.get(MODEL) or "", "OUTPUTS": [0]},
            context=context, feedback=feedback, is_child_algorithm=True)
        return Path(result["OUTPUT_FOLDER"])

    def processAlgorithm(self, parameters, context, feedback):
        absent = dependencies.missing()
        if absent:
            raise QgsProcessingException(tr(
                "Python packages to install: {}. Open Raster ▸ Tree crown delineation ▸ Tree crown "
                "delineation… and press Install dependencies.").format(", ".join(r.name for r in absent)))
        from tcd_qgis_plugin.engine.crown_evaluation import evaluate_cache
        from tcd_qgis_plugin.engine.errors import TCDError

        cache_dir = self._cache_dir(parameters, context, feedback)
        reference = self.parameterAsSource(parameters, REFERENCE, context)
        if reference is None:
            raise QgsProcessingException(tr("Choose a reference layer."))
        reference_data = vector_data(reference, source_name(self, parameters, REFERENCE, context))
        area = None
        if parameters.get(AREA) not in (None, ""):
            area_source = self.parameterAsSource(parameters, AREA, context)
            if area_source is not None:
                area = vector_data(area_source, source_name(self, parameters, AREA, context))
        iou = self.parameterAsDouble(parameters, IOU, context)
        feedback.setProgress(10)
        try:
            comparison, out = evaluate_cache(cache_dir, reference_data, area, iou)
        except TCDError as exc:
            raise QgsProcessingException(str(exc)) from exc
        s = comparison.scores
        summary = tr("{}: precision {:.3f}, recall {:.3f}, F1 {:.3f} ({} matched, {} false, {} missed)").format(
            cache_dir.name, s.precision, s.recall, s.f1, s.tp, s.fp, s.fn)
        if s.mean_iou is not None:
            summary += tr("; mean IoU of the matches {:.3f}").format(s.mean_iou)
        feedback.pushInfo(summary)
        feedback.setProgress(100)
        self._layer = out
        self._points = comparison.kind == "points"
        provider = self.provider()  # the runs panel shows the figures with the run
        if provider is not None and hasattr(provider, "runsChanged"):
            provider.runsChanged.emit()
        return {EVALUATION: f"{out}|layername=evaluation", PRECISION: s.precision, RECALL: s.recall, F1: s.f1,
                MEAN_IOU: s.mean_iou, SUMMARY: summary}

    def postProcessAlgorithm(self, context, feedback):
        """Offer the evaluation layer(s) for loading, styled with the plugin's QML files."""
        from tcd_qgis_plugin.processing.delineate import _styler

        if self._layer is None or context.project() is None:
            return {}
        layers = [("evaluation", "evaluation")] + ([("reference_points", "evaluation_points")] if self._points else [])
        for layer_name, style in layers:
            name = f"{layer_name.replace('_', ' ')} ({self._layer.parent.name})"
            layer = QgsVectorLayer(f"{self._layer}|layername={layer_name}", name, "ogr")
            if not layer.isValid():
                continue
            context.temporaryLayerStore().addMapLayer(layer)
            details = QgsProcessingContext.LayerDetails(name, context.project(), EVALUATION,
                                                        QgsProcessingUtils.LayerHint.Vector)
            details.forceName = True
            details.setPostProcessor(_styler(style))
            context.addLayerToLoadOnCompletion(layer.id(), details)
        return {}
