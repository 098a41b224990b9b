"""``python -m engine evaluate CACHE_OR_IMAGE --truth ANNOTATIONS``: crown accuracy against boxes.

Given a cache folder, its crown polygons are read with OGR; given an image, it
is first predicted into a temporary cache. Each crown's envelope is mapped into
the source image's pixel space and matched one-to-one with the annotation boxes
(see :mod:`engine.evaluate`).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from ..errors import InputError, RasterError
from ..evaluate import DEFAULT_IOU_THRESH, Scores, map_boxes_to_pixels, read_boxes, score_boxes


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="precision, recall and F1 of predicted crowns against annotated boxes",
        description="Compare crowns with annotated boxes (pixel coordinates of the image) at an IoU threshold.",
    )
    parser.add_argument("source", type=Path, help="a cache folder, or an image to predict into a temporary cache")
    parser.add_argument("--truth", type=Path, required=True,
                        help="DeepForest .csv or Pascal-VOC .xml boxes in the image's pixel coordinates")
    parser.add_argument("--model", type=Path, default=None, help="ONNX model for an image (default: bundled model)")
    parser.add_argument("--iou", type=float, default=DEFAULT_IOU_THRESH,
                        help=f"IoU a crown's bounding box needs with a truth box to match (default {DEFAULT_IOU_THRESH})")
    parser.set_defaults(func=run)


def _inverse_transform(image_path: Path) -> tuple[float, ...]:
    """(a, b, c, d, e, f) of the map from the image's CRS to its pixel (col, row) space."""
    from osgeo import gdal

    gdal.UseExceptions()
    try:
        dataset = gdal.Open(str(image_path))
    except RuntimeError as exc:
        raise RasterError(f"Cannot open the image {image_path}.") from exc
    inverse = gdal.InvGeoTransform(dataset.GetGeoTransform())
    if inverse is None:
        raise RasterError(f"The image {image_path} has a degenerate geotransform.")
    # GDAL orders coefficients (c, a, b, f, d, e); engine.evaluate uses affine's (a, b, c, d, e, f).
    c, a, b, f, d, e = inverse
    return (a, b, c, d, e, f)


def crown_envelopes(vector_path: Path, layer_name: str | None = None) -> np.ndarray:
    """(N, 4) ``(xmin, ymin, xmax, ymax)`` envelopes of the crown polygons, in the layer's CRS."""
    from osgeo import ogr

    ogr.UseExceptions()
    try:
        source = ogr.Open(str(vector_path))
    except RuntimeError as exc:
        raise RasterError(f"Cannot open the crown file {vector_path}.") from exc
    layer = source.GetLayerByName(layer_name) if layer_name else source.GetLayer(0)
    if layer is None:
        raise InputError(f"The crown file {vector_path} has no layer {layer_name!r}.")
    rows = []
    for feature in layer:
        geometry = feature.GetGeometryRef()
        if geometry is not None and not geometry.IsEmpty():
            xmin, xmax, ymin, ymax = geometry.GetEnvelope()
            rows.append((xmin, ymin, xmax, ymax))
    return np.asarray(rows, np.float64).reshape(-1, 4)


def evaluate_cache(cache_dir: Path, truth_path: Path, iou_thresh: float = DEFAULT_IOU_THRESH) -> Scores:
    """Scores of a cache's crowns against annotation boxes of its source image."""
    from ..cache.status import cache_layers, cache_status

    status = cache_status(cache_dir)
    image_path = Path(status.image_path)
    crowns = [layer for layer in cache_layers(cache_dir) if layer.kind == "vector"]
    if not crowns:
        raise InputError(f"The cache {cache_dir} has no crown layer; run predict with the instances output.")
    envelopes = crown_envelopes(Path(crowns[0].path), crowns[0].layer_name)
    pred_px = map_boxes_to_pixels(envelopes, _inverse_transform(image_path))
    truth_px = read_boxes(truth_path, image_name=image_path.name)
    return score_boxes(pred_px, truth_px, iou_thresh)


def run(args: argparse.Namespace) -> int:
    if not 0 < args.iou <= 1:
        raise InputError(f"The IoU threshold must be in (0, 1], not {args.iou}.")
    if not args.truth.is_file():
        raise InputError(f"The annotation file {args.truth} does not exist.")
    if args.source.is_dir():
        if args.model is not None:
            raise InputError("--model only applies when evaluating an image; a cache already holds its crowns.")
        scores = evaluate_cache(args.source, args.truth, args.iou)
    elif args.source.is_file():
        from ..run.predict import predict
        from ..settings import Job

        with tempfile.TemporaryDirectory(prefix="tcd_evaluate_") as tmp:
            cache_dir = Path(tmp) / "cache"
            predict(Job(image=args.source, cache_dir=cache_dir, model=args.model))
            scores = evaluate_cache(cache_dir, args.truth, args.iou)
    else:
        raise InputError(f"{args.source} is neither a cache folder nor an image file.")
    print(f"precision {scores.precision:.3f}")
    print(f"recall    {scores.recall:.3f}")
    print(f"F1        {scores.f1:.3f}")
    print(f"TP {scores.tp}  FP {scores.fp}  FN {scores.fn}  (IoU >= {scores.iou_thresh:g})")
    return 0
