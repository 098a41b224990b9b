"""The message bar as the plugin uses it (main thread only).

One sentence per message, under the plugin's title, and the same in the "TCD" log
tab. How a run or an install ended is a *result* (the task has logged it already):
it stays until the user closes it, and it goes on top of the bar. QGIS itself may report the end of every task
("Task complete", "Task failed", with the task's description) when it cannot show
a desktop notification; it does so after the task's ``finished()``, so a result is
pushed on the next turn of the event loop and takes that generic item's place.

Items with buttons belong to :class:`BarButtons`, which holds a Python reference to
each item, its buttons and their actions for as long as the item is in a bar. Without
that owner the only path to a button's slot runs through Qt: PyQt lets the garbage
collector see a slot through its button, so a slot that refers to its own item forms
a cycle nothing in Python reaches; ``gc`` then clears the slot's closure while Qt can
still call it, and the click crashes QGIS. A click also never removes the item that
holds the clicked button inside its own slot: the owner removes it, and then acts,
on the next turn of the event loop.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from qgis.core import Qgis, QgsMessageLog
from qgis.PyQt.QtCore import QCoreApplication, QObject, QTimer
from qgis.PyQt.QtWidgets import QPushButton

from tcd_qgis_plugin.core.texts import LOG_TAG


def title() -> str:
    return QCoreApplication.translate("TCDPlugin", "Tree crown delineation")


@dataclass(frozen=True)
class Action:
    """A message-bar button: its text, what a click does, and whether the click closes the message."""

    text: str
    run: Callable[[], object]
    closes: bool = True


@dataclass
class _Entry:
    bar: object
    item: object
    kind: str
    actions: tuple[Action, ...]
    buttons: list


class BarButtons(QObject):
    """Owns the plugin's message-bar items that have buttons (see the module docstring).

    ``kind`` names what an item says ("missing", "install", a run's folder...): pushing
    an item of a kind replaces the one already shown, and :meth:`drop` removes the
    items of a kind once what they say is no longer true.
    """

    def __init__(self, parent=None):
        super().__init__(parent)
        self._entries: dict[int, _Entry] = {}
        self._keys = itertools.count()
        self._pending: list[Callable[[], None]] = []
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self._run_pending)

    def push(self, iface, message: str, level, actions: tuple[Action, ...] | list[Action], kind: str = "",
             log: bool = True):
        """A message with one button per action, until closed; returns the bar item."""
        if kind:
            self.drop(kind)
        bar = iface.messageBar()
        item = bar.createMessage(title(), message)
        key = next(self._keys)
        buttons = []
        for index, action in enumerate(actions):
            button = QPushButton(action.text)
            button.clicked.connect(partial(self._clicked, key, index))
            item.layout().addWidget(button)
            buttons.append(button)
        self._entries[key] = _Entry(bar, item, kind, tuple(actions), buttons)
        # Closed by its own X, by clearWidgets or by QGIS: then forget it.
        item.destroyed.connect(partial(self._forget, key))
        bar.pushWidget(item, level)
        if log:
            QgsMessageLog.logMessage(message, LOG_TAG, level)
        return item

    def items(self, kind: str = "") -> list:
        """The items shown, of ``kind`` (all when empty)."""
        return [entry.item for entry in self._entries.values() if not kind or entry.kind == kind]

    def drop(self, kind: str) -> None:
        """Remove the items of ``kind`` from their bars (never called from one of their own slots)."""
        for key, entry in list(self._entries.items()):
            if entry.kind == kind:
                self._remove(key)

    def clear(self) -> None:
        """Remove every item the plugin put up, and run nothing still pending (plugin unload)."""
        self._timer.stop()
        self._pending.clear()
        for key in list(self._entries):
            self._remove(key)

    def later(self, step: Callable[[], None]) -> None:
        """Run ``step`` on the next turn of the event loop, owned until then."""
        self._pending.append(step)
        self._timer.start()

    def _clicked(self, key: int, index: int, *_checked) -> None:
        entry = self._entries.get(key)
        if entry is None:
            return
        action = entry.actions[index]
        if action.closes:
            # The button's own slot is still on the stack: remove its item afterwards.
            for button in entry.buttons:
                button.setEnabled(False)
            self.later(partial(self._remove, key))
            self.later(action.run)
        else:
            action.run()

    def _run_pending(self) -> None:
        pending, self._pending = self._pending, []
        for step in pending:
            step()

    def _remove(self, key: int) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        try:
            entry.bar.popWidget(entry.item)
        except RuntimeError:  # the item is gone already (its C++ side was deleted)
            pass

    def _forget(self, key: int, *_args) -> None:
        self._entries.pop(key, None)


_owner: BarButtons | None = None


def buttons() -> BarButtons:
    """The one owner of the plugin's message-bar buttons (the plugin holds it too and clears it on unload)."""
    global _owner
    if _owner is None:
        _owner = BarButtons()
    return _owner


def push(iface, message: str, level, duration: int = -1) -> None:
    """One sentence in the message bar (``duration`` -1: QGIS's default for the level; 0: until closed)."""
    iface.messageBar().pushMessage(title(), message, level, duration)
    QgsMessageLog.logMessage(message, LOG_TAG, level)


def push_result(iface, message: str, level, task_description: str = "", actions=(), kind: str = "") -> None:
    """How a task ended: on top of the bar and there until closed, replacing QGIS's generic item for the task."""
    owner = buttons()
    owner.later(partial(_show_result, owner, iface, message, level, task_description, tuple(actions), kind))


def _show_result(owner: BarButtons, iface, message: str, level, task_description: str, actions, kind: str) -> None:
    bar = iface.messageBar()
    if task_description:
        for item in list(bar.items()):
            if item.text() == task_description and item.title() != title():
                bar.popWidget(item)
    if actions:
        owner.push(iface, message, level, actions, kind=kind, log=False)
    else:
        if kind:
            owner.drop(kind)
        bar.pushMessage(title(), message, level, 0)


def level_of(state: str):
    """The bar level of a run's end state: a cancel is information, not a failure."""
    return {"complete": Qgis.Success, "cancelled": Qgis.Info}.get(state, Qgis.Critical)
