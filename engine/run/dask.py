"""The Dask executor: a cluster's workers turn tiles into outputs; this process commits them in plan order.

Imported only when a job asks for a cluster (``Job.workers`` or ``Job.scheduler``);
``distributed`` is an optional package and nothing else in the engine imports it.

The split. Each tile's work is a plain function of the tile
(:meth:`TileProcessor.process`: read the window, run the model, post-process),
so workers do all the CPU work and hand back :class:`~engine.cache.store.TileOutputs`,
which holds only bytes and records (the encoded confidence GeoTIFF, the crowns'
geometry). The process that called :meth:`DaskExecutor.map` is the only writer: it
commits outputs in plan order with the same :class:`~engine.cache.store.Cache` as a
single-process run, so the cache is the same file for file, and crash safety is the
same protocol. Tiles travel in tasks of a few consecutive tiles (:func:`tiles_per_task`: about
a second of work), so Dask's cost per task is shared by light tiles. At most
two tasks per worker thread are submitted and not yet committed, and results that
arrive early wait in a reorder buffer of at most that many, so memory stays flat
however large the raster.

Data. Workers open the raster themselves (a shared path, or any GDAL path such as
``/vsis3/bucket/ortho.tif``): pixels never travel from this process. The model's
bytes are scattered once to every worker and checked against their SHA-256 there;
each worker keeps one model session per model and thread settings, and each of its
threads one open raster per run (:func:`run_tiles`).

Failures. A worker that dies loses nothing: the scheduler runs its tiles again
elsewhere, and a tile's outputs do not depend on where it ran. Losing the scheduler
stops the run with :class:`~engine.errors.ClusterError` (the committed tiles stay;
running again resumes). Engine errors raised on a worker (a raster it cannot open)
reach the caller as the same exception, with the same sentence, as locally.

Names. The plugin imports the engine as ``tcd_qgis_plugin.engine``, workers usually
as ``engine``: what travels is pickled bytes read with :class:`_Unpickler`, which maps
either name onto the reader's, and the task itself is a small function shipped by
value that imports whichever name the worker has.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import pickle
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from .. import __version__
from ..cache.store import TileOutputs
from ..errors import ClusterError, ModelError, TCDError
from ..models.runner import OnnxModel
from ..tiling.grid import Tile
from .tile import RunPlan, TileProcessor

logger = logging.getLogger(__name__)

_PACKAGE = __name__.rsplit(".run.", 1)[0]  # "engine", or "tcd_qgis_plugin.engine" inside the plugin
_ENGINE_NAMES = ("tcd_qgis_plugin.engine", "engine")
_POLL_S = 0.5  # how often a waiting committer looks at the cluster (workers left, scheduler there)
_NO_WORKERS_S = 120.0  # a cluster without workers for this long stops the run
# A task's work, about: Dask's round trip costs the committing process ~3 ms a task, as much
# as the rest of a light tile's commit; a killed worker's tasks are redone, so they stay short.
TASK_S = 1.0
MAX_TILES_PER_TASK = 16


# -- transport: pickles that read under either name of the engine ---------------------------


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        for prefix in _ENGINE_NAMES:
            if module == prefix or module.startswith(prefix + "."):
                module = _PACKAGE + module[len(prefix):]
                break
        return super().find_class(module, name)


def _dumps(value) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def _loads(data: bytes):
    return _Unpickler(io.BytesIO(data)).load()


def _make_task():
    """The task Dask ships to workers: by value (it is a local function), so it names no engine module."""

    def tcd_tiles(run_blob: bytes, model_bytes: bytes, tiles: list, version: str) -> bytes:
        import importlib

        for name in ("engine", "tcd_qgis_plugin.engine"):
            try:
                module = importlib.import_module(name + ".run.dask")
            except ModuleNotFoundError as exc:
                missing = exc.name or ""
                if not (name == missing or name.startswith(missing + ".") or missing.startswith(name + ".")):
                    raise  # a package the engine needs is missing, not the engine
                continue
            return module.run_tiles(run_blob, model_bytes, tiles, version)
        raise ModuleNotFoundError("this Dask worker cannot import the tree crown delineation engine", name="engine")

    return tcd_tiles


def _make_probe():
    def tcd_engine_version():
        import importlib

        for name in ("engine", "tcd_qgis_plugin.engine"):
            try:
                importlib.import_module(name + ".run.dask")
            except ModuleNotFoundError:
                continue
            return importlib.import_module(name).__version__
        return None

    return tcd_engine_version


_TASK = _make_task()
_PROBE = _make_probe()


# -- worker side ------------------------------------------------------------------------------

_KEEP = 4  # runs and model sessions a worker keeps
_lock = threading.Lock()
_models: dict[tuple, OnnxModel] = {}
_runs: dict[bytes, tuple[str, RunPlan]] = {}
_threads = threading.local()


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return f"pid {os.getpid()}"


def _model_dir() -> Path:
    try:
        from distributed import get_worker

        base = Path(get_worker().local_directory)
    except (ImportError, ValueError):
        base = Path(tempfile.gettempdir())
    return base / "tcd-models"


def _model(plan: RunPlan, model_bytes: bytes) -> OnnxModel:
    """This worker's session of the run's model: stored and opened once, after checking its SHA-256."""
    sha = plan.spec.sha256
    threads = plan.threads or 1  # Dask runs one tile per worker thread; each session keeps to one core
    key = (sha, threads, plan.provider)
    with _lock:
        model = _models.get(key)
        if model is None:
            if hashlib.sha256(model_bytes).hexdigest() != sha:
                raise ModelError(f"The model that reached the Dask worker at {_worker_address()} is not the one "
                                 f"this run uses (its SHA-256 differs); the transfer was damaged.")
            path = _model_dir() / f"{sha}.onnx"
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
                tmp.write_bytes(model_bytes)
                os.replace(tmp, path)
            model = _models[key] = OnnxModel(path, threads=threads, provider=plan.provider)
            while len(_models) > _KEEP:  # a long-lived worker serving many runs keeps the latest few
                _models.pop(next(iter(_models)))
        return model


def _processor(run_blob: bytes, model_bytes: bytes) -> TileProcessor:
    """This thread's processor for the run (one open raster per thread: GDAL's handles are per thread)."""
    with _lock:
        known = _runs.get(run_blob)
        if known is None:
            plan = _loads(run_blob)
            known = _runs[run_blob] = (hashlib.sha256(run_blob).hexdigest(), plan)
            while len(_runs) > _KEEP:
                _runs.pop(next(iter(_runs)))
    run_key, plan = known
    current = getattr(_threads, "current", None)
    if current is not None and current[0] == run_key:
        return current[1]
    if current is not None:
        current[1].close()  # a finished run's raster, opened by this thread
    model = _model(plan, model_bytes)
    processor = TileProcessor(replace(plan, model_path=str(model.spec.path)), model)
    _threads.current = (run_key, processor)
    return processor


def run_tiles(run_blob: bytes, model_bytes: bytes, tiles: list, version: str) -> bytes:
    """On a worker: the outputs of consecutive tiles, pickled with the seconds they took; an engine error is
    returned (pickled) to be raised by the caller."""
    try:
        if version != __version__:
            address = _worker_address()
            raise ClusterError(f"The Dask worker at {address} runs version {__version__} of the engine and "
                               f"this run version {version}.", "engine", address)
        started = time.perf_counter()
        processor = _processor(run_blob, model_bytes)
        outputs = [processor.process(Tile(*tile)) for tile in tiles]
        return _dumps(("ok", outputs, time.perf_counter() - started))
    except TCDError as exc:
        return _dumps(("error", exc, 0.0))


def tiles_per_task(seconds_per_tile: float | None) -> int:
    """Tiles a task carries: enough for about :data:`TASK_S` of work, so that Dask's cost per task (a few
    ms on the committing side) is shared by light tiles; one tile until a task's time is known."""
    if not seconds_per_tile:
        return 1
    return max(1, min(MAX_TILES_PER_TASK, round(TASK_S / seconds_per_tile)))


