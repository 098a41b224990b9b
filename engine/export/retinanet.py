"""torchvision's RetinaNet (ResNet-50 FPN, v1) rebuilt in plain PyTorch with its exact parameter names.

DeepForest's tree model is torchvision's ``retinanet_resnet50_fpn`` (its
``RetinaNetHub``). torchvision cannot always be installed beside the pinned CPU
torch, so the network is rebuilt here module by module: a checkpoint's state
dict loads into :class:`RetinaNetNet` with ``strict=True`` (key for key, shape
for shape), and its forward pass is torchvision's arithmetic (FrozenBatchNorm2d
as ``x * scale + bias``, nearest top-down upsampling, P6 from P5, heads reshaped
to (N, H*W*A, C)). :class:`DeepForestTile` adds the transform torchvision applies
at inference (``GeneralizedRCNNTransform``): scaling by 1/255 as DeepForest's
``predict_image`` does, ImageNet normalisation, bilinear resize so the shorter
side is ``min_size`` (capped by ``max_size``), zero padding to a multiple of 32.

:func:`anchor_grid` and :func:`reference_detections` are torchvision's
``AnchorGenerator`` and ``postprocess_detections`` in torch, the reference the
engine's numpy decoding (:mod:`engine.models.kinds.retinanet`) is tested against.

Imports torch; only the exporter and its tests import this module.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import Bottleneck

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_SIZE, MAX_SIZE, SIZE_DIVISIBLE = 800, 1333, 32
ANCHOR_SIZES = tuple((x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))) for x in (32, 64, 128, 256, 512))
ASPECT_RATIOS = ((0.5, 1.0, 2.0),) * len(ANCHOR_SIZES)
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters (torchvision.ops.FrozenBatchNorm2d)."""

    def __init__(self, n: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(n))
        self.register_buffer("bias", torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))

    def forward(self, x):
        w = self.weight.reshape(1, -1, 1, 1)
        b = self.bias.reshape(1, -1, 1, 1)
        rv = self.running_var.reshape(1, -1, 1, 1)
        rm = self.running_mean.reshape(1, -1, 1, 1)
        scale = w * (rv + self.eps).rsqrt()
        bias = b - rm * scale
        return x * scale + bias


class ResNet50Body(nn.Module):
    """torchvision's resnet50 up to layer4 (IntermediateLayerGetter returns layer2..4)."""

    def __init__(self, eps: float):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = FrozenBatchNorm2d(64, eps)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)

        def norm(channels: int) -> nn.Module:
            return FrozenBatchNorm2d(channels, eps)

        inplanes = 64
        for index, (planes, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), 1):
            downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
                                       norm(planes * 4))
            layers = [Bottleneck(inplanes, planes, stride, downsample, norm)]
            inplanes = planes * 4
            layers += [Bottleneck(inplanes, planes, 1, None, norm) for _ in range(1, blocks)]
            setattr(self, f"layer{index}", nn.Sequential(*layers))

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c3, c4, c5]


class LastLevelP6P7(nn.Module):
    def __init__(self, channels: int = 256):
        super().__init__()
        self.p6 = nn.Conv2d(channels, channels, 3, 2, 1)
        self.p7 = nn.Conv2d(channels, channels, 3, 2, 1)


class FeaturePyramid(nn.Module):
    """torchvision's FeaturePyramidNetwork on C3..C5 with LastLevelP6P7(256, 256) (P6 from P5)."""

    def __init__(self, in_channels=(512, 1024, 2048), channels: int = 256):
        super().__init__()
        self.inner_blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(c, channels, 1)) for c in in_channels)
        self.layer_blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1))
                                          for _ in in_channels)
        self.extra_blocks = LastLevelP6P7(channels)

    def forward(self, features):
        last_inner = self.inner_blocks[-1](features[-1])
        results = [self.layer_blocks[-1](last_inner)]
        for idx in range(len(features) - 2, -1, -1):
            lateral = self.inner_blocks[idx](features[idx])
            top_down = F.interpolate(last_inner, size=lateral.shape[-2:], mode="nearest")
            last_inner = lateral + top_down
            results.insert(0, self.layer_blocks[idx](last_inner))
        p6 = self.extra_blocks.p6(results[-1])
        p7 = self.extra_blocks.p7(F.relu(p6))
        return results + [p6, p7]


