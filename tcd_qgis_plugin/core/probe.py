"""Questions for the engine that need rasterio or onnxruntime, asked in a child process.

QGIS's own process never imports rasterio or onnxruntime (see docs/DEPENDENCIES.md),
so the plugin asks a short-lived child, started exactly like a prediction worker
(QGIS's Python, :func:`tcd_qgis_plugin.dependencies.worker_environment`):

``mismatch``    whether a job can continue the cache already in its folder
                (the engine's ``find_mismatch``: reads the raster's header, the
                model's metadata and the manifest; writes nothing);
``processors``  the ``Job.provider`` choices whose device really starts here
                (``cpu`` always; a GPU provider only when the doctor's check passes).

The child prints one JSON line. This module imports no QGIS: the child runs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

PROBE_TIMEOUT_S = 120
_NO_WINDOW = getattr(subprocess, "CREATE_NO_WINDOW", 0)


class ProbeError(Exception):
    """The question could not be answered; ``str()`` is one sentence."""


@dataclass(frozen=True)
class Mismatch:
    """Why a job cannot continue its folder's cache: the engine's CacheMismatchError, as data."""

    what: str  # "image", "model", "settings" or "plan"
    differences: tuple[str, ...]
    message: str


def probe_command(python, what: str) -> list[str]:
    from tcd_qgis_plugin.core.launch import plugin_command

    return plugin_command(python, "core.probe", what)


def _ask(python, env: dict, what: str, stdin: str = "", timeout_s: float = PROBE_TIMEOUT_S) -> dict:
    try:
        done = subprocess.run(probe_command(python, what), input=stdin, capture_output=True, text=True,
                              encoding="utf-8", errors="replace", env=env, timeout=timeout_s, check=False,
                              creationflags=_NO_WINDOW)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ProbeError(f"The check could not be run with QGIS's Python ({exc}).") from exc
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    try:
        answer = json.loads(lines[-1])
    except (IndexError, ValueError) as exc:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ProbeError(f"The check ended without an answer ({tail}).") from exc
    if "error" in answer:
        raise ProbeError(answer["error"])
    return answer


def find_mismatch(job, python, env: dict) -> Mismatch | None:
    """Why ``job`` cannot continue the cache in its folder, or None when it can (or there is none)."""
    from tcd_qgis_plugin.engine.worker import job_to_json

    answer = _ask(python, env, "mismatch", json.dumps(job_to_json(job)))
    found = answer.get("mismatch")
    if not found:
        return None
    return Mismatch(found["what"], tuple(found.get("differences", ())), found["message"])


def parse_processors(output: str) -> list[str]:
    """The processors from the child's output (the last JSON line), ``["cpu"]`` if there is none."""
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            try:
                return list(json.loads(line).get("processors") or ["cpu"])
            except ValueError:
                break
    return ["cpu"]


# --------------------------------------------------------------------------- the child


def _mismatch() -> dict:
    from tcd_qgis_plugin.engine.run.predict import find_mismatch as engine_find_mismatch
    from tcd_qgis_plugin.engine.worker import job_from_json

    found = engine_find_mismatch(job_from_json(json.loads(sys.stdin.readline())))
    if found is None:
        return {"mismatch": None}
    return {"mismatch": {"what": found.what, "differences": list(found.differences), "message": str(found)}}


def _processors() -> dict:
    import onnxruntime as ort

    from tcd_qgis_plugin.engine.doctor import check_provider
    from tcd_qgis_plugin.engine.models.runner import PROVIDERS

    available = set(ort.get_available_providers())
    working = [name for name, chain in PROVIDERS.items()
               if chain[0] in available and check_provider(ort, chain[0]).works]
    return {"processors": working or ["cpu"]}


def main(what: str) -> int:
    from tcd_qgis_plugin.engine.errors import TCDError

    try:
        answer = {"mismatch": _mismatch, "processors": _processors}[what]()
    except TCDError as exc:
        answer = {"error": str(exc)}
    except ModuleNotFoundError as exc:
        answer = {"error": f"The Python package '{exc.name}' is missing; install the plugin's dependencies."}
    except Exception as exc:  # reported as one sentence, never a traceback in QGIS
        answer = {"error": f"Unexpected {type(exc).__name__}: {exc}"}
    print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ""))
