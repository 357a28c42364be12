"""ParseNet (Liu, Rabinovich and Berg, arXiv 1506.04579): global context on a :class:`ResNetBackbone`.

encoder features = the backbone's last stage (stride 8 by default, as the DeepLab-LargeFOV
base ParseNet was built on); decoder = the paper's global-context fusion: the feature map's
global average (its *context*) and the map itself are each L2-normalised over the channels
at every position and multiplied by a learned per-channel scale (one vector per branch),
the context is unpooled (repeated over the map) and both are concatenated. The decoder
features have twice the last stage's channels, at the backbone's output stride; the 1x1
classifier reads them.
"""

from __future__ import annotations

import os
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastseg.models.backbones import build_backbone
from contrastseg.models.base import SegmentationNet
from contrastseg.models.config import ModelConfig
from contrastseg.utils.sections import Float, section


@section("model")
class ParseNetConfig(ModelConfig):
    """ParseNet: L2-normalised, scaled local features and unpooled global context, concatenated."""

    output_stride: Literal[8, 16, 32] = 8
    """output stride of the backbone (ParseNet's base: 8)"""
    scale_init: Float = 10.0
    """initial value of the learned per-channel scales after the L2 normalisation"""

    network = "parsenet"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.scale_init > 0:
            raise ValueError(f"model.scale_init must be > 0, got {self.scale_init}")


class ParseNetDecoder(nn.Module):
    """``[L2(x) * local_scale, unpool(L2(mean(x)) * global_scale)]`` over the channels.

    Shapes: ``stages[-1] (B, C, h, w) -> (B, 2C, h, w)``.
    """

    def __init__(self, channels: int, scale_init: float = 10.0) -> None:
        super().__init__()
        self.local_scale = nn.Parameter(torch.full((channels,), float(scale_init)))
        self.global_scale = nn.Parameter(torch.full((channels,), float(scale_init)))

    def forward(self, stages: list[Tensor]) -> Tensor:
        x = stages[-1]
        context = F.adaptive_avg_pool2d(x, 1)
        local = F.normalize(x, dim=1) * self.local_scale[:, None, None]
        context = F.normalize(context, dim=1) * self.global_scale[:, None, None]
        return torch.cat([local, context.expand_as(x)], dim=1)


class ParseNet(SegmentationNet):
    """ParseNet on a torchvision ResNet, for any number of bands.

    Args:
        num_classes: classifier outputs; ``None`` builds no classifier (pretraining).
        arch: ``resnet18`` / ``resnet34`` / ``resnet50`` / ``resnet101``.
        in_channels: number of input bands.
        output_stride: 8 (default), 16 or 32: the stride of the decoder features.
        backbone_weights: optional ResNet weights file in torchvision key names.
        scale_init: initial value of the learned scales.
        classifier_features: what the 1x1 classifier reads (``decoder``, ``encoder`` or
            ``backbone``; the last two are the same ``layer4`` output here).
    """

    name = "parsenet"
    config_class = ParseNetConfig
    parts = ("backbone", "decoder")
    encoder_parts = ("backbone",)

    def __init__(
        self,
        num_classes: int | None = None,
        arch: str = "resnet50",
        in_channels: int = 3,
        output_stride: int = 8,
        backbone_weights: str | os.PathLike[str] | None = None,
        scale_init: float = 10.0,
        classifier_features: Literal["decoder", "encoder", "backbone"] = "decoder",
    ) -> None:
        super().__init__()
        self.backbone = build_backbone(arch, in_channels, output_stride, backbone_weights)
        self.decoder = ParseNetDecoder(self.backbone.out_channels, scale_init)
        self.decoder_stride = output_stride
        self.encoder_channels = self.backbone.out_channels
        self.decoder_channels = 2 * self.backbone.out_channels
        self._init_classifier(num_classes, in_channels, classifier_features)
