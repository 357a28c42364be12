import math

import pytest
import torch

from contrastseg.config import OptimConfig
from contrastseg.train.optim import (
    LARS,
    build_optimizer,
    build_scheduler,
    lr_factor,
    parameter_groups,
)


def test_schedule_is_linear_warmup_then_cosine():
    config = OptimConfig(lr=0.1, warmup_steps=4, min_lr_ratio=0.1)
    total = 24
    factors = [lr_factor(s, total, config) for s in range(total)]
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    for s in range(4, total):
        progress = (s - 4) / 20
        assert factors[s] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
    model = torch.nn.Linear(3, 2)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, total, config)
    seen = []
    for _ in range(total):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.1 * f for f in factors])


def test_no_weight_decay_on_biases_and_norms():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    decay, no_decay = parameter_groups(model, 0.01)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3, 3, 3])]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "lars"])
def test_every_optimizer_reduces_a_quadratic(name):
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1, bias=False)
    target = torch.randn(1, 8)
    lr = {"adam": 0.05, "adamw": 0.05, "sgd": 0.05, "lars": 50.0}[name]
    optimizer = build_optimizer(model, OptimConfig(name=name, lr=lr, weight_decay=0.0))
    start = ((model.weight - target) ** 2).sum().item()
    for _ in range(50):
        optimizer.zero_grad()
        ((model.weight - target) ** 2).sum().backward()
        optimizer.step()
    assert ((model.weight - target) ** 2).sum().item() < 0.5 * start


def test_lars_trust_ratio_matches_formula():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))  # ||w|| = 5
    w.grad = torch.tensor([0.0, 2.0])  # ||g|| = 2
    opt = LARS([{"params": [w]}], lr=1.0, momentum=0.0, weight_decay=0.0, eta=0.1)
    opt.step()
    # update = lr * eta * ||w|| / ||g|| * g = 0.25 * g
    torch.testing.assert_close(w.detach(), torch.tensor([3.0, 3.5]))
