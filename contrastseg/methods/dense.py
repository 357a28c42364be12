"""Dense contrast on exact correspondences: every decoder cell against its own ground in the other view.

View-1 decoder cells whose centre pixel's source pixel appears in view 2 are matched to the
view-2 cell under that source pixel's footprint (:func:`~contrastseg.augment.match_points`),
straight from the index maps: no feature-similarity matching as in DenseCL (Wang et al.,
CVPR 2021), no window sampling as in GLCNet. Each matched pair is a positive; the negatives
are all other sampled cells of the global batch (other images, and other places of the same
image). ``cells_per_image`` cells are sampled per image, uniformly among the matched ones, so
the NT-Xent logits take ``(2 * cells_per_image * global_batch)^2`` floats whatever the view
size. With ``lam > 0`` GLCNet's global style branch is added: ``lam * global + (1 - lam) * dense``.
"""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, Any, Literal

from pydantic import Field
from torch import Tensor

from contrastseg.augment.correspondence import MatchedPoints, match_points
from contrastseg.augment.pooling import sample_cells
from contrastseg.augment.views import ViewPair
from contrastseg.losses.glcnet import LocalMatchingLoss
from contrastseg.methods.base import (
    Method,
    MethodConfig,
    Widths,
    negative_queue,
    register_method,
)
from contrastseg.methods.global_style import global_branch, global_style_loss
from contrastseg.models.base import DeepLabFeatures, SegmentationNet
from contrastseg.models.heads import ProjectionHead
from contrastseg.utils.sections import Bool, Float, PositiveInt, section


@section("method")
class DenseConfig(MethodConfig):
    """Dense cell-to-cell contrast on the decoder features, optionally with the global branch."""

    name: Literal["dense"] = "dense"
    cells_per_image: PositiveInt = 64
    """matched decoder cells per image taking part in the loss (bounds its memory)"""
    dense_head: Widths = field(default_factory=lambda: [64, 64, 64])
    """hidden and output widths of the dense head (its input is decoder_channels)"""
    lam: Annotated[Float, Field(ge=0, lt=1)] = 0.5
    """weight of GLCNet's global style branch: lam * global + (1 - lam) * dense (0 = none)"""
    global_head: Widths = field(default_factory=lambda: [256, 64])
    """hidden and output widths of the global head (its input is 2 x aspp_channels)"""
    head_batch_norm: Bool = True
    """BatchNorm in the projection heads"""


@register_method
class Dense(Method):
    """Exact cell correspondences -> head per cell -> NT-Xent over all cells of the global batch.

    Losses: ``total``, ``dense`` (and ``global`` when ``lam > 0``); diagnostics:
    ``dense/valid_fraction`` (sampled cells that found their match).
    """

    name = "dense"
    config_class = DenseConfig
    trained_features = ("encoder", "decoder")

    def __init__(self, config: DenseConfig, net: SegmentationNet) -> None:
        super().__init__(config, net)
        self.decoder_stride = net.decoder_stride  # the grid the cells are matched on
        head = ProjectionHead([net.decoder_channels, *config.dense_head], config.head_batch_norm)
        self.dense_loss = LocalMatchingLoss(
            head, temperature=config.temperature, gather=config.gather,
            decoupled=config.decoupled, queue=negative_queue(config, config.dense_head[-1]),
            check_empty=False,  # no host sync in the step: the engine reads dense/valid_fraction
        )  # fmt: skip
        self.global_loss = global_style_loss(config, net) if config.lam > 0 else None

    def prepare(self, pair: ViewPair, generator: Any, num_source_pixels: int) -> dict[str, Any]:
        points = match_points(
            pair.index1,
            pair.index2,
            self.config.cells_per_image,
            self.decoder_stride,
            generator=generator,
            num_source_pixels=num_source_pixels,
        )
        return {"points": points}

    def forward(
        self,
        feats1: DeepLabFeatures,
        feats2: DeepLabFeatures,
        points: MatchedPoints | None = None,
        **inputs: Any,
    ) -> dict[str, Tensor]:
        if points is None or feats1.decoder is None or feats2.decoder is None:
            raise ValueError("the dense method needs decoder features and matched points")
        cells1 = sample_cells(feats1.decoder, points.points1, self.decoder_stride)
        cells2 = sample_cells(feats2.decoder, points.points2, self.decoder_stride)
        dense = self.dense_loss.compute(cells1, cells2, points.valid)
        out = {
            "total": dense.loss,
            "dense": dense.loss,
            "dense/valid_fraction": dense.valid_fraction,
            **self.health("dense", dense.z1, dense.z2, points.valid),
        }
        if self.global_loss is not None:
            lam = self.config.lam
            out.update(global_branch(self.global_loss, feats1, feats2, self.diagnostics))
            out["total"] = lam * out["global"] + (1.0 - lam) * dense.loss
        return out
