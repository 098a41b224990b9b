"""``python -m engine predict IMAGE --out CACHE_DIR``: predict or resume a cache."""

from __future__ import annotations

import sys
from pathlib import Path

from ..models.runner import PROVIDERS


def register(subparsers) -> None:
    p = subparsers.add_parser("predict", help="predict a raster into a cache folder (resumes if it exists)")
    p.add_argument("image", type=Path, help="georeferenced raster (GeoTIFF, VRT, ...)")
    p.add_argument("--model", type=Path, default=None, help="ONNX model (default: the bundled model)")
    p.add_argument("--out", type=Path, default=None, help="cache folder (default: IMAGE_tcd beside the image)")
    p.add_argument("--tile-size", type=int, default=None, help="tile edge in model pixels")
    p.add_argument("--overlap", type=int, default=None, help="overlap between tiles in model pixels")
    p.add_argument("--gsd", type=float, default=None, help="model ground sampling distance, metres per pixel")
    p.add_argument("--outputs", default="semantic,instances", help="semantic, instances, or both (comma-separated)")
    p.add_argument("--vector-format", choices=("shp", "gpkg"), default="shp", help="format of the crowns file")
    p.add_argument("--overwrite", action="store_true", help="discard an existing cache in the folder and start afresh")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: all cores)")
    p.add_argument("--assign-crs", default=None, metavar="CRS",
                   help="CRS to use when the raster file has none (EPSG:32633, WKT, ...)")
    p.add_argument("--canopy-height", type=Path, default=None, metavar="CHM",
                   help="canopy height raster (CHM or nDSM, metres, any CRS): crowns get height_max_m, height_p95_m")
    p.add_argument("--processor", dest="provider", default=None, choices=sorted(PROVIDERS),
                   help="where the model runs (default: a working GPU if any, else the CPU)")
    p.add_argument("--threshold", dest="seg_thresh", type=float, default=None, metavar="P",
                   help="segmentation models: probability a pixel needs to belong to a class (default: the "
                        "model's seg_thresh, else 0.5); kept with the cache, so resume with the same")
    p.add_argument("--det-conf", type=float, default=None, metavar="SCORE",
                   help="detectors: score a box needs (default: the model's)")
    p.add_argument("--det-iou", type=float, default=None, metavar="IOU",
                   help="detectors: IoU above which the weaker of two overlapping boxes goes (default: the model's)")
    p.add_argument("--geometry", dest="box_geometry", choices=("crowns", "boxes"), default=None,
                   help="detectors: store crowns (canopy in the box, else its inscribed ellipse) or the boxes "
                        "(default crowns)")
    p.add_argument("--value-range", default=None, metavar="MIN,MAX",
                   help="stretch every band linearly from MIN to MAX onto 0-255 (default: 8-bit rasters as they "
                        "are; 16-bit and float ones as QGIS shows them, a 2-98 %% cumulative cut of each band)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=None, metavar="N",
                       help="predict on a local Dask cluster of N worker processes (needs the distributed package)")
    where.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="predict on a running Dask cluster, e.g. tcp://host:8786 (started with dask scheduler "
                            "and dask worker); this process commits the tiles")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..run.predict import predict
    from ..settings import Job, default_cache_dir, parse_outputs, parse_value_range

    job = Job(
        image=args.image,
        cache_dir=args.out or default_cache_dir(args.image),
        model=args.model,
        outputs=parse_outputs(args.outputs),
        tile_size_px=args.tile_size,
        overlap_px=args.overlap,
        gsd_m=args.gsd,
        vector_format=args.vector_format,
        overwrite=args.overwrite,
        threads=args.threads,
        assign_crs=args.assign_crs,
        provider=args.provider,
        det_conf=args.det_conf,
        det_iou_thresh=args.det_iou,
        box_geometry=args.box_geometry,
        seg_thresh=args.seg_thresh,
        canopy_height=args.canopy_height,
        workers=args.workers,
        scheduler=args.scheduler,
        value_range=parse_value_range(args.value_range),
    )
    bar = None

    def progress(p):
        nonlocal bar
        if args.quiet:
            return
        if bar is None:
            try:
                from tqdm import tqdm
            except ImportError:  # plain lines when tqdm is absent
                print(f"tiles {p.done}/{p.total}", file=sys.stderr)
                return
            bar = tqdm(total=p.total, initial=p.done, unit="tile", desc="predict", file=sys.stderr)
            return
        bar.n = p.done
        bar.set_postfix(crowns=p.features, skipped=p.skipped, refresh=False)
        bar.refresh()

    try:
        result = predict(job, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    print(f"{result.state}: {result.done}/{result.total} tiles ({result.skipped} skipped), "
          f"{result.features} crowns in {result.cache_dir}")
    return 0
