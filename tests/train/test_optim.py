import math

import pytest
import torch

from contrastseg.config import OptimConfig
from contrastseg.train.optim import (
    LARS,
    build_optimizer,
    build_scheduler,
    fused_unavailable,
    keep_implementation,
    lr_factor,
    parameter_groups,
)
from contrastseg.utils.configtools import ConfigError

FUSED = fused_unavailable("adam", [torch.zeros(1)]) is None


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


def _adam_numpy(w, grads, lr, betas, eps, weight_decay, decoupled):
    """Adam (Kingma & Ba, Algorithm 1) with L2 decay in the gradient, or AdamW's decoupled decay."""
    import numpy as np

    w, m, v = np.array(w, dtype=np.float64), 0.0, 0.0
    for t, g in enumerate(grads, 1):
        g = np.array(g, dtype=np.float64)
        if decoupled:
            w = w * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * w
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
        w = w - lr * m_hat / (np.sqrt(v_hat) + eps)
    return w


@pytest.mark.parametrize("name", ["adam", "adamw"])
@pytest.mark.parametrize("implementation", ["auto", "fused", "foreach", "for-loop"])
def test_every_implementation_is_the_adam_update(name, implementation):
    torch.manual_seed(0)
    start = torch.randn(3, 5)
    grads = [torch.randn(3, 5) for _ in range(6)]
    model = torch.nn.Linear(5, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(start)
    config = OptimConfig(name=name, lr=0.01, betas=(0.9, 0.99), weight_decay=0.1,
                         implementation=implementation)  # fmt: skip
    if implementation == "fused" and not FUSED:
        pytest.skip(f"torch {torch.__version__} has no fused CPU update")
    optimizer = build_optimizer(model, config)
    group = optimizer.param_groups[0]
    # auto: torch's fused kernel where the CPU has it (torch >= 2.4)
    assert bool(group["fused"]) is (
        implementation == "fused" or (implementation == "auto" and FUSED)
    )
    assert bool(group["foreach"]) is (implementation == "foreach")
    for g in grads:
        model.weight.grad = g.clone()
        optimizer.step()
    expected = _adam_numpy(start.numpy(), [g.numpy() for g in grads], 0.01, (0.9, 0.99), 1e-8,
                           0.1, decoupled=name == "adamw")  # fmt: skip
    assert model.weight.detach().numpy() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_sgd_auto_is_not_fused_and_is_momentum_sgd():
    torch.manual_seed(0)
    w0, grads = torch.randn(4), [torch.randn(4) for _ in range(5)]
    model = torch.nn.Module()
    model.w = torch.nn.Parameter(w0.clone()[None].repeat(2, 1))  # 2-D: the decayed group
    optimizer = build_optimizer(model, OptimConfig(name="sgd", lr=0.1, weight_decay=0.0))
    assert not optimizer.param_groups[0]["fused"]
    buf, w = None, w0.clone()
    for g in grads:
        model.w.grad = g[None].repeat(2, 1)
        optimizer.step()
        buf = g if buf is None else 0.9 * buf + g  # torch's (and SimCLR's) momentum form
        w = w - 0.1 * buf
    assert torch.allclose(model.w.detach()[0], w, atol=1e-6)
    with pytest.raises(ConfigError, match="fused is for adam and adamw"):
        OptimConfig(name="sgd", implementation="fused")


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_a_first_step_the_fp16_scaler_skips_leaves_auto_as_the_for_loop(name):
    """fp16 training: the gradient scaler skips a step with inf gradients (common at the first,
    at scale 65536). torch's fused SGD kept uninitialised momentum from such a step (weights
    ~1e27 at the next): auto must give the for-loop's weights."""
    torch.manual_seed(0)
    start, target = torch.randn(3, 5), torch.randn(3, 5)

    def run(implementation):
        model = torch.nn.Linear(5, 3, bias=False)
        with torch.no_grad():
            model.weight.copy_(start)
        config = OptimConfig(name=name, lr=0.01, weight_decay=0.0, implementation=implementation)
        optimizer = build_optimizer(model, config)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
        for step in range(4):
            optimizer.zero_grad()
            loss = ((model.weight - target) ** 2).sum()
            if step == 0:
                loss = loss * float("inf")
            scaler.scale(loss).backward()
            for _ in range(4):  # freed memory full of large values, for an uninitialised buffer
                torch.full_like(start, 7.7e28)
            scaler.step(optimizer)
            scaler.update()
        return model.weight.detach()

    auto, loop = run("auto"), run("for-loop")
    assert torch.isfinite(auto).all()
    assert torch.allclose(auto, loop, atol=1e-6)


def test_resume_keeps_the_built_implementation():
    """A checkpoint written by the for-loop update resumes into a fused optimizer, and on."""
    torch.manual_seed(0)
    grads = [torch.randn(3, 5) for _ in range(6)]

    def run(implementation, state=None, steps=grads):
        model = torch.nn.Linear(5, 3, bias=False)
        torch.manual_seed(1)
        torch.nn.init.normal_(model.weight)
        if state is not None:
            model.load_state_dict(state[0])
        optimizer = build_optimizer(model, OptimConfig(implementation=implementation))
        if state is not None:
            keep_implementation(optimizer, state[1])
        for g in steps:
            model.weight.grad = g.clone()
            optimizer.step()
        return model, optimizer

    straight, _ = run("for-loop")
    first, saved = run("for-loop", steps=grads[:3])
    assert not saved.param_groups[0]["fused"]
    state = ({k: v.clone() for k, v in first.state_dict().items()}, saved.state_dict())
    resumed, optimizer = run("auto", state, steps=grads[3:])
    assert optimizer.param_groups[0]["fused"] is True  # not the checkpoint's flag
    assert torch.allclose(resumed.weight, straight.weight, atol=1e-6)


def test_fused_for_lars_is_refused():
    with pytest.raises(ConfigError, match="lars has one implementation"):
        OptimConfig(name="lars", implementation="fused")
