"""Region-based segmentation losses: soft Dice, soft Jaccard, sensitivity-specificity,
Tversky, focal Tversky and log-cosh Dice.

Each computes soft counts per class (``TP = sum p y``, ``FP = sum p (1 - y)``,
``FN = sum (1 - p) y``) over the valid pixels of the batch (default) or of each image
(``per_image=True``), a per-class loss, and its mean over the classes present in the target;
see ``_functional`` for the conventions. ``eps`` is added to denominators only.
"""

from __future__ import annotations

import torch
from kornia.losses import dice_loss as kornia_dice_loss
from kornia.losses import tversky_loss as kornia_tversky_loss
from torch import Tensor

from contrastseg.losses.segmentation._functional import (
    FunctionalLoss,
    check_inputs,
    class_logits,
    mean_over_present,
    one_hot_valid,
    safe_pow,
    soft_counts,
)


def _soft_counts(
    logits: Tensor, target: Tensor, ignore_index: int | None, per_image: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    target, valid = check_inputs(logits, target, ignore_index)
    probs = class_logits(logits).softmax(1)
    one_hot = one_hot_valid(target, valid, probs.shape[1], probs.dtype)
    return soft_counts(probs, one_hot, valid, per_image)


def _kornia_layout(
    logits: Tensor, target: Tensor, ignore_index: int | None, per_image: bool
) -> tuple[Tensor, Tensor] | None:
    """Inputs for Kornia's per-sample region losses, or ``None`` when no pixel is valid.

    Kornia scores each sample on its own and enters a fully ignored sample as loss 1. For
    batch statistics the batch becomes one tall image ``(1, K, B*H, W)``; per image, the
    samples without a valid pixel are dropped so they do not count.
    """
    target, valid = check_inputs(logits, target, ignore_index)
    scores = class_logits(logits)
    if per_image:
        keep = valid.flatten(1).any(1)
        if not bool(keep.all()):
            scores, target = scores[keep], target[keep]
    elif not bool(valid.any()):
        scores = scores[:0]
    if scores.shape[0] == 0:
        return None
    if not per_image:
        batch, classes, height, width = scores.shape
        scores = scores.transpose(0, 1).reshape(1, classes, batch * height, width)
        target = target.reshape(1, batch * height, width)
    return scores, target


def dice_loss(
    logits: Tensor,
    target: Tensor,
    squared: bool = False,
    per_image: bool = False,
    eps: float = 1e-6,
    ignore_index: int | None = 255,
) -> Tensor:
    r"""Soft Dice loss, per class then mean over the classes present in the target.

    .. math::

        L = \frac{1}{|C|} \sum_{c \in C} \Big(1 - \frac{2 \sum_i p_{ic} y_{ic}}
            {\sum_i p_{ic}^{s} + \sum_i y_{ic}^{s} + \epsilon}\Big)

    with ``s = 1`` (plain) or ``s = 2`` (squared denominators, Milletari et al., "V-Net",
    3DV 2016); multi-class averaging after Sudre et al., "Generalised Dice overlap as a deep
    learning loss function", DLMIA 2017 (without their 1 / count^2 class weights). The plain
    form is :func:`kornia.losses.dice_loss` with ``average='macro'`` (which averages over the
    present classes too); added here: batch statistics (the batch is laid out as one image),
    dropping fully ignored images, binary mode, input checks.

    Args:
        logits: ``(B, K, H, W)`` or binary ``(B, 1, H, W)``.
        target: ``(B, H, W)`` int64 labels.
        squared: square the denominator terms.
        per_image: one Dice per image and class, averaged over images; else over the batch.
        eps: added to the denominator.
        ignore_index: label of ignored pixels, or ``None``.
    """
    if not squared:
        inputs = _kornia_layout(logits, target, ignore_index, per_image)
        if inputs is None:
            return logits.sum() * 0.0
        return kornia_dice_loss(*inputs, average="macro", eps=eps, ignore_index=ignore_index)
    target, valid = check_inputs(logits, target, ignore_index)
    probs = class_logits(logits).softmax(1)
    one_hot = one_hot_valid(target, valid, probs.shape[1], probs.dtype)
    tp, _, _, count = soft_counts(probs, one_hot, valid, per_image)
    p_sq = (probs.square() * valid.unsqueeze(1).to(probs.dtype)).sum(
        (2, 3) if per_image else (0, 2, 3)
    )
    p_sq = p_sq if per_image else p_sq.unsqueeze(0)
    return mean_over_present(1.0 - 2.0 * tp / (p_sq + count + eps), count)


def jaccard_loss(
    logits: Tensor,
    target: Tensor,
    per_image: bool = False,
    eps: float = 1e-6,
    ignore_index: int | None = 255,
) -> Tensor:
    r"""Soft Jaccard (IoU) loss (Rahman & Wang, "Optimizing Intersection-Over-Union in Deep
    Neural Networks for Image Segmentation", ISVC 2016).

    .. math::

        L = \frac{1}{|C|} \sum_{c \in C} \Big(1 - \frac{TP_c}{TP_c + FP_c + FN_c + \epsilon}\Big)

    Args: as :func:`dice_loss` (no ``squared``).
    """
    tp, fp, fn, count = _soft_counts(logits, target, ignore_index, per_image)
    return mean_over_present(1.0 - tp / (tp + fp + fn + eps), count)


def sensitivity_specificity_loss(
    logits: Tensor,
    target: Tensor,
    r: float = 0.05,
    per_image: bool = False,
    eps: float = 1e-6,
    ignore_index: int | None = 255,
) -> Tensor:
    r"""Sensitivity-specificity loss (Brosch et al., "Deep Convolutional Encoder Networks for
    Multiple Sclerosis Lesion Segmentation", MICCAI 2015), per class.

    .. math::

        L_c = r \frac{\sum_i (y_{ic} - p_{ic})^2 y_{ic}}{\sum_i y_{ic} + \epsilon}
            + (1 - r) \frac{\sum_i (y_{ic} - p_{ic})^2 (1 - y_{ic})}{\sum_i (1 - y_{ic}) + \epsilon}

    averaged over the present classes. ``r`` (0.05 in the paper) weights sensitivity.
    """
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"r must be in [0, 1], got {r}")
    target, valid = check_inputs(logits, target, ignore_index)
    probs = class_logits(logits).softmax(1)
    one_hot = one_hot_valid(target, valid, probs.shape[1], probs.dtype)
    mask = valid.unsqueeze(1).to(probs.dtype)
    sq_err = (one_hot - probs).square() * mask
    dims = (2, 3) if per_image else (0, 2, 3)
    count = one_hot.sum(dims)
    negatives = (mask - one_hot).sum(dims)
    err_pos = (sq_err * one_hot).sum(dims)
    err_neg = (sq_err * (mask - one_hot)).sum(dims)
    per_class = r * err_pos / (count + eps) + (1 - r) * err_neg / (negatives + eps)
    if not per_image:
        per_class, count = per_class.unsqueeze(0), count.unsqueeze(0)
    return mean_over_present(per_class, count)


