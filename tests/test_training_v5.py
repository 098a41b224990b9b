"""v5 training: checked data, targets, real training steps, resume, and the exported model through the engine.

Small and CPU-only: 64 px crops, a handful of NEON plots, a few iterations.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite_pytorch")

from training.v5 import data  # noqa: E402
from training.v5.augment import AugmentSettings, Sampler, render_targets  # noqa: E402

PLOTS = data.DEFAULT_PLOTS_DIR
needs_plots = pytest.mark.skipif(not (PLOTS / "SOURCES.tsv").is_file(), reason="NEON plots folder not present")
# Two plots of each of two sites: enough for a fold (train on one site, score the other).
SMALL = ("TEAK_TEAK_043", "TEAK_TEAK_044", "SJER_SJER_002", "SJER_SJER_003")


def small_plots_dir(tmp_path: Path, names=SMALL) -> Path:
    """A plots folder holding only ``names`` (their TIF and XML) and their SOURCES.tsv rows."""
    out = tmp_path / "plots"
    (out / "images").mkdir(parents=True)
    rows = data.read_sources(PLOTS)
    keep = [r for r in rows if r["file"].rsplit(".", 1)[0] in names]
    assert len(keep) == 2 * len(names), [r["file"] for r in keep]
    with open(out / "SOURCES.tsv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(keep)
    for r in keep:
        shutil.copy(PLOTS / "images" / r["file"], out / "images" / r["file"])
    return out


@needs_plots
def test_plots_load_with_their_pinned_hashes(tmp_path):
    images = data.load_plots(small_plots_dir(tmp_path))
    assert sorted(i.name for i in images) == sorted(SMALL)
    assert all(i.rgb.shape == (400, 400, 3) and i.rgb.dtype == np.uint8 and len(i.boxes) for i in images)
    again = data.load_plots(small_plots_dir(tmp_path / "b"))
    assert data.fingerprint(images) == data.fingerprint(again)
    assert data.fingerprint(images) != data.fingerprint(images[:-1])


@needs_plots
def test_a_changed_byte_refuses_to_train(tmp_path):
    plots = small_plots_dir(tmp_path)
    tif = plots / "images" / f"{SMALL[0]}.tif"
    raw = bytearray(tif.read_bytes())
    raw[-1] ^= 1
    tif.write_bytes(bytes(raw))
    with pytest.raises(data.DataError, match="SHA-256"):
        data.load_plots(plots)


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@needs_plots
def test_online_fetch_checks_each_file(tmp_path, monkeypatch):
    """--online fetches RAW_URL/COMMIT/PATH; the right bytes load, other bytes are refused."""
    plots = small_plots_dir(tmp_path, SMALL[:1])
    served = tmp_path / "served"
    for r in data.read_sources(plots):
        target = served / r["source_commit"] / r["source_path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(plots / "images" / r["file"], target)
    shutil.rmtree(plots / "images")  # online must not need the local copies
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(data, "RAW_URL", f"http://127.0.0.1:{server.server_port}/{{commit}}/{{path}}")
        images = data.load_plots(plots, online=True, cache_dir=tmp_path / "cache")
        assert [i.name for i in images] == [SMALL[0]]
        xml = next(served.rglob("*.xml"))
        xml.write_bytes(xml.read_bytes().replace(b"<xmin>", b"<xmin>1"))
        with pytest.raises(data.DataError, match="SHA-256"):
            data.load_plots(plots, online=True, cache_dir=tmp_path / "cache2")
    finally:
        server.shutdown()


def test_truth_csv_columns_are_read_by_name():
    raw = b"image_path,xmin,xmax,ymin,ymax,label\na.tif,1,82,103,235,0\n"
    assert data.csv_boxes(raw).tolist() == [[1.0, 103.0, 82.0, 235.0]]


def test_targets_carry_the_crown_size():
    t = render_targets(np.array([[100.0, 60.0, 160.0, 100.0]]), 256)
    i, j = np.unravel_index(np.argmax(t["centre"]), t["centre"].shape)
    assert (i, j) == (80 // 4, 130 // 4)
    assert t["centre"][i, j] == 1.0
    assert np.exp(t["size"][:, i, j]).round().tolist() == [60.0, 40.0]
    assert t["size_w"][i, j] == 1.0 and t["canopy"][i, j] == 1.0 and t["canopy"][0, 0] == 0.0


def test_identity_view_keeps_boxes_and_pixels():
    rgb = np.random.default_rng(0).integers(0, 255, (128, 128, 3), np.uint8)
    boxes = np.array([[40.0, 50.0, 70.0, 90.0]])
    im = data.Image("x", "TEAK", rgb, boxes, ("a", "b"))
    sampler = Sampler([im], 128, 0, AugmentSettings(scale_range=(1.0, 1.0), rotate_p=0.0, mosaic_p=0.0))
    for _ in range(8):
        view, valid, out = sampler._view(128)
        # Whatever quarter turn, flip and shift: the box keeps its size and covers the same pixels.
        w, h = out[0, 2] - out[0, 0], out[0, 3] - out[0, 1]
        assert sorted([round(w, 3), round(h, 3)]) == [30.0, 40.0]
        inside = valid[int(out[0, 1]) + 2:int(out[0, 3]) - 2, int(out[0, 0]) + 2:int(out[0, 2]) - 2]
        if inside.size and inside.all():
            got = np.sort(view[int(out[0, 1]) + 2:int(out[0, 3]) - 2, int(out[0, 0]) + 2:int(out[0, 2]) - 2]
                          .reshape(-1, 3).sum(1))
            patch = rgb[52:88, 42:68].astype(np.float32) / 255
            assert got.size == patch[:36 - 2 * 0, :26].reshape(-1, 3).shape[0]


def _args(tmp_path, plots, **kw):
    from training.v5 import train

    args = dict(runs_dir=tmp_path / "runs", plots_dir=plots, wheel_dir=tmp_path / "unused", online=False,
                out=tmp_path / "model.onnx", iterations=4, batch=2, crop_px=64, lr=1e-3, ema=0.9, val_every=2,
                ckpt_every=1, seed=train.SEED, threads=1, device="cpu", no_pretrained=False, resume=False,
                workers=0)
    args.update(kw)
    return argparse.Namespace(**args)


@needs_plots
def test_training_steps_and_resume_continue_the_same_sequence(tmp_path):
    from training.v5 import train

    torch.set_num_threads(1)
    images = data.load_plots(small_plots_dir(tmp_path))
    straight = train.train("SJER", _args(tmp_path / "a", None), images)
    done = json.loads((straight / "done.json").read_text())
    assert done["stopped_at"] == 4 and len(done["history"]) == 2
    assert "select_probe" in done["history"][0]
    a = torch.load(straight / "latest.pt", weights_only=False)

    # The same run killed after 2 iterations (stop there), then resumed to the end.
    first = train.train("SJER", _args(tmp_path / "b", None, iterations=4), images, stop_at=2)
    (first / "done.json").unlink()  # stop_at marks it done; a killed run has no done.json
    with pytest.raises(SystemExit, match="--resume"):
        train.train("SJER", _args(tmp_path / "b", None), images)
    resumed = train.train("SJER", _args(tmp_path / "b", None, resume=True), images)
    b = torch.load(resumed / "latest.pt", weights_only=False)
    assert b["iteration"] == 4
    changed = 0
    for k, v in a["net"].items():
        assert torch.equal(v, b["net"][k]), k
    first_snap = torch.load(straight / "snap_00002.pt", weights_only=False)["ema"]
    for k, v in a["ema"].items():
        changed += int(v.dtype.is_floating_point and not torch.equal(v, first_snap[k]))
    assert changed > 0  # training moved the weights


@needs_plots
def test_exported_model_runs_in_the_engine_as_in_training(tmp_path):
    """ONNX export loads in onnxruntime; `python -m engine predict` finds the boxes the training code finds."""
    import onnxruntime as ort
    import rasterio

    from engine.evaluate import iou_matrix
    from engine.models.spec import describe_model
    from engine.postprocess.crowns import block_mean
    from tests.rasters import read_crowns
    from training.v5 import train
    from training.v5.net import CrownNetV5, ExportV5
    from training.v5.stability import crowns_of, stability

    torch.manual_seed(0)
    net = CrownNetV5().eval()
    params = {"conf": 0.05, "iou_thresh": 0.3, "min_area_m2": 1.0}
    path = tmp_path / "v5.onnx"
    train.export_onnx(net, path, train.metadata(params, 1, {"data_fingerprint": "test"}))
    spec = describe_model(path)
    assert spec.output_kind == "centre_boxes" and spec.det_conf == 0.05 and spec.crown_stride_px == 4
    assert path.stat().st_size < 25e6

    raster = PLOTS / "images" / f"{SMALL[0]}.tif"
    rgb = data.read_rgb(raster.read_bytes())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = train.to_input(rgb[None].astype(np.float32) / 255).numpy()
    with torch.no_grad():
        want = ExportV5(net)(torch.from_numpy(x)).numpy()
    got = session.run(None, {"image": x})[0]
    assert got.shape == (1, 4, 400, 400)  # any input size, here one that is not a multiple of 32
    np.testing.assert_allclose(got, want, atol=2e-3)
    # What the engine feeds a 400 px image: mirrored out to 416 px.
    x = train.to_input(train.engine_padded(rgb)[None].astype(np.float32) / 255).numpy()
    got = session.run(None, {"image": x})[0][..., :400, :400]

    # The engine's kind decodes onnxruntime's maps exactly as training scores them.
    native = np.stack([block_mean(m, 4) for m in got[0, 1:4]])
    expected = train.boxes_of(native, **params)
    assert len(expected) > 0
    # The stability check finds the same crowns.
    meta = {k: json.loads(v) for k, v in spec.metadata.items()}
    centres = np.stack([(expected[:, 0] + expected[:, 2]) / 2, (expected[:, 1] + expected[:, 3]) / 2], 1)
    np.testing.assert_array_equal(crowns_of(session, meta, rgb), centres)
    shares = stability(path, [data.Image("plot", "TEAK", rgb, np.zeros((0, 4)), ())], shifts=(4,))
    assert set(shares) == {"shift 4 px", "JPEG 75"} and all(0 <= v <= 1 for v in shares.values())
    kind = spec.kind
    boxes, scores, classes = kind.select(spec, kind.decode(spec, {"maps": got}, (400, 400)))
    np.testing.assert_array_equal(boxes[:, :4], expected)
    assert (boxes[:, 4] == 0).all() and (classes == 0).all() and (np.diff(scores) <= 0).all()

    # And `python -m engine predict` runs it on a GeoTIFF. (Its tile gives the model other context at the
    # plot's edges than this whole-image pass, and an untrained centre map is nearly flat, so the boxes
    # themselves are compared above, not here.)
    proc = subprocess.run([sys.executable, "-m", "engine", "predict", str(raster), "--model", str(path), "--out",
                           str(tmp_path / "cache"), "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    crowns = read_crowns(tmp_path / "cache")
    assert len(crowns) > len(expected) / 2
    with rasterio.open(raster) as src:
        to_px = ~src.transform
    engine_boxes = np.array([[*(to_px * (c["box_xmin"], c["box_ymax"])), *(to_px * (c["box_xmax"], c["box_ymin"]))]
                             for c in crowns])
    centres = (engine_boxes[:, :2] + engine_boxes[:, 2:]) / 2
    assert ((centres > 0) & (centres < 400)).all()
    assert (iou_matrix(expected, engine_boxes).max(1) > 0.99).mean() > 0.3


def test_stability_counts_crowns_that_stay_put():
    from training.v5.stability import kept

    base = np.array([[50.0, 50.0], [100.0, 100.0], [150.0, 150.0], [5.0, 5.0]])
    moved = np.array([[52.0, 50.0], [100.0, 115.0], [150.0, 150.0]])
    # [5, 5] lies in the cut margin; [100, 100] moved 1.5 m.
    assert kept(base, moved, 10, (400, 400)) == (2, 3)
    assert kept(base, np.zeros((0, 2)), 10, (400, 400)) == (0, 3)


@needs_plots
def test_select_chooses_on_select_halves_and_reports_the_others(tmp_path):
    """Four tiny folds (two plots per 'site'), two iterations each, then the whole selection and export."""
    import dataclasses

    from engine.models.spec import describe_model
    from training.v5 import train

    torch.set_num_threads(1)
    plots = {i.name: i for i in data.load_plots(PLOTS)}
    teak = sorted(n for n in plots if n.startswith("TEAK_"))[:4]
    sjer = sorted(n for n in plots if n.startswith("SJER_SJER_"))[:4]
    sites = {"TEAK": teak[:2], "OSBS": teak[2:], "SJER": sjer[:2], "YELL": sjer[2:]}
    images = [dataclasses.replace(plots[n], site=site) for site, names in sites.items() for n in names]
    split = data.splits(images)
    assert all(sorted(split[n] for n in names) == ["report", "select"] for names in sites.values())

    args = _args(tmp_path, None, iterations=2, val_every=2)
    for site in data.SITES:
        train.train(site, args, images)
    choice = train.select(args, images)
    assert choice["iteration"] == 2 and choice["flips"] in (1, 2, 4)
    assert set(choice["select_per_site"]) == set(choice["report_per_site"]) == set(data.SITES)
    # Each report figure counts exactly the report half's crowns.
    for site, names in sites.items():
        report = next(n for n in names if split[n] == "report")
        s = choice["report_per_site"][site]
        assert s["tp"] + s["fn"] == len(plots[report].boxes)
    saved = json.loads((args.runs_dir / "choice.json").read_text())
    assert saved["params"] == choice["params"]
    spec = describe_model(args.runs_dir / "TEAK" / "fold-TEAK.onnx")
    assert spec.output_kind == "centre_boxes" and spec.det_conf == choice["params"]["conf"]


@needs_plots
def test_worker_batches_are_the_iterations_own(tmp_path):
    """Batches made by worker processes equal the per-iteration batches, and a resumed --workers run
    continues the same sequence."""
    from training.v5 import train
    from training.v5.augment import BatchPool

    torch.set_num_threads(1)
    images = data.load_plots(small_plots_dir(tmp_path))
    sampler = Sampler(images, 64, 7)
    pool = BatchPool(sampler, 2, 2, 3, 5)
    try:
        for it in (3, 4, 5):
            crops, targets = pool.get()
            want_crops, want_targets = Sampler(images, 64, 7).batch(2, it)
            np.testing.assert_array_equal(crops, want_crops)
            np.testing.assert_array_equal(targets["centre"], want_targets["centre"])
    finally:
        pool.close()
    assert not np.array_equal(Sampler(images, 64, 7).batch(2, 3)[0], Sampler(images, 64, 7).batch(2, 4)[0])

    straight = train.train("SJER", _args(tmp_path / "a", None, workers=2, val_every=4), images)
    first = train.train("SJER", _args(tmp_path / "b", None, workers=2, val_every=4), images, stop_at=2)
    (first / "done.json").unlink()
    resumed = train.train("SJER", _args(tmp_path / "b", None, workers=2, val_every=4, resume=True), images)
    a = torch.load(straight / "latest.pt", weights_only=False)["net"]
    b = torch.load(resumed / "latest.pt", weights_only=False)["net"]
    assert all(torch.equal(v, b[k]) for k, v in a.items())
