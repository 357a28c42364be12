import numpy as np
import pytest
import torch
from segloss_reference import (
    IGNORE,
    dice,
    focal,
    make_inputs,
    perfect_logits,
    pixels,
    region_loss,
    tversky_index,
)

from contrastseg.losses.segmentation import (
    ComboLoss,
    DiceFocalLoss,
    ExpLogLoss,
    HybridFocalLoss,
    UnifiedFocalLoss,
    combo_loss,
    dice_focal_loss,
    exp_log_loss,
    hybrid_focal_loss,
    unified_focal_loss,
)


def combo_np(logits, target, alpha, beta, clip=1e-7):
    ((p, y),) = pixels(logits, target, False)
    t = np.eye(p.shape[1])[y]
    pc = np.clip(p, clip, 1 - clip)
    ce = -np.mean(beta * t * np.log(pc) + (1 - beta) * (1 - t) * np.log(1 - pc))
    dsc = 1 - region_loss(logits, target, False, dice)
    return alpha * ce - (1 - alpha) * dsc


def unified_np(logits, target, lam, delta, gamma, background=None):
    ((p, y),) = pixels(logits, target, False)
    k = p.shape[1]
    d = np.full(k, delta)
    if background is not None:
        d[background] = 1 - delta
    pt = p[np.arange(len(y)), y]
    mf = np.mean(d[y] * (1 - pt) ** gamma * -np.log(pt))

    def mti(pc, yc):
        tp = np.sum(pc * yc)
        fn, fp = np.sum((1 - pc) * yc), np.sum(pc * (1 - yc))
        return (tp + 1e-6) / (tp + delta * fn + (1 - delta) * fp + 1e-6)

    mft = region_loss(logits, target, False, lambda pc, yc: (1 - mti(pc, yc)) ** (1 - gamma))
    return lam * mf + (1 - lam) * mft


def exp_log_np(logits, target, w_dice=0.8, w_ce=0.2, g_dice=0.3, g_ce=0.3, smooth=1.0):
    ((p, y),) = pixels(logits, target, False)
    k = p.shape[1]
    terms = []
    for c in range(k):
        yc = (y == c).astype(float)
        if yc.sum():
            d = (2 * np.sum(p[:, c] * yc) + smooth) / (np.sum(p[:, c]) + yc.sum() + smooth)
            terms.append((-np.log(d)) ** g_dice)
    f = np.array([(y == c).sum() for c in range(k)], dtype=float)
    w = np.sqrt(f.sum() / np.maximum(f, 1e-12))
    pt = p[np.arange(len(y)), y]
    return w_dice * np.mean(terms) + w_ce * np.mean(w[y] * (-np.log(pt)) ** g_ce)


@pytest.mark.parametrize("classes", [4, 1])
@pytest.mark.parametrize(("alpha", "beta"), [(0.5, 0.5), (0.3, 0.8)])
def test_combo_matches_numpy(alpha, beta, classes):
    logits, target = make_inputs(classes=classes, seed=21)
    expected = combo_np(logits, target, alpha, beta)
    assert combo_loss(logits, target, alpha, beta).item() == pytest.approx(expected, rel=1e-9)
    assert ComboLoss(alpha, beta)(logits, target).item() == pytest.approx(expected, rel=1e-9)


def test_dice_focal_matches_numpy():
    logits, target = make_inputs(seed=22)
    alpha = [1.0, 0.5, 2.0, 1.0]
    expected = 0.7 * region_loss(logits, target, False, dice) + 1.3 * focal(
        logits, target, 1.5, alpha
    )
    got = DiceFocalLoss(lambda_dice=0.7, lambda_focal=1.3, gamma=1.5, alpha=alpha)(logits, target)
    assert got.item() == pytest.approx(expected, rel=1e-9)
    assert dice_focal_loss(logits, target, 0.7, 1.3, 1.5, alpha).item() == pytest.approx(
        expected, rel=1e-9
    )


def test_hybrid_focal_matches_numpy():
    logits, target = make_inputs(seed=23)
    ftl = region_loss(
        logits, target, False, lambda p, y: (1 - tversky_index(p, y, 0.3, 0.7)) ** 0.75
    )
    expected = 0.4 * focal(logits, target, 2.0) + 0.6 * ftl
    assert hybrid_focal_loss(logits, target, lam=0.4).item() == pytest.approx(expected, rel=1e-9)
    assert HybridFocalLoss(lam=0.4)(logits, target).item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(("classes", "background"), [(4, None), (4, 0), (1, None)])
def test_unified_focal_matches_numpy(classes, background):
    logits, target = make_inputs(classes=classes, seed=24)
    bg = 0 if classes == 1 else background
    expected = unified_np(logits, target, 0.5, 0.6, 0.5, bg)
    got = unified_focal_loss(logits, target, background_index=background)
    assert got.item() == pytest.approx(expected, rel=1e-9)
    expected = unified_np(logits, target, 0.3, 0.7, 0.2, bg)
    got = UnifiedFocalLoss(lam=0.3, delta=0.7, gamma=0.2, background_index=background)(
        logits, target
    )
    assert got.item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("classes", [4, 1])
def test_exp_log_matches_numpy(classes):
    logits, target = make_inputs(classes=classes, seed=25)
    assert exp_log_loss(logits, target).item() == pytest.approx(
        exp_log_np(logits, target), rel=1e-9
    )
    got = ExpLogLoss(w_dice=0.5, w_ce=0.5, gamma_dice=1.0, gamma_ce=1.0)(logits, target)
    assert got.item() == pytest.approx(exp_log_np(logits, target, 0.5, 0.5, 1.0, 1.0), rel=1e-9)


def test_exp_log_uses_given_class_counts():
    logits, target = make_inputs(seed=26)
    counts = torch.tensor([5.0, 10.0, 20.0, 0.0])
    ((p, y),) = pixels(logits, target, False)
    w = np.sqrt(35.0 / np.array([5.0, 10.0, 20.0, 1.0]))
    pt = p[np.arange(len(y)), y]
    ce_only = np.mean(w[y] * (-np.log(pt)) ** 0.3)
    got = exp_log_loss(logits, target, w_dice=0.0, w_ce=1.0, class_counts=counts)
    assert got.item() == pytest.approx(ce_only, rel=1e-9)


LOSSES = [
    (combo_loss, lambda: -0.5),  # minimum -(1 - alpha): the Dice enters with a minus sign
    (dice_focal_loss, lambda: 0.0),
    (hybrid_focal_loss, lambda: 0.0),
    (unified_focal_loss, lambda: 0.0),
    (exp_log_loss, lambda: 0.0),
]


@pytest.mark.parametrize(("loss", "minimum"), LOSSES)
def test_gradient_finite_zero_at_ignored_and_minimum_at_perfect(loss, minimum):
    logits, target = make_inputs(seed=27)
    logits.requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(logits, target), logits)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert (grad.permute(0, 2, 3, 1)[target == IGNORE] == 0).all()
    perfect = perfect_logits(target, 4).requires_grad_(True)
    value = loss(perfect, target)
    assert value.item() == pytest.approx(minimum(), abs=1e-5)
    assert value.item() < loss(logits, target).item()
    (grad,) = torch.autograd.grad(value, perfect)
    assert torch.isfinite(grad).all()
