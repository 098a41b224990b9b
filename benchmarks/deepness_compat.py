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
on Deepness's 3 cm grid and the masks' IoU is printed. The tables are docs/MODELS.md's;
``--json`` prints the figures too (tests/test_deepness_compat.py keeps the shares).
Detectors: Deepness's test data has none (its zoo's files are not in the repository), so
each YOLO layout (``det_type``) is a tiny model made here whose outputs are fixed random
candidates, run by Deepness's ``MapProcessorDetection`` and by the engine on one 160 px
tile; the kept boxes (whole pixels), scores and classes are compared, and for instance
segmentation each box's mask pixels.

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
    from deepness.common.channels_mapping import ChannelsMapping, ImageChannelStandaloneBand
    from deepness.common.processing_overlap import ProcessingOverlap, ProcessingOverlapOptions
    from deepness.common.processing_parameters.map_processing_parameters import ProcessedAreaType
    from deepness.common.processing_parameters.segmentation_parameters import SegmentationParameters
    from deepness.processing.map_processor.map_processing_result import MapProcessingResultSuccess
    from deepness.processing.map_processor.map_processor_segmentation import MapProcessorSegmentation
    from deepness.processing.models.segmentor import Segmentor
    from qgis.PyQt.QtCore import QEventLoop

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


DET_TILE_PX = 160
DET_CLASSES = 2
DET_MASKS = 4


def _child_deepness_detector(args) -> None:
    """In its own process: Deepness's detection map processor; the detections as JSON."""
    sys.path.insert(0, args.deepness_src)
    from qgis.core import QgsApplication, QgsProject, QgsRasterLayer

    qgs = QgsApplication([], False)
    qgs.setPrefixPath("/usr", True)
    qgs.initQgis()
    from deepness.common.channels_mapping import ChannelsMapping, ImageChannelStandaloneBand
    from deepness.common.processing_overlap import ProcessingOverlap, ProcessingOverlapOptions
    from deepness.common.processing_parameters.detection_parameters import DetectionParameters, DetectorType
    from deepness.common.processing_parameters.map_processing_parameters import ProcessedAreaType
    from deepness.processing.map_processor.map_processing_result import MapProcessingResultSuccess
    from deepness.processing.map_processor.map_processor_detection import MapProcessorDetection
    from deepness.processing.models.detector import Detector
    from qgis.PyQt.QtCore import QEventLoop

    rlayer = QgsRasterLayer(args.raster, "raster")
    QgsProject.instance().addMapLayer(rlayer)
    model = Detector(args.model)
    mapping = ChannelsMapping()
    mapping.set_image_channels([ImageChannelStandaloneBand(band_number=i + 1, name=n)
                                for i, n in enumerate(("red", "green", "blue"))])
    mapping.set_number_of_model_inputs_same_as_image_channels()
    params = DetectionParameters(
        resolution_cm_per_px=10, tile_size_px=DET_TILE_PX, batch_size=1, local_cache=False,
        processed_area_type=ProcessedAreaType.ENTIRE_LAYER, mask_layer_id=None, input_layer_id=rlayer.id(),
        input_channels_mapping=mapping,
        processing_overlap=ProcessingOverlap(ProcessingOverlapOptions.OVERLAP_IN_PERCENT, percentage=0),
        model=model, confidence=model.get_metadata_detection_confidence(),
        iou_threshold=model.get_metadata_detection_iou_threshold(),
        detector_type=DetectorType(model.get_detector_type()))

    class _Canvas:
        pass

    processor = MapProcessorDetection(rlayer=rlayer, vlayer_mask=None, map_canvas=_Canvas(), params=params)
    results, loop = [], QEventLoop()
    processor.finished_signal.connect(lambda r: (results.append(r), loop.quit()))
    QgsApplication.taskManager().addTask(processor)
    loop.exec_()
    if not isinstance(results[0], MapProcessingResultSuccess):
        print("@@RESULT " + json.dumps({"error": str(results[0].message)}), flush=True)
        os._exit(0)
    boxes = [{"box": [int(d.bbox.x_min), int(d.bbox.y_min), int(d.bbox.x_max), int(d.bbox.y_max)],
              "rot": float(d.bbox.rot or 0.0), "score": float(d.conf), "class": int(d.clss),
              "mask_px": None if d.mask is None else int(d.mask.sum())} for d in processor.get_all_detections()]
    print("@@RESULT " + json.dumps({"boxes": boxes}), flush=True)
    os._exit(0)


