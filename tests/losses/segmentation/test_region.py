import numpy as np
import pytest
import torch
from segloss_reference import (
    IGNORE,
    dice,
    jaccard,
    make_inputs,
    perfect_logits,
    region_loss,
    sens_spec,
    tversky_index,
)

from contrastseg.losses.segmentation import (
    DiceLoss,
    FocalTverskyLoss,
    JaccardLoss,
    LogCoshDiceLoss,
    SensitivitySpecificityLoss,
    TverskyLoss,
    dice_loss,
    focal_tversky_loss,
    jaccard_loss,
    log_cosh_dice_loss,
    sensitivity_specificity_loss,
    tversky_loss,
)

# (our function, its keyword arguments, the numpy per-class loss)
CASES = {
    "dice": (dice_loss, {}, lambda p, y: dice(p, y)),
    "dice_squared": (dice_loss, {"squared": True}, lambda p, y: dice(p, y, squared=True)),
    "jaccard": (jaccard_loss, {}, jaccard),
    "sens_spec": (sensitivity_specificity_loss, {"r": 0.1}, lambda p, y: sens_spec(p, y, 0.1)),
    "tversky": (
        tversky_loss,
        {"alpha": 0.3, "beta": 0.7},
        lambda p, y: 1 - tversky_index(p, y, 0.3, 0.7),
    ),
    "focal_tversky": (
        focal_tversky_loss,
        {"alpha": 0.4, "beta": 0.6, "gamma": 0.75},
        lambda p, y: (1 - tversky_index(p, y, 0.4, 0.6)) ** 0.75,
    ),
}


@pytest.mark.parametrize("classes", [4, 1])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("name", sorted(CASES))
def test_region_losses_match_numpy(name, per_image, classes):
    fn, kwargs, per_class = CASES[name]
    logits, target = make_inputs(classes=classes, seed=1)
    got = fn(logits, target, per_image=per_image, **kwargs)
    assert got.item() == pytest.approx(region_loss(logits, target, per_image, per_class), rel=1e-9)


@pytest.mark.parametrize("per_image", [False, True])
def test_log_cosh_dice_matches_numpy(per_image):
    logits, target = make_inputs(seed=2)
    expected = np.log(np.cosh(region_loss(logits, target, per_image, dice)))
    assert log_cosh_dice_loss(logits, target, per_image=per_image).item() == pytest.approx(
        expected, rel=1e-9
    )


@pytest.mark.parametrize("fn", [dice_loss, tversky_loss])
def test_kornia_based_losses_on_kornias_large_input_path(fn):
    # Kornia switches to a gather-based CPU path from 2**15 logits on; check that one too.
    logits, target = make_inputs(seed=3, height=64, width=64)
    assert logits.numel() >= 2**15
    expected = region_loss(
        logits,
        target,
        False,
        dice if fn is dice_loss else (lambda p, y: 1 - tversky_index(p, y, 0.3, 0.7)),
    )
    assert fn(logits, target).item() == pytest.approx(expected, rel=1e-7)


def test_tversky_with_half_weights_is_dice():
    logits, target = make_inputs(seed=4)
    a = tversky_loss(logits, target, alpha=0.5, beta=0.5, eps=0.0)
    assert a.item() == pytest.approx(dice_loss(logits, target, eps=0.0).item(), rel=1e-12)


@pytest.mark.parametrize("name", sorted(CASES))
def test_fully_ignored_image_is_left_out_per_image(name):
    fn, kwargs, _ = CASES[name]
    logits, target = make_inputs(seed=5)
    target[1] = IGNORE
    both = fn(logits, target, per_image=True, **kwargs)
    first = fn(logits[:1], target[:1], per_image=True, **kwargs)
    assert both.item() == pytest.approx(first.item(), rel=1e-12)


ALL = [*CASES.values(), (log_cosh_dice_loss, {}, None)]


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize(("fn", "kwargs"), [(fn, kw) for fn, kw, _ in ALL])
def test_gradients_finite_and_zero_at_ignored_pixels(fn, kwargs, per_image):
    logits, target = make_inputs(seed=6)
    logits.requires_grad_(True)
    (grad,) = torch.autograd.grad(fn(logits, target, per_image=per_image, **kwargs), logits)
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0
    assert (grad.permute(0, 2, 3, 1)[target == IGNORE] == 0).all()


@pytest.mark.parametrize("classes", [4, 1])
@pytest.mark.parametrize(("fn", "kwargs"), [(fn, kw) for fn, kw, _ in ALL])
def test_perfect_prediction_gives_zero(fn, kwargs, classes):
    _, target = make_inputs(classes=classes, seed=7)
    logits = perfect_logits(target, classes).requires_grad_(True)
    value = fn(logits, target, **kwargs)
    assert 0 <= value.item() < 1e-5
    (grad,) = torch.autograd.grad(value, logits)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize(("fn", "kwargs"), [(fn, kw) for fn, kw, _ in ALL])
def test_no_valid_pixel_gives_zero(fn, kwargs):
    logits, _ = make_inputs()
    target = torch.full((2, 5, 6), IGNORE)
    assert fn(logits, target, **kwargs).item() == 0.0


def test_modules_match_numpy():
    logits, target = make_inputs(seed=8)
    pairs = [
        (DiceLoss(squared=True, per_image=True), True, lambda p, y: dice(p, y, squared=True)),
        (JaccardLoss(per_image=True), True, jaccard),
        (SensitivitySpecificityLoss(r=0.2), False, lambda p, y: sens_spec(p, y, 0.2)),
        (TverskyLoss(0.6, 0.4), False, lambda p, y: 1 - tversky_index(p, y, 0.6, 0.4)),
        (
            FocalTverskyLoss(gamma=1.5),
            False,
            lambda p, y: (1 - tversky_index(p, y, 0.3, 0.7)) ** 1.5,
        ),
    ]
    for module, per_image, per_class in pairs:
        expected = region_loss(logits, target, per_image, per_class)
        assert module(logits, target).item() == pytest.approx(expected, rel=1e-9)
    expected = np.log(np.cosh(region_loss(logits, target, True, dice)))
    assert LogCoshDiceLoss(per_image=True)(logits, target).item() == pytest.approx(
        expected, rel=1e-9
    )
    with pytest.raises(ValueError, match="r must be in"):
        SensitivitySpecificityLoss(r=2.0)
