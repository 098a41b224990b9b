"""engine.doctor and ``python -m engine doctor``: requirements, versions, ONNX Runtime providers."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from engine import doctor
from engine.doctor import Requirement, check, parse_requirements, providers, satisfies, version_key

ROOT = Path(__file__).resolve().parent.parent


def run_doctor(code_before: str = "") -> subprocess.CompletedProcess:
    code = f"{code_before}\nimport sys\nfrom engine.cli import main\nsys.exit(main(['doctor']))"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False,
                          timeout=120)


def test_cli_lists_every_requirement_numpy_gdal_and_cpu_provider():
    out = run_doctor()
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    for req in doctor.read_requirements():
        row = next(line for line in lines if line.startswith(req.name + " "))
        assert req.spec in row
        assert check(req).found_version in row
    for name, module in (("numpy", "numpy"), ("GDAL", "osgeo")):
        row = next(line for line in lines if line.startswith(name + " "))
        assert "provided by QGIS/system" in row
        assert str(Path(importlib.util.find_spec(module).origin).parent.parent) in row
    assert "CPUExecutionProvider" in out.stdout
    assert "Everything the engine needs is present." in out.stdout


def test_cli_reports_a_hidden_package_as_missing():
    # Take the folder onnxruntime is installed in off sys.path: metadata and import both lose it.
    site = Path(importlib.util.find_spec("onnxruntime").origin).parent.parent
    out = run_doctor(f"import sys; sys.path[:] = [p for p in sys.path if p != {str(site)!r}]")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "problem: onnxruntime is not installed." in out.stdout
    assert "ONNX Runtime execution providers: none" in out.stdout
    onnx_row = next(line for line in out.stdout.splitlines() if line.startswith("onnxruntime "))
    assert "missing" in onnx_row


@pytest.mark.parametrize(
    "older, newer",
    [
        ("1.0", "1.0.1"),
        ("1.9", "1.10"),
        ("1.0.dev1", "1.0a1"),
        ("1.0a1", "1.0b2"),
        ("1.0rc1", "1.0"),
        ("1.0", "1.0.post1"),
        ("1.0.post1", "1.1.dev0"),
        ("2.0", "1!0.1"),
    ],
)
def test_versions_sort_in_pep440_order(older, newer):
    assert version_key(older) < version_key(newer)


def test_trailing_zeros_and_local_versions_compare_equal():
    assert version_key("1.0") == version_key("1.0.0")
    assert satisfies("1.32.0+cu121", "==1.32")


@pytest.mark.parametrize(
    "version, spec, expected",
    [
        ("1.16.0", ">=1.16,<2", True),
        ("1.15.1", ">=1.16,<2", False),
        ("2.0.0", ">=1.16,<2", False),
        ("1.3.4", ">=1.3.5", False),
        ("1.4.2", "~=1.4.1", True),
        ("1.5.0", "~=1.4.1", False),
        ("1.2.7", "==1.2.*", True),
        ("1.3", "==1.2.*", False),
        ("1.24.2", "!=1.24.2", False),
        ("4.66.1", "", True),
    ],
)
def test_satisfies(version, spec, expected):
    assert satisfies(version, spec) is expected


def test_parse_requirements_reads_names_and_specs_and_refuses_what_it_cannot_check():
    reqs = parse_requirements("# comment\nonnxruntime >= 1.16, <2\n\nrasterio[s3]>=1.3.5  # why\ntqdm\n")
    assert [(r.name, r.spec) for r in reqs] == [("onnxruntime", ">=1.16,<2"), ("rasterio", ">=1.3.5"), ("tqdm", "")]
    for bad in ("-r other.txt", "scipy; python_version<'3.9'", "pkg @ https://x/y.whl", "scipy >= one"):
        with pytest.raises(ValueError):
            parse_requirements(bad)


def test_runtime_requirements_leave_numpy_and_gdal_to_qgis():
    names = {r.name.lower() for r in doctor.read_requirements()}
    assert {"onnxruntime", "rasterio"} <= names
    assert not names & {"numpy", "gdal"}


def test_check_says_too_old_too_new_and_not_installed():
    version = check(Requirement("pytest")).found_version
    assert check(Requirement("pytest", ">=999")).reason == f"pytest {version} is too old (needs >=999)."
    assert check(Requirement("pytest", "<1")).reason == f"pytest {version} is too new (needs <1)."
    assert check(Requirement("tcd-no-such-package", ">=1")).reason == "tcd-no-such-package is not installed."
    ok = check(Requirement("pytest", ">=1"))
    assert ok.ok and Path(ok.location, "pytest").is_dir()


def test_tiny_model_is_valid_onnx_and_runs():
    onnx.checker.check_model(onnx.load_from_string(providers.TINY_MODEL))
    session = ort.InferenceSession(providers.TINY_MODEL, providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.array([1.5], dtype=np.float32)})
    assert y.tolist() == [3.0]


def test_a_gpu_provider_that_cannot_start_is_reported_not_silently_dropped():
    # On a machine without CUDA, ONNX Runtime falls back to the CPU when asked for
    # CUDA; the doctor must notice and say so in one sentence.
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA; the fallback cannot be provoked here")
    result = doctor.check_provider(ort, "CUDAExecutionProvider")
    assert not result.works
    assert result.problem.startswith("CUDAExecutionProvider") and result.problem.endswith("on the CPU.")
    assert ". " not in result.problem  # one sentence
    assert doctor.check_provider(ort, "CPUExecutionProvider").works


def test_a_second_copy_that_shadows_the_installed_one_is_reported(tmp_path):
    # A stray tqdm/ folder ahead on sys.path: metadata names one copy, import gets the other.
    (tmp_path / "tqdm").mkdir()
    (tmp_path / "tqdm" / "__init__.py").write_text("")
    out = run_doctor(f"import sys; sys.path.insert(0, {str(tmp_path)!r})")
    assert out.returncode == 1, out.stdout + out.stderr
    version = check(Requirement("tqdm")).found_version
    assert f"problem: tqdm is imported from {tmp_path}, not from the tqdm {version} in " in out.stdout
