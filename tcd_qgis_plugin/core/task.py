"""A QgsTask that runs one prediction in a worker process (:mod:`tcd_qgis_plugin.engine.worker`).

:class:`WorkerRun` drives the worker (start it, relay its progress events, forward a
cancel request); the task and the Processing algorithm both use it. The task's
``run()`` works on a background thread and never touches widgets or the project.
Progress reaches the main thread through the queued ``tilesCommitted`` signal;
``finished()`` (main thread) logs the outcome and emits ``runEnded``.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from qgis.core import Qgis, QgsMessageLog, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from tcd_qgis_plugin.core.launch import engine_command
from tcd_qgis_plugin.core.texts import LOG_TAG, translator
from tcd_qgis_plugin.engine.settings import Job
from tcd_qgis_plugin.engine.worker import CANCEL, job_to_json
from tcd_qgis_plugin.paths import PLUGIN_DIR

# After a cancel request the engine finishes the tile in progress; a worker that
# takes longer than this is stopped with SIGTERM, then SIGKILL.
CANCEL_GRACE_S = 60.0
KILL_GRACE_S = 5.0
POLL_S = 0.1


tr = translator("PredictionTask")


def tiles_text(count: int) -> str:
    """``1 tile``, ``12 tiles``."""
    return tr("1 tile") if count == 1 else tr("{} tiles").format(count)


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended. ``state``: complete, cancelled or failed; ``message`` is one sentence."""

    cache_dir: Path
    state: str
    done: int
    total: int
    features: int
    message: str
    details: str = ""
    # The facts the engine's error carries (worker protocol ``data``): ``start_afresh_fixes``,
    # ``what`` and ``differences`` of a cache that cannot be continued.
    data: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class TileProgress:
    """A worker progress event: committed tiles so far, resumed ones included."""

    cache_dir: Path
    done: int
    total: int
    skipped: int
    features: int


class WorkerRun:
    """One prediction in a worker process, driven from the calling thread until the worker ends.

    The one place that drives a worker: :class:`PredictionTask` (the dialog and the
    runs panel) and the Processing algorithm ``tcd:delineatecrowns`` each call
    :meth:`run` on their own background thread. ``cancelled`` is polled every
    ``POLL_S``; ``on_progress`` gets a :class:`TileProgress` on the calling thread.
    ``resume_hint`` ends the sentences of a run that stopped early: where the user resumes it.
    """

    def __init__(self, job: Job, python: Path, env: dict, resume_hint: str | None = None):
        self.job = job
        self.python = Path(python)
        self.env = dict(env)
        self.resume_hint = resume_hint or tr("press Resume in the TCD runs panel")
        self.worker_pid: int | None = None
        self.last = TileProgress(job.cache_dir, 0, 0, 0, 0)

    def run(self, cancelled: Callable[[], bool], on_progress: Callable[[TileProgress], None]) -> RunOutcome:
        """Start the worker and relay its events until it ends; never raises."""
        try:
            return self._run(cancelled, on_progress)
        except Exception as exc:  # the caller gets an outcome, never an exception
            return self.failed(tr("The prediction could not be started: {}").format(exc), repr(exc))

    def failed(self, message: str, details: str = "", data: dict | None = None) -> RunOutcome:
        p = self.last
        return RunOutcome(self.job.cache_dir, "failed", p.done, p.total, p.features, message, details, data or {})

    def _run(self, cancelled, on_progress) -> RunOutcome:
        kwargs = {}
        if sys.platform == "win32":
            kwargs["creationflags"] = subprocess.CREATE_NO_WINDOW
        else:
            kwargs["start_new_session"] = True  # a Ctrl-C in QGIS's terminal is not the user cancelling
        proc = subprocess.Popen(
            engine_command(self.python, "worker"),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=self.env, cwd=str(PLUGIN_DIR),
            text=True, encoding="utf-8", errors="replace", bufsize=1, **kwargs,
        )
        QgsMessageLog.logMessage(
            tr("Started the worker (pid {}) for {} into {}.").format(proc.pid, self.job.image, self.job.cache_dir),
            LOG_TAG, Qgis.Info)
        events: queue.Queue = queue.Queue()
        stderr_tail: deque = deque(maxlen=200)
        readers = [
            threading.Thread(target=_pump, args=(proc.stdout, events.put, True), daemon=True),
            threading.Thread(target=_pump, args=(proc.stderr, stderr_tail.append), daemon=True),
        ]
        for reader in readers:
            reader.start()
        try:
            proc.stdin.write(json.dumps(job_to_json(self.job)) + "\n")
            proc.stdin.flush()
        except OSError:
            pass  # the worker died at once; its exit status tells why below

        final = None
        cancel_sent_at = None
        stop_sent_at = None
        while True:
            if cancelled() and cancel_sent_at is None:
                cancel_sent_at = time.monotonic()
                _send(proc, CANCEL)
            if cancel_sent_at is not None and proc.poll() is None:
                waited = time.monotonic() - cancel_sent_at
                if stop_sent_at is None and waited > CANCEL_GRACE_S:
                    stop_sent_at = time.monotonic()
                    proc.terminate()
                elif stop_sent_at is not None and time.monotonic() - stop_sent_at > KILL_GRACE_S:
                    proc.kill()
            try:
                line = events.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if line is None:  # the worker closed stdout: it has ended
                break
            event = _parse(line)
            if event is None:
                stderr_tail.append(line)
            elif event.get("event") == "started":
                self.worker_pid = event.get("pid")
            elif event.get("event") == "progress":
                self._on_progress(event, on_progress)
            elif event.get("event") in ("finished", "error"):
                final = event
        try:
            proc.stdin.close()
        except OSError:
            pass
        returncode = proc.wait()
        for reader in readers:
            reader.join(timeout=1.0)
        for stream, reader in zip((proc.stdout, proc.stderr), readers):
            if not reader.is_alive():  # a reader still blocked in readline would fail on a closed pipe
                stream.close()
        stderr_text = "".join(stderr_tail)
        if stderr_text.strip():
            QgsMessageLog.logMessage(tr("Worker output:\n{}").format(stderr_text), LOG_TAG, Qgis.Info)
        return self._outcome(final, returncode, stderr_text, cancelled)

    def _on_progress(self, event: dict, on_progress) -> None:
        try:
            p = TileProgress(self.job.cache_dir, int(event["done"]), int(event["total"]),
                             int(event.get("skipped", 0)), int(event.get("features", 0)))
        except (KeyError, TypeError, ValueError):
            return
        self.last = p
        on_progress(p)

    def _outcome(self, final: dict | None, returncode: int, stderr_text: str, cancelled) -> RunOutcome:
        p = self.last
        if final is not None and final.get("event") == "finished":
            state = final.get("state")
            done, total, features = (int(final.get(k, 0)) for k in ("done", "total", "features"))
            if state == "complete":
                message = tr("Delineated {} crowns in {} of {}.").format(features, tiles_text(total),
                                                                          self.job.image.name)
                return RunOutcome(self.job.cache_dir, "complete", done, total, features, message)
            message = tr("The run on {} was cancelled after {} of {} tiles; {}.").format(
                self.job.image.name, done, total, self.resume_hint)
            return RunOutcome(self.job.cache_dir, "cancelled", done, total, features, message)
        if final is not None:
            message = str(final.get("message") or tr("The prediction failed."))
            details = "{}: {}\n{}".format(final.get("type", "Error"), message, final.get("details", ""))
            return self.failed(message, details, final.get("data") or {})
        if cancelled():
            message = tr("The run on {} was stopped after {} of {} tiles; {}.").format(
                self.job.image.name, p.done, p.total, self.resume_hint)
            return RunOutcome(self.job.cache_dir, "cancelled", p.done, p.total, p.features, message)
        if returncode < 0:
            try:
                how = signal.Signals(-returncode).name
            except ValueError:
                how = f"signal {-returncode}"
            how = tr("was killed ({})").format(how)
        else:
            how = tr("exited with status {}").format(returncode)
        message = tr("The prediction process {} after {} of {} tiles; the finished tiles are kept: {}.").format(
            how, p.done, p.total, self.resume_hint)
        return self.failed(message, stderr_text)


