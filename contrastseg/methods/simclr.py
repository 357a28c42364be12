"""SimCLR (Chen et al., ICML 2020) on the encoder: spatial mean of the ASPP output -> head -> NT-Xent."""

from __future__ import annotations

from dataclasses import field
from typing import Any, Literal

import torch
from torch import Tensor

from contrastseg.losses.ntxent import queued_nt_xent
from contrastseg.methods.base import (
    Method,
    MethodConfig,
    Widths,
    negative_queue,
    register_method,
)
from contrastseg.models.base import DeepLabFeatures, SegmentationNet
from contrastseg.models.heads import ProjectionHead
from contrastseg.utils.sections import Bool, section


@section("method")
class SimCLRConfig(MethodConfig):
    """SimCLR: one embedding per image."""

    name: Literal["simclr"] = "simclr"
    global_head: Widths = field(default_factory=lambda: [256, 64])
    """hidden and output widths of the head (its input is aspp_channels)"""
    head_batch_norm: Bool = True
    """BatchNorm in the projection head"""


@register_method
class SimCLR(Method):
    """Mean-pooled encoder features of each view -> MLP head -> NT-Xent over the global batch.

    Losses: ``total`` (= ``global``).
    """

    name = "simclr"
    config_class = SimCLRConfig

    def __init__(self, config: SimCLRConfig, net: SegmentationNet) -> None:
        super().__init__(config, net)
        self.global_head = ProjectionHead(
            [net.encoder_channels, *config.global_head], config.head_batch_norm
        )
        self.global_queue = negative_queue(config, config.global_head[-1])

    def forward(
        self, feats1: DeepLabFeatures, feats2: DeepLabFeatures, **inputs: Any
    ) -> dict[str, Tensor]:
        c = self.config
        z = self.global_head(torch.cat([feats1.encoder.mean((2, 3)), feats2.encoder.mean((2, 3))]))
        z1, z2 = z.chunk(2)
        loss = queued_nt_xent(
            z1, z2, self.global_queue, None, c.temperature, gather=c.gather, decoupled=c.decoupled
        ).loss
        return {"total": loss, "global": loss, **self.health("global", z1, z2)}
