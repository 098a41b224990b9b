"""The Processing provider ``tcd``: "Tree crown delineation" in the toolbox and in ``qgis_process``.

Registered by the plugin's ``initProcessing()``, which QGIS calls on its own in
``qgis_process`` (``hasProcessingProvider=yes`` in metadata.txt) and the plugin
calls from ``initGui()`` in desktop QGIS.
"""

from __future__ import annotations

import threading

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtGui import QIcon

from tcd_qgis_plugin.paths import icon_path
from tcd_qgis_plugin.processing.delineate import DelineateCrownsAlgorithm
from tcd_qgis_plugin.processing.evaluate import EvaluateCrownsAlgorithm
from tcd_qgis_plugin.processing.finetune import FinetuneModelAlgorithm
from tcd_qgis_plugin.processing.heights import CrownHeightsAlgorithm

PROVIDER_ID = "tcd"


class RunsChanged:
    """Tells the plugin, from Processing's threads, that a run started or ended, while the provider lives.

    A run can end after QGIS has deleted the provider (the plugin unloaded during a batch, which
    goes on in tasks after its dialog returns). The provider closes the relay as it is removed,
    under the lock every emit holds, so no emit reaches a deleted provider.
    """

    def __init__(self, provider: TCDProvider):
        self._lock = threading.Lock()
        self._provider: TCDProvider | None = provider

    def __call__(self) -> None:
        with self._lock:
            if self._provider is not None:
                self._provider.runsChanged.emit()  # queued to the plugin on the main thread

    def close(self) -> None:
        with self._lock:
            self._provider = None


class TCDProvider(QgsProcessingProvider):
    # A run started or ended (emitted from Processing's thread); the plugin refreshes its runs panel.
    runsChanged = pyqtSignal()

    def __init__(self):
        super().__init__()
        self.runs_changed = RunsChanged(self)

    def id(self) -> str:
        return PROVIDER_ID

    def name(self) -> str:
        return self.tr("Tree crown delineation")

    def longName(self) -> str:
        return self.name()

    def icon(self) -> QIcon:
        return QIcon(str(icon_path()))

    def svgIconPath(self) -> str:
        return str(icon_path())

    def unload(self) -> None:
        """Called by the registry as it removes (and then deletes) the provider."""
        self.runs_changed.close()
        super().unload()

    def loadAlgorithms(self) -> None:
        self.addAlgorithm(DelineateCrownsAlgorithm(self.runs_changed))
        self.addAlgorithm(CrownHeightsAlgorithm())
        self.addAlgorithm(EvaluateCrownsAlgorithm())
        self.addAlgorithm(FinetuneModelAlgorithm())
