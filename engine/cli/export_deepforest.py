"""``python -m engine export-deepforest [MODEL] OUT.onnx``: DeepForest's RetinaNet tree model to ONNX."""

from __future__ import annotations

import argparse

from ..export.deepforest import DEEPFOREST_LICENSE, DEFAULT_MODEL_ID, PATCH_SIZE_PX, export_deepforest


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export-deepforest",
        help="convert DeepForest's tree model or your fine-tuned checkpoint to ONNX (needs requirements-export.txt)",
        description=(
            "Convert DeepForest's RetinaNet tree crown detector (weecology/deepforest-tree by default, "
            "downloaded once from Hugging Face; internet needed) or a local checkpoint of your own "
            "fine-tuning (a save_pretrained folder, a Lightning .ckpt, a .pt state dict or a .safetensors "
            "file) to an ONNX model for the engine and the QGIS plugin. Needs torch (requirements-export.txt) "
            "at export time only."
        ),
    )
    parser.add_argument("args", nargs="+", metavar="[MODEL] OUT.onnx",
                        help=f"Hugging Face id or local checkpoint (default {DEFAULT_MODEL_ID}), then the ONNX file")
    parser.add_argument("--name", help="model name shown in the plugin (default: the id, or the file's name)")
    parser.add_argument("--patch-size", type=int, default=PATCH_SIZE_PX,
                        help="tile size in pixels the model is exported for (default %(default)s, DeepForest's)")
    parser.add_argument("--license", default=DEEPFOREST_LICENSE,
                        help="licence stored in the model (default: %(default)s, that of DeepForest's weights)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError

    if len(args.args) > 2:
        raise InputError("Give at most a model and an output file.")
    source, output = (DEFAULT_MODEL_ID, args.args[0]) if len(args.args) == 1 else args.args
    result = export_deepforest(source, output, name=args.name, license_=args.license, patch_size_px=args.patch_size)
    print(f"wrote {result.path} (RetinaNet, classes {', '.join(result.class_names)}, name '{result.name}'); "
          f"max difference to PyTorch on a test tile: {result.max_abs_diff:.2g}")
    return 0
