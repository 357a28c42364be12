"""The official GLCNet optimizer settings, against torch's own schedulers (what main_ss.py uses).

main_ss.py: ``Adam(model.parameters(), lr=lr_self * world_size, weight_decay=1e-5,
betas=(0.9, 0.99))`` and ``CosineAnnealingLR(T_max=self_max_epoch, eta_min=4e-8)`` stepped
once per epoch; fine-tuning multiplies the lr by ``lr_decay = 0.98`` after every epoch.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from contrastseg.config import OptimConfig
from contrastseg.train.optim import build_optimizer, build_scheduler, peak_lr


def _lrs(scheduler: torch.optim.lr_scheduler.LRScheduler, optimizer, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_epoch_cosine_equals_cosine_annealing_stepped_per_epoch() -> None:
    config = OptimConfig(lr=1e-3, schedule_unit="epoch", min_lr=4e-8)
    epochs, per_epoch = 7, 3
    model = nn.Linear(2, 2)
    optimizer = build_optimizer(model, config)
    ours = _lrs(build_scheduler(optimizer, epochs * per_epoch, config, per_epoch), optimizer, 21)
    reference = torch.optim.Adam(nn.Linear(2, 2).parameters(), lr=1e-3)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(reference, T_max=epochs, eta_min=4e-8)
    official = []
    for _ in range(epochs):
        official += [reference.param_groups[0]["lr"]] * per_epoch
        reference.step()
        cosine.step()
    assert ours == pytest.approx(official, rel=1e-9, abs=1e-15)


def test_exponential_per_epoch_equals_lr_times_098_each_epoch() -> None:
    config = OptimConfig(lr=1e-4, schedule="exponential", gamma=0.98, schedule_unit="epoch")
    optimizer = build_optimizer(nn.Linear(2, 2), config)
    ours = _lrs(build_scheduler(optimizer, 20, config, 4), optimizer, 20)
    lr, official = 1e-4, []
    for _ in range(5):  # the fine-tuning loop: train an epoch, then LR = LR * lr_decay
        official += [lr] * 4
        lr = lr * 0.98
    assert ours == pytest.approx(official, rel=1e-12)


def test_decay_on_every_parameter_and_world_size_scaling() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    config = OptimConfig(lr=1e-3, weight_decay=1e-5, decay_norm_and_bias=True)
    optimizer = build_optimizer(model, config)
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] for p in g["params"]}
    assert decayed == {id(p) for p in model.parameters()}
    ours = build_optimizer(model, OptimConfig(weight_decay=1e-5))
    assert {id(p) for g in ours.param_groups if g["weight_decay"] for p in g["params"]} == {
        id(model[0].weight)
    }
    assert peak_lr(OptimConfig(lr=1e-3, scale_lr_with_world_size=True), processes=4) == 4e-3
    assert peak_lr(OptimConfig(lr=1e-3), processes=4) == 1e-3


def test_bad_schedule_settings_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"optim\.gamma"):
        OptimConfig(gamma=1.5)
    with pytest.raises(ValueError, match=r"optim\.min_lr"):
        OptimConfig(lr=1e-3, min_lr=1.0)
    with pytest.raises(ValueError, match="steps per epoch"):
        build_scheduler(
            build_optimizer(nn.Linear(1, 1), OptimConfig()), 5, OptimConfig(schedule_unit="epoch")
        )
