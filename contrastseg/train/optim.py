"""Optimizers (Adam, AdamW, SGD, LARS) and the warmup + cosine / exponential schedules.

Defaults are ours (no decay on biases and norms, per-step cosine to 0, no world-size
scaling); ``optim.decay_norm_and_bias``, ``optim.scale_lr_with_world_size``,
``optim.schedule_unit: epoch`` and ``optim.min_lr`` give the official GLCNet settings
(docs/recipe.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from contrastseg.config import OptimConfig
from contrastseg.utils.configtools import ConfigError
from contrastseg.utils.dist import world_size


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling (You et al., 2017, arXiv 1708.03888), as SimCLR uses it.

    SGD with momentum where each parameter's update is scaled by the trust ratio
    ``eta * ||w|| / (||g|| + weight_decay * ||w||)``. Parameter groups with
    ``lars_adapt=False`` (biases and normalisation weights) get neither the trust ratio
    nor weight decay, as in SimCLR's implementation notes.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "eta": eta,
            "lars_adapt": True,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["lars_adapt"]:
                    if group["weight_decay"]:
                        grad = grad.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(grad)
                    trust = torch.where(
                        (w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm, 1.0
                    )
                    grad = grad * trust
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = grad.detach().clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def parameter_groups(
    model: nn.Module, weight_decay: float, decay_norm_and_bias: bool = False
) -> list[dict]:
    """Two groups: weights of convolutions and linears (decayed), biases and norms.

    Biases and norms are decayed only with ``decay_norm_and_bias`` (then the second group
    is empty): decaying them pulls BatchNorm scales to 0, which most contrastive recipes
    avoid; the official GLCNet code passes ``model.parameters()`` to Adam and decays all.
    """
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim > 1 or decay_norm_and_bias else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay, "lars_adapt": True},
        {"params": no_decay, "weight_decay": 0.0, "lars_adapt": False},
    ]


#: ``optim.implementation`` -> the keyword torch's optimizers take (auto: see build_optimizer).
_IMPLEMENTATIONS = {"fused": {"fused": True}, "foreach": {"foreach": True},
                    "for-loop": {"foreach": False}}  # fmt: skip
#: The optimizers whose fused kernel ``auto`` uses, and the device types torch (>= 2.4) has it
#: for. Not SGD: torch's fused SGD starts its momentum buffers from uninitialised memory when
#: the first step is one a fp16 gradient scaler skips (inf gradients), and keeps them.
FUSED_OPTIMIZERS = ("adam", "adamw")
FUSED_DEVICES = ("cpu", "cuda")


def fused_unavailable(name: str, params: Iterable[Tensor]) -> str | None:
    """Why torch's fused update cannot run ``optim.name`` on ``params`` (None: it can)."""
    if name not in FUSED_OPTIMIZERS:
        return f"contrastseg runs fused updates for {' and '.join(FUSED_OPTIMIZERS)} only"
    if torch.__version__ < (2, 4):  # a TorchVersion compares with a tuple
        return f"torch {torch.__version__} has no fused CPU update (2.4 has)"
    params = list(params)
    devices = sorted({p.device.type for p in params} - set(FUSED_DEVICES))
    if devices:
        return f"torch has no fused update on {', '.join(devices)}"
    if not all(p.is_floating_point() for p in params):
        return "a parameter is not floating point"
    return None


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer named by ``config.name`` over :func:`parameter_groups` of ``model``.

    Build it after the model is on its device: ``optim.implementation: auto`` picks torch's
    fused kernel for Adam / AdamW where the parameters' device has one (CPU, CUDA), else
    torch's default.

    Raises:
        ConfigError: ``optim.implementation: fused`` where :func:`fused_unavailable` says why not.
    """
    groups = parameter_groups(model, config.weight_decay, config.decay_norm_and_bias)
    groups = [g for g in groups if g["params"]]
    lr = peak_lr(config)
    if config.name == "lars":
        return LARS(groups, lr=lr, momentum=config.momentum, eta=config.lars_eta)
    for group in groups:
        group.pop("lars_adapt")
    if config.name == "adam":
        cls, settings = torch.optim.Adam, {"lr": lr, "betas": config.betas}
    elif config.name == "adamw":
        cls, settings = torch.optim.AdamW, {"lr": lr, "betas": config.betas}
    else:
        cls, settings = torch.optim.SGD, {"lr": lr, "momentum": config.momentum, "nesterov": False}
    why_not = fused_unavailable(config.name, (p for g in groups for p in g["params"]))
    if config.implementation == "fused" and why_not is not None:
        raise ConfigError(f"optim.implementation: fused for {config.name}: {why_not}; use auto")
    if config.implementation == "auto":
        implementation = {"fused": True} if why_not is None else {}
    else:
        implementation = _IMPLEMENTATIONS[config.implementation]
    return cls(groups, **settings, **implementation)


def keep_implementation(optimizer: torch.optim.Optimizer, state_dict: dict) -> None:
    """``optimizer.load_state_dict(state_dict)``, keeping how ``optimizer`` was built to run.

    torch's ``load_state_dict`` takes the saved groups' ``fused`` / ``foreach`` flags too: a
    checkpoint written by another implementation (or another torch default, another device)
    would switch the resumed run's. This keeps the built flags and moves the step counters
    where a fused update wants them (the parameter's device, float32). The update is the same
    to float rounding either way.
    """
    flags = [{k: g[k] for k in ("fused", "foreach") if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(state_dict)
    for group, kept in zip(optimizer.param_groups, flags, strict=True):
        group.update(kept)
        # fused (and capturable) updates read the counter on the parameter's device; the others
        # on the host (a counter on a GPU would cost a sync per parameter and step)
        on_device = group.get("fused") or group.get("capturable")
        for p in group["params"]:
            step = optimizer.state.get(p, {}).get("step")
            if not isinstance(step, Tensor):
                continue
            device = p.device if on_device else torch.device("cpu")
            if step.device != device or step.dtype != torch.float32:
                optimizer.state[p]["step"] = step.to(device=device, dtype=torch.float32)


def peak_lr(config: OptimConfig, processes: int | None = None) -> float:
    """``config.lr``, times the number of processes with ``scale_lr_with_world_size``."""
    if not config.scale_lr_with_world_size:
        return config.lr
    return config.lr * (world_size() if processes is None else processes)


def lr_factor(
    step: int, total_steps: int, config: OptimConfig, steps_per_epoch: int | None = None
) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based).

    Linear warmup from ``1 / warmup_steps`` to 1 over ``warmup_steps`` steps, then cosine
    decay to the final lr at ``total_steps`` (``min_lr`` or ``min_lr_ratio * lr``), constant,
    or exponential ``gamma ** t``. With ``schedule_unit: epoch``, ``t`` counts whole epochs
    after the warmup (``steps_per_epoch`` steps each) and the cosine spans the epochs, as
    torch's ``CosineAnnealingLR(T_max=epochs)`` stepped once per epoch.
    """
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    done, span = step - config.warmup_steps, max(1, total_steps - config.warmup_steps)
    if config.schedule_unit == "epoch":
        per_epoch = max(1, steps_per_epoch or 1)
        done, span = done // per_epoch, max(1, -(-span // per_epoch))
    if config.schedule == "exponential":
        return config.gamma**done
    low = config.min_lr_ratio if config.min_lr is None else config.min_lr / config.lr
    progress = min(1.0, done / span)
    return low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    config: OptimConfig,
    steps_per_epoch: int | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` following :func:`lr_factor`.

    Raises:
        ValueError: ``schedule_unit: epoch`` without ``steps_per_epoch``.
    """
    if config.schedule_unit == "epoch" and not steps_per_epoch:
        raise ValueError("optim.schedule_unit: epoch needs the number of steps per epoch")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, config, steps_per_epoch)
    )
