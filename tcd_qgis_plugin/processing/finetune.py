"""``tcd:finetunemodel``: fine-tune the bundled model on crowns the user drew, into the user's models folder.

Training needs PyTorch, onnx and Pillow, which the plugin installs only on demand
(:func:`tcd_qgis_plugin.dependencies.install_finetune`); without them the algorithm
says so in one sentence. The work runs in a child process, ``python -m engine
finetune --progress-json`` with QGIS's Python in the plugin's own folder (where the
``engine`` and the default model's ``training`` code sit side by side, as in the
repository), so QGIS never imports torch and a crash in training cannot take it
down. Progress lines become the feedback's progress; a cancel stops the child,
which keeps a checkpoint: running the algorithm again with the same output
continues. The model lands in ``<profile>/tcd_qgis_plugin/models/`` by default,
where the dialog's model list finds it.
"""

from __future__ import annotations

import json
import queue
import re
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from qgis.core import (
    Qgis,
    QgsMessageLog,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
)
from qgis.PyQt.QtGui import QIcon

from tcd_qgis_plugin import dependencies
from tcd_qgis_plugin.core.texts import LOG_TAG, translator
from tcd_qgis_plugin.core.user_models import user_models_dir
from tcd_qgis_plugin.gui.dialog import raster_file
from tcd_qgis_plugin.paths import PLUGIN_DIR, icon_path
from tcd_qgis_plugin.processing.evaluate import source_name, vector_data

INPUT = "INPUT"
REFERENCE = "REFERENCE"
AREA = "AREA"
BASE = "BASE"
MINUTES = "MINUTES"
ITERATIONS = "ITERATIONS"
OUTPUT = "OUTPUT"
F1_BEFORE, F1_AFTER, SUMMARY = "F1_BEFORE", "F1_AFTER", "SUMMARY"
STOP_GRACE_S = 60.0

tr = translator("FinetuneModelAlgorithm")


def finetune_command(python: Path, *args: str) -> list[str]:
    """``python -m engine finetune ...``, run in the plugin folder (see the module docstring)."""
    return [str(python), "-m", "engine", "finetune", *args]


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "layer"


