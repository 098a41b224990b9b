"""``python -m engine export-restor MODEL OUT.onnx``: Restor's SegFormer/UNet to ONNX."""

from __future__ import annotations

import argparse

from ..export.restor import RESTOR_LICENSE, export_restor


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export-restor",
        help="convert a Restor tcd_pipeline SegFormer or UNet model to ONNX (needs requirements-export.txt)",
        description=(
            "Convert one of Restor's tree cover models (restor/tcd-segformer-mit-b0 ... -b5, "
            "restor/tcd-unet-r34/-r50/-r101) or a local save_pretrained folder to an ONNX model "
            "for the engine and the QGIS plugin. A Hugging Face id is downloaded once (internet needed); "
            "a local folder works offline. Needs torch and transformers (requirements-export.txt) "
            "at export time only."
        ),
    )
    parser.add_argument("model", help="Hugging Face id (e.g. restor/tcd-segformer-mit-b0) or local model folder")
    parser.add_argument("output", help="ONNX file to write (.onnx)")
    parser.add_argument("--name", help="model name shown in the plugin (default: the id, or the folder's name)")
    parser.add_argument(
        "--license",
        default=RESTOR_LICENSE,
        help="licence stored in the model (default: %(default)s, that of Restor's weights)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = export_restor(args.model, args.output, name=args.name, license_=args.license)
    print(
        f"wrote {result.path} ({result.family.value}, name '{result.name}'); "
        f"max difference to PyTorch on a test tile: {result.max_abs_diff:.2g}"
    )
    return 0
