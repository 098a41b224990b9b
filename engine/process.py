"""Set-up of a process the engine owns (the command line, the plugin's worker, never QGIS's).

Other libraries' warnings (a cryptography deprecation beside an older pyOpenSSL, say) are
not the user's business: :func:`route_warnings` sends them to the ``py.warnings`` logger, so
they reach the log at a chosen level instead of the terminal or the message bar.
:func:`skip_import` keeps a heavy optional module out: rasterio imports boto3 whenever it
is installed (0.13 s, with its warnings), though only ``/vsis3/`` paths use it.
"""

from __future__ import annotations

import logging
import sys
import warnings

warnings_logger = logging.getLogger("py.warnings")

# Paths that name an object on S3, the one use of boto3 (through rasterio's AWS session).
S3_PATHS = ("s3://", "/vsis3")


def route_warnings(level: int = logging.DEBUG) -> None:
    """Log every warning of this process at ``level`` instead of printing it to stderr."""

    def log_warning(message, category, filename, lineno, file=None, line=None):
        warnings_logger.log(level, "%s:%s: %s: %s", filename, lineno, category.__name__, message)

    warnings.showwarning = log_warning


def skip_import(name: str) -> None:
    """Make ``import name`` fail in this process as if the module were not installed.

    For optional modules whose absence the importing library handles (rasterio without boto3
    uses GDAL's own credentials for ``/vsis3/``); does nothing once the module is loaded.
    """
    sys.modules.setdefault(name, None)
