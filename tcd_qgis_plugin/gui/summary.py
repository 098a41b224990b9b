"""The summary of the run selected in the runs panel: figures, histograms, CSV export.

The figures come from the cache's ``summary.json``, which the engine keeps
current as tiles commit (:mod:`tcd_qgis_plugin.engine.cache.summary`); nothing
here reads crowns or rasters, so showing a run of any size is instant. The
histograms are drawn with QPainter: a stock QGIS has Qt, not always matplotlib.
"""

from __future__ import annotations

from pathlib import Path

from qgis.PyQt.QtCore import QPointF, QRectF, QSize, Qt
from qgis.PyQt.QtGui import QColor, QFontMetrics, QPainter, QPen
from qgis.PyQt.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from tcd_qgis_plugin.engine.cache.summary import RunSummary, format_figure, read_summary, write_summary_csv
from tcd_qgis_plugin.engine.errors import TCDError

BAR_COLOUR = QColor(46, 125, 50)
HISTOGRAM_BINS = 12


def duration_text(seconds: float | None) -> str:
    """``42 s``, ``3 min 5 s``, ``2 h 7 min``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


class HistogramView(QWidget):
    """A histogram as bars over a value axis, with its title, the tallest count and the value range."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.title = ""
        self.unit = ""
        self.edges: list[float] = []
        self.counts: list[int] = []
        self.setMinimumHeight(120)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def sizeHint(self) -> QSize:
        return QSize(260, 130)

    def set_data(self, title: str, unit: str, edges: list[float], counts: list[int]) -> None:
        self.title, self.unit = title, unit
        self.edges, self.counts = list(edges), list(counts)
        self.setToolTip("\n".join(f"{format_figure(lo)} – {format_figure(hi, unit)}: {n}"
                                  for lo, hi, n in zip(self.edges, self.edges[1:], self.counts)))
        self.update()

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        metrics = QFontMetrics(self.font())
        line = metrics.height()
        text_pen = QPen(self.palette().windowText().color())
        painter.setPen(text_pen)
        painter.drawText(QRectF(0, 0, self.width(), line), int(Qt.AlignmentFlag.AlignLeft), self.title)
        if not self.counts or max(self.counts) == 0:
            painter.end()
            return
        top = max(self.counts)
        left = metrics.horizontalAdvance(str(top)) + 6
        plot = QRectF(left, line + 4, self.width() - left - 4, self.height() - 2 * line - 10)
        right_aligned = int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        painter.drawText(QRectF(0, plot.top() - line / 2, left - 4, line), right_aligned, str(top))
        painter.drawText(QRectF(0, plot.bottom() - line / 2, left - 4, line), right_aligned, "0")
        width = plot.width() / len(self.counts)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(BAR_COLOUR)
        for i, count in enumerate(self.counts):
            height = plot.height() * count / top
            painter.drawRect(QRectF(plot.left() + i * width + 1, plot.bottom() - height, max(width - 2, 1.0), height))
        painter.setPen(text_pen)
        painter.drawLine(QPointF(plot.left(), plot.bottom()), QPointF(plot.right(), plot.bottom()))
        below = plot.bottom() + 3
        painter.drawText(QRectF(plot.left(), below, plot.width() / 2, line), int(Qt.AlignmentFlag.AlignLeft),
                         format_figure(self.edges[0]))
        painter.drawText(QRectF(plot.center().x(), below, plot.width() / 2, line), int(Qt.AlignmentFlag.AlignRight),
                         format_figure(self.edges[-1], self.unit))
        painter.end()


