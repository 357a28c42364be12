"""GLCNet (Li et al., IEEE TGRS 2022, arXiv 2106.10605): ``lam * global_style + (1 - lam) * local``."""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, Any, Literal

from pydantic import Field
from torch import Tensor

from contrastseg.augment.regions import MatchedRegions
from contrastseg.methods.base import Widths, register_method
from contrastseg.methods.global_style import global_branch, global_style_loss
from contrastseg.methods.local import Local, LocalConfig
from contrastseg.models.base import DeepLabFeatures, SegmentationNet
from contrastseg.utils.sections import Float, section


@section("method")
class GLCNetConfig(LocalConfig):
    """Global style and local matching contrast together (eq. 6 of the paper)."""

    name: Literal["glcnet"] = "glcnet"
    lam: Annotated[Float, Field(ge=0, le=1)] = 0.5
    """weight of the global loss: lam * global + (1 - lam) * local"""
    global_head: Widths = field(default_factory=lambda: [256, 64])
    """hidden and output widths of the global head (its input is 2 x aspp_channels)"""


@register_method
class GLCNet(Local):
    """Both GLCNet branches on one forward pass of each view.

    Both parts are computed also at ``lam`` 0 or 1, so under DDP every head parameter takes
    part in every step. Losses: ``total``, ``global``, ``local``; diagnostics:
    ``regions/valid_fraction``.
    """

    name = "glcnet"
    config_class = GLCNetConfig

    def __init__(self, config: GLCNetConfig, net: SegmentationNet) -> None:
        super().__init__(config, net)
        # global before local: checkpoints keep optimizer state in parameter order, and
        # every GLCNet checkpoint so far was written in this order
        local = self.local_loss
        del self.local_loss
        self.global_loss = global_style_loss(config, net)
        self.local_loss = local

    def forward(
        self,
        feats1: DeepLabFeatures,
        feats2: DeepLabFeatures,
        regions: MatchedRegions | None = None,
        **inputs: Any,
    ) -> dict[str, Tensor]:
        out = {
            **super().forward(feats1, feats2, regions),
            **global_branch(self.global_loss, feats1, feats2, self.diagnostics),
        }
        lam = self.config.lam
        return {**out, "total": lam * out["global"] + (1.0 - lam) * out["local"]}
