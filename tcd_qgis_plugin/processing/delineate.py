"""``tcd:delineatecrowns``: predict crowns and canopy confidence of a raster into a cache folder.

The algorithm is one more client of the worker process: ``processAlgorithm``
builds the same :class:`~tcd_qgis_plugin.engine.settings.Job` the dialog builds
and drives a worker through :class:`~tcd_qgis_plugin.core.task.WorkerRun` on
Processing's thread, relaying tile progress to the feedback and the feedback's
cancel to the worker (which stops after the tile in progress). Running it again
with the same folder resumes the cache; a cache made with other settings is
refused with the engine's one sentence.

Results are plain paths (crowns file, confidence VRT, cache folder), so they
chain in Model Builder and print in ``qgis_process``. Where Processing loads
results (the dialog, batch, ``runAndLoadResults``) the layers are opened as the
runs panel opens them and styled with the plugin's QML files.

A run may outlive the Qt objects around it: since QGIS 3.24 a batch runs its rows as
tasks that go on after ``BatchAlgorithmDialog.runAlgorithm()`` returns, with the
dialog's feedback, while the plugin may be unloaded and its provider deleted. So the
algorithm reaches the plugin only through the provider's :class:`RunsChanged` relay
(never through ``provider()``, a bare C++ pointer), and takes a deleted feedback as a
cancel: the worker stops after its tile and the cache stays resumable.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from qgis.core import (
    Qgis,
    QgsGeometry,
    QgsMessageLog,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputRasterLayer,
    QgsProcessingOutputVectorLayer,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingUtils,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.PyQt import sip
from qgis.PyQt.QtGui import QIcon

from tcd_qgis_plugin import dependencies
from tcd_qgis_plugin.core.aoi import AoiError, area_wkt
from tcd_qgis_plugin.core.layers import layer_source
from tcd_qgis_plugin.core.runs import RunRegistry
from tcd_qgis_plugin.core.task import WorkerRun, tiles_text
from tcd_qgis_plugin.core.texts import LOG_TAG, translator
from tcd_qgis_plugin.engine.cache.manifest import MANIFEST_NAME
from tcd_qgis_plugin.engine.cache.status import cache_layers
from tcd_qgis_plugin.engine.errors import TCDError
from tcd_qgis_plugin.engine.models.spec import default_model_path, describe_model
from tcd_qgis_plugin.engine.settings import (
    Job,
    Output,
    VectorFormat,
    default_cache_dir,
    parse_value_range,
    resolve_settings,
)
from tcd_qgis_plugin.gui.dialog import raster_file
from tcd_qgis_plugin.paths import icon_path, style_path

# Parameter and output names: what qgis_process, processing.run() and models use.
INPUT = "INPUT"
MODEL = "MODEL"
OUTPUTS = "OUTPUTS"
OUTPUT_FOLDER = "OUTPUT_FOLDER"
VECTOR_FORMAT = "VECTOR_FORMAT"
AOI = "AOI"
CANOPY_HEIGHT = "CANOPY_HEIGHT"
TILE_SIZE = "TILE_SIZE"
OVERLAP = "OVERLAP"
GSD = "GSD"
VALUE_RANGE = "VALUE_RANGE"
THRESHOLD = "THRESHOLD"
CROWNS = "CROWNS"
CONFIDENCE = "CONFIDENCE"

OUTPUT_CHOICES = (Output.INSTANCES, Output.SEMANTIC)  # order of the OUTPUTS enum
FORMAT_CHOICES = (VectorFormat.SHAPEFILE, VectorFormat.GEOPACKAGE)  # order of the VECTOR_FORMAT enum


tr = translator("DelineateCrownsAlgorithm")


class _Styler(QgsProcessingLayerPostProcessorInterface):
    """Applies one of the plugin's QML styles to a layer Processing has just loaded (main thread)."""

    def __init__(self, style: str):
        super().__init__()
        self.style = style

    def postProcessLayer(self, layer, context, feedback) -> None:
        if layer is not None and layer.isValid():
            layer.loadNamedStyle(str(style_path(self.style)))
            layer.triggerRepaint()


# QGIS 3.22 keeps only the C++ pointer of a post-processor and deletes it with the context: the
# Python object must stay alive until then, or Processing finds a bare interface and styles nothing.
_LIVE_STYLERS: list[_Styler] = []


def _styler(style: str) -> _Styler:
    _LIVE_STYLERS[:] = [s for s in _LIVE_STYLERS if not sip.isdeleted(s)]
    styler = _Styler(style)
    _LIVE_STYLERS.append(styler)
    return styler


