import pytest
import torch
from segloss_reference import IGNORE, lovasz_class, make_inputs, perfect_logits, region_loss

from contrastseg.losses.segmentation import LovaszSoftmaxLoss, lovasz_softmax_loss


@pytest.mark.parametrize("classes", [4, 1])
@pytest.mark.parametrize("per_image", [False, True])
def test_lovasz_matches_numpy_set_function(per_image, classes):
    logits, target = make_inputs(classes=classes, seed=11)
    expected = region_loss(logits, target, per_image, lovasz_class)
    assert lovasz_softmax_loss(logits, target, per_image=per_image).item() == pytest.approx(
        expected, rel=1e-9
    )
    module = LovaszSoftmaxLoss(per_image=per_image)
    assert module(logits, target).item() == pytest.approx(expected, rel=1e-9)


def test_lovasz_of_hard_prediction_is_one_minus_iou():
    # Berman et al.: on a {0, 1} prediction the extension equals the Jaccard loss itself.
    target = torch.tensor([[[0, 0, 1, 1, 1, IGNORE]]])
    pred = torch.tensor([[[0, 1, 1, 1, 0, 0]]])
    logits = perfect_logits(pred, 2, scale=40.0)
    iou = torch.tensor([1 / 3, 2 / 4], dtype=torch.float64)  # class 0: 1/(2+1), class 1: 2/(3+1)
    assert lovasz_softmax_loss(logits, target).item() == pytest.approx(
        (1 - iou).mean().item(), abs=1e-9
    )


def test_lovasz_gradient_finite_zero_at_ignored_and_minimum():
    logits, target = make_inputs(seed=12)
    logits.requires_grad_(True)
    (grad,) = torch.autograd.grad(lovasz_softmax_loss(logits, target, per_image=True), logits)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert (grad.permute(0, 2, 3, 1)[target == IGNORE] == 0).all()
    assert 0 <= lovasz_softmax_loss(perfect_logits(target, 4), target).item() < 1e-9
    assert lovasz_softmax_loss(logits, torch.full_like(target, IGNORE)).item() == 0.0