def _detector_outputs(det_type: str, rng) -> dict:
    """Fixed random candidates in ``det_type``'s layout (batch axis included)."""
    n = 40
    xywh = np.column_stack([rng.uniform(20, 140, n), rng.uniform(20, 140, n), rng.uniform(8, 40, n),
                            rng.uniform(8, 40, n)])
    classes = rng.uniform(0, 1, (n, DET_CLASSES))
    if det_type in ("YOLO_v5_or_v7_default", "YOLO_v6"):
        return {"output": np.column_stack([xywh, rng.uniform(0, 1, n), classes])[None]}
    if det_type == "YOLO_Ultralytics_obb":
        return {"output": np.column_stack([xywh, classes, rng.uniform(0, np.pi, n)]).T[None]}
    if det_type == "YOLO_Ultralytics_segmentation":
        protos = rng.normal(0, 3, (1, DET_MASKS, DET_TILE_PX // 4, DET_TILE_PX // 4))
        return {"output0": np.column_stack([xywh, classes, rng.normal(0, 1, (n, DET_MASKS))]).T[None],
                "output1": protos}
    return {"output": np.column_stack([xywh, classes]).T[None]}  # YOLO_v9, YOLO_Ultralytics


def compare_detectors(deepness_src: Path, deps: str | None, workdir: Path) -> list[dict]:
    import rasterio
    from rasterio.transform import from_origin

    sys.path.insert(0, str(ROOT))
    from engine.models.kinds.detector import DET_TYPES, mask_labels
    from tests.onnx_models import constant_outputs_model

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(deepness_src), deps, env.get("PYTHONPATH", "")) if p)
    env.setdefault("QT_QPA_PLATFORM", "offscreen")
    raster = workdir / "detector_tile.tif"
    transform = from_origin(500000.0, 6000000.0, 0.1, 0.1)
    with rasterio.open(raster, "w", driver="GTiff", width=DET_TILE_PX, height=DET_TILE_PX, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=transform) as dst:
        dst.write(np.full((3, DET_TILE_PX, DET_TILE_PX), 100, np.uint8))
    rows = []
    for i, det_type in enumerate(DET_TYPES):
        outputs = _detector_outputs(det_type, np.random.default_rng(i))
        meta = {"model_type": '"Detector"', "det_type": json.dumps(det_type),  # JSON strings, as Deepness reads
                "class_names": {"0": "tree", "1": "shrub"},
                "resolution": 10, "tiles_overlap": 0, "det_conf": 0.5, "det_iou_thresh": 0.4}
        model = constant_outputs_model(workdir / f"{det_type}.onnx", outputs, meta, tile_size_px=DET_TILE_PX)
        proc = subprocess.run([sys.executable, "-m", "benchmarks.deepness_compat", "--child-detector", "--model",
                               str(model), "--raster", str(raster), "--deepness-src", str(deepness_src)],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        theirs = _result(proc)
        cache = workdir / f"{det_type}_tcd"
        cmd = [sys.executable, "-m", "engine", "predict", str(raster), "--model", str(model), "--out", str(cache),
               "--quiet", "--overwrite", "--geometry", "boxes"]
        done = subprocess.run(["nice", "-n", "10", *cmd], cwd=ROOT, capture_output=True, text=True)
        row = {"det_type": det_type, "deepness": theirs.get("error"),
               "ours": done.stderr.strip().splitlines()[-1] if done.returncode else None}
        if not row["deepness"] and not row["ours"]:
            mine = _our_boxes(cache, transform)
            ref = [(tuple(b["box"]), round(b["score"], 5), b["class"]) for b in theirs["boxes"]]
            if det_type == "YOLO_Ultralytics_obb":  # our box columns are the rotated box's envelope: centres
                ref, mine = ([((b[0] + b[2]) / 2, (b[1] + b[3]) / 2, score, c) for b, score, c in boxes]
                             for boxes in (ref, mine))
            row.update(deepness_boxes=len(ref), boxes=len(mine), same=sorted(ref) == sorted(mine))
            if det_type == "YOLO_Ultralytics_segmentation":
                row["mask_px_differ"] = _mask_differences(outputs, theirs["boxes"], mask_labels)
        rows.append(row)
    return rows


def _our_boxes(cache: Path, transform) -> list[tuple]:
    from osgeo import ogr

    inverse = ~transform
    boxes = []
    ds = ogr.Open(str(cache / "crowns.shp"))  # kept: its layer dies with it
    for feat in ds.GetLayer():
        c0, r0 = inverse * (feat.GetField("box_xmin"), feat.GetField("box_ymax"))
        c1, r1 = inverse * (feat.GetField("box_xmax"), feat.GetField("box_ymin"))
        boxes.append(((round(c0), round(r0), round(c1), round(r1)), round(feat.GetField("score"), 5),
                      int(feat.GetField("class_idx"))))
    return boxes


def _mask_differences(outputs: dict, deepness_boxes: list[dict], mask_labels) -> int:
    """Boxes whose mask (engine's mask_labels, one box at a time) has another pixel count than Deepness's."""
    rows = outputs["output0"][0].T
    protos = outputs["output1"][0]
    differ = 0
    for b in deepness_boxes:
        xyxy = np.array(b["box"], float)
        # the candidate this box came from: its truncated corners and score
        cand = [r for r in rows if np.array_equal(np.array([int(r[0] - r[2] / 2), int(r[1] - r[3] / 2),
                                                            int(r[0] + r[2] / 2), int(r[1] + r[3] / 2)]), xyxy)
                and abs(float(np.max(r[4:4 + DET_CLASSES])) - b["score"]) < 1e-6]
        coeffs = np.asarray(cand[0][4 + DET_CLASSES:], float)[None]
        box = np.concatenate([xyxy, [0.0]])[None]
        ones = np.ones((DET_TILE_PX, DET_TILE_PX), bool)
        mine = int((mask_labels(protos, coeffs, box, ones, (DET_TILE_PX, DET_TILE_PX)) > 0).sum())
        differ += mine != b["mask_px"]
    return differ


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


def detector_markdown(rows: list[dict]) -> str:
    lines = ["| `det_type` | Deepness: boxes kept | Ours | Same boxes, scores, classes? |", "|---|---|---|---|"]
    for row in rows:
        if row["deepness"] or row["ours"]:
            lines.append(f"| `{row['det_type']}` | {row['deepness'] or 'runs'} | {row['ours'] or 'runs'} | no |")
            continue
        same = "yes" if row["same"] else "no"
        if "mask_px_differ" in row:
            same += f"; masks: {row['deepness_boxes'] - row['mask_px_differ']} of {row['deepness_boxes']} equal"
        lines.append(f"| `{row['det_type']}` | {row['deepness_boxes']} | {row['boxes']} | {same} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deepness", default=os.environ.get("TCD_DEEPNESS_DIR"))
    parser.add_argument("--deepness-deps", default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-detector", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--raster", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--deepness-src", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child_deepness(args)
        return 0
    if args.child_detector:
        _child_deepness_detector(args)
        return 0
    if not args.deepness or not (Path(args.deepness) / "src" / "deepness").is_dir():
        print("Deepness not found: pass a checkout of PUTvision/qgis-plugin-deepness 0.6.5 with --deepness DIR "
              "or TCD_DEEPNESS_DIR.", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        rows = compare(Path(args.deepness) / "src", args.deepness_deps, workdir)
        detectors = compare_detectors(Path(args.deepness) / "src", args.deepness_deps, workdir)
    if args.json:
        print(json.dumps({"segmentation": rows, "detectors": detectors}, indent=1))
    print(markdown(rows))
    print(f"\n{sum(agrees(r) for r in rows)} of {len(rows)} models agree\n")
    print(detector_markdown(detectors))
    return 0


if __name__ == "__main__":
    sys.exit(main())
