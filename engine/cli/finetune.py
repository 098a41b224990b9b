"""``python -m engine finetune``: fine-tune the bundled model (or another) on your own reference crowns.

The work is :mod:`training.finetune` (the default model's training code), which
needs PyTorch, onnx and Pillow; without them this command says what to install
in one sentence. Running the same command again after a kill or a cancel continues
from the last checkpoint (``.OUT.finetune-run/`` beside ``--out``).
"""

from __future__ import annotations

import argparse
import json
import signal
from pathlib import Path

from ..errors import InputError

TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
INSTALL_SENTENCE = (
    "Fine-tuning needs PyTorch, onnx and Pillow: install them with "
    f"pip install torch onnx Pillow --extra-index-url {TORCH_INDEX} "
    "(in QGIS: Processing ▸ Tree crown delineation ▸ Fine-tune a model offers to install them).")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune the bundled model on your own crowns and write a new ONNX model",
        description="Fine-tune a model on reference crowns (polygons or boxes) of an orthophoto; a spatial "
                    "part of them is held back to score the model before and after.")
    parser.add_argument("--image", type=Path, required=True, help="the orthophoto the crowns were drawn on")
    parser.add_argument("--truth", required=True,
                        help="reference crown polygons or boxes (any OGR format and CRS; file.gpkg|layername=NAME)")
    parser.add_argument("--area", default=None, help="polygons where the reference is complete "
                                                     "(default: the reference's envelope)")
    parser.add_argument("--out", type=Path, required=True, help="the fine-tuned ONNX model to write")
    parser.add_argument("--base", type=Path, default=None, help="model to start from (default: the bundled one)")
    parser.add_argument("--minutes", type=float, default=10.0, help="training time (default 10)")
    parser.add_argument("--iterations", type=int, default=None, help="training steps (overrides --minutes)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--batch", type=int, default=8, help="crops per step (default 8)")
    parser.add_argument("--crop-px", type=int, default=256, help="crop size in model pixels (default 256)")
    parser.add_argument("--holdout", type=float, default=0.25,
                        help="share of the crowns held back to score, a strip of the area (default 0.25)")
    parser.add_argument("--progress-json", action="store_true", help="progress as JSON lines (for the plugin)")
    parser.set_defaults(func=run)


def _load():
    """training.finetune, or one sentence saying what to install."""
    try:
        from training import finetune
    except ModuleNotFoundError as exc:
        if exc.name in ("torch", "onnx", "PIL") or (exc.name or "").startswith(("torch.", "onnx.", "PIL.")):
            raise InputError(INSTALL_SENTENCE) from exc
        if exc.name == "training":
            raise InputError("Fine-tuning needs the training code (the training folder beside the engine), "
                             "which this copy of the engine lacks.") from exc
        raise
    return finetune


def run(args: argparse.Namespace) -> int:
    from ..models.spec import default_model_path

    if not args.out.suffix.lower() == ".onnx":
        raise InputError(f"The fine-tuned model must be an .onnx file, not {args.out.name}.")
    if args.minutes <= 0 or (args.iterations is not None and args.iterations < 1):
        raise InputError("Give a positive training time (--minutes) or number of steps (--iterations).")
    if not 0 < args.holdout < 1:
        raise InputError(f"--holdout must be a share between 0 and 1, not {args.holdout}.")
    if args.crop_px < 32 or args.crop_px % 32:
        raise InputError(f"--crop-px must be a multiple of 32 of at least 32, not {args.crop_px}.")
    ft = _load()
    base = ft.base_model(args.base or default_model_path())
    plot = ft.read_plot(args.image, args.truth, args.area, base)
    settings = ft.FinetuneSettings(minutes=args.minutes, iterations=args.iterations, threads=args.threads,
                                   batch=args.batch, crop_px=args.crop_px, holdout=args.holdout)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))

    def progress(fraction: float, message: str) -> None:
        if args.progress_json:
            print(json.dumps({"progress": round(fraction, 4), "message": message}), flush=True)
        elif fraction in (0.0, 1.0) or "held-back" in message or "continuing" in message:
            print(f"{100 * fraction:3.0f} %  {message}", flush=True)

    result = ft.finetune([plot], base, args.out, settings, progress, lambda: bool(stop))
    summary = {"out": str(result.out), "before": ft.scores_json(result.before),
               "after": ft.scores_json(result.after), "worse_than_base": result.worse,
               "iterations": result.iterations}
    if args.progress_json:
        print(json.dumps({"result": summary}), flush=True)
    print(f"wrote {result.out}: F1 on the held-back crowns {result.before.f1:.3f} (base) -> "
          f"{result.after.f1:.3f} (fine-tuned)")
    if result.worse:
        print("warning: the fine-tuned model scores worse than its base model on the held-back crowns; "
              "keep using the base model, or add crowns and fine-tune again.")
    return 0
