"""Small real ONNX models built with onnx.helper, for tests and benchmarks.

Each builder writes a model file and returns its path. The models run in real
onnxruntime sessions; their outputs are simple functions of the input so tests
can predict exactly where shapes must appear.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8


def _save(graph, path: Path, metadata: dict) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _io(n_in: int, n_out: int, tile: int | None):
    side = tile if tile else "size"
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, n_in, side, side])
    y = helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, n_out, side, side])
    return x, y


def passthrough_model(
    path,
    *,
    band_index: int = 0,
    n_bands: int = 3,
    gsd_m: float = 0.1,
    tile_size_px: int = 64,
    overlap_px: int = 16,
    fixed_tile: bool = False,
    extra_metadata: dict | None = None,
) -> Path:
    """Semantic model ["background", "tree"]: P(tree) = input band ``band_index`` / 255.

    With the default scale 1/255 the model input is already 0..1, so the
    probability of a pixel is its band value divided by 255.
    """
    x, y = _io(n_bands, 2, tile_size_px if fixed_tile else None)
    nodes = [
        helper.make_node("Slice", ["image", "s0", "s1", "ax"], ["tree"]),
        helper.make_node("Sub", ["one", "tree"], ["bg"]),
        helper.make_node("Concat", ["bg", "tree"], ["probs"], axis=1),
    ]
    inits = [
        numpy_helper.from_array(np.array([band_index], np.int64), "s0"),
        numpy_helper.from_array(np.array([band_index + 1], np.int64), "s1"),
        numpy_helper.from_array(np.array([1], np.int64), "ax"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    graph = helper.make_graph(nodes, "passthrough", [x], [y], inits)
    meta = {
        "name": "passthrough test model",
        "output_kind": "semantic",
        "class_names": ["background", "tree"],
        "gsd_m": gsd_m,
        "tile_size_px": tile_size_px,
        "overlap_px": overlap_px,
        "bands": list(range(1, n_bands + 1)),
        "scale": 1 / 255,
        "mean": 0.0,
        "std": 1.0,
        "seg_thresh": 0.5,
    }
    meta.update(extra_metadata or {})
    return _save(graph, path, meta)


def conv1x1_model(path, *, n_bands: int = 3, n_classes: int = 2, tile_size_px: int = 512, overlap_px: int = 64,
                  seed: int = 0) -> Path:
    """A light 1×1-convolution + softmax semantic model (the 'light model' of the benchmarks)."""
    rng = np.random.default_rng(seed)
    x, y = _io(n_bands, n_classes, None)
    w = rng.normal(0, 1, (n_classes, n_bands, 1, 1)).astype(np.float32)
    b = rng.normal(0, 0.1, (n_classes,)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["image", "w", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    graph = helper.make_graph(nodes, "conv1x1", [x], [y], inits)
    names = ["background"] + [f"class_{i}" for i in range(1, n_classes)]
    return _save(graph, path, {"name": "conv1x1", "output_kind": "semantic", "class_names": names, "gsd_m": 0.1,
                               "tile_size_px": tile_size_px, "overlap_px": overlap_px, "scale": 1 / 255,
                               "mean": [0.485, 0.456, 0.406][:n_bands] if n_bands == 3 else 0.0,
                               "std": [0.229, 0.224, 0.225][:n_bands] if n_bands == 3 else 1.0})


def canopy_centres_model(path, *, gsd_m: float = 0.1, tile_size_px: int = 64, overlap_px: int = 16,
                         extra_metadata: dict | None = None) -> Path:
    """canopy_centres model: canopy = band 1 / 255, centre heatmap = band 2 / 255."""
    x, y = _io(3, 2, None)
    nodes = [helper.make_node("Slice", ["image", "s0", "s1", "ax"], ["probs"])]
    inits = [
        numpy_helper.from_array(np.array([0], np.int64), "s0"),
        numpy_helper.from_array(np.array([2], np.int64), "s1"),
        numpy_helper.from_array(np.array([1], np.int64), "ax"),
    ]
    graph = helper.make_graph(nodes, "canopy_centres", [x], [y], inits)
    meta = {"name": "canopy+centres test model", "output_kind": "canopy_centres", "class_names": ["tree"],
            "gsd_m": gsd_m, "tile_size_px": tile_size_px, "overlap_px": overlap_px, "scale": 1 / 255,
            "mean": 0.0, "std": 1.0, "seg_thresh": 0.5, "centre_thresh": 0.5, "peak_min_distance_m": 0.5,
            "min_crown_area_m2": 0.0}
    meta.update(extra_metadata or {})
    return _save(graph, path, meta)


def _band1_then(path, name: str, value_nodes: list, value_inits: list, *, tile_size_px: int, overlap_px: int,
                fixed_tile: bool = False, extra_metadata: dict | None = None) -> Path:
    """Semantic model ["background", "tree"] whose tree probability is ``value`` everywhere.

    ``value_nodes`` compute a tensor named ``value`` (from ``first``, band 1 of the input, if
    they need it); the graph adds it to zeros of band 1's shape, so it fills the tile.
    """
    x, y = _io(3, 2, tile_size_px if fixed_tile else None)
    nodes = [
        helper.make_node("Slice", ["image", "s0", "s1", "ax"], ["first"]),
        *value_nodes,
        helper.make_node("Mul", ["first", "zero"], ["zeros"]),
        helper.make_node("Add", ["zeros", "value"], ["tree"]),
        helper.make_node("Sub", ["one", "tree"], ["bg"]),
        helper.make_node("Concat", ["bg", "tree"], ["probs"], axis=1),
    ]
    inits = [
        numpy_helper.from_array(np.array([0], np.int64), "s0"),
        numpy_helper.from_array(np.array([1], np.int64), "s1"),
        numpy_helper.from_array(np.array([1], np.int64), "ax"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        *value_inits,
    ]
    graph = helper.make_graph(nodes, name.replace(" ", "_"), [x], [y], inits)
    meta = {"name": name, "output_kind": "semantic", "class_names": ["background", "tree"], "gsd_m": 0.1,
            "tile_size_px": tile_size_px, "overlap_px": overlap_px, "scale": 1 / 255, "mean": 0.0, "std": 1.0}
    meta.update(extra_metadata or {})
    return _save(graph, path, meta)


def constant_model(path, value: float, *, tile_size_px: int = 64, overlap_px: int = 16,
                   extra_metadata: dict | None = None) -> Path:
    """Semantic model whose tree probability is ``value`` everywhere (NaN allowed, for fault tests)."""
    return _band1_then(path, "constant", [], [numpy_helper.from_array(np.array(value, np.float32), "value")],
                       tile_size_px=tile_size_px, overlap_px=overlap_px, extra_metadata=extra_metadata)


def image_mean_model(path, *, tile_size_px: int = 256, overlap_px: int = 32, fixed_tile: bool = False) -> Path:
    """Semantic model whose tree probability is the mean of band 1 / 255 over the whole input, everywhere.

    Its output depends on every input pixel (context), so it tells what the model was shown
    beyond the image: zeros, mirrored data, or nothing.
    """
    mean = helper.make_node("ReduceMean", ["first"], ["value"], axes=[2, 3], keepdims=1)
    return _band1_then(path, "image mean", [mean], [], tile_size_px=tile_size_px, overlap_px=overlap_px,
                       fixed_tile=fixed_tile)


def slow_model(path, *, size: int = 256, matmuls: int = 8) -> Path:
    """The passthrough model plus matrix products that depend on the input and add zero.

    Each tile costs ``matmuls`` products of ``size`` x ``size`` matrices, so a run
    lasts long enough to be cancelled or killed halfway.
    """
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "size", "size"])
    y = helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 2, "size", "size"])
    nodes = [
        helper.make_node("Slice", ["image", "s0", "s1", "ax"], ["tree0"]),
        helper.make_node("ReduceMean", ["image"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["w", "mean"], ["m0"]),
    ]
    for i in range(matmuls):
        nodes.append(helper.make_node("MatMul", [f"m{i}", "half"], [f"m{i + 1}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"m{matmuls}"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["tree0", "nothing"], ["tree"]),
        helper.make_node("Sub", ["one", "tree"], ["bg"]),
        helper.make_node("Concat", ["bg", "tree"], ["probs"], axis=1),
    ]
    inits = [
        numpy_helper.from_array(np.array([0], np.int64), "s0"),
        numpy_helper.from_array(np.array([1], np.int64), "s1"),
        numpy_helper.from_array(np.array([1], np.int64), "ax"),
        numpy_helper.from_array(np.full((size, size), 0.01, np.float32), "w"),
        numpy_helper.from_array((np.eye(size) * 0.5).astype(np.float32), "half"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    graph = helper.make_graph(nodes, "slow_passthrough", [x], [y], inits)
    meta = {"name": "slow passthrough test model", "output_kind": "semantic", "class_names": ["background", "tree"],
            "gsd_m": 0.1, "tile_size_px": 64, "overlap_px": 16, "bands": [1, 2, 3], "scale": 1 / 255, "mean": 0.0,
            "std": 1.0, "seg_thresh": 0.5}
    return _save(graph, path, meta)


def band_maps_model(path, outputs: list[tuple[int, ...]], metadata: dict, *, tile_size_px: int = 64,
                    class_axis: bool = True, inset_px: int = 0) -> Path:
    """A Deepness-style segmentation model: output ``o`` holds the input bands ``outputs[o]`` (0-based) as they come.

    With Deepness's scaling (values / 255, then its standardisation) each map is a
    band / 255, so tests know every probability. ``class_axis`` False gives
    (1, H, W) outputs (one band each); ``inset_px`` crops every output to the
    tile's centre, that many pixels in from each edge. The input is fixed at
    ``tile_size_px``, as Deepness's exported models are.
    """
    side = tile_size_px
    out_side = side - 2 * inset_px
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, side, side])
    nodes, inits, ys = [], [], []
    if inset_px:
        inits += [numpy_helper.from_array(np.array([inset_px, inset_px], np.int64), "crop_start"),
                  numpy_helper.from_array(np.array([side - inset_px, side - inset_px], np.int64), "crop_end"),
                  numpy_helper.from_array(np.array([2, 3], np.int64), "crop_axes")]
    if not class_axis:
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "class_axis"))
    for o, bands in enumerate(outputs):
        inits.append(numpy_helper.from_array(np.array(bands, np.int64), f"bands{o}"))
        name = f"output{o}"
        nodes.append(helper.make_node("Gather", ["image", f"bands{o}"], [f"{name}_g"], axis=1))
        last = f"{name}_g"
        if inset_px:
            nodes.append(helper.make_node("Slice", [last, "crop_start", "crop_end", "crop_axes"], [f"{name}_c"]))
            last = f"{name}_c"
        if not class_axis:
            nodes.append(helper.make_node("Squeeze", [last, "class_axis"], [f"{name}_s"]))
            last = f"{name}_s"
        nodes.append(helper.make_node("Identity", [last], [name]))
        shape = [1, len(bands), out_side, out_side] if class_axis else [1, out_side, out_side]
        ys.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    graph = helper.make_graph(nodes, "band_maps", [x], ys, initializer=inits)
    return _save(graph, path, metadata)


def value_model(path, metadata: dict, *, tile_size_px: int | None = 64, scale_up: int = 1) -> Path:
    """A model whose one output is the first band (a value map), ``scale_up`` times the input's size when > 1
    (a super-resolution layout); with ``model_type`` Regressor it is Deepness's regression layout.
    ``tile_size_px`` None: any input size, and the file gives no output size."""
    side = tile_size_px
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, side or "size", side or "size"])
    out_side = side * scale_up if side else "out"
    y = helper.make_tensor_value_info("value", TensorProto.FLOAT, [1, 1, out_side, out_side])
    inits = [numpy_helper.from_array(np.array([0], np.int64), "band")]
    nodes = [helper.make_node("Gather", ["image", "band"], ["first"], axis=1)]
    if scale_up > 1:
        inits.append(numpy_helper.from_array(np.array([1, 1, scale_up, scale_up], np.float32), "scales"))
        nodes.append(helper.make_node("Resize", ["first", "", "scales"], ["value"], mode="nearest"))
    else:
        nodes.append(helper.make_node("Identity", ["first"], ["value"]))
    graph = helper.make_graph(nodes, "value", [x], [y], initializer=inits)
    return _save(graph, path, metadata)


def constant_outputs_model(path, outputs: dict[str, np.ndarray], metadata: dict, *, tile_size_px: int = 64) -> Path:
    """A model whose outputs are the given arrays (batch axis included) whatever the tile (plus 0 * the tile)."""
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, tile_size_px, tile_size_px])
    nodes = [helper.make_node("ReduceMean", ["image"], ["mean"], keepdims=0),
             helper.make_node("Mul", ["mean", "zero"], ["nothing"])]
    inits = [numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    ys = []
    for name, value in outputs.items():
        value = np.asarray(value, np.float32)
        inits.append(numpy_helper.from_array(value, f"{name}_value"))
        nodes.append(helper.make_node("Add", [f"{name}_value", "nothing"], [name]))
        ys.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape)))
    graph = helper.make_graph(nodes, "constant_outputs", [x], ys, initializer=inits)
    return _save(graph, path, metadata)
