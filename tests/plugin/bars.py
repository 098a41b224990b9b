"""A message bar as desktop QGIS has one, for the tests that click message-bar buttons.

QGIS's own bar is made in C++: no Python object refers to its Python wrapper, so
what hangs only off that wrapper (an item, its buttons, their slots) is reachable
from Python through nothing but Qt, and ``gc`` may collect it while Qt can still
call it. A ``QgsMessageBar`` made in Python is held by its Python parent and hides
that. The bar of a ``QgsCodeEditorWidget`` is made in C++, like QGIS's.
"""

import gc

from qgis.core import QgsApplication
from qgis.gui import QgsCodeEditorPython, QgsCodeEditorWidget
from qgis.PyQt.QtWidgets import QPushButton


class CppBarIface:
    """An iface whose ``messageBar()`` is a C++-made bar, looked up afresh at each call as QGIS's is."""

    def __init__(self, parent=None):
        self._editor = QgsCodeEditorWidget(QgsCodeEditorPython(), parent=parent)

    def messageBar(self):
        return self._editor.messageBar()


def items(bar) -> list:
    """(title, text, level, duration) of each item, the one on top first."""
    return [(i.title(), i.text(), i.level(), i.duration()) for i in bar.items()]


def click_after_gc(iface, text: str) -> None:
    """Run the garbage collector, click the one button reading ``text`` in ``iface``'s bar, let the click's work run.

    The caller must hold no Python reference to the bar or its items, as nothing in QGIS does.
    """
    gc.collect()
    (button,) = [b for b in iface.messageBar().findChildren(QPushButton) if b.text() == text]
    button.click()
    for _ in range(3):
        QgsApplication.processEvents()
