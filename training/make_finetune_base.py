"""Write the file fine-tuning starts from beside an ONNX model of a known architecture.

    .venv/bin/python -m training.make_finetune_base resources/models/tcd_default.onnx

The bundled v4 model's weights are recovered from the ONNX graph itself
(:func:`training.architectures.recover_from_onnx`; BatchNorms folded), checked
against onnxruntime on a random image, and saved with the architecture's name, the
normalisation and the crown thresholds of the model's metadata as
``tcd_default.finetune.pt`` (see :mod:`training.architectures`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from training.architectures import build, recover_from_onnx, save_sidecar, sha256, sidecar_path

THRESHOLD_KEYS = ("seg_thresh", "centre_thresh", "peak_min_distance_m", "min_crown_area_m2")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--architecture", default="crownnet")
    parser.add_argument("--widths", default="32,64,96,128", help="crownnet widths")
    args = parser.parse_args()
    import onnxruntime as ort

    from engine.models.onnx_meta import read_onnx_metadata

    meta = {k: json.loads(v) for k, v in read_onnx_metadata(args.model).items()}
    config = {"widths": [int(w) for w in args.widths.split(",")]} if args.architecture == "crownnet" else {}
    net = recover_from_onnx(build(args.architecture, config), args.model)
    x = np.random.default_rng(0).standard_normal((1, 3, 192, 160)).astype(np.float32)
    from training.net import ExportWrapper

    with torch.no_grad():
        ours = ExportWrapper(net.eval())(torch.from_numpy(x)).numpy()
    theirs = ort.InferenceSession(str(args.model), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    error = float(np.abs(ours - theirs).max())
    if error > 1e-4:
        print(f"recovered weights differ from the ONNX model by {error:.2e}", file=sys.stderr)
        return 1
    out = sidecar_path(args.model)
    save_sidecar(out, net, args.architecture, config, mean=meta["mean"], std=meta["std"],
                 params={k: float(meta[k]) for k in THRESHOLD_KEYS}, gsd_m=float(meta["gsd_m"]),
                 crown_stride_px=int(meta.get("crown_stride_px", 1)), model_sha256=sha256(args.model),
                 model_name=meta.get("name", args.model.stem))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB); largest difference from onnxruntime {error:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
