"""What to do with a folder that holds a run of another image, model or settings.

The engine refuses to mix two runs in one cache and says what differs; the user
chooses here: resume the run that is there as it was made, start afresh (the old
cache is deleted, after asking once more), or choose another folder.
"""

from __future__ import annotations

from pathlib import Path

from qgis.PyQt.QtWidgets import QMessageBox

from tcd_qgis_plugin.core.texts import translator

RESUME, AFRESH, OTHER_FOLDER = "resume", "afresh", "other_folder"


tr = translator("MismatchChoice")


def choice_box(parent, folder: Path, sentence: str, choices=(RESUME, AFRESH, OTHER_FOLDER)) -> QMessageBox:
    """The question, with one button per choice and Cancel (shown by :func:`ask`)."""
    box = QMessageBox(QMessageBox.Icon.Question, tr("Another run in this folder"),
                      tr("{} already holds a run that this one cannot continue: {}").format(folder.name, sentence),
                      QMessageBox.StandardButton.Cancel, parent)
    labels = {RESUME: tr("Resume it as it was"), AFRESH: tr("Start afresh…"),
              OTHER_FOLDER: tr("Choose another folder…")}
    tips = {RESUME: tr("Continue the run in this folder with the image, model and settings it was made with."),
            AFRESH: tr("Delete the run in this folder and predict again with the choices made here."),
            OTHER_FOLDER: tr("Keep the run in this folder and write this one elsewhere.")}
    for choice in choices:
        button = box.addButton(labels[choice], QMessageBox.ButtonRole.AcceptRole)
        button.setObjectName(choice)
        button.setToolTip(tips[choice])
    return box


def ask(parent, folder: Path, sentence: str, choices=(RESUME, AFRESH, OTHER_FOLDER)) -> str | None:
    """RESUME, AFRESH, OTHER_FOLDER, or None for Cancel."""
    box = choice_box(parent, folder, sentence, choices)
    box.exec()
    clicked = box.clickedButton()
    return clicked.objectName() if clicked is not None and clicked.objectName() in choices else None


def confirm_afresh(parent, folder: Path, done: int, total: int) -> bool:
    """Ask once more before the old cache is deleted."""
    answer = QMessageBox.question(
        parent, tr("Start afresh"),
        tr("Delete the run in {} ({} of {} tiles done) with everything it wrote, and predict again?").format(
            folder, done, total),
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
    return answer == QMessageBox.StandardButton.Yes
