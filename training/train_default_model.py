"""Train the bundled default model ``resources/models/tcd_default.onnx`` from scratch on CPU.

    nice -n 19 .venv/bin/python -m training.train_default_model            # everything, as shipped

Every choice (recipe, checkpoint iteration, crown thresholds, test-time flips) is
made by leave-one-image-out (LOIO) validation: for a recipe, one model is trained
on the whole YELL image and scored on the whole OSBS image, another the reverse
(``loio``, the two folds run side by side, one thread each); ``select`` picks the
iteration by the mean of the two held-out sites' F1 (fixed probe thresholds),
then the thresholds and the number of test-time flips by the same mean over a
grid. ``final`` trains the chosen recipe on both whole images and exports the
snapshot at the chosen iteration with the chosen thresholds. Subcommands:

    loio   --recipe NAME [--resume]     train both folds of a recipe, then select
    fold   --recipe NAME --fold FOLD    train one fold (what loio runs)
    select --recipe NAME                choose iteration, thresholds, flips; export the fold models
    final  --recipe NAME [--resume]     train on both images, export tcd_default.onnx
    table                               the LOIO table of every recipe that has a choice

Runs live in ``training/runs/<recipe>/<fold or final>/`` (log.txt, latest.pt for
``--resume``, an EMA snapshot every ``--val-every`` iterations, history.json).
Everything is seeded; a resumed run continues the same random streams.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from engine.evaluate import DEFAULT_IOU_THRESH, Scores, label_boxes, score_boxes
from engine.postprocess.crowns import block_mean, delineate_crowns
from training import data
from training.augment import Recipe, Sampler
from training.net import CrownNet, ExportWrapper

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "training" / "runs"
FOLDS_DIR = REPO / "training" / "folds"
GSD_M = 0.1
SEED = 20240611
# Crowns are split on the network's native 1/4 grid, as the engine does for a model whose
# metadata gives crown_stride_px (engine/models/kinds/canopy_centres.py): every score here
# and every threshold choice goes through that same path (split_crowns).
CROWN_STRIDE_PX = data.OUTPUT_STRIDE

STRONG = dict(shadows=True, mosaic_p=0.2, surfaces_p=0.35, negative_scene_p=0.06, photometric="strong",
              snag_boost=2.0, scale_range=(0.5, 1.8), paste_overlap=0.3)
RECIPES = {
    # v3's augmentation (crown pasting, mild colour), v3's network.
    "baseline": Recipe("baseline"),
    # + hard negatives, closed-canopy mosaics with cast shadows, strong photometry, wider scale jitter.
    "aug": Recipe("aug", **STRONG),
    # the same, wider network.
    "aug-wide": Recipe("aug-wide", widths=(48, 96, 144, 192), **STRONG),
}
# Self-training variants: the recipe's own fold/final models label SOAP_031 (teacher), a new
# model learns from the labelled image(s) plus those pseudo-labels.
for _base in list(RECIPES):
    _r = RECIPES[_base]
    RECIPES[f"{_base}+st"] = Recipe(**{**_r.__dict__, "name": f"{_base}+st", "selftrain": True})

# Splitting parameters used while choosing the iteration, before the final search.
PROBE_PARAMS = {"seg_thresh": 0.5, "centre_thresh": 0.2, "peak_min_distance_m": 1.5, "min_crown_area_m2": 3.0}
SEARCH_GRID = {
    "seg_thresh": (0.25, 0.35, 0.45, 0.55, 0.65),
    "centre_thresh": (0.05, 0.1, 0.2, 0.3, 0.4),
    "peak_min_distance_m": (1.0, 1.5, 2.0, 3.0),
    "min_crown_area_m2": (1.0, 2.0, 3.0, 5.0, 8.0),
}
FLIP_CHOICES = (1, 2, 4)
# More flips must buy at least this much mean F1 to be worth their cost (2x, 4x model time).
FLIP_MIN_GAIN = 0.01


# --------------------------------------------------------------------------- model helpers


def focal_centre_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss: peaks (target == 1) are positives, Gaussians soften negatives."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = (target >= 1.0).float()
    pos_loss = -torch.log(p) * (1 - p) ** 2 * pos
    neg_loss = -torch.log(1 - p) * p**2 * (1 - target) ** 4 * (1 - pos)
    return ((pos_loss + neg_loss) * weight).sum() / (pos * weight).sum().clamp(min=1.0)


def canopy_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (bce * weight).sum() / weight.sum().clamp(min=1.0)


def predict_probs(net: CrownNet, image: np.ndarray, mean, std, flips: int = 1) -> np.ndarray:
    """(2, H, W) probabilities of an (H, W, 3) uint8 image, as the exported model computes them."""
    x = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None] / 255.0
    x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    was_training = net.training
    net.eval()
    with torch.no_grad():
        probs = ExportWrapper(net, flips)(x)[0].numpy()
    net.train(was_training)
    return probs


def split_crowns(probs: np.ndarray, params: dict, stride: int = CROWN_STRIDE_PX) -> np.ndarray:
    """Crown labels on the grid ``stride`` times coarser than ``probs``: the engine's split.

    The same calls as ``CanopyCentres.instances``: block means of the (bilinearly
    upsampled) maps give back the network's native grid, split there at ``gsd_m * stride``.
    """
    canopy, centres = probs[0], probs[1]
    if stride > 1:
        canopy, centres = block_mean(canopy, stride), block_mean(centres, stride)
    return delineate_crowns(canopy, centres, gsd_m=GSD_M * stride, **params)


def coarse_boxes(labels: np.ndarray, stride: int, shape: tuple[int, int]) -> np.ndarray:
    """Pixel boxes (image resolution) of coarse labels, clipped to the image (edge blocks overhang)."""
    boxes = label_boxes(labels) * stride
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, shape[1])
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, shape[0])
    return boxes


def crowns_boxes(probs: np.ndarray, params: dict, stride: int = CROWN_STRIDE_PX) -> np.ndarray:
    return coarse_boxes(split_crowns(probs, params, stride), stride, probs.shape[1:])


def boxes_by_min_area(probs: np.ndarray, params: dict, areas, stride: int = CROWN_STRIDE_PX) -> dict[float, np.ndarray]:
    """Crown boxes for each minimum crown area, from one delineation.

    ``delineate_crowns`` drops crowns under ``min_crown_area_m2`` as its last step
    (before renumbering), so delineating once with no minimum and filtering by pixel
    count gives exactly its result for every minimum, at the cost of one delineation.
    """
    labels = split_crowns(probs, {**params, "min_crown_area_m2": 0.0}, stride)
    counts = np.bincount(labels.ravel())
    boxes = coarse_boxes(labels, stride, probs.shape[1:])  # label order: 1..n
    out = {}
    for area in areas:
        min_px = area / (GSD_M * stride) ** 2
        keep = counts[1:] >= min_px if min_px > 1 else np.ones(len(counts) - 1, bool)
        out[area] = boxes[keep[: len(boxes)]] if len(boxes) else boxes
    return out


def export_onnx(net: CrownNet, path: Path, metadata: dict, flips: int = 1) -> None:
    net.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    torch.onnx.export(
        ExportWrapper(net, flips), (torch.zeros(1, 3, 256, 256),), str(tmp), dynamo=False, opset_version=17,
        input_names=["image"], output_names=["probs"],
        dynamic_axes={"image": {2: "height", 3: "width"}, "probs": {2: "height", 3: "width"}},
    )
    model = onnx.load(str(tmp))
    # onnxruntime 1.16 reads IR version 9 at most; the opset-17 graph needs nothing newer than 8.
    model.ir_version = min(model.ir_version, 8)
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    tmp.unlink()


class Ema:
    """Exponential moving average of the weights and BatchNorm statistics (the evaluated model).

    The decay warms up as ``min(decay, (1 + t) / (10 + t))`` at iteration t, so the
    average forgets the initial weights quickly: BatchNorm variances start at 1 and
    train down to ~0.01, and even a few percent of the initial value left in the
    average inflates them several times and flattens every output.
    """

    def __init__(self, net: torch.nn.Module, decay: float):
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in net.state_dict().items()}

    def update(self, net: torch.nn.Module, iteration: int) -> None:
        decay = min(self.decay, (1 + iteration) / (10 + iteration))
        with torch.no_grad():
            for k, v in net.state_dict().items():
                if v.dtype.is_floating_point:
                    self.state[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
                else:
                    self.state[k].copy_(v)


# --------------------------------------------------------------------------- one training run


def run_dir(recipe: str, part: str) -> Path:
    return RUNS / recipe / part


def train_images(part: str) -> tuple[tuple[str, ...], str | None]:
    return (data.FINAL_IMAGES, None) if part == "final" else data.FOLDS[part]


def pseudo_region(recipe: Recipe, part: str, data_dir: Path, say) -> data.Region:
    """SOAP_031 labelled by the teacher: the same part (fold or final) of the recipe without self-training.

    Crowns are the teacher's delineated crowns (its chosen thresholds, its test-time flips);
    pixels where its canopy probability is between 0.3 and 0.7, and crowns whose centre
    peak is under 0.5, get loss weight 0 (ignored) instead of a guess.
    """
    net, mean, std, choice, teacher_dir = teacher_snapshot(recipe, part, full=True)
    image = data.load_image(data_dir / f"{data.SOAP}.png")
    probs = predict_probs(net, image, mean, std, choice["flips"])
    labels = delineate_crowns(probs[0], probs[1], gsd_m=GSD_M, **choice["params"])
    boxes = label_boxes(labels)
    weight = np.ones(labels.shape, np.float32)
    weight[(probs[0] > 0.3) & (probs[0] < 0.7)] = 0.0
    keep = []
    for i, box in enumerate(boxes, start=1):
        peak = float(probs[1][labels == i].max())
        if peak >= 0.5:
            keep.append(box)
        else:
            weight[labels == i] = 0.0
    say(f"pseudo-labels on {data.SOAP} from {teacher_dir} it {choice['iteration']}: "
        f"{len(keep)} confident crowns of {len(boxes)}, {100 * (weight == 0).mean():.0f} % of pixels ignored")
    return data.Region(f"{data.SOAP}-pseudo", image, np.asarray(keep, np.float64).reshape(-1, 4), weight)


def iterations_of(recipe: Recipe, args) -> int:
    return args.st_iterations if recipe.selftrain else args.iterations


def teacher_snapshot(recipe: Recipe, part: str, full: bool = False):
    """The teacher of a self-training recipe's part: the same part of the base recipe, at its LOIO-chosen iteration."""
    base = recipe.name.removesuffix("+st")
    choice = json.loads((RUNS / base / "choice.json").read_text())
    directory = run_dir(base, part)
    net, mean, std = load_snapshot(directory, choice["iteration"])
    return (net, mean, std, choice, directory) if full else (net, mean, std)


