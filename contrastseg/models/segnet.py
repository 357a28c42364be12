"""SegNet (Badrinarayanan, Kendall and Cipolla, TPAMI 2017) on a VGG16-BN encoder.

encoder = :class:`~contrastseg.models.vgg.VGGBackbone` (torchvision ``vgg16_bn`` keys under
``backbone.features.*``), encoder features = its last pooled stage (stride 32); decoder = the
mirror of the encoder, as the paper: per stage, deepest first, max-unpooling with *that
stage's* max-pooling indices (every value returns to the position of the maximum it came
from, the rest is zero), then as many 3x3 conv-BN-ReLU as the encoder stage has, the last
one narrowing to the next stage's width. The decoder features are the last stage's output
at full resolution (stride 1, 64 channels); the 1x1 classifier reads them.

SegNet needs the pooling indices of a VGG encoder: a ResNet has a single max-pool, so
``model.arch`` must be ``vgg16_bn`` (a ResNet is refused when the config is read).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastseg.models.base import SegmentationNet, conv_bn_relu
from contrastseg.models.config import ModelConfig
from contrastseg.models.vgg import VGG16_STAGES, VGGBackbone
from contrastseg.utils.sections import Int, Str, section


def check_vgg(arch: str) -> None:
    """Refuse a backbone other than VGG16-BN, saying why."""
    if arch != "vgg16_bn":
        raise ValueError(
            f"model.arch must be vgg16_bn for SegNet, got {arch!r}: its decoder unpools with the "
            "max-pooling indices of a VGG encoder (a ResNet has a single max-pool)"
        )


@section("model")
class SegNetConfig(ModelConfig):
    """SegNet: VGG16-BN encoder, decoder unpooling with the encoder's max-pooling indices."""

    arch: Str = "vgg16_bn"
    """backbone: vgg16_bn (SegNet needs the pooling indices of a VGG encoder; a ResNet has one
    max-pool)"""
    output_stride: Int = 32
    """output stride of the backbone (VGG16-BN is not dilated: 32)"""
    backbone_weights: Str | None = None
    """optional vgg16_bn weights file in torchvision key names to start from"""

    network = "segnet"

    def check_arch(self) -> None:
        check_vgg(self.arch)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.output_stride != 32:
            raise ValueError(
                f"model.output_stride must be 32 for SegNet (VGG16-BN is not dilated), "
                f"got {self.output_stride}"
            )


def unpool2x2(x: Tensor, index: Tensor, size: Sequence[int]) -> Tensor:
    """``F.max_unpool2d(x, index, 2, 2, output_size=size)`` without a scatter: deterministic.

    torch has no deterministic kernel for ``max_unpool2d`` (``train.deterministic`` refuses
    it). The 2x2 windows of a stride-2 pooling do not overlap: each pooled value goes back to
    one of its window's four pixels, the one ``index`` points at, and the others are 0. So the
    output is four strided slices, each the pooled values where the index points at that
    corner (selected, not multiplied: an inf stays in its pixel). A last odd row or column
    (not pooled) stays 0. Memory: the pooled resolution's corner codes, no full-size index.

    Shapes: ``x``, ``index`` ``(B, C, h, w)`` (indices into the ``size`` plane) -> ``(B, C, *size)``.
    """
    height, width = size[-2], size[-1]
    h, w = x.shape[-2:]
    rows = torch.arange(h, device=index.device)[:, None] * 2
    cols = torch.arange(w, device=index.device)[None, :] * 2
    corner = (index // width - rows) * 2 + (index % width - cols)  # 0..3: which pixel of 2x2
    out = x.new_zeros(*x.shape[:-2], height, width)
    zero = x.new_zeros(())
    for dy in (0, 1):
        for dx in (0, 1):
            out[..., dy : 2 * h : 2, dx : 2 * w : 2] = torch.where(corner == 2 * dy + dx, x, zero)
    return out


class SegNetDecoder(nn.Module):
    """Five stages, deepest first: unpool with the stage's indices, then its conv-BN-ReLU.

    Shapes: ``pooled`` (:class:`~contrastseg.models.vgg.PooledStages`) ->
    ``(B, 64, H, W)`` at the input's size.
    """

    def __init__(self, stages: tuple[tuple[int, int], ...] = VGG16_STAGES) -> None:
        super().__init__()
        blocks = []
        for k in reversed(range(len(stages))):
            n, width = stages[k]
            out = stages[k - 1][1] if k > 0 else width
            blocks.append(
                nn.Sequential(
                    *[conv_bn_relu(width, width, 3) for _ in range(n - 1)],
                    conv_bn_relu(width, out, 3),
                )
            )
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = stages[0][1]

    def forward(self, outputs: list[Tensor], indices: list[Tensor], sizes: list) -> Tensor:
        x = outputs[-1]
        for block, index, size in zip(self.blocks, indices[::-1], sizes[::-1], strict=True):
            if torch.are_deterministic_algorithms_enabled():
                x = block(unpool2x2(x, index, size))
            else:
                x = block(F.max_unpool2d(x, index, 2, 2, output_size=size))
        return x


class SegNet(SegmentationNet):
    """SegNet on torchvision's VGG16-BN, for any number of bands.

    Args:
        num_classes: classifier outputs; ``None`` builds no classifier (pretraining).
        arch: ``vgg16_bn``.
        in_channels: number of input bands.
        output_stride: 32.
        backbone_weights: optional ``vgg16_bn`` weights file in torchvision key names.
        classifier_features: what the 1x1 classifier reads (``decoder``, ``encoder`` or
            ``backbone``; the last two are the same last pooled stage here).
    """

    name = "segnet"
    config_class = SegNetConfig
    parts = ("backbone", "decoder")
    encoder_parts = ("backbone",)
    decoder_stride = 1

    def __init__(
        self,
        num_classes: int | None = None,
        arch: str = "vgg16_bn",
        in_channels: int = 3,
        output_stride: int = 32,
        backbone_weights: str | os.PathLike[str] | None = None,
        classifier_features: Literal["decoder", "encoder", "backbone"] = "decoder",
    ) -> None:
        super().__init__()
        check_vgg(arch)
        self.backbone = VGGBackbone(arch, in_channels, output_stride, weights=backbone_weights)
        self.decoder = SegNetDecoder()
        self.encoder_channels = self.backbone.out_channels
        self.decoder_channels = self.decoder.out_channels
        self._init_classifier(num_classes, in_channels, classifier_features)

    def _encode(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        pooled = self.backbone.pooled_stages(x)
        return [pooled.outputs, pooled.indices, pooled.sizes], pooled.outputs[-1]  # type: ignore[list-item]

    def _decode(self, stages: list, encoder: Tensor) -> Tensor:
        return self.decoder(*stages)
