"""Errors raised by the engine.

Every error a user can cause derives from :class:`TCDError` and carries one
sentence meant for that user, saying what is wrong; the remedy that names an
interface (a command-line flag, a button) is the caller's to word: the CLI adds
``--overwrite``, the plugin offers its own choice. Errors about a cache carry the
facts as fields, so a caller can act on them without parsing the sentence.
Subclasses also derive from the matching builtin so callers can catch either.
"""

from __future__ import annotations

from pathlib import Path


class TCDError(Exception):
    """Root of all engine errors; ``str(err)`` is a sentence for the user."""


class InputError(TCDError, ValueError):
    """A job setting or argument is invalid (negative overlap, unknown output...)."""


class RasterError(TCDError, IOError):
    """The input raster is missing, unreadable, or not usable (no CRS, rotated...)."""


class MissingCRSError(RasterError):
    """The raster file has no coordinate reference system and the job assigns none."""


class ModelError(TCDError, ValueError):
    """The model file is missing, not ONNX, or its metadata/shape is unusable."""


class CacheError(TCDError):
    """A problem with a cache folder. ``cache_dir`` names it.

    ``start_afresh_fixes`` is True when discarding the cache (and predicting it
    again) is the remedy; the caller words how (``--overwrite``, a button).
    """

    start_afresh_fixes = False

    def __init__(self, message: str, cache_dir: Path | str | None = None):
        super().__init__(message)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)


class CacheMismatchError(CacheError):
    """The cache folder holds a run of another image, model, settings or tile plan.

    ``what`` is ``"image"``, ``"model"``, ``"settings"`` or ``"plan"``;
    ``differences`` names what differs (``("width", "height")``, the other
    model's name, ...).
    """

    start_afresh_fixes = True

    def __init__(self, cache_dir: Path | str, what: str, differences: tuple[str, ...] = ()):
        self.what = what
        self.differences = tuple(differences)
        verb = "differs" if len(self.differences) == 1 else "differ"
        listed = f" ({', '.join(self.differences)} {verb})" if self.differences and what != "model" else ""
        if what == "image":
            sentence = f"This cache was made from another image{listed}."
        elif what == "model":
            named = f" ({self.differences[0]})" if self.differences else ""
            sentence = f"This cache was made with another model{named}."
        elif what == "plan":
            sentence = "This cache was made by another version of the tiling and cannot be continued."
        else:
            sentence = f"This cache was made with other settings{listed}."
        super().__init__(sentence, cache_dir)


class CacheCorruptError(CacheError, IOError):
    """The cache holds files that cannot be trusted or are unsafe (paths outside it).

    ``start_afresh_fixes``: whether discarding the cache repairs it (True when
    committed data is lost; False when the folder is not a cache of ours at all).
    """

    def __init__(self, message: str, cache_dir: Path | str | None = None, *, start_afresh_fixes: bool = False):
        super().__init__(message, cache_dir)
        self.start_afresh_fixes = start_afresh_fixes


class CacheLockedError(CacheError):
    """Another process is writing to this cache right now."""


class CacheWriteError(CacheError, IOError):
    """Writing to the cache failed (disk full, permissions)."""


class ClusterError(TCDError):
    """A Dask cluster cannot run the job, or stopped running it.

    ``what`` says what happened: ``"missing"`` (the ``distributed`` package is not
    installed), ``"unreachable"`` (no scheduler answers at ``address``), ``"lost"``
    (the scheduler went away mid-run), ``"workers"`` (the cluster has no workers, or
    a tile keeps killing them), ``"engine"`` (a worker cannot import this engine, or
    runs another version of it). ``address`` is the scheduler's or the worker's.
    ``resume_fixes`` is True when running the job again (on a cluster or on this
    machine) continues from the tiles committed so far.
    """

    def __init__(self, message: str, what: str = "lost", address: str | None = None, *,
                 resume_fixes: bool = False):
        super().__init__(message)
        self.what = what
        self.address = address
        self.resume_fixes = resume_fixes


class CancelledError(TCDError):
    """The user cancelled a long job; what it had done is kept (a fine-tune continues from its checkpoint)."""
