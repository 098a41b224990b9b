"""The "Tree crown delineation" dialog: gathers a Job and emits it.

Every choice is checked as it changes; a problem is explained in the dialog and
Run stays disabled, so a run that starts has inputs the engine accepts. The
dialog never starts anything itself: it emits ``runRequested(Job)`` or
``installRequested()`` and the plugin object acts.
"""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsMapLayerProxyModel, QgsRasterLayer
from qgis.gui import QgsCollapsibleGroupBox, QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt, QTimer, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from tcd_qgis_plugin.core.aoi import AoiError, extent_wkt, selection_wkt
from tcd_qgis_plugin.core.rasters import raster_note, raster_problem, read_facts
from tcd_qgis_plugin.core.runs import RunRegistry
from tcd_qgis_plugin.core.user_models import user_models
from tcd_qgis_plugin.engine.cache.manifest import MANIFEST_NAME
from tcd_qgis_plugin.engine.cache.status import cache_status
from tcd_qgis_plugin.engine.errors import TCDError
from tcd_qgis_plugin.engine.models.spec import default_model_path, describe_model
from tcd_qgis_plugin.engine.settings import (
    BoxGeometry,
    Job,
    Output,
    VectorFormat,
    default_cache_dir,
    parse_value_range,
    resolve_settings,
)

AREA_ALL, AREA_EXTENT, AREA_SELECTION = range(3)
# ``Job.provider`` choices as the Processor list names them; None lets the engine pick.
PROCESSOR_NAMES = {None: "Automatic", "cpu": "CPU", "cuda": "NVIDIA GPU (CUDA)", "tensorrt": "NVIDIA GPU (TensorRT)",
                   "directml": "GPU (DirectML)", "coreml": "Apple GPU (Core ML)"}


def raster_file(layer) -> Path | None:
    """The local file behind a raster layer, or None (web services, virtual rasters of QGIS)."""
    if not isinstance(layer, QgsRasterLayer) or layer.providerType() != "gdal":
        return None
    path = Path(layer.source().split("|")[0])
    return path if path.is_file() else None


