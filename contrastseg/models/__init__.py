"""Backbones, DeepLabV3+ and projection heads."""

from contrastseg.models.backbone import (
    ARCHITECTURES,
    OUTPUT_STRIDES,
    ResNetBackbone,
    adapt_first_conv_weight,
)
from contrastseg.models.deeplab import (
    ASPP,
    Decoder,
    DeepLabFeatures,
    DeepLabOutput,
    DeepLabV3Plus,
    aspp_rates,
)
from contrastseg.models.heads import GlobalProjectionHead, LocalProjectionHead, ProjectionHead

__all__ = [
    "ARCHITECTURES",
    "ASPP",
    "OUTPUT_STRIDES",
    "Decoder",
    "DeepLabFeatures",
    "DeepLabOutput",
    "DeepLabV3Plus",
    "GlobalProjectionHead",
    "LocalProjectionHead",
    "ProjectionHead",
    "ResNetBackbone",
    "adapt_first_conv_weight",
    "aspp_rates",
]