def load_snapshot(directory: Path, iteration: int):
    snap = torch.load(directory / f"snap_{iteration:05d}.pt")
    net = CrownNet(tuple(snap["widths"]))
    net.load_state_dict(snap["ema"])
    net.eval()
    return net, snap["mean"], snap["std"]


def train(recipe: Recipe, part: str, args, stop_at: int | None = None) -> Path:
    """Train one part (a LOIO fold or the final model) of a recipe; resumable. Returns its run folder.

    ``stop_at`` ends the run at that iteration of the same schedule (the learning rate still
    follows the full run's one-cycle curve), so the final model stops where LOIO chose to.
    """
    directory = run_dir(recipe.name, part)
    if (directory / "done.json").is_file():
        return directory
    latest = directory / "latest.pt"
    if latest.is_file() and not args.resume:
        raise SystemExit(f"{directory} holds an unfinished run: add --resume to continue it.")
    directory.mkdir(parents=True, exist_ok=True)
    started = time.time()
    torch.set_num_threads(args.threads)

    def say(text: str) -> None:
        line = f"[{datetime.datetime.now():%H:%M:%S} {time.time() - started:6.0f} s] {text}"
        print(f"{recipe.name}/{part} {line}", flush=True)
        with open(directory / "log.txt", "a") as log:
            log.write(line + "\n")

    data.fetch_data(args.data_dir)
    annotated = data.load_annotated(args.data_dir)
    names, heldout = train_images(part)
    regions = data.whole(annotated, names)
    weights = [data.IMAGE_WEIGHTS[n] for n in names]
    soap = data.load_image(args.data_dir / f"{data.SOAP}.png")
    mean, std = data.normalisation_stats([r.image for r in regions] + [soap])
    if recipe.selftrain:
        regions.append(pseudo_region(recipe, part, args.data_dir, say))
        weights = [w * 0.75 / sum(weights) for w in weights] + [0.25]
    seed = args.seed + (0 if part == "final" else 1 + sorted(data.FOLDS).index(part))
    torch.manual_seed(seed)
    sampler = Sampler(regions, args.crop_px, seed, weights, recipe)
    net = CrownNet(recipe.widths)
    iterations, lr = iterations_of(recipe, args), args.lr
    if recipe.selftrain:
        # The student starts from the teacher (its chosen EMA snapshot) and fine-tunes at a third
        # of the learning rate: far cheaper than from scratch, and iteration 0 *is* the teacher.
        teacher_net, _, _ = teacher_snapshot(recipe, part)
        net.load_state_dict(teacher_net.state_dict())
        lr = args.lr / 3
    optimiser = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=iterations,
                                                   pct_start=0.1 if recipe.selftrain else 0.05)
    ema = Ema(net, args.ema)
    history, first, running, ema_reset_at = [], 1, 0.0, 0
    if latest.is_file():
        state = torch.load(latest, weights_only=False)
        net.load_state_dict(state["net"])
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
        sampler.rng.bit_generator.state = state["sampler_rng"]
        torch.set_rng_state(state["torch_rng"])
        history, first, running = state["history"], state["iteration"] + 1, state["running"]
        ema_reset_at = state.get("ema_reset_at", 0)
        if state.get("ema_warmup") and not args.restart_average:
            ema.state = state["ema"]
        else:
            # A checkpoint of the first runs, whose average had no warm-up (see Ema) and was
            # useless: restart the average from the current weights; the weights' own
            # trajectory is unaffected (the average never feeds back into training), and
            # snapshots up to here are not candidates for the LOIO choice.
            ema, ema_reset_at = Ema(net, args.ema), state["iteration"]
            say(f"average restarted from the weights of iteration {ema_reset_at}")
        say(f"resumed at iteration {first}")
    else:
        say(f"recipe {recipe}")
        say(f"train {[(r.name, len(r.boxes)) for r in regions]} weights {weights}; held out {heldout}; "
            f"mean {mean} std {std}; seed {seed}")
    truth = None
    if heldout:
        truth = annotated[heldout]
    last = min(iterations, stop_at or iterations)
    for it in range(first, last + 1):
        x, y, w = sampler.batch(args.batch, mean, std)
        logits = net(x)
        loss = canopy_loss(logits[:, 0], y[:, 0], w) + focal_centre_loss(logits[:, 1], y[:, 1], w)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        ema.update(net, it)
        running = 0.98 * running + 0.02 * loss.item() if it > 1 else loss.item()
        if it % args.val_every == 0 or it == last:
            entry = {"iteration": it, "loss": round(running, 4), "minutes": round((time.time() - started) / 60, 1)}
            snap = {"ema": ema.state, "widths": list(recipe.widths), "mean": mean, "std": std, "iteration": it}
            torch.save(snap, directory / f"snap_{it:05d}.pt")
            if truth is not None:
                eval_net = CrownNet(recipe.widths)
                eval_net.load_state_dict(ema.state)
                probs = predict_probs(eval_net, truth[0], mean, std)
                scores = score_boxes(crowns_boxes(probs, PROBE_PARAMS), truth[1], DEFAULT_IOU_THRESH)
                entry.update(f1=round(scores.f1, 4), precision=round(scores.precision, 4),
                             recall=round(scores.recall, 4))
                say(f"it {it}  loss {running:.4f}  held-out {heldout} (probe) {scores.summary()}")
            else:
                say(f"it {it}  loss {running:.4f}")
            history.append(entry)
            torch.save({"net": net.state_dict(), "optimiser": optimiser.state_dict(),
                        "schedule": schedule.state_dict(), "ema": ema.state,
                        "sampler_rng": sampler.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                        "history": history, "iteration": it, "running": running, "ema_warmup": True,
                        "ema_reset_at": ema_reset_at}, latest.with_suffix(".tmp"))
            os.replace(latest.with_suffix(".tmp"), latest)
            (directory / "history.json").write_text(json.dumps(history, indent=1))
    (directory / "done.json").write_text(json.dumps({
        "recipe": recipe.name, "part": part, "train": list(names), "heldout": heldout, "seed": seed,
        "iterations": iterations, "stopped_at": last, "lr_max": lr, "batch": args.batch, "crop_px": args.crop_px,
        "mean": mean, "std": std, "ema_reset_at": ema_reset_at, "history": history}, indent=1))
    say("done")
    return directory


