"""engine.evaluate: annotation files, IoU, one-to-one matching, scores; the evaluate CLI on a real cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.errors import InputError
from engine.evaluate import (
    iou_matrix,
    label_boxes,
    map_boxes_to_pixels,
    match_boxes,
    read_boxes,
    score_boxes,
)

CSV_TEXT = """image_path,xmin,ymin,xmax,ymax,label
plot_a.tif,10,20,30,50,Tree
plot_b.tif,0,0,5,5,Tree
plot_a.tif,100,100,120,130,Tree
"""

VOC_TEXT = """<annotation>
  <filename>plot_a.png</filename>
  <object><name>Tree</name><bndbox><xmin>10</xmin><ymin>20</ymin><xmax>30</xmax><ymax>50</ymax></bndbox></object>
  <object><name>Tree</name><bndbox><xmin>100</xmin><ymin>100</ymin><xmax>120</xmax><ymax>130</ymax></bndbox></object>
</annotation>
"""


def test_csv_and_voc_files_give_the_same_boxes(tmp_path):
    (tmp_path / "a.csv").write_text(CSV_TEXT)
    (tmp_path / "a.xml").write_text(VOC_TEXT)
    from_csv = read_boxes(tmp_path / "a.csv", image_name="plot_a.tif")
    from_xml = read_boxes(tmp_path / "a.xml")
    np.testing.assert_array_equal(from_csv, [[10, 20, 30, 50], [100, 100, 120, 130]])
    np.testing.assert_array_equal(from_xml, from_csv)
    # The PNG twin of a GeoTIFF selects the same rows; no image name keeps all rows.
    assert len(read_boxes(tmp_path / "a.csv", image_name="plot_a.png")) == 2
    assert len(read_boxes(tmp_path / "a.csv")) == 3


def test_bad_annotation_files_raise_input_errors(tmp_path):
    (tmp_path / "bad.csv").write_text("image_path,x,y\na.tif,1,2\n")
    (tmp_path / "bad.xml").write_text("<annotation><object>")
    (tmp_path / "flipped.csv").write_text("image_path,xmin,ymin,xmax,ymax,label\na.tif,30,20,10,50,Tree\n")
    for name in ("bad.csv", "bad.xml", "flipped.csv"):
        with pytest.raises(InputError):
            read_boxes(tmp_path / name)
    with pytest.raises(InputError):
        read_boxes(tmp_path / "boxes.json")
    (tmp_path / "a.csv").write_text(CSV_TEXT)
    with pytest.raises(InputError, match="no boxes for plot_c.tif"):
        read_boxes(tmp_path / "a.csv", image_name="plot_c.tif")


def test_iou_of_constructed_boxes():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [10, 10, 20, 20], [0, 0, 5, 5]])
    np.testing.assert_allclose(iou_matrix(a, b), [[1.0, 50 / 150, 0.0, 0.25]])


def test_matching_is_one_to_one_and_maximises_iou():
    truth = np.array([[0, 0, 10, 10], [8, 0, 18, 10]])
    # The big prediction overlaps both truths; greedily giving it truth 0 would leave the
    # exact prediction of truth 0 unmatched. The assignment gives each its best partner.
    pred = np.array([[0, 0, 17, 10], [0, 0, 10, 10]])
    pairs = {tuple(p) for p in match_boxes(pred, truth, 0.4)}
    assert pairs == {(1, 0), (0, 1)}
    # Two predictions of one tree: one TP, one FP.
    scores = score_boxes(np.array([[0, 0, 10, 10], [1, 1, 10, 10]]), truth[:1], 0.4)
    assert (scores.tp, scores.fp, scores.fn) == (1, 1, 0)


def test_overlap_below_threshold_does_not_match():
    truth = np.array([[0, 0, 10, 10]])
    pred = np.array([[6, 0, 16, 10]])  # IoU 40/160 = 0.25
    assert len(match_boxes(pred, truth, 0.4)) == 0
    scores = score_boxes(pred, truth, 0.4)
    assert (scores.tp, scores.fp, scores.fn) == (0, 1, 1)
    assert scores.f1 == 0.0
    assert score_boxes(pred, truth, 0.2).f1 == 1.0


def test_scores_rates():
    truth = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]])
    pred = np.array([[0, 0, 10, 10], [21, 0, 31, 10], [60, 0, 70, 10], [80, 0, 90, 10]])
    scores = score_boxes(pred, truth)
    assert (scores.tp, scores.fp, scores.fn) == (2, 2, 1)
    assert scores.precision == pytest.approx(0.5)
    assert scores.recall == pytest.approx(2 / 3)
    assert scores.f1 == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    empty = score_boxes(np.zeros((0, 4)), np.zeros((0, 4)))
    assert (empty.tp, empty.fp, empty.fn, empty.f1) == (0, 0, 0, 0.0)


def test_label_boxes_use_pixel_edges():
    labels = np.zeros((10, 12), np.int32)
    labels[3, 5] = 1
    labels[6:9, 0:4] = 3  # label 2 absent
    np.testing.assert_array_equal(label_boxes(labels), [[5, 3, 6, 4], [0, 6, 4, 9]])


def test_map_boxes_to_pixels_inverts_a_north_up_transform():
    from affine import Affine

    transform = Affine(0.1, 0, 404211.9, 0, -0.1, 3285142.9)
    pixel_box = np.array([[10, 20, 30, 50]], np.float64)
    x0, y0 = transform * (10, 20)
    x1, y1 = transform * (30, 50)
    crs_box = np.array([[min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]])
    np.testing.assert_allclose(map_boxes_to_pixels(crs_box, ~transform), pixel_box, atol=1e-6)


def test_cli_scores_a_real_cache(tmp_path, capsys):
    """Predict a raster whose band 1 paints two crowns, then evaluate against right and wrong boxes."""
    import rasterio
    from rasterio.transform import from_origin

    from engine.cli import main
    from tests.onnx_models import canopy_centres_model

    size = 96
    canopy = np.zeros((size, size), np.uint8)
    centres = np.zeros((size, size), np.uint8)
    for x0, y0 in ((10, 10), (60, 60)):  # clear of the 64 px tiles' seams
        canopy[y0 : y0 + 20, x0 : x0 + 20] = 255
        centres[y0 + 10, x0 + 10] = 255
    image = tmp_path / "plot.tif"
    with rasterio.open(image, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                       crs="EPSG:32617", transform=from_origin(404000.0, 3285000.0, 0.1, 0.1)) as dst:
        dst.write(np.stack([canopy, centres, np.zeros_like(canopy)]))
    model = canopy_centres_model(tmp_path / "cc.onnx", tile_size_px=64, overlap_px=16)
    (tmp_path / "right.csv").write_text(
        "image_path,xmin,ymin,xmax,ymax,label\nplot.tif,10,10,30,30,Tree\nplot.tif,60,60,80,80,Tree\n")
    (tmp_path / "wrong.csv").write_text("image_path,xmin,ymin,xmax,ymax,label\nplot.tif,70,0,90,20,Tree\n")

    assert main(["evaluate", str(image), "--truth", str(tmp_path / "right.csv"), "--model", str(model)]) == 0
    out = capsys.readouterr().out
    assert "F1        1.000" in out and "TP 2  FP 0  FN 0" in out

    cache = tmp_path / "cache"
    from engine.run.predict import predict
    from engine.settings import Job

    predict(Job(image=image, cache_dir=cache, model=model))
    assert main(["evaluate", str(cache), "--truth", str(tmp_path / "wrong.csv")]) == 0
    out = capsys.readouterr().out
    assert "TP 0  FP 2  FN 1" in out


def test_cli_loio_runs_each_fold_model_on_its_held_out_image(tmp_path, capsys):
    """Two unreferenced PNG 'sites', two fold models: per-site scores and their mean from one command."""
    from PIL import Image

    from engine.cli import main
    from tests.onnx_models import canopy_centres_model
    from tests.rasters import crowns_image

    data_dir, folds_dir = tmp_path / "data", tmp_path / "folds"
    data_dir.mkdir()
    # Site A: two crowns, both annotated. Site B: two crowns, one annotated and one box where
    # there is no crown (TP 1, FP 1, FN 1: F1 0.5).
    sites = {
        "site_a": ([(10, 10, 20), (60, 60, 20)], [(10, 10, 30, 30), (60, 60, 80, 80)]),
        "site_b": ([(10, 60, 20), (60, 10, 20)], [(10, 60, 30, 80), (0, 0, 8, 8)]),
    }
    folds = []
    for name, (squares, boxes) in sites.items():
        Image.fromarray(crowns_image(96, 96, squares).transpose(1, 2, 0)).save(data_dir / f"{name}.png")
        rows = "".join(f"{name}.png,{x0},{y0},{x1},{y1},Tree\n" for x0, y0, x1, y1 in boxes)
        (data_dir / f"{name}.csv").write_text("image_path,xmin,ymin,xmax,ymax,label\n" + rows)
        other = "site_b" if name == "site_a" else "site_a"
        canopy_centres_model(folds_dir / f"heldout-{name}.onnx", tile_size_px=64, overlap_px=16)
        folds.append({"name": f"heldout-{name}", "model": f"heldout-{name}.onnx", "image": f"{name}.png",
                      "truth": f"{name}.csv", "train": [other]})
    (folds_dir / "folds.json").write_text(json.dumps({"gsd_m": 0.1, "folds": folds}))

    assert main(["evaluate", "--loio", str(folds_dir), "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "heldout-site_a: site_a.png (model trained on site_b)" in out
    assert "F1 1.000  (TP 2, FP 0, FN 0" in out
    assert "F1 0.500  (TP 1, FP 1, FN 1" in out
    assert "mean F1 0.750 over 2 held-out images" in out

    # Missing data and no fetcher: one line, exit 2.
    (data_dir / "site_b.csv").unlink()
    assert main(["evaluate", "--loio", str(folds_dir), "--data-dir", str(data_dir)]) == 2
    assert "missing from" in capsys.readouterr().err
    assert main(["evaluate", "--loio", str(tmp_path / "nowhere")]) == 2
    assert main(["evaluate", "--loio", str(folds_dir), "--truth", "x.csv"]) == 2


@pytest.mark.slow
def test_cli_loio_of_the_bundled_folds(capsys):
    """The shipped fold models on the DeepForest images they never saw (needs pip to fetch the data once)."""
    from pathlib import Path

    from engine.cli import main

    root = Path(__file__).resolve().parents[1]
    folds = root / "training" / "folds"
    if not (folds / "folds.json").is_file():
        pytest.skip("no fold models in this checkout (training/folds/folds.json)")
    manifest = json.loads((folds / "folds.json").read_text())
    data_dir = root / "training" / "data"
    if not all((data_dir / f[k]).is_file() for f in manifest["folds"] for k in ("image", "truth")):
        try:
            from training.data import fetch_data

            fetch_data(data_dir)
        except Exception as exc:  # no network, no pip index
            pytest.skip(f"cannot fetch the DeepForest sample data: {exc}")
    assert main(["evaluate", "--loio"]) == 0
    out = capsys.readouterr().out
    mean = float(out.split("mean F1 ")[1].split()[0])
    assert abs(mean - manifest["mean_f1"]) < 0.05, out
