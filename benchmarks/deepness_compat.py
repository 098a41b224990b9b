"""Deepness's own test models through Deepness and through the engine: classes, names and masks compared.

    .venv/bin/python -m benchmarks.deepness_compat --deepness /path/to/qgis-plugin-deepness [--deepness-deps DIR]

Deepness 0.6.5 (PUTvision/qgis-plugin-deepness; not part of this repository: pass its
checkout with ``--deepness`` or ``TCD_DEEPNESS_DIR``) runs headless as in
``benchmarks/side_by_side.py``: each model of its ``test/data/dummy_model/`` on its
``test/data/dummy_fotomap_small.tif``, with what its own tests pass in (3 cm/px, tile =
the model's input, 20 % overlap) and its dock widget's defaults otherwise (probability
threshold: ``seg_thresh`` or 0.5; small segments: ``seg_small_segment`` or 9 px).
The engine runs ``python -m engine predict`` with the same resolution and overlap.

For every class Deepness draws (background channels aside), the table gives the class
name on each side and the share of the image it covers; our crowns are rasterised
on Deepness's 3 cm grid and the masks' IoU is printed. ``--markdown`` prints the table
for docs/MODELS.md and ``--json`` the figures (tests/test_deepness_compat.py keeps them).
Deepness needs OpenCV (``pip install --target DIR 'opencv-python-headless<4.11'``
without its numpy, then ``--deepness-deps DIR``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESOLUTION_CM = 3
OVERLAP_PCT = 20


def _child_deepness(args) -> None:
    """In its own process: Deepness's map processor for ``args.model``, its class maps saved as .npy."""
    sys.path.insert(0, args.deepness_src)
    from qgis.core import QgsApplication, QgsProject, QgsRasterLayer

    qgs = QgsApplication([], False)
    qgs.setPrefixPath("/usr", True)
    qgs.initQgis()
    from qgis.PyQt.QtCore import QEventLoop

    from deepness.common.channels_mapping import ChannelsMapping, ImageChannelStandaloneBand
    from deepness.common.processing_overlap import ProcessingOverlap, ProcessingOverlapOptions
    from deepness.common.processing_parameters.map_processing_parameters import ProcessedAreaType
    from deepness.common.processing_parameters.segmentation_parameters import SegmentationParameters
    from deepness.processing.map_processor.map_processing_result import MapProcessingResultSuccess
    from deepness.processing.map_processor.map_processor_segmentation import MapProcessorSegmentation
    from deepness.processing.models.segmentor import Segmentor

    rlayer = QgsRasterLayer(args.raster, "raster")
    QgsProject.instance().addMapLayer(rlayer)
    model = Segmentor(args.model)  # Deepness's tests run every one of these as a Segmentor
    small = model.get_metadata_segmentation_small_segment()
    thresh = model.get_metadata_segmentation_threshold()
    mapping = ChannelsMapping()
    mapping.set_image_channels([ImageChannelStandaloneBand(band_number=i + 1, name=n)
                                for i, n in enumerate(("red", "green", "blue"))])
    mapping.set_number_of_model_inputs_same_as_image_channels()
    params = SegmentationParameters(
        resolution_cm_per_px=RESOLUTION_CM, tile_size_px=model.get_input_size_in_pixels()[0],
        batch_size=model.get_model_batch_size() or 1, local_cache=False,
        processed_area_type=ProcessedAreaType.ENTIRE_LAYER, mask_layer_id=None, input_layer_id=rlayer.id(),
        input_channels_mapping=mapping,
        processing_overlap=ProcessingOverlap(ProcessingOverlapOptions.OVERLAP_IN_PERCENT, percentage=OVERLAP_PCT),
        postprocessing_dilate_erode_size=9 if small is None else small,
        pixel_classification__probability_threshold=0.5 if thresh is None else thresh, model=model)

    class _Canvas:
        pass

    processor = MapProcessorSegmentation(rlayer=rlayer, vlayer_mask=None, map_canvas=_Canvas(), params=params)
    results, loop = [], QEventLoop()
    processor.finished_signal.connect(lambda r: (results.append(r), loop.quit()))
    QgsApplication.taskManager().addTask(processor)
    loop.exec_()
    if not isinstance(results[0], MapProcessingResultSuccess):
        print("@@RESULT " + json.dumps({"error": str(results[0].message)}), flush=True)
        os._exit(0)
    img = processor.get_result_img()
    np.save(args.out, img)
    channels = processor._get_indexes_of_model_output_channels_to_create()
    names = [[model.get_channel_name(o, c) for c in range(n)] for o, n in enumerate(channels)]
    extent = processor.base_extent
    print("@@RESULT " + json.dumps({"names": names, "x0": extent.xMinimum(), "y1": extent.yMaximum(),
                                    "overlap_px": params.processing_overlap_px,
                                    "tile_px": params.tile_size_px}), flush=True)
    os._exit(0)


def _result(proc: subprocess.CompletedProcess) -> dict:
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULT "):
            return json.loads(line[len("@@RESULT "):])
    return {"error": (proc.stderr.strip().splitlines() or ["no result"])[-1]}


def _engine(model: Path, raster: Path, out: Path, tile_px: int, overlap_px: int) -> dict:
    from engine.models.runner import OnnxModel

    cmd = [sys.executable, "-m", "engine", "predict", str(raster), "--model", str(model), "--out", str(out),
           "--gsd", str(RESOLUTION_CM / 100), "--tile-size", str(tile_px), "--overlap", str(overlap_px),
           "--quiet", "--overwrite"]
    proc = subprocess.run(["nice", "-n", "10", *cmd], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1].removeprefix("error: ")}
    spec = OnnxModel(model, provider="cpu").spec
    return {"classes": list(spec.class_names), "outputs": list(spec.output_of_class),
            "channels": [c - sum(spec.output_channels[:o]) for c, o in zip(spec.channel_of_class,
                                                                          spec.output_of_class)],
            "maps": [spec.output_channels[o] for o in spec.output_of_class]}


