"""CrownNet: a light encoder-decoder predicting canopy and crown-centre maps.

The encoder downsamples to 1/16 with depthwise-separable blocks (dilated at the
bottom for a receptive field of several crown widths); the decoder returns to
1/4 of the input, where the two logits are predicted. :class:`ExportWrapper`
adds the sigmoid and a bilinear upsampling to the input size, so the exported
ONNX graph maps a (1, 3, H, W) normalised image to (1, 2, H, W) probabilities
for any H and W, which is what the engine's ``canopy_centres`` output kind reads.
Predicting at 1/4 keeps the model fast on CPUs: a crown is at least ~1.5 m
(15 px at 0.1 m), i.e. 4 cells of the output grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv_bn(c_in: int, c_out: int, kernel: int = 1, stride: int = 1, dilation: int = 1, groups: int = 1):
    padding = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation=dilation, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SeparableBlock(nn.Module):
    """Depthwise 3x3 then pointwise 1x1; residual when the shape is kept."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.depthwise = _conv_bn(c_in, c_in, 3, stride, dilation, groups=c_in)
        self.pointwise = _conv_bn(c_in, c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        y = self.pointwise(self.depthwise(x))
        return x + y if self.residual else y


class CrownNet(nn.Module):
    """Logits (N, 2, ceil(H/4), ceil(W/4)): channel 0 canopy, channel 1 crown centres."""

    def __init__(self, widths: tuple[int, int, int, int] = (16, 32, 48, 64)):
        super().__init__()
        w2, w4, w8, w16 = widths
        self.stem = _conv_bn(3, w2, 3, stride=2)
        self.enc4 = nn.Sequential(SeparableBlock(w2, w4, stride=2), SeparableBlock(w4, w4))
        self.enc8 = nn.Sequential(SeparableBlock(w4, w8, stride=2), SeparableBlock(w8, w8))
        self.enc16 = nn.Sequential(
            SeparableBlock(w8, w16, stride=2),
            SeparableBlock(w16, w16, dilation=2),
            SeparableBlock(w16, w16, dilation=4),
        )
        self.lat8 = _conv_bn(w16, w8)
        self.dec8 = SeparableBlock(w8, w8)
        self.lat4 = _conv_bn(w8, w4)
        self.dec4 = nn.Sequential(SeparableBlock(w4, w4), SeparableBlock(w4, w4))
        self.head = nn.Conv2d(w4, 2, 1)

    def forward(self, x):
        s4 = self.enc4(self.stem(x))
        s8 = self.enc8(s4)
        s16 = self.enc16(s8)
        # Upsample to the skip's own size (not x2) so any input size works, odd ones included.
        d8 = self.dec8(s8 + F.interpolate(self.lat8(s16), size=s8.shape[-2:], mode="bilinear", align_corners=False))
        d4 = self.dec4(s4 + F.interpolate(self.lat4(d8), size=s4.shape[-2:], mode="bilinear", align_corners=False))
        return self.head(d4)


class ExportWrapper(nn.Module):
    """Probabilities at the input's full resolution, as the exported model returns them.

    With ``flips`` 2 or 4 the model also runs on the horizontally (and vertically, and
    both) flipped image and averages the flipped-back maps: test-time augmentation
    inside the graph, so the engine needs no change (at 2x or 4x the model's time).
    """

    def __init__(self, net: CrownNet, flips: int = 1):
        super().__init__()
        if flips not in (1, 2, 4):
            raise ValueError(f"flips must be 1, 2 or 4, not {flips}")
        self.net = net
        self.flips = flips

    def _probs(self, image):
        probs = torch.sigmoid(self.net(image))
        # Sigmoid before upsampling: 16x fewer exp() and the result stays within 0..1.
        return F.interpolate(probs, size=image.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, image):
        probs = self._probs(image)
        if self.flips == 1:
            return probs
        dims = [[3], [2], [2, 3]][: self.flips - 1]
        for d in dims:
            probs = probs + torch.flip(self._probs(torch.flip(image, d)), d)
        return probs / self.flips
