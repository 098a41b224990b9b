"""Command line: ``python -m engine COMMAND ...``.

Each command lives in its own module with ``register(subparsers)``, which adds
its parser and sets ``func(args) -> int``. User errors (:class:`TCDError`) print
one line and exit 2, the engine's sentence followed by the remedy in this
interface's words (its flags); ``--debug`` shows the traceback too and turns on
the engine's debug log, other libraries' warnings included (otherwise kept out of
sight). Only the module of the command being run is imported.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback

from ..errors import CacheError, ClusterError, MissingCRSError, TCDError
from ..process import S3_PATHS, route_warnings, skip_import

COMMANDS = ("predict", "status", "evaluate", "finetune", "export_restor", "export_deepforest", "doctor")


def command_in(argv: list[str]) -> str | None:
    """The module name of the command ``argv`` runs, or None (no command yet, or help asked for)."""
    for word in argv:
        if word in ("-h", "--help"):
            return None
        if not word.startswith("-"):
            name = word.replace("-", "_")
            return name if name in COMMANDS else None
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of the command module ``only`` alone (the others unimported)."""
    parser = argparse.ArgumentParser(prog="python -m engine", description="Tree crown delineation engine.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors and other libraries' warnings")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in (only,) if only else COMMANDS:
        try:
            module = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue  # command not built into this copy of the engine
            raise
        module.register(subparsers)
    return parser


def remedy(exc: TCDError) -> str:
    """What to do about ``exc``, in this command line's words ("" when the sentence says it all)."""
    if isinstance(exc, CacheError) and exc.start_afresh_fixes:
        return " Run again with --overwrite to start afresh, or choose another folder with --out."
    if isinstance(exc, MissingCRSError):
        return " Give it one with --assign-crs (for example --assign-crs EPSG:32633)."
    if isinstance(exc, ClusterError):
        if exc.what == "missing":
            return " Install it (pip install distributed), or run without --workers and --scheduler."
        if exc.what == "unreachable":
            return " Check the address given with --scheduler, or start a scheduler there with: dask scheduler."
        if exc.what == "engine":
            return " Give every worker the same engine as this machine (PYTHONPATH pointing at this copy)."
        if exc.resume_fixes:
            return " Run the same predict again, with or without --scheduler, to resume from there."
    return ""


def main(argv: list[str] | None = None) -> int:
    route_warnings(logging.DEBUG)
    argv = sys.argv[1:] if argv is None else argv
    if not any(path in word for word in argv for path in S3_PATHS):
        skip_import("boto3")
    parser = build_parser(command_in(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except TCDError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}{remedy(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the cache is consistent and can be resumed", file=sys.stderr)
        return 130
    except Exception as exc:  # an engine bug: still one line unless --debug
        if args.debug:
            traceback.print_exc()
        else:
            print(f"error: unexpected {type(exc).__name__}: {exc} (run with --debug for details)", file=sys.stderr)
        return 1
