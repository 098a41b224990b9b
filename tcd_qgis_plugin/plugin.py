"""The plugin object: owns the actions, the dialog, the runs panel and the running tasks.

The dialog and the panel only emit requests; everything that changes the
project, the cache folders or the task manager happens here, on the main thread.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from functools import partial
from pathlib import Path

from qgis.core import Qgis, QgsApplication, QgsMessageLog, QgsProject
from qgis.PyQt.QtCore import QObject, QProcess, QProcessEnvironment, Qt, QTimer
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction, QApplication, QDockWidget

from tcd_qgis_plugin import dependencies
from tcd_qgis_plugin.about_dialog import AboutDialog
from tcd_qgis_plugin.core import messages, probe
from tcd_qgis_plugin.core.layers import CacheLayerGroup, SteadyCanvas
from tcd_qgis_plugin.core.runs import RunRegistry, job_from_cache
from tcd_qgis_plugin.core.task import PredictionTask, RunOutcome, TileProgress
from tcd_qgis_plugin.core.texts import LOG_TAG
from tcd_qgis_plugin.engine.cache.manifest import MANIFEST_NAME
from tcd_qgis_plugin.engine.cache.status import cache_status
from tcd_qgis_plugin.engine.errors import TCDError
from tcd_qgis_plugin.engine.models.spec import default_model_path, describe_model
from tcd_qgis_plugin.gui import mismatch
from tcd_qgis_plugin.gui.dialog import PredictDialog
from tcd_qgis_plugin.gui.help import HelpWindow
from tcd_qgis_plugin.gui.runs_panel import RunRow, RunsPanel
from tcd_qgis_plugin.paths import icon_path
from tcd_qgis_plugin.processing.provider import TCDProvider

# Layers are reloaded at most this often while tiles come in, and never while the
# canvas is still drawing the last reload (then again this much later).
LAYER_REFRESH_MS = 1000
CANVAS_BUSY_RETRY_MS = 200
UNLOAD_WAIT_MS = 15000


class TCDPlugin(QObject):
    def __init__(self, iface):
        super().__init__()
        self.iface = iface
        self.registry = RunRegistry()
        self.tasks: dict[Path, PredictionTask] = {}
        self.groups: dict[Path, CacheLayerGroup] = {}
        self.dialog: PredictDialog | None = None
        self.about: AboutDialog | None = None
        self.help: HelpWindow | None = None
        self.processors: list[str] | None = None  # Job.provider names that start here, once probed
        self._processor_probe: QProcess | None = None
        self.panel: RunsPanel | None = None
        self.actions: list[QAction] = []
        self.bar_buttons = messages.buttons()  # owns every message-bar button the plugin shows
        self.provider: TCDProvider | None = None
        self._stale: set[Path] = set()
        self._model_names: dict[Path, str] = {}
        self.steady = SteadyCanvas(None)
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(LAYER_REFRESH_MS)
        self._refresh_timer.timeout.connect(self._refresh_stale_layers)

    # -- QGIS plugin interface ------------------------------------------------
    def initProcessing(self) -> None:
        """Register the Processing provider; qgis_process calls only this, initGui calls it too."""
        if self.provider is None:
            self.provider = TCDProvider()
            self.provider.runsChanged.connect(self.refresh_panel, Qt.ConnectionType.QueuedConnection)
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:
        self.initProcessing()
        self.run_action = QAction(QIcon(str(icon_path())), self.tr("Tree crown delineation…"),
                                  self.iface.mainWindow())
        self.run_action.setObjectName("TCDRunAction")
        self.run_action.triggered.connect(self.show_dialog)
        self.iface.addToolBarIcon(self.run_action)
        self.iface.addPluginToRasterMenu(self.tr("Tree crown delineation"), self.run_action)

        self.panel = RunsPanel(self.iface.mainWindow())
        self.panel.resumeRequested.connect(self.resume)
        self.panel.loadLayersRequested.connect(self.load_layers)
        self.panel.deleteRequested.connect(self.delete_cache)
        self.panel.openCacheRequested.connect(self.open_cache)
        self.panel.refreshRequested.connect(self.refresh_panel)
        self.panel.helpRequested.connect(self.show_help)
        self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.panel)
        # Closed until first needed (show_panel): docked open at start it took its width from QGIS's own
        # panels. QGIS restores it afterwards as the user left it in the last session.
        self.panel.hide()
        self.panel_action = self.panel.toggleViewAction()
        self.panel_action.setText(self.tr("TCD runs panel"))
        self.iface.addPluginToRasterMenu(self.tr("Tree crown delineation"), self.panel_action)
        self.about_action = QAction(self.tr("About and environment…"), self.iface.mainWindow())
        self.about_action.triggered.connect(self.show_about)
        self.iface.addPluginToRasterMenu(self.tr("Tree crown delineation"), self.about_action)
        # Fine-tuning's packages (PyTorch's CPU build, onnx, Pillow) are optional: installed on request.
        self.torch_action = QAction(self.tr("Install PyTorch for fine-tuning…"), self.iface.mainWindow())
        self.torch_action.triggered.connect(lambda: self.install_finetune_dependencies())
        self.iface.addPluginToRasterMenu(self.tr("Tree crown delineation"), self.torch_action)
        self.actions = [self.run_action, self.panel_action, self.about_action, self.torch_action]

        QgsProject.instance().cleared.connect(self._project_cleared)
        self.steady = SteadyCanvas(self.iface.mapCanvas())
        self.refresh_panel()
        # Once per session, after QGIS has shown its window: what is missing, with the Install button.
        QTimer.singleShot(0, self._startup_notice)

    def _startup_notice(self) -> None:
        if self.actions:  # not unloaded meanwhile
            dependencies.show_missing_message(self.iface, self.install_dependencies)

    def unload(self) -> None:
        """Cancel running tasks and wait for their workers to leave their caches consistent."""
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        if not self.actions:
            return  # only initProcessing ran (qgis_process)
        QgsProject.instance().cleared.disconnect(self._project_cleared)
        self.bar_buttons.clear()
        self._refresh_timer.stop()
        self.steady.release()
        self._stop_processor_probe()
        for task in list(self.tasks.values()):
            task.runEnded.disconnect(self._run_ended)
            task.tilesCommitted.disconnect(self._tiles_committed)
            task.cancel()
        for task in list(self.tasks.values()):
            task.waitForFinished(UNLOAD_WAIT_MS)
        self.tasks.clear()
        for action in list(self.actions):
            self.iface.removePluginRasterMenu(self.tr("Tree crown delineation"), action)
        self.iface.removeToolBarIcon(self.run_action)
        if self.panel is not None:
            self.iface.removeDockWidget(self.panel)
            self.panel.deleteLater()
            self.panel = None
        for dialog in (self.dialog, self.about, self.help):
            if dialog is not None:
                dialog.deleteLater()
        self.dialog = self.about = self.help = None

    def show_panel(self) -> None:
        """Open the runs panel: as a tab beside a panel already open on the right, else on its own there."""
        panel = self.panel
        if panel is None or panel.isVisible():
            return
        window = self.iface.mainWindow()
        if window.dockWidgetArea(panel) == Qt.DockWidgetArea.RightDockWidgetArea:
            beside = [dock for dock in window.findChildren(QDockWidget)
                      if dock is not panel and dock.isVisible() and not dock.isFloating()
                      and window.dockWidgetArea(dock) == Qt.DockWidgetArea.RightDockWidgetArea]
            if beside and panel not in window.tabifiedDockWidgets(beside[0]):
                window.tabifyDockWidget(beside[0], panel)
        panel.show()
        panel.raise_()

    # -- dialog ---------------------------------------------------------------
    def show_dialog(self) -> PredictDialog:
        if self.dialog is None:
            self.dialog = PredictDialog(self.registry, self.iface.mapCanvas(), self.iface.mainWindow())
            self.dialog.runRequested.connect(self._run_requested)
            self.dialog.installRequested.connect(self.install_dependencies)
            self.dialog.helpRequested.connect(self.show_help)
        self.dialog.fill_models()
        self.dialog.set_raster(self.iface.activeLayer())
        self.dialog.set_missing(dependencies.missing())
        if self.processors is not None:
            self.dialog.set_processors(self.processors)
        else:
            self._probe_processors()
        self.dialog.show()
        self.dialog.raise_()
        return self.dialog

    def _probe_processors(self) -> None:
        """Ask a worker-like child which processors start here; the dialog lists them when it answers."""
        if self._processor_probe is not None or dependencies.missing():
            return
        try:
            python = dependencies.find_qgis_python()
        except dependencies.DependencyError:
            return
        env = QProcessEnvironment()
        for key, value in dependencies.worker_environment().items():
            env.insert(key, value)
        process = self._processor_probe = QProcess(self)
        process.setProcessEnvironment(env)
        process.finished.connect(self._processors_probed)
        command = probe.probe_command(python, "processors")
        process.start(command[0], command[1:])

    def _stop_processor_probe(self) -> None:
        process, self._processor_probe = self._processor_probe, None
        if process is not None:
            process.finished.disconnect(self._processors_probed)
            process.kill()
            process.waitForFinished(3000)
            process.deleteLater()

    def _processors_probed(self, *args) -> None:
        process, self._processor_probe = self._processor_probe, None
        if process is None:
            return
        self.processors = probe.parse_processors(bytes(process.readAllStandardOutput()).decode("utf-8", "replace"))
        process.deleteLater()
        QgsMessageLog.logMessage(self.tr("Processors that start here: {}.").format(", ".join(self.processors)),
                                 LOG_TAG, Qgis.Info)
        if self.dialog is not None:
            self.dialog.set_processors(self.processors)

    def show_help(self) -> HelpWindow:
        """The user's guide, in a window of their own beside QGIS."""
        if self.help is None:
            self.help = HelpWindow(self.iface.mainWindow())
        self.help.show_guide()
        self.help.show()
        self.help.raise_()
        return self.help

    def show_about(self) -> AboutDialog:
        """The plugin's version and the engine's doctor report, as the worker sees it."""
        if self.about is None:
            self.about = AboutDialog(self.iface.mainWindow())
            self.about.installRequested.connect(self.install_dependencies)
        self.about.refresh()
        self.about.show()
        self.about.raise_()
        return self.about

    def _run_requested(self, job) -> None:
        job = self._settle_folder(job)
        if job is not None and self.start_run(job) is not None and self.dialog is not None:
            self.dialog.hide()

    def _settle_folder(self, job, choices=(mismatch.RESUME, mismatch.AFRESH, mismatch.OTHER_FOLDER)):
        """The job to run when its folder already holds a run this one cannot continue, as the user chooses.

        None when nothing is to run now (Cancel, or another folder to choose in the dialog).
        """
        cache_dir = Path(job.cache_dir).resolve()
        if job.overwrite or cache_dir in self.tasks or not (cache_dir / MANIFEST_NAME).is_file():
            return job
        try:
            python = dependencies.find_qgis_python()
            QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
            try:
                found = probe.find_mismatch(job, python, dependencies.worker_environment())
            finally:
                QApplication.restoreOverrideCursor()
        except (dependencies.DependencyError, probe.ProbeError) as exc:
            QgsMessageLog.logMessage(str(exc), LOG_TAG, Qgis.Warning)
            return job  # the run itself will say what is wrong
        if found is None:
            return job
        choice = mismatch.ask(self.dialog if self.dialog is not None and self.dialog.isVisible()
                              else self.iface.mainWindow(), cache_dir, found.message, choices)
        if choice == mismatch.RESUME:
            try:
                return self.registry.job(cache_dir) or job_from_cache(cache_dir)
            except TCDError as exc:
                self._bar(str(exc), Qgis.Warning)
                return None
        if choice == mismatch.AFRESH:
            return self._afresh(job)
        if choice == mismatch.OTHER_FOLDER and self.dialog is not None:
            self.dialog.choose_other_folder()
        return None

    def _afresh(self, job):
        """``job`` starting over in its folder, once the user confirmed deleting the old cache; else None."""
        cache_dir = Path(job.cache_dir).resolve()
        status = cache_status(cache_dir)
        parent = self.dialog if self.dialog is not None and self.dialog.isVisible() else self.iface.mainWindow()
        if not mismatch.confirm_afresh(parent, cache_dir, status.done, status.total):
            return None
        group = self.groups.pop(cache_dir, None) or CacheLayerGroup(QgsProject.instance(), cache_dir)
        group.remove()  # the engine deletes the files under them
        return replace(job, overwrite=True)

    def start_afresh(self, job) -> PredictionTask | None:
        """Delete a cache that cannot be continued (after asking) and run ``job`` into it again."""
        job = self._afresh(job)
        return None if job is None else self.start_run(job)

    # -- runs -----------------------------------------------------------------
    def start_run(self, job) -> PredictionTask | None:
        """Start predicting ``job`` in a worker process; None (and a message) when it cannot start."""
        cache_dir = Path(job.cache_dir).resolve()
        if cache_dir in self.tasks:
            self._bar(self.tr("A run into {} is already going on.").format(cache_dir.name), Qgis.Warning)
            return None
        if dependencies.show_missing_message(self.iface, self.install_dependencies) is not None:
            return None
        try:
            python = dependencies.find_qgis_python()
        except dependencies.DependencyError as exc:
            self._bar(str(exc), Qgis.Critical)
            return None
        self.registry.remember_job(job)
        QgsMessageLog.logMessage(self.tr("Processor for {}: {}.").format(
            cache_dir.name, job.provider or self.tr("automatic (a GPU when one starts, else the CPU)")), LOG_TAG,
            Qgis.Info)
        task = PredictionTask(job, python, dependencies.worker_environment())
        task.tilesCommitted.connect(self._tiles_committed, Qt.ConnectionType.QueuedConnection)
        task.runEnded.connect(self._run_ended)
        self.tasks[cache_dir] = task
        self.groups.setdefault(cache_dir, CacheLayerGroup(QgsProject.instance(), cache_dir))
        self.steady.hold()
        QgsApplication.taskManager().addTask(task)
        self.show_panel()
        self.refresh_panel()
        return task

    def resume(self, cache_dir) -> PredictionTask | None:
        """Run a known cache's job again: the engine predicts only the tiles still missing."""
        cache_dir = Path(cache_dir)
        try:
            job = self.registry.job(cache_dir) or job_from_cache(cache_dir)
        except TCDError as exc:
            self._bar(str(exc), Qgis.Warning)
            return None
        job = self._settle_folder(job, choices=(mismatch.AFRESH,))
        return None if job is None else self.start_run(job)

    def _tiles_committed(self, progress: TileProgress) -> None:
        cache_dir = Path(progress.cache_dir).resolve()
        if cache_dir not in self.tasks:
            return  # a late event of a run the project no longer shows
        if self.panel is not None:
            self.panel.update_progress(cache_dir, progress.done, progress.total)
        group = self.groups.get(cache_dir)
        if group is not None and not group.layers():
            self._sync_layers(cache_dir)  # the first tiles: show the layers at once
        else:
            self._stale.add(cache_dir)
            if not self._refresh_timer.isActive():
                self._refresh_timer.start(LAYER_REFRESH_MS)

    def _refresh_stale_layers(self) -> None:
        if self.steady.busy():  # a reload now would restart the drawing of the last one
            self._refresh_timer.start(CANVAS_BUSY_RETRY_MS)
            return
        stale, self._stale = self._stale, set()
        for cache_dir in stale:
            self._sync_layers(cache_dir)

    def _sync_layers(self, cache_dir: Path) -> None:
        group = self.groups.get(cache_dir)
        if group is None:
            return
        try:
            group.sync()
        except TCDError as exc:
            QgsMessageLog.logMessage(str(exc), LOG_TAG, Qgis.Warning)

    def _run_ended(self, outcome: RunOutcome) -> None:
        cache_dir = Path(outcome.cache_dir).resolve()
        self._stale.discard(cache_dir)
        task = self.tasks.pop(cache_dir, None)
        if not self.tasks:
            self.steady.release()
        if outcome.state == "failed" and not (cache_dir / MANIFEST_NAME).is_file():
            self.registry.forget_cache(cache_dir)  # refused before it wrote anything: no run to list
        else:
            self.registry.set_failure(cache_dir, outcome.message if outcome.state == "failed" else None)
        if task is not None:
            self._sync_layers(cache_dir)
            actions = []
            if outcome.state == "failed" and outcome.data.get("start_afresh_fixes"):
                actions.append(messages.Action(self.tr("Start afresh…"), partial(self.start_afresh, task.job)))
            messages.push_result(self.iface, outcome.message, messages.level_of(outcome.state), task.description(),
                                 actions)
        self.refresh_panel()

    def _project_cleared(self) -> None:
        """A closed project takes its layers along: cancel its runs and forget the groups."""
        for task in self.tasks.values():
            task.cancel()
        self.tasks.clear()
        self.groups.clear()
        self._stale.clear()
        self.steady.release()

    # -- caches -----------------------------------------------------------------
    def load_layers(self, cache_dir) -> list:
        """Add (or reload) a cache's layers in its group; returns the layers."""
        cache_dir = Path(cache_dir).resolve()
        group = self.groups.setdefault(cache_dir, CacheLayerGroup(QgsProject.instance(), cache_dir))
        self._sync_layers(cache_dir)
        if not group.layers():
            self._bar(self.tr("{} holds no layers yet.").format(cache_dir.name), Qgis.Info)
        return group.layers()

    def open_cache(self, cache_dir) -> bool:
        """Add a cache folder made elsewhere (another profile, the command line) to the panel."""
        cache_dir = Path(cache_dir).resolve()
        if not (cache_dir / MANIFEST_NAME).is_file():
            self._bar(self.tr("{} is not a TCD cache: it has no {}.").format(cache_dir, MANIFEST_NAME), Qgis.Warning)
            return False
        self.registry.add_cache(cache_dir)
        self.refresh_panel()
        if self.panel is not None:
            self.panel.select(cache_dir)
        return True

    def delete_cache(self, cache_dir) -> bool:
        """Remove a cache's layers, delete its folder and forget it (the panel asked first)."""
        cache_dir = Path(cache_dir).resolve()
        if cache_dir in self.tasks:
            self._bar(self.tr("Cancel the run into {} before deleting it.").format(cache_dir.name), Qgis.Warning)
            return False
        group = self.groups.pop(cache_dir, None) or CacheLayerGroup(QgsProject.instance(), cache_dir)
        group.remove()
        if cache_dir.is_dir():
            if not (cache_dir / MANIFEST_NAME).is_file():
                self._bar(self.tr("{} is not a TCD cache; it was not deleted.").format(cache_dir), Qgis.Warning)
                return False
            try:
                shutil.rmtree(cache_dir)
            except OSError as exc:
                self._bar(self.tr("Could not delete {}: {}.").format(cache_dir, exc.strerror), Qgis.Critical)
                return False
        self.registry.forget_cache(cache_dir)
        self.refresh_panel()
        return True

    def run_rows(self) -> list[RunRow]:
        rows = []
        for cache_dir in self.registry.caches():
            task = self.tasks.get(cache_dir)
            if not cache_dir.is_dir():
                if task is not None:  # the worker has not created the folder yet
                    rows.append(RunRow(cache_dir, task.job.image.name, self._model_name(task.job), 0, 0, "running"))
                else:
                    rows.append(RunRow(cache_dir, "", "", 0, 0, "missing", self.tr("The folder no longer exists.")))
                continue
            status = cache_status(cache_dir)
            failure = self.registry.failure(cache_dir)
            state, note = status.state, status.error or ""
            if task is not None:
                state = "running"
            elif failure and state not in ("complete", "running"):
                state, note = "failed", failure
            image = status.image_path.name if status.image_path else (task.job.image.name if task else "")
            model = status.model_name or (self._model_name(task.job) if task else "")
            rows.append(RunRow(cache_dir, image, model, status.done, status.total, state, note))
        return rows

    def _model_name(self, job) -> str:
        """A job's model as the panel names it (its metadata name), before the cache records it."""
        path = Path(job.model) if job.model is not None else default_model_path()
        if path not in self._model_names:
            try:
                self._model_names[path] = describe_model(path).name
            except TCDError:
                self._model_names[path] = path.name
        return self._model_names[path]

    def refresh_panel(self) -> None:
        if self.panel is not None:
            self.panel.set_rows(self.run_rows())

    # -- dependencies ---------------------------------------------------------------
    def install_dependencies(self, wait: bool = False):
        """Install the missing packages into the profile; the dialog and panel update afterwards."""
        return dependencies.install(wait=wait, on_finished=self._dependencies_changed)

    def install_finetune_dependencies(self, wait: bool = False):
        """Install PyTorch (CPU), onnx and Pillow for tcd:finetunemodel into the profile, QGIS's numpy pinned."""
        return dependencies.install_finetune(wait=wait, on_finished=self._dependencies_changed)

    def _dependencies_changed(self, result) -> None:
        dependencies.activate()
        # What starts here may have changed with the packages (onnxruntime with a GPU provider): ask again.
        self._stop_processor_probe()
        self.processors = None
        self._probe_processors()
        if self.dialog is not None:
            self.dialog.set_missing(dependencies.missing())
        if self.about is not None and self.about.isVisible():
            self.about.refresh()
        self.refresh_panel()

    def _bar(self, message: str, level) -> None:
        """One sentence in the message bar; the same in the TCD log."""
        messages.push(self.iface, message, level)
