"""GLCNet's losses: global style contrast, local region matching, and their weighted sum.

Li et al., "Global and Local Contrastive Self-Supervised Learning for Semantic
Segmentation of HR Remote Sensing Images", IEEE TGRS 2022 (arXiv 2106.10605):

* global (section III-B): the style vector (channel mean and variance) of the encoder
  features of each view -> projection head -> NT-Xent over the images of the batch;
* local (section III-C): decoder features mean-pooled over regions that show the same
  ground in both views -> projection head -> NT-Xent over all regions of the batch, so
  other regions of the same image are negatives too;
* total (eq. 6): ``lambda * L_global + (1 - lambda) * L_local``.

Both views go through a head in one call (the two views concatenated), so a BatchNorm in
the head normalises with statistics of both views, as SimCLR's batch does.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from torch import Tensor, nn

from contrastseg.losses.ntxent import MaskedNTXent, NegativeQueue, queued_nt_xent
from contrastseg.losses.style import style_vector


def _project_pair(head: nn.Module, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
    """Run ``head`` once on both views (``(N, ...)`` each) and split the result."""
    z = head(torch.cat([x1, x2]))
    return z[: x1.shape[0]], z[x1.shape[0] :]


class _ProjectedContrast(nn.Module):
    """Shared set-up of the two GLCNet branches: a projection head, NT-Xent settings, and the
    branch's optional queue of negatives from earlier batches (``queue``, registered after
    the head, so its rows are in the state dict and in checkpoints)."""

    def __init__(
        self,
        head: nn.Module,
        temperature: float = 0.5,
        gather: bool = True,
        decoupled: bool = False,
        queue: NegativeQueue | None = None,
    ) -> None:
        super().__init__()
        if not float(temperature) > 0.0:
            raise ValueError(f"{type(self).__name__} temperature must be > 0, got {temperature}")
        self.head = head
        self.temperature = float(temperature)
        self.gather = bool(gather)
        self.decoupled = bool(decoupled)
        self.queue = queue

    def contrast(self, z1: Tensor, z2: Tensor, valid: Tensor | None = None) -> MaskedNTXent:
        """NT-Xent of this branch's embeddings (and its queue's rows as extra negatives, after
        which this batch joins the queue; see :func:`~contrastseg.losses.queued_nt_xent`)."""
        return queued_nt_xent(
            z1, z2, self.queue, valid, self.temperature, gather=self.gather,
            decoupled=self.decoupled,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather={self.gather}, decoupled={self.decoupled}"


class GlobalStyleLoss(_ProjectedContrast):
    """GLCNet's global style contrast: style vector -> head -> NT-Xent.

    Args:
        head: maps ``(N, 2C)`` style vectors to ``(N, D)`` embeddings, e.g.
            :class:`contrastseg.models.GlobalProjectionHead` (512-256-64 for C = 256).
        temperature: NT-Xent temperature (GLCNet: 0.5).
        gather: contrast against all ranks' images under ``torch.distributed``.
        decoupled: positive left out of the denominator (official GLCNet code).
        queue: embeddings of earlier batches as extra negatives (None = none).

    Shapes: ``forward(enc1 (B, C, H, W), enc2 (B, C, H', W')) -> ()``.

    The style vector is float32; under fp16 autocast the head's first Linear casts it to
    fp16, so channel variances above 65504 would overflow there (BN/ReLU-normalised ASPP
    outputs are orders of magnitude below; use bf16 if a backbone is not).
    """

    def forward(self, enc1: Tensor, enc2: Tensor) -> Tensor:
        if enc1.ndim != 4 or enc2.ndim != 4 or enc1.shape[:2] != enc2.shape[:2]:
            raise ValueError(
                "GlobalStyleLoss expects two (B, C, H, W) encoder feature maps with the same "
                "B and C, "
                f"got {tuple(enc1.shape)} and {tuple(enc2.shape)}"
            )
        z1, z2 = self.embed(enc1, enc2)
        return self.contrast(z1, z2).loss

    def embed(self, enc1: Tensor, enc2: Tensor) -> tuple[Tensor, Tensor]:
        """The ``(B, D)`` embeddings of both views' style vectors (what :meth:`forward` contrasts)."""
        return _project_pair(self.head, style_vector(enc1), style_vector(enc2))


class LocalMatchingOutput(NamedTuple):
    """Result of :meth:`LocalMatchingLoss.compute`.

    Attributes:
        loss: scalar local loss of this rank.
        valid_fraction: detached scalar, valid region pairs / all region slots in the global
            batch (0 when the batch is empty).
        z1, z2: ``(B * n, D)`` embeddings of the region slots of this rank (invalid slots too).
    """

    loss: Tensor
    valid_fraction: Tensor
    z1: Tensor | None = None
    z2: Tensor | None = None