def tversky_loss(
    logits: Tensor,
    target: Tensor,
    alpha: float = 0.3,
    beta: float = 0.7,
    per_image: bool = False,
    eps: float = 1e-6,
    ignore_index: int | None = 255,
) -> Tensor:
    r"""Tversky loss (Salehi et al., "Tversky loss function for image segmentation using 3D
    fully convolutional deep networks", MLMI 2017).

    .. math::

        L = \frac{1}{|C|} \sum_{c \in C} \Big(1 - \frac{TP_c}{TP_c + \alpha FP_c + \beta FN_c + \epsilon}\Big)

    ``alpha`` weighs false positives, ``beta`` false negatives (``alpha = beta = 0.5`` is
    Dice). Built on :func:`kornia.losses.tversky_loss` (per sample, mean over present
    classes); added here: batch statistics, dropping fully ignored images, binary mode,
    input checks.
    """
    if alpha < 0 or beta < 0:
        raise ValueError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
    inputs = _kornia_layout(logits, target, ignore_index, per_image)
    if inputs is None:
        return logits.sum() * 0.0
    return kornia_tversky_loss(*inputs, alpha=alpha, beta=beta, eps=eps, ignore_index=ignore_index)


def focal_tversky_loss(
    logits: Tensor,
    target: Tensor,
    alpha: float = 0.3,
    beta: float = 0.7,
    gamma: float = 0.75,
    per_image: bool = False,
    eps: float = 1e-6,
    ignore_index: int | None = 255,
) -> Tensor:
    r"""Focal Tversky loss (Abraham & Khan, "A Novel Focal Tversky Loss Function with
    Improved Attention U-Net for Lesion Segmentation", ISBI 2019).

    .. math::

        L = \frac{1}{|C|} \sum_{c \in C} (1 - TI_c)^{\gamma}, \quad
        TI_c = \frac{TP_c}{TP_c + \alpha FP_c + \beta FN_c + \epsilon}

    The exponent is applied per class. The paper writes it ``1 / gamma`` with
    ``gamma`` in ``[1, 3]`` and recommends 4/3; here ``gamma`` is the exponent itself,
    default 0.75 = 1 / (4/3).
    """
    if alpha < 0 or beta < 0 or gamma <= 0:
        raise ValueError(f"need alpha, beta >= 0 and gamma > 0, got {alpha}, {beta}, {gamma}")
    tp, fp, fn, count = _soft_counts(logits, target, ignore_index, per_image)
    index = tp / (tp + alpha * fp + beta * fn + eps)
    return mean_over_present(safe_pow((1.0 - index).clamp_min(0.0), gamma), count)


