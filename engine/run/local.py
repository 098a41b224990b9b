"""The local executor: one machine's threads turn tiles into outputs, handed back in plan order.

Three stages overlap so reading and post-processing hide behind inference: a
reader thread fills a small queue with tiles, an inference thread runs the
model (onnxruntime releases the GIL) on one tile or, when the model takes a
batch and it pays (a GPU), on the tiles already read, up to ``batch_size``, and a
small pool post-processes (crown split, vectorising, GeoTIFF encoding). Queues are bounded, so
memory does not grow with the raster. On Linux the pool's threads run at a lower priority: where
the model keeps every core busy, post-processing then fills its idle moments instead of preempting
one of its threads, which the others wait for at each operator (SegFormer-b0 and the default model
ran 2-4 % faster on 2 cores; a light model, whose post-processing is the bottleneck, neither gains
nor loses beyond the noise). It cannot fall behind for long: when the bounded queue is full,
inference waits. The caller iterates :meth:`LocalExecutor.map` and commits each result; closing
the iterator stops every stage within a tile.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from ..cache.store import TileOutputs
from ..tiling.grid import Tile
from .tile import TileProcessor

_DONE = object()
_POLL_S = 0.1
# The niceness of post-processing threads (Linux): about a tenth of a core against busy model
# threads. 19 left them next to nothing until the bounded queue filled, for no more speed. Against
# a model that never idles, finished tiles can still wait for the queue to fill and commit together.
POST_NICE = 10
IN_FLIGHT = 3  # tiles post-processed or waiting for the caller, at most


def lower_thread_priority() -> None:
    """Give the calling thread the niceness :data:`POST_NICE` (Linux only, where a thread has its own)."""
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), POST_NICE)
        except OSError:  # not allowed here (a seccomp sandbox): the threads keep the process's priority
            pass


class _Stop:
    """Shared by the stages: the first error wins and stops every stage."""

    def __init__(self):
        self.error: BaseException | None = None
        self.event = threading.Event()

    def is_set(self) -> bool:
        return self.event.is_set()

    def set(self) -> None:
        self.event.set()

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.event.set()


class LocalExecutor:
    """Runs a :class:`TileProcessor`'s stages on threads of this process."""

    def __init__(self, processor: TileProcessor, *, post_workers: int = 2, read_ahead: int = 2,
                 in_flight: int = IN_FLIGHT, batch_size: int | None = None):
        self.processor = processor
        self.post_workers = post_workers
        self.read_ahead = read_ahead
        self.in_flight = in_flight
        self.batch_size = batch_size  # None: what the model's session says pays (OnnxModel.batch_size)

    def map(self, tiles: Sequence[Tile]) -> Iterator[TileOutputs]:
        """Yield each tile's outputs in the order of ``tiles``; an error in any stage is raised here."""
        stop = _Stop()
        batch_size = max(1, self.batch_size or self.processor.model.batch_size)
        read_q: queue.Queue = queue.Queue(maxsize=max(self.read_ahead, batch_size))
        # Tiles being post-processed or waiting for the caller; bounds memory to a few tiles.
        out_q: queue.Queue = queue.Queue(maxsize=self.in_flight)
        pool = ThreadPoolExecutor(max_workers=self.post_workers, thread_name_prefix="tcd-post",
                                  initializer=lower_thread_priority)
        processor = self.processor

        def put(q: queue.Queue, item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=_POLL_S)
                    return True
                except queue.Full:
                    continue
            return False

        def get(q: queue.Queue):
            while True:
                try:
                    return q.get(timeout=_POLL_S)
                except queue.Empty:
                    if stop.is_set():
                        return _DONE

        def read_stage() -> None:
            try:
                for tile in tiles:
                    raw, valid = processor.read(tile)
                    if not put(read_q, (tile, raw, valid)):
                        return
            except BaseException as exc:  # handed to the caller
                stop.fail(exc)
            finally:
                processor.close()  # the reader belongs to this thread (GDAL's settings are per thread)
                put(read_q, _DONE)

        def next_batch() -> list:
            """The next tile (waiting for it) and those already read behind it, up to ``batch_size``."""
            first = get(read_q)
            if first is _DONE:
                return []
            batch = [first]
            while len(batch) < batch_size:
                try:
                    item = read_q.get_nowait()
                except queue.Empty:
                    break
                if item is _DONE:
                    read_q.put(_DONE)  # seen again by the next call, which ends the stage
                    break
                batch.append(item)
            return batch

        def infer_stage() -> None:
            try:
                while batch := next_batch():
                    if len(batch) == 1:
                        decoded = [processor.infer(batch[0][1], batch[0][2])]
                    else:
                        # Whole tiles run together; a tile with no valid pixel is skipped and one
                        # run on its data's part goes alone (as TileProcessor.infer does both).
                        whole = [i for i, (_, _, valid) in enumerate(batch)
                                 if valid.any() and processor.crop_of(valid) is None]
                        outputs = dict(zip(whole, processor.model.run_batch([batch[i][1] for i in whole])
                                           if whole else []))
                        decoded = [outputs[i] if i in outputs else processor.infer(raw, valid)
                                   for i, (_, raw, valid) in enumerate(batch)]
                    for (tile, _, valid), out in zip(batch, decoded):
                        if not put(out_q, pool.submit(processor.postprocess, tile, valid, out)):
                            return
            except BaseException as exc:
                stop.fail(exc)
            finally:
                put(out_q, _DONE)

        threads = [threading.Thread(target=read_stage, name="tcd-reader", daemon=True),
                   threading.Thread(target=infer_stage, name="tcd-infer", daemon=True)]
        for thread in threads:
            thread.start()
        try:
            while (future := get(out_q)) is not _DONE:
                yield future.result()
            if stop.error is not None:
                raise stop.error
        except BaseException as exc:
            stop.fail(exc)
            raise
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            pool.shutdown(wait=True, cancel_futures=True)
