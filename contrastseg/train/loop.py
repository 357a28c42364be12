"""The one training loop behind ``pretrain`` and ``finetune``.

Both engines are a :class:`TrainingTask` (what one step computes, what a checkpoint holds
besides the training state, what happens at the end of an epoch) run by :class:`TrainingLoop`,
which owns everything they share:

- the state (:class:`TrainState`: model, optimizer, schedule, gradient scaler, the task's
  random generator, step) and its checkpoints: written atomically every
  ``checkpoint_every`` steps and at the end, pruned to ``keep_last``, with the random state
  of every process; restored bitwise by :meth:`TrainingLoop.restore` (a killed run resumed
  from its newest checkpoint continues exactly as if never stopped, mid-epoch included);
- the step: forward (the task's, under autocast), the divergence check (all processes agree,
  the update is skipped and the message names the step, the loss parts and the intact
  newest checkpoint), backward, clipping, optimizer and schedule;
- the epochs: the loader's epoch (shuffle order, random windows), mid-epoch resumption;
- the monitor: every ``log_every`` steps the mean of whatever the step returned (losses as
  ``loss/<name>``, diagnostics under their own ``group/name``; a task that adds some
  diagnostics on log steps only, :attr:`TrainingTask.diagnostics`, logs that step's value),
  learning rate, throughput,
  the share of time spent waiting for data, GPU memory; the progress bar; ``train.log``.

A task can stop the run early (patience on a validation score, a collapsed embedding space)
from its :meth:`TrainingTask.on_step_end`, :meth:`TrainingTask.on_log` or
:meth:`TrainingTask.on_epoch_end` hooks; the loop then writes a checkpoint and returns.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader

from contrastseg import __version__
from contrastseg.data.loader import set_loader_epoch
from contrastseg.train.checkpoint import (
    capture_rng,
    checkpoint_path,
    prune_checkpoints,
    restore_rng,
    save_atomic,
)
from contrastseg.train.monitor import RunMonitor
from contrastseg.train.optim import keep_implementation
from contrastseg.train.runtime import (
    SlowdownWatch,
    iterate_keeping_rng,
    optimizer_step,
    phase,
    reduce_mean,
    resume_loader,
)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the loss parts."""


@dataclass
class TrainState:
    """What a checkpoint restores besides the task's own content.

    Attributes:
        model: the module being trained (unwrapped: no DDP / compile wrapper).
        optimizer: its optimizer.
        scheduler: the learning-rate schedule, stepped every optimizer step.
        scaler: the fp16 gradient scaler (disabled otherwise).
        generator: the task's random generator (views, augmentation), one per process.
        step: optimizer steps done.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    generator: torch.Generator
    step: int = 0


#: The length and cadences of a :meth:`TrainingLoop.standalone` loop: never reached.
ENDLESS = 10**6


@dataclass
class LoopSettings:
    """How long and how often.

    Attributes:
        total_steps: optimizer steps of the whole run (the cap).
        log_every: steps between logged scalar records.
        checkpoint_every: steps between step checkpoints (and always the last step).
        keep_last: step checkpoints kept.
        checkpoint_dir: where they go.
        grad_clip: gradient-norm clipping (None = none).
        images_per_step: images in one step over all processes (throughput).
        world_size: processes; rank 0 (``main``) writes.
        rank: this process.
        hint: appended to the divergence message (what to try).
    """

    total_steps: int
    log_every: int
    checkpoint_every: int
    keep_last: int
    checkpoint_dir: Path
    grad_clip: float | None = None
    images_per_step: int = 1
    world_size: int = 1
    rank: int = 0
    hint: str = "Lower optim.lr, set optim.grad_clip, or try train.amp=off."

    @property
    def main(self) -> bool:
        return self.rank == 0


class TrainingTask:
    """What an engine supplies to :class:`TrainingLoop`: the step and what is around it.

    Subclasses implement :meth:`train_step` and :meth:`checkpoint_content`; the hooks are
    no-ops by default.

    Attributes:
        diagnostics: set by the loop before each :meth:`train_step`: True on the steps it
            logs, so a task can leave out diagnostics that only a log record reads.
    """

    diagnostics: bool = True

    def train_step(self, batch: Any) -> dict[str, Tensor]:
        """Forward one batch; ``"total"`` is back-propagated, every entry is logged (mean).

        Entries without a ``/`` are logged as ``loss/<name>``; values must be scalars.
        """
        raise NotImplementedError

    def log_name(self, key: str) -> str:
        """The logged name of an entry of :meth:`train_step`'s dict."""
        return key if "/" in key else f"loss/{key}"

    def on_epoch_start(self, epoch: int) -> None:
        """Before the first step of ``epoch`` (0-based), also when resuming into it."""

    def on_step_end(self, step: int, out: Mapping[str, Tensor]) -> bool:
        """After the update of ``step`` (1-based); True stops the run after this step."""
        return False

    def on_epoch_end(self, epoch: int, step: int) -> bool:
        """After the last step of ``epoch`` (or of the run); True stops the run here."""
        return False

    def on_log(self, step: int, values: Mapping[str, float]) -> bool:
        """After the record of ``step`` was logged (every ``log_every`` steps); True stops the run."""
        return False

    def status(self) -> dict[str, str]:
        """Extra fields for the progress bar (e.g. a reported collapse)."""
        return {}

    def checkpoint_content(self) -> dict[str, Any]:
        """The task's part of a checkpoint (format, config, model tensors, records ...)."""
        raise NotImplementedError


