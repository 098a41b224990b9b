"""The plugin's help window: the user's guide (``docs/USER_GUIDE.md``), shown inside QGIS.

``docs/`` travels in the plugin ZIP (in a checkout it sits beside the plugin
folder), so help works offline, pictures included, and links between the
documents open in the same window; web links open in the web browser. The
README is for developers and is not what Help shows.
"""

from __future__ import annotations

from pathlib import Path

from qgis.PyQt.QtCore import QUrl
from qgis.PyQt.QtWidgets import QDialog, QDialogButtonBox, QPushButton, QTextBrowser, QVBoxLayout

from tcd_qgis_plugin.paths import PLUGIN_DIR

GUIDE = Path("docs") / "USER_GUIDE.md"


def guide_path() -> Path:
    """The user's guide of the installed plugin, or of the repository in a checkout."""
    for folder in (PLUGIN_DIR, PLUGIN_DIR.parent):
        if (folder / GUIDE).is_file():
            return folder / GUIDE
    return PLUGIN_DIR / GUIDE


class HelpWindow(QDialog):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle(self.tr("Tree crown delineation: help"))
        self.resize(900, 700)
        self.browser = QTextBrowser()
        self.browser.setOpenExternalLinks(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.back_button = QPushButton(self.tr("Back"))
        self.home_button = QPushButton(self.tr("Contents"))
        for button in (self.back_button, self.home_button):
            buttons.addButton(button, QDialogButtonBox.ButtonRole.ActionRole)
        self.back_button.clicked.connect(self.browser.backward)
        self.home_button.clicked.connect(self.show_guide)
        self.browser.backwardAvailable.connect(self.back_button.setEnabled)
        self.back_button.setEnabled(False)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.browser)
        layout.addWidget(buttons)
        self.show_guide()

    def show_guide(self) -> None:
        path = guide_path()
        if path.is_file():
            self.browser.setSource(QUrl.fromLocalFile(str(path)))
        else:
            self.browser.setPlainText(self.tr("The plugin's user's guide is missing from {}.").format(path.parent))

    def source(self) -> Path | None:
        url = self.browser.source()
        return Path(url.toLocalFile()) if url.isLocalFile() else None
