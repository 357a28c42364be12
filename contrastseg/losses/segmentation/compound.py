"""Compound segmentation losses: combo, Dice + focal, hybrid focal, unified focal and
exponential logarithmic loss.

Each mixes a distribution term (per pixel) with a region term (per class); both follow the
conventions of ``_functional`` (ignored pixels, present classes, binary mode).
"""

from __future__ import annotations

import torch
from torch import Tensor

from contrastseg.losses.segmentation._functional import (
    ClassWeight,
    FunctionalLoss,
    check_inputs,
    class_logits,
    masked_mean,
    mean_over_present,
    one_hot_valid,
    safe_pow,
    soft_counts,
)
from contrastseg.losses.segmentation.distribution import focal_loss
from contrastseg.losses.segmentation.region import dice_loss, focal_tversky_loss


def _prepare(
    logits: Tensor, target: Tensor, ignore_index: int | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    target, valid = check_inputs(logits, target, ignore_index)
    log_probs = class_logits(logits).log_softmax(1)
    one_hot = one_hot_valid(target, valid, log_probs.shape[1], log_probs.dtype)
    return target, valid, log_probs, one_hot


def combo_loss(
    logits: Tensor,
    target: Tensor,
    alpha: float = 0.5,
    beta: float = 0.5,
    clip: float = 1e-7,
    ignore_index: int | None = 255,
) -> Tensor:
    r"""Combo loss (Taghanaki et al., "Combo loss: Handling input and output imbalance in
    multi-organ segmentation", CMIG 2019).

    .. math::

        L = \alpha \underbrace{\Big(-\frac{1}{NK}\sum_{i,c} \beta\, y_{ic}\log p_{ic}
            + (1 - \beta)(1 - y_{ic}) \log(1 - p_{ic})\Big)}_{\text{weighted CE}}
            - (1 - \alpha)\, \overline{\mathrm{DSC}}

    with ``p`` clipped to ``[clip, 1 - clip]`` as in the paper, the mean over the ``N`` valid
    pixels and ``K`` classes, and :math:`\overline{\mathrm{DSC}}` the soft Dice score averaged
    over the present classes. As in the paper the Dice enters with a minus sign, so the
    minimum (a perfect prediction) is about ``-(1 - alpha)``, not 0. ``beta > 0.5`` penalises
    false negatives more than false positives.
    """
    if not (0.0 <= alpha <= 1.0 and 0.0 <= beta <= 1.0):
        raise ValueError(f"alpha and beta must be in [0, 1], got alpha={alpha}, beta={beta}")
    _, valid, log_probs, one_hot = _prepare(logits, target, ignore_index)
    probs = log_probs.exp().clamp(clip, 1.0 - clip)
    ce = -(beta * one_hot * probs.log() + (1 - beta) * (1 - one_hot) * torch.log1p(-probs))
    weighted_ce = masked_mean(ce.mean(1), valid)
    dice_score = 1.0 - dice_loss(logits, target, ignore_index=ignore_index)
    return alpha * weighted_ce - (1 - alpha) * dice_score


def dice_focal_loss(
    logits: Tensor,
    target: Tensor,
    lambda_dice: float = 1.0,
    lambda_focal: float = 1.0,
    gamma: float = 2.0,
    alpha: ClassWeight | float = None,
    ignore_index: int | None = 255,
    class_counts: Tensor | None = None,
) -> Tensor:
    r"""Dice + focal loss (Zhu et al., "AnatomyNet", Medical Physics 2019):
    :math:`\lambda_d L_{Dice} + \lambda_f L_{focal}` with :func:`dice_loss` and :func:`focal_loss`."""
    dice = dice_loss(logits, target, ignore_index=ignore_index)
    focal = focal_loss(logits, target, gamma, alpha, ignore_index, class_counts)
    return lambda_dice * dice + lambda_focal * focal


def hybrid_focal_loss(
    logits: Tensor,
    target: Tensor,
    lam: float = 0.5,
    focal_gamma: float = 2.0,
    alpha: ClassWeight | float = None,
    tversky_alpha: float = 0.3,
    tversky_beta: float = 0.7,
    tversky_gamma: float = 0.75,
    ignore_index: int | None = 255,
    class_counts: Tensor | None = None,
) -> Tensor:
    r"""Hybrid focal loss (Yeung et al., "Unified Focal loss", CMIG 2022, Sec. 2.3):
    :math:`\lambda L_{focal} + (1 - \lambda) L_{FTL}` with :func:`focal_loss` and
    :func:`focal_tversky_loss`; ``lam`` is :math:`\lambda`."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    focal = focal_loss(logits, target, focal_gamma, alpha, ignore_index, class_counts)
    ftl = focal_tversky_loss(
        logits, target, tversky_alpha, tversky_beta, tversky_gamma, ignore_index=ignore_index
    )
    return lam * focal + (1 - lam) * ftl


def unified_focal_loss(
    logits: Tensor,
    target: Tensor,
    lam: float = 0.5,
    delta: float = 0.6,
    gamma: float = 0.5,
    background_index: int | None = None,
    eps: float = 1e-6,
    ignore_index: int | None = 255,
) -> Tensor:
    r"""Symmetric unified focal loss (Yeung et al., "Unified Focal loss: Generalising Dice
    and cross entropy-based losses to handle class imbalanced medical image segmentation",
    CMIG 2022).

    .. math::

        L = \lambda L_{mF} + (1 - \lambda) L_{mFT}, \quad
        L_{mF} = \frac{1}{N} \sum_i \sum_c \delta_c (1 - p_{ic})^{\gamma} (-y_{ic} \log p_{ic}),

        L_{mFT} = \frac{1}{|C|} \sum_{c \in C} (1 - mTI_c)^{1 - \gamma}, \quad
        mTI_c = \frac{TP_c + \epsilon}{TP_c + \delta FN_c + (1 - \delta) FP_c + \epsilon}

    with :math:`\delta_c = 1 - \delta` for the background class and :math:`\delta` for every
    other class, as in the authors' symmetric reference code (binary mode: class 0 is the
    background). With ``background_index=None`` in multi-class mode every class gets
    ``delta``. ``lam`` is :math:`\lambda`; defaults are the authors' (0.5, 0.6, 0.5).
    """
    if not (0.0 <= lam <= 1.0 and 0.0 <= delta <= 1.0 and 0.0 <= gamma <= 1.0):
        raise ValueError(f"lam, delta and gamma must be in [0, 1], got {lam}, {delta}, {gamma}")
    _, valid, log_probs, one_hot = _prepare(logits, target, ignore_index)
    classes = log_probs.shape[1]
    if logits.shape[1] == 1:
        background_index = 0
    deltas = torch.full((classes,), delta, dtype=log_probs.dtype, device=log_probs.device)
    if background_index is not None:
        if not 0 <= background_index < classes:
            raise ValueError(
                f"background_index={background_index} is not a class in [0, {classes})"
            )
        deltas[background_index] = 1.0 - delta
    probs = log_probs.exp()
    focal_terms = deltas.view(1, -1, 1, 1) * safe_pow(1.0 - probs, gamma) * (-one_hot * log_probs)
    modified_focal = masked_mean(focal_terms.sum(1), valid)
    tp, fp, fn, count = soft_counts(probs, one_hot, valid, per_image=False)
    # eps in numerator and denominator as in the authors' code: a perfect prediction gives
    # mTI = 1 exactly, where (1 - mTI)^(1 - gamma) with gamma near 1 would magnify eps.
    mti = (tp + eps) / (tp + delta * fn + (1 - delta) * fp + eps)
    modified_ftl = mean_over_present(safe_pow((1.0 - mti).clamp_min(0.0), 1.0 - gamma), count)
    return lam * modified_focal + (1 - lam) * modified_ftl


def exp_log_loss(
    logits: Tensor,
    target: Tensor,
    w_dice: float = 0.8,
    w_ce: float = 0.2,
    gamma_dice: float = 0.3,
    gamma_ce: float = 0.3,
    smooth: float = 1.0,
    ignore_index: int | None = 255,
    class_counts: Tensor | None = None,
) -> Tensor:
    r"""Exponential logarithmic loss (Wong et al., "3D Segmentation with Exponential
    Logarithmic Loss for Highly Unbalanced Object Sizes", MICCAI 2018).

    .. math::

        L = w_{dice}\, \frac{1}{|C|}\sum_{c \in C} (-\ln D_c)^{\gamma_{dice}}
          + w_{ce}\, \frac{1}{N} \sum_i w_{y_i} (-\ln p_{i,y_i})^{\gamma_{ce}}

    with :math:`D_c = (2 TP_c + s) / (\sum_i p_{ic} + \sum_i y_{ic} + s)` (``s = smooth``,
    the paper's pseudocount 1) and :math:`w_l = ((\sum_k f_k) / f_l)^{0.5}` from the label
    frequencies ``f`` (``class_counts`` if given, else the batch's valid labels).
    """
    target, valid, log_probs, one_hot = _prepare(logits, target, ignore_index)
    classes = log_probs.shape[1]
    probs = log_probs.exp()
    tp, fp, fn, count = soft_counts(probs, one_hot, valid, per_image=False)
    dice = (2 * tp + smooth) / (2 * tp + fp + fn + smooth)
    dice_term = mean_over_present(safe_pow(-dice.clamp_max(1.0).log(), gamma_dice), count)
    freq = count[0] if class_counts is None else class_counts.to(probs.dtype).to(probs.device)
    if freq.numel() != classes:
        raise ValueError(f"class_counts has {freq.numel()} entries for {classes} classes")
    class_w = torch.where(
        freq > 0, (freq.sum() / freq.clamp_min(1e-12)).sqrt(), torch.zeros_like(freq)
    )
    safe = torch.where(valid, target, torch.zeros_like(target))
    nll = -log_probs.gather(1, safe.unsqueeze(1)).squeeze(1)
    ce_term = masked_mean(class_w[safe] * safe_pow(nll.clamp_min(0.0), gamma_ce), valid)
    return w_dice * dice_term + w_ce * ce_term


class ComboLoss(FunctionalLoss):
    """Module form of :func:`combo_loss`."""

    fn = staticmethod(combo_loss)

    def __init__(
        self,
        alpha: float = 0.5,
        beta: float = 0.5,
        clip: float = 1e-7,
        ignore_index: int | None = 255,
    ) -> None:
        super().__init__(alpha=alpha, beta=beta, clip=clip, ignore_index=ignore_index)


class DiceFocalLoss(FunctionalLoss):
    """Module form of :func:`dice_focal_loss`."""

    fn = staticmethod(dice_focal_loss)

    def __init__(
        self,
        lambda_dice: float = 1.0,
        lambda_focal: float = 1.0,
        gamma: float = 2.0,
        alpha: ClassWeight | float = None,
        ignore_index: int | None = 255,
        class_counts: Tensor | None = None,
    ) -> None:
        super().__init__(
            lambda_dice=lambda_dice,
            lambda_focal=lambda_focal,
            gamma=gamma,
            alpha=alpha,
            ignore_index=ignore_index,
            class_counts=class_counts,
        )


class HybridFocalLoss(FunctionalLoss):
    """Module form of :func:`hybrid_focal_loss`."""

    fn = staticmethod(hybrid_focal_loss)

    def __init__(
        self,
        lam: float = 0.5,
        focal_gamma: float = 2.0,
        alpha: ClassWeight | float = None,
        tversky_alpha: float = 0.3,
        tversky_beta: float = 0.7,
        tversky_gamma: float = 0.75,
        ignore_index: int | None = 255,
        class_counts: Tensor | None = None,
    ) -> None:
        super().__init__(
            lam=lam,
            focal_gamma=focal_gamma,
            alpha=alpha,
            tversky_alpha=tversky_alpha,
            tversky_beta=tversky_beta,
            tversky_gamma=tversky_gamma,
            ignore_index=ignore_index,
            class_counts=class_counts,
        )


class UnifiedFocalLoss(FunctionalLoss):
    """Module form of :func:`unified_focal_loss`."""

    fn = staticmethod(unified_focal_loss)

    def __init__(
        self,
        lam: float = 0.5,
        delta: float = 0.6,
        gamma: float = 0.5,
        background_index: int | None = None,
        eps: float = 1e-6,
        ignore_index: int | None = 255,
    ) -> None:
        super().__init__(
            lam=lam,
            delta=delta,
            gamma=gamma,
            background_index=background_index,
            eps=eps,
            ignore_index=ignore_index,
        )


class ExpLogLoss(FunctionalLoss):
    """Module form of :func:`exp_log_loss`."""

    fn = staticmethod(exp_log_loss)

    def __init__(
        self,
        w_dice: float = 0.8,
        w_ce: float = 0.2,
        gamma_dice: float = 0.3,
        gamma_ce: float = 0.3,
        smooth: float = 1.0,
        ignore_index: int | None = 255,
        class_counts: Tensor | None = None,
    ) -> None:
        super().__init__(
            w_dice=w_dice,
            w_ce=w_ce,
            gamma_dice=gamma_dice,
            gamma_ce=gamma_ce,
            smooth=smooth,
            ignore_index=ignore_index,
            class_counts=class_counts,
        )
