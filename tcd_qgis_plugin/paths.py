"""Where the plugin's files live: the same layout in the repository and in the plugin ZIP.

The plugin folder holds ``engine/`` (the prediction engine, imported as
``tcd_qgis_plugin.engine``) and ``resources/`` (styles, icons, the default
model). In the repository both are links to the top-level folders of the same
names; the ZIP carries copies. Nothing is ever added to ``sys.path``.
"""

from __future__ import annotations

from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parent
RESOURCES_DIR = PLUGIN_DIR / "resources"


def style_path(style: str) -> Path:
    """The QML file of a cache layer style (``confidence`` or ``crowns``)."""
    return RESOURCES_DIR / "styles" / f"{style}.qml"


def icon_path() -> Path:
    return RESOURCES_DIR / "icons" / "tcd.svg"