def log_cosh_dice_loss(
    logits: Tensor,
    target: Tensor,
    per_image: bool = False,
    eps: float = 1e-6,
    ignore_index: int | None = 255,
) -> Tensor:
    r"""Log-cosh Dice loss (Jadon, "A survey of loss functions for semantic segmentation",
    CIBCB 2020): :math:`\log\cosh(L_{Dice})` with the plain :func:`dice_loss`."""
    return torch.log(torch.cosh(dice_loss(logits, target, False, per_image, eps, ignore_index)))


class DiceLoss(FunctionalLoss):
    """Module form of :func:`dice_loss`."""

    fn = staticmethod(dice_loss)

    def __init__(
        self,
        squared: bool = False,
        per_image: bool = False,
        eps: float = 1e-6,
        ignore_index: int | None = 255,
    ) -> None:
        super().__init__(squared=squared, per_image=per_image, eps=eps, ignore_index=ignore_index)


class JaccardLoss(FunctionalLoss):
    """Module form of :func:`jaccard_loss`."""

    fn = staticmethod(jaccard_loss)

    def __init__(
        self, per_image: bool = False, eps: float = 1e-6, ignore_index: int | None = 255
    ) -> None:
        super().__init__(per_image=per_image, eps=eps, ignore_index=ignore_index)


class SensitivitySpecificityLoss(FunctionalLoss):
    """Module form of :func:`sensitivity_specificity_loss`."""

    fn = staticmethod(sensitivity_specificity_loss)

    def __init__(
        self,
        r: float = 0.05,
        per_image: bool = False,
        eps: float = 1e-6,
        ignore_index: int | None = 255,
    ) -> None:
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"r must be in [0, 1], got {r}")
        super().__init__(r=r, per_image=per_image, eps=eps, ignore_index=ignore_index)


class TverskyLoss(FunctionalLoss):
    """Module form of :func:`tversky_loss`."""

    fn = staticmethod(tversky_loss)

    def __init__(
        self,
        alpha: float = 0.3,
        beta: float = 0.7,
        per_image: bool = False,
        eps: float = 1e-6,
        ignore_index: int | None = 255,
    ) -> None:
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
        super().__init__(
            alpha=alpha, beta=beta, per_image=per_image, eps=eps, ignore_index=ignore_index
        )


class FocalTverskyLoss(FunctionalLoss):
    """Module form of :func:`focal_tversky_loss`."""

    fn = staticmethod(focal_tversky_loss)

    def __init__(
        self,
        alpha: float = 0.3,
        beta: float = 0.7,
        gamma: float = 0.75,
        per_image: bool = False,
        eps: float = 1e-6,
        ignore_index: int | None = 255,
    ) -> None:
        if alpha < 0 or beta < 0 or gamma <= 0:
            raise ValueError(f"need alpha, beta >= 0 and gamma > 0, got {alpha}, {beta}, {gamma}")
        super().__init__(
            alpha=alpha,
            beta=beta,
            gamma=gamma,
            per_image=per_image,
            eps=eps,
            ignore_index=ignore_index,
        )


class LogCoshDiceLoss(FunctionalLoss):
    """Module form of :func:`log_cosh_dice_loss`."""

    fn = staticmethod(log_cosh_dice_loss)

    def __init__(
        self, per_image: bool = False, eps: float = 1e-6, ignore_index: int | None = 255
    ) -> None:
        super().__init__(per_image=per_image, eps=eps, ignore_index=ignore_index)