# --------------------------------------------------------------------------- LOIO selection


def mean_f1(scores: list[Scores]) -> float:
    return sum(s.f1 for s in scores) / len(scores)


def search(probs_by_site: list[np.ndarray], truths: list[np.ndarray]) -> tuple[dict, list[Scores]]:
    """Thresholds maximising the mean of the sites' F1 over :data:`SEARCH_GRID`."""
    best = None
    keys = ("seg_thresh", "centre_thresh", "peak_min_distance_m")
    areas = SEARCH_GRID["min_crown_area_m2"]
    for values in itertools.product(*(SEARCH_GRID[k] for k in keys)):
        params = dict(zip(keys, values))
        per_site = [boxes_by_min_area(p, params, areas) for p in probs_by_site]
        for area in areas:
            scores = [score_boxes(b[area], t, DEFAULT_IOU_THRESH) for b, t in zip(per_site, truths)]
            if best is None or mean_f1(scores) > mean_f1(best[1]) + 1e-9:
                best = ({**params, "min_crown_area_m2": area}, scores)
    return best


def scores_json(scores: Scores) -> dict:
    return {"precision": round(scores.precision, 4), "recall": round(scores.recall, 4), "f1": round(scores.f1, 4),
            "tp": scores.tp, "fp": scores.fp, "fn": scores.fn}


