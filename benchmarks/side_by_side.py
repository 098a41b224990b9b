"""Deepness and the engine side by side: same raster, same two models, one run.

    .venv/bin/python -m benchmarks.side_by_side --deepness /path/to/qgis-plugin-deepness [--big]

Deepness 0.6.5 (PUTvision/qgis-plugin-deepness; its source is not part of this
repository: check it out anywhere and pass the folder with ``--deepness`` or
``TCD_DEEPNESS_DIR``) runs headless in QGIS as its plugin runs it: a raster layer,
``Segmentor`` loaded from the model file, the parameters its dock widget derives
from the model's metadata and its defaults (batch 1, overlap from ``tiles_overlap``,
probability threshold from ``seg_thresh``, small-segment removal 9 px), and its
``MapProcessorSegmentation`` task submitted to QGIS's task manager. Deepness keeps
its result in memory (a class map and in-memory vector layers) and writes nothing
to disk. Deepness needs OpenCV; if the Python running the benchmark lacks it, put
``opencv-python-headless`` in a folder and pass it with ``--deepness-deps`` (a
``pydeps`` folder inside the Deepness folder is used when present).

The engine runs ``python -m engine predict`` on the same raster and model and
writes both caches (confidence GeoTIFFs + VRT, crown shapefile) as users run it.

Each side runs in its own child process; its peak RSS is the child's own
(VmHWM, read by the child: ``ru_maxrss`` would carry over this parent's peak).
Time is measured inside each child from just before the model is loaded to the
end of the run (QGIS start-up and Python's own start are left out
for both; the whole child's wall time is printed too). Sides are interleaved, and
with ``--repeat N`` their order alternates and the median is printed.

Models (built once into ``--workdir``, reused):
  * SegFormer-b0: transformers ``SegformerConfig()`` (mit-b0), random weights,
    2 classes, exported by the engine's ``export-restor``, plus Deepness's keys;
    1024 px tiles, 25 % overlap, 10 cm.
  * green: a 1x1 convolution + softmax (tree = green excess), Deepness's keys only;
    512 px tiles, 25 % overlap, 10 cm.
Rasters: synthetic forest-like RGB uint8 GeoTIFFs at 0.1 m (tiled, deflate), 4096^2,
and 16384^2 with ``--big``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL_VERSION = 1  # bump when the benchmark models change, so cached files are rebuilt
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


# --------------------------------------------------------------------------- models and rasters

def _deepness_metadata(tile_px: int, overlap_pct: int, mean, std) -> dict:
    """The metadata keys Deepness reads (values JSON-encoded, as its own tools write them)."""
    return {
        "model_type": "Segmentor",
        "class_names": {"0": "background", "1": "tree"},
        "resolution": 10,  # cm/px
        "tile_size": tile_px,
        "tiles_size": tile_px,
        "tiles_overlap": overlap_pct,  # percent of the tile
        "seg_thresh": 0.5,
        "standardization_mean": list(mean),
        "standardization_std": list(std),
    }


def _add_metadata(path: Path, extra: dict) -> None:
    import onnx

    model = onnx.load(str(path))
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in extra]
    del model.metadata_props[:]
    for key, value in kept:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    for key, value in extra.items():  # Deepness reads class_names only as a dict {"0": name, ...}
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = json.dumps(value)
    # Deepness counts classes from the output's declared channel axis, which the exporter left symbolic.
    channels = model.graph.output[0].type.tensor_type.shape.dim[1]
    if not channels.HasField("dim_value"):
        channels.dim_value = len(extra["class_names"])
    onnx.save(model, str(path))


def build_segformer(path: Path) -> Path:
    """SegFormer mit-b0 from a random config, exported by export-restor, with Deepness's metadata."""
    import torch
    import transformers

    try:
        from engine.export.restor import export_restor
    except ImportError:  # engines before the layout of issue 11
        from engine.export_restor import export_restor

    torch.manual_seed(0)
    model = transformers.SegformerForSemanticSegmentation(transformers.SegformerConfig(num_labels=2)).eval()
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "tcd-segformer-mit-b0-random"
        model.save_pretrained(folder)
        tmp = Path(d) / "segformer.onnx"
        export_restor(str(folder), tmp, name="segformer-b0 (random weights)", license_="none (random weights)")
        _add_metadata(tmp, _deepness_metadata(1024, 25, IMAGENET_MEAN, IMAGENET_STD))
        shutil.copyfile(tmp, path)
    return path


