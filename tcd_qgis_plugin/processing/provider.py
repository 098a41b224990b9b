"""The Processing provider ``tcd``: "Tree crown delineation" in the toolbox and in ``qgis_process``.

Registered by the plugin's ``initProcessing()``, which QGIS calls on its own in
``qgis_process`` (``hasProcessingProvider=yes`` in metadata.txt) and the plugin
calls from ``initGui()`` in desktop QGIS.
"""

from __future__ import annotations

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtGui import QIcon

from tcd_qgis_plugin.paths import icon_path
from tcd_qgis_plugin.processing.delineate import DelineateCrownsAlgorithm
from tcd_qgis_plugin.processing.evaluate import EvaluateCrownsAlgorithm
from tcd_qgis_plugin.processing.finetune import FinetuneModelAlgorithm
from tcd_qgis_plugin.processing.heights import CrownHeightsAlgorithm

PROVIDER_ID = "tcd"


class TCDProvider(QgsProcessingProvider):
    # A run started or ended (emitted from Processing's thread); the plugin refreshes its runs panel.
    runsChanged = pyqtSignal()

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

    def loadAlgorithms(self) -> None:
        self.addAlgorithm(DelineateCrownsAlgorithm())
        self.addAlgorithm(CrownHeightsAlgorithm())
        self.addAlgorithm(EvaluateCrownsAlgorithm())
        self.addAlgorithm(FinetuneModelAlgorithm())
