"""Backbones, the segmentation networks (DeepLabV3+, U-Net, FPN) and projection heads."""

from contrastseg.models.backbone import (
    ARCHITECTURES,
    OUTPUT_STRIDES,
    ResNetBackbone,
    adapt_first_conv_weight,
)
from contrastseg.models.base import SegmentationNet
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
from contrastseg.models.fpn import FPN
from contrastseg.models.heads import GlobalProjectionHead, LocalProjectionHead, ProjectionHead
from contrastseg.models.registry import MODELS, build_model, model_class, part_names
from contrastseg.models.unet import UNet

__all__ = [
    "ARCHITECTURES",
    "ASPP",
    "CLASSIFIER_FEATURES",
    "DECODER_STRIDE",
    "FPN",
    "MODELS",
    "OUTPUT_STRIDES",
    "Decoder",
    "DeepLabFeatures",
    "DeepLabOutput",
    "DeepLabV3Plus",
    "GlobalProjectionHead",
    "LocalProjectionHead",
    "ProjectionHead",
    "ResNetBackbone",
    "SegmentationNet",
    "UNet",
    "adapt_first_conv_weight",
    "aspp_rates",
    "build_model",
    "model_class",
    "part_names",
]
