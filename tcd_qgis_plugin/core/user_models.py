"""The user's own models (fine-tuned ones): a folder in the QGIS profile that the model list shows.

``<profile>/tcd_qgis_plugin/models/*.onnx``: ``tcd:finetunemodel`` writes there by
default, and the dialog lists every model in it after the bundled one.
"""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsApplication


def user_models_dir() -> Path:
    return Path(QgsApplication.qgisSettingsDirPath()) / "tcd_qgis_plugin" / "models"


def user_models() -> list[Path]:
    """The ONNX models in the user's models folder, newest first."""
    folder = user_models_dir()
    if not folder.is_dir():
        return []
    return sorted(folder.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
