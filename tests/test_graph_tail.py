"""A model's last channel Softmax runs in numpy on the CPU: same outputs, same names, other models untouched."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.models.graph_tail import TakenSoftmax, without_channel_softmax
from engine.models.runner import OnnxModel
from tests.onnx_models import conv1x1_model


def _reference(path, x):
    """The model's own outputs, Softmax and all, from a plain onnxruntime session."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def _two_heads(path, *, opset=17, axis=1, second_reads_probs=False):
    """Conv logits → Softmax(axis) as output "probs", plus a second output "mean" (of the logits or of probs)."""
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "h", "w"])
    probs = helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 2, "h", "w"])
    mean = helper.make_tensor_value_info("mean", TensorProto.FLOAT, [1, 1, "h", "w"])
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Conv", ["image", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=axis),
             helper.make_node("ReduceMean", ["probs" if second_reads_probs else "logits"], ["mean"], axes=[1])]
    graph = helper.make_graph(nodes, "two heads", [x], [probs, mean],
                              [numpy_helper.from_array(rng.normal(0, 2, (2, 3, 1, 1)).astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_the_channel_softmax_runs_in_numpy_with_the_models_outputs_and_names(tmp_path):
    path = conv1x1_model(tmp_path / "m.onnx", n_classes=3, tile_size_px=64, overlap_px=16)
    model = OnnxModel(path)
    assert model.taken_softmax == (TakenSoftmax(0, "probs", 1),)
    assert model.session.get_outputs()[0].name == "logits"  # the session no longer runs the Softmax
    assert model.output_names == ["probs"]
    raw = np.random.default_rng(0).integers(0, 256, (3, 64, 64)).astype(np.float32)
    mine = model._activated(model.session.run(None, {model.input_name: model.normalise(raw)}))[0]
    theirs = _reference(path, model.normalise(raw))[0]
    np.testing.assert_allclose(mine, theirs, atol=1e-6)
    np.testing.assert_allclose(mine.sum(axis=1), 1.0, atol=1e-6)
    # A batch keeps its axis: each tile's softmax is its own.
    two = model.run_batch([raw, raw[:, ::-1].copy()])
    np.testing.assert_allclose(two[0]["probs"], model.run(raw)["probs"], atol=1e-6)


def test_only_the_softmax_output_changes_and_the_other_output_is_the_models(tmp_path):
    path = _two_heads(tmp_path / "m.onnx")
    edited, taken = without_channel_softmax(path.read_bytes())
    assert taken == (TakenSoftmax(0, "probs", 1),)
    session = ort.InferenceSession(edited, providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "mean"]
    x = np.random.default_rng(2).normal(0, 1, (1, 3, 16, 8)).astype(np.float32)
    logits, mean = session.run(None, {"image": x})
    probs_ref, mean_ref = _reference(path, x)
    np.testing.assert_array_equal(mean, mean_ref)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(e / e.sum(axis=1, keepdims=True), probs_ref, atol=1e-6)


@pytest.mark.parametrize("why, kwargs", [
    ("before opset 13, axis 1 flattens C*H*W", {"opset": 12}),
    ("the last axis is onnxruntime's fast case", {"axis": -1}),
    ("another node reads the probabilities", {"second_reads_probs": True}),
])
def test_models_the_edit_cannot_keep_equal_run_as_they_are(tmp_path, why, kwargs):
    path = _two_heads(tmp_path / "m.onnx", **kwargs)
    assert without_channel_softmax(path.read_bytes()) is None, why


def test_a_gpu_keeps_the_softmax_and_a_file_that_is_not_a_model_is_left_alone(tmp_path):
    assert without_channel_softmax(b"\x0a\xff\xff") is None  # a truncated field
    assert without_channel_softmax(b"") is None
    path = conv1x1_model(tmp_path / "m.onnx", tile_size_px=64, overlap_px=16)
    if "CUDAExecutionProvider" in ort.get_available_providers():  # pragma: no cover - no GPU in CI
        assert OnnxModel(path, provider="cuda").taken_softmax == ()
    assert OnnxModel(path, provider="cpu").taken_softmax != ()


def test_two_softmax_outputs_of_the_same_logits_take_only_the_first(tmp_path):
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "h", "w"])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2, "h", "w"]) for n in ("p1", "p2")]
    nodes = [helper.make_node("Conv", ["image", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["p1"], axis=1),
             helper.make_node("Softmax", ["logits"], ["p2"], axis=1)]
    weights = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    model = helper.make_model(helper.make_graph(nodes, "twice", [x], outs, [weights]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "twice.onnx"
    onnx.save(model, str(path))
    edited, taken = without_channel_softmax(path.read_bytes())
    assert taken == (TakenSoftmax(0, "p1", 1),)  # renaming p2 to "logits" as well would clash
    session = ort.InferenceSession(edited, providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "p2"]


def test_an_edited_graph_that_does_not_load_runs_the_model_as_written(tmp_path, monkeypatch):
    from engine.models import runner

    path = conv1x1_model(tmp_path / "m.onnx", tile_size_px=64, overlap_px=16)
    broken = (b"\x08\x07garbage", (TakenSoftmax(0, "probs", 1),))
    monkeypatch.setattr(runner, "without_channel_softmax", lambda data: broken)
    model = OnnxModel(path)
    assert model.taken_softmax == () and model.session.get_outputs()[0].name == "probs"
    raw = np.full((3, 64, 64), 100, np.float32)
    np.testing.assert_array_equal(model.run(raw)["probs"], _reference(path, model.normalise(raw))[0][0])