class PredictDialog(QDialog):
    runRequested = pyqtSignal(object)  # engine.settings.Job
    installRequested = pyqtSignal()
    helpRequested = pyqtSignal()

    def __init__(self, registry: RunRegistry, canvas=None, parent=None):
        super().__init__(parent)
        self.registry = registry
        self.canvas = canvas
        self.missing: list = []
        self._auto_folder = ""
        self._job: Job | None = None
        self._detector_rows = True  # as built; the chosen model decides
        self._specs: dict[Path, tuple[float, object]] = {}  # model path -> (mtime, ModelSpec or None)
        # The dialog's height follows what it shows (Advanced open or closed, rows of the model), on the
        # next turn of the event loop, once the layout knows its new size.
        self._fit_timer = QTimer(self)
        self._fit_timer.setSingleShot(True)
        self._fit_timer.setInterval(0)
        self._fit_timer.timeout.connect(self._fit_height)
        self.setWindowTitle(self.tr("Tree crown delineation"))
        self.setMinimumWidth(520)

        self.raster_combo = QgsMapLayerComboBox()
        self.raster_combo.setFilters(QgsMapLayerProxyModel.Filter.RasterLayer)
        self.model_combo = QComboBox()
        self.browse_button = QPushButton(self.tr("Browse…"))
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_combo, 1)
        model_row.addWidget(self.browse_button)
        self.confidence_check = QCheckBox(self.tr("Canopy confidence"))
        self.crowns_check = QCheckBox(self.tr("Crowns"))
        for check in (self.confidence_check, self.crowns_check):
            check.setChecked(True)
        output_row = QHBoxLayout()
        output_row.addWidget(self.confidence_check)
        output_row.addWidget(self.crowns_check)
        output_row.addStretch(1)
        self.folder_widget = QgsFileWidget()
        self.folder_widget.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.folder_widget.setDialogTitle(self.tr("Output folder"))

        form = QFormLayout()
        form.addRow(self.tr("Raster"), self.raster_combo)
        form.addRow(self.tr("Model"), model_row)
        form.addRow(self.tr("Outputs"), output_row)
        form.addRow(self.tr("Output folder"), self.folder_widget)

        self.advanced = QgsCollapsibleGroupBox(self.tr("Advanced"))
        self.advanced.setCollapsed(True)
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(0, 16384)
        self.tile_spin.setSingleStep(64)
        self.tile_spin.setSuffix(self.tr(" px"))
        self.tile_spin.setSpecialValueText(self.tr("Model default"))
        self.overlap_spin = QSpinBox()
        self.overlap_spin.setRange(-1, 8192)
        self.overlap_spin.setSingleStep(16)
        self.overlap_spin.setValue(-1)
        self.overlap_spin.setSuffix(self.tr(" px"))
        self.overlap_spin.setSpecialValueText(self.tr("Model default"))
        self.gsd_spin = QDoubleSpinBox()
        self.gsd_spin.setRange(0.0, 100.0)
        self.gsd_spin.setDecimals(3)
        self.gsd_spin.setSingleStep(0.01)
        self.gsd_spin.setSuffix(self.tr(" m"))
        self.gsd_spin.setSpecialValueText(self.tr("Model default"))
        self.format_combo = QComboBox()
        self.format_combo.addItem(self.tr("Shapefile"), VectorFormat.SHAPEFILE)
        self.format_combo.addItem(self.tr("GeoPackage"), VectorFormat.GEOPACKAGE)
        self.processor_combo = QComboBox()
        self.processor_combo.setToolTip(self.tr("Where the model runs. Only devices that start on this computer are "
                                                "listed; the choice changes speed, not results."))
        self._fill_processors(["cpu"])
        self.scheduler_edit = QLineEdit()
        self.scheduler_edit.setPlaceholderText(self.tr("None: this computer"))
        self.scheduler_edit.setToolTip(self.tr(
            "Address of a running Dask scheduler (tcp://host:8786) to predict on its cluster; the workers must "
            "read the raster and have this engine (see Help). QGIS writes the results here as tiles come back."))
        self.value_range_edit = QLineEdit()
        self.value_range_edit.setPlaceholderText(self.tr("As QGIS shows the raster"))
        self.value_range_edit.setToolTip(self.tr(
            "MIN,MAX: every band stretched linearly from MIN to MAX onto the 0-255 the model reads. Empty: 8-bit "
            "rasters as they are, 16-bit and float ones as QGIS shows them by default (a 2-98 % cumulative cut)."))
        self.chm_combo = QgsMapLayerComboBox()
        self.chm_combo.setFilters(QgsMapLayerProxyModel.Filter.RasterLayer)
        self.chm_combo.setAllowEmptyLayer(True, self.tr("None: no crown heights"))
        self.chm_combo.setCurrentIndex(0)  # the empty item: no heights unless chosen (setLayer(None) shows a blank)
        self.chm_combo.setToolTip(self.tr(
            "Optional canopy height raster (CHM or nDSM, heights above ground in metres, any CRS and resolution): "
            "each crown gets its highest and 95th-percentile height."))
        # Detectors only (shown when the model is one): thresholds and what each box is stored as.
        self.det_conf_spin = QDoubleSpinBox()
        self.det_iou_spin = QDoubleSpinBox()
        for spin in (self.det_conf_spin, self.det_iou_spin):
            spin.setRange(-0.01, 1.0)
            spin.setDecimals(2)
            spin.setSingleStep(0.05)
            spin.setValue(-0.01)
            spin.setSpecialValueText(self.tr("Model default"))
        self.det_conf_spin.setToolTip(self.tr("The score a box needs to be kept."))
        self.det_iou_spin.setToolTip(self.tr("Of two boxes overlapping more than this (intersection over union), "
                                             "the weaker is dropped."))
        # Segmentation models only: the probability a pixel needs (Deepness's "probability threshold").
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(-0.01, 1.0)
        self.threshold_spin.setDecimals(2)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setValue(-0.01)
        self.threshold_spin.setSpecialValueText(self.tr("Model default"))
        self.threshold_spin.setToolTip(self.tr("The probability a pixel needs to belong to a class. The run's "
                                               "folder keeps it: resume with the same."))
        self.threshold_label = QLabel(self.tr("Probability threshold"))
        self.geometry_combo = QComboBox()
        self.geometry_combo.addItem(self.tr("Crowns (canopy in the box, else its ellipse)"), BoxGeometry.CROWNS)
        self.geometry_combo.addItem(self.tr("Boxes"), BoxGeometry.BOXES)
        self.detector_labels = [QLabel(self.tr("Box score threshold")), QLabel(self.tr("Box overlap (IoU)")),
                                QLabel(self.tr("Store each box as"))]
        self.detector_widgets = [self.det_conf_spin, self.det_iou_spin, self.geometry_combo]
        self.area_all = QRadioButton(self.tr("The whole raster"))
        self.area_extent = QRadioButton(self.tr("Only the current map extent"))
        self.area_selection = QRadioButton(self.tr("Only inside the selected features of"))
        self.area_all.setChecked(True)
        self.area_group = QButtonGroup(self)
        for area_id, button in enumerate((self.area_all, self.area_extent, self.area_selection)):
            self.area_group.addButton(button, area_id)
        self.aoi_layer_combo = QgsMapLayerComboBox()
        self.aoi_layer_combo.setFilters(QgsMapLayerProxyModel.Filter.PolygonLayer)
        selection_row = QHBoxLayout()
        selection_row.addWidget(self.area_selection)
        selection_row.addWidget(self.aoi_layer_combo, 1)
        area_box = QVBoxLayout()
        area_box.addWidget(self.area_all)
        area_box.addWidget(self.area_extent)
        area_box.addLayout(selection_row)
        advanced_form = self.advanced_form = QFormLayout(self.advanced)
        advanced_form.addRow(self.tr("Tile size"), self.tile_spin)
        advanced_form.addRow(self.tr("Overlap"), self.overlap_spin)
        advanced_form.addRow(self.tr("Ground sampling distance"), self.gsd_spin)
        advanced_form.addRow(self.tr("Crown file format"), self.format_combo)
        advanced_form.addRow(self.tr("Processor"), self.processor_combo)
        advanced_form.addRow(self.tr("Dask scheduler"), self.scheduler_edit)
        advanced_form.addRow(self.tr("Canopy heights from"), self.chm_combo)
        advanced_form.addRow(self.tr("Value range"), self.value_range_edit)
        for label, widget in zip(self.detector_labels, self.detector_widgets):
            advanced_form.addRow(label, widget)
        advanced_form.addRow(self.threshold_label, self.threshold_spin)
        advanced_form.addRow(self.tr("Area"), area_box)
        self._area_box = area_box

        self.dependency_label = QLabel()
        self.dependency_label.setWordWrap(True)
        self.install_button = QPushButton(self.tr("Install dependencies…"))
        self.dependency_row = QWidget()
        dependency_layout = QHBoxLayout(self.dependency_row)
        dependency_layout.setContentsMargins(0, 0, 0, 0)
        dependency_layout.addWidget(self.dependency_label, 1)
        dependency_layout.addWidget(self.install_button)

        self.message_label = QLabel()
        self.message_label.setWordWrap(True)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close | QDialogButtonBox.StandardButton.Help)
        self.help_button = self.buttons.button(QDialogButtonBox.StandardButton.Help)
        self.run_button = self.buttons.addButton(self.tr("Run"), QDialogButtonBox.ButtonRole.AcceptRole)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.advanced)
        layout.addWidget(self.dependency_row)
        layout.addWidget(self.message_label)
        layout.addStretch(1)
        layout.addWidget(self.buttons)

        self.fill_models()
        self.raster_combo.layerChanged.connect(self._raster_changed)
        self.aoi_layer_combo.layerChanged.connect(self._aoi_layer_changed)
        self._selection_layer = None
        for signal in (self.model_combo.currentIndexChanged, self.confidence_check.toggled,
                       self.crowns_check.toggled, self.folder_widget.fileChanged, self.tile_spin.valueChanged,
                       self.overlap_spin.valueChanged, self.gsd_spin.valueChanged,
                       self.format_combo.currentIndexChanged, self.processor_combo.currentIndexChanged,
                       self.det_conf_spin.valueChanged, self.det_iou_spin.valueChanged,
                       self.threshold_spin.valueChanged,
                       self.geometry_combo.currentIndexChanged, self.scheduler_edit.textChanged,
                       self.chm_combo.layerChanged, self.area_group.buttonClicked,
                       self.value_range_edit.textChanged):
            signal.connect(self.validate)
        if canvas is not None:
            canvas.extentsChanged.connect(self._extent_changed)
        self.advanced.collapsedStateChanged.connect(self._advanced_toggled)
        self.browse_button.clicked.connect(self._browse_model)
        self.install_button.clicked.connect(self.installRequested)
        self.run_button.clicked.connect(self._run_clicked)
        self.buttons.rejected.connect(self.reject)
        self.buttons.helpRequested.connect(self.helpRequested)
        self._raster_changed(self.raster_combo.currentLayer())
        self._aoi_layer_changed(self.aoi_layer_combo.currentLayer())
        self.set_missing([])

    # -- filling ---------------------------------------------------------------
    def fill_models(self) -> None:
        """List the bundled default model, the user's models folder (fine-tuned), then recently used ones."""
        current = self.model_path()
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        default = default_model_path()
        if default.is_file():
            self._add_model_item(default, self.tr("{} (bundled default)"))
        for path in [*user_models(), *self.registry.recent_models()]:  # fine-tuned models, then recent ones
            if path.is_file() and self.model_combo.findData(str(path)) < 0:
                self._add_model_item(path, "{}")
        self.model_combo.blockSignals(False)
        if current is not None:
            self.select_model(current)

    def _add_model_item(self, path: Path, label: str) -> None:
        try:
            name = describe_model(path).name
        except TCDError:
            name = self.tr("{} (unreadable)").format(path.name)
        self.model_combo.addItem(label.format(name), str(path))
        self.model_combo.setItemData(self.model_combo.count() - 1, str(path), Qt.ItemDataRole.ToolTipRole)

    def select_model(self, path) -> None:
        """Select a model file, adding it to the list when it is not there yet."""
        path = Path(path).resolve()
        index = self.model_combo.findData(str(path))
        if index < 0:
            self._add_model_item(path, "{}")
            index = self.model_combo.count() - 1
        self.model_combo.setCurrentIndex(index)
        self.validate()

    def _browse_model(self) -> None:
        start = str(self.model_path().parent) if self.model_path() else ""
        path, _ = QFileDialog.getOpenFileName(self, self.tr("Choose an ONNX model"), start,
                                              self.tr("ONNX models (*.onnx)"))
        if path:
            self.select_model(path)

    def set_raster(self, layer) -> None:
        if isinstance(layer, QgsRasterLayer):
            self.raster_combo.setLayer(layer)

    def set_missing(self, requirements: list) -> None:
        """Show the missing packages (dependencies.Requirement) and offer to install them."""
        self.missing = list(requirements)
        names = ", ".join(r.name if r.found_version is None else self.tr("{} ({} is too old or too new)").format(
            r.name, r.found_version) for r in self.missing)
        self.dependency_label.setText(self.tr("Missing Python packages: {}.").format(names))
        self.dependency_label.setToolTip("\n".join(r.reason or r.name for r in self.missing))
        self.dependency_row.setVisible(bool(self.missing))
        self.validate()
        self._fit_timer.start()

    def _raster_changed(self, layer) -> None:
        image = raster_file(layer)
        folder = self.folder_widget.filePath()
        if image is not None and (not folder or folder == self._auto_folder):
            self._auto_folder = str(default_cache_dir(image))
            self.folder_widget.setFilePath(self._auto_folder)
        self.validate()

    def _extent_changed(self) -> None:
        if self.isVisible() and self.area_group.checkedId() == AREA_EXTENT:
            self.validate()

    def _aoi_layer_changed(self, layer) -> None:
        if self._selection_layer is not None:
            try:
                self._selection_layer.selectionChanged.disconnect(self.validate)
            except (TypeError, RuntimeError):
                pass  # the layer was deleted meanwhile
        self._selection_layer = layer
        if layer is not None:
            layer.selectionChanged.connect(self.validate)
        self.validate()

    # -- reading -----------------------------------------------------------------
    def model_path(self) -> Path | None:
        data = self.model_combo.currentData()
        return Path(data) if data else None

    def outputs(self) -> set:
        outputs = set()
        if self.confidence_check.isChecked():
            outputs.add(Output.SEMANTIC)
        if self.crowns_check.isChecked():
            outputs.add(Output.INSTANCES)
        return outputs

    def _aoi_wkt(self, raster: QgsRasterLayer) -> str | None:
        area = self.area_group.checkedId()
        if area == AREA_EXTENT:
            if self.canvas is None:
                raise AoiError(self.tr("There is no map canvas to take the extent from."))
            return extent_wkt(self.canvas.extent(), self.canvas.mapSettings().destinationCrs(), raster)
        if area == AREA_SELECTION:
            layer = self.aoi_layer_combo.currentLayer()
            if layer is None:
                raise AoiError(self.tr("Add a polygon layer to the project to choose features from."))
            return selection_wkt(layer, raster)
        return None

    def model_spec(self):
        """The chosen model's spec (read from its metadata once per file version), or None if it has none."""
        path = self.model_path()
        if path is None:
            return None
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return None
        cached = self._specs.get(path)
        if cached is None or cached[0] != mtime:
            try:
                spec = describe_model(path)
            except TCDError:
                spec = None
            cached = self._specs[path] = (mtime, spec)
        return cached[1]

    def _show_model_rows(self, spec) -> None:
        """Only the settings that apply to the chosen model: the detector's rows for a detector alone."""
        detector = spec is not None and spec.kind.detects_boxes
        if detector != self._detector_rows:
            self._detector_rows = detector
            self._apply_model_rows()

    def _apply_model_rows(self) -> None:
        self._place_rows(list(zip(self.detector_labels, self.detector_widgets)), self._detector_rows)
        self._place_rows([(self.threshold_label, self.threshold_spin)], not self._detector_rows)
        self._fit_timer.start()

    def _place_rows(self, rows: list, wanted: bool) -> None:
        # Rows out of the form, not just hidden: a hidden row still takes its spacing in QFormLayout.
        form = self.advanced_form
        present = form.indexOf(rows[0][1]) >= 0
        if wanted and not present:
            row, _role = form.getLayoutPosition(self._area_box)
            for offset, (label, widget) in enumerate(rows):
                form.insertRow(row + offset, label, widget)
        elif not wanted and present:
            for _label, widget in rows:
                form.takeRow(widget)
        for label, widget in rows:
            label.setVisible(wanted)
            widget.setVisible(wanted)

    def _advanced_toggled(self, collapsed: bool) -> None:
        if not collapsed:  # opening the group shows all its rows again: hide those that do not apply
            self._apply_model_rows()
        self._fit_timer.start()

    def _fit_height(self) -> None:
        """As tall as the contents, at the width the user left (no empty area under a closed Advanced)."""
        layout = self.layout()
        layout.activate()
        if layout.hasHeightForWidth():
            height = layout.totalHeightForWidth(self.width())
        else:
            height = layout.totalSizeHint().height()
        height = max(height, layout.totalMinimumSize().height())
        if height != self.height():
            self.resize(self.width(), height)

    def _build_job(self) -> tuple[Job | None, str, bool]:
        """(job, message, is_error): the job is None when the choices cannot run."""
        self._show_model_rows(self.model_spec())
        if self.missing:
            return None, self.tr("Install the missing Python packages before running."), True
        raster = self.raster_combo.currentLayer()
        if raster is None:
            return None, self.tr("Add a raster layer to the project first."), True
        image = raster_file(raster)
        if image is None:
            return None, self.tr("{} is not a raster file on disk; choose one that is.").format(raster.name()), True
        model = self.model_path()
        if model is None:
            return None, self.tr("Choose a model file."), True
        if not self.outputs():
            return None, self.tr("Choose at least one output: canopy confidence or crowns."), True
        folder_text = self.folder_widget.filePath().strip()
        if not folder_text:
            return None, self.tr("Choose an output folder."), True
        folder = Path(folder_text)
        if not folder.is_absolute():
            return None, self.tr("The output folder must be a full path."), True
        try:
            spec = describe_model(model)
        except TCDError as exc:
            self._show_defaults(None)
            return None, str(exc), True
        self._show_defaults(spec)
        facts = read_facts(image)
        if facts is None:
            return None, self.tr("{} is not a raster GDAL can read, or the file is damaged.").format(image.name), True
        problem = raster_problem(facts, spec, layer_has_crs=raster.crs().isValid())
        if problem:
            return None, problem, True
        # A file with no CRS of its own takes the layer's (set in QGIS); the cache records it.
        assign_crs = None if facts.has_crs else (raster.crs().authid() or raster.crs().toWkt())
        crs_note = "" if facts.has_crs else self.tr("{} has no CRS in the file: the layer's CRS, {}, is used.").format(
            image.name, raster.crs().authid() or raster.crs().description())
        chm_layer = self.chm_combo.currentLayer()
        canopy_height = None
        if chm_layer is not None:
            canopy_height = raster_file(chm_layer)
            if canopy_height is None:
                return None, self.tr("{} is not a raster file on disk; choose one that is for canopy heights.").format(
                    chm_layer.name()), True
            if Output.INSTANCES not in self.outputs():
                return None, self.tr("Canopy heights are measured per crown: turn crowns on, or choose no canopy "
                                     "height raster."), True
        try:
            aoi = self._aoi_wkt(raster)
            job = Job(
                image=image,
                cache_dir=folder,
                model=model,
                outputs=frozenset(self.outputs()),
                tile_size_px=self.tile_spin.value() or None,
                overlap_px=None if self.overlap_spin.value() < 0 else self.overlap_spin.value(),
                gsd_m=self.gsd_spin.value() or None,
                vector_format=self.format_combo.currentData(),
                aoi_wkt=aoi,
                assign_crs=assign_crs,
                provider=self.processor_combo.currentData(),
                scheduler=self.scheduler_edit.text().strip() or None,
                canopy_height=canopy_height,
                value_range=parse_value_range(self.value_range_edit.text()),
                **self._detector_choices(spec),
                **self._threshold_choice(spec),
            )
            settings = resolve_settings(job, spec, work_crs="")
        except (TCDError, AoiError) as exc:
            return None, str(exc), True
        message, is_error = self._folder_state(folder, image)
        if not is_error:
            notes = (message, crs_note, raster_note(facts, settings.tile_size_px, settings.gsd_m))
            message = " ".join(m for m in notes if m)
        return (None if is_error else job), message, is_error

    def set_processors(self, names) -> None:
        """List Automatic and the processors that start here (``Job.provider`` names), keeping the choice."""
        self._fill_processors(names)
        self.validate()

    def _fill_processors(self, names) -> None:
        current = self.processor_combo.currentData()
        self.processor_combo.blockSignals(True)
        self.processor_combo.clear()
        for name in [None, *names]:
            self.processor_combo.addItem(self.tr(PROCESSOR_NAMES.get(name, name or "")), name)
        index = self.processor_combo.findData(current)
        self.processor_combo.setCurrentIndex(max(index, 0))
        self.processor_combo.blockSignals(False)

    def _detector_choices(self, spec) -> dict:
        """The Job's detector fields: the Advanced choices for a detector, none for other models."""
        if not spec.kind.detects_boxes:
            return {}
        conf, iou = self.det_conf_spin.value(), self.det_iou_spin.value()
        return {"det_conf": None if conf < 0 else conf, "det_iou_thresh": None if iou < 0 else iou,
                "box_geometry": self.geometry_combo.currentData()}

    def _threshold_choice(self, spec) -> dict:
        """The Job's probability threshold: the Advanced choice for a segmentation model, none for detectors."""
        value = self.threshold_spin.value()
        return {} if spec.kind.detects_boxes or value < 0 else {"seg_thresh": value}

    def _show_threshold_default(self, spec) -> None:
        segmentation = spec is not None and not spec.kind.detects_boxes
        text = self.tr("Model default ({:g})").format(spec.seg_thresh) if segmentation else self.tr("Model default")
        if self.threshold_spin.specialValueText() != text:
            self.threshold_spin.setSpecialValueText(text)
            self.threshold_spin.update()

    def _show_defaults(self, spec) -> None:
        """"Model default" says what the default is for the chosen model (and tile size, for the overlap)."""
        self._show_threshold_default(spec)
        if spec is not None and spec.kind.detects_boxes:
            for spin, value in ((self.det_conf_spin, spec.det_conf), (self.det_iou_spin, spec.det_iou_thresh)):
                text = self.tr("Model default ({:g})").format(value)
                if spin.specialValueText() != text:
                    spin.setSpecialValueText(text)
                    spin.update()
        if spec is None:
            texts = (self.tr("Model default"),) * 3
        else:
            tile = self.tile_spin.value() or spec.tile_size_px
            overlap = spec.overlap_px
            if self.tile_spin.value() and overlap >= tile // 2:
                overlap = tile // 4  # as the engine resolves it: the model's overlap was meant for its own tile
            texts = (self.tr("Model default ({} px)").format(spec.tile_size_px),
                     self.tr("Model default ({} px)").format(overlap),
                     self.tr("Model default ({:g} m)").format(spec.gsd_m))
        for spin, text in zip((self.tile_spin, self.overlap_spin, self.gsd_spin), texts):
            if spin.specialValueText() != text:
                spin.setSpecialValueText(text)
                spin.update()

    def _folder_state(self, folder: Path, image: Path) -> tuple[str, bool]:
        if folder.exists() and not folder.is_dir():
            return self.tr("The output folder is a file; choose a folder."), True
        if not folder.exists() or not any(folder.iterdir()):
            return "", False
        if not (folder / MANIFEST_NAME).is_file():
            return self.tr("The output folder holds other files; choose an empty or new folder."), True
        try:
            status = cache_status(folder)
        except TCDError as exc:
            return str(exc), True
        if status.image_path and Path(status.image_path).resolve() != image.resolve():
            return self.tr("The output folder holds a run on {}; choose another folder.").format(
                Path(status.image_path).name), True
        if status.state == "complete":
            return self.tr("The output folder holds a finished run of this raster; Run loads its layers "
                           "(or first asks what to do, if your choices differ from that run's)."), False
        return self.tr("The output folder holds {} of {} tiles of an earlier run; Run resumes it "
                       "(or first asks what to do, if your choices differ from that run's).").format(
            status.done, status.total), False

    def validate(self, *args) -> bool:
        job, message, is_error = self._build_job()
        self._job = job
        self.run_button.setEnabled(job is not None)
        self.message_label.setText(message)
        self.message_label.setStyleSheet("color: #b00020;" if is_error else "")
        return job is not None

    def _run_clicked(self) -> None:
        if self.validate():
            self.registry.add_recent_model(self._job.model)
            self.runRequested.emit(self._job)

    def choose_other_folder(self) -> None:
        """Let the user pick another output folder (the one chosen holds a run this one cannot continue)."""
        start = str(Path(self.folder_widget.filePath()).parent) if self.folder_widget.filePath() else ""
        folder = QFileDialog.getExistingDirectory(self, self.tr("Output folder"), start)
        if folder:
            self.folder_widget.setFilePath(folder)
        self.validate()

    def showEvent(self, event) -> None:
        self.validate()  # the canvas extent or the layers may have changed while hidden
        super().showEvent(event)
        self._fit_timer.start()
