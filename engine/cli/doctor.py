"""``python -m engine doctor``: what the engine needs, what this Python has, and where it came from."""

from __future__ import annotations

import argparse

from ..doctor import diagnose


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check the Python packages and ONNX Runtime providers the engine needs",
        description=(
            "List every runtime requirement with the version found and its folder, numpy and GDAL's "
            "bindings as provided by QGIS/system, and the ONNX Runtime execution providers that really start. "
            "Exits 1 when something the engine needs is missing or unusable."
        ),
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report = diagnose()
    print(report.format())
    return 0 if report.ok else 1
