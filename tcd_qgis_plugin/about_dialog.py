"""About / environment dialog: the plugin's version and the engine's doctor report.

The report comes from the engine's ``doctor`` command run exactly as a prediction
worker runs (QGIS's Python, :func:`dependencies.worker_environment`), so it shows
what a prediction will see, including whether a GPU provider really starts.
It runs in a QProcess, so the dialog stays responsive while ONNX Runtime loads.
"""

from __future__ import annotations

import configparser

from qgis.PyQt.QtCore import (
    QProcess,
    QProcessEnvironment,
    Qt,
    pyqtSignal,
)
from qgis.PyQt.QtGui import QFontDatabase
from qgis.PyQt.QtWidgets import (
    QApplication,
    QDialog,
    QDialogButtonBox,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
)

from tcd_qgis_plugin import dependencies
from tcd_qgis_plugin.core.launch import engine_command
from tcd_qgis_plugin.core.texts import translator
from tcd_qgis_plugin.paths import PLUGIN_DIR

tr = translator("AboutDialog")


def plugin_version() -> str:
    """The ``version`` of ``metadata.txt``, or "development" in a checkout without one."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(PLUGIN_DIR / "metadata.txt", encoding="utf-8")
    return parser.get("general", "version", fallback="development")


class AboutDialog(QDialog):
    """Shows the doctor report and, when something is missing, an install button.

    ``reportReady(text, exit_code)`` is emitted when the report is in;
    ``installRequested`` when the user asks for the install (the plugin object
    runs it and calls :meth:`refresh` when it is done).
    """

    reportReady = pyqtSignal(str, int)
    installRequested = pyqtSignal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle(tr("About Tree crown delineation"))
        self.resize(820, 480)
        self.process: QProcess | None = None
        self._output = b""

        self.header = QLabel(
            tr("Tree crown delineation {version}\nPlugin packages folder: {folder}").format(
                version=plugin_version(), folder=dependencies.package_dir()
            )
        )
        self.header.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.report = QPlainTextEdit()
        self.report.setReadOnly(True)
        self.report.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        self.install_button = QPushButton(tr("Install dependencies…"))
        self.install_button.setVisible(False)
        self.install_button.clicked.connect(self._install)
        self.copy_button = QPushButton(tr("Copy report"))
        self.copy_button.clicked.connect(lambda: QApplication.clipboard().setText(self.report_text()))
        self.refresh_button = QPushButton(tr("Check again"))
        self.refresh_button.clicked.connect(self.refresh)
        for button in (self.install_button, self.copy_button, self.refresh_button):
            buttons.addButton(button, QDialogButtonBox.ButtonRole.ActionRole)

        layout = QVBoxLayout(self)
        layout.addWidget(self.header)
        layout.addWidget(self.report)
        layout.addWidget(buttons)
        self.refresh()

    def report_text(self) -> str:
        return self.report.toPlainText()

    def refresh(self) -> None:
        """Run the doctor again (after an install, say)."""
        if self.process is not None:
            return
        self.report.setPlainText(tr("Checking the Python environment…"))
        self.refresh_button.setEnabled(False)
        try:
            python = dependencies.find_qgis_python()
        except dependencies.DependencyError as exc:
            self._show(str(exc), 1)
            return
        env = QProcessEnvironment()
        for key, value in dependencies.worker_environment().items():
            env.insert(key, value)
        self._output = b""
        self.process = QProcess(self)
        self.process.setProcessEnvironment(env)
        self.process.setProcessChannelMode(QProcess.ProcessChannelMode.MergedChannels)
        self.process.readyReadStandardOutput.connect(self._read)
        self.process.finished.connect(self._done)
        self.process.errorOccurred.connect(self._failed_to_start)
        command = engine_command(python, "", "doctor")
        self.process.start(command[0], command[1:])

    def _read(self) -> None:
        self._output += bytes(self.process.readAllStandardOutput())

    def _done(self, exit_code: int, _status) -> None:
        self._read()
        self.process.deleteLater()
        self.process = None
        self._show(self._output.decode("utf-8", "replace").rstrip(), exit_code)

    def _failed_to_start(self, error) -> None:
        if error != QProcess.ProcessError.FailedToStart:
            return  # a crash still ends in finished()
        self.process.deleteLater()
        self.process = None
        self._show(tr("The environment check could not be started with QGIS's Python."), 1)

    def _show(self, text: str, exit_code: int) -> None:
        self.report.setPlainText(text)
        self.refresh_button.setEnabled(True)
        self.install_button.setVisible(bool(dependencies.missing()))
        self.install_button.setEnabled(True)
        dependencies.log_report("Environment check (python -m engine doctor):", text)
        self.reportReady.emit(text, exit_code)

    def _install(self) -> None:
        self.install_button.setEnabled(False)
        self.installRequested.emit()
