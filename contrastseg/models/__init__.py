"""Backbones, DeepLabV3+ and projection heads."""

from contrastseg.models.backbone import (
    ARCHITECTURES,
    OUTPUT_STRIDES,
    ResNetBackbone,
    adapt_first_conv_weight,
)
from contrastseg.models.deeplab import (
    ASPP,
    DeepLabFeatures,
    DeepLabOutput,
    DeepLabV3Plus,
    Decoder,
    aspp_rates,
)
from contrastseg.models.heads import GlobalProjectionHead, LocalProjectionHead, ProjectionHead

__all__ = [
    "ARCHITECTURES",
    "ASPP",
    "OUTPUT_STRIDES",
    "DeepLabFeatures",
    "DeepLabOutput",
    "DeepLabV3Plus",
    "Decoder",
    "GlobalProjectionHead",
    "LocalProjectionHead",
    "ProjectionHead",
    "ResNetBackbone",
    "adapt_first_conv_weight",
    "aspp_rates",
]
