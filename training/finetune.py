"""Fine-tune a shipped model on a user's own crowns: hold a spatial part back, train on the rest, export ONNX.

What the user gives: an orthophoto, a reference layer of crown polygons or boxes
(any OGR format and CRS) and optionally the area where that reference is complete
(default: the reference's envelope). What happens:

1. **Read** (:func:`read_plot`): the area's window of the image, resampled to the
   model's ground sampling distance; reference crowns inside the area become boxes
   in that window's pixels (targets are drawn from boxes, as for the default model:
   ``training.data.render_targets``); pixels outside the area get loss weight 0.
2. **Hold back** (:func:`split_plot`): the last ``holdout`` share of the crowns along
   the window's longer axis (a strip, so neighbours of training crowns are not
   scored) is kept to score the model before and after, never trained on.
3. **Train** the base network (its weights from the base model's
   ``*.finetune.pt``, :mod:`training.architectures`) with the default model's
   losses and sampler (mild augmentation, BatchNorm statistics frozen: small
   batches of one forest would otherwise overwrite them), for about ``minutes`` of
   wall clock (or ``iterations``), with a cosine learning rate, an average of the
   weights, progress, cancel, and a checkpoint every ``checkpoint_every_s`` seconds:
   run the same command again after a kill or a cancel and it continues.
4. **Export** ONNX with the base model's metadata (so the engine runs it like the
   base) plus ``finetune``: the base model, the data's fingerprint, the scores on
   the held-back crowns before and after; a model that scores worse says so in its
   name. Its ``*.finetune.pt`` goes beside it, so it can be fine-tuned again.

The interface to the default model's training code is the import block below.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from engine.errors import CancelledError, InputError
from engine.evaluate import Scores, label_boxes, score_boxes
from engine.models.onnx_meta import read_onnx_metadata
from engine.postprocess.crowns import block_mean, delineate_crowns
from engine.reference import POINTS, VectorData, default_area, make_area, make_reference, read_vector, to_crs
from training import architectures

# The default model's training code, as fine-tuning uses it: regions and targets, the
# sampler and its recipe switches, the two losses, the weight average, the ONNX export.
from training.augment import Recipe, Sampler
from training.data import Region
from training.train_default_model import Ema, canopy_loss, export_onnx, focal_centre_loss, predict_probs

log = logging.getLogger(__name__)

MIN_CROWNS = 10  # crowns a fine-tune needs in the area, held-back ones included
MIN_HOLDOUT = 3
MAX_WINDOW_PX = 6000  # per side, at the model's gsd (600 m at 0.1 m)
RECIPE = Recipe("finetune", paste_p=0.0, scale_range=(0.8, 1.25), photometric="mild")


@dataclass(frozen=True)
class FinetuneSettings:
    """How long and how to train. ``iterations`` (when set) overrides ``minutes``."""

    minutes: float = 10.0
    iterations: int | None = None
    threads: int = 2
    batch: int = 8
    crop_px: int = 256
    lr: float = 1e-3
    holdout: float = 0.25
    ema: float = 0.99
    seed: int = 20261208
    checkpoint_every_s: float = 30.0
    # Choose the crown thresholds again for the tuned network, on the crowns it trained on
    # (never the held-back ones), as the default model's were chosen by a grid search.
    tune_thresholds: bool = True


THRESHOLD_GRID = {
    "seg_thresh": (0.25, 0.35, 0.45, 0.55),
    "centre_thresh": (0.05, 0.1, 0.2, 0.3),
    "peak_min_distance_m": (1.0, 1.5, 2.0, 3.0),
    "min_crown_area_m2": (1.0, 2.0, 3.0, 5.0),
}


@dataclass(frozen=True)
class Plot:
    """One image window: RGB uint8 (H, W, 3), crown boxes (N, 4) in its pixels, loss weight (H, W) or None."""

    name: str
    image: np.ndarray
    boxes: np.ndarray
    weight: np.ndarray | None = None


@dataclass(frozen=True)
class Split:
    """A plot cut in two along ``axis`` (0 rows, 1 columns) at ``cut_px``: train part and held-back boxes."""

    plot: Plot
    train: Region
    holdout_boxes: np.ndarray  # in the plot's pixels
    axis: int
    cut_px: int


@dataclass(frozen=True)
class FinetuneResult:
    out: Path
    before: Scores
    after: Scores
    iterations: int
    data_fingerprint: str

    @property
    def worse(self) -> bool:
        return self.after.f1 < self.before.f1


Progress = Callable[[float, str], None]


# --------------------------------------------------------------------------- base model


@dataclass(frozen=True)
class BaseModel:
    onnx_path: Path
    sidecar: Path
    metadata: dict  # the ONNX's metadata, values decoded from JSON

    @property
    def gsd_m(self) -> float:
        return float(self.metadata.get("gsd_m", 0.1))

    @property
    def stride(self) -> int:
        return int(self.metadata.get("crown_stride_px", 1))

    @property
    def params(self) -> dict:
        keys = ("seg_thresh", "centre_thresh", "peak_min_distance_m", "min_crown_area_m2")
        return {k: float(self.metadata[k]) for k in keys if k in self.metadata}


def base_model(onnx_path: Path) -> BaseModel:
    """A model fine-tuning can start from: an ONNX file with its ``*.finetune.pt`` beside it."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise InputError(f"The base model {onnx_path} does not exist.")
    sidecar = architectures.sidecar_path(onnx_path)
    if not sidecar.is_file():
        raise InputError(f"The model {onnx_path.name} cannot be fine-tuned: {sidecar.name} (its weights for "
                         "training) is not beside it.")
    metadata = {}
    for key, value in read_onnx_metadata(onnx_path).items():
        try:
            metadata[key] = json.loads(value)
        except ValueError:
            metadata[key] = value
    if metadata.get("output_kind") != "canopy_centres":
        raise InputError(f"Fine-tuning needs a canopy and crown-centre model; {onnx_path.name} is not one.")
    return BaseModel(onnx_path, sidecar, metadata)


