"""FCN (Long, Shelhamer and Darrell, CVPR 2015) on a :class:`ResNetBackbone`: FCN-32s, 16s and 8s.

encoder = backbone + ``head`` (torchvision's ``FCNHead`` without its last 1x1: 3x3 conv to a
quarter of the last stage's channels, BN, ReLU, dropout 0.1); decoder = the skip fusion of
the variant: ``32s`` none (the head's output is the decoder features, at the backbone's
output stride), ``16s`` adds a 1x1 projection of ``layer3`` after upsampling the head's
output to its size, ``8s`` then adds one of ``layer2`` (stride 8). The 1x1 classifier reads
the fused features.

Two departures from the paper, both so that the network pretrains without classes and
matches torchvision: the fusion sums class-agnostic features and the classifier follows,
where the paper sums per-stage class scores (a 1x1 classifier is linear, so a sum of
projections followed by it is a sum of per-stage score layers); upsampling is bilinear
(the paper's deconvolutions start bilinear). As in the paper the skip projections start
at zero, so an untrained FCN-8s computes what its FCN-32s does.

``torchvision.models.segmentation.fcn_resnet50`` is this network with ``variant=32s`` and
``output_stride=8``; its state dict loads under :data:`TORCHVISION_KEYS`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from contrastseg.models.backbones import build_backbone
from contrastseg.models.base import SegmentationNet
from contrastseg.models.config import ModelConfig
from contrastseg.utils.sections import Float, Int, section

#: torchvision ``fcn_resnet50`` key prefix -> ours (``backbone.*`` is the same; the
#: auxiliary classifier has no counterpart).
TORCHVISION_KEYS: dict[str, str] = {
    "classifier.0.": "head.0.",
    "classifier.1.": "head.1.",
    "classifier.4.": "classifier.",
}
VARIANTS = ("32s", "16s", "8s")


@section("model")
class FCNConfig(ModelConfig):
    """FCN: a 3x3 head on the last stage, fused with the stride-16 (16s) and stride-8 (8s) stages."""

    output_stride: Literal[8, 16, 32] = 32
    """output stride of the backbone (32: the paper's FCN; torchvision's fcn_resnet50: 8)"""
    variant: Literal["32s", "16s", "8s"] = "8s"
    """32s: no skip; 16s: + layer3; 8s: + layer3 and layer2 (the decoder features' stride is the
    last skip's)"""
    decoder_channels: Int | None = None
    """channels of the head's output (the encoder and decoder features); null = a quarter of the
    last stage's (torchvision)"""
    head_dropout: Float = 0.1
    """dropout after the head"""

    network = "fcn"


class FCNDecoder(nn.Module):
    """Skip fusion: upsample to the next skip's size (bilinear) and add its 1x1 projection.

    Args:
        skip_channels: channels of the skips, deepest first (``layer3``, ``layer2``), as many
            as the variant fuses (none for FCN-32s).
        channels: channels of the head's output and of the projections.

    Shapes: ``encoder (B, channels, h, w)`` and ``skips`` -> ``(B, channels, H', W')``, the
    last skip's size (the encoder's size without skips).
    """

    def __init__(self, skip_channels: Sequence[int], channels: int) -> None:
        super().__init__()
        self.skips = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in skip_channels)
        for conv in self.skips:  # the paper starts the added score layers at zero
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, encoder: Tensor, skips: Sequence[Tensor]) -> Tensor:
        x = encoder
        for conv, skip in zip(self.skips, skips, strict=False):
            up = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = up + conv(skip)
        return x


class FCN(SegmentationNet):
    """FCN-32s / 16s / 8s on a torchvision ResNet, for any number of bands.

    Args:
        num_classes: classifier outputs; ``None`` builds no classifier (pretraining).
        arch: ``resnet18`` / ``resnet34`` / ``resnet50`` / ``resnet101``.
        in_channels: number of input bands.
        output_stride: 8, 16 or 32 (the backbone's).
        backbone_weights: optional ResNet weights file in torchvision key names.
        variant: ``32s``, ``16s`` or ``8s``.
        decoder_channels: width of the head and the fusion; ``None`` = a quarter of the
            last stage's channels (512 for ResNet-50, torchvision's ``FCNHead``).
        head_dropout: dropout after the head.
        classifier_features: what the 1x1 classifier reads (``decoder``, ``encoder`` =
            the head's output, or ``backbone``).
    """

    name = "fcn"
    config_class = FCNConfig
    parts = ("backbone", "head", "decoder")
    encoder_parts = ("backbone", "head")

    def __init__(
        self,
        num_classes: int | None = None,
        arch: str = "resnet50",
        in_channels: int = 3,
        output_stride: int = 32,
        backbone_weights: str | os.PathLike[str] | None = None,
        variant: str = "8s",
        decoder_channels: int | None = None,
        head_dropout: float = 0.1,
        classifier_features: Literal["decoder", "encoder", "backbone"] = "decoder",
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"FCN variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        self.backbone = build_backbone(arch, in_channels, output_stride, backbone_weights)
        last = self.backbone.out_channels
        channels = decoder_channels or last // 4
        self.head = nn.Sequential(
            nn.Conv2d(last, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Dropout(head_dropout),
        )
        self.variant = variant
        self.num_skips = VARIANTS.index(variant)
        stage_channels = self.backbone.stage_channels
        self.decoder = FCNDecoder(
            [stage_channels[2], stage_channels[1]][: self.num_skips], channels
        )
        # layer3 has stride min(16, os), layer2 min(8, os)
        self.decoder_stride = min((output_stride, 16, 8)[self.num_skips], output_stride)
        self.encoder_channels = self.decoder_channels = channels
        self._init_classifier(num_classes, in_channels, classifier_features)

    def _encode(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        stages = self.backbone.stages(x)
        return stages, self.head(stages[-1])

    def _decode(self, stages: list[Tensor], encoder: Tensor) -> Tensor:
        return self.decoder(encoder, [stages[2], stages[1]][: self.num_skips])
