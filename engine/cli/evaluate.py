"""``python -m engine evaluate``: crown accuracy against a reference layer or annotated boxes.

``evaluate CACHE_OR_IMAGE --truth LAYER [--area AREA]``: a reference layer (crown
polygons, boxes or tree-top points in any OGR format and CRS) is scored in the
cache's CRS by :mod:`engine.crown_evaluation`, which also writes ``evaluation.gpkg``
and ``evaluation.json`` into the cache (or ``--out``).

``evaluate CACHE_OR_IMAGE --truth ANNOTATIONS.csv|.xml``: given a cache folder, its crown
polygons are read with OGR; given an image, it is first predicted into a temporary
cache. Each crown's envelope is mapped into the source image's pixel space and
matched one-to-one with the annotation boxes (see :mod:`engine.evaluate`).

``evaluate --loio [FOLDS_DIR]``: leave-one-image-out scores of the bundled default
model's recipe. ``FOLDS_DIR`` (default ``training/folds``) holds ``folds.json`` and
one small ONNX model per fold, each trained on all annotated images but one; each
is run through the real ``predict`` on the image it never saw, and the per-image
scores and their mean F1 are printed. Images and annotations are read from
``--data-dir`` (default ``training/data``); the manifest may name a fetch function
(``training.data:fetch_data``) that downloads missing files.
"""

from __future__ import annotations

import argparse
import importlib
import json
import tempfile
from pathlib import Path

import numpy as np

from ..errors import InputError, RasterError
from ..evaluate import DEFAULT_IOU_THRESH, Scores, map_boxes_to_pixels, read_boxes, score_boxes

REPO = Path(__file__).resolve().parents[2]
DEFAULT_FOLDS_DIR = REPO / "training" / "folds"
DEFAULT_DATA_DIR = REPO / "training" / "data"
# A projected CRS in metres for images without georeferencing (any one will do: only
# pixel sizes matter); UTM 12N holds Yellowstone.
LOCAL_CRS = "EPSG:32612"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="precision, recall and F1 of predicted crowns (or a detector's boxes) against annotated boxes",
        description="Compare crowns with annotated boxes (pixel coordinates of the image) at an IoU threshold.",
    )
    parser.add_argument("source", type=Path, nargs="?",
                        help="a cache folder, or an image to predict into a temporary cache")
    parser.add_argument("--truth", type=str,
                        help="reference layer (crown polygons, boxes or tree-top points; any OGR format and CRS; "
                             "file.gpkg|layername=NAME picks a layer), or DeepForest .csv / Pascal-VOC .xml boxes "
                             "in the image's pixel coordinates")
    parser.add_argument("--area", type=str, default=None,
                        help="polygons where the reference is complete (default: the reference's envelope)")
    parser.add_argument("--out", type=Path, default=None,
                        help="GeoPackage of matched, missed and false crowns (default: CACHE/evaluation.gpkg, "
                             "or IMAGE_evaluation.gpkg in the current folder for an image)")
    parser.add_argument("--loio", type=Path, nargs="?", const=DEFAULT_FOLDS_DIR, default=None, metavar="FOLDS_DIR",
                        help="leave-one-image-out scores: run each fold model of FOLDS_DIR (default "
                             "training/folds) on the image it was not trained on")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="images and annotations named by the folds (default training/data)")
    parser.add_argument("--model", type=Path, default=None, help="ONNX model for an image (default: bundled model)")
    parser.add_argument("--iou", type=float, default=DEFAULT_IOU_THRESH,
                        help="IoU a crown's bounding box needs with a truth box to match "
                             f"(default {DEFAULT_IOU_THRESH})")
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
    """(N, 4) ``(xmin, ymin, xmax, ymax)`` envelopes of the crown polygons, in the layer's CRS.

    A detector's cache is scored on its boxes: its crowns (canopy or ellipses inside
    the boxes) carry the box itself in ``box_xmin`` ... ``box_ymax``.
    """
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
    defn = layer.GetLayerDefn()
    box_fields = ("box_xmin", "box_ymin", "box_xmax", "box_ymax")
    if all(defn.GetFieldIndex(name) >= 0 for name in box_fields):
        for feature in layer:
            rows.append(tuple(feature.GetField(name) for name in box_fields))
        return np.asarray(rows, np.float64).reshape(-1, 4)
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


def georeferenced_copy(image: Path, out: Path, gsd_m: float) -> Path:
    """A GeoTIFF copy of an image without georeferencing (a PNG), north-up at ``gsd_m`` in :data:`LOCAL_CRS`."""
    from osgeo import gdal, osr

    gdal.UseExceptions()
    try:
        src = gdal.Open(str(image))
    except RuntimeError as exc:
        raise RasterError(f"Cannot open the image {image}.") from exc
    dst = gdal.GetDriverByName("GTiff").CreateCopy(str(out), src)
    dst.SetGeoTransform((500000.0, gsd_m, 0.0, 5000000.0 + src.RasterYSize * gsd_m, 0.0, -gsd_m))
    srs = osr.SpatialReference()
    srs.SetFromUserInput(LOCAL_CRS)
    dst.SetProjection(srs.ExportToWkt())
    dst = None
    return out


def evaluate_image(image: Path, truth: Path, model: Path | None, iou_thresh: float = DEFAULT_IOU_THRESH,
                   gsd_m: float | None = None) -> Scores:
    """Predict ``image`` into a temporary cache and score its crowns.

    With ``gsd_m``, the image is taken as unreferenced (a PNG) at that pixel size and
    predicted from a georeferenced copy; its annotations stay in its own pixels.
    """
    from ..run.predict import predict
    from ..settings import Job

    with tempfile.TemporaryDirectory(prefix="tcd_evaluate_") as tmp:
        if gsd_m is not None:
            image = georeferenced_copy(image, Path(tmp) / f"{image.stem}.tif", gsd_m)
        cache_dir = Path(tmp) / "cache"
        predict(Job(image=image, cache_dir=cache_dir, model=model))
        return evaluate_cache(cache_dir, truth, iou_thresh)


