"""Prediction in a child process, driven over pipes (``python -m engine.worker``).

The QGIS plugin runs every prediction here rather than in its own process, so a
native crash in onnxruntime or GDAL ends only the worker. Every tile is
committed atomically, so the cache stays valid whatever happens and a later run
resumes it.

Protocol: one JSON object per line, UTF-8.

stdin, parent to worker
    first line   the job, as written by :func:`job_to_json`.
    afterwards   ``cancel`` asks the worker to stop after the tile in progress.
                 End of input (the parent is gone) and SIGTERM mean the same.

stdout, worker to parent
    ``{"event": "started", "pid": 4711}``
    ``{"event": "progress", "done": 3, "total": 12, "skipped": 0, "tile_id": 7, "features": 40}``
    ``{"event": "finished", "state": "complete", "done": 12, "total": 12, "skipped": 0,
    "features": 130, "cache_dir": "..."}``  (``state`` is ``complete`` or ``cancelled``)
    ``{"event": "error", "type": "CacheMismatchError", "message": "<one sentence>", "details": "<traceback>",
    "data": {"what": "settings", "differences": ["tile size"], "start_afresh_fixes": true, "cache_dir": "..."}}``
    (``data`` holds the facts the error carries, see :mod:`engine.errors`; ``{}`` for most errors)

``done`` counts committed tiles, resumed ones included. Exit status: 0 after
``finished``, 2 after an engine error (:class:`~engine.errors.TCDError`), 1 after
any other error. Everything else the engine or a native library prints goes to
stderr, which the parent keeps for its log.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import traceback
from enum import Enum
from pathlib import Path

from .errors import InputError, TCDError
from .process import S3_PATHS, route_warnings, skip_import
from .settings import Job

CANCEL = "cancel"


def _plain(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(v) for v in value)
    return value


def job_to_json(job: Job) -> dict:
    """A job as plain JSON values (paths as strings, enums as their values, sets as sorted lists)."""
    return {f.name: _plain(getattr(job, f.name)) for f in dataclasses.fields(Job)}


def job_from_json(data: dict) -> Job:
    """Inverse of :func:`job_to_json`; raises InputError on unknown or missing fields."""
    if not isinstance(data, dict):
        raise InputError("The job sent to the worker is not a JSON object.")
    known = {f.name for f in dataclasses.fields(Job)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"The job sent to the worker has unknown fields: {', '.join(unknown)}.")
    try:
        return Job(**data)
    except TypeError as exc:
        raise InputError(f"The job sent to the worker is incomplete: {exc}.") from exc


def error_data(exc: TCDError) -> dict:
    """The facts an engine error carries, as JSON values (empty for errors that carry none)."""
    data = {}
    for name in ("what", "differences", "start_afresh_fixes", "cache_dir"):
        if hasattr(exc, name):
            data[name] = _plain(getattr(exc, name))
    if isinstance(data.get("differences"), tuple):
        data["differences"] = list(data["differences"])
    return data


class _Events:
    """Writes protocol lines; the engine may report progress from its writer thread."""

    def __init__(self, stream):
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, event: str, **fields) -> None:
        line = json.dumps({"event": event, **fields}, ensure_ascii=False)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()


def _watch_stdin(stdin, cancel: threading.Event) -> None:
    for line in stdin:
        if line.strip() == CANCEL:
            break
    cancel.set()


def main() -> int:
    # The protocol owns the real stdout; fd 1 is pointed at stderr so that prints
    # from the engine or from native code cannot corrupt a protocol line.
    events = _Events(os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", buffering=1))
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    # Engine log records go to stderr, which the plugin keeps for its log tab.
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    route_warnings(logging.INFO)  # kept in that log, never shown as the run's message
    cancel = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: cancel.set())
    events.send("started", pid=os.getpid())
    try:
        line = sys.stdin.readline()
        if not line.strip():
            raise InputError("The worker received no job on its standard input.")
        try:
            job = job_from_json(json.loads(line))
        except ValueError as exc:
            if isinstance(exc, TCDError):
                raise
            raise InputError(f"The job sent to the worker is not valid JSON: {exc}.") from exc
        if not any(path in line for path in S3_PATHS):
            skip_import("boto3")
        threading.Thread(target=_watch_stdin, args=(sys.stdin, cancel), daemon=True).start()

        # Imported here: it needs rasterio, onnxruntime and scipy, which a missing
        # dependency turns into an error event below rather than a bare traceback.
        from .run.predict import predict

        def progress(p) -> None:
            events.send("progress", done=p.done, total=p.total, skipped=p.skipped, tile_id=p.tile_id,
                        features=p.features)

        result = predict(job, progress=progress, cancelled=cancel.is_set)
    except TCDError as exc:
        events.send("error", type=type(exc).__name__, message=str(exc), details=traceback.format_exc(),
                    data=error_data(exc))
        return 2
    except ModuleNotFoundError as exc:
        events.send("error", type="MissingDependency",
                    message=f"The Python package '{exc.name}' is missing; install the plugin's dependencies.",
                    details=traceback.format_exc())
        return 1
    except Exception as exc:
        events.send("error", type=type(exc).__name__, message=f"Unexpected {type(exc).__name__}: {exc}",
                    details=traceback.format_exc())
        return 1
    events.send("finished", state=result.state, done=result.done, total=result.total, skipped=result.skipped,
                features=result.features, cache_dir=str(result.cache_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
