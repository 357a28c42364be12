"""ResUNet (Zhang, Liu and Wang, GRSL 2018: a U-Net with residual units) on a :class:`ResNetBackbone`.

The U-Net of :mod:`contrastseg.models.unet` (same skips, widths, stride-4 decoder features,
parts and config keys) whose decoder blocks are residual: after upsampling and concatenating
the skip, ``conv3x3-BN-ReLU-conv3x3-BN`` plus a ``1x1 conv-BN`` shortcut of the same input,
then ReLU (the residual unit of ResNet, He et al. 2016, with a projection shortcut because
the concatenation changes the width).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastseg.models.base import conv_bn_relu
from contrastseg.models.unet import UNet, UNetConfig
from contrastseg.utils.sections import section


@section("model")
class ResUNetConfig(UNetConfig):
    """ResUNet: the U-Net with residual decoder blocks (the same keys)."""

    network = "resunet"


class ResUNetBlock(nn.Module):
    """Upsample to the skip's size, concatenate the skip, residual unit with a 1x1 shortcut.

    Shapes: ``x (B, C_in, h, w)``, ``skip (B, C_skip, H', W')`` -> ``(B, out_channels, H', W')``.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        width = in_channels + skip_channels
        self.conv1 = conv_bn_relu(width, out_channels, 3)
        self.conv2 = conv_bn_relu(out_channels, out_channels, 3)[:2]  # no ReLU before the sum
        self.shortcut = nn.Sequential(
            nn.Conv2d(width, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
        )

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
        x = torch.cat([x, skip], dim=1)
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResUNet(UNet):
    """U-Net with residual decoder blocks on a torchvision ResNet (arguments: :class:`UNet`'s)."""

    name = "resunet"
    config_class = ResUNetConfig
    block = ResUNetBlock