class FinetuneModelAlgorithm(QgsProcessingAlgorithm):
    def name(self) -> str:
        return "finetunemodel"

    def displayName(self) -> str:
        return tr("Fine-tune a model on your crowns")

    def group(self) -> str:
        return ""

    def groupId(self) -> str:
        return ""

    def tags(self) -> list[str]:
        return tr("train,training,fine-tune,finetune,model,onnx,pytorch,tree,crown").split(",")

    def icon(self) -> QIcon:
        return QIcon(str(icon_path()))

    def shortHelpString(self) -> str:
        return tr(
            "Fine-tunes the bundled model (or another fine-tunable one) on crowns you drew over a raster: crown "
            "polygons or boxes in any CRS; tree-top points can score crowns but not train a model.\n\n"
            "A strip of your crowns (a quarter, along the area's longer side) is held back: the model is scored "
            "on it before and after, never trained on it. Training takes about the given minutes on two CPU "
            "cores; cancel keeps a checkpoint, and running again with the same output model continues.\n\n"
            "The new ONNX model names its base model, a fingerprint of your data and both scores in its "
            "metadata, and appears in the plugin's model list (default folder: your profile's "
            "tcd_qgis_plugin/models). One that scores worse than its base says so in its name.\n\n"
            "Needs PyTorch (a CPU build), onnx and Pillow: Raster ▸ Tree crown delineation ▸ Install PyTorch for "
            "fine-tuning… installs them beside QGIS, leaving QGIS's numpy untouched.")

    def createInstance(self) -> FinetuneModelAlgorithm:
        return FinetuneModelAlgorithm()

    def initAlgorithm(self, config=None) -> None:
        self.addParameter(QgsProcessingParameterRasterLayer(INPUT, tr("Raster the crowns were drawn on")))
        self.addParameter(QgsProcessingParameterFeatureSource(
            REFERENCE, tr("Your crowns (polygons or boxes)"), [QgsProcessing.SourceType.TypeVectorAnyGeometry]))
        self.addParameter(QgsProcessingParameterFeatureSource(
            AREA, tr("Area where your crowns are complete"), [QgsProcessing.SourceType.TypeVectorPolygon],
            optional=True))
        self.addParameter(QgsProcessingParameterFile(
            BASE, tr("Model to start from (empty: the bundled default model)"),
            behavior=QgsProcessingParameterFile.Behavior.File, extension="onnx", optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            MINUTES, tr("Training time (minutes)"), QgsProcessingParameterNumber.Type.Double, defaultValue=10.0,
            minValue=0.1))
        steps = QgsProcessingParameterNumber(
            ITERATIONS, tr("Training steps (empty: as many as the training time allows)"),
            QgsProcessingParameterNumber.Type.Integer, optional=True, minValue=1)
        steps.setFlags(steps.flags() | QgsProcessingParameterDefinition.Flag.FlagAdvanced)
        self.addParameter(steps)
        self.addParameter(QgsProcessingParameterFileDestination(
            OUTPUT, tr("Fine-tuned model (skip: your models folder)"), tr("ONNX models (*.onnx)"), optional=True,
            createByDefault=False))
        self.addOutput(QgsProcessingOutputNumber(F1_BEFORE, tr("F1 of the base model on the held-back crowns")))
        self.addOutput(QgsProcessingOutputNumber(F1_AFTER, tr("F1 of the fine-tuned model on the held-back crowns")))
        self.addOutput(QgsProcessingOutputString(SUMMARY, tr("Summary")))

    def processAlgorithm(self, parameters, context, feedback):
        raster = self.parameterAsRasterLayer(parameters, INPUT, context)
        image = raster_file(raster) if raster is not None else None
        if image is None:
            raise QgsProcessingException(tr("Choose a raster layer that is a file on disk."))
        absent = dependencies.missing() + dependencies.missing_for_finetune()
        if absent:
            raise QgsProcessingException(tr(
                "Fine-tuning needs the Python packages {}: choose Raster ▸ Tree crown delineation ▸ Install "
                "PyTorch for fine-tuning… (a CPU build, about 200 MB).").format(", ".join(r.name for r in absent)))
        try:
            python = dependencies.find_qgis_python()
        except dependencies.DependencyError as exc:
            raise QgsProcessingException(str(exc)) from exc
        out_text = self.parameterAsFileOutput(parameters, OUTPUT, context).strip()
        if not out_text or parameters.get(OUTPUT) in (None, ""):
            out = user_models_dir() / f"{_safe_name(image.stem)}_finetuned.onnx"
        else:
            out = Path(out_text)
        if out.suffix.lower() != ".onnx":
            out = out.with_suffix(".onnx")
        out = out.absolute()
        minutes = self.parameterAsDouble(parameters, MINUTES, context)
        with tempfile.TemporaryDirectory(prefix="tcd_finetune_") as tmp:
            args = ["--image", str(image.absolute()), "--out", str(out), "--minutes", f"{minutes:g}",
                    "--progress-json"]
            args += ["--truth", str(self._layer_file(parameters, REFERENCE, context, Path(tmp)))]
            if parameters.get(AREA) not in (None, ""):
                args += ["--area", str(self._layer_file(parameters, AREA, context, Path(tmp)))]
            if parameters.get(ITERATIONS) not in (None, ""):
                args += ["--iterations", str(self.parameterAsInt(parameters, ITERATIONS, context))]
            base = self.parameterAsFile(parameters, BASE, context).strip()
            if base:
                args += ["--base", str(Path(base).absolute())]
            result = self._run(finetune_command(python, *args), feedback)
        before, after = result["before"]["f1"], result["after"]["f1"]
        summary = tr("{}: F1 on your held-back crowns {:.3f} with the base model, {:.3f} fine-tuned.").format(
            out.name, before, after)
        if result.get("worse_than_base"):
            summary += " " + tr("It scores worse than its base model: keep using the base model, or add crowns "
                                "and fine-tune again.")
            feedback.reportError(summary)
        else:
            feedback.pushInfo(summary)
        return {OUTPUT: str(out), F1_BEFORE: before, F1_AFTER: after, SUMMARY: summary}

    def _layer_file(self, parameters, name: str, context, tmp: Path) -> Path:
        """The source's features as a GeoPackage the child reads (any layer QGIS opens, memory ones included)."""
        from tcd_qgis_plugin.engine.reference import write_vector

        source = self.parameterAsSource(parameters, name, context)
        if source is None:
            raise QgsProcessingException(tr("Choose the layer of your crowns."))
        label = source_name(self, parameters, name, context)
        return write_vector(vector_data(source, label), tmp / f"{_safe_name(label)}.gpkg")

    def _run(self, command: list[str], feedback) -> dict:
        """Run the child, relaying progress and cancel; its result event, or one sentence why not."""
        QgsMessageLog.logMessage("Running: " + " ".join(command), LOG_TAG, Qgis.MessageLevel.Info)
        proc = subprocess.Popen(command, cwd=str(PLUGIN_DIR), env=dependencies.worker_environment(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                encoding="utf-8", errors="replace",
                                creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
        lines: queue.Queue = queue.Queue()
        errors: list[str] = []
        readers = [threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True),
                   threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True)]
        for reader in readers:
            reader.start()
        result, stopping_since = None, None
        while True:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                line = None
            if line:
                try:
                    event = json.loads(line)
                except ValueError:
                    event = {}
                if "progress" in event:
                    feedback.setProgress(100.0 * event["progress"])
                    feedback.setProgressText(event.get("message", ""))
                result = event.get("result", result)
            if feedback.isCanceled() and stopping_since is None:
                stopping_since = time.monotonic()
                proc.terminate()  # the child saves a checkpoint at its next step and exits
            if stopping_since is not None and time.monotonic() - stopping_since > STOP_GRACE_S:
                proc.kill()
            if line is None and proc.poll() is not None and lines.empty():
                break
        for reader in readers:
            reader.join(timeout=5)
        details = "".join(errors)
        if details:
            QgsMessageLog.logMessage(details, LOG_TAG, Qgis.MessageLevel.Info)
        if stopping_since is not None:
            raise QgsProcessingException(tr("Fine-tuning was cancelled; run it again with the same output model "
                                            "to continue from its last checkpoint."))
        if proc.returncode != 0 or result is None:
            sentence = next((ln[len("error: "):] for ln in reversed(details.splitlines())
                             if ln.startswith("error: ")), None)
            raise QgsProcessingException(sentence or tr("Fine-tuning failed; the TCD log tab has the details."))
        return result
