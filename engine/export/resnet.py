"""The ResNet bottleneck block the exporters rebuild (torchvision's layout and parameter names)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


class Bottleneck(nn.Module):
    """1x1, 3x3 (strided: torchvision's "ResNet v1.5", which smp and DeepForest use), 1x1 x4, plus the shortcut.

    ``norm`` makes the normalisation layer for a channel count: trainable BatchNorm for smp's
    encoders, frozen statistics for torchvision's detection backbones.
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None,
                 norm: Callable[[int], nn.Module] = nn.BatchNorm2d):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = norm(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = norm(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)
