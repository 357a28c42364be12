"""GLCNet's local branch alone: decoder features pooled over matched regions -> NT-Xent over regions."""

from __future__ import annotations

from dataclasses import field
from typing import Any, Literal

from torch import Tensor

from contrastseg.augment.pooling import pool_regions
from contrastseg.augment.regions import MatchedRegions, match_regions
from contrastseg.augment.views import ViewPair
from contrastseg.losses.glcnet import LocalMatchingLoss
from contrastseg.methods.base import (
    Method,
    RegionsConfig,
    Widths,
    negative_queue,
    register_method,
)
from contrastseg.models.base import DECODER_STRIDE, DeepLabFeatures, SegmentationNet
from contrastseg.models.heads import ProjectionHead
from contrastseg.utils.sections import Bool, section


@section("method")
class LocalConfig(RegionsConfig):
    """The local matching contrast of GLCNet (Li et al. 2022, Sec. III-C)."""

    name: Literal["local"] = "local"
    local_head: Widths = field(default_factory=lambda: [64, 64, 64])
    """hidden and output widths of the local head (its input is decoder_channels)"""
    head_batch_norm: Bool = True
    """BatchNorm in the projection heads"""
    local_head_layout: Literal["mlp", "official"] = "mlp"
    """first local-head layer: ``mlp`` (Linear -> BN -> ReLU, ours) or ``official`` (linear, the
    official code's 1x1 convolution, followed directly by the MLP; needs >= 2 widths)"""

    def __post_init__(self) -> None:
        if self.local_head_layout == "official" and len(self.local_head) < 2:
            raise ValueError(
                "method.local_head_layout: official needs at least two local_head widths "
                f"(projection, then MLP), got {self.local_head}"
            )


def local_matching_loss(config: LocalConfig, net: SegmentationNet) -> LocalMatchingLoss:
    """The local matching loss with its head, as ``config`` describes it."""
    head = ProjectionHead(
        [net.decoder_channels, *config.local_head],
        config.head_batch_norm,
        linear_first=config.local_head_layout == "official",
    )
    return LocalMatchingLoss(
        head, temperature=config.temperature, gather=config.gather, decoupled=config.decoupled,
        queue=negative_queue(config, config.local_head[-1]),
        check_empty=False,  # no host sync in the step: the engine reads regions/valid_fraction
    )  # fmt: skip


def prepare_regions(
    config: RegionsConfig, pair: ViewPair, generator: Any, num_source_pixels: int
) -> dict[str, Any]:
    """``{"regions": MatchedRegions}``: ``config.num_regions`` region pairs per image."""
    regions = match_regions(
        pair.index1,
        pair.index2,
        config.num_regions,
        config.region_size,
        generator=generator,
        num_source_pixels=num_source_pixels,
        overlap=config.region_overlap,
    )
    return {"regions": regions}


def pooled_regions(
    feats1: DeepLabFeatures,
    feats2: DeepLabFeatures,
    regions: MatchedRegions,
    stride: int = DECODER_STRIDE,
) -> tuple[Tensor, Tensor]:
    """Decoder features (output stride ``stride``) averaged over each view's boxes: two ``(B, n, C)``."""
    if regions is None or feats1.decoder is None or feats2.decoder is None:
        raise ValueError("the local branch needs decoder features and matched regions")
    return (
        pool_regions(feats1.decoder, regions.boxes1, stride),
        pool_regions(feats2.decoder, regions.boxes2, stride),
    )


@register_method
class Local(Method):
    """Matched regions of the two views -> pooled decoder features -> head -> NT-Xent over regions.

    Losses: ``total`` (= ``local``); diagnostics: ``regions/valid_fraction``.
    """

    name = "local"
    config_class = LocalConfig
    trained_features = ("encoder", "decoder")

    def __init__(self, config: LocalConfig, net: SegmentationNet) -> None:
        super().__init__(config, net)
        self.decoder_stride = net.decoder_stride  # the grid the boxes are pooled on
        self.local_loss = local_matching_loss(config, net)

    def prepare(self, pair: ViewPair, generator: Any, num_source_pixels: int) -> dict[str, Any]:
        return prepare_regions(self.config, pair, generator, num_source_pixels)

    def forward(
        self,
        feats1: DeepLabFeatures,
        feats2: DeepLabFeatures,
        regions: MatchedRegions | None = None,
        **inputs: Any,
    ) -> dict[str, Tensor]:
        pooled = pooled_regions(feats1, feats2, regions, self.decoder_stride)
        out = self.local_loss.compute(*pooled, regions.valid)
        return {
            "total": out.loss,
            "local": out.loss,
            "regions/valid_fraction": out.valid_fraction,
            **self.health("local", out.z1, out.z2, regions.valid),
        }