def select(recipe: Recipe, args) -> dict:
    """Choose iteration, thresholds and flips of a recipe by the LOIO mean F1; export its fold models.

    Every snapshot both folds have (after any restart of the weight average) gets the full
    threshold search with one pass; the iteration with the best mean F1 wins (ties: the later).
    At that iteration the search is repeated with 2 and 4 test-time flips, which are kept only
    if they gain :data:`FLIP_MIN_GAIN`. Crowns are split as the engine splits them
    (:func:`split_crowns`, ``crown_stride_px`` :data:`CROWN_STRIDE_PX`).
    """
    annotated = data.load_annotated(args.data_dir)
    folds = sorted(data.FOLDS)
    done = [json.loads((run_dir(recipe.name, f) / "done.json").read_text()) for f in folds]
    eligible = None
    for run in done:
        its = {e["iteration"] for e in run["history"] if e["iteration"] > run.get("ema_reset_at", 0)}
        eligible = its if eligible is None else eligible & its
    truths = [annotated[data.FOLDS[f][1]][1] for f in folds]
    images = [annotated[data.FOLDS[f][1]][0] for f in folds]
    by_iteration = {}
    for it in sorted(eligible):
        nets = [load_snapshot(run_dir(recipe.name, f), it) for f in folds]
        probs = [predict_probs(net, image, mean, std, 1) for (net, mean, std), image in zip(nets, images)]
        params, scores = search(probs, truths)
        by_iteration[it] = (params, scores)
        print(f"{recipe.name}: it {it}, 1 flip: mean F1 {mean_f1(scores):.4f} "
              f"({', '.join(f'{s.f1:.3f}' for s in scores)}) {params}", flush=True)
    # Ties go to the later iteration (the one the schedule ends on).
    iteration = max(by_iteration, key=lambda it: (round(mean_f1(by_iteration[it][1]), 4), it))
    nets = [load_snapshot(run_dir(recipe.name, f), iteration) for f in folds]
    by_flips = {1: by_iteration[iteration]}
    for flips in FLIP_CHOICES[1:]:
        probs = [predict_probs(net, image, mean, std, flips) for (net, mean, std), image in zip(nets, images)]
        by_flips[flips] = search(probs, truths)
        print(f"{recipe.name}: it {iteration}, {flips} flips: mean F1 {mean_f1(by_flips[flips][1]):.4f} "
              f"{by_flips[flips][0]}", flush=True)
    flips = 1
    for more in FLIP_CHOICES[1:]:
        if mean_f1(by_flips[more][1]) >= mean_f1(by_flips[flips][1]) + FLIP_MIN_GAIN:
            flips = more
    params, scores = by_flips[flips]
    choice = {
        "recipe": recipe.name, "iteration": iteration, "flips": flips, "params": params,
        "crown_stride_px": CROWN_STRIDE_PX,
        "loio_mean_f1": round(mean_f1(scores), 4),
        "loio": {data.FOLDS[f][1]: scores_json(s) for f, s in zip(folds, scores)},
        "by_flips": {str(k): {"mean_f1": round(mean_f1(v[1]), 4), "params": v[0],
                              "per_site": {data.FOLDS[f][1]: scores_json(s) for f, s in zip(folds, v[1])}}
                     for k, v in by_flips.items()},
        "by_iteration": {str(k): {"mean_f1": round(mean_f1(v[1]), 4), "params": v[0],
                                  "f1": {data.FOLDS[f][1]: round(s.f1, 4) for f, s in zip(folds, v[1])}}
                         for k, v in sorted(by_iteration.items())},
        "iterations": iterations_of(recipe, args),
    }
    (RUNS / recipe.name / "choice.json").write_text(json.dumps(choice, indent=1))
    hashes = data.fetch_data(args.data_dir)
    for fold, (net, mean, std), s in zip(folds, nets, scores):
        names, heldout = data.FOLDS[fold]
        meta = model_metadata(recipe, mean, std, params, hashes, {
            "loio_fold": fold, "train_images": list(names), "heldout_image": heldout,
            "heldout_scores": scores_json(s), "iteration": iteration, "flips": flips,
            "command": f"python -m training.train_default_model select --recipe {recipe.name}"})
        export_onnx(net, run_dir(recipe.name, fold) / f"{fold}.onnx", meta, flips)
    print(json.dumps(choice, indent=1), flush=True)
    return choice


