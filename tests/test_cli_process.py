"""The command line's process: other libraries' warnings kept out of sight, only what a command uses imported."""

import logging
import subprocess
import sys
import warnings

import numpy as np

from engine.process import route_warnings
from tests.rasters import write_raster


def test_route_warnings_logs_instead_of_printing(capsys, caplog):
    saved = warnings.showwarning
    try:
        route_warnings(logging.DEBUG)
        with caplog.at_level(logging.DEBUG, logger="py.warnings"), warnings.catch_warnings():
            warnings.simplefilter("always")
            # As a library's import would warn: a category of its own, not the engine's.
            warnings.warn("DSA is deprecated", DeprecationWarning, stacklevel=1)
        assert capsys.readouterr().err == ""
        assert any("DeprecationWarning: DSA is deprecated" in r.getMessage() for r in caplog.records)
        assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name == "py.warnings")
    finally:
        warnings.showwarning = saved


def run_main(*args):
    """``engine.cli.main(args)`` in a fresh interpreter; prints whether boto3 was loaded."""
    code = ("import sys; from engine.cli import main; rc = main(sys.argv[1:]); "
            "print('boto3', sys.modules.get('boto3') is not None, 'evaluate', 'engine.cli.evaluate' in sys.modules); "
            "sys.exit(rc)")
    return subprocess.run([sys.executable, "-W", "always", "-c", code, *map(str, args)], capture_output=True,
                          text=True, timeout=120)


def test_predict_imports_only_what_it_uses(tmp_path, model):
    image = write_raster(tmp_path / "img.tif", np.full((3, 100, 100), 200, np.uint8))
    proc = run_main("predict", image, "--model", model, "--out", tmp_path / "c", "--quiet")
    assert proc.returncode == 0, proc.stderr
    # Another command's module, and boto3 (rasterio imports it when installed; only S3 paths use it).
    assert "boto3 False evaluate False" in proc.stdout
    assert "Warning" not in proc.stderr, proc.stderr


def test_a_user_error_stays_one_line_with_every_warning_shown(tmp_path):
    proc = run_main("predict", tmp_path / "missing.tif", "--out", tmp_path / "c")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: "), proc.stderr