def _fetch(spec: str, data_dir: Path) -> None:
    """Call ``module:function(data_dir)`` named by a folds manifest to download missing data."""
    module_name, _, function = spec.partition(":")
    try:
        fetch = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"Cannot load {spec} to fetch the evaluation data; put the files in {data_dir}.") from exc
    try:
        fetch(data_dir)
    except Exception as exc:  # pip or network failures: say what was tried
        raise InputError(f"Fetching the evaluation data into {data_dir} with {spec} failed: {exc}") from exc


def evaluate_loio(folds_dir: Path, data_dir: Path | None = None, iou_thresh: float = DEFAULT_IOU_THRESH,
                  progress=print) -> list[tuple[dict, Scores]]:
    """[(fold, scores)] of every fold of ``folds_dir/folds.json`` on its held-out image.

    The manifest: ``{"gsd_m": 0.1, "fetch": "module:function", "folds": [{"name", "model",
    "image", "truth", "train"}]}``; ``model`` is relative to ``folds_dir``, ``image`` and
    ``truth`` to ``data_dir``; ``gsd_m`` is the pixel size of unreferenced images.
    """
    manifest_path = folds_dir / "folds.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        folds = manifest["folds"]
    except OSError as exc:
        raise InputError(f"No leave-one-image-out folds at {folds_dir} ({manifest_path.name} is missing).") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{manifest_path} is not a folds manifest with a list of folds.") from exc
    data_dir = data_dir or DEFAULT_DATA_DIR
    needed = [data_dir / f[key] for f in folds for key in ("image", "truth")]
    if not all(p.is_file() for p in needed):
        if not manifest.get("fetch"):
            missing = ", ".join(p.name for p in needed if not p.is_file())
            raise InputError(f"The evaluation data is missing from {data_dir}: {missing}.")
        _fetch(manifest["fetch"], data_dir)
    results = []
    for fold in folds:
        model = folds_dir / fold["model"]
        if not model.is_file():
            raise InputError(f"The fold model {model} does not exist.")
        scores = evaluate_image(data_dir / fold["image"], data_dir / fold["truth"], model, iou_thresh,
                                manifest.get("gsd_m"))
        progress(f"{fold['name']}: {fold['image']} (model trained on {', '.join(fold.get('train', ['?']))})")
        progress(f"  {scores.summary()}")
        results.append((fold, scores))
    return results


def run(args: argparse.Namespace) -> int:
    if not 0 < args.iou <= 1:
        raise InputError(f"The IoU threshold must be in (0, 1], not {args.iou}.")
    if args.loio is not None:
        if args.source is not None or args.truth is not None or args.model is not None:
            raise InputError("--loio takes no image, cache, --truth or --model: the folds name their own.")
        print(f"leave-one-image-out, folds of {args.loio}: each model scored on the image it was not trained on")
        results = evaluate_loio(args.loio, args.data_dir, args.iou)
        mean = sum(s.f1 for _, s in results) / len(results) if results else 0.0
        print(f"mean F1 {mean:.3f} over {len(results)} held-out images (IoU >= {args.iou:g})")
        return 0
    if args.source is None or args.truth is None:
        raise InputError("Give an image or cache folder and --truth ANNOTATIONS, or --loio.")
    truth_file = Path(args.truth.partition("|")[0])
    if not truth_file.exists():
        raise InputError(f"The reference layer {truth_file} does not exist.")
    pixel_boxes = truth_file.suffix.lower() in (".csv", ".xml")
    if pixel_boxes and (args.area or args.out):
        raise InputError("--area and --out need a reference layer with coordinates, not pixel boxes.")
    if args.source.is_dir():
        if args.model is not None:
            raise InputError("--model only applies when evaluating an image; a cache already holds its crowns.")
        if pixel_boxes:
            return _print_scores(evaluate_cache(args.source, truth_file, args.iou))
        return _evaluate_layer(args.source, args)
    if not args.source.is_file():
        raise InputError(f"{args.source} is neither a cache folder nor an image file.")
    if pixel_boxes:
        return _print_scores(evaluate_image(args.source, truth_file, args.model, args.iou))
    from ..run.predict import predict
    from ..settings import Job

    with tempfile.TemporaryDirectory(prefix="tcd_evaluate_") as tmp:
        cache_dir = Path(tmp) / "cache"
        predict(Job(image=args.source, cache_dir=cache_dir, model=args.model))
        out = args.out or Path.cwd() / f"{args.source.stem}_evaluation.gpkg"
        return _evaluate_layer(cache_dir, args, out)


def _evaluate_layer(cache_dir: Path, args: argparse.Namespace, out: Path | None = None) -> int:
    from ..crown_evaluation import evaluate_cache as evaluate_against_layer

    comparison, written = evaluate_against_layer(cache_dir, args.truth, args.area, args.iou, out or args.out)
    _print_scores(comparison.scores)
    if comparison.scores.mean_iou is not None:
        print(f"mean IoU  {comparison.scores.mean_iou:.3f}")
    print(f"reference {comparison.kind}; matched, missed and false crowns in {written}")
    return 0


def _print_scores(scores: Scores) -> int:
    print(f"precision {scores.precision:.3f}")
    print(f"recall    {scores.recall:.3f}")
    print(f"F1        {scores.f1:.3f}")
    print(f"TP {scores.tp}  FP {scores.fp}  FN {scores.fn}  (IoU >= {scores.iou_thresh:g})")
    return 0