def model_metadata(recipe: Recipe, mean, std, params, hashes, provenance: dict) -> dict:
    return {
        "name": "TCD default (CrownNet, NEON 0.1 m)",
        "description": (
            "Tree canopy probability and crown-centre heatmap for 0.1 m RGB aerial imagery; crowns are split "
            "by marker-controlled watershed. Trained from scratch on two small NEON sample images (an open "
            "conifer stand in Yellowstone, a Florida pine plot) with synthetic closed canopy and hard "
            "negatives: a starting point, not a substitute for a model trained on your forest."
        ),
        "output_kind": "canopy_centres",
        "class_names": ["tree"],
        "gsd_m": GSD_M,
        "tile_size_px": 1024,
        "overlap_px": 128,
        "bands": [1, 2, 3],
        "scale": 1 / 255,
        "mean": mean,
        "std": std,
        "output_activation": "none",
        **{k: float(v) for k, v in params.items()},
        "crown_stride_px": CROWN_STRIDE_PX,
        "license": "MIT",
        "provenance": {
            "data": f"DeepForest {data.DEEPFOREST_VERSION} sample data (MIT, weecology/DeepForest), "
                    "NEON AOP RGB orthophotos",
            "files_sha256": hashes,
            "recipe": recipe.__dict__ | {"widths": list(recipe.widths), "scale_range": list(recipe.scale_range)},
            "script": "training/train_default_model.py",
            "seed": SEED,
            "torch": torch.__version__,
            "date": datetime.date.today().isoformat(),
            **provenance,
        },
    }


