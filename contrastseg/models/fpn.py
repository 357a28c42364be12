"""Feature Pyramid Network decoder (Kirillov et al., panoptic FPN, CVPR 2019) on a :class:`ResNetBackbone`.

The decoder follows segmentation_models_pytorch's ``FPN`` (same module and state-dict names):
a 1x1 lateral on ``layer4`` (P5), top-down nearest upsampling plus 1x1 laterals of
``layer3``/``layer2``/``layer1`` (P4 ... P2), then per level 3x3 conv-GroupNorm-ReLU blocks
with bilinear x2 upsampling (align_corners) down to stride 4, summed, then spatial dropout.
The sum is the decoder features at stride 4. Upsampling goes to the next level's size
instead of a fixed factor 2, so a dilated backbone (output stride 8 or 16, where levels share
a size) works too; at output stride 32 this is smp's computation. encoder features = the
backbone's last stage (``layer4``); parts: ``backbone``, ``decoder``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from contrastseg.models.backbones import build_backbone
from contrastseg.models.base import SegmentationNet
from contrastseg.models.config import ModelConfig
from contrastseg.utils.sections import Float, Int, section


class ConvGNReLU(nn.Module):
    """3x3 conv -> GroupNorm -> ReLU, then optionally bilinear upsampling to a given size."""

    def __init__(self, in_channels: int, out_channels: int, upsample: bool = False) -> None:
        super().__init__()
        self.upsample = upsample
        # smp uses 32 groups; a width that 32 does not divide gets the largest divisor of both
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(math.gcd(32, out_channels), out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor, size: Sequence[int] | None = None) -> Tensor:
        x = self.block(x)
        if self.upsample and size is not None:
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
        return x


class FPNBlock(nn.Module):
    """Top-down step: upsample the coarser level (nearest) and add the 1x1 lateral of the skip."""

    def __init__(self, pyramid_channels: int, skip_channels: int) -> None:
        super().__init__()
        self.skip_conv = nn.Conv2d(skip_channels, pyramid_channels, kernel_size=1)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return F.interpolate(x, size=skip.shape[-2:], mode="nearest") + self.skip_conv(skip)


class SegmentationBlock(nn.Module):
    """``max(1, n)`` :class:`ConvGNReLU` with ``n`` upsampling steps along ``sizes``."""

    def __init__(self, in_channels: int, out_channels: int, n_upsamples: int) -> None:
        super().__init__()
        blocks = [ConvGNReLU(in_channels, out_channels, upsample=n_upsamples > 0)]
        for _ in range(1, n_upsamples):
            blocks.append(ConvGNReLU(out_channels, out_channels, upsample=True))
        self.block = nn.Sequential(*blocks)

    def forward(self, x: Tensor, sizes: Sequence[Sequence[int]]) -> Tensor:
        for i, module in enumerate(self.block):
            x = module(x, sizes[i] if i < len(sizes) else None)
        return x


class FPNDecoder(nn.Module):
    """Pyramid P5 ... P2, one segmentation block per level, summed at stride 4, dropout.

    Args:
        stage_channels: channels of ``layer1`` ... ``layer4``.
        pyramid_channels: width of P2 ... P5 (smp: 256).
        segmentation_channels: width of the segmentation blocks and of the output (smp: 128).
        dropout: ``Dropout2d`` probability on the sum (smp: 0.2).

    Shapes: ``stages`` = ``[layer1 (B, c1, H/4, W/4), ..., layer4]`` ->
    ``(B, segmentation_channels, H/4, W/4)``.
    """

    def __init__(
        self,
        stage_channels: Sequence[int],
        pyramid_channels: int = 256,
        segmentation_channels: int = 128,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        c2, c3, c4, c5 = stage_channels
        self.p5 = nn.Conv2d(c5, pyramid_channels, kernel_size=1)
        self.p4 = FPNBlock(pyramid_channels, c4)
        self.p3 = FPNBlock(pyramid_channels, c3)
        self.p2 = FPNBlock(pyramid_channels, c2)
        self.seg_blocks = nn.ModuleList(
            SegmentationBlock(pyramid_channels, segmentation_channels, n) for n in (3, 2, 1, 0)
        )
        self.dropout = nn.Dropout2d(p=dropout)
        self.out_channels = segmentation_channels

    def forward(self, stages: Sequence[Tensor]) -> Tensor:
        c2, c3, c4, c5 = stages
        p5 = self.p5(c5)
        p4 = self.p4(p5, c4)
        p3 = self.p3(p4, c3)
        p2 = self.p2(p3, c2)
        sizes = [c4.shape[-2:], c3.shape[-2:], c2.shape[-2:]]
        levels = zip(self.seg_blocks, (p5, p4, p3, p2), strict=True)
        pyramid = [block(p, sizes[i:]) for i, (block, p) in enumerate(levels)]
        return self.dropout(sum(pyramid[1:], pyramid[0]))


@section("model")
class FPNConfig(ModelConfig):
    """FPN: pyramid P5 ... P2 on the four stages, merged at stride 4."""

    decoder_channels: Int = 128
    """channels of the decoder features (the segmentation blocks)"""
    fpn_channels: Int = 256
    """width of the pyramid levels P2 ... P5"""
    fpn_dropout: Float = 0.2
    """spatial dropout on the merged features"""

    network = "fpn"


class FPN(SegmentationNet):
    """FPN on a torchvision ResNet, decoder features at stride 4, for any number of bands.

    Args:
        num_classes: classifier outputs; ``None`` builds no classifier (pretraining).
        arch: ``resnet18`` / ``resnet34`` / ``resnet50`` / ``resnet101``.
        in_channels: number of input bands.
        output_stride: 8, 16 or 32 (the backbone's; 32 is the classic FPN).
        backbone_weights: optional ResNet weights file in torchvision key names.
        decoder_channels: width of the segmentation blocks (the decoder features).
        pyramid_channels: width of the pyramid levels P2 ... P5.
        dropout: spatial dropout on the merged features.
        classifier_features: what the 1x1 classifier reads (``decoder``, ``encoder`` or
            ``backbone``; the last two are the same ``layer4`` output here).
    """

    name = "fpn"
    config_class = FPNConfig
    parts = ("backbone", "decoder")
    encoder_parts = ("backbone",)

    def __init__(
        self,
        num_classes: int | None = None,
        arch: str = "resnet50",
        in_channels: int = 3,
        output_stride: int = 32,
        backbone_weights: str | os.PathLike[str] | None = None,
        decoder_channels: int = 128,
        pyramid_channels: int = 256,
        dropout: float = 0.2,
        classifier_features: Literal["decoder", "encoder", "backbone"] = "decoder",
    ) -> None:
        super().__init__()
        self.backbone = build_backbone(arch, in_channels, output_stride, backbone_weights)
        self.decoder = FPNDecoder(
            self.backbone.stage_channels, pyramid_channels, decoder_channels, dropout
        )
        self.encoder_channels = self.backbone.out_channels
        self.decoder_channels = decoder_channels
        self._init_classifier(num_classes, in_channels, classifier_features)

    @classmethod
    def config_kwargs(cls, settings: dict[str, Any]) -> dict[str, Any]:
        settings["pyramid_channels"] = settings.pop("fpn_channels")
        settings["dropout"] = settings.pop("fpn_dropout")
        return settings
