"""The plugin on QGIS 4 (Qt 6, PyQt6), checked where QGIS 4 cannot be had.

PyQt6 drops the unscoped enum names (``Qt.UserRole`` is only ``Qt.ItemDataRole.UserRole``)
and moves a few classes between modules, and QGIS 4 runs the plugin on it. Every plugin
module is imported here, in QGIS 3 (PyQt5); every attribute chain the source names on
a Qt class or module imported through ``qgis.PyQt`` (``Qt.ItemDataRole.UserRole``,
``QDialogButtonBox.StandardButton.Close``, ``QMessageBox.question``…) is then resolved
in this QGIS's PyQt5 *and*, in a separate process, in PyQt6 as QGIS 4's ``qgis.PyQt``
shim exposes it. A name missing from either fails here before a user meets it.
Chains on QGIS classes (``QgsTask.Flag.CanCancel``) are resolved in this QGIS.
"""

import ast
import importlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "tcd_qgis_plugin"
LINKED = ("engine", "resources")  # links to the top-level folders; the engine never imports Qt

# What QGIS 4's qgis/PyQt/QtWidgets.py adds to PyQt6.QtWidgets (QAction and QShortcut
# moved to QtGui in Qt 6); plugins import them from QtWidgets on both QGIS 3 and 4.
QGIS4_WIDGETS_EXTRAS = {"QAction": "QtGui", "QShortcut": "QtGui"}

RESOLVE_IN_PYQT6 = r"""
import importlib, json, sys
extras = json.loads(sys.argv[2])
missing = []
for module, chain in json.loads(sys.argv[1]):
    names = chain.split(".")
    if module == "QtWidgets" and names[0] in extras:
        module = extras[names[0]]
    obj = importlib.import_module("PyQt6." + module)
    for name in names:
        try:
            obj = getattr(obj, name)
        except AttributeError:
            missing.append(module + ": " + chain)
            break
print(json.dumps(missing))
"""


def plugin_modules() -> list[Path]:
    return sorted(p for p in PLUGIN.rglob("*.py")
                  if p.relative_to(PLUGIN).parts[0] not in LINKED and "__pycache__" not in p.parts)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(tree: ast.AST) -> dict:
    """``{local name: (package, Qt module or QGIS module)}`` for ``qgis.PyQt``, ``qgis.core`` and ``qgis.gui``."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("qgis.PyQt."):
                source = ("qt", node.module.split(".")[2])
            elif node.module in ("qgis.core", "qgis.gui"):
                source = ("qgis", node.module)
            elif node.module == "qgis.PyQt":
                for alias in node.names:
                    names[alias.asname or alias.name] = ("qt-module", alias.name)
                continue
            else:
                continue
            for alias in node.names:
                names[alias.asname or alias.name] = source
    return names


def attribute_chains(path: Path) -> set:
    """``(kind, module, "Name.attr.attr")`` for every longest chain rooted at a Qt or QGIS import."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = imported_names(tree)
    inner = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    chains = set()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Attribute, ast.Name)) or id(node) in inner:
            continue
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name) or node.id not in names:
            continue
        kind, module = names[node.id]
        if kind == "qt-module":
            kind, module, root = "qt", module, []
        else:
            root = [node.id]
        chain = ".".join(root + parts[::-1])
        if chain:
            chains.add((kind, module, chain))
    return chains


@pytest.fixture(scope="module")
def chains() -> set:
    found = set()
    for path in plugin_modules():
        found |= attribute_chains(path)
    return found


def resolve(obj, chain: str):
    for name in chain.split("."):
        obj = getattr(obj, name)
    return obj


def test_the_scan_sees_the_names_the_plugin_uses(chains):
    qt = {chain for kind, _, chain in chains if kind == "qt"}
    # The enum that once kept the plugin from loading in QGIS 4, in its scoped form, and a class.
    assert "Qt.DockWidgetArea.RightDockWidgetArea" in qt
    assert "QDialogButtonBox.ButtonRole.AcceptRole" in qt
    assert "QAction" in qt
    assert len(qt) > 40


def test_every_plugin_module_imports(qgis_iface):
    for path in plugin_modules():
        importlib.import_module(module_name(path))


def test_every_name_resolves_in_this_qgis(chains):
    missing = []
    for kind, module, chain in sorted(chains):
        base = importlib.import_module(f"qgis.PyQt.{module}" if kind == "qt" else module)
        try:
            resolve(base, chain)
        except AttributeError:
            missing.append(f"{module}: {chain}")
    assert not missing, missing


def test_every_qt_name_exists_in_pyqt6(chains):
    # Found, never imported, here: QGIS's import guard refuses PyQt6 in a Qt 5 QGIS, and the two Qts
    # cannot share a process anyway. The names are resolved in a process that never imports qgis.
    if importlib.util.find_spec("PyQt6") is None:
        pytest.skip("PyQt6 is in requirements-dev.txt")
    qt = sorted([module, chain] for kind, module, chain in chains if kind == "qt")
    result = subprocess.run([sys.executable, "-c", RESOLVE_IN_PYQT6, json.dumps(qt), json.dumps(QGIS4_WIDGETS_EXTRAS)],
                            capture_output=True, text=True, timeout=120, check=False,
                            env={"QT_QPA_PLATFORM": "offscreen", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [], "names missing in PyQt6 (QGIS 4)"


def test_an_unscoped_enum_is_caught(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("from qgis.PyQt.QtCore import Qt\nfrom qgis.PyQt.QtWidgets import QMessageBox\n"
                      "ROLE = Qt.UserRole\nANSWER = QMessageBox.Yes\n")
    qt = sorted([module, chain] for kind, module, chain in attribute_chains(sample) if kind == "qt")
    result = subprocess.run([sys.executable, "-c", RESOLVE_IN_PYQT6, json.dumps(qt), json.dumps(QGIS4_WIDGETS_EXTRAS)],
                            capture_output=True, text=True, timeout=120, check=False,
                            env={"QT_QPA_PLATFORM": "offscreen", "PATH": "/usr/bin:/bin"})
    assert json.loads(result.stdout) == ["QtCore: Qt.UserRole", "QtWidgets: QMessageBox.Yes"]