class LocalMatchingLoss(_ProjectedContrast):
    """GLCNet's local matching contrast over pooled region features.

    Every valid pair ``(regions1[b, k], regions2[b, k])`` is a positive; all other valid
    regions of the (global) batch, including the other regions of image ``b``, are its
    negatives. Invalid pairs take no part: their features are replaced by zeros before the
    head (so NaN from pooling an empty window cannot leak in) and they are masked out of
    the logits and the mean. All region slots go through the head, keeping shapes fixed
    and collectives identical on every rank; with a BatchNorm head in training mode the
    zeroed slots do enter its batch statistics (a small bias when most pairs are valid).

    A batch with no valid pair in the global batch gives a zero loss that is still
    connected to the graph (every parameter gets a zero gradient, nothing is NaN). With
    ``check_empty`` (the default, for a loop of one's own) it also emits a ``RuntimeWarning``
    and increments :attr:`empty_batches`, which reads one scalar back from the device every
    call; the package's engine turns it off (no host round trip in its step) and reports a
    log window without valid pairs from the logged ``regions/valid_fraction`` instead.

    Args:
        head: maps ``(N, C)`` pooled region features to ``(N, D)`` embeddings, e.g.
            :class:`contrastseg.models.LocalProjectionHead` (256-64-64-64).
        temperature: NT-Xent temperature (GLCNet: 0.5).
        gather: contrast against all ranks' regions under ``torch.distributed``.
        decoupled: positive left out of the denominator (official GLCNet code).
        queue: region embeddings of earlier batches (valid pairs only) as extra negatives.
        check_empty: warn about and count batches without a valid pair (a host sync).

    Shapes: ``forward(regions1 (B, n, C), regions2 (B, n, C), valid (B, n) bool) -> ()``.
    """

    empty_batches: int
    """Number of calls so far whose global batch had no valid region pair."""

    def __init__(
        self,
        head: nn.Module,
        temperature: float = 0.5,
        gather: bool = True,
        decoupled: bool = False,
        queue: NegativeQueue | None = None,
        check_empty: bool = True,
    ) -> None:
        super().__init__(head, temperature, gather, decoupled, queue)
        self.empty_batches = 0
        self.check_empty = check_empty

    def compute(self, regions1: Tensor, regions2: Tensor, valid: Tensor) -> LocalMatchingOutput:
        """The loss and the global valid fraction (``forward`` returns the loss only)."""
        if regions1.ndim != 3 or regions1.shape != regions2.shape:
            raise ValueError(
                "LocalMatchingLoss expects two (B, n, C) region feature tensors of the same shape, "
                f"got {tuple(regions1.shape)} and {tuple(regions2.shape)}"
            )
        if (
            not isinstance(valid, Tensor)
            or valid.dtype != torch.bool
            or valid.shape != regions1.shape[:2]
        ):
            got = (
                f"{valid.dtype} {tuple(valid.shape)}"
                if isinstance(valid, Tensor)
                else type(valid).__name__
            )
            raise ValueError(
                "LocalMatchingLoss expects a bool valid mask of shape "
                f"{tuple(regions1.shape[:2])}, got {got}"
            )
        channels = regions1.shape[2]
        valid = valid.to(regions1.device).reshape(-1)
        keep = valid[:, None]
        r1 = torch.where(
            keep,
            regions1.reshape(-1, channels),
            torch.zeros((), dtype=regions1.dtype, device=regions1.device),
        )
        r2 = torch.where(
            keep,
            regions2.reshape(-1, channels),
            torch.zeros((), dtype=regions2.dtype, device=regions2.device),
        )
        z1, z2 = _project_pair(self.head, r1, r2)
        out = self.contrast(z1, z2, valid)
        if self.check_empty and not bool(out.num_valid > 0):  # a host sync
            self.empty_batches += 1
            warnings.warn(
                "LocalMatchingLoss: no valid region pair in the batch, local loss is 0 "
                "(see LocalMatchingLoss.empty_batches)",
                RuntimeWarning,
                stacklevel=2,
            )
        fraction = out.num_valid.detach().float() / max(out.num_pairs, 1)
        return LocalMatchingOutput(out.loss, fraction, z1, z2)

    def forward(self, regions1: Tensor, regions2: Tensor, valid: Tensor) -> Tensor:
        return self.compute(regions1, regions2, valid).loss


class GLCNetLossOutput(NamedTuple):
    """Result of :class:`GLCNetLoss`.

    Attributes:
        total: ``lam * global_loss + (1 - lam) * local_loss``, the scalar to back-propagate.
        global_loss: the global style loss (attached to the graph).
        local_loss: the local matching loss (attached to the graph).
        valid_fraction: detached fraction of valid region pairs in the global batch, for logging.
    """

    total: Tensor
    global_loss: Tensor
    local_loss: Tensor
    valid_fraction: Tensor


class GLCNetLoss(nn.Module):
    """GLCNet's total loss ``lam * L_global + (1 - lam) * L_local`` (Li et al. 2022, eq. 6).

    Both parts are always computed, also at ``lam`` 0 or 1, so under DDP every head
    parameter takes part in every step.

    Args:
        global_loss: the global style branch.
        local_loss: the local matching branch.
        lam: weight of the global part, in ``[0, 1]`` (GLCNet: 0.5).

    Shapes: ``forward(enc1 (B, C, H, W), enc2, regions1 (B, n, C'), regions2, valid (B, n))``.
    """

    def __init__(
        self, global_loss: GlobalStyleLoss, local_loss: LocalMatchingLoss, lam: float = 0.5
    ) -> None:
        super().__init__()
        if not 0.0 <= float(lam) <= 1.0:
            raise ValueError(f"GLCNetLoss lam must be in [0, 1], got {lam}")
        self.global_loss = global_loss
        self.local_loss = local_loss
        self.lam = float(lam)

    def forward(
        self, enc1: Tensor, enc2: Tensor, regions1: Tensor, regions2: Tensor, valid: Tensor
    ) -> GLCNetLossOutput:
        global_part = self.global_loss(enc1, enc2)
        local = self.local_loss.compute(regions1, regions2, valid)
        total = self.lam * global_part + (1.0 - self.lam) * local.loss
        return GLCNetLossOutput(total, global_part, local.loss, local.valid_fraction)

    def extra_repr(self) -> str:
        return f"lam={self.lam}"
