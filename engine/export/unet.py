"""segmentation-models-pytorch's ``Unet`` with a torchvision ResNet encoder, rebuilt in plain PyTorch.

Same modules and parameter names as smp, so Restor's ``model.pt`` (and smp's own
save_pretrained weights) load with ``strict=True`` and a layout difference fails
loudly instead of silently. Rebuilt rather than imported: smp and timm import
torchvision at import time, and a torchvision that matches a CPU-only torch is not
always installable, while the architecture is small and fixed.

Imports torch: import this module only when exporting.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .resnet import Bottleneck

# ResNet variants of torchvision (and so of smp's "resnetNN" encoders):
# (bottleneck blocks, blocks per stage).
RESNETS = {
    "resnet18": (False, (2, 2, 2, 2)),
    "resnet34": (False, (3, 4, 6, 3)),
    "resnet50": (True, (3, 4, 6, 3)),
    "resnet101": (True, (3, 4, 23, 3)),
    "resnet152": (True, (3, 8, 36, 3)),
}
DECODER_CHANNELS = (256, 128, 64, 32, 16)



class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in, planes, stride, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetEncoder(nn.Module):
    def __init__(self, bottleneck, blocks, in_channels):
        super().__init__()
        block = Bottleneck if bottleneck else BasicBlock
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c_in = 64
        self.out_channels = [in_channels, 64]
        for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
            stride = 1 if stage == 1 else 2
            downsample = None
            if stride != 1 or c_in != planes * block.expansion:
                downsample = nn.Sequential(
                    nn.Conv2d(c_in, planes * block.expansion, 1, stride, bias=False),
                    nn.BatchNorm2d(planes * block.expansion),
                )
            layers = [block(c_in, planes, stride, downsample)]
            c_in = planes * block.expansion
            layers += [block(c_in, planes, 1, None) for _ in range(n - 1)]
            setattr(self, f"layer{stage}", nn.Sequential(*layers))
            self.out_channels.append(c_in)

    def forward(self, x):
        features = [x]
        x = self.relu(self.bn1(self.conv1(x)))
        features.append(x)
        x = self.layer1(self.maxpool(x))
        features.append(x)
        for layer in (self.layer2, self.layer3, self.layer4):
            x = layer(x)
            features.append(x)
        return features

def conv_bn_relu(c_in, c_out):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))

class DecoderBlock(nn.Module):
    def __init__(self, c_in, c_skip, c_out):
        super().__init__()
        self.conv1 = conv_bn_relu(c_in + c_skip, c_out)
        self.conv2 = conv_bn_relu(c_out, c_out)

    def forward(self, x, size, skip):
        # Upsampling to the skip's size (smp >= 0.5) equals smp's older 2x
        # nearest upsampling on tiles that are multiples of 32, and also
        # works on other tile sizes.
        x = F.interpolate(x, size=size, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))

class UnetDecoder(nn.Module):
    def __init__(self, encoder_channels):
        super().__init__()
        reversed_channels = list(encoder_channels[1:])[::-1]
        c_in = [reversed_channels[0]] + list(DECODER_CHANNELS[:-1])
        c_skip = reversed_channels[1:] + [0]
        self.blocks = nn.ModuleList(DecoderBlock(i, s, o) for i, s, o in zip(c_in, c_skip, DECODER_CHANNELS))

    def forward(self, features):
        sizes = [f.shape[2:] for f in features][::-1]
        features = features[1:][::-1]
        x, skips = features[0], features[1:]
        for i, block in enumerate(self.blocks):
            x = block(x, sizes[i + 1], skips[i] if i < len(skips) else None)
        return x

class Unet(nn.Module):
    def __init__(self, encoder_name, classes, in_channels=3):
        super().__init__()
        bottleneck, blocks = RESNETS[encoder_name]
        self.encoder = ResNetEncoder(bottleneck, blocks, in_channels)
        self.decoder = UnetDecoder(self.encoder.out_channels)
        self.segmentation_head = nn.Sequential(nn.Conv2d(DECODER_CHANNELS[-1], classes, 3, padding=1))

    def forward(self, image):
        return self.segmentation_head(self.decoder(self.encoder(image)))



def build_unet(encoder_name: str, classes: int = 2, in_channels: int = 3):
    """A randomly initialised smp-layout ``Unet`` (PyTorch module) with a ResNet encoder."""
    if encoder_name not in RESNETS:
        raise ModelError(f"The UNet encoder '{encoder_name}' is not supported; use one of {', '.join(RESNETS)}.")
    return Unet(encoder_name, classes, in_channels)


def encoder_of_state_dict(state: dict) -> str:
    """The ResNet encoder a UNet state dict was trained with, from its layer count and block type."""
    bottleneck = "encoder.layer1.0.conv3.weight" in state
    blocks = []
    for stage in range(1, 5):
        prefix = f"encoder.layer{stage}."
        blocks.append(len({key[len(prefix) :].split(".", 1)[0] for key in state if key.startswith(prefix)}))
    for name, layout in RESNETS.items():
        if layout == (bottleneck, tuple(blocks)):
            return name
    raise ModelError("The UNet's weights do not match a ResNet-18/34/50/101/152 encoder.")


def check_smp_config(config: dict, path: Path) -> tuple[str, int]:
    """encoder name and class count of smp's save_pretrained ``config.json``; refuses other layouts."""
    if config.get("_model_class") != "Unet":
        raise ModelError(f"{path} describes an smp '{config.get('_model_class')}'; only Unet models can be exported.")
    unsupported = {
        "encoder_depth": (5,),
        "decoder_channels": (list(DECODER_CHANNELS),),
        "decoder_attention_type": (None,),
        "decoder_use_norm": ("batchnorm", True),
        "decoder_use_batchnorm": (True, "batchnorm"),
        "decoder_interpolation": ("nearest",),
        "decoder_interpolation_mode": ("nearest",),
        "activation": (None,),
        "aux_params": (None,),
        "in_channels": (3,),
    }
    for key, allowed in unsupported.items():
        if key in config and config[key] not in allowed:
            raise ModelError(f"The UNet's setting {key}={config[key]!r} is not supported by the exporter.")
    return str(config.get("encoder_name", "resnet34")), int(config.get("classes", 1))

