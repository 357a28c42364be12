"""PSPNet (Zhao et al., CVPR 2017) on a :class:`ResNetBackbone`: the pyramid pooling module, bins 1, 2, 3, 6.

encoder features = the backbone's last stage (stride 8 by default: ``layer3`` and ``layer4``
dilated, as the paper); decoder = the pyramid pooling module (per bin: average pool to
``bin x bin``, 1x1 conv-BN-ReLU to ``C / len(bins)`` channels, bilinear upsampling back)
concatenated with its input, then a conv-BN-ReLU bottleneck (3x3 in the paper, 1x1 in
segmentation_models_pytorch) and spatial dropout: the decoder features, at the backbone's
output stride. The module and state-dict names are smp's ``PSPDecoder`` (``decoder.psp.blocks.*``,
``decoder.conv.*``), whose choices it keeps: the 1-bin branch has no BatchNorm (a bias
instead: a batch of one image has one value per channel there) and upsampling uses
``align_corners=True``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastseg.models.backbones import build_backbone
from contrastseg.models.base import SegmentationNet, conv_bn_relu
from contrastseg.models.config import ModelConfig
from contrastseg.utils.sections import Float, Int, section


@section("model")
class PSPNetConfig(ModelConfig):
    """PSPNet: pyramid pooling on the last stage, a bottleneck, the classifier."""

    output_stride: Literal[8, 16, 32] = 8
    """output stride of the backbone (the paper: 8)"""
    decoder_channels: Int = 512
    """channels of the bottleneck after the pyramid (the decoder features)"""
    bins: list[Int] = field(default_factory=lambda: [1, 2, 3, 6])
    """pooling bins of the pyramid (the paper: 1, 2, 3, 6)"""
    bottleneck_kernel: Literal[1, 3] = 3
    """kernel of the bottleneck convolution (the paper: 3; segmentation_models_pytorch: 1)"""
    psp_dropout: Float = 0.1
    """spatial dropout on the decoder features"""

    network = "pspnet"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.bins or min(self.bins) < 1:
            raise ValueError(f"model.bins must be positive pooling sizes, got {self.bins}")


class PSPBlock(nn.Module):
    """Average pool to ``bin x bin``, 1x1 conv-BN-ReLU (no BN for one bin), upsample back."""

    def __init__(self, in_channels: int, out_channels: int, bin_size: int) -> None:
        super().__init__()
        conv = conv_bn_relu(in_channels, out_channels, 1)
        if bin_size == 1:  # one value per channel and image: a bias instead of BatchNorm
            conv[0] = nn.Conv2d(in_channels, out_channels, 1, bias=True)
            conv[1] = nn.Identity()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(bin_size), conv)

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear", align_corners=True)


class PSPModule(nn.Module):
    """The pyramid: one :class:`PSPBlock` per bin, concatenated with the input.

    Shapes: ``(B, C, h, w) -> (B, C + len(bins) * (C // len(bins)), h, w)``.
    """

    def __init__(self, in_channels: int, bins: Sequence[int]) -> None:
        super().__init__()
        width = in_channels // len(bins)
        self.blocks = nn.ModuleList(PSPBlock(in_channels, width, b) for b in bins)
        self.out_channels = in_channels + width * len(bins)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([block(x) for block in self.blocks] + [x], dim=1)


class PSPDecoder(nn.Module):
    """Pyramid pooling module, bottleneck conv-BN-ReLU, spatial dropout."""

    def __init__(
        self, in_channels: int, channels: int, bins: Sequence[int], kernel: int, dropout: float
    ) -> None:
        super().__init__()
        self.psp = PSPModule(in_channels, bins)
        self.conv = conv_bn_relu(self.psp.out_channels, channels, kernel)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, stages: Sequence[Tensor]) -> Tensor:
        return self.dropout(self.conv(self.psp(stages[-1])))


class PSPNet(SegmentationNet):
    """PSPNet on a torchvision ResNet, for any number of bands.

    Args:
        num_classes: classifier outputs; ``None`` builds no classifier (pretraining).
        arch: ``resnet18`` / ``resnet34`` / ``resnet50`` / ``resnet101``.
        in_channels: number of input bands.
        output_stride: 8 (the paper), 16 or 32: the stride of the pyramid and decoder features.
        backbone_weights: optional ResNet weights file in torchvision key names.
        decoder_channels: channels of the bottleneck (the decoder features).
        bins: pooling bins of the pyramid.
        bottleneck_kernel: 3 (the paper) or 1 (smp).
        psp_dropout: spatial dropout on the decoder features.
        classifier_features: what the 1x1 classifier reads (``decoder``, ``encoder`` or
            ``backbone``; the last two are the same ``layer4`` output here).
    """

    name = "pspnet"
    config_class = PSPNetConfig
    parts = ("backbone", "decoder")
    encoder_parts = ("backbone",)

    def __init__(
        self,
        num_classes: int | None = None,
        arch: str = "resnet50",
        in_channels: int = 3,
        output_stride: int = 8,
        backbone_weights: str | os.PathLike[str] | None = None,
        decoder_channels: int = 512,
        bins: Sequence[int] = (1, 2, 3, 6),
        bottleneck_kernel: int = 3,
        psp_dropout: float = 0.1,
        classifier_features: Literal["decoder", "encoder", "backbone"] = "decoder",
    ) -> None:
        super().__init__()
        self.backbone = build_backbone(arch, in_channels, output_stride, backbone_weights)
        self.decoder = PSPDecoder(
            self.backbone.out_channels, decoder_channels, bins, bottleneck_kernel, psp_dropout
        )
        self.decoder_stride = output_stride
        self.encoder_channels = self.backbone.out_channels
        self.decoder_channels = decoder_channels
        self._init_classifier(num_classes, in_channels, classifier_features)
