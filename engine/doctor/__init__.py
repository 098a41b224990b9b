"""What the engine needs from its Python environment, and whether it has it.

The runtime requirements live in one file, ``requirements.txt``, which sits in
the folder that holds the ``engine`` package: the repository root in a source
checkout, the plugin folder inside the plugin ZIP. numpy and GDAL's bindings
(``osgeo``) are not in it on purpose: QGIS brings them, and a second copy beside
QGIS's can break GDAL's bindings. They are still checked here, as "provided by
QGIS/system".

This module imports only the standard library at import time, so it works (and
reports what is missing) when onnxruntime, rasterio or scipy are absent. Apart
from :func:`diagnose`, nothing here imports the packages it checks.
"""


from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .providers import ProviderCheck, check_provider
from .requirements import (
    PROVIDED_BY_QGIS,
    REQUIREMENTS_FILE,
    Requirement,
    check,
    check_all,
    import_name,
    missing,
    parse_requirements,
    provided_by_qgis,
    read_requirements,
    satisfies,
    version_key,
)

__all__ = ["PROVIDED_BY_QGIS", "REQUIREMENTS_FILE", "ProviderCheck", "Report", "Requirement", "check", "check_all",
           "check_provider", "diagnose", "import_name", "missing", "parse_requirements", "provided_by_qgis",
           "read_requirements", "satisfies", "version_key"]

# --------------------------------------------------------------------------- report


def _last_line(text: str) -> str:
    """The last non-blank line of a log, where ONNX Runtime says what it lacks."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not set(line.strip()) <= {"*"}]
    # Drop ONNX Runtime's "<date> <time> [W:onnxruntime:Default, file.cc:123 Function] " prefix.
    return re.sub(r"^\S+ \S+ \[[^\]]*\] ", "", lines[-1]) if lines else ""


@dataclass(frozen=True)
class Report:
    """Everything ``python -m engine doctor`` prints."""

    python: str
    requirements: list[Requirement]
    provided: list[Requirement]
    import_problems: list[str] = field(default_factory=list)
    providers: list[ProviderCheck] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        """One sentence per thing that stops or slows the engine."""
        return (
            [req.reason for req in self.requirements + self.provided if req.reason]
            + self.import_problems
            + [p.problem for p in self.providers if p.problem]
        )

    @property
    def ok(self) -> bool:
        return not any(req.reason for req in self.requirements + self.provided) and not self.import_problems

    def format(self) -> str:
        rows = [("package", "needs", "found", "location")]
        for req in self.requirements:
            rows.append((req.name, req.spec or "any", req.found_version or "missing", req.location or "-"))
        for req in self.provided:
            rows.append(
                (req.name, "provided by QGIS/system", req.found_version or "missing", req.location or "-")
            )
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        lines = [f"Python {self.python}", ""]
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3] for row in rows]
        lines.append("")
        if self.providers:
            names = ", ".join(p.name for p in self.providers)
            lines.append(f"ONNX Runtime execution providers: {names}")
            lines += [f"  {p.name}: {_last_line(p.details)}" for p in self.providers if not p.works and p.details]
        else:
            lines.append("ONNX Runtime execution providers: none (onnxruntime is not usable)")
        problems = self.problems
        lines.append("")
        lines += [f"problem: {sentence}" for sentence in problems] or ["Everything the engine needs is present."]
        return "\n".join(lines)


def _site_of(module) -> str | None:
    """The folder a module was imported from (``.../site-packages`` for a package)."""
    path = getattr(module, "__file__", None)
    if not path:
        return None
    path = Path(path).resolve()
    return str(path.parent.parent if path.name == "__init__.py" else path.parent)


def _same_dir(a: str, b: str) -> bool:
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def diagnose(requirements: list[Requirement] | None = None) -> Report:
    """Check every requirement, import each one found, and try each ONNX Runtime provider."""
    checked = check_all(requirements)
    provided = provided_by_qgis()
    import_problems = []
    usable = {}
    for req in checked + provided:
        if req.found_version is None:
            continue
        module = import_name(req)
        try:
            usable[req.name] = importlib.import_module(module)
        except Exception as exc:
            first_line = (str(exc).splitlines() or [""])[0]
            import_problems.append(
                f"{req.name} {req.found_version} is installed but cannot be imported "
                f"({type(exc).__name__}: {first_line})."
            )
            continue
        imported_from = _site_of(usable[req.name])
        if imported_from and req.location and not _same_dir(imported_from, req.location):
            import_problems.append(
                f"{module} is imported from {imported_from}, not from the {req.name} {req.found_version} "
                f"in {req.location}: two copies are installed, remove one."
            )
    providers = []
    ort = usable.get("onnxruntime")
    if ort is not None:
        providers = [check_provider(ort, name) for name in ort.get_available_providers()]
    python = f"{sys.version.split()[0]} at {sys.executable} (prefix {sys.prefix})"
    return Report(python, checked, provided, import_problems, providers)
