"""Small facts about the plugin's words: the log tab they go to, and how they are translated."""

from __future__ import annotations

from collections.abc import Callable

from qgis.PyQt.QtCore import QCoreApplication

LOG_TAG = "TCD"  # the plugin's tab in QGIS's Log Messages panel


def translator(context: str) -> Callable[[str], str]:
    """``tr(text)`` translating in ``context`` (the name Qt Linguist files group the strings under)."""

    def tr(text: str) -> str:
        return QCoreApplication.translate(context, text)

    return tr