def final(recipe: Recipe, args) -> None:
    choice = json.loads((RUNS / recipe.name / "choice.json").read_text())
    if choice["iterations"] != iterations_of(recipe, args):
        raise SystemExit(f"LOIO chose iteration {choice['iteration']} of {choice['iterations']}-iteration runs; "
                         "train the final model with as many iterations.")
    directory = train(recipe, "final", args, stop_at=choice["iteration"])
    net, mean, std = load_snapshot(directory, choice["iteration"])
    hashes = data.fetch_data(args.data_dir)
    annotated = data.load_annotated(args.data_dir)
    fit = {}
    for name in data.FINAL_IMAGES:  # training images: a fit, not a validation
        probs = predict_probs(net, annotated[name][0], mean, std, choice["flips"])
        fit[name] = scores_json(score_boxes(crowns_boxes(probs, choice["params"]), annotated[name][1]))
    meta = model_metadata(recipe, mean, std, choice["params"], hashes, {
        "train_images": list(data.FINAL_IMAGES) + ([f"{data.SOAP} (pseudo-labels)"] if recipe.selftrain else []),
        "iteration": choice["iteration"], "iterations": iterations_of(recipe, args), "flips": choice["flips"],
        "loio": {"iou": DEFAULT_IOU_THRESH, "mean_f1": choice["loio_mean_f1"], "per_site": choice["loio"],
                 "note": "each site scored by a model trained on the other image with this recipe; "
                         "these scores chose the recipe, iteration, thresholds and flips"},
        "training_fit": fit,
        "command": "python -m training.train_default_model" + (f" final --recipe {recipe.name}"
                                                                if args.command == "final" else ""),
    })
    export_onnx(net, args.out, meta, choice["flips"])
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB); training fit {fit}", flush=True)
    if args.out.resolve() == (REPO / "resources" / "models" / "tcd_default.onnx").resolve():
        write_folds(recipe, choice)


