import pytest
import torch
from segloss_reference import dice, focal, make_inputs, region_loss, tversky_index

from contrastseg.losses.segmentation import (
    DiceLoss,
    FocalLoss,
    LossTerm,
    available_losses,
    build_loss,
    loss_arguments,
    needs_class_counts,
    parse_loss_spec,
)


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


def test_term_arguments_reach_every_term_of_that_name():
    terms = parse_loss_spec("0.5*dice + focal + 2e-1*focal", ["focal.gamma=0", "dice.eps=1e-3"])
    assert terms == [
        LossTerm(0.5, "dice", {"eps": 1e-3}),  # YAML 1.1 reads 1e-3 as a float here too
        LossTerm(1.0, "focal", {"gamma": 0}),
        LossTerm(0.2, "focal", {"gamma": 0}),
    ]
    logits, target = make_inputs(seed=35)
    loss = build_loss([{"name": t.name, "weight": t.weight, **t.kwargs} for t in terms])
    expected = 0.5 * DiceLoss(eps=1e-3)(logits, target) + 1.2 * focal(logits, target, 0.0)
    assert loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-9)


@pytest.mark.parametrize(
    ("spec", "args", "message"),
    [
        ("ce", ["focal.gamma=2"], "names term 'focal', which is not in loss 'ce'"),
        ("focal", ["focal.gamma"], "expected 'term.arg=value'"),
        ("focal", ["gamma=2"], "expected 'term.arg=value'"),
        ({"name": "focal"}, ["focal.gamma=2"], "apply to a string loss spec"),
    ],
)
def test_malformed_term_arguments(spec, args, message):
    with pytest.raises(ValueError, match=message):
        parse_loss_spec(spec, args)


@pytest.mark.parametrize(
    ("spec", "args", "expected"),
    [
        ("ce", [], False),
        ("weighted_ce", [], True),  # its default class_weight is "balanced"
        ("0.5*wce+dice", [], True),  # the alias
        ("weighted_ce", ["weighted_ce.class_weight=[1, 2]"], False),  # overridden
        ("focal", ["focal.alpha=balanced"], True),
        ([{"name": "ce", "class_weight": "balanced"}], [], True),
        ("exp_log", [], False),  # counts only for balanced weights, as before
    ],
)
def test_label_counts_needed_for_balanced_weights_only(spec, args, expected):
    assert needs_class_counts(parse_loss_spec(spec, args)) is expected


def test_module_forms_show_their_settings_but_not_the_label_counts():
    counts = torch.tensor([1, 2])
    assert "class_counts" not in repr(build_loss("dice_focal", class_counts=counts))
    assert repr(DiceLoss(squared=True)) == (
        "DiceLoss(squared=True, per_image=False, eps=1e-06, ignore_index=255)"
    )
    assert isinstance(FocalLoss(), torch.nn.Module)
