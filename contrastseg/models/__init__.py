"""Backbones, DeepLabV3+ and projection heads."""

from contrastseg.models.backbone import (
    ARCHITECTURES,
    OUTPUT_STRIDES,
    ResNetBackbone,
    adapt_first_conv_weight,
)
from contrastseg.models.deeplab import (
    ASPP,
    CLASSIFIER_FEATURES,
    DECODER_STRIDE,
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
    "CLASSIFIER_FEATURES",
    "DECODER_STRIDE",
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
