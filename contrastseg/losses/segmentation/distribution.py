"""Distribution-based segmentation losses: cross-entropy (weighted, label-smoothed), balanced
binary cross-entropy and focal loss.

All take logits ``(B, K, H, W)`` and int64 targets ``(B, H, W)``; see ``_functional`` for the
shared conventions (ignored pixels, binary mode with ``(B, 1, H, W)`` logits).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia.losses import focal_loss as kornia_focal_loss
from torch import Tensor, nn

from contrastseg.losses.segmentation._functional import (
    ClassWeight,
    check_inputs,
    class_logits,
    masked_mean,
    resolve_class_weight,
)


def cross_entropy_loss(
    logits: Tensor,
    target: Tensor,
    class_weight: ClassWeight = None,
    label_smoothing: float = 0.0,
    ignore_index: int | None = 255,
    class_counts: Tensor | None = None,
) -> Tensor:
    r"""Cross-entropy, optionally class-weighted and label-smoothed.

    .. math::

        L = \frac{\sum_i \big[(1-\varepsilon)\, w_{y_i} (-\log p_{i,y_i})
            + \tfrac{\varepsilon}{K} \sum_c w_c (-\log p_{i,c})\big]}{\sum_i w_{y_i}}

    over the valid pixels ``i``; ``w = 1`` without weights, ``\varepsilon = 0`` without
    smoothing. Label smoothing: Szegedy et al., "Rethinking the Inception Architecture",
    CVPR 2016. The normalisation by the summed target weights is PyTorch's.

    Args:
        logits: ``(B, K, H, W)``; ``(B, 1, H, W)`` gives binary cross-entropy with logits.
        target: ``(B, H, W)`` int64 labels.
        class_weight: ``None``, ``"balanced"`` (``n_pixels / (K * count_c)``, from ``class_counts``
            or the batch's labels) or ``K`` values (2 in binary mode: negative, positive).
        label_smoothing: ``\varepsilon`` in ``[0, 1)``.
        ignore_index: label of ignored pixels, or ``None``.
        class_counts: ``(K,)`` pixel counts for ``class_weight="balanced"``.

    Returns:
        A 0-d tensor; 0 when no pixel is valid.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    target, valid = check_inputs(logits, target, ignore_index)
    scores = class_logits(logits)
    w = resolve_class_weight(class_weight, scores.shape[1], target, valid, class_counts, scores)
    safe = torch.where(valid, target, torch.zeros_like(target))
    per_pixel = F.cross_entropy(
        scores, safe, weight=w, reduction="none", label_smoothing=label_smoothing
    )
    # PyTorch's own mean would be 0/0 = NaN for an all-ignored batch; normalise by hand.
    norm = valid.to(per_pixel.dtype) if w is None else w[safe] * valid.to(per_pixel.dtype)
    return (per_pixel * valid.to(per_pixel.dtype)).sum() / norm.sum().clamp_min(
        torch.finfo(norm.dtype).tiny
    )


def balanced_bce_loss(
    logits: Tensor,
    target: Tensor,
    beta: float | None = None,
    ignore_index: int | None = 255,
) -> Tensor:
    r"""Class-balanced binary cross-entropy (Xie & Tu, "Holistically-Nested Edge Detection", ICCV 2015).

    .. math::

        L = -\frac{1}{N} \sum_i \big[\beta\, y_i \log \sigma(x_i)
            + (1 - \beta)(1 - y_i) \log(1 - \sigma(x_i))\big]

    over the ``N`` valid pixels, with ``\beta = |Y_-| / |Y|`` (the fraction of negative
    pixels in the batch) unless given, so the rarer class weighs more.

    Args:
        logits: ``(B, 1, H, W)`` foreground logits (binary only).
        target: ``(B, H, W)`` 0 / 1 labels.
        beta: weight of the positive term in ``[0, 1]``; ``None`` computes it per batch.
        ignore_index: label of ignored pixels, or ``None``.
    """
    if logits.ndim == 4 and logits.shape[1] != 1:
        raise ValueError(
            f"balanced_bce needs binary logits (B, 1, H, W), got {tuple(logits.shape)}"
        )
    if beta is not None and not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    target, valid = check_inputs(logits, target, ignore_index)
    x = class_logits(logits)[:, 1]  # float32 under autocast
    y = (target == 1).to(x.dtype)
    if beta is None:
        n_valid = valid.sum().clamp_min(1)
        beta_t = ((1 - y) * valid.to(x.dtype)).sum() / n_valid
    else:
        beta_t = torch.tensor(beta, dtype=x.dtype, device=x.device)
    per_pixel = -(beta_t * y * F.logsigmoid(x) + (1 - beta_t) * (1 - y) * F.logsigmoid(-x))
    return masked_mean(per_pixel, valid)


def focal_loss(
    logits: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    alpha: ClassWeight | float = None,
    ignore_index: int | None = 255,
    class_counts: Tensor | None = None,
) -> Tensor:
    r"""Focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017).

    .. math::

        L = \frac{1}{N} \sum_i -\alpha_{y_i} (1 - p_{i,y_i})^{\gamma} \log p_{i,y_i}

    over the ``N`` valid pixels. Built on :func:`kornia.losses.focal_loss` (its unreduced
    map); added here: per-class ``alpha`` (a list, ``"balanced"``, or in binary mode Lin's
    scalar ``alpha`` on the foreground and ``1 - alpha`` on the background), ignored pixels
    left out of the mean (Kornia's ``'mean'`` counts them and divides by ``K``), binary mode
    and input checks.

    Args:
        logits: ``(B, K, H, W)``, or ``(B, 1, H, W)`` for the sigmoid form.
        target: ``(B, H, W)`` int64 labels.
        gamma: focusing parameter ``>= 0``.
        alpha: ``None`` (all 1), ``"balanced"``, ``K`` values, or a float in binary mode.
        ignore_index: label of ignored pixels, or ``None``.
        class_counts: ``(K,)`` pixel counts for ``alpha="balanced"``.
    """
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    target, valid = check_inputs(logits, target, ignore_index)
    scores = class_logits(logits)
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
        if logits.shape[1] != 1:
            raise ValueError(
                f"a scalar alpha={alpha} is only defined in binary mode; give one alpha per class "
                f"({logits.shape[1]} values) or 'balanced'"
            )
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        alpha = [1.0 - float(alpha), float(alpha)]
    w = resolve_class_weight(alpha, scores.shape[1], target, valid, class_counts, scores)
    safe = torch.where(valid, target, torch.zeros_like(target))
    loss_map = kornia_focal_loss(scores, safe, alpha=None, gamma=gamma, reduction="none", weight=w)
    return masked_mean(loss_map.sum(1), valid)


class CrossEntropyLoss(nn.Module):
    """Module form of :func:`cross_entropy_loss` (weighted and label-smoothed CE)."""

    def __init__(
        self,
        class_weight: ClassWeight = None,
        label_smoothing: float = 0.0,
        ignore_index: int | None = 255,
        class_counts: Tensor | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.class_weight, self.label_smoothing, self.ignore_index = (
            class_weight,
            label_smoothing,
            ignore_index,
        )
        self.class_counts = class_counts

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return cross_entropy_loss(
            logits,
            target,
            self.class_weight,
            self.label_smoothing,
            self.ignore_index,
            self.class_counts,
        )

    def extra_repr(self) -> str:
        return (
            f"class_weight={self.class_weight!r}, label_smoothing={self.label_smoothing}, "
            f"ignore_index={self.ignore_index}"
        )


class BalancedBCELoss(nn.Module):
    """Module form of :func:`balanced_bce_loss` (binary logits only)."""

    def __init__(self, beta: float | None = None, ignore_index: int | None = 255) -> None:
        super().__init__()
        if beta is not None and not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        self.beta, self.ignore_index = beta, ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return balanced_bce_loss(logits, target, self.beta, self.ignore_index)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, ignore_index={self.ignore_index}"


class FocalLoss(nn.Module):
    """Module form of :func:`focal_loss`."""

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: ClassWeight | float = None,
        ignore_index: int | None = 255,
        class_counts: Tensor | None = None,
    ) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma, self.alpha, self.ignore_index = gamma, alpha, ignore_index
        self.class_counts = class_counts

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return focal_loss(
            logits, target, self.gamma, self.alpha, self.ignore_index, self.class_counts
        )

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha!r}, ignore_index={self.ignore_index}"
