"""DeepLabV3+ (Chen et al., ECCV 2018, arXiv 1802.02611) on a :class:`ResNetBackbone`.

encoder = backbone + ASPP (stride ``output_stride``), decoder = stride-4 fusion with the
``layer1`` skip reduced to 48 channels, classifier = 1x1 convolution. GLCNet's global
branch reads the encoder features, its local branch the decoder features; both are
exposed without computing anything that is not asked for.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastseg.models.backbones import build_backbone
from contrastseg.models.base import (
    CLASSIFIER_FEATURES,
    DECODER_STRIDE,
    DeepLabFeatures,
    DeepLabOutput,
    SegmentationNet,
)
from contrastseg.models.base import conv_bn_relu as _conv_bn_relu
from contrastseg.models.config import ModelConfig
from contrastseg.utils.sections import Bool, Float, FloatPair, Int, section

__all__ = [
    "ASPP",
    "CLASSIFIER_FEATURES",
    "DECODER_STRIDE",
    "Decoder",
    "DeepLabFeatures",
    "DeepLabOutput",
    "DeepLabV3Plus",
    "DeepLabV3PlusConfig",
    "aspp_rates",
    "set_batchnorm_momentum",
]


def set_batchnorm_momentum(module: nn.Module, momentum: float) -> None:
    """Set ``momentum`` on every BatchNorm layer of ``module``, in PyTorch's convention.

    PyTorch's ``momentum`` is the weight of the *new* batch statistic:
    ``running = (1 - momentum) * running + momentum * batch`` (torch's default 0.1). The
    official GLCNet code passes ``momentum=0.9`` to layers that update the same way
    (``SynchronizedBatchNorm2d`` falls back to ``F.batch_norm``), so its running statistics
    are 90 % the last batch's.
    """
    if not 0.0 < momentum <= 1.0:
        raise ValueError(f"BatchNorm momentum must lie in (0, 1], got {momentum}")
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.momentum = momentum


def aspp_rates(output_stride: int) -> tuple[int, int, int]:
    """Atrous rates for the three 3x3 ASPP branches: 6/12/18 at stride 16, scaled with the stride."""
    scale = 16 / output_stride
    return tuple(round(r * scale) for r in (6, 12, 18))  # type: ignore[return-value]


class ASPPPooling(nn.Module):
    """Image-level branch: global average pool -> 1x1 conv -> BN -> ReLU -> broadcast back."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = _conv_bn_relu(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.conv(F.adaptive_avg_pool2d(x, 1))
        return pooled.expand(-1, -1, x.shape[-2], x.shape[-1])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three atrous 3x3 and image pooling, then a 1x1 fusion.

    Args:
        in_channels: channels of the backbone output.
        out_channels: channels of every branch and of the output (256 in the paper).
        rates: dilations of the three 3x3 branches (see :func:`aspp_rates`).
        separable: depthwise-separable 3x3 branches (DeepLabV3+'s Xception variant).
        dropout: dropout after the fusion, active in training only.

    Shapes: ``(B, in_channels, h, w) -> (B, out_channels, h, w)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        rates: tuple[int, int, int] = (6, 12, 18),
        separable: bool = False,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        branches = [_conv_bn_relu(in_channels, out_channels, 1)]
        branches += [
            _conv_bn_relu(in_channels, out_channels, 3, dilation=r, separable=separable)
            for r in rates
        ]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(
            *_conv_bn_relu(len(branches) * out_channels, out_channels, 1), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class Decoder(nn.Module):
    """DeepLabV3+ decoder: upsample the encoder output to stride 4 and fuse it with the skip.

    ``reduce`` (1x1, the skip to ``low_level_reduced`` channels), then ``convs`` 3x3 ``fuse``
    blocks (Conv-BN-ReLU each): two in the paper and the official GLCNet code, one in smp's
    ``DeepLabV3Plus`` (a separable one: ``separable=True, convs=1`` costs what smp's decoder
    does, about a fifteenth of the paper's at stride 4). ``dropout`` = (p after the first 3x3
    block, p after the second): a ``p > 0`` appends ``nn.Dropout(p)`` to that block (after
    its ReLU), which adds no parameters, so the state-dict keys stay the same; ``(0, 0)`` (the
    default) adds nothing. The official GLCNet fine-tuning decoder has ``(0.5, 0.1)``.

    Shapes: ``encoder (B, C_enc, h, w)``, ``low_level (B, C_low, H/4, W/4)`` ->
    ``(B, channels, H/4, W/4)``.
    """

    def __init__(
        self,
        encoder_channels: int,
        low_level_channels: int,
        low_level_reduced: int = 48,
        channels: int = 256,
        separable: bool = False,
        dropout: Sequence[float] = (0.0, 0.0),
        convs: int = 2,
    ) -> None:
        super().__init__()
        if len(dropout) != 2 or not all(0.0 <= p < 1.0 for p in dropout):
            raise ValueError(f"decoder dropout must be two values in [0, 1), got {list(dropout)}")
        if convs not in (1, 2):
            raise ValueError(f"decoder convs must be 1 or 2, got {convs!r}")
        if convs == 1 and dropout[1] > 0:
            raise ValueError(
                f"decoder dropout {list(dropout)}: its second value follows the second 3x3 "
                "convolution, which a decoder of one convolution does not have; set it to 0"
            )
        self.reduce = _conv_bn_relu(low_level_channels, low_level_reduced, 1)
        fuse = [
            _conv_bn_relu(encoder_channels + low_level_reduced, channels, 3, separable=separable)
        ]
        if convs == 2:
            fuse.append(_conv_bn_relu(channels, channels, 3, separable=separable))
        self.fuse = nn.Sequential(*fuse)
        for block, p in zip(self.fuse, dropout, strict=False):
            if p > 0:
                block.append(nn.Dropout(p))
        self.out_channels = channels

    def forward(self, encoder: Tensor, low_level: Tensor) -> Tensor:
        up = F.interpolate(encoder, size=low_level.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([up, self.reduce(low_level)], dim=1))


@section("model")
class DeepLabV3PlusConfig(ModelConfig):
    """DeepLabV3+: ASPP on the backbone (the encoder features), a stride-4 decoder with the ``layer1`` skip."""

    decoder_channels: Int = 256
    """channels of the decoder features (stride 4)"""
    aspp_channels: Int = 256
    """channels of the ASPP branches and output (the encoder features)"""
    low_level_channels: Int = 48
    """channels the stride-4 skip is reduced to"""
    separable: Bool = False
    """depthwise-separable 3x3 convolutions in ASPP and decoder"""
    decoder_convs: Literal[1, 2] = 2
    """3x3 convolutions of the decoder after the skip is joined: 2 as the paper and the official
    GLCNet code, 1 as smp's DeepLabV3Plus (with separable: true, its decoder's cost: about 1/15 of
    the paper's decoder FLOPs, which make up half of a GLCNet forward at 96 px)"""
    aspp_dropout: Float = 0.5
    """dropout after the ASPP fusion"""
    decoder_dropout: FloatPair = (0.0, 0.0)
    """dropout after the decoder's second and third convolutions, its two 3x3 ones ([0, 0] = none;
    official fine-tuning: [0.5, 0.1])"""
    bn_momentum: Float = 0.1
    """momentum of every BatchNorm of the network in PyTorch's convention, the weight of the new
    batch statistic: running = (1 - m) * running + m * batch (torch's 0.1; official: 0.9 in this
    same convention)"""
    dilation_convention: Literal["torchvision", "official"] = "torchvision"
    """dilated ResNet stages: torchvision (the first block's 3x3 conv keeps the previous dilation:
    layer4.0.conv2 dilation 1 at stride 16) or official (it gets the stage's: 2, as the official
    ResNet.py)"""

    network = "deeplabv3plus"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.decoder_dropout = tuple(self.decoder_dropout)  # type: ignore[assignment]
        if len(self.decoder_dropout) != 2 or not all(0.0 <= p < 1.0 for p in self.decoder_dropout):
            raise ValueError(
                "model.decoder_dropout must be two probabilities in [0, 1) (after the decoder's "
                f"second and third convolutions), got {list(self.decoder_dropout)}"
            )
        if self.decoder_convs == 1 and self.decoder_dropout[1] > 0:
            raise ValueError(
                f"model.decoder_dropout is {list(self.decoder_dropout)}, but its second value "
                "follows the decoder's second 3x3 convolution, which model.decoder_convs: 1 does "
                "not build; set it to 0"
            )
        if not 0.0 < self.bn_momentum <= 1.0:
            raise ValueError(
                "model.bn_momentum must lie in (0, 1] (PyTorch's convention: the weight of the "
                f"new batch statistic), got {self.bn_momentum}"
            )


class ASPPNet(SegmentationNet):
    """A network whose encoder features are the ASPP output on the backbone (DeepLabV3, V3+)."""

    aspp: ASPP

    def _needs_two_samples(self) -> bool:
        # the ASPP image-pooling BatchNorm sees one value per channel and image
        return self.aspp.branches[-1].conv[1].training

    def _encode(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        stages = self.backbone.stages(x)
        return stages, self.aspp(stages[-1])


class DeepLabV3Plus(ASPPNet):
    """DeepLabV3+ with a torchvision ResNet backbone, for any number of bands.

    Args:
        num_classes: classifier outputs; ``None`` builds no classifier (pretraining).
        arch: ``resnet18`` / ``resnet34`` / ``resnet50`` / ``resnet101``.
        in_channels: number of input bands.
        output_stride: 8, 16 or 32; ASPP rates scale with it (6/12/18 at 16, 12/24/36 at 8).
        backbone_weights: optional ResNet weights file in torchvision key names.
        aspp_channels: channels of the ASPP branches and output.
        decoder_channels: channels of the decoder's 3x3 convolutions.
        low_level_channels: channels the stride-4 skip is reduced to (48 in the paper).
        separable: depthwise-separable 3x3 convolutions in ASPP and decoder.
        decoder_convs: 3x3 convolutions of the decoder after the skip is joined (2 in the
            paper, 1 in smp's DeepLabV3Plus).
        aspp_dropout: dropout after the ASPP fusion.
        decoder_dropout: dropout after the decoder's two 3x3 convolutions (its second and
            third convolutions; see :class:`Decoder`); ``(0, 0)`` = none.
        bn_momentum: momentum of every BatchNorm layer, PyTorch's convention (the weight of
            the new batch statistic; see :func:`set_batchnorm_momentum`).
        dilation_convention: ``torchvision`` or ``official`` (see
            :class:`~contrastseg.models.backbone.ResNetBackbone`).
        classifier_features: what the 1x1 classifier reads: ``decoder`` (the segmenter),
            ``encoder`` (ASPP output) or ``backbone`` (the ResNet's last stage). The last two
            are for linear probes of encoders that were pretrained without a decoder; the
            parts behind the chosen features are not run.

    ``model(x)`` returns logits ``(B, num_classes, H, W)`` at input resolution;
    ``model(x, return_features=True)`` returns :class:`DeepLabOutput`;
    :meth:`forward_features` returns the encoder (and optionally decoder) features without
    running the classifier.
    """

    name = "deeplabv3plus"
    config_class = DeepLabV3PlusConfig
    parts = ("backbone", "aspp", "decoder")
    encoder_parts = ("backbone", "aspp")

    def __init__(
        self,
        num_classes: int | None = None,
        arch: str = "resnet50",
        in_channels: int = 3,
        output_stride: int = 16,
        backbone_weights: str | os.PathLike[str] | None = None,
        aspp_channels: int = 256,
        decoder_channels: int = 256,
        low_level_channels: int = 48,
        separable: bool = False,
        aspp_dropout: float = 0.5,
        classifier_features: Literal["decoder", "encoder", "backbone"] = "decoder",
        decoder_dropout: Sequence[float] = (0.0, 0.0),
        bn_momentum: float = 0.1,
        dilation_convention: str = "torchvision",
        decoder_convs: int = 2,
    ) -> None:
        super().__init__()
        self.backbone = build_backbone(
            arch,
            in_channels,
            output_stride,
            backbone_weights,
            dilation_convention=dilation_convention,
        )
        self.aspp = ASPP(
            self.backbone.out_channels,
            aspp_channels,
            aspp_rates(output_stride),
            separable=separable,
            dropout=aspp_dropout,
        )
        self.decoder = Decoder(
            aspp_channels,
            self.backbone.low_level_channels,
            low_level_reduced=low_level_channels,
            channels=decoder_channels,
            separable=separable,
            dropout=tuple(decoder_dropout),
            convs=decoder_convs,
        )
        self.encoder_channels = aspp_channels
        self.decoder_channels = decoder_channels
        self._init_classifier(num_classes, in_channels, classifier_features)
        set_batchnorm_momentum(self, bn_momentum)

    def _decode(self, stages: list[Tensor], encoder: Tensor) -> Tensor:
        return self.decoder(encoder, stages[0])
