"""U-Net (Ronneberger et al., MICCAI 2015) decoder on a :class:`ResNetBackbone`, to stride 4.

The decoder follows segmentation_models_pytorch's ``Unet`` (its ``UnetDecoder`` blocks, same
module and state-dict names): each block upsamples (nearest) to the next skip's size,
concatenates the skip (``layer3``, ``layer2``, ``layer1``) and applies two 3x3
conv-BN-ReLU. It stops at the ``layer1`` skip, stride 4, where the 1x1 classifier reads it
and the local / dense pretraining branches sample it (smp continues to stride 1 with two
more blocks). encoder features = the backbone's last stage (``layer4``); parts: ``backbone``,
``decoder``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastseg.models.backbones import build_backbone
from contrastseg.models.base import SegmentationNet, conv_bn_relu
from contrastseg.models.config import ModelConfig
from contrastseg.utils.sections import Int, section


class UNetBlock(nn.Module):
    """Upsample to the skip's size, concatenate the skip, two 3x3 conv-BN-ReLU.

    Shapes: ``x (B, C_in, h, w)``, ``skip (B, C_skip, H', W')`` -> ``(B, out_channels, H', W')``.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(in_channels + skip_channels, out_channels, 3)
        self.conv2 = conv_bn_relu(out_channels, out_channels, 3)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
        return self.conv2(self.conv1(torch.cat([x, skip], dim=1)))


class UNetDecoder(nn.Module):
    """Three :class:`UNetBlock` from the last stage down to the ``layer1`` skip (stride 4).

    Args:
        stage_channels: channels of ``layer1`` ... ``layer4``.
        channels: output channels of the three blocks, deepest first (the last is the
            decoder features' width).
        block: the block class (:class:`UNetBlock`; ResUNet's residual block).

    Shapes: ``stages`` = ``[layer1 (B, c1, H/4, W/4), ..., layer4]`` -> ``(B, channels[-1], H/4, W/4)``.
    """

    def __init__(
        self,
        stage_channels: Sequence[int],
        channels: Sequence[int],
        block: type[nn.Module] = UNetBlock,
    ) -> None:
        super().__init__()
        if len(channels) != 3:
            raise ValueError(f"a U-Net decoder has 3 blocks, got {len(channels)} widths")
        inputs = [stage_channels[3], *channels[:-1]]
        skips = [stage_channels[2], stage_channels[1], stage_channels[0]]
        self.blocks = nn.ModuleList(
            block(i, s, o) for i, s, o in zip(inputs, skips, channels, strict=True)
        )
        self.out_channels = channels[-1]

    def forward(self, stages: Sequence[Tensor]) -> Tensor:
        x = stages[3]
        for block, skip in zip(self.blocks, (stages[2], stages[1], stages[0]), strict=True):
            x = block(x, skip)
        return x


@section("model")
class UNetConfig(ModelConfig):
    """U-Net: three decoder blocks from the last stage to the ``layer1`` skip (stride 4)."""

    decoder_channels: Int = 64
    """channels of the decoder features (the stride-4 block)"""
    unet_channels: tuple[Int, Int] = (256, 128)
    """widths of the stride-16 and stride-8 decoder blocks"""

    network = "unet"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.unet_channels = tuple(self.unet_channels)  # type: ignore[assignment]
        if len(self.unet_channels) != 2 or min(self.unet_channels) < 1:
            raise ValueError(
                f"model.unet_channels must be two positive widths, got {list(self.unet_channels)}"
            )


class UNet(SegmentationNet):
    """U-Net on a torchvision ResNet, decoder to stride 4, for any number of bands.

    Args:
        num_classes: classifier outputs; ``None`` builds no classifier (pretraining).
        arch: ``resnet18`` / ``resnet34`` / ``resnet50`` / ``resnet101``.
        in_channels: number of input bands.
        output_stride: 8, 16 or 32 (the backbone's; 32 is the classic U-Net).
        backbone_weights: optional ResNet weights file in torchvision key names.
        decoder_channels: width of the stride-4 block (the decoder features).
        block_channels: widths of the stride-16 and stride-8 blocks (smp: 256, 128).
        classifier_features: what the 1x1 classifier reads (``decoder``, ``encoder`` or
            ``backbone``; the last two are the same ``layer4`` output here).
    """

    name = "unet"
    config_class = UNetConfig
    block: type[nn.Module] = UNetBlock
    """the decoder block (a subclass changes it: ResUNet)"""
    parts = ("backbone", "decoder")
    encoder_parts = ("backbone",)

    def __init__(
        self,
        num_classes: int | None = None,
        arch: str = "resnet50",
        in_channels: int = 3,
        output_stride: int = 32,
        backbone_weights: str | os.PathLike[str] | None = None,
        decoder_channels: int = 64,
        block_channels: Sequence[int] = (256, 128),
        classifier_features: Literal["decoder", "encoder", "backbone"] = "decoder",
    ) -> None:
        super().__init__()
        self.backbone = build_backbone(arch, in_channels, output_stride, backbone_weights)
        self.decoder = UNetDecoder(
            self.backbone.stage_channels, [*block_channels, decoder_channels], self.block
        )
        self.encoder_channels = self.backbone.out_channels
        self.decoder_channels = decoder_channels
        self._init_classifier(num_classes, in_channels, classifier_features)

    @classmethod
    def config_kwargs(cls, settings: dict[str, Any]) -> dict[str, Any]:
        settings["block_channels"] = settings.pop("unet_channels")
        return settings
