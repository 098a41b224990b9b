"""The local executor: tiles in plan order, and batches of tiles giving exactly the outputs of one-by-one runs."""

import os
import sys
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.models.runner import OnnxModel
from engine.run.local import POST_NICE, LocalExecutor
from engine.run.predict import prepare
from engine.run.tile import TileProcessor
from engine.settings import Job
from tests.onnx_models import conv1x1_model
from tests.rasters import write_raster


def batch_conv_model(path):
    """A 1x1 convolution + softmax with a free batch axis (the tests' other models fix it at 1)."""
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, "h", "w"])
    y = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 2, "h", "w"])
    w = np.array([[[[0.0]], [[0.0]], [[0.0]]], [[[-4.0]], [[8.0]], [[-4.0]]]], np.float32)
    nodes = [helper.make_node("Conv", ["image", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    graph = helper.make_graph(nodes, "batch_conv", [x], [y], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in {"output_kind": '"semantic"', "class_names": '["background", "tree"]', "gsd_m": "0.1",
                       "tile_size_px": "64", "overlap_px": "16", "scale": str(1 / 255)}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


@pytest.fixture
def image(tmp_path):
    rng = np.random.default_rng(4)
    img = rng.integers(1, 255, (3, 150, 300), dtype=np.uint8)
    img[:, :, 180:] = 0  # nodata: tiles with no valid pixel sit inside batches
    return write_raster(tmp_path / "img.tif", img, nodata=0)


@pytest.mark.parametrize("batch_size", [2, 3, 5])
def test_batches_give_the_outputs_of_single_tiles_in_plan_order(tmp_path, image, batch_size):
    prepared = prepare(Job(image=image, cache_dir=tmp_path / "c", model=batch_conv_model(tmp_path / "m.onnx")))
    assert prepared.model.batchable
    one = [TileProcessor(prepared.plan, prepared.model).process(t) for t in prepared.tiles]
    assert any(o.skipped for o in one) and not all(o.skipped for o in one)
    results = LocalExecutor(TileProcessor(prepared.plan, prepared.model), batch_size=batch_size).map(prepared.tiles)
    assert list(results) == one


def test_models_with_a_fixed_batch_axis_run_tile_by_tile(tmp_path):
    model = OnnxModel(conv1x1_model(tmp_path / "fixed.onnx"))
    assert not model.batchable and model.batch_size == 1
    raws = [np.full((3, 32, 32), v, np.float32) for v in (10, 200)]
    for got, raw in zip(model.run_batch(raws), raws):
        np.testing.assert_array_equal(got["probs"], model.run(raw)["probs"])


def test_cpu_runs_one_tile_per_call(tmp_path):
    model = OnnxModel(batch_conv_model(tmp_path / "m.onnx"))
    assert model.batchable and model.batch_size == 1  # batches pay on a GPU, not on 2 CPU cores


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a thread's own priority is a Linux feature")
def test_post_processing_runs_at_a_lower_priority_and_the_rest_keeps_its_own(tmp_path, image):
    prepared = prepare(Job(image=image, cache_dir=tmp_path / "c", model=conv1x1_model(tmp_path / "m.onnx")))
    processor = TileProcessor(prepared.plan, prepared.model)
    seen = []
    postprocess = processor.postprocess

    def recording(*args):
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return postprocess(*args)

    processor.postprocess = recording
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    outputs = list(LocalExecutor(processor).map(prepared.tiles))
    assert len(outputs) == len(prepared.tiles) == len(seen)
    assert set(seen) == {POST_NICE}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine  # the caller's thread is untouched
