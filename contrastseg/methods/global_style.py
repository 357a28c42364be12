"""GLCNet's global branch alone: style vector (channel mean, variance) of the encoder -> NT-Xent."""

from __future__ import annotations

from dataclasses import field
from typing import Any, Literal

from torch import Tensor

from contrastseg.losses.glcnet import GlobalStyleLoss
from contrastseg.methods.base import (
    Method,
    MethodConfig,
    Widths,
    health,
    negative_queue,
    register_method,
)
from contrastseg.models.base import DeepLabFeatures, SegmentationNet
from contrastseg.models.heads import ProjectionHead
from contrastseg.utils.sections import Bool, section


@section("method")
class GlobalStyleConfig(MethodConfig):
    """The global style contrast of GLCNet (Li et al. 2022, Sec. III-B)."""

    name: Literal["global_style"] = "global_style"
    global_head: Widths = field(default_factory=lambda: [256, 64])
    """hidden and output widths of the global head (its input is 2 x aspp_channels)"""
    head_batch_norm: Bool = True
    """BatchNorm in the projection heads"""


def global_style_loss(config: GlobalStyleConfig, net: SegmentationNet) -> GlobalStyleLoss:
    """The global style loss with its head, as ``config`` describes it."""
    head = ProjectionHead([2 * net.encoder_channels, *config.global_head], config.head_batch_norm)
    return GlobalStyleLoss(
        head, temperature=config.temperature, gather=config.gather, decoupled=config.decoupled,
        queue=negative_queue(config, config.global_head[-1]),
    )  # fmt: skip


def global_branch(
    loss: GlobalStyleLoss,
    feats1: DeepLabFeatures,
    feats2: DeepLabFeatures,
    diagnostics: bool = True,
) -> dict[str, Tensor]:
    """``{"global": loss, "health/global/...": ...}`` of the global style branch (the health
    entries only with ``diagnostics``)."""
    z1, z2 = loss.embed(feats1.encoder, feats2.encoder)
    value = loss.contrast(z1, z2).loss
    return {"global": value, **(health("global", z1, z2) if diagnostics else {})}


@register_method
class GlobalStyle(Method):
    """Style vector of each view's encoder features -> head -> NT-Xent.

    Losses: ``total`` (= ``global``).
    """

    name = "global_style"
    config_class = GlobalStyleConfig

    def __init__(self, config: GlobalStyleConfig, net: SegmentationNet) -> None:
        super().__init__(config, net)
        self.global_loss = global_style_loss(config, net)

    def forward(
        self, feats1: DeepLabFeatures, feats2: DeepLabFeatures, **inputs: Any
    ) -> dict[str, Tensor]:
        out = global_branch(self.global_loss, feats1, feats2, self.diagnostics)
        return {"total": out["global"], **out}
