"""The pretraining step: what one step of ``contrastseg pretrain`` computes, and its seam.

Per step (:class:`PretrainTask`): uint patches -> device -> [0, 1] floats (nodata filled) ->
two views + index maps (``PairedViews``) -> what the method needs from them (matched regions,
points) -> per-band normalisation -> :class:`~contrastseg.train.model.PretrainModel` (the
method's losses); the shared :class:`~contrastseg.train.loop.TrainingLoop` does the update.
Around the step the task owns the collapse rule, the view-pair images and the online probe.

:func:`build_pretrain_task` builds the task and the state it trains, as
:func:`~contrastseg.train.pretrain.run_pretrain` does; :func:`build_pretrain_step` wraps them
with a loop outside any run folder, the seam a benchmark times (:class:`PretrainStep`).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from contrastseg import __version__
from contrastseg.augment import MatchedRegions, PairedViews, ViewPair, draw_view_grid
from contrastseg.augment.regions import drop_invalid_sources
from contrastseg.config import PretrainConfig
from contrastseg.data.loader import to_float
from contrastseg.data.nodata import fill_invalid, valid_pixels
from contrastseg.data.stats import normalization_values
from contrastseg.train.checkpoint import (
    CHECKPOINT_FORMAT,
    save_atomic,
)
from contrastseg.train.loop import (
    ENDLESS,
    TrainingLoop,
    TrainingTask,
    TrainState,
)
from contrastseg.train.model import PretrainModel
from contrastseg.train.monitor import RunMonitor
from contrastseg.train.online_probe import check_probe, run_probe
from contrastseg.train.optim import build_optimizer, build_scheduler
from contrastseg.train.runtime import (
    autocast_context,
    phase,
    resolve_amp_dtype,
    resolve_memory_format,
)
from contrastseg.utils.configtools import ConfigError, to_dict


@dataclass
class CollapseStreak:
    """The collapse rule of one branch: ``patience`` log steps in a row with a spread below ``threshold``.

    Attributes:
        threshold: ``train.collapse_std``.
        patience: ``train.collapse_patience``.
        low: the log steps of the current streak below the threshold.
        since: the first step of the reported collapse; None while none is reported.
    """

    threshold: float
    patience: int
    low: list[int] = field(default_factory=list)
    since: int | None = None

    def update(self, step: int, value: float) -> str | None:
        """Record the spread logged at ``step``.

        Returns:
            ``"collapsed"`` when the streak reaches ``patience`` (once per streak),
            ``"recovered"`` at the first value at or above the threshold after a reported
            collapse, None otherwise. A NaN (too few valid pairs to measure) neither extends
            nor ends the streak.
        """
        if math.isnan(value):
            return None
        if value < self.threshold:
            self.low.append(step)
            if len(self.low) == self.patience:
                self.since = self.low[0]
                return "collapsed"
            return None
        self.low = []
        if self.since is not None:
            self.since = None
            return "recovered"
        return None


def views_generator(seed: int, rank: int, device: torch.device) -> torch.Generator:
    """The generator of views and regions of process ``rank``: seeded, different per rank."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + 7919 * (rank + 1))


def _slice_for_preview(images: Tensor, pair: ViewPair, regions: MatchedRegions | None, n: int):
    cut = lambda t: t[:n].detach().float().cpu() if t.is_floating_point() else t[:n].cpu()  # noqa: E731
    return (
        cut(images),
        ViewPair(*(cut(t) for t in pair)),
        None if regions is None else MatchedRegions(*(cut(t) for t in regions)),
    )


class PreparedBatch(NamedTuple):
    """One batch ready for the network: the images, the view pair, the method's inputs.

    Attributes:
        images: ``(B, C, H, W)`` float source patches (nodata filled).
        pair: the views and their index maps (nodata source pixels marked outside).
        inputs: what the method's ``prepare`` returned (regions, points ...).
        view1, view2: the normalised views, in the run's memory format.
    """

    images: Tensor
    pair: ViewPair
    inputs: dict[str, Any]
    view1: Tensor
    view2: Tensor


