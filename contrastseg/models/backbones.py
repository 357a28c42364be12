"""The backbone registry: ``model.arch`` -> the backbone module every network is built on.

``resnet18`` ... ``resnet101``: :class:`~contrastseg.models.ResNetBackbone` (torchvision
keys, the default); ``vgg16_bn``: :class:`~contrastseg.models.vgg.VGGBackbone` (SegNet's,
its five pooling indices); ``timm/<name>``: any timm model with ``features_only``
(:class:`~contrastseg.models.timm_backbone.TimmBackbone`, the optional ``[timm]`` extra).
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from contrastseg.models.backbone import ARCHITECTURES, ResNetBackbone
from contrastseg.models.timm_backbone import TIMM_PREFIX, TimmBackbone
from contrastseg.models.vgg import VGGBackbone

#: The backbones by ``model.arch`` (``timm/<name>`` besides).
BACKBONES: dict[str, type[nn.Module]] = {
    **dict.fromkeys(ARCHITECTURES, ResNetBackbone),
    "vgg16_bn": VGGBackbone,
}


def check_arch(arch: str, allowed: tuple[str, ...] = ARCHITECTURES) -> None:
    """Refuse a ``model.arch`` that is neither one of ``allowed`` nor ``timm/<name>``."""
    if arch not in allowed and not (arch.startswith(TIMM_PREFIX) and len(arch) > len(TIMM_PREFIX)):
        raise ValueError(
            f"model.arch must be one of {', '.join(allowed)} or timm/<name> (any timm model "
            f"with features_only, e.g. timm/convnext_tiny), got {arch!r}"
        )


def build_backbone(
    arch: str,
    in_channels: int,
    output_stride: int,
    weights: str | os.PathLike[str] | None = None,
    allowed: tuple[str, ...] = ARCHITECTURES,
    **resnet: Any,
) -> nn.Module:
    """The backbone ``arch`` names, one of ``allowed`` or ``timm/<name>`` (the networks with
    four stages take the ResNets and timm models; SegNet takes VGG16-BN); ``resnet`` keyword
    arguments go to ResNets only (``dilation_convention``).

    Raises:
        ValueError: another ``arch`` (the message lists the allowed ones).
    """
    check_arch(arch, allowed)
    if arch.startswith(TIMM_PREFIX):
        return TimmBackbone(arch, in_channels, output_stride, weights=weights)
    cls = BACKBONES[arch]
    kwargs = resnet if cls is ResNetBackbone else {}
    return cls(arch, in_channels, output_stride, weights=weights, **kwargs)
