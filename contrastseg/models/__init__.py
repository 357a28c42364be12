"""Backbones, the segmentation networks, their ``model`` configs and projection heads.

A network is one file (its :class:`SegmentationNet` subclass and its :class:`ModelConfig`
subclass) and one line in :data:`MODELS` (:mod:`contrastseg.models.registry`).
"""

from contrastseg.models.backbone import (
    ARCHITECTURES,
    OUTPUT_STRIDES,
    ResNetBackbone,
    adapt_first_conv_weight,
)
from contrastseg.models.base import SegmentationNet
from contrastseg.models.config import (
    DEFAULT_MODEL,
    ModelConfig,
    model_config,
    model_config_from_mapping,
)
from contrastseg.models.deeplab import (
    ASPP,
    CLASSIFIER_FEATURES,
    DECODER_STRIDE,
    Decoder,
    DeepLabFeatures,
    DeepLabOutput,
    DeepLabV3Plus,
    DeepLabV3PlusConfig,
    aspp_rates,
)
from contrastseg.models.deeplabv3 import DeepLabV3, DeepLabV3Config
from contrastseg.models.fcn import FCN, FCNConfig
from contrastseg.models.fpn import FPN, FPNConfig
from contrastseg.models.heads import GlobalProjectionHead, LocalProjectionHead, ProjectionHead
from contrastseg.models.parsenet import ParseNet, ParseNetConfig
from contrastseg.models.pspnet import PSPNet, PSPNetConfig
from contrastseg.models.registry import MODELS, build_model, model_class, part_names
from contrastseg.models.resunet import ResUNet, ResUNetConfig
from contrastseg.models.segnet import SegNet, SegNetConfig
from contrastseg.models.unet import UNet, UNetConfig

__all__ = [
    "ARCHITECTURES",
    "ASPP",
    "CLASSIFIER_FEATURES",
    "DECODER_STRIDE",
    "DEFAULT_MODEL",
    "FCN",
    "FPN",
    "MODELS",
    "OUTPUT_STRIDES",
    "Decoder",
    "DeepLabFeatures",
    "DeepLabOutput",
    "DeepLabV3",
    "DeepLabV3Config",
    "DeepLabV3Plus",
    "DeepLabV3PlusConfig",
    "FCNConfig",
    "FPNConfig",
    "GlobalProjectionHead",
    "LocalProjectionHead",
    "ModelConfig",
    "PSPNet",
    "PSPNetConfig",
    "ParseNet",
    "ParseNetConfig",
    "ProjectionHead",
    "ResNetBackbone",
    "ResUNet",
    "ResUNetConfig",
    "SegNet",
    "SegNetConfig",
    "SegmentationNet",
    "UNet",
    "UNetConfig",
    "adapt_first_conv_weight",
    "aspp_rates",
    "build_model",
    "model_class",
    "model_config",
    "model_config_from_mapping",
    "part_names",
]