def build_green(path: Path) -> Path:
    """1x1 convolution + softmax: P(tree) = sigmoid(8 * (2G - R - B) - 2.2) on 0..1 values; Deepness's metadata only."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    y = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 2, "height", "width"])
    w = np.zeros((2, 3, 1, 1), np.float32)
    w[1, :, 0, 0] = [-8.0, 16.0, -8.0]
    b = np.array([0.0, -2.2], np.float32)
    nodes = [helper.make_node("Conv", ["image", "w", "b"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    graph = helper.make_graph(nodes, "green", [x], [y], [numpy_helper.from_array(w, "w"),
                                                         numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in {"name": "green 1x1 conv", **_deepness_metadata(512, 25, [0.0] * 3, [1.0] * 3)}.items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = json.dumps(value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_raster(path: Path, size: int, seed: int) -> Path:
    from benchmarks.rasters import make_raster as forest_raster  # the engine benchmarks' forest-like raster

    tmp = path.with_suffix(".part.tif")
    forest_raster(tmp, size, seed=seed)
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- children

def peak_rss_mb() -> float:
    """This process's peak RSS since it started its program, in MB.

    ``ru_maxrss`` is kept across exec, so a child started from a large parent would
    report the parent's peak; /proc's VmHWM belongs to this program alone.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child_deepness(args) -> None:
    """Runs in its own process: Deepness's segmentation task over the raster, as the plugin runs it."""
    sys.path.insert(0, args.deepness_src)  # where QGIS puts a plugin's folder
    from qgis.core import QgsApplication, QgsProject, QgsRasterLayer

    qgs = QgsApplication([], False)
    qgs.setPrefixPath("/usr", True)
    qgs.initQgis()
    from qgis.PyQt.QtCore import QEventLoop

    start = time.perf_counter()
    from deepness.common.channels_mapping import ChannelsMapping, ImageChannelStandaloneBand
    from deepness.common.processing_overlap import ProcessingOverlap, ProcessingOverlapOptions
    from deepness.common.processing_parameters.map_processing_parameters import ProcessedAreaType
    from deepness.common.processing_parameters.segmentation_parameters import SegmentationParameters
    from deepness.processing.map_processor.map_processing_result import MapProcessingResultSuccess
    from deepness.processing.map_processor.map_processor_segmentation import MapProcessorSegmentation
    from deepness.processing.models.model_base import ModelBase
    from deepness.processing.models.model_types import ModelDefinition, ModelType

    rlayer = QgsRasterLayer(args.raster, "raster")
    if not rlayer.isValid():
        raise SystemExit(f"QGIS cannot open {args.raster}")
    QgsProject.instance().addMapLayer(rlayer)

    # As the dock widget loads a model: its class from model_type, then defaults from metadata.
    model_type = ModelType(ModelBase.get_model_type_from_metadata(args.model))
    model = ModelDefinition.get_definition_for_type(model_type).model_class(args.model)
    batch_size = model.get_model_batch_size() or 1  # the widget's default batch size is 1
    small_segment = model.get_metadata_segmentation_small_segment()
    small_segment = 9 if small_segment is None else small_segment  # widget default: enabled, 9
    threshold = model.get_metadata_segmentation_threshold()
    mapping = ChannelsMapping()  # what the channel-mapping widget sets up for an RGB raster
    mapping.set_image_channels([ImageChannelStandaloneBand(band_number=i + 1, name=n)
                                for i, n in enumerate(("red", "green", "blue"))])
    mapping.set_number_of_model_inputs_same_as_image_channels()
    params = SegmentationParameters(
        resolution_cm_per_px=model.get_metadata_resolution(),
        tile_size_px=model.get_metadata_tile_size(),
        batch_size=batch_size,
        local_cache=False,
        processed_area_type=ProcessedAreaType.ENTIRE_LAYER,
        mask_layer_id=None,
        input_layer_id=rlayer.id(),
        input_channels_mapping=mapping,
        processing_overlap=ProcessingOverlap(ProcessingOverlapOptions.OVERLAP_IN_PERCENT,
                                             percentage=model.get_metadata_tiles_overlap()),
        postprocessing_dilate_erode_size=small_segment,
        pixel_classification__probability_threshold=0.5 if threshold is None else threshold,
        model=model,
    )

    class _Canvas:  # the canvas is only read for "visible part" processing
        pass

    processor = MapProcessorSegmentation(rlayer=rlayer, vlayer_mask=None, map_canvas=_Canvas(), params=params)
    results = []
    loop = QEventLoop()

    def on_finished(result):
        results.append(result)
        loop.quit()

    processor.finished_signal.connect(on_finished)
    QgsApplication.taskManager().addTask(processor)
    loop.exec_()
    seconds = time.perf_counter() - start
    result = results[0]
    if not isinstance(result, MapProcessingResultSuccess):
        raise SystemExit(f"Deepness failed: {result.message} {getattr(result, 'exception', '')}")
    img = processor.get_result_img()
    tree_fraction = float((img[0] == 2).mean())
    n_features = sum(layer.featureCount() for layer in QgsProject.instance().mapLayers().values()
                     if layer.type() == layer.VectorLayer)
    print("@@RESULT " + json.dumps({"seconds": seconds, "tiles": processor.x_bins_number * processor.y_bins_number,
                                    "tile_px": params.tile_size_px, "overlap_px": params.processing_overlap_px,
                                    "batch": batch_size, "tree_fraction": tree_fraction,
                                    "features": n_features, "peak_mb": peak_rss_mb()}), flush=True)
    # Leave the way the plugin leaves: results stay in memory until QGIS closes.
    os._exit(0)