class SummaryView(QScrollArea):
    """What the selected run found: figures, crown-size and height histograms, Export CSV.

    A frameless scroll area, so the dock can be short and still show the figures.
    """

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setFrameShape(QScrollArea.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.cache_dir: Path | None = None
        self.summary: RunSummary | None = None
        self.title = QLabel()
        self.title.setWordWrap(True)
        self.form = QFormLayout()
        self.form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.area_histogram = HistogramView()
        self.height_histogram = HistogramView()
        self.export_button = QPushButton(self.tr("Export CSV…"))
        self.message = QLabel()
        self.message.setWordWrap(True)
        buttons = QHBoxLayout()
        buttons.addWidget(self.message, 1)
        buttons.addWidget(self.export_button)
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.title)
        layout.addLayout(self.form)
        layout.addWidget(self.area_histogram)
        layout.addWidget(self.height_histogram)
        layout.addLayout(buttons)
        layout.addStretch(1)
        self.setWidget(body)
        self.export_button.clicked.connect(self.export_csv)
        self.show_cache(None)

    def show_cache(self, cache_dir: Path | None) -> None:
        """Show the summary of ``cache_dir`` (None: no run selected)."""
        changed = cache_dir is None or self.cache_dir is None or Path(cache_dir) != self.cache_dir
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.summary = None
        if changed:
            self.message.clear()
        if self.cache_dir is not None and self.cache_dir.is_dir():
            try:
                self.summary = read_summary(self.cache_dir)
            except TCDError as exc:
                self.message.setText(str(exc))
        self._fill()

    def figures(self) -> list[tuple[str, str]]:
        """(label, value) of each figure shown, as a user reads them."""
        return [(self.form.itemAt(i, QFormLayout.ItemRole.LabelRole).widget().text(),
                 self.form.itemAt(i, QFormLayout.ItemRole.FieldRole).widget().text())
                for i in range(self.form.rowCount())]

    def _lines(self, summary: RunSummary) -> list[tuple[str, str]]:
        v = {row.key: row.value for row in summary.rows()}
        lines = [
            (self.tr("Trees"), format_figure(v["trees"])),
            (self.tr("Trees per hectare"), format_figure(v["trees_per_ha"])),
            (self.tr("Canopy cover"), format_figure(v["canopy_cover_pct"], "%")),
            (self.tr("Area processed"), format_figure(v["area_processed_ha"], "ha")),
            (self.tr("Crown area, median"), format_figure(v["crown_area_median_m2"], "m²")),
            (self.tr("Crown area, 10–90 %"), "{} – {}".format(format_figure(v["crown_area_p10_m2"]),
                                                              format_figure(v["crown_area_p90_m2"], "m²"))),
        ]
        if summary.heights is not None:
            lines += [
                (self.tr("Crown height, median"), format_figure(v["height_max_median_m"], "m")),
                (self.tr("Crown height, tallest"), format_figure(v["height_max_max_m"], "m")),
                (self.tr("Crowns without height"), format_figure(v["crowns_without_height"])),
            ]
        lines += [
            (self.tr("Tiles"), self.tr("{} of {}, {} skipped").format(v["tiles_done"], v["tiles_total"],
                                                                     v["tiles_skipped"])),
            (self.tr("Time taken"), duration_text(v["time_s"])),
        ]
        return lines

    def _fill(self) -> None:
        while self.form.rowCount():
            self.form.removeRow(0)
        summary = self.summary
        self.export_button.setEnabled(summary is not None)
        self.area_histogram.setVisible(False)
        self.height_histogram.setVisible(False)
        if self.cache_dir is None:
            self.title.setText(self.tr("Select a run to see what it found."))
            return
        if summary is None:
            self.title.setText(self.tr("{}: no summary yet.").format(self.cache_dir.name))
            return
        self.title.setText(self.tr("<b>{}</b> — {}").format(self.cache_dir.name, summary.model))
        for label, text in self._lines(summary):
            value = QLabel(text)
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            self.form.addRow(label, value)
        for view, name, title, unit in ((self.area_histogram, "crown_area_m2", self.tr("Crown area"), "m²"),
                                        (self.height_histogram, "height_max_m", self.tr("Crown height (max)"), "m")):
            histogram = summary.histogram(name, HISTOGRAM_BINS)
            if histogram is not None:
                view.set_data(title, unit, *histogram)
                view.setVisible(True)

    def export_csv(self) -> Path | None:
        """Ask where, then write every figure of the summary as CSV; returns the file written."""
        if self.summary is None or self.cache_dir is None:
            return None
        suggested = str(self.cache_dir.with_name(f"{self.cache_dir.name}_summary.csv"))
        path, _ = QFileDialog.getSaveFileName(self, self.tr("Export the run summary"), suggested,
                                              self.tr("CSV files (*.csv)"))
        if not path:
            return None
        try:
            write_summary_csv(self.summary, Path(path))
        except OSError as exc:
            self.message.setText(self.tr("Could not write {}: {}.").format(path, exc.strerror or exc))
            return None
        self.message.setText(self.tr("Saved {}.").format(Path(path).name))
        return Path(path)