@dataclass
class LoopResult:
    """What :meth:`TrainingLoop.run` returns.

    Attributes:
        step: optimizer steps done in total.
        checkpoint: the newest checkpoint written (or resumed from).
        history: the scalar records logged by this process in this run.
        stopped_early: a hook stopped the run before ``total_steps``.
    """

    step: int
    checkpoint: Path | None
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False


class TrainingLoop:
    """Runs a :class:`TrainingTask` over a loader, with checkpoints, logging and resumption.

    Args:
        state: model, optimizer, schedule, scaler, generator and step.
        settings: lengths, cadences, clipping, processes.
        monitor: the run's log / TensorBoard / progress bar.
        forward: the module the task's step calls through (DDP / compile wrapper of
            ``state.model``) — only the task uses it; kept here so tools can reach it.
    """

    def __init__(
        self,
        state: TrainState,
        settings: LoopSettings,
        monitor: RunMonitor,
        forward: nn.Module | None = None,
    ) -> None:
        self.state, self.settings, self.monitor = state, settings, monitor
        self.forward = forward if forward is not None else state.model
        self.checkpoint: Path | None = None
        self.history: list[dict[str, float]] = []
        self.slowdown = SlowdownWatch()

    @classmethod
    def standalone(
        cls,
        state: TrainState,
        forward: nn.Module | None = None,
        grad_clip: float | None = None,
        images_per_step: int = 1,
    ) -> TrainingLoop:
        """A loop outside any run, whose :meth:`step` is the engine's step and nothing else:
        no folder, no log, and a schedule, log and checkpoint cadence of :data:`ENDLESS` steps
        (a benchmark's or a notebook's step)."""
        settings = LoopSettings(ENDLESS, ENDLESS, ENDLESS, 1, Path(), grad_clip, images_per_step)
        return cls(state, settings, RunMonitor(Path(), False, ENDLESS), forward)

    # --- state -------------------------------------------------------------------------
    def restore(self, payload: Mapping[str, Any], source: Path) -> None:
        """Optimizer, schedule, scaler, random state and step from a checkpoint (not the model)."""
        state, settings = self.state, self.settings
        keep_implementation(state.optimizer, payload["optimizer"])
        state.scheduler.load_state_dict(payload["scheduler"])
        if payload.get("scaler") and state.scaler.is_enabled():
            state.scaler.load_state_dict(payload["scaler"])
        rng = payload["rng"]
        if isinstance(rng, list):  # one state per process
            if settings.rank < len(rng):
                restore_rng(rng[settings.rank], state.generator)
            elif settings.main:
                self.monitor.info(
                    f"{source} holds random states of {len(rng)} process(es): processes "
                    f"{len(rng)}.. start fresh random streams"
                )
        else:  # a single process's state (fine-tuning checkpoints before the shared loop)
            restore_rng(rng, state.generator)
        state.step = int(payload["step"])
        self.checkpoint = source

    def save(self, task: TrainingTask, epoch: int) -> Path | None:
        """Write the step checkpoint of every process's state (rank 0 writes); returns its path.

        Under DDP every process learns whether rank 0's write worked (an all-reduced flag
        rather than a barrier that would wait for a dead rank 0 until the backend times out).
        """
        state, settings = self.state, self.settings
        rng = [capture_rng(state.generator)]
        if settings.world_size > 1:
            rng = [None] * settings.world_size
            dist.all_gather_object(rng, capture_rng(state.generator))
        failure: Exception | None = None
        if settings.main:
            try:
                payload = {
                    **task.checkpoint_content(),
                    "version": __version__,
                    "step": state.step,
                    "epoch": epoch,
                    "optimizer": state.optimizer.state_dict(),
                    "scheduler": state.scheduler.state_dict(),
                    "scaler": state.scaler.state_dict(),
                    "rng": rng,
                }
                path = save_atomic(payload, checkpoint_path(settings.checkpoint_dir, state.step))
                prune_checkpoints(settings.checkpoint_dir, settings.keep_last)
                self.checkpoint = path
            except Exception as err:  # e.g. a full disk, a non-finite tensor
                failure = err
        if settings.world_size > 1:
            device = next(state.model.parameters()).device
            saved = torch.ones(1, device=device) * (failure is None)
            dist.all_reduce(saved, op=dist.ReduceOp.MIN)
            if not settings.main and not bool(saved):
                raise RuntimeError(
                    f"rank 0 could not write the step-{state.step} checkpoint (its error is in "
                    f"rank 0's output); stopping rank {settings.rank} too"
                )
        if failure is not None:
            raise failure
        return self.checkpoint

    # --- one step ------------------------------------------------------------------------
    def step(self, task: TrainingTask, batch: Any) -> dict[str, Tensor]:
        """Forward, divergence check, backward and update of one batch; returns the step's dict.

        Raises:
            TrainingDiverged: the total loss is not finite on some process (nothing updated).
        """
        state, settings = self.state, self.settings
        task.diagnostics = self.logs(state.step + 1)
        with phase("forward"):
            out = task.train_step(batch)
        total = out["total"]
        # the forward pass updated the BatchNorm statistics: an overflow there is a divergence
        # of this step too, even while the loss still looks finite
        buffers = [b for b in state.model.buffers() if b.is_floating_point()]
        with phase("checks"):
            checks = [
                torch.isfinite(total.detach()).all(),
                *(torch.isfinite(b).all() for b in buffers),
            ]
            finite = torch.stack(checks).all().float()
            if settings.world_size > 1:
                dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            finite = bool(finite)
        if not finite:
            parts = {k: float(v.detach()) for k, v in out.items()}
            intact = (
                f" and the newest checkpoint {self.checkpoint} is intact" if self.checkpoint else ""
            )
            bad = next(
                (n for n, b in state.model.named_buffers()
                 if b.is_floating_point() and not bool(torch.isfinite(b).all())),
                None,
            )  # fmt: skip
            what = (
                f"the BatchNorm statistics {bad} are not finite (loss {parts})"
                if bad is not None and math.isfinite(float(total.detach()))
                else f"the loss is not finite ({parts})"
            )
            raise TrainingDiverged(
                f"step {state.step + 1}: {what}; stopping before the update, so the weights are "
                f"untouched{intact}. {settings.hint}"
            )
        optimizer_step(
            total,
            state.optimizer,
            state.scheduler,
            state.scaler,
            state.model.parameters(),
            settings.grad_clip,
        )
        state.step += 1
        return out

    def logs(self, step: int) -> bool:
        """Whether step ``step`` (1-based) writes a log record: every ``log_every``-th and the last."""
        return step % self.settings.log_every == 0 or step >= self.settings.total_steps

    # --- the run -----------------------------------------------------------------------
    def run(
        self,
        task: TrainingTask,
        loader: DataLoader,
        extra_values: Callable[[], dict[str, float]] | None = None,
    ) -> LoopResult:
        """Train from ``state.step`` to ``settings.total_steps`` (or until a hook stops it).

        Args:
            task: the engine's step and hooks.
            loader: one epoch of batches per pass (``len(loader)`` steps per epoch).
            extra_values: more scalars for each log record (called at log steps).
        """
        state, settings, monitor = self.state, self.settings, self.monitor
        steps_per_epoch = len(loader)
        # per logged name: the sum and the number of steps that gave it (diagnostics come from
        # log steps only, losses from every step)
        sums: dict[str, Tensor] = {}
        counts: dict[str, int] = {}
        window_steps, window_wait, window_start = 0, 0.0, time.perf_counter()
        stopped = False
        while state.step < settings.total_steps and not stopped:
            epoch, skip = divmod(state.step, steps_per_epoch)
            set_loader_epoch(loader, epoch)
            task.on_epoch_start(epoch)
            batches = iterate_keeping_rng(resume_loader(loader, skip))
            wait_start = time.perf_counter()
            for batch in batches:
                window_wait += time.perf_counter() - wait_start
                out = self.step(task, batch)
                window_steps += 1
                for key, value in out.items():
                    name = task.log_name(key)
                    sums[name] = sums.get(name, 0) + value.detach().float()
                    counts[name] = counts.get(name, 0) + 1
                step = state.step
                stopped = task.on_step_end(step, out)
                last = step >= settings.total_steps
                if self.logs(step):
                    values = reduce_mean(
                        {k: v / counts[k] for k, v in sums.items()}, settings.world_size
                    )
                    elapsed = time.perf_counter() - window_start
                    values["lr"] = state.optimizer.param_groups[0]["lr"]
                    values["throughput/images_per_s"] = (
                        window_steps * settings.images_per_step / elapsed
                    )
                    values["throughput/data_wait_fraction"] = window_wait / elapsed
                    device = next(state.model.parameters()).device
                    if device.type == "cuda":
                        values["memory/gpu_max_allocated_gib"] = (
                            torch.cuda.max_memory_allocated(device) / 2**30
                        )
                    values["epoch"] = epoch + 1
                    if extra_values is not None:
                        values.update(extra_values())
                    self.history.append(monitor.scalars(step, values))
                    stopped = task.on_log(step, values) or stopped
                    self._report(step, values, window_steps, task.status())
                    sums, counts, window_steps, window_wait = {}, {}, 0, 0.0
                    window_start = time.perf_counter()
                end_of_epoch = step % steps_per_epoch == 0 or last
                if end_of_epoch and task.on_epoch_end(epoch, step):
                    stopped = True
                if stopped or last or step % settings.checkpoint_every == 0:
                    self.save(task, epoch + (1 if end_of_epoch else 0))
                if stopped or last:
                    break
                wait_start = time.perf_counter()
        return LoopResult(state.step, self.checkpoint, self.history, stopped)

    def _report(
        self, step: int, values: Mapping[str, float], steps: int, status: Mapping[str, str]
    ) -> None:
        if not self.settings.main:
            return
        loss = values.get("loss/total", values.get("loss/train", float("nan")))
        rate = values["throughput/images_per_s"]
        self.monitor.advance(steps, {"loss": f"{loss:.4f}", "img/s": f"{rate:.1f}", **status})
        slow = self.slowdown.update(rate, values["throughput/data_wait_fraction"])
        if slow is not None:
            self.monitor.info(slow)
        if self.monitor.bar is None:
            self.monitor.info(
                f"step {step}/{self.settings.total_steps} loss {loss:.4f} "
                f"lr {values['lr']:.2e} {rate:.1f} img/s"
            )