def _gone(feedback) -> bool:
    return feedback is None or sip.isdeleted(feedback)


def _cancelled(feedback) -> bool:
    """Whether the user cancelled, or the feedback (its dialog) is gone."""
    try:
        return _gone(feedback) or feedback.isCanceled()
    except RuntimeError:  # deleted on the main thread since the check
        return True


def _tell(feedback, method: str, *args) -> None:
    """``feedback.method(*args)`` while the feedback lives; nobody is listening once it is gone."""
    if _gone(feedback):
        return
    try:
        getattr(feedback, method)(*args)
    except RuntimeError:  # deleted on the main thread since the check
        pass


class DelineateCrownsAlgorithm(QgsProcessingAlgorithm):
    def __init__(self, runs_changed: Callable[[], None] | None = None):
        """``runs_changed``: called from Processing's thread when a run starts or ends (the provider's relay)."""
        super().__init__()
        self._runs_changed = runs_changed or (lambda: None)
        self._cache_dir: Path | None = None

    def name(self) -> str:
        return "delineatecrowns"

    def displayName(self) -> str:
        return tr("Delineate tree crowns")

    def group(self) -> str:
        return ""

    def groupId(self) -> str:
        return ""

    def tags(self) -> list[str]:
        return tr("tree,crown,canopy,forest,delineation,segmentation,onnx,orthophoto,drone").split(",")

    def icon(self) -> QIcon:
        return QIcon(str(icon_path()))

    def shortHelpString(self) -> str:
        return tr(
            "Predicts tree crowns (polygons) and canopy confidence (a raster) over a raster, tile by tile, "
            "into a cache folder, in a separate worker process.\n\n"
            "Cache folder: left empty ([Skip output]), the cache goes beside the raster, named after it "
            "(ortho.tif → ortho_tcd). Running the algorithm again with the same folder resumes an "
            "interrupted or cancelled run: only the missing tiles are predicted. A folder holding a run "
            "made with other settings is refused.\n\n"
            "Model: an ONNX file; empty uses the bundled default model. Tile size, overlap (model pixels) "
            "and ground sampling distance (metres per pixel) default to the model's own values, and so does "
            "the probability threshold a pixel needs to belong to a class (segmentation models; the cache "
            "keeps it, so resume with the same).\n\n"
            "Area of interest: only tiles touching its polygons are predicted.\n\n"
            "Crowns carry id, score, class, tile_id, area_m2, perimeter_m and diam_m (metres, whatever the "
            "raster's CRS). With a canopy height raster (a CHM or nDSM in metres, any CRS and resolution) "
            "they also get height_max_m and height_p95_m (NULL where it has no data, never 0) and "
            "height_src. The cache folder keeps a summary.json of the run (trees, trees per hectare, canopy "
            "cover, crown sizes), shown in the TCD runs panel.\n\n"
            "Needs the Python packages onnxruntime, rasterio "
            "and scipy; the plugin's dialog offers to install them."
        )

    def createInstance(self) -> DelineateCrownsAlgorithm:
        return DelineateCrownsAlgorithm(self._runs_changed)

    def initAlgorithm(self, config=None) -> None:
        self.addParameter(QgsProcessingParameterRasterLayer(INPUT, tr("Raster (orthophoto or drone image)")))
        self.addParameter(QgsProcessingParameterFile(
            MODEL, tr("Model (ONNX file; empty for the bundled default model)"),
            behavior=QgsProcessingParameterFile.Behavior.File, extension="onnx", optional=True))
        self.addParameter(QgsProcessingParameterEnum(
            OUTPUTS, tr("Outputs"), options=[tr("Crowns"), tr("Canopy confidence")], allowMultiple=True,
            defaultValue=[0, 1]))
        self.addParameter(QgsProcessingParameterEnum(
            VECTOR_FORMAT, tr("Crowns format"), options=[tr("Shapefile (.shp)"), tr("GeoPackage (.gpkg)")],
            defaultValue=0))
        self.addParameter(QgsProcessingParameterFeatureSource(
            AOI, tr("Area of interest (polygons)"), [QgsProcessing.SourceType.TypeVectorPolygon], optional=True))
        self.addParameter(QgsProcessingParameterRasterLayer(
            CANOPY_HEIGHT, tr("Canopy height raster (CHM or nDSM, metres): adds crown heights"), optional=True))
        advanced = [
            QgsProcessingParameterNumber(TILE_SIZE, tr("Tile size (model pixels; empty: the model's)"),
                                         QgsProcessingParameterNumber.Type.Integer, optional=True, minValue=16),
            QgsProcessingParameterNumber(OVERLAP, tr("Tile overlap (model pixels; empty: the model's)"),
                                         QgsProcessingParameterNumber.Type.Integer, optional=True, minValue=0),
            QgsProcessingParameterNumber(GSD, tr("Ground sampling distance (m/pixel; empty: the model's)"),
                                         QgsProcessingParameterNumber.Type.Double, optional=True, minValue=0.001),
            QgsProcessingParameterString(VALUE_RANGE, tr("Value range MIN,MAX stretched onto 0-255 (empty: 16-bit "
                                                         "and float rasters as QGIS shows them)"), optional=True),
            QgsProcessingParameterNumber(THRESHOLD, tr("Probability threshold (segmentation models; empty: the "
                                                       "model's)"),
                                         QgsProcessingParameterNumber.Type.Double, optional=True, minValue=0.0,
                                         maxValue=1.0),
        ]
        for parameter in advanced:
            parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.Flag.FlagAdvanced)
            self.addParameter(parameter)
        self.addParameter(QgsProcessingParameterFolderDestination(
            OUTPUT_FOLDER, tr("Cache folder (skip: beside the raster, named <raster>_tcd)"), optional=True,
            createByDefault=False))
        self.addOutput(QgsProcessingOutputVectorLayer(CROWNS, tr("Crowns"), QgsProcessing.SourceType.TypeVectorPolygon))
        self.addOutput(QgsProcessingOutputRasterLayer(CONFIDENCE, tr("Canopy confidence")))

    # -- parameters -> job ------------------------------------------------------
    def _job(self, parameters, context) -> Job:
        """The job the parameters ask for; raises QgsProcessingException with one sentence."""
        raster = self.parameterAsRasterLayer(parameters, INPUT, context)
        if raster is None:
            raise QgsProcessingException(tr("Choose a raster layer."))
        image = raster_file(raster)
        if image is None:
            raise QgsProcessingException(
                tr("{} is not a raster file on disk; choose one that is.").format(raster.name()))
        # Absolute paths: the worker runs in the plugin's folder, and the job is remembered for Resume.
        image = image.absolute()
        model_text = self.parameterAsFile(parameters, MODEL, context).strip()
        model = Path(model_text).absolute() if model_text else default_model_path()
        outputs = frozenset(OUTPUT_CHOICES[i] for i in self.parameterAsEnums(parameters, OUTPUTS, context))
        if not outputs:
            raise QgsProcessingException(tr("Choose at least one output: crowns or canopy confidence."))
        folder_text = self.parameterAsString(parameters, OUTPUT_FOLDER, context).strip()
        folder = Path(folder_text).absolute() if folder_text else default_cache_dir(image)
        vector_format = FORMAT_CHOICES[self.parameterAsEnum(parameters, VECTOR_FORMAT, context)]
        try:
            spec = describe_model(model)
            job = Job(
                image=image,
                cache_dir=folder,
                model=model,
                outputs=outputs,
                tile_size_px=self._optional_number(parameters, TILE_SIZE, context, int),
                overlap_px=self._optional_number(parameters, OVERLAP, context, int),
                gsd_m=self._optional_number(parameters, GSD, context, float),
                vector_format=vector_format,
                aoi_wkt=self._aoi_wkt(parameters, context, raster),
                canopy_height=self._canopy_height(parameters, context),
                value_range=parse_value_range(self.parameterAsString(parameters, VALUE_RANGE, context)),
                seg_thresh=self._optional_number(parameters, THRESHOLD, context, float),
            )
            resolve_settings(job, spec, work_crs="")
        except TCDError as exc:
            raise QgsProcessingException(str(exc)) from exc
        _check_folder(folder, image)
        return job

    def _optional_number(self, parameters, name, context, kind):
        value = parameters.get(name)
        if value is None or value == "":
            return None
        number = self.parameterAsDouble(parameters, name, context)
        return kind(number)

    def _canopy_height(self, parameters, context) -> Path | None:
        """The canopy height raster's file, or None when not given."""
        if parameters.get(CANOPY_HEIGHT) in (None, ""):
            return None
        path = raster_file(self.parameterAsRasterLayer(parameters, CANOPY_HEIGHT, context))
        if path is None:
            raise QgsProcessingException(tr("The canopy height raster must be a raster file on disk."))
        return path.absolute()

    def _aoi_wkt(self, parameters, context, raster: QgsRasterLayer) -> str | None:
        """The area of interest's polygons, unioned, as WKT in the raster's CRS; None when not given."""
        if parameters.get(AOI) in (None, ""):
            return None
        source = self.parameterAsSource(parameters, AOI, context)
        if source is None:
            return None
        geometries = [f.geometry() for f in source.getFeatures() if f.hasGeometry()]
        union = QgsGeometry.unaryUnion(geometries) if geometries else QgsGeometry()
        if union.isEmpty():
            raise QgsProcessingException(tr("The area of interest has no polygons."))
        try:
            return area_wkt(union, source.sourceCrs(), raster, context.transformContext())
        except AoiError as exc:
            raise QgsProcessingException(str(exc)) from exc

    def checkParameterValues(self, parameters, context):
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:
            return ok, message
        try:
            self._job(parameters, context)
        except QgsProcessingException as exc:
            return False, str(exc)
        return True, ""

    # -- running -------------------------------------------------------------------
    def processAlgorithm(self, parameters, context, feedback):
        job = self._job(parameters, context)
        absent = dependencies.missing()
        if absent:
            raise QgsProcessingException(tr(
                "Python packages to install: {}. Open Raster ▸ Tree crown delineation ▸ Tree crown "
                "delineation… and press Install dependencies.").format(", ".join(r.name for r in absent)))
        try:
            python = dependencies.find_qgis_python()
        except dependencies.DependencyError as exc:
            raise QgsProcessingException(str(exc)) from exc
        RunRegistry().remember_job(job)  # the run shows in the TCD runs panel, and Resume repeats it
        self._runs_changed()
        worker = WorkerRun(job, python, dependencies.worker_environment(),
                           resume_hint=tr("run the algorithm again with the same cache folder to resume"))
        first = []

        def on_progress(p) -> None:
            if not first:
                first.append(p)
                if p.total and p.done == p.total:
                    _tell(feedback, "pushInfo", tr("All {} tiles are already in {}.").format(p.total, job.cache_dir))
                elif p.done:
                    _tell(feedback, "pushInfo", tr("{} of {} tiles are already in {}; predicting the rest.").format(
                        p.done, p.total, job.cache_dir))
                else:
                    _tell(feedback, "pushInfo",
                          tr("Predicting {} into {}.").format(tiles_text(p.total), job.cache_dir))
            if p.total:
                _tell(feedback, "setProgress", 100.0 * p.done / p.total)

        outcome = worker.run(lambda: _cancelled(feedback), on_progress)
        self._runs_changed()
        if outcome.details:  # a traceback or the worker's output: for the log, not the user's face
            QgsMessageLog.logMessage(outcome.details, LOG_TAG, Qgis.MessageLevel.Info)
        if outcome.state != "complete":
            raise QgsProcessingException(outcome.message)
        _tell(feedback, "pushInfo", outcome.message)
        self._cache_dir = job.cache_dir
        results = {OUTPUT_FOLDER: str(job.cache_dir), CROWNS: None, CONFIDENCE: None}
        for entry in cache_layers(job.cache_dir):
            if entry.output == Output.INSTANCES.value:
                results[CROWNS] = layer_source(entry)
            else:
                results[CONFIDENCE] = str(entry.path)
        return results

    def postProcessAlgorithm(self, context, feedback):
        """Offer the cache's layers for loading, opened and styled as the runs panel does (context's thread)."""
        if self._cache_dir is None or context.project() is None:
            return {}
        for entry in cache_layers(self._cache_dir):
            source = layer_source(entry)
            name = f"{entry.name} ({self._cache_dir.name})"
            if entry.kind == "raster":
                layer, hint = QgsRasterLayer(source, name, "gdal"), QgsProcessingUtils.LayerHint.Raster
            else:
                layer, hint = QgsVectorLayer(source, name, "ogr"), QgsProcessingUtils.LayerHint.Vector
            if not layer.isValid():
                feedback.reportError(tr("Could not open {}.").format(entry.path))
                continue
            context.temporaryLayerStore().addMapLayer(layer)
            output = CROWNS if entry.output == Output.INSTANCES.value else CONFIDENCE
            details = QgsProcessingContext.LayerDetails(name, context.project(), output, hint)
            details.forceName = True  # every cache has a "crowns" file: name the layers after the cache
            details.setPostProcessor(_styler(entry.style))
            context.addLayerToLoadOnCompletion(layer.id(), details)
        return {}


def _check_folder(folder: Path, image: Path) -> None:
    """Refuse a folder that is a file or holds something other than a TCD cache (never mixed into)."""
    if folder.exists() and not folder.is_dir():
        raise QgsProcessingException(tr("The cache folder {} is a file; choose a folder.").format(folder))
    if folder.is_dir() and any(folder.iterdir()) and not (folder / MANIFEST_NAME).is_file():
        raise QgsProcessingException(
            tr("The cache folder {} holds other files; choose an empty or new folder.").format(folder))
