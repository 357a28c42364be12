import pytest
import torch
from segloss_reference import IGNORE, make_inputs

from contrastseg.losses.segmentation import (
    balanced_class_weights,
    count_labels,
    cross_entropy_loss,
    dice_loss,
    focal_loss,
    lovasz_softmax_loss,
    tversky_loss,
    unified_focal_loss,
)

LOSSES = [
    cross_entropy_loss,
    focal_loss,
    dice_loss,
    tversky_loss,
    lovasz_softmax_loss,
    unified_focal_loss,
]


@pytest.mark.parametrize("loss", LOSSES)
def test_mismatched_shapes_name_both_shapes(loss):
    logits, target = make_inputs()
    with pytest.raises(
        ValueError, match=r"target shape \(2, 5, 5\) does not match logits shape \(2, 4, 5, 6\)"
    ):
        loss(logits, target[..., :5])
    with pytest.raises(ValueError, match=r"logits must be \(B, K, H, W\), got shape \(4, 5, 6\)"):
        loss(logits[0], target)


@pytest.mark.parametrize("loss", LOSSES)
def test_out_of_range_labels_are_named(loss):
    logits, target = make_inputs()
    target[0, 0, 0] = 7
    target[0, 0, 1] = -1
    with pytest.raises(ValueError, match=r"labels \[-1, 7\] outside \[0, 4\).*ignore_index=255"):
        loss(logits, target)


def test_binary_mode_accepts_only_zero_and_one():
    logits, target = make_inputs(classes=1)
    target[0, 0, 0] = 2
    with pytest.raises(ValueError, match=r"labels \[2\] outside \[0, 2\) \(binary mode"):
        dice_loss(logits, target)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bool])
def test_float_or_bool_target_is_an_error(dtype):
    logits, target = make_inputs()
    with pytest.raises(ValueError, match=f"target must hold integer class indices.*{dtype}"):
        cross_entropy_loss(logits, (target == 1).to(dtype))


def test_ignore_index_none_checks_every_label():
    logits, target = make_inputs()
    with pytest.raises(ValueError, match="255"):
        dice_loss(logits, target, ignore_index=None)
    clean = torch.where(target == IGNORE, torch.zeros_like(target), target)
    assert torch.isfinite(dice_loss(logits, clean, ignore_index=None))


def test_other_ignore_index_values():
    logits, target = make_inputs()
    moved = torch.where(target == IGNORE, torch.full_like(target, -100), target)
    a = focal_loss(logits, target)
    b = focal_loss(logits, moved, ignore_index=-100)
    assert a.item() == b.item()


def test_count_labels_and_balanced_weights():
    target = torch.tensor([[0, 0, 0, 1], [1, 2, IGNORE, IGNORE]])
    counts = count_labels(target, 4)
    assert counts.tolist() == [3, 2, 1, 0] and counts.dtype == torch.int64
    # n / (K * count): 6 / (4 * 3), 6 / (4 * 2), 6 / (4 * 1); zero count -> 0
    assert balanced_class_weights(counts).tolist() == pytest.approx([0.5, 0.75, 1.5, 0.0])
    with pytest.raises(ValueError, match=r"labels \[5\] are outside \[0, 4\)"):
        count_labels(torch.tensor([5]), 4)


@pytest.mark.parametrize("loss", LOSSES)
def test_half_precision_logits_are_summed_in_float32(loss):
    logits, target = make_inputs(seed=9, height=16, width=16)
    half = logits.to(torch.bfloat16)
    value = loss(half, target)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(loss(half.double(), target).item(), rel=1e-5)