# -- the committing side ----------------------------------------------------------------------


def _tile_args(tile: Tile) -> tuple:
    return (tile.tile_id, tuple(tile.core_px), tuple(tile.transform),
            None if tile.offset_px is None else tuple(tile.offset_px))


class DaskExecutor:
    """Runs a plan's tiles on a Dask cluster: ``scheduler`` (an address) or ``workers`` local processes.

    Same interface as :class:`~engine.run.local.LocalExecutor`: :meth:`map` yields
    each tile's outputs in plan order; closing the iterator cancels what is still
    queued on the cluster and lets go of it (a cluster this executor started stops).
    """

    def __init__(self, plan: RunPlan, *, scheduler: str | None = None, workers: int | None = None,
                 threads_per_worker: int | None = None):
        try:
            import distributed  # noqa: F401
        except ImportError as exc:
            raise ClusterError("Running on a Dask cluster needs the Python package 'distributed', "
                               "which is not installed.", "missing") from exc
        if (scheduler is None) == (workers is None):
            raise ValueError("give exactly one of scheduler and workers")
        self.plan = plan
        self.scheduler = scheduler
        self.workers = workers
        self.threads_per_worker = threads_per_worker
        self._run_blob = _dumps(plan)
        self._token = hashlib.sha256(self._run_blob).hexdigest()[:12]
        self._threads_total = 0
        self._threads_checked = 0.0

    # -- connecting ---------------------------------------------------------------------------

    def _connect(self):
        from distributed import Client, LocalCluster

        if self.scheduler is None:
            threads = self.threads_per_worker or max(1, (os.cpu_count() or 1) // self.workers)
            cluster = LocalCluster(n_workers=self.workers, threads_per_worker=threads, processes=True,
                                   dashboard_address=":0", silence_logs=logging.ERROR)
            client = Client(cluster, set_as_default=False)
            logger.info("local Dask cluster of %d workers, dashboard %s", self.workers, client.dashboard_link)
            return client, cluster
        try:
            client = Client(self.scheduler, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ClusterError(f"No Dask scheduler answers at {self.scheduler} ({_reason(exc)}).", "unreachable",
                               self.scheduler) from exc
        return client, None

    def _check_workers(self, client) -> None:
        """Wait for a first worker; refuse workers that cannot import this engine or run another version."""
        deadline = time.monotonic() + _NO_WORKERS_S
        while not client.nthreads():
            if time.monotonic() > deadline:
                raise ClusterError(f"The Dask scheduler at {self.scheduler} has had no workers for "
                                   f"{_NO_WORKERS_S:.0f} s.", "workers", self.scheduler, resume_fixes=True)
            time.sleep(_POLL_S)
        for address, version in client.run(_PROBE).items():
            if version is None:
                raise ClusterError(f"The Dask worker at {address} cannot import the tree crown delineation engine.",
                                   "engine", address)
            if version != __version__:
                raise ClusterError(f"The Dask worker at {address} runs version {version} of the engine and this "
                                   f"run version {__version__}.", "engine", address)

    def threads(self, client) -> int:
        """The cluster's worker threads (looked up every few seconds: workers come and go)."""
        now = time.monotonic()
        if now - self._threads_checked > 2.0:
            self._threads_total = sum(client.nthreads().values())
            self._threads_checked = now
        return max(1, self._threads_total)

    # -- running ------------------------------------------------------------------------------

    def map(self, tiles: Sequence[Tile]) -> Iterator[TileOutputs]:
        """Yield each tile's outputs in the order of ``tiles``; an error on the cluster is raised here."""
        with _quiet_dask():
            yield from self._map(tiles)

    def _map(self, tiles: Sequence[Tile]) -> Iterator[TileOutputs]:
        client, cluster = self._connect()
        in_flight: dict = {}  # future -> index in tiles
        try:
            self._check_workers(client)
            model_bytes = Path(self.plan.model_path).read_bytes()
            if hashlib.sha256(model_bytes).hexdigest() != self.plan.spec.sha256:
                raise ModelError(f"The model file {self.plan.model_path} changed since the run started.")
            run_f = client.scatter(self._run_blob, broadcast=True, hash=True)
            model_f = client.scatter(model_bytes, broadcast=True, hash=True)
            del model_bytes
            ready: dict[int, bytes] = {}  # the reorder buffer: tasks' results that came before their turn
            n, submitted, yielded = len(tiles), 0, 0
            seconds_per_tile = None  # a worker's, over the tasks so far
            while yielded < n:
                threads = self.threads(client)
                per_task = tiles_per_task(seconds_per_tile)
                limit = max(4, 2 * threads * per_task)
                while submitted < n and submitted - yielded < limit:
                    # The last tiles go one task per thread at least, so no thread idles at the end.
                    k = max(1, min(per_task, (n - submitted) // threads))
                    batch = tiles[submitted:submitted + k]
                    future = client.submit(_TASK, run_f, model_f, [_tile_args(t) for t in batch], __version__,
                                           key=f"tcd-tile-{batch[0].tile_id}-{batch[-1].tile_id}-{self._token}",
                                           pure=False)
                    in_flight[future] = submitted
                    submitted += k
                if yielded not in ready:
                    for future, blob in self._collect(client, in_flight):
                        ready[in_flight.pop(future)] = blob
                while yielded in ready:
                    kind, value, seconds = _loads(ready.pop(yielded))
                    if kind == "error":
                        raise value
                    mean = seconds / len(value)
                    seconds_per_tile = mean if seconds_per_tile is None else 0.8 * seconds_per_tile + 0.2 * mean
                    yield from value
                    yielded += len(value)
        finally:
            for future in in_flight:
                future.cancel()
            in_flight.clear()
            try:
                client.close(timeout=10)
            except Exception:  # a lost scheduler makes closing fail too; nothing is left to free
                logger.debug("closing the Dask client failed", exc_info=True)
            if cluster is not None:
                cluster.close()

    def _collect(self, client, in_flight: dict) -> list:
        """Wait until some submitted tiles finish; their ``(future, result bytes)``, or the cluster's error."""
        from distributed import CancelledError, wait

        try:
            from distributed import KilledWorker
        except ImportError:  # older distributed
            from distributed.scheduler import KilledWorker
        since_workers = time.monotonic()
        while True:
            try:
                with client.as_current():
                    done = wait(list(in_flight), timeout=_POLL_S, return_when="FIRST_COMPLETED").done
            except TimeoutError:
                done = ()
            except (OSError, CancelledError) as exc:
                raise self._lost(exc) from exc
            if done:
                break
            if client.status != "running":
                raise self._lost(None)
            if client.nthreads():
                since_workers = time.monotonic()
            elif time.monotonic() - since_workers > _NO_WORKERS_S:
                raise ClusterError(f"The Dask cluster at {self.scheduler} has had no workers for "
                                   f"{_NO_WORKERS_S:.0f} s.", "workers", self.scheduler, resume_fixes=True)
        finished = []
        for future in done:
            if future.status == "finished":
                finished.append(future)
                continue
            if future.status == "cancelled":
                raise self._lost(None)
            exc = future.exception()
            first, last = future.key.split("-")[2:4]
            if isinstance(exc, KilledWorker):
                what = f"Tile {first} was" if first == last else f"Tiles {first} to {last} were"
                raise ClusterError(f"{what} running on each of the Dask workers that died while predicting "
                                   f"them, too many times in a row.", "workers", self.scheduler,
                                   resume_fixes=True) from exc
            if isinstance(exc, ModuleNotFoundError):
                what = ("the tree crown delineation engine" if exc.name == "engine"
                        else f"the Python package '{exc.name}', which the engine needs")
                raise ClusterError(f"A Dask worker cannot import {what}.", "engine") from exc
            raise exc
        try:
            blobs = client.gather(finished)
        except (OSError, CancelledError) as exc:
            raise self._lost(exc) from exc
        return list(zip(finished, blobs))

    def _lost(self, exc: BaseException | None) -> ClusterError:
        where = self.scheduler or "this machine"
        return ClusterError(f"The connection to the Dask scheduler at {where} was lost during the run; "
                            f"the tiles committed so far are kept.", "lost", self.scheduler, resume_fixes=True)


@contextlib.contextmanager
def _quiet_dask():
    """Keep Dask's own client-side log quiet during a run (unless debugging).

    What it would say (a lost connection, with tracebacks, while reconnecting and
    closing) reaches the caller as one :class:`ClusterError` sentence instead.
    """
    if logging.getLogger("distributed").isEnabledFor(logging.DEBUG):
        yield
        return
    # Dask's configuration gives some of its loggers levels of their own: quiet each.
    names = ["distributed"] + [n for n in logging.root.manager.loggerDict if n.startswith("distributed.")]
    saved = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:160].rstrip(".")