# --------------------------------------------------------------------------- data


def read_plot(image: Path, reference: VectorData | str | Path, area: VectorData | str | Path | None,
              base: BaseModel) -> Plot:
    """The area's window of ``image`` at the model's gsd, with the reference crowns in it as pixel boxes."""
    import rasterio
    import shapely
    from rasterio.enums import Resampling
    from rasterio.features import rasterize
    from rasterio.transform import from_bounds
    from rasterio.windows import from_bounds as window_from_bounds

    image = Path(image)
    if not image.is_file():
        raise InputError(f"The image {image} does not exist.")
    try:
        dataset = rasterio.open(image)
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"The image {image.name} is not a raster GDAL can read.") from exc
    with dataset:
        if dataset.crs is None:
            raise InputError(f"The image {image.name} has no coordinate reference system; assign it one.")
        if dataset.crs.is_geographic:
            raise InputError(f"Fine-tuning needs an image in a projected CRS in metres; {image.name} is in degrees.")
        crs_wkt = dataset.crs.to_wkt()
        footprint = shapely.box(*dataset.bounds)
        ref_data = reference if isinstance(reference, VectorData) else read_vector(reference)
        ref = make_reference(to_crs(ref_data, crs_wkt), footprint, ref_data.name)
        if ref.kind == POINTS:
            raise InputError(f"Fine-tuning needs crown polygons or boxes; {ref.name} holds tree-top points, "
                             "which can only score crowns.")
        if area is None:
            area_crs = default_area(ref, footprint)
        else:
            area_data = area if isinstance(area, VectorData) else read_vector(area, "area")
            area_crs = make_area(to_crs(area_data, crs_wkt, "area"), footprint, area_data.name)
        x0, y0, x1, y1 = area_crs.bounds
        unit_m = dataset.crs.linear_units_factor[1] if dataset.crs.linear_units_factor else 1.0
        width_px = max(1, round((x1 - x0) * unit_m / base.gsd_m))
        height_px = max(1, round((y1 - y0) * unit_m / base.gsd_m))
        if max(width_px, height_px) > MAX_WINDOW_PX:
            raise InputError(f"The area is {width_px * base.gsd_m:.0f} × {height_px * base.gsd_m:.0f} m; fine-tune "
                             f"on an area at most {MAX_WINDOW_PX * base.gsd_m:.0f} m across.")
        bands = [int(b) for b in base.metadata.get("bands", [1, 2, 3])]
        if max(bands) > dataset.count:
            raise InputError(f"The model reads bands {bands}; {image.name} has {dataset.count}.")
        raw = dataset.read(bands, window=window_from_bounds(x0, y0, x1, y1, dataset.transform),
                           out_shape=(len(bands), height_px, width_px), resampling=Resampling.bilinear,
                           boundless=True, fill_value=0)
    scale = float(base.metadata.get("scale", 1 / 255))
    pixels = raw if raw.dtype == np.uint8 else np.clip(raw.astype(np.float64) * scale * 255, 0, 255)
    rgb = np.ascontiguousarray(np.moveaxis(pixels.astype(np.uint8), 0, -1))
    transform = from_bounds(x0, y0, x1, y1, width_px, height_px)
    inside = shapely.covered_by(shapely.point_on_surface(np.asarray(ref.geometries, object)), area_crs)
    boxes = []
    for geometry in np.asarray(ref.geometries, object)[inside]:
        bx0, by0, bx1, by1 = geometry.bounds
        col0, row0 = ~transform * (bx0, by1)
        col1, row1 = ~transform * (bx1, by0)
        boxes.append([col0, row0, col1, row1])
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width_px)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height_px)
    boxes = boxes[(boxes[:, 2] - boxes[:, 0] > 1) & (boxes[:, 3] - boxes[:, 1] > 1)]
    if len(boxes) < 2:
        raise InputError(f"The reference layer {ref.name} has {len(boxes)} crown in the area; fine-tuning needs "
                         f"at least {MIN_CROWNS}.")
    mask = rasterize([area_crs], out_shape=(height_px, width_px), transform=transform, fill=0,
                     default_value=1, dtype="uint8", all_touched=True)
    weight = None if mask.all() else mask.astype(np.float32)
    return Plot(f"{image.stem}", rgb, boxes, weight)


