"""DeepLabV3+ (Chen et al., ECCV 2018, arXiv 1802.02611) on a :class:`ResNetBackbone`.

encoder = backbone + ASPP (stride ``output_stride``), decoder = stride-4 fusion with the
``layer1`` skip reduced to 48 channels, classifier = 1x1 convolution. GLCNet's global
branch reads the encoder features, its local branch the decoder features; both are
exposed without computing anything that is not asked for.
"""

from __future__ import annotations

import os
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastseg.models.backbone import ResNetBackbone

#: Output stride of the decoder features (the ``layer1`` skip).
DECODER_STRIDE = 4
#: Features a classifier (or a linear probe) can read, shallowest last.
CLASSIFIER_FEATURES = ("decoder", "encoder", "backbone")


def _conv_bn_relu(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 1,
    dilation: int = 1,
    separable: bool = False,
) -> nn.Sequential:
    """Conv -> BN -> ReLU; a 3x3 ``separable`` conv is depthwise (dilated) then pointwise."""
    padding = dilation * (kernel_size - 1) // 2
    if separable and kernel_size > 1:
        return nn.Sequential(
            nn.Conv2d(
                in_channels,
                in_channels,
                kernel_size,
                padding=padding,
                dilation=dilation,
                groups=in_channels,
                bias=False,
            ),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
    return nn.Sequential(
        nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


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
    ) -> None:
        super().__init__()
        self.reduce = _conv_bn_relu(low_level_channels, low_level_reduced, 1)
        self.fuse = nn.Sequential(
            _conv_bn_relu(encoder_channels + low_level_reduced, channels, 3, separable=separable),
            _conv_bn_relu(channels, channels, 3, separable=separable),
        )
        self.out_channels = channels

    def forward(self, encoder: Tensor, low_level: Tensor) -> Tensor:
        up = F.interpolate(encoder, size=low_level.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([up, self.reduce(low_level)], dim=1))


class DeepLabFeatures(NamedTuple):
    """What :meth:`DeepLabV3Plus.forward_features` returns.

    Attributes:
        encoder: ASPP output ``(B, aspp_channels, ~H/os, ~W/os)``.
        decoder: decoder output ``(B, decoder_channels, ceil(H/4), ceil(W/4))``, or ``None``
            when the decoder was not asked for.
    """

    encoder: Tensor
    decoder: Tensor | None


class DeepLabOutput(NamedTuple):
    """What ``DeepLabV3Plus(x, return_features=True)`` returns: logits and both feature maps."""

    logits: Tensor
    encoder: Tensor
    decoder: Tensor


class DeepLabV3Plus(nn.Module):
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
        aspp_dropout: dropout after the ASPP fusion.
        classifier_features: what the 1x1 classifier reads: ``decoder`` (the segmenter),
            ``encoder`` (ASPP output) or ``backbone`` (the ResNet's last stage). The last two
            are for linear probes of encoders that were pretrained without a decoder; the
            parts behind the chosen features are not run.

    ``model(x)`` returns logits ``(B, num_classes, H, W)`` at input resolution;
    ``model(x, return_features=True)`` returns :class:`DeepLabOutput`;
    :meth:`forward_features` returns the encoder (and optionally decoder) features without
    running the classifier.
    """

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
    ) -> None:
        super().__init__()
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 or None, got {num_classes}")
        if classifier_features not in CLASSIFIER_FEATURES:
            raise ValueError(
                f"classifier_features must be one of {', '.join(CLASSIFIER_FEATURES)}, "
                f"got {classifier_features!r}"
            )
        self.backbone = ResNetBackbone(arch, in_channels, output_stride, weights=backbone_weights)
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
        )
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.encoder_channels = aspp_channels
        self.decoder_channels = decoder_channels
        self.classifier_features = classifier_features
        self.classifier = (
            nn.Conv2d(self.feature_channels(classifier_features), num_classes, 1)
            if num_classes
            else None
        )

    def feature_channels(self, features: str) -> int:
        """Channels of ``backbone`` (last stage), ``encoder`` (ASPP) or ``decoder`` features."""
        return {
            "backbone": self.backbone.out_channels,
            "encoder": self.encoder_channels,
            "decoder": self.decoder_channels,
        }[features]

    def feature_stride(self, features: str) -> int:
        """Output stride of ``backbone`` / ``encoder`` features (the backbone's) or ``decoder`` (4)."""
        return DECODER_STRIDE if features == "decoder" else self.backbone.output_stride

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.ndim != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"expected an image batch of shape (B, C, H, W), got {shape}")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"input has {x.shape[1]} bands but the model was built for {self.in_channels} "
                f"(input shape {tuple(x.shape)}); set the model's in_channels to the data's band count"
            )
        if not x.is_floating_point():
            raise ValueError(f"expected a floating-point image batch, got dtype {x.dtype}")
        if x.shape[0] < 2 and self.aspp.branches[-1].conv[1].training:
            raise ValueError(
                "training needs a batch of at least 2 images: BatchNorm (ASPP image pooling) "
                f"cannot normalise a single value per channel; got batch shape {tuple(x.shape)}"
            )

    def forward_features(self, x: Tensor, decoder: bool = True) -> DeepLabFeatures:
        """Encoder (ASPP) features, and the decoder features when ``decoder`` is true."""
        self._check_input(x)
        low_level, high = self.backbone(x)
        encoder = self.aspp(high)
        dec = self.decoder(encoder, low_level) if decoder else None
        return DeepLabFeatures(encoder, dec)

    def classifier_input(self, x: Tensor) -> Tensor:
        """The features the classifier reads (see ``classifier_features``), nothing more."""
        self._check_input(x)
        if self.classifier_features == "backbone":
            return self.backbone(x)[1]
        encoder, dec = self.forward_features(x, decoder=self.classifier_features == "decoder")
        return encoder if dec is None else dec

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | DeepLabOutput:
        if self.classifier is None:
            raise RuntimeError(
                "this DeepLabV3Plus was built with num_classes=None (a pretraining encoder); "
                "use forward_features(), or build it with num_classes to get logits"
            )
        if return_features:
            if self.classifier_features != "decoder":
                raise RuntimeError(
                    "return_features=True needs classifier_features='decoder', got "
                    f"{self.classifier_features!r}"
                )
            encoder, dec = self.forward_features(x, decoder=True)
            assert dec is not None
            return DeepLabOutput(self._upsampled_logits(dec, x), encoder, dec)
        return self._upsampled_logits(self.classifier_input(x), x)

    def _upsampled_logits(self, features: Tensor, x: Tensor) -> Tensor:
        # a 1x1 conv commutes with bilinear upsampling (its weights sum to 1), so classifying
        # at feature resolution and upsampling the logits equals classifying upsampled features
        assert self.classifier is not None
        return F.interpolate(
            self.classifier(features), size=x.shape[-2:], mode="bilinear", align_corners=False
        )