def write_folds(recipe: Recipe, choice: dict) -> None:
    """Copy the recipe's fold models to training/folds/ with the manifest ``python -m engine evaluate --loio`` reads."""
    FOLDS_DIR.mkdir(exist_ok=True)
    folds = []
    for fold in sorted(data.FOLDS):
        names, heldout = data.FOLDS[fold]
        shutil.copy(run_dir(recipe.name, fold) / f"{fold}.onnx", FOLDS_DIR / f"{fold}.onnx")
        folds.append({"name": fold, "model": f"{fold}.onnx", "image": f"{heldout}.png",
                      "truth": data.TRUTH_FILES[heldout], "train": list(names)})
    manifest = {
        "description": "Leave-one-image-out fold models of the bundled default model's recipe: each was trained "
                       "on one DeepForest sample image and is scored on the other. Run: python -m engine evaluate "
                       "--loio",
        "recipe": recipe.name, "iteration": choice["iteration"], "flips": choice["flips"],
        "params": choice["params"], "gsd_m": GSD_M, "fetch": "training.data:fetch_data",
        "mean_f1": choice["loio_mean_f1"], "per_image": choice["loio"], "folds": folds,
    }
    (FOLDS_DIR / "folds.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"copied the LOIO fold models to {FOLDS_DIR}", flush=True)


def table() -> None:
    print("| recipe | iteration | flips | OSBS F1 (P/R) | YELL F1 (P/R) | LOIO mean F1 |")
    print("|---|---|---|---|---|---|")
    for path in sorted(RUNS.glob("*/choice.json")):
        c = json.loads(path.read_text())
        o, y = c["loio"][data.OSBS], c["loio"][data.YELL]
        print(f"| {c['recipe']} | {c['iteration']} | {c['flips']} | {o['f1']:.3f} ({o['precision']:.2f}/"
              f"{o['recall']:.2f}) | {y['f1']:.3f} ({y['precision']:.2f}/{y['recall']:.2f}) | "
              f"**{c['loio_mean_f1']:.3f}** |")


def main() -> int:
    global RUNS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="all",
                        choices=("all", "loio", "fold", "select", "final", "table"))
    parser.add_argument("--recipe", default="aug", choices=sorted(RECIPES))
    parser.add_argument("--fold", choices=sorted(data.FOLDS))
    parser.add_argument("--resume", action="store_true", help="continue unfinished runs from their latest.pt")
    parser.add_argument("--restart-average", action="store_true",
                        help="with --resume: restart the weight average from the resumed weights")
    parser.add_argument("--data-dir", type=Path, default=data.DEFAULT_DATA_DIR)
    parser.add_argument("--runs-dir", type=Path, default=REPO / "training" / "runs")
    parser.add_argument("--out", type=Path, default=REPO / "resources" / "models" / "tcd_default.onnx")
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--st-iterations", type=int, default=500,
                        help="fine-tuning iterations of a self-training (+st) student")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crop-px", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--ema", type=float, default=0.998)
    parser.add_argument("--val-every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    recipe = RECIPES[args.recipe]
    RUNS = args.runs_dir.resolve()

    if args.command == "table":
        table()
        return 0
    if args.command == "fold":
        train(recipe, args.fold, args)
        return 0
    if args.command in ("loio", "all"):
        if recipe.selftrain and not (RUNS / recipe.name.removesuffix("+st") / "choice.json").is_file():
            raise SystemExit(f"{recipe.name} needs the LOIO choice of {recipe.name.removesuffix('+st')} first.")
        passed = [a for a in sys.argv[1:] if a not in ("loio", "all")]
        children = [subprocess.Popen([sys.executable, "-m", "training.train_default_model", "fold",
                                      "--fold", fold, "--threads", "1", *passed], cwd=REPO,
                                     env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
                    for fold in sorted(data.FOLDS)]
        if any(child.wait() for child in children):
            return 1
        torch.set_num_threads(2)
        select(recipe, args)
    if args.command == "select":
        torch.set_num_threads(2)
        select(recipe, args)
    if args.command in ("final", "all"):
        if recipe.selftrain and not (RUNS / recipe.name.removesuffix("+st") / "final" / "done.json").is_file():
            # The teacher of the final student is the final model of the recipe without self-training.
            teacher = argparse.Namespace(**{**vars(args), "recipe": recipe.name.removesuffix("+st")})
            train(RECIPES[teacher.recipe], "final", teacher)
        args.threads = max(args.threads, 2)
        final(recipe, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