def _our_masks(cache: Path, classes: list[str], shape, x0: float, y1: float) -> dict[str, np.ndarray]:
    import shapely
    from osgeo import ogr
    from rasterio.features import rasterize
    from rasterio.transform import from_origin

    transform = from_origin(x0, y1, RESOLUTION_CM / 100, RESOLUTION_CM / 100)
    by_class: dict[str, list] = {c: [] for c in classes}
    ds = ogr.Open(str(cache / "crowns.shp"))
    for feat in ds.GetLayer():
        by_class[feat.GetField("class")].append(shapely.from_wkb(bytes(feat.GetGeometryRef().ExportToWkb())))
    return {c: rasterize(geoms, out_shape=shape, transform=transform).astype(bool) if geoms
            else np.zeros(shape, bool) for c, geoms in by_class.items()}


def compare(deepness_src: Path, deps: str | None, workdir: Path) -> list[dict]:
    test_data = deepness_src.parent / "test" / "data"
    raster = test_data / "dummy_fotomap_small.tif"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(deepness_src), deps, env.get("PYTHONPATH", "")) if p)
    env.setdefault("QT_QPA_PLATFORM", "offscreen")
    rows = []
    for model in sorted((test_data / "dummy_model").rglob("*.onnx")):
        label = f"{model.parent.name}/{model.name}" if model.parent.name != "dummy_model" else model.name
        npy = workdir / (model.stem + ".npy")
        tile_px = _input_px(model)
        overlap_px = int(tile_px * OVERLAP_PCT / 100 * 2) // 2  # Deepness's percent to pixels
        ours = _engine(model, raster, workdir / model.stem, tile_px, overlap_px)
        if "error" in ours:  # regression and super-resolution: refused; Deepness gives a value raster
            rows.append({"model": label, "deepness": "a value raster", "ours": ours["error"], "classes": [],
                         "folder_left": (workdir / model.stem).exists()})
            continue
        proc = subprocess.run([sys.executable, "-m", "benchmarks.deepness_compat", "--child", "--model", str(model),
                               "--raster", str(raster), "--out", str(npy), "--deepness-src", str(deepness_src)],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        theirs = _result(proc)
        row = {"model": label, "deepness": theirs.get("error"), "ours": ours.get("error"), "classes": []}
        if "error" not in theirs and "error" not in ours:
            img = np.load(npy)
            masks = _our_masks(workdir / model.stem, ours["classes"], img.shape[1:], theirs["x0"], theirs["y1"])
            for name, o, c, maps in zip(ours["classes"], ours["outputs"], ours["channels"], ours["maps"]):
                value = 2 if maps == 1 else c + 1  # Deepness: a one-map output's class is its value 2
                theirs_mask = img[o] == value
                mine = masks[name]
                union = (theirs_mask | mine).sum()
                row["classes"].append({
                    "output": o, "deepness_name": theirs["names"][o][value - 1], "name": name,
                    "deepness_fraction": round(float(theirs_mask.mean()), 4), "fraction": round(float(mine.mean()), 4),
                    "iou": round(float((theirs_mask & mine).sum() / union), 4) if union else 1.0})
        rows.append(row)
    return rows


def _input_px(model: Path) -> int:
    import onnxruntime as ort

    return int(ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).get_inputs()[0].shape[-1])


def agrees(row: dict) -> bool:
    if row["ours"]:
        return row["deepness"] == "a value raster" and not row.get("folder_left")  # refused, as the issue allows
    return all(abs(c["fraction"] - c["deepness_fraction"]) <= 0.01 and c["iou"] >= 0.9 for c in row["classes"])


def markdown(rows: list[dict]) -> str:
    lines = ["| Model | Output: class (Deepness's name) | Deepness: share of image | Ours | IoU | Agree? |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        if row["deepness"] or row["ours"]:
            lines.append(f"| `{row['model']}` | - | {row['deepness'] or 'runs'} | refused: {row['ours']} | - | "
                         f"{'refused, no folder' if agrees(row) else 'no'} |")
            continue
        for c in row["classes"]:
            same = "yes" if abs(c["fraction"] - c["deepness_fraction"]) <= 0.01 and c["iou"] >= 0.9 else "no"
            lines.append(f"| `{row['model']}` | {c['output']}: {c['name']} ({c['deepness_name']}) | "
                         f"{100 * c['deepness_fraction']:.2f} % | {100 * c['fraction']:.2f} % | {c['iou']:.3f} | "
                         f"{same} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deepness", default=os.environ.get("TCD_DEEPNESS_DIR"))
    parser.add_argument("--deepness-deps", default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--raster", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--deepness-src", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child_deepness(args)
        return 0
    if not args.deepness or not (Path(args.deepness) / "src" / "deepness").is_dir():
        print("Deepness not found: pass a checkout of PUTvision/qgis-plugin-deepness 0.6.5 with --deepness DIR "
              "or TCD_DEEPNESS_DIR.", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        rows = compare(Path(args.deepness) / "src", args.deepness_deps, workdir)
    if args.json:
        print(json.dumps(rows, indent=1))
    print(markdown(rows))
    print(f"\n{sum(agrees(r) for r in rows)} of {len(rows)} models agree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