class Backbone(nn.Module):
    def __init__(self, eps: float):
        super().__init__()
        self.body = ResNet50Body(eps)
        self.fpn = FeaturePyramid()

    def forward(self, x):
        return self.fpn(self.body(x))


def _conv_tower(channels: int) -> nn.Sequential:
    # torchvision's Conv2dNormActivation without norm: Sequential(conv, relu), parameters under "<i>.0".
    return nn.Sequential(*(nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True))
                           for _ in range(4)))


class ClassificationHead(nn.Module):
    def __init__(self, channels: int, num_anchors: int, num_classes: int):
        super().__init__()
        self.conv = _conv_tower(channels)
        self.cls_logits = nn.Conv2d(channels, num_anchors * num_classes, 3, padding=1)
        self.num_classes = num_classes

    def forward(self, features):
        out = []
        for x in features:
            y = self.cls_logits(self.conv(x))
            n, _, h, w = y.shape
            out.append(y.view(n, -1, self.num_classes, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, self.num_classes))
        return torch.cat(out, dim=1)


class RegressionHead(nn.Module):
    def __init__(self, channels: int, num_anchors: int):
        super().__init__()
        self.conv = _conv_tower(channels)
        self.bbox_reg = nn.Conv2d(channels, num_anchors * 4, 3, padding=1)

    def forward(self, features):
        out = []
        for x in features:
            y = self.bbox_reg(self.conv(x))
            n, _, h, w = y.shape
            out.append(y.view(n, -1, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4))
        return torch.cat(out, dim=1)


class Head(nn.Module):
    def __init__(self, channels: int, num_anchors: int, num_classes: int):
        super().__init__()
        self.classification_head = ClassificationHead(channels, num_anchors, num_classes)
        self.regression_head = RegressionHead(channels, num_anchors)


class RetinaNetNet(nn.Module):
    """The parameters of torchvision's ``retinanet_resnet50_fpn`` (v1), under the same names."""

    def __init__(self, num_classes: int, eps: float = 1e-5):
        super().__init__()
        self.backbone = Backbone(eps)
        self.head = Head(256, len(ANCHOR_SIZES[0]) * len(ASPECT_RATIOS[0]), num_classes)

    def forward(self, x):
        features = self.backbone(x)
        return (self.head.classification_head(features), self.head.regression_head(features), features)


def resized_px(tile_px: int, min_size: int = MIN_SIZE, max_size: int = MAX_SIZE) -> int:
    """The side a square tile is resized to, as torchvision computes it (floor of size * scale, in double)."""
    scale = min(min_size / tile_px, max_size / tile_px)
    return int(math.floor(tile_px * scale))


def padded_px(resized: int) -> int:
    return int(math.ceil(resized / SIZE_DIVISIBLE) * SIZE_DIVISIBLE)


