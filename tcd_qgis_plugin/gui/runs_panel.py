"""The "TCD runs" dock: known caches with their image, model, tiles and state.

The panel only shows rows and asks questions; each button emits a request with
the cache folder and the plugin object acts on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from qgis.gui import QgsDockWidget
from qgis.PyQt.QtCore import Qt, QUrl, pyqtSignal
from qgis.PyQt.QtGui import QDesktopServices
from qgis.PyQt.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from tcd_qgis_plugin.gui.summary import SummaryView

COLUMNS = ("run", "state", "tiles", "image", "model")


@dataclass(frozen=True)
class RunRow:
    """One known cache as the panel shows it. ``state``: empty, partial, running, complete, failed, missing."""

    cache_dir: Path
    image: str
    model: str
    done: int
    total: int
    state: str
    note: str = ""  # tooltip: the failure sentence or why the cache cannot be read


class RunsPanel(QgsDockWidget):
    resumeRequested = pyqtSignal(object)  # Path
    loadLayersRequested = pyqtSignal(object)
    deleteRequested = pyqtSignal(object)
    openCacheRequested = pyqtSignal(object)
    refreshRequested = pyqtSignal()
    helpRequested = pyqtSignal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle(self.tr("TCD runs"))
        self.setObjectName("TCDRunsPanel")
        self.tree = QTreeWidget()
        self.tree.setRootIsDecorated(False)
        self.tree.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.tree.setHeaderLabels([self.tr("Run"), self.tr("State"), self.tr("Tiles"), self.tr("Image"),
                                   self.tr("Model")])
        # Every column as wide as its text, also while a running run's tile count grows.
        self.tree.header().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.tree.header().setStretchLastSection(False)
        self.resume_button = QPushButton(self.tr("Resume"))
        self.load_button = QPushButton(self.tr("Load layers"))
        self.folder_button = QPushButton(self.tr("Open folder"))
        self.delete_button = QPushButton(self.tr("Delete"))
        self.open_cache_button = QPushButton(self.tr("Open cache…"))
        self.help_button = QPushButton(self.tr("Help"))
        # Two rows keep the dock narrow beside the map.
        run_buttons = QHBoxLayout()
        for button in (self.resume_button, self.load_button, self.folder_button):
            run_buttons.addWidget(button)
        run_buttons.addStretch(1)
        folder_buttons = QHBoxLayout()
        folder_buttons.addWidget(self.delete_button)
        folder_buttons.addStretch(1)
        folder_buttons.addWidget(self.open_cache_button)
        folder_buttons.addWidget(self.help_button)
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.addWidget(self.tree, 1)
        layout.addLayout(run_buttons)
        layout.addLayout(folder_buttons)
        self.summary = SummaryView()  # what the selected run found
        layout.addWidget(self.summary, 2)
        self.evaluation = QLabel()  # the figures of the run's last evaluation against a reference
        self.evaluation.setWordWrap(True)
        self.evaluation.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.evaluation)
        self.setWidget(body)

        self.tree.itemSelectionChanged.connect(self._update_buttons)
        self.tree.itemSelectionChanged.connect(self._show_summary)
        self.resume_button.clicked.connect(lambda: self._emit_selected(self.resumeRequested))
        self.load_button.clicked.connect(lambda: self._emit_selected(self.loadLayersRequested))
        self.folder_button.clicked.connect(self._open_folder)
        self.delete_button.clicked.connect(self._delete)
        self.open_cache_button.clicked.connect(self._open_cache)
        self.help_button.clicked.connect(self.helpRequested)
        self.visibilityChanged.connect(lambda visible: visible and self.refreshRequested.emit())
        self._rows: dict[str, RunRow] = {}
        self._update_buttons()

    def set_rows(self, rows: list[RunRow]) -> None:
        """Replace the list, keeping the selected cache selected."""
        selected = self.selected()
        self._rows = {str(row.cache_dir): row for row in rows}
        self.tree.clear()
        for row in rows:
            tiles = f"{row.done} / {row.total}" if row.total else "–"
            item = QTreeWidgetItem([row.cache_dir.name, self._state_text(row.state), tiles, row.image, row.model])
            item.setData(0, Qt.ItemDataRole.UserRole, str(row.cache_dir))
            item.setToolTip(0, str(row.cache_dir))
            if row.note:
                item.setToolTip(COLUMNS.index("state"), row.note)
            self.tree.addTopLevelItem(item)
            if selected is not None and row.cache_dir == selected:
                item.setSelected(True)
        for column in range(len(COLUMNS)):
            self.tree.resizeColumnToContents(column)
        self._update_buttons()
        self._show_summary()

    def update_progress(self, cache_dir: Path, done: int, total: int) -> None:
        """Show a running cache's tile count without rereading every cache."""
        for i in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(i)
            if Path(item.data(0, Qt.ItemDataRole.UserRole)) == Path(cache_dir):
                item.setText(COLUMNS.index("tiles"), f"{done} / {total}")
                item.setText(COLUMNS.index("state"), self._state_text("running"))
        if self.selected() == Path(cache_dir):
            self._show_summary()  # summary.json is rewritten as each tile commits

    def rows(self) -> list[RunRow]:
        return list(self._rows.values())

    def row_texts(self) -> list[list[str]]:
        """The visible text of each row, as a user reads it."""
        return [[self.tree.topLevelItem(i).text(c) for c in range(len(COLUMNS))]
                for i in range(self.tree.topLevelItemCount())]

    def select(self, cache_dir: Path) -> None:
        for i in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(i)
            item.setSelected(Path(item.data(0, Qt.ItemDataRole.UserRole)) == Path(cache_dir))

    def _show_summary(self) -> None:
        self.summary.show_cache(self.selected())
        self.evaluation.setText(self.evaluation_text(self.selected()))
        self.evaluation.setVisible(bool(self.evaluation.text()))

    def evaluation_text(self, cache_dir: Path | None) -> str:
        """The figures ``tcd:evaluatecrowns`` left in the cache (evaluation.json), or "" when none."""
        try:
            figures = json.loads((Path(cache_dir) / "evaluation.json").read_text(encoding="utf-8"))
            text = self.tr("Against {} ({}): precision {:.3f}, recall {:.3f}, F1 {:.3f}; {} matched, {} missed, "
                           "{} false").format(figures["reference"], figures["reference_kind"], figures["precision"],
                                              figures["recall"], figures["f1"], figures["tp"], figures["fn"],
                                              figures["fp"])
        except (TypeError, OSError, ValueError, KeyError):
            return ""
        if figures.get("mean_iou") is not None:
            text += self.tr("; mean IoU {:.3f}").format(figures["mean_iou"])
        return text

    def selected(self) -> Path | None:
        items = self.tree.selectedItems()
        return Path(items[0].data(0, Qt.ItemDataRole.UserRole)) if items else None

    def _state_text(self, state: str) -> str:
        return {
            "empty": self.tr("empty"), "partial": self.tr("partial"), "running": self.tr("running"),
            "complete": self.tr("complete"), "failed": self.tr("failed"), "missing": self.tr("missing"),
        }.get(state, state)

    def _update_buttons(self) -> None:
        path = self.selected()
        row = self._rows.get(str(path)) if path is not None else None
        state = row.state if row else None
        self.resume_button.setEnabled(state in ("empty", "partial", "failed"))
        self.load_button.setEnabled(state in ("partial", "complete", "failed", "running"))
        self.folder_button.setEnabled(row is not None and state != "missing")
        self.delete_button.setEnabled(row is not None and state != "running")

    def _emit_selected(self, signal) -> None:
        path = self.selected()
        if path is not None:
            signal.emit(path)

    def _open_folder(self) -> None:
        path = self.selected()
        if path is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(path)))

    def _delete(self) -> None:
        path = self.selected()
        if path is None:
            return
        answer = QMessageBox.question(
            self, self.tr("Delete run"),
            self.tr("Delete the folder {} with everything the run wrote into it?").format(path),
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
        if answer == QMessageBox.StandardButton.Yes:
            self.deleteRequested.emit(path)

    def _open_cache(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, self.tr("Open a TCD cache folder"))
        if folder:
            self.openCacheRequested.emit(Path(folder))
