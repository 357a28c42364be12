"""DeepLabV3 (Chen et al., arXiv 1706.05587) on a :class:`ResNetBackbone`: ASPP with image pooling, no decoder.

encoder = backbone + ASPP (the same :class:`~contrastseg.models.deeplab.ASPP` as
DeepLabV3+, rates 6/12/18 at output stride 16, 12/24/36 at 8); ``decoder`` = the 3x3
conv-BN-ReLU that torchvision's ``DeepLabHead`` puts between ASPP and the 1x1 classifier, at
the backbone's output stride (no upsampling, no skip: the local and dense methods sample
these features on that coarser grid).

``torchvision.models.segmentation.deeplabv3_resnet50`` is this network at output stride 8;
its state dict loads under :func:`torchvision_key`.
"""

from __future__ import annotations

import os
import re
from typing import Literal

from torch import Tensor

from contrastseg.models.backbones import build_backbone
from contrastseg.models.base import conv_bn_relu
from contrastseg.models.config import ModelConfig
from contrastseg.models.deeplab import ASPP, ASPPNet, aspp_rates
from contrastseg.utils.sections import Float, Int, section

#: torchvision ``deeplabv3_resnet50`` key patterns -> ours (``backbone.*`` is the same; the
#: auxiliary classifier has no counterpart), applied in order by :func:`torchvision_key`.
TORCHVISION_KEYS: tuple[tuple[str, str], ...] = (
    (r"^classifier\.0\.convs\.4\.(\d)\.", "aspp.branches.4.conv.{n}."),  # pool -> conv, bn, relu
    (r"^classifier\.0\.convs\.", "aspp.branches."),
    (r"^classifier\.0\.project\.", "aspp.project."),
    (r"^classifier\.([12])\.", "decoder.{m}."),
    (r"^classifier\.4\.", "classifier."),
)


def torchvision_key(key: str) -> str:
    """Our name of a torchvision ``deeplabv3_resnet*`` state-dict key (see :data:`TORCHVISION_KEYS`)."""
    for pattern, target in TORCHVISION_KEYS:
        match = re.match(pattern, key)
        if match:
            index = int(match.group(1)) - 1 if match.groups() else 0
            return target.format(n=index, m=index) + key[match.end() :]
    return key


@section("model")
class DeepLabV3Config(ModelConfig):
    """DeepLabV3: ASPP with image pooling on the backbone, a 3x3 block, the classifier; no decoder."""

    aspp_channels: Int = 256
    """channels of the ASPP branches and output (the encoder features)"""
    decoder_channels: Int = 256
    """channels of the 3x3 block after ASPP (the decoder features, at the backbone's output stride)"""
    aspp_dropout: Float = 0.5
    """dropout after the ASPP fusion"""

    network = "deeplabv3"


class DeepLabV3(ASPPNet):
    """DeepLabV3 on a torchvision ResNet, for any number of bands.

    Args:
        num_classes: classifier outputs; ``None`` builds no classifier (pretraining).
        arch: ``resnet18`` / ``resnet34`` / ``resnet50`` / ``resnet101``.
        in_channels: number of input bands.
        output_stride: 8, 16 or 32; ASPP rates scale with it.
        backbone_weights: optional ResNet weights file in torchvision key names.
        aspp_channels: channels of the ASPP branches and output.
        decoder_channels: channels of the 3x3 block after ASPP.
        aspp_dropout: dropout after the ASPP fusion.
        classifier_features: what the 1x1 classifier reads (``decoder``, ``encoder`` = the
            ASPP output, or ``backbone``).
    """

    name = "deeplabv3"
    config_class = DeepLabV3Config
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
        aspp_dropout: float = 0.5,
        classifier_features: Literal["decoder", "encoder", "backbone"] = "decoder",
    ) -> None:
        super().__init__()
        self.backbone = build_backbone(arch, in_channels, output_stride, backbone_weights)
        self.aspp = ASPP(
            self.backbone.out_channels,
            aspp_channels,
            aspp_rates(output_stride),
            dropout=aspp_dropout,
        )
        self.decoder = conv_bn_relu(aspp_channels, decoder_channels, 3)
        self.decoder_stride = output_stride
        self.encoder_channels = aspp_channels
        self.decoder_channels = decoder_channels
        self._init_classifier(num_classes, in_channels, classifier_features)

    def _decode(self, stages: list[Tensor], encoder: Tensor) -> Tensor:
        return self.decoder(encoder)