def split_plot(plot: Plot, holdout: float) -> Split:
    """Hold back the last ``holdout`` share of the crowns along the plot's longer axis (by crown centre)."""
    h, w = plot.image.shape[:2]
    axis = 1 if w >= h else 0
    centres = (plot.boxes[:, axis] + plot.boxes[:, axis + 2]) / 2
    order = np.sort(centres)
    n = len(order)
    k = min(max(MIN_HOLDOUT, round(n * holdout)), n - MIN_HOLDOUT) if n >= 2 * MIN_HOLDOUT else max(1, n // 4)
    cut = int(round((order[n - k - 1] + order[n - k]) / 2))
    train_mask = centres < cut
    train_boxes = plot.boxes[train_mask].copy()
    lo, hi = (0, 2) if axis == 1 else (1, 3)
    train_boxes[:, [lo, hi]] = train_boxes[:, [lo, hi]].clip(0, cut)
    if axis == 1:
        image, weight = plot.image[:, :cut], None if plot.weight is None else plot.weight[:, :cut]
    else:
        image, weight = plot.image[:cut], None if plot.weight is None else plot.weight[:cut]
    region = Region(f"{plot.name}[train]", np.ascontiguousarray(image), train_boxes, weight)
    return Split(plot, region, plot.boxes[~train_mask], axis, cut)


def check_enough(plots: list[Plot]) -> None:
    """Refuse too few crowns to learn from (and to score on), in one sentence."""
    crowns = sum(len(p.boxes) for p in plots)
    if crowns < MIN_CROWNS:
        names = ", ".join(p.name for p in plots)
        raise InputError(f"There are {crowns} reference crowns in the area of {names}; fine-tuning needs at "
                         f"least {MIN_CROWNS}.")


def data_fingerprint(plots: list[Plot]) -> str:
    """SHA-256 of what the model learns from and is scored on: pixels, boxes and weights, in order."""
    digest = hashlib.sha256()
    for plot in plots:
        for array in (plot.image, np.round(plot.boxes, 3), plot.weight):
            if array is not None:
                digest.update(np.ascontiguousarray(array).tobytes())
                digest.update(str(array.shape).encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------- scoring


def crown_boxes(probs: np.ndarray, params: dict, gsd_m: float, stride: int) -> np.ndarray:
    """Pixel boxes of the crowns the engine would split from (2, H, W) probabilities."""
    canopy, centres = probs[0], probs[1]
    if stride > 1:
        canopy, centres = block_mean(canopy, stride), block_mean(centres, stride)
    labels = delineate_crowns(canopy, centres, gsd_m=gsd_m * stride, **params)
    boxes = label_boxes(labels) * stride
    h, w = probs.shape[1:]
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    return boxes


def _part_scores(boxes: np.ndarray, split: Split, holdout: bool) -> Scores:
    """Crowns whose centre lies in the held-back strip (or the training part), inside the area, scored there."""
    centres = (boxes[:, split.axis] + boxes[:, split.axis + 2]) / 2
    keep = centres >= split.cut_px if holdout else centres < split.cut_px
    if split.plot.weight is not None and len(boxes):
        cx = ((boxes[:, 0] + boxes[:, 2]) / 2).astype(int).clip(0, split.plot.image.shape[1] - 1)
        cy = ((boxes[:, 1] + boxes[:, 3]) / 2).astype(int).clip(0, split.plot.image.shape[0] - 1)
        keep &= split.plot.weight[cy, cx] > 0.5
    return score_boxes(boxes[keep], split.holdout_boxes if holdout else split.train.boxes)


def _pooled(scores: list[Scores]) -> Scores:
    return Scores(sum(s.tp for s in scores), sum(s.fp for s in scores), sum(s.fn for s in scores),
                  scores[0].iou_thresh)


def holdout_scores(net: torch.nn.Module, splits: list[Split], base: BaseModel, params: dict | None = None) -> Scores:
    """Scores on the held-back strips: crowns predicted on the whole plot, counted by centre in the strip."""
    mean, std = base.metadata["mean"], base.metadata["std"]
    scores = []
    for split in splits:
        probs = predict_probs(net, split.plot.image, mean, std)
        scores.append(_part_scores(crown_boxes(probs, params or base.params, base.gsd_m, base.stride), split, True))
    return _pooled(scores)


def tune_thresholds(net: torch.nn.Module, splits: list[Split], base: BaseModel) -> tuple[dict, Scores]:
    """The :data:`THRESHOLD_GRID` point with the best pooled F1 on the *training* parts (base's on ties).

    ``delineate_crowns`` drops crowns under the minimum area last, so each point of the
    other three thresholds is delineated once and filtered by each minimum area.
    """
    import itertools

    mean, std = base.metadata["mean"], base.metadata["std"]
    probs = [predict_probs(net, split.plot.image, mean, std) for split in splits]
    cell_m2 = (base.gsd_m * base.stride) ** 2
    best = (dict(base.params), _pooled([_part_scores(crown_boxes(p, base.params, base.gsd_m, base.stride), split,
                                                     False) for p, split in zip(probs, splits)]))
    keys = ("seg_thresh", "centre_thresh", "peak_min_distance_m")
    for values in itertools.product(*(THRESHOLD_GRID[k] for k in keys)):
        params = dict(zip(keys, values))
        per_plot = []
        for p in probs:
            canopy, centres = p[0], p[1]
            if base.stride > 1:
                canopy, centres = block_mean(canopy, base.stride), block_mean(centres, base.stride)
            labels = delineate_crowns(canopy, centres, gsd_m=base.gsd_m * base.stride, min_crown_area_m2=0.0,
                                      **params)
            counts = np.bincount(labels.ravel(), minlength=1)[1:]  # labels are 1..n without gaps
            boxes = label_boxes(labels) * base.stride
            boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, p.shape[2])
            boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, p.shape[1])
            per_plot.append((boxes, counts))
        for area in THRESHOLD_GRID["min_crown_area_m2"]:
            scores = _pooled([_part_scores(boxes[counts * cell_m2 >= area], split, False)
                              for (boxes, counts), split in zip(per_plot, splits)])
            if scores.f1 > best[1].f1 + 1e-9:
                best = ({**params, "min_crown_area_m2": area}, scores)
    return best


