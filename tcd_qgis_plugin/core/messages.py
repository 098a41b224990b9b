"""The message bar as the plugin uses it (main thread only).

One sentence per message, under the plugin's title, and the same in the "TCD" log
tab. How a run or an install ended is a *result* (the task has logged it already):
it stays until the user closes it, and it goes on top of the bar. QGIS itself may report the end of every task
("Task complete", "Task failed", with the task's description) when it cannot show
a desktop notification; it does so after the task's ``finished()``, so a result is
pushed on the next turn of the event loop and takes that generic item's place.
"""

from __future__ import annotations

from qgis.core import Qgis, QgsMessageLog
from qgis.PyQt.QtCore import QCoreApplication, QTimer

from tcd_qgis_plugin.core.texts import LOG_TAG


def title() -> str:
    return QCoreApplication.translate("TCDPlugin", "Tree crown delineation")


def push(iface, message: str, level, duration: int = -1) -> None:
    """One sentence in the message bar (``duration`` -1: QGIS's default for the level; 0: until closed)."""
    iface.messageBar().pushMessage(title(), message, level, duration)
    QgsMessageLog.logMessage(message, LOG_TAG, level)


def push_widget(iface, message: str, level, buttons=(), log: bool = True) -> object:
    """A message with buttons, until closed; returns the bar item."""
    bar = iface.messageBar()
    item = bar.createMessage(title(), message)
    for button in buttons:
        item.layout().addWidget(button)
    bar.pushWidget(item, level)
    if log:
        QgsMessageLog.logMessage(message, LOG_TAG, level)
    return item


def push_result(iface, message: str, level, task_description: str = "", buttons=()) -> None:
    """How a task ended: on top of the bar and there until closed, replacing QGIS's generic item for the task."""

    def show():
        bar = iface.messageBar()
        if task_description:
            for item in list(bar.items()):
                if item.text() == task_description and item.title() != title():
                    bar.popWidget(item)
        if buttons:
            push_widget(iface, message, level, buttons, log=False)
        else:
            bar.pushMessage(title(), message, level, 0)

    QTimer.singleShot(0, show)


def level_of(state: str):
    """The bar level of a run's end state: a cancel is information, not a failure."""
    return {"complete": Qgis.Success, "cancelled": Qgis.Info}.get(state, Qgis.Critical)