class PredictionTask(QgsTask):
    tilesCommitted = pyqtSignal(object)  # TileProgress
    runEnded = pyqtSignal(object)  # RunOutcome

    def __init__(self, job: Job, python: Path, env: dict, description: str | None = None):
        super().__init__(description or tr("Tree crown delineation: {}").format(job.image.name),
                         QgsTask.Flag.CanCancel)
        self.job = job
        self.worker = WorkerRun(job, python, env)
        self.outcome: RunOutcome | None = None

    @property
    def worker_pid(self) -> int | None:
        return self.worker.worker_pid

    # -- background thread ----------------------------------------------------
    def run(self) -> bool:
        self.outcome = self.worker.run(self.isCanceled, self._on_progress)
        return self.outcome.state == "complete"

    def _on_progress(self, p: TileProgress) -> None:
        if p.total:
            self.setProgress(100.0 * p.done / p.total)
        self.tilesCommitted.emit(p)

    # -- main thread ---------------------------------------------------------
    def finished(self, result: bool) -> None:
        outcome = self.outcome or self.worker.failed(tr("The prediction did not run."))
        level = {"complete": Qgis.Success, "cancelled": Qgis.Info}.get(outcome.state, Qgis.Critical)
        QgsMessageLog.logMessage(outcome.message, LOG_TAG, level)
        if outcome.details:
            QgsMessageLog.logMessage(outcome.details, LOG_TAG, Qgis.Info)
        self.runEnded.emit(outcome)


def _pump(stream, put, mark_end: bool = False) -> None:
    """Hand each line of a pipe to ``put``; with ``mark_end``, ``put(None)`` at end of file."""
    for line in iter(stream.readline, ""):
        put(line)
    if mark_end:
        put(None)


def _parse(line: str) -> dict | None:
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def _send(proc: subprocess.Popen, text: str) -> None:
    try:
        proc.stdin.write(text + "\n")
        proc.stdin.flush()
    except (OSError, ValueError):
        pass  # the worker has already gone