class PretrainTask(TrainingTask):
    """The pretraining step: views, the method's inputs, the network and the method's losses.

    Args:
        config: the run's config.
        model: the network and method (unwrapped).
        forward: what the step calls (``model`` or its DDP / compile wrapper).
        views: the view maker, on the device.
        generator: the views' random generator (this process's).
        mean, std: per-band normalisation after the views (None = none).
        nodata: the data's nodata value (``UnlabeledDataset.nodata``).
        device, amp_dtype, memory_format: where and how the network runs.
        run_dir, monitor: where preview images go (None = no previews).
    """

    def __init__(
        self,
        config: PretrainConfig,
        model: PretrainModel,
        forward: nn.Module,
        views: PairedViews,
        generator: torch.Generator,
        mean: list[float] | None,
        std: list[float] | None,
        nodata: Any,
        device: torch.device,
        amp_dtype: torch.dtype | None,
        memory_format: torch.memory_format,
        run_dir: Path | None = None,
        monitor: RunMonitor | None = None,
    ) -> None:
        self.config, self.model, self.forward, self.views = config, model, forward, views
        self.generator, self.mean, self.std, self.nodata = generator, mean, std, nodata
        self.device, self.amp_dtype, self.memory_format = device, amp_dtype, memory_format
        self.run_dir, self.monitor = run_dir, monitor
        self.last: PreparedBatch | None = None
        self.streaks: dict[str, CollapseStreak] = {}  # per branch: the collapse rule's state
        self.total_steps = 0  # set by the engine (the probe runs at the last step too)
        # the probe's features and datasets (check_probe), set at startup by the engine
        self.probe_setup: tuple[str, tuple] | None = None
        self.probe_best = -1.0  # best probe mIoU so far (kept in checkpoints)
        self.probe_seconds, self.started = 0.0, time.perf_counter()

    @torch.no_grad()
    def prepare(self, batch: Tensor) -> PreparedBatch:
        """Views, index maps and the method's inputs of a uint batch (no gradient)."""
        batch = batch.to(self.device, non_blocking=True)
        valid = valid_pixels(batch, self.nodata)  # None: no nodata pixel
        # nodata pixels enter the views as the band mean (0 once normalised)
        with phase("views"):
            images = fill_invalid(to_float(batch, self.config.data.scale), valid, self.mean)
            pair = self.views(images, self.generator)
            # no region or point is matched on a nodata source pixel
            pair = pair._replace(
                index1=drop_invalid_sources(pair.index1, valid),
                index2=drop_invalid_sources(pair.index2, valid),
            )
        with phase("matching"):
            inputs = self.model.prepare(pair, self.generator, images.shape[-2] * images.shape[-1])
        with phase("normalize"):
            view1, view2 = (
                to_float(view, 1.0, self.mean, self.std).contiguous(
                    memory_format=self.memory_format
                )
                for view in (pair.view1, pair.view2)
            )
        return PreparedBatch(images, pair, inputs, view1, view2)

    def train_step(self, batch: Tensor) -> dict[str, Tensor]:
        prepared = self.last = self.prepare(batch)
        # embedding-health statistics on logged steps only (the loop sets self.diagnostics)
        self.model.method.diagnostics = self.diagnostics
        with autocast_context(self.device, self.amp_dtype):
            return self.forward(prepared.view1, prepared.view2, **prepared.inputs)

    def on_step_end(self, step: int, out: dict[str, Tensor]) -> bool:
        probe = self.config.probe
        if probe.every and (step % probe.every == 0 or step == self.total_steps):
            self.probe(step)
        every = self.config.run.image_every
        if self.monitor is not None and self.last is not None and every:
            if self.monitor.enabled and (step == 1 or step % every == 0):
                images, pair, inputs = self.last.images, self.last.pair, self.last.inputs
                png = draw_view_grid(
                    *_slice_for_preview(images, pair, inputs.get("regions"), 4),
                    self.run_dir / "views" / f"step_{step:08d}.png",
                    rgb_bands=self.config.views.rgb_bands,
                )
                self.monitor.image(step, "views/pairs", png)
        return False

    def on_log(self, step: int, values: Mapping[str, float]) -> bool:
        """Report a branch whose embeddings stayed collapsed for ``collapse_patience`` log steps,
        and its recovery; and a log window in which no region (or point) pair was valid."""
        train = self.config.train
        stop = False
        for key, value in values.items():
            if key.endswith("/valid_fraction") and value == 0 and self.monitor is not None:
                self.monitor.info(
                    f"step {step}: no valid pair in any step since the last log ({key} = 0), "
                    "so that loss was 0: the views overlap too little for the regions; raise "
                    "views.t1/t2.crop.scale or lower method.region_size"
                )
            if not (key.startswith("health/") and key.endswith("/std")):
                continue
            branch = key.split("/")[1]
            streak = self.streaks.setdefault(
                branch, CollapseStreak(train.collapse_std, train.collapse_patience)
            )
            since = streak.since
            event = streak.update(step, float(value))
            if event == "collapsed" and self.monitor is not None:
                self.monitor.info(
                    f"step {step}: the {branch} embeddings have collapsed: their spread "
                    f"{key}={value:.3f} has stayed below train.collapse_std={train.collapse_std} "
                    f"for {len(streak.low)} log steps (since step {streak.since}), so every image "
                    "maps to nearly the same embedding and the loss no longer trains the encoder. "
                    "Try a lower optim.lr, optim.grad_clip, a higher method.temperature, a larger "
                    "batch or stronger view augmentations"
                    + ("; stopping (train.stop_on_collapse)" if train.stop_on_collapse else "")
                )
            if event == "recovered" and self.monitor is not None:
                self.monitor.info(
                    f"step {step}: the {branch} embeddings have recovered: their spread "
                    f"{key}={value:.3f} is back at or above train.collapse_std="
                    f"{train.collapse_std} (collapsed since step {since})"
                )
            stop = stop or (event == "collapsed" and train.stop_on_collapse)
        return stop

    @property
    def collapsed(self) -> dict[str, int]:
        """Branch -> first step of its reported collapse, for the branches collapsed now."""
        return {b: s.since for b, s in self.streaks.items() if s.since is not None}

    def status(self) -> dict[str, str]:
        collapsed = self.collapsed
        if not collapsed:
            return {}
        return {"COLLAPSED": ", ".join(f"{b} since step {s}" for b, s in collapsed.items())}

    def probe(self, step: int) -> None:
        """The online probe (rank 0): log ``probe/*``, keep ``best_probe.pt`` at a better mIoU."""
        if self.monitor is None or not self.monitor.enabled:
            return
        config = self.config
        if self.probe_setup is None:  # a task built outside run_pretrain (the engine checks first)
            self.probe_setup = check_probe(config, self.model.net.in_channels)
        features, datasets = self.probe_setup
        result = run_probe(  # keeps the run's random streams and module modes as they are
            self.model.net, features, config.probe, datasets, config.probe.data.scale,
            self.mean, self.std, self.device,
        )  # fmt: skip
        self.probe_seconds += result.seconds
        share = self.probe_seconds / max(time.perf_counter() - self.started, 1e-9)
        values = {**result.scalars(), "probe/share_of_run_time": share}
        self.monitor.scalars(step, values)
        better = result.metrics["miou"] is not None and result.metrics["miou"] > self.probe_best
        self.monitor.info(
            f"probe at step {step}: {result.summary()}; {result.seconds:.1f} s, "
            f"{100 * share:.1f} % of the run's time so far" + (" (best so far)" if better else "")
        )
        if better:
            self.probe_best = result.metrics["miou"]
            payload = {**self.checkpoint_content(), "version": __version__, "step": step,
                       "probe": values}  # fmt: skip
            save_atomic(payload, self.run_dir / "best_probe.pt")

    def checkpoint_content(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": to_dict(self.config),
            "in_channels": self.model.net.in_channels,
            # the values themselves, so the file does not depend on normalize.stats_file
            "normalize": {"mean": self.mean, "std": self.std},
            "model": self.model.net.state_dict(),
            "heads": self.model.heads_state_dict(),
            "probe_best": self.probe_best,
        }


