import numpy as np
import pytest
import torch
from segloss_reference import (
    IGNORE,
    balanced_counts,
    cross_entropy,
    focal,
    make_inputs,
    perfect_logits,
    pixels,
)

from contrastseg.losses.segmentation import (
    BalancedBCELoss,
    CrossEntropyLoss,
    FocalLoss,
    balanced_bce_loss,
    cross_entropy_loss,
    focal_loss,
)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weight", [None, [0.5, 2.0, 1.0, 3.0], "balanced"])
def test_cross_entropy_matches_numpy(weight, smoothing):
    logits, target = make_inputs()
    expected_w = balanced_counts(target, 4) if weight == "balanced" else weight
    got = cross_entropy_loss(logits, target, class_weight=weight, label_smoothing=smoothing)
    assert got.item() == pytest.approx(
        cross_entropy(logits, target, expected_w, smoothing), rel=1e-9
    )


def test_cross_entropy_binary_is_bce_with_logits():
    logits, target = make_inputs(classes=1)
    ((_, y),) = pixels(logits, target, False)
    x = logits[:, 0].numpy()[target.numpy() != IGNORE]
    bce = np.mean(np.log1p(np.exp(-x)) * y + np.log1p(np.exp(x)) * (1 - y))
    assert cross_entropy_loss(logits, target).item() == pytest.approx(bce, rel=1e-9)


def test_balanced_weights_from_given_counts():
    logits, target = make_inputs()
    counts = torch.tensor([10, 30, 60, 0])
    w = np.array([100 / 40, 100 / 120, 100 / 240, 0.0])
    got = CrossEntropyLoss(class_weight="balanced", class_counts=counts)(logits, target)
    assert got.item() == pytest.approx(cross_entropy(logits, target, w), rel=1e-9)


@pytest.mark.parametrize("beta", [None, 0.8])
def test_balanced_bce_matches_numpy(beta):
    logits, target = make_inputs(classes=1)
    t = target.numpy()
    x = logits[:, 0].numpy()[t != IGNORE]
    y = t[t != IGNORE]
    b = (y == 0).mean() if beta is None else beta
    s = 1 / (1 + np.exp(-x))
    expected = np.mean(-(b * y * np.log(s) + (1 - b) * (1 - y) * np.log(1 - s)))
    assert balanced_bce_loss(logits, target, beta=beta).item() == pytest.approx(expected, rel=1e-9)
    assert BalancedBCELoss(beta)(logits, target).item() == pytest.approx(expected, rel=1e-9)


def test_balanced_bce_rejects_multiclass_logits():
    logits, target = make_inputs()
    with pytest.raises(ValueError, match=r"binary logits \(B, 1, H, W\)"):
        balanced_bce_loss(logits, target)


@pytest.mark.parametrize("gamma", [0.0, 2.0, 0.5])
@pytest.mark.parametrize("alpha", [None, [0.25, 1.0, 0.5, 2.0]])
def test_focal_matches_numpy(gamma, alpha):
    logits, target = make_inputs()
    got = focal_loss(logits, target, gamma=gamma, alpha=alpha)
    assert got.item() == pytest.approx(focal(logits, target, gamma, alpha), rel=1e-9)


def test_focal_binary_scalar_alpha_is_lins_sigmoid_form():
    logits, target = make_inputs(classes=1)
    t = target.numpy()
    x = logits[:, 0].numpy()[t != IGNORE]
    y = t[t != IGNORE]
    p = 1 / (1 + np.exp(-x))
    pt = np.where(y == 1, p, 1 - p)
    at = np.where(y == 1, 0.25, 0.75)
    expected = np.mean(-at * (1 - pt) ** 2 * np.log(pt))
    assert FocalLoss(alpha=0.25)(logits, target).item() == pytest.approx(expected, rel=1e-9)


def test_focal_scalar_alpha_in_multiclass_is_an_error():
    logits, target = make_inputs()
    with pytest.raises(ValueError, match="only defined in binary mode"):
        focal_loss(logits, target, alpha=0.25)


@pytest.mark.parametrize(
    "loss",
    [
        cross_entropy_loss,
        focal_loss,
        lambda x, t: cross_entropy_loss(x, t, class_weight="balanced"),
    ],
)
def test_gradients_finite_zero_at_ignored_and_minimum_at_perfect(loss):
    logits, target = make_inputs()
    logits.requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(logits, target), logits)
    assert torch.isfinite(grad).all()
    assert (grad.permute(0, 2, 3, 1)[target == IGNORE] == 0).all()
    perfect = loss(perfect_logits(target, 4), target)
    assert 0 <= perfect.item() < 1e-10


def test_balanced_bce_minimum_and_gradient():
    logits, target = make_inputs(classes=1)
    logits.requires_grad_(True)
    (grad,) = torch.autograd.grad(balanced_bce_loss(logits, target), logits)
    assert torch.isfinite(grad).all()
    assert balanced_bce_loss(perfect_logits(target, 1), target).item() < 1e-10


def test_all_pixels_ignored_gives_zero_with_graph():
    logits, _ = make_inputs()
    logits.requires_grad_(True)
    target = torch.full((2, 5, 6), IGNORE)
    for loss in (cross_entropy_loss, focal_loss):
        value = loss(logits, target)
        assert value.item() == 0.0
        value.backward()
        assert torch.isfinite(logits.grad).all()
