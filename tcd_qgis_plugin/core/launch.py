"""Command lines that run this plugin's engine in a child Python process.

The child imports this very copy of the plugin by its file location and runs one
of its engine's modules as ``__main__``. Nothing else enters the child's module
namespace: neither the plugins folder nor the working directory goes on
``sys.path`` (either would make other plugins' folders, or whatever lies in the
working directory, importable by name, ahead of site-packages).
"""

from __future__ import annotations

from pathlib import Path

from tcd_qgis_plugin.paths import PLUGIN_DIR

_BOOTSTRAP = (
    "import importlib.util, runpy, sys\n"
    "sys.path[:] = [p for p in sys.path if p not in ('', '.')]\n"
    "spec = importlib.util.spec_from_file_location("
    "'tcd_qgis_plugin', sys.argv[1], submodule_search_locations=[sys.argv[2]])\n"
    "package = importlib.util.module_from_spec(spec)\n"
    "sys.modules['tcd_qgis_plugin'] = package\n"
    "spec.loader.exec_module(package)\n"
    "module = sys.argv[3]\n"
    "del sys.argv[1:4]\n"
    "runpy.run_module(module, run_name='__main__', alter_sys=True)\n"
)


def engine_command(python: Path | str, module: str, *args: str) -> list[str]:
    """``python`` running ``tcd_qgis_plugin.engine.<module>`` as a script, with ``args``.

    ``module`` ``"worker"`` is the prediction worker; ``""`` is the engine's command
    line (``engine_command(python, "", "doctor")`` runs ``python -m engine doctor``).
    """
    return plugin_command(python, "engine" + (f".{module}" if module else ""), *args)


def plugin_command(python: Path | str, module: str, *args: str) -> list[str]:
    """``python`` running ``tcd_qgis_plugin.<module>`` as a script, with ``args``."""
    name = f"tcd_qgis_plugin.{module}"
    return [str(python), "-c", _BOOTSTRAP, str(PLUGIN_DIR / "__init__.py"), str(PLUGIN_DIR), name, *args]