def _child_engine(args) -> None:
    """Runs in its own process: ``python -m engine predict`` (the CLI's main), timed from inside."""
    start = time.perf_counter()
    sys.path.insert(0, args.engine_root)  # --engine-root: the checkout under test, e.g. an older commit
    from engine.cli import main

    argv = ["predict", args.raster, "--model", args.model, "--out", args.out, "--quiet"] + args.engine_args
    rc = main(argv)
    seconds = time.perf_counter() - start
    if rc != 0:
        raise SystemExit(rc)
    try:
        from engine.cache.status import cache_status
    except ImportError:  # engines before the layout of issue 11
        from engine.status import cache_status

    status = cache_status(Path(args.out))
    peak = peak_rss_mb()  # before the sanity read below
    print("@@RESULT " + json.dumps({"seconds": seconds, "tiles": status.total, "features": status.features,
                                    "tree_fraction": _engine_tree_fraction(Path(args.out)), "peak_mb": peak}),
          flush=True)


def _engine_tree_fraction(cache: Path) -> float | None:
    """Share of pixels with confidence >= 0.5, read from the mosaic at a reduced size (a sanity check)."""
    vrt = cache / "confidence.vrt"
    if not vrt.is_file():
        return None
    import rasterio

    with rasterio.open(vrt) as src:
        scale = max(1, max(src.width, src.height) // 2048)
        band = src.read(1, out_shape=(src.height // scale, src.width // scale))
    return float((band >= 128).mean())


def run_child(cmd: list[str], env: dict, log: Path) -> dict:
    """Run one side in its own process; its result line, peak RSS (its own ru_maxrss) and wall time."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    text = log.read_text(errors="replace")
    lines = [ln for ln in text.splitlines() if ln.startswith("@@RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(text.strip().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(cmd[:4])}... failed (exit {proc.returncode}); log {log}:\n{tail}")
    result = json.loads(lines[-1][len("@@RESULT "):])
    result["wall_s"] = wall
    # The child's own peak (VmHWM); ru_maxrss would include this parent's peak (kept across exec).
    result["maxrss_mb"] = result.pop("peak_mb", usage.ru_maxrss / 1024)
    result["cpu_s"] = usage.ru_utime + usage.ru_stime  # the whole child, start-up included
    return result


# --------------------------------------------------------------------------- orchestration

def find_deepness(arg: str | None) -> Path | None:
    """The folder holding the ``deepness`` package (``src/`` of a checkout), or None."""
    raw = arg or os.environ.get("TCD_DEEPNESS_DIR")
    if not raw:
        return None
    base = Path(raw).expanduser()
    for candidate in (base / "src", base, base.parent):
        if (candidate / "deepness" / "processing" / "map_processor").is_dir():
            return candidate.resolve()
    return None


def _median(values):
    return statistics.median(values) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deepness", default=None,
                        help="checkout of PUTvision/qgis-plugin-deepness 0.6.5 (or set TCD_DEEPNESS_DIR)")
    parser.add_argument("--deepness-deps", default=None,
                        help="extra folder on Deepness's PYTHONPATH (e.g. holding opencv-python-headless)")
    parser.add_argument("--big", action="store_true", help="also run on a 16384^2 raster (268 MP)")
    parser.add_argument("--size", type=int, default=4096, help="edge of the base raster in pixels")
    parser.add_argument("--models", default="segformer,green", help="comma-separated: segformer, green")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each side (median printed)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "tcd_side_by_side",
                        help="where models, rasters and caches go (models and rasters are reused)")
    parser.add_argument("--engine-args", default="", help="extra arguments for engine predict, e.g. '--threads 2'")
    parser.add_argument("--engine-root", type=Path, default=ROOT,
                        help="folder holding the engine package to run (default: this checkout)")
    parser.add_argument("--no-deepness", action="store_true", help="run the engine side only")
    parser.add_argument("--json", type=Path, default=None, help="also write all figures to this file")
    # child modes (internal)
    parser.add_argument("--child", choices=("deepness", "engine"), help=argparse.SUPPRESS)
    parser.add_argument("--raster", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--deepness-src", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child == "deepness":
        _child_deepness(args)
        return 0
    if args.child == "engine":
        args.engine_args = args.engine_args.split()
        args.engine_root = str(args.engine_root)
        _child_engine(args)
        return 0

    deepness_src = None
    if not args.no_deepness:
        deepness_src = find_deepness(args.deepness)
        if deepness_src is None:
            print("Deepness not found: check out PUTvision/qgis-plugin-deepness at tag 0.6.5 and pass its folder "
                  "with --deepness DIR or TCD_DEEPNESS_DIR (or use --no-deepness).", file=sys.stderr)
            return 2
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONUNBUFFERED="1")
    deepness_env = dict(env)
    if deepness_src is not None:
        deps = [args.deepness_deps] if args.deepness_deps else [
            str(p) for p in (deepness_src.parent / "pydeps", deepness_src / "pydeps") if p.is_dir()]
        deepness_env["PYTHONPATH"] = os.pathsep.join([str(deepness_src), *deps, env.get("PYTHONPATH", "")])
        probe = subprocess.run([sys.executable, "-c", "import cv2"], env=deepness_env, capture_output=True)
        if probe.returncode != 0:
            print("Deepness needs OpenCV, which this Python lacks: pip install --target DIR "
                  "'opencv-python-headless<4.11' and pass --deepness-deps DIR.", file=sys.stderr)
            return 2

    engine_root = args.engine_root.resolve()
    models = {}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        path = work / f"{name}_v{MODEL_VERSION}.onnx"
        if not path.is_file():
            print(f"building the {name} model ...", flush=True)
            {"segformer": build_segformer, "green": build_green}[name](path)
        models[name] = path
    sizes = [args.size] + ([16384] if args.big else [])
    rasters = {}
    for i, size in enumerate(sizes):
        path = work / f"forest_{size}.tif"
        if not path.is_file():
            print(f"writing a {size}x{size} raster ...", flush=True)
            make_raster(path, size, seed=10 + i)
        rasters[size] = path

    rows = []
    me = [sys.executable, str(Path(__file__).resolve())]
    for size, raster in rasters.items():
        for name, model in models.items():
            runs = {"deepness": [], "engine": []}
            for rep in range(args.repeat):
                order = ["deepness", "engine"] if rep % 2 == 0 else ["engine", "deepness"]
                for side in order:
                    if side == "deepness" and deepness_src is None:
                        continue
                    log = work / f"log_{side}_{name}_{size}.txt"
                    if side == "deepness":
                        cmd = me + ["--child", "deepness", "--raster", str(raster), "--model", str(model),
                                    "--deepness-src", str(deepness_src)]
                        runs[side].append(run_child(cmd, deepness_env, log))
                    else:
                        cache = work / f"cache_{name}_{size}"
                        shutil.rmtree(cache, ignore_errors=True)
                        cmd = me + ["--child", "engine", "--raster", str(raster), "--model", str(model),
                                    "--out", str(cache), f"--engine-args={args.engine_args}",
                                    "--engine-root", str(engine_root)]
                        runs[side].append(run_child(cmd, env, log))
                    r = runs[side][-1]
                    print(f"  {size}^2 {name:9s} {side:8s} {r['seconds']:7.1f} s  {r['maxrss_mb']:6.0f} MB  "
                          f"{r['tiles']} tiles", flush=True)
            rows.append((size, name, runs))

    print()
    print(f"Side by side ({os.cpu_count()} cores; s = time from model load to result inside each child, "
          f"cpu = the child's CPU seconds, MB = its peak RSS; median of {args.repeat})")
    header = (f"{'raster':>8} {'model':10} | {'Deepness s':>10} {'cpu':>6} {'MP/s':>6} {'MB':>6} {'tiles':>5} | "
              f"{'engine s':>8} {'cpu':>6} {'MP/s':>6} {'MB':>6} {'tiles':>5} | {'speed ratio':>11} {'cpu ratio':>9}")
    print(header)
    print("-" * len(header))
    figures = []
    for size, name, runs in rows:
        mp = size * size / 1e6
        d, e = runs["deepness"], runs["engine"]
        ds, es = _median([r["seconds"] for r in d]), _median([r["seconds"] for r in e])
        dc, ec = _median([r["cpu_s"] for r in d]), _median([r["cpu_s"] for r in e])
        dm, em = _median([r["maxrss_mb"] for r in d]), _median([r["maxrss_mb"] for r in e])
        ratio = ds / es if d else float("nan")
        cpu_ratio = dc / ec if d else float("nan")
        d_tiles = d[0]["tiles"] if d else "-"
        print(f"{size:>7}² {name:10} | {ds:10.1f} {dc:6.1f} {mp / ds:6.2f} {dm:6.0f} {d_tiles:>5} | "
              f"{es:8.1f} {ec:6.1f} {mp / es:6.2f} {em:6.0f} {e[0]['tiles']:>5} | {ratio:10.2f}x {cpu_ratio:8.2f}x")
        figures.append({"size": size, "model": name, "deepness": d, "engine": e, "speed_ratio": ratio,
                        "cpu_ratio": cpu_ratio})
    print()
    print("Ratios are Deepness/engine: > 1 means the engine is faster (cheaper). "
          "Whole child wall time (incl. Python/QGIS start), tree fraction (sanity: both sides should be close):")
    for size, name, runs in rows:
        parts = []
        for side in ("deepness", "engine"):
            for r in runs[side][:1]:
                tf = r.get("tree_fraction")
                parts.append(f"{side} wall {r['wall_s']:.1f} s, trees {tf if tf is None else round(tf, 3)}, "
                             f"{r.get('features')} polygons")
        print(f"  {size}² {name}: " + "; ".join(parts))
    if len(sizes) > 1:
        for name in models:
            mems = {size: _median([r["maxrss_mb"] for r in runs["engine"]]) for size, n, runs in rows if n == name}
            dmems = {size: _median([r["maxrss_mb"] for r in runs["deepness"]]) for size, n, runs in rows if n == name}
            lo, hi = min(sizes), max(sizes)
            line = f"  memory growth {lo}² -> {hi}², {name}: engine {(mems[hi] / mems[lo] - 1) * 100:+.0f} %"
            if dmems.get(lo) == dmems.get(lo):  # not NaN
                line += f", Deepness {(dmems[hi] / dmems[lo] - 1) * 100:+.0f} %"
            print(line)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
