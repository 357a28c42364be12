"""Pieces every training loop shares: precision, seeding, resumable loaders, reductions."""

from __future__ import annotations

import contextlib
import os
import random
import statistics
from collections.abc import Iterable, Iterator, Mapping

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

from contrastseg.utils.configtools import ConfigError

#: The labelled parts of a training step, in order, as a profiler shows them
#: (``contrastseg/<phase>``; ``benchmarks/pretrain_step.py --split`` reports their times).
#: ``forward`` holds the task's whole ``train_step``: for pretraining its input work is
#: labelled inside it (``views``, ``matching``, ``normalize``), the rest is the network and
#: losses.
STEP_PHASES = ("views", "matching", "normalize", "forward", "checks", "backward", "optimizer")


#: The device :func:`synchronized_phases` makes every phase wait for (none: phases don't wait).
_PHASE_SYNC: list[torch.device] = []


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """A profiler range ``contrastseg/<name>`` around one part of a step (:data:`STEP_PHASES`).

    Costs a few microseconds when no profiler runs; under ``torch.profiler.profile`` (or
    TensorBoard's profiler) the step's parts show by name. Inside :func:`synchronized_phases`
    the range also waits for the CUDA work it launched, so its CPU time is the phase's time.
    """
    with torch.profiler.record_function(f"contrastseg/{name}"):
        yield
        if _PHASE_SYNC:
            torch.cuda.synchronize(_PHASE_SYNC[-1])


