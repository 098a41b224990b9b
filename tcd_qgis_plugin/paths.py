"""Where the engine and the resources live, in the repository and in the plugin ZIP.

In the ZIP, ``engine/`` and ``resources/`` sit inside the plugin folder; in the
repository they sit beside it. ``engine`` is imported as a top-level package, so
the folder holding it goes on ``sys.path`` (and on the worker's PYTHONPATH).
"""

from __future__ import annotations

import sys
from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parent


def engine_root() -> Path:
    """The folder that holds the ``engine`` package."""
    if (PLUGIN_DIR / "engine").is_dir():
        return PLUGIN_DIR
    return PLUGIN_DIR.parent


def resources_dir() -> Path:
    return engine_root() / "resources"


def style_path(style: str) -> Path:
    """The QML file of a cache layer style (``confidence`` or ``crowns``)."""
    return resources_dir() / "styles" / f"{style}.qml"


def icon_path() -> Path:
    return resources_dir() / "icons" / "tcd.svg"


def add_engine_to_path() -> None:
    root = str(engine_root())
    if root not in sys.path:
        sys.path.insert(0, root)