def scores_json(s: Scores) -> dict:
    return {"precision": round(s.precision, 4), "recall": round(s.recall, 4), "f1": round(s.f1, 4),
            "tp": s.tp, "fp": s.fp, "fn": s.fn, "iou": s.iou_thresh}


# --------------------------------------------------------------------------- training


def _freeze_batchnorm(net: torch.nn.Module) -> None:
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def _lr_factor(it: int, total: int, warmup: int) -> float:
    if it < warmup:
        return (it + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (it - warmup) / max(1, total - warmup))))


def checkpoint_dir_for(out: Path) -> Path:
    return out.with_name(f".{out.stem}.finetune-run")


def finetune(plots: list[Plot], base: BaseModel, out: Path, settings: FinetuneSettings = FinetuneSettings(),
             progress: Progress | None = None, cancelled: Callable[[], bool] | None = None,
             checkpoint_dir: Path | None = None) -> FinetuneResult:
    """Fine-tune ``base`` on ``plots`` and write ``out`` (ONNX) and its ``*.finetune.pt``; resumable."""
    progress = progress or (lambda fraction, message: None)
    cancelled = cancelled or (lambda: False)
    out = Path(out)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else checkpoint_dir_for(out)
    check_enough(plots)
    torch.set_num_threads(max(1, settings.threads))
    splits = [split_plot(plot, settings.holdout) for plot in plots]
    fingerprint = data_fingerprint(plots)
    run_key = hashlib.sha256(json.dumps([fingerprint, architectures.sha256(base.sidecar), settings.batch,
                                         settings.crop_px, settings.lr, settings.holdout, settings.seed,
                                         settings.iterations]).encode()).hexdigest()
    net, sidecar = architectures.load_sidecar(base.sidecar)
    mean, std = base.metadata["mean"], base.metadata["std"]
    regions = [s.train for s in splits]
    weights = [float(r.image.shape[0] * r.image.shape[1]) for r in regions]
    sampler = Sampler(regions, settings.crop_px, settings.seed, weights, RECIPE)
    torch.manual_seed(settings.seed)
    optimiser = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=1e-4)
    ema = Ema(net, settings.ema)
    checkpoint = checkpoint_dir / "latest.pt"
    state = None
    if checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        if state.get("run_key") != run_key:
            log.info("checkpoint %s is of other data or settings: starting afresh", checkpoint)
            state = None
    if state is not None:
        net.load_state_dict(state["net"])
        optimiser.load_state_dict(state["optimiser"])
        ema.state = state["ema"]
        sampler.rng.bit_generator.state = state["sampler_rng"]
        torch.set_rng_state(state["torch_rng"])
        first, total, before = state["iteration"] + 1, state["total"], Scores(**state["before"])
        progress(0.1 + 0.8 * (first - 1) / total, f"continuing at iteration {first} of {total}")
    else:
        progress(0.0, "scoring the base model on the held-back crowns")
        before = holdout_scores(net, splits, base)
        progress(0.05, f"base model on the held-back crowns: {before.summary()}")
        total = settings.iterations or _iterations_for(net, sampler, settings, mean, std)
        first = 1
    if cancelled():
        raise CancelledError("Fine-tuning was cancelled before it started.")
    net.train()
    _freeze_batchnorm(net)
    warmup = max(1, min(20, total // 10))
    last_save = time.monotonic()

    def save(iteration: int) -> None:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        tmp = checkpoint.with_suffix(".tmp")
        torch.save({"run_key": run_key, "iteration": iteration, "total": total, "net": net.state_dict(),
                    "optimiser": optimiser.state_dict(), "ema": ema.state, "before": asdict(before),
                    "sampler_rng": sampler.rng.bit_generator.state, "torch_rng": torch.get_rng_state()}, tmp)
        tmp.replace(checkpoint)

    running = None
    for it in range(first, total + 1):
        for group in optimiser.param_groups:
            group["lr"] = settings.lr * _lr_factor(it - 1, total, warmup)
        x, y, w = sampler.batch(settings.batch, mean, std)
        logits = net(x)
        loss = canopy_loss(logits[:, 0], y[:, 0], w) + focal_centre_loss(logits[:, 1], y[:, 1], w)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        ema.update(net, it)
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        progress(0.1 + 0.8 * it / total, f"iteration {it} of {total}, loss {running:.3f}")
        if cancelled():
            save(it)
            raise CancelledError(f"Fine-tuning was cancelled at iteration {it} of {total}; run it again to "
                                 "continue from there.")
        if time.monotonic() - last_save >= settings.checkpoint_every_s:
            save(it)
            last_save = time.monotonic()
    tuned = architectures.build(sidecar["architecture"], sidecar.get("config", {}))
    tuned.load_state_dict(ema.state)
    tuned.eval()
    params = base.params
    if settings.tune_thresholds and params:
        progress(0.91, "choosing the crown thresholds on the training crowns")
        params, fit = tune_thresholds(tuned, splits, base)
        log.info("thresholds %s: F1 %.3f on the training crowns", params, fit.f1)
    progress(0.95, "scoring the fine-tuned model on the held-back crowns")
    after = holdout_scores(tuned, splits, base, params)
    result = FinetuneResult(out, before, after, total, fingerprint)
    write_model(tuned, sidecar, base, result, splits, settings, params)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    progress(1.0, f"fine-tuned model on the held-back crowns: {after.summary()}")
    return result


def _iterations_for(net, sampler: Sampler, settings: FinetuneSettings, mean, std) -> int:
    """Iterations that fit ``minutes`` (less a tenth for scoring), from the time of two timed steps."""
    probe = Sampler(sampler.regions, settings.crop_px, settings.seed + 1, list(sampler.weights), RECIPE)
    clone = [p.detach().clone() for p in net.parameters()]
    net.train()
    _freeze_batchnorm(net)
    started = time.monotonic()
    for _ in range(2):
        x, y, w = probe.batch(settings.batch, mean, std)
        logits = net(x)
        (canopy_loss(logits[:, 0], y[:, 0], w) + focal_centre_loss(logits[:, 1], y[:, 1], w)).backward()
    per_iteration = (time.monotonic() - started) / 2
    net.zero_grad()
    with torch.no_grad():
        for p, saved in zip(net.parameters(), clone):
            p.copy_(saved)
    return max(10, int(settings.minutes * 60 * 0.9 / per_iteration))


def write_model(net: torch.nn.Module, sidecar: dict, base: BaseModel, result: FinetuneResult,
                splits: list[Split], settings: FinetuneSettings, params: dict) -> None:
    """The ONNX model with the base's metadata (its crown thresholds ``params``) and a ``finetune`` record,
    and its sidecar beside it."""
    meta = {**base.metadata, **params}
    base_name = str(meta.get("name", base.onnx_path.stem))
    names = ", ".join(s.plot.name for s in splits)
    worse = result.worse
    meta["name"] = f"{base_name}, fine-tuned on {names}" + (" (scores worse than its base)" if worse else "")
    meta["description"] = (
        f"{base_name} fine-tuned on {sum(len(s.train.boxes) for s in splits)} reference crowns of {names}. "
        f"On {sum(len(s.holdout_boxes) for s in splits)} held-back crowns: F1 {result.before.f1:.3f} before, "
        f"{result.after.f1:.3f} after" + ("; it scores worse than its base model." if worse else "."))
    meta["finetune"] = {
        "base_model": {"name": base_name, "file": base.onnx_path.name,
                       "sha256": architectures.sha256(base.onnx_path)},
        "data_fingerprint": result.data_fingerprint,
        "scores_before": scores_json(result.before),
        "scores_after": scores_json(result.after),
        "worse_than_base": worse,
        "holdout": {"share": settings.holdout, "crowns": int(sum(len(s.holdout_boxes) for s in splits)),
                    "note": "a strip at the end of each area's longer axis, never trained on"},
        "train_crowns": int(sum(len(s.train.boxes) for s in splits)),
        "images": [s.plot.name for s in splits],
        "iterations": result.iterations,
        "thresholds": params,
        "settings": asdict(settings),
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
    }
    meta["provenance"] = {"base_provenance": base.metadata.get("provenance"),
                          "script": "training/finetune.py"}
    out = result.out
    out.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(net, out, meta)
    entries = {k: v for k, v in sidecar.items() if k not in ("architecture", "config")}
    entries.update(params=dict(params), model_sha256=architectures.sha256(out), model_name=meta["name"])
    architectures.save_sidecar(architectures.sidecar_path(out), net, sidecar["architecture"],
                               sidecar.get("config", {}), **entries)
