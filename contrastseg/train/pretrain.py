"""The pretraining engine behind ``contrastseg pretrain``.

One process per device; ``torchrun`` adds processes (DDP, gathered negatives). The step is
:class:`~contrastseg.train.pretrain_task.PretrainTask` (views, matching, the method's
losses; its names are re-exported here); the shared
:class:`~contrastseg.train.loop.TrainingLoop` does the rest (update, logging, checkpoints,
resumption) inside the run skeleton :class:`~contrastseg.train.run.TrainingRun` (run
folder, resume, monitor, close). Only rank 0 writes the run folder:

    runs/<name>/config.yaml      resolved config
    runs/<name>/train.log        plain log
    runs/<name>/scalars.jsonl    the logged scalars, one JSON object per log step
    runs/<name>/events.out.*     TensorBoard
    runs/<name>/views/*.png      view pairs with matched regions
    runs/<name>/checkpoints/step_*.pt
    runs/<name>/best_probe.pt    the weights of the best online probe (probe.every > 0)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch.distributed as dist

from contrastseg import __version__
from contrastseg.config import PretrainConfig
from contrastseg.data import UnlabeledDataset, build_loader
from contrastseg.train.checkpoint import load_checkpoint
from contrastseg.train.distributed import ProcessContext, setup_process, teardown_process
from contrastseg.train.loop import TrainingDiverged
from contrastseg.train.model import PretrainModel, upgrade_heads
from contrastseg.train.online_probe import check_probe
from contrastseg.train.pretrain_task import (
    CollapseStreak,
    PreparedBatch,
    PretrainStep,
    PretrainTask,
    build_pretrain_step,
    build_pretrain_task,
    views_generator,
)
from contrastseg.train.run import TrainingRun
from contrastseg.train.runtime import apply_num_threads, process_settings_kept, seed_everything
from contrastseg.utils.configtools import ConfigError
from contrastseg.utils.state import state_dict_mismatches

__all__ = [
    "CollapseStreak",
    "PreparedBatch",
    "PretrainResult",
    "PretrainStep",
    "PretrainTask",
    "TrainingDiverged",
    "build_pretrain_step",
    "build_pretrain_task",
    "run_pretrain",
    "views_generator",
]


@dataclass
class PretrainResult:
    """What :func:`run_pretrain` returns.

    Attributes:
        run_dir: the run folder.
        step: optimizer steps done (in total, across resumes).
        checkpoint: the last checkpoint written.
        history: the logged scalars, one dict per log step.
    """

    run_dir: Path
    step: int
    checkpoint: Path | None
    history: list[dict[str, float]] = field(default_factory=list)


def best_probe_miou(path: Path) -> float | None:
    """The probe mIoU stored in a ``best_probe.pt``; None when the file is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        payload = load_checkpoint(path)
        return float(payload["probe"]["probe/miou"])
    except (ValueError, KeyError, TypeError, OSError, RuntimeError):
        return None


def _check_architecture(model: PretrainModel, payload: dict, path: Path) -> None:
    problems = state_dict_mismatches(model.net.state_dict(), payload["model"])
    problems += [
        f"heads: {p}"
        for p in state_dict_mismatches(model.heads_state_dict(), upgrade_heads(payload["heads"]))
    ]
    if problems:
        raise ValueError(
            f"{path} was written by a different architecture or method than this config "
            f"describes ({path} has model={payload['config'].get('model')}, "
            f"method={payload['config'].get('method', {}).get('name')}): " + " | ".join(problems)
        )


def run_pretrain(config: PretrainConfig) -> PretrainResult:
    """Run (or resume) a pretraining job described by ``config``.

    Raises:
        ConfigError: a setting that cannot work with this data or machine.
        TrainingDiverged: the loss became NaN/Inf (nothing is written for that step).
        ValueError / FileNotFoundError: unreadable data, a mismatching checkpoint.
    """
    context = setup_process(config.train.device)
    try:
        with process_settings_kept():
            return _run(config, context)
    finally:
        teardown_process(context)


def _run(config: PretrainConfig, ctx: ProcessContext) -> PretrainResult:
    train, device, main = config.train, ctx.device, ctx.rank == 0
    apply_num_threads(train.num_threads)
    seed_everything(train.seed, train.deterministic, device)

    dataset = UnlabeledDataset(config.data)
    bands = dataset.num_bands
    if config.model.in_channels is not None and config.model.in_channels != bands:
        raise ConfigError(
            f"model.in_channels is {config.model.in_channels} but the data has {bands} band(s)"
        )
    loader = build_loader(
        dataset,
        train.batch_size,
        train.num_workers,
        shuffle=True,
        drop_last=True,
        distributed=ctx.world_size > 1,
        seed=train.seed,
    )
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ConfigError(
            f"the data gives {len(dataset)} patches per epoch, fewer than one batch of "
            f"train.batch_size={train.batch_size} x {ctx.world_size} process(es); lower the batch "
            "size or add data (data.coverage draws more random windows per image)"
        )
    total_steps = train.max_steps or train.epochs * steps_per_epoch
    # rank 0, the one that probes, checks the probe before the first step (and before the run
    # folder) and tells the others, so a bad probe section stops every process with the same
    # message rather than rank 0 alone at the first probe while the others wait for it
    probe_setup, problem = None, None
    if config.probe.every and main:
        try:
            probe_setup = check_probe(config, bands)
        except ConfigError as err:
            problem = str(err)
    if config.probe.every and ctx.world_size > 1:
        shared = [problem]
        dist.broadcast_object_list(shared, src=0)
        problem = shared[0]
    if problem is not None:
        raise ConfigError(problem)

    default_name = f"{config.method.name}-{config.model.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    with TrainingRun(config, default_name, main) as run:
        task, state = build_pretrain_task(
            config, bands, total_steps, device, dataset.nodata, steps_per_epoch, ctx.world_size,
            ctx.rank, run.run_dir,
        )  # fmt: skip
        task.probe_setup = probe_setup  # only rank 0 probes (None elsewhere)
        payload = run.resume(load_checkpoint)
        if payload is not None:
            _check_architecture(task.model, payload, run.resume_from)
            task.model.net.load_state_dict(payload["model"])
            task.model.load_heads(payload["heads"])
            task.probe_best = float(payload.get("probe_best", -1.0))
            # best_probe.pt may be newer than the checkpoint: never replace it by a worse probe
            stored = best_probe_miou(run.run_dir / "best_probe.pt") if main else None
            if stored is not None and stored > task.probe_best:
                run.notes.append(
                    f"best_probe.pt holds probe mIoU {stored:.4f}, better than the checkpoint's "
                    f"{task.probe_best:.4f}: only a better probe replaces it"
                )
                task.probe_best = stored
        settings = run.loop_settings(
            total_steps, train.batch_size * ctx.world_size, ctx.world_size, ctx.rank
        )
        loop = run.start(state, settings, task.forward)
        task.monitor, task.total_steps = run.monitor, total_steps
        run.announce(
            f"contrastseg {__version__} pretrain: {config.method.name}, {config.model.arch}, "
            f"{bands} band(s), {dataset.summary()}; {steps_per_epoch} steps/epoch, "
            f"{total_steps} steps, batch {train.batch_size} x {ctx.world_size} process(es) on "
            f"{device}" + (f", amp {task.amp_dtype}" if task.amp_dtype else "")
        )
        result = loop.run(task, loader)
        if result.checkpoint is not None:
            run.monitor.info(f"done: step {result.step}, checkpoint {result.checkpoint}")
    return PretrainResult(run.run_dir, result.step, result.checkpoint, result.history)
