"""The self-supervised methods as one module per run: network + heads + loss.

``PretrainModel`` owns a :class:`DeepLabV3Plus` without classifier and the heads of the
chosen method, and its ``forward`` returns the losses, so that DDP wraps exactly the
parameters that one step uses:

* ``simclr``: encoder (ASPP) features, spatial mean -> head -> NT-Xent (Chen et al. 2020);
* ``global_style``: style vector (mean, variance) of the encoder features -> head -> NT-Xent;
* ``local``: decoder features pooled over matched regions -> head -> NT-Xent over regions;
* ``glcnet``: ``lam * global_style + (1 - lam) * local`` (Li et al., TGRS 2022, eq. 6).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from contrastseg.augment import pool_regions
from contrastseg.config import MethodConfig, ModelConfig
from contrastseg.losses.glcnet import GLCNetLoss, GlobalStyleLoss, LocalMatchingLoss
from contrastseg.losses.ntxent import NTXentLoss
from contrastseg.models import DeepLabV3Plus, ProjectionHead
from contrastseg.models.deeplab import DECODER_STRIDE


class StepLosses(NamedTuple):
    """Losses of one step; parts a method does not have are ``None``.

    Attributes:
        total: the scalar to back-propagate.
        global_loss: NT-Xent of the global branch (simclr / global_style / glcnet).
        local_loss: NT-Xent of the local branch (local / glcnet).
        valid_fraction: fraction of valid region pairs in the global batch (local branch).
    """

    total: Tensor
    global_loss: Tensor | None
    local_loss: Tensor | None
    valid_fraction: Tensor | None


def build_network(model: ModelConfig, in_channels: int) -> DeepLabV3Plus:
    """The DeepLabV3+ (no classifier) that a pretraining run trains."""
    return DeepLabV3Plus(
        num_classes=None,
        arch=model.arch,
        in_channels=in_channels,
        output_stride=model.output_stride,
        backbone_weights=model.backbone_weights,
        aspp_channels=model.aspp_channels,
        decoder_channels=model.decoder_channels,
        low_level_channels=model.low_level_channels,
        separable=model.separable,
        aspp_dropout=model.aspp_dropout,
    )


class PretrainModel(nn.Module):
    """Network, heads and loss of one self-supervised method.

    Args:
        model: network settings.
        method: method settings (name, temperature, lam, heads ...).
        in_channels: input bands.

    ``forward(view1, view2, boxes1=None, boxes2=None, valid=None) -> StepLosses``; views are
    normalised float ``(B, C, h, w)``; boxes ``(B, n, 4)`` and ``valid`` ``(B, n)`` come from
    :func:`contrastseg.augment.match_regions` and are needed by the local branch only.
    """

    def __init__(self, model: ModelConfig, method: MethodConfig, in_channels: int) -> None:
        super().__init__()
        self.method = method.name
        self.net = build_network(model, in_channels)
        common = {
            "temperature": method.temperature,
            "gather": method.gather,
            "decoupled": method.decoupled,
        }
        bn = method.head_batch_norm
        self.simclr: NTXentLoss | None = None
        self.simclr_head: ProjectionHead | None = None
        self.global_loss: GlobalStyleLoss | None = None
        self.local_loss: LocalMatchingLoss | None = None
        if method.name == "simclr":
            self.simclr_head = ProjectionHead([model.aspp_channels, *method.global_head], bn)
            self.simclr = NTXentLoss(**common)
        if method.name in ("global_style", "glcnet"):
            head = ProjectionHead([2 * model.aspp_channels, *method.global_head], bn)
            self.global_loss = GlobalStyleLoss(head, **common)
        if method.name in ("local", "glcnet"):
            head = ProjectionHead([model.decoder_channels, *method.local_head], bn)
            self.local_loss = LocalMatchingLoss(head, **common)
        self.glcnet = (
            GLCNetLoss(self.global_loss, self.local_loss, method.lam)
            if method.name == "glcnet"
            else None
        )

    @property
    def uses_decoder(self) -> bool:
        return self.local_loss is not None

    def heads_state_dict(self) -> dict[str, Tensor]:
        """Parameters and buffers of everything but the network (the projection heads)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("net.")}

    def forward(
        self,
        view1: Tensor,
        view2: Tensor,
        boxes1: Tensor | None = None,
        boxes2: Tensor | None = None,
        valid: Tensor | None = None,
    ) -> StepLosses:
        feats1 = self.net.forward_features(view1, decoder=self.uses_decoder)
        feats2 = self.net.forward_features(view2, decoder=self.uses_decoder)
        if self.simclr is not None:
            z = self.simclr_head(
                torch.cat([feats1.encoder.mean((2, 3)), feats2.encoder.mean((2, 3))])
            )
            loss = self.simclr(*z.chunk(2))
            return StepLosses(loss, loss, None, None)
        if self.local_loss is not None:
            if boxes1 is None or boxes2 is None or valid is None:
                raise ValueError(
                    f"method {self.method!r} needs matched regions (boxes1, boxes2, valid)"
                )
            regions1 = pool_regions(feats1.decoder, boxes1, DECODER_STRIDE)
            regions2 = pool_regions(feats2.decoder, boxes2, DECODER_STRIDE)
        if self.glcnet is not None:
            out = self.glcnet(feats1.encoder, feats2.encoder, regions1, regions2, valid)
            return StepLosses(out.total, out.global_loss, out.local_loss, out.valid_fraction)
        if self.global_loss is not None:
            loss = self.global_loss(feats1.encoder, feats2.encoder)
            return StepLosses(loss, loss, None, None)
        local = self.local_loss.compute(regions1, regions2, valid)
        return StepLosses(local.loss, None, local.loss, local.valid_fraction)