@contextlib.contextmanager
def synchronized_phases(device: torch.device) -> Iterator[None]:
    """Make every :func:`phase` wait for its CUDA work (a benchmark's time split; the syncs
    slow a step down, so time the step without them); nothing changes on a CPU."""
    if device.type != "cuda":
        yield
        return
    _PHASE_SYNC.append(device)
    try:
        yield
    finally:
        _PHASE_SYNC.pop()


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where oneDNN runs bf16
    convolutions faster than fp32; without them bf16 is emulated and slower."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_amp_dtype(
    setting: str, device: torch.device, inference: bool = False
) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` on ``device`` (None = full precision).

    ``auto``: bf16 on CUDA devices that support it, fp16 (with a grad scaler) on older
    ones; bf16 on CPUs with native bf16 (:func:`cpu_has_bf16`; measured by
    ``benchmarks/cpu_step.py`` on an AVX512-BF16 CPU: 1.6-1.7x the fp32 step of pretraining
    and fine-tuning, ResNet-18), else off; off on MPS. ``fp16`` needs CUDA.

    With ``inference`` (validation, ``evaluate``, ``predict``), ``auto`` stays full precision
    on a CPU, so scores and label maps do not depend on the CPU model (bf16 logits moved 0.5 %
    of the argmax pixels of a ResNet-18 DeepLabV3+ in a check); ``bf16`` still applies.
    """
    if setting == "off":
        return None
    if setting == "auto":
        if device.type == "cpu":
            return torch.bfloat16 if cpu_has_bf16() and not inference else None
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if setting == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"train.amp=fp16 needs a CUDA device, the run uses {device}; use bf16 or off"
        )
    return torch.bfloat16 if setting == "bf16" else torch.float16


def resolve_memory_format(setting: bool | str, device: torch.device) -> torch.memory_format:
    """The memory format of model and inputs for ``train.channels_last``.

    ``auto``: channels_last on CUDA (tensor-core convolutions) and on a CPU (oneDNN;
    ``benchmarks/cpu_step.py``, ResNet-18: 1.08-1.12x the contiguous fp32 step, and
    1.03-1.09x the contiguous bf16 step in 2 of 3 runs); contiguous on MPS.
    """
    if setting == "auto":
        setting = device.type in ("cuda", "cpu")
    return torch.channels_last if setting else torch.contiguous_format


def threads_line(setting: int | None) -> str:
    """The line a run logs at its start: torch's CPU threads and the machine's cores."""
    how = "auto" if setting is None else str(setting)
    cores = os.cpu_count() or 1
    return f"torch threads: {torch.get_num_threads()} of {cores} cores (train.num_threads: {how})"


def apply_num_threads(setting: int | None) -> str:
    """Set torch's CPU threads from ``train.num_threads`` (None = leave torch's choice), first
    thing in an engine, before data or model work; returns :func:`threads_line`."""
    if setting is not None:
        torch.set_num_threads(setting)
    return threads_line(setting)


class SlowdownWatch:
    """Says once when a run's throughput collapses while it is not waiting for data.

    A log step whose images/s is below ``1 / factor`` of the median of the run's earlier log
    steps, while the data wait stays below ``max_wait`` of the time, counts; ``patience``
    such log steps in a row (after ``warmup`` log steps to take a median from; the slow ones
    stay out of the median) give one
    message naming ``train.num_threads``: the usual cause on a CPU is other processes on the
    same cores, which makes threads that wait on each other stall every operation.
    """

    def __init__(
        self, factor: float = 5.0, patience: int = 3, max_wait: float = 0.2, warmup: int = 3
    ) -> None:
        self.factor, self.patience, self.max_wait, self.warmup = factor, patience, max_wait, warmup
        self.rates: list[float] = []
        self.slow = 0
        self.said = False

    def update(self, rate: float, wait_fraction: float) -> str | None:
        """Record one log step; the message the first time the slowdown holds, else None."""
        median = statistics.median(self.rates) if len(self.rates) >= self.warmup else None
        if median is not None and rate < median / self.factor and wait_fraction < self.max_wait:
            self.slow += 1  # kept out of the median, so a long slowdown does not hide itself
        else:
            self.slow = 0
            self.rates.append(rate)
        if median is None or self.said:
            return None
        if self.slow < self.patience:
            return None
        self.said = True
        return (
            f"throughput fell to {rate:.1f} images/s, under a {self.factor:g}th of this run's "
            f"median {median:.1f}, for {self.patience} log steps while the data wait stayed "
            f"low ({100 * wait_fraction:.0f} % of the time): other processes are probably "
            f"sharing the CPU cores; torch uses {torch.get_num_threads()} threads on "
            f"{os.cpu_count() or 1} cores: set train.num_threads lower (e.g. the cores left "
            "free; 1 when every core is busy)"
        )


#: The variable that fixes cuBLAS's workspace, which torch's deterministic mode needs on CUDA.
CUBLAS_WORKSPACE = "CUBLAS_WORKSPACE_CONFIG"


@contextlib.contextmanager
def process_settings_kept() -> Iterator[None]:
    """Restore torch's process-wide settings that a run changes when it ends, however it ends.

    :func:`apply_num_threads` and :func:`seed_everything` set torch's thread count, its
    deterministic-algorithms switch, cuDNN autotuning and ``CUBLAS_WORKSPACE_CONFIG`` for the
    whole process; a run called from Python (a notebook, a sweep) leaves them as it found them,
    so ``train.deterministic`` of one run does not make a later one fail on an operation
    without a deterministic kernel. (cuBLAS reads its workspace setting when a process first
    uses it: set the variable before any CUDA work to make a later deterministic run exact.)
    """
    kept = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        os.environ.get(CUBLAS_WORKSPACE),
    )
    try:
        yield
    finally:
        threads, deterministic, warn_only, benchmark, workspace = kept
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark
        if workspace is None:
            os.environ.pop(CUBLAS_WORKSPACE, None)
        else:
            os.environ[CUBLAS_WORKSPACE] = workspace


def seed_everything(seed: int, deterministic: bool, device: torch.device) -> None:
    """Seed Python and torch; deterministic algorithms on request, cuDNN autotuning otherwise.

    ``deterministic``: torch's deterministic kernels. On a CPU every operation of the package
    has one (a resume is bitwise the uninterrupted run) and torch refuses one that has not. On
    CUDA (and MPS) an operation without one warns, by name and once, rather than stopping the
    run (bilinear upsampling's backward, which every decoder here uses), and cuBLAS gets its
    fixed workspace (``CUBLAS_WORKSPACE_CONFIG=:4096:8`` unless set), without which torch
    refuses every matrix product in deterministic mode.
    """
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        if device.type == "cuda":
            os.environ.setdefault(CUBLAS_WORKSPACE, ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


class _SkipSampler(Sampler[int]):
    """The indices of ``sampler`` after the first ``skip`` (resuming mid-epoch)."""

    def __init__(self, sampler: Sampler[int], skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[int]:
        iterator = iter(self.sampler)
        for _ in range(self.skip):
            next(iterator, None)
        return iterator

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)  # type: ignore[arg-type]


def resume_loader(loader: DataLoader, skip_batches: int) -> DataLoader:
    """A one-epoch copy of ``loader`` that starts after ``skip_batches`` batches.

    Call it after ``set_loader_epoch``: it reuses the loader's sampler (and so its epoch).
    """
    if skip_batches == 0:
        return loader
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=_SkipSampler(loader.sampler, skip_batches * loader.batch_size),
        num_workers=loader.num_workers,
        drop_last=loader.drop_last,
        pin_memory=loader.pin_memory,
    )


def iterate_keeping_rng(loader: DataLoader) -> Iterator:
    """``iter(loader)`` without consuming the global torch RNG.

    Creating a DataLoader iterator draws worker seeds from the global generator; restoring
    it keeps dropout etc. on the same random stream whether or not a run was resumed.
    """
    state = torch.get_rng_state()
    iterator = iter(loader)
    torch.set_rng_state(state)
    return iterator


@contextlib.contextmanager
def modes_kept(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode, and give every submodule back its own mode afterwards.

    ``model.train(was_training)`` would put *every* submodule in train mode, frozen parts of a
    fine-tune (whose BatchNorm statistics must not move) included.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside ``torch.compile`` and/or DDP wrappers."""
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, DistributedDataParallel) else model


def reduce_mean(values: Mapping[str, Tensor], world_size: int) -> dict[str, float]:
    """Average scalar tensors over processes (one collective) and return Python floats."""
    if not values:
        return {}
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().float() for k in keys])
    if world_size > 1:
        dist.all_reduce(stacked)
        stacked /= world_size
    return dict(zip(keys, stacked.tolist(), strict=True))


def autocast_context(device: torch.device, amp_dtype: torch.dtype | None):
    """``torch.autocast`` for ``amp_dtype`` on ``device``, or a no-op context without AMP."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype)


def optimizer_step(
    loss: Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    parameters: Iterable[Tensor],
    grad_clip: float | None = None,
) -> None:
    """Backward, optional gradient clipping (on unscaled gradients), optimizer and schedule step."""
    optimizer.zero_grad(set_to_none=True)
    with phase("backward"):
        scaler.scale(loss).backward()
    with phase("optimizer"):
        if grad_clip is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
