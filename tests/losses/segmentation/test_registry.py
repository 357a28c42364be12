import pytest
import torch
from segloss_reference import dice, focal, make_inputs, region_loss, tversky_index

from contrastseg.losses.segmentation import available_losses, build_loss, loss_arguments


def test_sum_of_terms_from_string():
    logits, target = make_inputs(seed=31)
    loss = build_loss("0.5*dice + focal")
    expected = 0.5 * region_loss(logits, target, False, dice) + focal(logits, target, 2.0)
    assert loss(logits, target).item() == pytest.approx(expected, rel=1e-9)
    assert set(loss.last_terms) == {"dice", "focal"}
    assert loss.last_terms["dice"].item() == pytest.approx(region_loss(logits, target, False, dice))


def test_dict_and_list_specs_with_arguments_and_weights():
    logits, target = make_inputs(seed=32)
    ftl = region_loss(
        logits, target, False, lambda p, y: (1 - tversky_index(p, y, 0.3, 0.7)) ** 0.5
    )
    single = build_loss({"name": "focal_tversky", "gamma": 0.5})
    assert single(logits, target).item() == pytest.approx(ftl, rel=1e-9)
    combined = build_loss(
        [
            {"name": "focal_tversky", "gamma": 0.5, "weight": 2.0},
            "0.25*focal",
            {"name": "focal", "gamma": 0},
        ]
    )
    expected = 2 * ftl + 0.25 * focal(logits, target, 2.0) + focal(logits, target, 0.0)
    assert combined(logits, target).item() == pytest.approx(expected, rel=1e-9)
    assert combined.names == ["focal_tversky", "focal", "focal_2"]


def test_ignore_index_and_class_counts_reach_the_terms():
    logits, target = make_inputs(seed=33)
    moved = torch.where(target == 255, torch.full_like(target, -1), target)
    counts = torch.tensor([1, 2, 3, 4])
    w = [10 / 4, 10 / 8, 10 / 12, 10 / 16]
    loss = build_loss(
        {"name": "focal", "alpha": "balanced"}, num_classes=4, ignore_index=-1, class_counts=counts
    )
    assert loss(logits, moved).item() == pytest.approx(focal(logits, target, 2.0, w), rel=1e-9)


def test_every_registered_loss_builds_and_runs():
    logits, target = make_inputs(seed=34)
    binary_logits, binary_target = make_inputs(classes=1, seed=34)
    names = available_losses()
    assert {"ce", "weighted_ce", "dice", "lovasz", "unified_focal", "exp_log"} <= set(names)
    for name, description in names.items():
        assert description
        if name == "balanced_bce":
            value = build_loss(name)(binary_logits, binary_target)
        else:
            value = build_loss(name, num_classes=4)(logits, target)
        assert torch.isfinite(value), name


def test_unknown_name_lists_available():
    with pytest.raises(
        ValueError, match=r"unknown segmentation loss 'dicee'; available: .*dice.*focal"
    ):
        build_loss("dicee+ce")


def test_unknown_argument_lists_accepted():
    with pytest.raises(
        ValueError, match=r"'tversky' does not accept \['gama'\]; it accepts \['alpha', 'beta'"
    ):
        build_loss({"name": "tversky", "gama": 1.0})
    assert "gamma" in loss_arguments("focal_tversky")


@pytest.mark.parametrize(
    "spec", ["", "dice+", "2*", "dice*0.5", {"gamma": 1}, [], 3, {"name": "ce", "weight": "x"}]
)
def test_malformed_specs(spec):
    with pytest.raises(ValueError):
        build_loss(spec)


def test_class_weight_length_checked_against_num_classes():
    with pytest.raises(ValueError, match="class_weight has 3 values but num_classes=4"):
        build_loss({"name": "ce", "class_weight": [1, 2, 3], "weight": 2}, num_classes=4)
    with pytest.raises(ValueError, match="class_counts has 3 entries but num_classes=4"):
        build_loss("weighted_ce", num_classes=4, class_counts=torch.tensor([1, 2, 3]))