def build_pretrain_task(
    config: PretrainConfig,
    bands: int,
    total_steps: int,
    device: torch.device,
    nodata: Any = None,
    steps_per_epoch: int = 1,
    world_size: int = 1,
    rank: int = 0,
    run_dir: Path | None = None,
    monitor: RunMonitor | None = None,
    normalization: tuple[list[float], list[float]] | None = None,
) -> tuple[PretrainTask, TrainState]:
    """The pretraining step of ``config`` and the state it trains.

    Args:
        normalization: per-band ``(mean, std)`` instead of the config's ``normalize``
            section (a benchmark without the recipe's statistics file).

    Raises:
        ConfigError: settings this machine or data cannot run (stats of another band count,
            SyncBatchNorm without CUDA).
    """
    train = config.train
    mean, std = normalization or normalization_values(config.normalize, bands)
    model = PretrainModel(config.model, config.method, bands).to(device)
    amp_dtype = resolve_amp_dtype(train.amp, device)
    memory_format = resolve_memory_format(train.channels_last, device)
    model = model.to(memory_format=memory_format)
    if train.sync_bn and world_size > 1:
        if device.type != "cuda":
            raise ConfigError(
                "train.sync_bn needs CUDA devices (torch's SyncBatchNorm is CUDA-only)"
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = build_optimizer(model, config.optim)
    scheduler = build_scheduler(optimizer, total_steps, config.optim, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    generator = views_generator(train.seed, rank, device)
    forward: nn.Module = model
    if world_size > 1:
        forward = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=not model.uses_decoder,
        )
    if train.compile:
        forward = torch.compile(forward)
    views = PairedViews(config.views).to(device)
    task = PretrainTask(
        config, model, forward, views, generator, mean, std, nodata, device, amp_dtype,
        memory_format, run_dir, monitor,
    )  # fmt: skip
    return task, TrainState(model, optimizer, scheduler, scaler, generator)


class PretrainStep:
    """The pretraining step of a config outside a run (no folder, no log): what a benchmark times.

    It is the task and the loop :func:`run_pretrain` builds (:func:`build_pretrain_task`,
    :class:`~contrastseg.train.loop.TrainingLoop`), so a timed step is the engine's own.

    Attributes:
        task: the step's task (views, the method's inputs, the forward).
        state: the model, optimizer, schedule, scaler and generator it updates.
        loop: the loop whose :meth:`~contrastseg.train.loop.TrainingLoop.step` runs a step.
    """

    def __init__(self, task: PretrainTask, state: TrainState, batch_size: int) -> None:
        self.task, self.state = task, state
        self.loop = TrainingLoop.standalone(
            state, task.forward, task.config.optim.grad_clip, batch_size
        )
        # the same step through the plain model, for a compiled or DDP-wrapped forward
        self._eager = copy.copy(task)
        self._eager.forward = task.model

    def prepare(self, batch: Tensor) -> PreparedBatch:
        """The step's input work alone: to_float, views, index maps, matching, normalisation."""
        return self.task.prepare(batch)

    def step(self, batch: Tensor, eager: bool = False) -> dict[str, Tensor]:
        """One optimizer step of a uint batch: prepare, forward, finite check, backward, update.

        Args:
            batch: ``(B, C, H, W)`` uint images on the device (or the host).
            eager: through the plain model rather than the compiled / wrapped forward (same
                math; e.g. under a FLOP counter).

        Returns:
            The step's losses and diagnostics (``total`` first).
        """
        return self.loop.step(self._eager if eager else self.task, batch)


def build_pretrain_step(
    config: PretrainConfig,
    bands: int,
    device: torch.device,
    nodata: Any = None,
    normalization: tuple[list[float], list[float]] | None = None,
) -> PretrainStep:
    """The step :func:`run_pretrain` runs for ``config`` on ``bands``-band data, outside a run.

    Args:
        config: the pretraining config (its schedule runs as if the run were endless).
        bands: the data's band count.
        device: where the step runs.
        nodata: the data's nodata value (``UnlabeledDataset.nodata``).
        normalization: per-band ``(mean, std)`` instead of the config's ``normalize``.
    """
    task, state = build_pretrain_task(
        config, bands, ENDLESS, device, nodata, normalization=normalization
    )
    return PretrainStep(task, state, config.train.batch_size)