class DeepForestTile(nn.Module):
    """Raw 0-255 (1, 3, T, T) tile → the heads' ``cls_logits`` (1, A, C) and ``bbox_regression`` (1, A, 4).

    ``min_size``, ``max_size``, ``image_mean`` and ``image_std`` are RetinaNet's
    transform arguments (torchvision's defaults unless a checkpoint's config sets them).
    """

    def __init__(self, net: RetinaNetNet, tile_px: int, min_size: int = MIN_SIZE, max_size: int = MAX_SIZE,
                 image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD):
        super().__init__()
        self.net = net
        self.tile_px = tile_px
        self.resized = resized_px(tile_px, min_size, max_size)
        self.padded = padded_px(self.resized)
        mean = torch.tensor(image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", torch.tensor(image_std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, image):
        x = image / 255
        x = (x - self.mean) / self.std
        x = F.interpolate(x, size=(self.resized, self.resized), mode="bilinear", align_corners=False)
        pad = self.padded - self.resized
        if pad:
            x = F.pad(x, (0, pad, 0, pad))
        logits, regression, _ = self.net(x)
        return logits, regression

    def grid_sizes(self) -> list[list[int]]:
        """Each pyramid level's (height, width) for this tile size."""
        with torch.no_grad():
            features = self.net.backbone(torch.zeros(1, 3, self.padded, self.padded))
        return [list(f.shape[-2:]) for f in features]


def anchor_grid(padded: int, grid_sizes) -> tuple[torch.Tensor, list[int]]:
    """torchvision's AnchorGenerator over the padded tile: all anchors, and each level's anchor count."""
    levels, counts = [], []
    for (gh, gw), sizes, ratios in zip(grid_sizes, ANCHOR_SIZES, ASPECT_RATIOS):
        scales = torch.as_tensor(sizes, dtype=torch.float32)
        ratios = torch.as_tensor(ratios, dtype=torch.float32)
        h_ratios = torch.sqrt(ratios)
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * scales[None, :]).view(-1)
        hs = (h_ratios[:, None] * scales[None, :]).view(-1)
        base = (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()
        sy = torch.empty((), dtype=torch.int64).fill_(padded // gh)
        sx = torch.empty((), dtype=torch.int64).fill_(padded // gw)
        shift_y, shift_x = torch.meshgrid(torch.arange(0, gh, dtype=torch.int32) * sy,
                                          torch.arange(0, gw, dtype=torch.int32) * sx, indexing="ij")
        shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
        shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
        level = (shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4)
        levels.append(level)
        counts.append(len(level))
    return torch.cat(levels), counts


def _nms(boxes, scores, iou_thresh):
    order = scores.argsort(descending=True, stable=True)
    keep, suppressed = [], torch.zeros(len(boxes), dtype=torch.bool)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for pos, i in enumerate(order.tolist()):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[pos + 1:]
        xx1 = torch.maximum(boxes[i, 0], boxes[rest, 0])
        yy1 = torch.maximum(boxes[i, 1], boxes[rest, 1])
        xx2 = torch.minimum(boxes[i, 2], boxes[rest, 2])
        yy2 = torch.minimum(boxes[i, 3], boxes[rest, 3])
        inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
        iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest[iou > iou_thresh]] = True
    return torch.as_tensor(keep, dtype=torch.int64)


def reference_detections(tile: DeepForestTile, image: torch.Tensor, score_thresh: float, nms_thresh: float,
                         topk: int = 1000, detections: int = 300) -> dict[str, torch.Tensor]:
    """torchvision's RetinaNet inference on one raw (1, 3, T, T) tile in torch: boxes (tile pixels), scores, labels."""
    with torch.no_grad():
        logits, regression = tile(image)
    anchors, counts = anchor_grid(tile.padded, tile.grid_sizes())
    boxes_all, scores_all, labels_all = [], [], []
    num_classes = logits.shape[-1]
    for lg, rg, an in zip(logits[0].split(counts), regression[0].split(counts), anchors.split(counts)):
        scores = torch.sigmoid(lg).flatten()
        keep = scores > score_thresh
        scores = scores[keep]
        idxs = torch.where(keep)[0]
        scores, order = scores.topk(min(topk, idxs.numel()))
        idxs = idxs[order]
        anchor_idx = torch.div(idxs, num_classes, rounding_mode="floor")
        labels = idxs % num_classes
        a = an[anchor_idx]
        d = rg[anchor_idx]
        widths, heights = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
        ctr_x, ctr_y = a[:, 0] + 0.5 * widths, a[:, 1] + 0.5 * heights
        dw = torch.clamp(d[:, 2], max=BBOX_XFORM_CLIP)
        dh = torch.clamp(d[:, 3], max=BBOX_XFORM_CLIP)
        px, py = d[:, 0] * widths + ctr_x, d[:, 1] * heights + ctr_y
        pw, ph = torch.exp(dw) * widths, torch.exp(dh) * heights
        boxes = torch.stack([px - 0.5 * pw, py - 0.5 * ph, px + 0.5 * pw, py + 0.5 * ph], dim=1)
        boxes = boxes.clamp(min=0, max=tile.resized)
        boxes_all.append(boxes)
        scores_all.append(scores)
        labels_all.append(labels)
    boxes, scores, labels = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(labels_all)
    keep = []
    for label in labels.unique():
        members = torch.where(labels == label)[0]
        keep.append(members[_nms(boxes[members], scores[members], nms_thresh)])
    keep = torch.cat(keep) if keep else torch.zeros(0, dtype=torch.int64)
    keep = keep[scores[keep].argsort(descending=True, stable=True)][:detections]
    ratio = torch.tensor(float(image.shape[-1]), dtype=torch.float32) / torch.tensor(float(tile.resized))
    return {"boxes": boxes[keep] * ratio, "scores": scores[keep], "labels": labels[keep]}
