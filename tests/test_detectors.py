"""Detectors: Deepness's YOLO layouts decoded exactly, boxes turned into crowns, each box stored once."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
import shapely
from onnx import TensorProto, helper, numpy_helper
from scipy import ndimage

from engine import Job, predict
from engine.errors import CacheMismatchError, InputError
from engine.models.kinds import Instances
from engine.models.runner import OnnxModel
from engine.models.spec import spec_from_metadata
from engine.postprocess.boxes import box_corners, split_canopy, tile_box_crowns
from engine.postprocess.vectorise import CrownGrid
from engine.tiling.grid import Tile
from tests.rasters import assert_same_cache, read_crowns, snapshot, squares_image, write_raster


def detector_model(path, rows: np.ndarray, *, det_type: str | None = None, classes=("tree", "shrub"), tile: int = 160,
                   overlap: int = 32, det_conf: float = 0.5, det_iou: float = 0.5, extra: dict | None = None):
    """A Deepness detector whose first output is ``rows`` (batch added) whatever the tile (plus 0 * the tile)."""
    out = np.asarray(rows, np.float32)[None]
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, tile, tile])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, list(out.shape))
    nodes = [helper.make_node("ReduceMean", ["image"], ["mean"], keepdims=0),
             helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
             helper.make_node("Add", ["rows", "nothing"], ["output"])]
    inits = [numpy_helper.from_array(out, "rows"), numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    model = helper.make_model(helper.make_graph(nodes, "detector", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {"model_type": "Detector", "class_names": {str(i): n for i, n in enumerate(classes)},
            "resolution": 10, "tiles_overlap": round(100 * overlap / tile), "det_conf": det_conf,
            "det_iou_thresh": det_iou, **(extra or {})}
    if det_type is not None:
        meta["det_type"] = det_type
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.save(model, str(path))
    return path


def decode(path):
    model = OnnxModel(path)
    decoded = model.run(np.zeros((3,) + (model.spec.fixed_input_px,) * 2, np.uint8))
    return model.spec.kind.select(model.spec, decoded)


# cx, cy, w, h, objectness, p(tree), p(shrub)
V5_ROWS = [
    [50, 50, 20, 10, 0.9, 0.2, 0.8],  # kept: (40, 45, 60, 55), shrub, 0.9
    [52, 51, 20, 10, 0.8, 0.7, 0.3],  # IoU with the first >= 0.5: suppressed
    [120, 80, 30, 30, 0.6, 0.9, 0.1],  # kept: (105, 65, 135, 95), tree, 0.6
    [20, 120, 10, 10, 0.3, 0.9, 0.9],  # objectness below 0.5: dropped
    [10.7, 10.7, 5, 5, 0.55, 0.6, 0.4],  # kept, corners truncated: (8.2, 8.2, 13.2, 13.2) -> (8, 8, 13, 13)
]


def test_yolo_v5_v7_default(tmp_path):
    boxes, scores, classes = decode(detector_model(tmp_path / "m.onnx", V5_ROWS))
    assert boxes[:, :4].tolist() == [[40, 45, 60, 55], [105, 65, 135, 95], [8, 8, 13, 13]]
    np.testing.assert_allclose(scores, [0.9, 0.6, 0.55], rtol=1e-6)
    assert classes.tolist() == [1, 0, 0] and np.all(boxes[:, 4] == 0)


def test_yolo_v6_ranks_by_objectness_and_scores_by_class(tmp_path):
    rows = [[50, 50, 20, 20, 0.9, 0.6, 0.1],  # best objectness: kept, score 0.6
            [51, 50, 20, 20, 0.5, 0.95, 0.0],  # better class probability but suppressed by the first
            [120, 120, 16, 16, 0.99, 0.2, 0.4]]  # objectness high, class probabilities below 0.5: dropped
    boxes, scores, classes = decode(detector_model(tmp_path / "m.onnx", rows, det_type="YOLO_v6"))
    assert boxes[:, :4].tolist() == [[40, 40, 60, 60]]
    np.testing.assert_allclose(scores, [0.6], rtol=1e-6)
    assert classes.tolist() == [0]


@pytest.mark.parametrize("det_type", ["YOLO_v9", "YOLO_Ultralytics"])
def test_yolo_transposed_layouts(tmp_path, det_type):
    rows = np.array([[50, 50, 20, 10, 0.2, 0.8],  # kept, shrub 0.8
                     [52, 51, 20, 10, 0.7, 0.3],  # suppressed
                     [120, 80, 30, 30, 0.9, 0.1],  # kept first, tree 0.9
                     [20, 120, 10, 10, 0.4, 0.45]])  # dropped
    boxes, scores, classes = decode(detector_model(tmp_path / "m.onnx", rows.T, det_type=det_type))
    assert boxes[:, :4].tolist() == [[105, 65, 135, 95], [40, 45, 60, 55]]
    np.testing.assert_allclose(scores, [0.9, 0.8], rtol=1e-6)
    assert classes.tolist() == [0, 1]


def test_yolo_ultralytics_oriented_boxes(tmp_path):
    rows = np.array([[60, 40, 10, 30, 0.9, 0.1, 0.2],  # w < h: sides swapped, angle 0.2 + pi/2
                     [60, 41, 30, 10, 0.8, 0.0, 1.8],  # the same box: suppressed
                     [120, 120, 40, 20, 0.1, 0.7, 0.5]])  # kept, shrub, angle 0.5
    boxes, scores, classes = decode(detector_model(tmp_path / "m.onnx", rows.T, det_type="YOLO_Ultralytics_obb"))
    assert boxes[:, :4].tolist() == [[45, 35, 75, 45], [100, 110, 140, 130]]
    np.testing.assert_allclose(boxes[:, 4], [(0.2 + math.pi / 2) % math.pi, 0.5], rtol=1e-6)
    np.testing.assert_allclose(scores, [0.9, 0.7], rtol=1e-6)
    assert classes.tolist() == [0, 1]
    corners = box_corners(boxes[:1])[0]
    # The long side (30 px) now runs along the box's rotated x axis: close to the image's y axis.
    assert np.linalg.norm(corners[2] - corners[1]) == pytest.approx(30)
    assert abs(corners[2, 1] - corners[1, 1]) > 29


def test_unknown_layout_and_class_count_are_refused(tmp_path):
    from engine.errors import ModelError

    with pytest.raises(ModelError, match="det_type"):
        decode(detector_model(tmp_path / "a.onnx", V5_ROWS, det_type="YOLO_v99"))
    with pytest.raises(ModelError, match="classes"):
        decode(detector_model(tmp_path / "b.onnx", V5_ROWS, classes=("tree",)))


def _tile(size=100, core=(0, 0, 100, 100)):
    return Tile(1, core, (0.1, 0.0, 500000.0, 0.0, -0.1, 6000000.0), (0, 0))


def _instances(boxes, scores, labels=None, shape=(100, 100)):
    boxes = np.asarray(boxes, float)
    return Instances(np.zeros(shape, np.int32) if labels is None else labels,
                     np.concatenate([[0.0], scores]), np.zeros(len(boxes) + 1, np.int64),
                     boxes=np.concatenate([np.zeros((1, 5)), boxes]))


GRID = CrownGrid((0.1, 0.0, 500000.0, 0.0, -0.1, 6000000.0))


def _spec(geometry="crowns"):
    from dataclasses import replace

    spec = spec_from_metadata({"model_type": '"Detector"', "class_names": '["tree"]'})
    return replace(spec, box_geometry=geometry)


def test_ellipses_boxes_and_box_attributes_in_source_crs():
    boxes = [[10, 20, 50, 40, 0], [40, 60, 140, 100, 0], [95, 5, 115, 15, 0]]  # the last centred outside the core
    inst = _instances(boxes, [0.9, 0.8, 0.7])
    tile = _tile(core=(0, 0, 100, 100))
    ellipses = tile_box_crowns(_spec(), inst, tile, GRID)
    rects = tile_box_crowns(_spec("boxes"), inst, tile, GRID)
    assert len(ellipses) == len(rects) == 2  # the third box's centre (105, 10) is another tile's
    first = shapely.from_wkb(ellipses[0].wkb)
    assert first.area == pytest.approx(math.pi * 2.0 * 1.0, rel=0.01)  # 4 m x 2 m box at 0.1 m
    assert ellipses[0].attributes["box_xmin"] == pytest.approx(500001.0)
    assert ellipses[0].attributes["box_ymax"] == pytest.approx(5999998.0)
    assert ellipses[0].attributes["box_xmax"] == pytest.approx(500005.0)
    assert ellipses[0].attributes["box_ymin"] == pytest.approx(5999996.0)
    # A box reaching past the tile (x up to 140 px) is kept whole, not cut.
    second = shapely.from_wkb(rects[1].wkb)
    assert second.bounds == pytest.approx((500004.0, 5999990.0, 500014.0, 5999994.0))
    assert rects[1].attributes["area_m2"] == pytest.approx(40.0)
    assert ellipses[1].score == pytest.approx(0.8)


def test_canopy_split_between_overlapping_boxes():
    yy, xx = np.mgrid[0:100, 0:100] + 0.5
    canopy = np.zeros((100, 100), np.float32)
    canopy[(xx - 30) ** 2 + (yy - 50) ** 2 < 15 ** 2] = 0.9
    canopy[(xx - 55) ** 2 + (yy - 50) ** 2 < 12 ** 2] = 0.8
    boxes = np.array([[15, 35, 45, 65, 0], [43, 38, 67, 62, 0], [80, 80, 95, 95, 0]], float)
    labels = split_canopy(canopy, boxes, 0.5)
    assert set(np.unique(labels)) == {0, 1, 2}  # the third box holds no canopy: no region, an ellipse later
    # Each box's region lies inside its box, and the pixels both boxes hold are split, not shared.
    for i, (x0, y0, x1, y1, _) in enumerate(boxes[:2]):
        rr, cc = np.nonzero(labels == i + 1)
        assert cc.min() >= x0 and cc.max() < x1 and rr.min() >= y0 and rr.max() < y1
    assert labels[50, 30] == 1 and labels[50, 60] == 2
    crowns = tile_box_crowns(_spec(), _instances(boxes, [0.9, 0.8, 0.7], labels), _tile(), GRID)
    areas = [c.attributes["area_m2"] for c in crowns]
    assert areas[0] < math.pi * 1.5**2 * 1.05 and areas[2] == pytest.approx(math.pi * 0.75**2, rel=0.02)


def test_crowns_of_overlapping_boxes_are_cut_the_better_box_keeping_the_ground():
    # Two ellipses overlapping by about a fifth, and a third box nearly inside the first (the same tree).
    boxes = [[10, 10, 50, 50, 0], [40, 10, 80, 50, 0], [12, 12, 46, 48, 0]]
    ellipses = tile_box_crowns(_spec(), _instances(boxes, [0.9, 0.8, 0.7]), _tile(), GRID)
    assert [c.score for c in ellipses] == pytest.approx([0.9, 0.8])
    first, second = (shapely.from_wkb(c.wkb) for c in ellipses)
    assert first.area == pytest.approx(math.pi * 2.0**2, rel=0.01)  # the better box's ellipse, whole
    assert shapely.intersection(first, second).area < 1e-6
    assert second.area < math.pi * 2.0**2 * 0.95
    assert ellipses[1].attributes["area_m2"] == pytest.approx(second.area, abs=1e-3)
    # Boxes stored as boxes stay whole: they overlap as the detector drew them.
    rects = [shapely.from_wkb(c.wkb) for c in tile_box_crowns(_spec("boxes"), _instances(boxes, [0.9, 0.8, 0.7]),
                                                               _tile(), GRID)]
    assert len(rects) == 3 and shapely.intersection(rects[0], rects[1]).area == pytest.approx(4.0)


class SquareDetector(OnnxModel):
    """The engine's model class, its run() replaced by a detector of bright squares (reported as YOLO v5 rows).

    A square cut by the tile's edge is reported as the part the tile sees, as a real
    detector would see it.
    """

    def run(self, raw):
        labels, _ = ndimage.label(raw[0] > 128)
        rows = [[(s[1].start + s[1].stop) / 2, (s[0].start + s[0].stop) / 2, s[1].stop - s[1].start,
                 s[0].stop - s[0].start, 0.9, 0.9, 0.1] for s in ndimage.find_objects(labels)]
        return {"rows": np.asarray(rows, np.float32).reshape(-1, 7), "det_type": "YOLO_v5_or_v7_default"}


SQUARES = [(10, 10, 12), (58, 40, 14), (150, 58, 10), (90, 150, 16), (180, 190, 12), (240, 120, 8), (118, 118, 14)]


@pytest.fixture
def square_scene(tmp_path, monkeypatch):
    import engine.run.predict as run_predict

    monkeypatch.setattr(run_predict, "OnnxModel", SquareDetector)
    image = write_raster(tmp_path / "squares.tif", squares_image(260, 250, SQUARES))
    model = detector_model(tmp_path / "det.onnx", V5_ROWS, tile=64, overlap=32)
    return image, model


def test_boxes_smaller_than_the_overlap_are_stored_once_across_seams(square_scene, tmp_path):
    image, model = square_scene
    result = predict(Job(image=image, cache_dir=tmp_path / "cache", model=model, box_geometry="boxes"))
    assert result.total > 9  # 64 px tiles, 32 px overlap: many seams cross the squares
    crowns = read_crowns(tmp_path / "cache")
    found = sorted((round((c["box_xmin"] - 500000.0) / 0.1), round((6000000.0 - c["box_ymax"]) / 0.1),
                    round((c["box_xmax"] - c["box_xmin"]) / 0.1)) for c in crowns)
    assert found == sorted((x, y, s) for x, y, s in SQUARES)


@pytest.mark.usefixtures("per_tile_commits")
def test_detector_cache_resumes_to_the_uninterrupted_result(square_scene, tmp_path):
    image, model = square_scene
    whole = tmp_path / "whole"
    predict(Job(image=image, cache_dir=whole, model=model))
    parts = tmp_path / "parts"
    committed = []
    first = predict(Job(image=image, cache_dir=parts, model=model), progress=lambda p: committed.append(p.done),
                    cancelled=lambda: len(committed) > 4)
    assert first.state == "cancelled" and 0 < first.done < first.total
    assert predict(Job(image=image, cache_dir=parts, model=model)).state == "complete"
    assert_same_cache(snapshot(whole), snapshot(parts))


def test_thresholds_and_geometry_are_in_the_fingerprint(square_scene, tmp_path):
    image, model = square_scene
    cache = tmp_path / "cache"
    predict(Job(image=image, cache_dir=cache, model=model, det_conf=0.4))
    with pytest.raises(CacheMismatchError) as err:
        predict(Job(image=image, cache_dir=cache, model=model, det_conf=0.6))
    assert "score threshold" in err.value.differences
    with pytest.raises(CacheMismatchError) as err:
        predict(Job(image=image, cache_dir=cache, model=model, det_conf=0.4, box_geometry="boxes"))
    assert "box geometry" in err.value.differences
    header = json.loads((cache / "tiles.jsonl").read_text().splitlines()[0])
    settings = header["fingerprints"]["settings"]
    assert (settings["det_conf"], settings["det_iou_thresh"], settings["box_geometry"]) == (0.4, 0.5, "crowns")


def test_detector_settings_are_refused_for_other_models(raster_path, model_path, tmp_path):
    with pytest.raises(InputError, match="detection models only"):
        predict(Job(image=raster_path, cache_dir=tmp_path / "c", model=model_path, det_conf=0.3))
    with pytest.raises(InputError, match="between 0 and 1"):
        Job(image=raster_path, cache_dir=tmp_path / "c", det_iou_thresh=1.5)


class LooseSquareDetector(SquareDetector):
    """Boxes 4 px wider than the squares on each side, and the squares as the canopy inside them."""

    def run(self, raw):
        decoded = super().run(raw)
        decoded["rows"][:, 2:4] += 8
        decoded["canopy"] = (raw[0] > 128).astype(np.float32)
        return decoded


def test_cli_predicts_with_detector_choices_and_evaluate_scores_the_boxes(square_scene, tmp_path, capsys,
                                                                         monkeypatch):
    import engine.run.predict as run_predict
    from engine.cli import main

    monkeypatch.setattr(run_predict, "OnnxModel", LooseSquareDetector)
    image, model = square_scene
    cache = tmp_path / "cache"
    assert main(["predict", str(image), "--model", str(model), "--out", str(cache), "--det-conf", "0.8",
                 "--det-iou", "0.3", "--geometry", "crowns", "--quiet"]) == 0
    settings = json.loads((cache / "tiles.jsonl").read_text().splitlines()[0])["fingerprints"]["settings"]
    assert (settings["det_conf"], settings["det_iou_thresh"]) == (0.8, 0.3)
    truth = tmp_path / "truth.csv"
    truth.write_text("image_path,xmin,ymin,xmax,ymax,label\n" + "".join(
        f"squares.tif,{x - 4},{y - 4},{x + s + 4},{y + s + 4},Tree\n" for x, y, s in SQUARES[:-1]))
    crowns = read_crowns(cache)
    # The crowns are the canopy (the squares), smaller than their boxes ...
    assert sorted(round(c["area_m2"], 2) for c in crowns) == sorted(round((s * 0.1) ** 2, 2) for _, _, s in SQUARES)
    capsys.readouterr()
    assert main(["evaluate", str(cache), "--truth", str(truth), "--iou", "0.99"]) == 0
    # ... and evaluate scores the stored boxes, which match the truth boxes exactly.
    assert "TP 6  FP 1  FN 0" in capsys.readouterr().out
    assert main(["predict", str(image), "--model", str(model), "--out", str(tmp_path / "c2"),
                 "--det-conf", "2"]) == 2
