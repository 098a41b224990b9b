"""Fine-tuning: the shipped weights, real training steps, a real ONNX export, checkpoints, bad input.

The user's crowns are the bundled model's own crowns on the sample raster, written
back as a shapefile in EPSG:3857 (a real layer in another CRS); training runs a few
real steps on 128 px crops.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

from engine.errors import CancelledError, InputError  # noqa: E402
from engine.models.onnx_meta import read_onnx_metadata  # noqa: E402
from engine.models.spec import default_model_path, describe_model  # noqa: E402
from engine.run.predict import predict  # noqa: E402
from engine.settings import Job  # noqa: E402
from tests.reference_layers import write_area, write_crowns_as, write_layer  # noqa: E402
from training import architectures  # noqa: E402
from training.finetune import (  # noqa: E402
    FinetuneSettings,
    base_model,
    checkpoint_dir_for,
    finetune,
    read_plot,
    split_plot,
)
from training.net import ExportWrapper  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "resources" / "sample" / "OSBS_029.tif"
TINY = FinetuneSettings(iterations=3, threads=1, batch=2, crop_px=128, checkpoint_every_s=0.0)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ft")
    predict(Job(image=SAMPLE, cache_dir=tmp / "cache"))
    return write_crowns_as(tmp / "my_crowns.shp", tmp / "cache" / "crowns.shp", "polygon", "EPSG:3857")


def test_the_shipped_weights_are_the_bundled_model():
    sidecar = architectures.sidecar_path(default_model_path())
    net, entries = architectures.load_sidecar(sidecar)
    assert entries["architecture"] == "crownnet"
    assert entries["model_sha256"] == architectures.sha256(default_model_path())
    assert sidecar.stat().st_size < 1_000_000
    x = np.random.default_rng(1).standard_normal((1, 3, 96, 128)).astype(np.float32)
    with torch.no_grad():
        ours = ExportWrapper(net.eval())(torch.from_numpy(x)).numpy()
    theirs = ort.InferenceSession(str(default_model_path()), providers=["CPUExecutionProvider"]).run(
        None, {"image": x})[0]
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_the_user_crowns_are_read_in_the_model_grid_and_a_strip_is_held_back(reference):
    base = base_model(default_model_path())
    plot = read_plot(SAMPLE, reference, None, base)
    assert plot.image.dtype == np.uint8 and plot.image.shape[2] == 3
    assert len(plot.boxes) > 40
    split = split_plot(plot, 0.25)
    held = len(split.holdout_boxes)
    assert held == round(len(plot.boxes) * 0.25)
    assert len(split.train.boxes) + held == len(plot.boxes)
    axis_len = split.train.image.shape[split.axis]
    assert axis_len == split.cut_px  # the train part ends at the cut; the strip beyond is never seen
    centres = (split.holdout_boxes[:, split.axis] + split.holdout_boxes[:, split.axis + 2]) / 2
    assert (centres >= split.cut_px).all()


def test_a_few_real_steps_write_an_onnx_model_that_runs_like_the_default(reference, tmp_path):
    base = base_model(default_model_path())
    plot = read_plot(SAMPLE, reference, None, base)
    messages = []
    out = tmp_path / "models" / "mine.onnx"
    result = finetune([plot], base, out, TINY, lambda f, m: messages.append((f, m)))
    assert result.iterations == 3
    assert [m.split(",")[0] for _, m in messages if m.startswith("iteration")] == [
        "iteration 1 of 3", "iteration 2 of 3", "iteration 3 of 3"]
    fractions = [f for f, _ in messages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    meta = {k: json.loads(v) for k, v in read_onnx_metadata(out).items()}
    record = meta["finetune"]
    assert record["base_model"]["name"] == "TCD default (CrownNet, NEON 0.1 m)"
    assert record["base_model"]["sha256"] == architectures.sha256(default_model_path())
    assert len(record["data_fingerprint"]) == 64
    assert record["scores_before"]["f1"] == round(result.before.f1, 4)
    assert record["scores_after"]["f1"] == round(result.after.f1, 4)
    assert record["worse_than_base"] == (result.after.f1 < result.before.f1)
    assert ("scores worse than its base" in meta["name"]) == record["worse_than_base"]
    for key in ("output_kind", "gsd_m", "mean", "std", "crown_stride_px", "tile_size_px", "overlap_px", "bands"):
        assert meta[key] == json.loads(read_onnx_metadata(default_model_path())[key])
    # The crown thresholds were chosen again on the training crowns, and the engine reads them.
    for key, value in record["thresholds"].items():
        assert meta[key] == value
    spec = describe_model(out)
    assert spec.name == meta["name"]
    x = np.zeros((1, 3, 128, 96), np.float32)
    probs = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    assert probs.shape == (1, 2, 128, 96) and np.isfinite(probs).all()
    # The weights changed, and the new sidecar lets the model be fine-tuned again.
    tuned = base_model(out)
    assert architectures.sidecar_path(out).is_file()
    assert tuned.metadata["finetune"]["data_fingerprint"] == result.data_fingerprint
    assert not checkpoint_dir_for(out).exists()
    # And the engine predicts with it.
    predict(Job(image=SAMPLE, cache_dir=tmp_path / "cache", model=out))
    assert (tmp_path / "cache" / "crowns.shp").is_file()


def test_a_cancelled_fine_tune_continues_from_its_checkpoint(reference, tmp_path):
    base = base_model(default_model_path())
    plot = read_plot(SAMPLE, reference, None, base)
    out = tmp_path / "mine.onnx"
    settings = FinetuneSettings(iterations=4, threads=1, batch=2, crop_px=128, checkpoint_every_s=3600)
    steps = []

    def cancel_after_two() -> bool:
        return len(steps) >= 2

    def progress(fraction, message):
        if message.startswith("iteration"):
            steps.append(message)

    with pytest.raises(CancelledError, match="cancelled at iteration 2 of 4; run it again"):
        finetune([plot], base, out, settings, progress, cancel_after_two)
    assert not out.exists()
    assert (checkpoint_dir_for(out) / "latest.pt").is_file()
    messages = []
    result = finetune([plot], base, out, settings, lambda f, m: messages.append(m))
    assert "continuing at iteration 3 of 4" in messages
    assert [m.split(",")[0] for m in messages if m.startswith("iteration")] == ["iteration 3 of 4", "iteration 4 of 4"]
    assert result.iterations == 4 and out.is_file()
    assert not checkpoint_dir_for(out).exists()


def test_bad_input_is_one_sentence_and_writes_nothing(reference, tmp_path):
    base = base_model(default_model_path())
    boxes = np.array([[10 + 30 * i, 10, 35 + 30 * i, 35] for i in range(5)], float)
    cases = {
        "tree-top points": write_crowns_as(tmp_path / "tops.gpkg", reference, "point"),
        "fine-tuning needs at least 10": write_layer(tmp_path / "few.gpkg", SAMPLE, boxes, "ellipse"),
        "has no coordinate reference system": write_layer(tmp_path / "nocrs.shp", SAMPLE, boxes, "box", no_crs=True),
        "lies over the raster": write_layer(tmp_path / "away.gpkg", SAMPLE, boxes + 9000, "box"),
    }
    for expected, layer in cases.items():
        with pytest.raises(InputError, match=expected):
            read_plot(SAMPLE, layer, None, base) if "at least" not in expected else finetune(
                [read_plot(SAMPLE, layer, None, base)], base, tmp_path / "x.onnx", TINY)
    with pytest.raises(InputError, match="lies outside the raster"):
        read_plot(SAMPLE, reference, write_area(tmp_path / "far.gpkg", SAMPLE, (3000, 3000, 3100, 3100)), base)
    assert not (tmp_path / "x.onnx").exists() and not checkpoint_dir_for(tmp_path / "x.onnx").exists()


def test_the_cli_fine_tunes_and_says_what_to_install_without_torch(reference, tmp_path):
    out = tmp_path / "cli.onnx"
    args = ["finetune", "--image", str(SAMPLE), "--truth", str(reference), "--out", str(out),
            "--iterations", "2", "--crop-px", "128", "--batch", "2", "--threads", "1", "--progress-json"]
    run = subprocess.run([sys.executable, "-m", "engine", *args], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert events[-1]["result"]["iterations"] == 2 and out.is_file()
    assert all(0 <= e["progress"] <= 1 for e in events[:-1])
    no_torch = ("import sys; sys.modules['torch'] = None; from engine.cli import main; "
                f"sys.exit(main({[a.replace(str(out), str(tmp_path / 'none.onnx')) for a in args]!r}))")
    run = subprocess.run([sys.executable, "-c", no_torch], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 2
    assert [line for line in run.stderr.splitlines() if line.startswith("error")] == [
        "error: Fine-tuning needs PyTorch, onnx and Pillow: install them with pip install torch onnx Pillow "
        "--extra-index-url https://download.pytorch.org/whl/cpu (in QGIS: Processing ▸ Tree crown delineation ▸ "
        "Fine-tune a model offers to install them)."]
    assert not (tmp_path / "none.onnx").exists()


def test_a_killed_cli_fine_tune_continues_where_it_stopped(reference, tmp_path):
    """SIGTERM (what the plugin's cancel sends) stops the CLI at its next step with a checkpoint."""
    import signal

    out = tmp_path / "killed.onnx"
    args = [sys.executable, "-m", "engine", "finetune", "--image", str(SAMPLE), "--truth", str(reference),
            "--out", str(out), "--iterations", "8", "--crop-px", "128", "--batch", "2", "--threads", "1",
            "--progress-json"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if '"iteration 2 of 8' in line:
            proc.send_signal(signal.SIGTERM)
            break
    proc.stdout.read()
    assert proc.wait(timeout=120) == 2
    stopped = [ln for ln in proc.stderr.read().splitlines() if ln.startswith("error")]
    assert len(stopped) == 1 and "run it again to continue from there" in stopped[0]
    at = int(stopped[0].split("cancelled at iteration ")[1].split(" ")[0])
    assert (checkpoint_dir_for(out) / "latest.pt").is_file() and not out.exists()
    run = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    messages = [json.loads(line).get("message", "") for line in run.stdout.splitlines() if line.startswith("{")]
    assert f"continuing at iteration {at + 1} of 8" in messages
    assert out.is_file() and not checkpoint_dir_for(out).exists()
