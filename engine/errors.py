"""Errors raised by the engine.

Every error a user can cause derives from :class:`TCDError` and carries one
sentence meant for that user (the CLI prints it as one line, the plugin shows it
in the message bar). Subclasses also derive from the matching builtin so callers
can catch either.
"""


class TCDError(Exception):
    """Root of all engine errors; ``str(err)`` is a sentence for the user."""


class InputError(TCDError, ValueError):
    """A job setting or argument is invalid (negative overlap, unknown output...)."""


class RasterError(TCDError, IOError):
    """The input raster is missing, unreadable, or not usable (no CRS, rotated...)."""


class ModelError(TCDError, ValueError):
    """The model file is missing, not ONNX, or its metadata/shape is unusable."""


class CacheMismatchError(TCDError):
    """The cache folder holds a run of another image, model or settings."""


class CacheCorruptError(TCDError, IOError):
    """The cache holds files that cannot be trusted or are unsafe (paths outside it)."""


class CacheLockedError(TCDError):
    """Another process is writing to this cache right now."""


class CacheWriteError(TCDError, IOError):
    """Writing to the cache failed (disk full, permissions)."""
