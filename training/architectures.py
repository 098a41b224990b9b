"""Networks fine-tuning can start from, by name, and the small file that ships their weights.

An ONNX model is enough to *run* a network but not to train it on. Beside a model
that can be fine-tuned lies ``MODEL.finetune.pt`` (the bundled one:
``resources/models/tcd_default.finetune.pt``): a plain torch dictionary

    {"architecture": "crownnet", "config": {"widths": [32, 64, 96, 128]},
     "state_dict": {...}, "mean": [...], "std": [...], "params": {crown thresholds},
     "gsd_m": 0.1, "crown_stride_px": 4, "model_sha256": "<the ONNX it belongs to>"}

read with ``torch.load(weights_only=True)`` (tensors, numbers, strings only).
``architecture`` names an entry of :data:`ARCHITECTURES`: a function from ``config``
to a module mapping a normalised (N, 3, H, W) image to (N, 2, H/s, W/s) logits
(channel 0 canopy, 1 crown centres), which is what ``training.net.ExportWrapper``
turns into the engine's ``canopy_centres`` output. Another network plugs in with
:func:`register` and ships its own sidecar.

:func:`recover_from_onnx` rebuilds a network's weights from an ONNX export whose
BatchNorms were folded into the convolutions (what ``torch.onnx.export`` does in
eval mode): each convolution takes the folded weight and bias, and its BatchNorm
becomes the identity plus that bias. Outputs in eval mode are unchanged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from training.net import CrownNet

SIDECAR_SUFFIX = ".finetune.pt"

ARCHITECTURES: dict[str, Callable[[dict], nn.Module]] = {
    "crownnet": lambda config: CrownNet(tuple(config.get("widths", (32, 64, 96, 128)))),
}


def register(name: str, build: Callable[[dict], nn.Module]) -> None:
    """Make ``name`` loadable from a sidecar (``build(config)`` returns the untrained network)."""
    ARCHITECTURES[name] = build


def sidecar_path(model: Path) -> Path:
    """``tcd_default.onnx`` -> ``tcd_default.finetune.pt``."""
    model = Path(model)
    return model.with_name(model.stem + SIDECAR_SUFFIX)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build(name: str, config: dict) -> nn.Module:
    if name not in ARCHITECTURES:
        raise KeyError(name)
    return ARCHITECTURES[name](config)


def load_sidecar(path: Path) -> tuple[nn.Module, dict]:
    """The network of a sidecar with its weights, and the sidecar's other entries."""
    base = torch.load(path, map_location="cpu", weights_only=True)
    net = build(base["architecture"], base.get("config", {}))
    net.load_state_dict(base["state_dict"])
    return net, {k: v for k, v in base.items() if k != "state_dict"}


def save_sidecar(path: Path, net: nn.Module, architecture: str, config: dict, **entries) -> None:
    state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"architecture": architecture, "config": config, "state_dict": state, **entries}, tmp)
    tmp.replace(path)


def _conv_bn_pairs(net: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d | None]]:
    """Each convolution with the BatchNorm that directly follows it in module order (None for none)."""
    modules = list(net.modules())
    pairs = []
    for i, module in enumerate(modules):
        if isinstance(module, nn.Conv2d):
            after = modules[i + 1] if i + 1 < len(modules) else None
            bn = after if isinstance(after, nn.BatchNorm2d) and after.num_features == module.out_channels else None
            pairs.append((module, bn))
    return pairs


def recover_from_onnx(net: nn.Module, onnx_path: Path) -> nn.Module:
    """Load the weights of an ONNX export with folded BatchNorms into ``net`` (same architecture).

    The graph's Conv nodes, in execution order, are matched with ``net``'s
    convolutions in the order a forward pass calls them; every shape must agree.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    convs = [(node.input[1], node.input[2] if len(node.input) > 2 else None)
             for node in model.graph.node if node.op_type == "Conv"]
    order: list[nn.Conv2d] = []
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m))
             for m in net.modules() if isinstance(m, nn.Conv2d)]
    net.eval()
    with torch.no_grad():
        net(torch.zeros(1, 3, 64, 64))
    for hook in hooks:
        hook.remove()
    if len(order) != len(convs):
        raise ValueError(f"{onnx_path.name} has {len(convs)} convolutions, the network {len(order)}")
    bns = dict(_conv_bn_pairs(net))
    with torch.no_grad():
        for conv, (w_name, b_name) in zip(order, convs):
            weight = torch.from_numpy(weights[w_name].copy())
            bias = torch.from_numpy(weights[b_name].copy()) if b_name else torch.zeros(conv.out_channels)
            if weight.shape != conv.weight.shape:
                raise ValueError(f"{w_name}: {tuple(weight.shape)} against {tuple(conv.weight.shape)}")
            conv.weight.copy_(weight)
            bn = bns.get(conv)
            if bn is None:
                if conv.bias is None:
                    raise ValueError(f"{w_name} has a bias the network's convolution lacks")
                conv.bias.copy_(bias)
            else:
                # Identity in eval mode: (x - 0) / sqrt(1 + eps) * sqrt(1 + eps) + bias.
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0)
                bn.weight.fill_((1.0 + bn.eps) ** 0.5)
                bn.bias.copy_(bias)
    return net
