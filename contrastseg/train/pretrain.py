"""The pretraining engine behind ``contrastseg pretrain``.

One process per device; ``torchrun`` adds processes (DDP, gathered negatives). Per step:
uint patches -> device -> [0, 1] floats -> two views + index maps (``PairedViews``) ->
matched regions -> per-band normalisation -> :class:`PretrainModel` (losses) -> backward ->
optimizer and schedule. Only rank 0 writes the run folder:

    runs/<name>/config.yaml      resolved config
    runs/<name>/train.log        plain log
    runs/<name>/scalars.jsonl    the logged scalars, one JSON object per log step
    runs/<name>/events.out.*     TensorBoard
    runs/<name>/views/*.png      view pairs with matched regions
    runs/<name>/checkpoints/step_*.pt
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from contrastseg import __version__
from contrastseg.augment import MatchedRegions, PairedViews, ViewPair, draw_view_grid
from contrastseg.augment.regions import drop_invalid_sources
from contrastseg.config import PretrainConfig
from contrastseg.data import UnlabeledDataset, build_loader, load_stats_yaml, set_loader_epoch
from contrastseg.data.loader import to_float
from contrastseg.data.nodata import fill_invalid, valid_pixels
from contrastseg.train.checkpoint import (
    CHECKPOINT_FORMAT,
    capture_rng,
    changed_settings,
    checkpoint_path,
    load_checkpoint,
    prune_checkpoints,
    restore_rng,
    resume_note,
    resume_source,
    save_atomic,
)
from contrastseg.train.distributed import ProcessContext, setup_process, teardown_process
from contrastseg.train.model import PretrainModel, upgrade_heads
from contrastseg.train.monitor import RunMonitor
from contrastseg.train.optim import build_optimizer, build_scheduler
from contrastseg.train.runtime import (
    autocast_context,
    iterate_keeping_rng,
    optimizer_step,
    reduce_mean,
    resolve_amp_dtype,
    resume_loader,
    seed_everything,
)
from contrastseg.utils.configtools import ConfigError, to_dict
from contrastseg.utils.state import state_dict_mismatches


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the loss parts."""


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


def views_generator(seed: int, rank: int, device: torch.device) -> torch.Generator:
    """The generator of views and regions of process ``rank``: seeded, different per rank."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + 7919 * (rank + 1))


def _normalization(
    config: PretrainConfig, bands: int
) -> tuple[list[float] | None, list[float] | None]:
    norm = config.normalize
    mean, std = norm.mean, norm.std
    if norm.stats_file:
        stats = load_stats_yaml(norm.stats_file)
        mean, std = stats.mean, stats.std
    for name, values in (("mean", mean), ("std", std)):
        if values is not None and len(values) != bands:
            source = norm.stats_file or f"normalize.{name}"
            raise ConfigError(
                f"{source}: {len(values)} {name} values but the data has {bands} band(s)"
            )
    return mean, std


def _run_dir(config: PretrainConfig) -> Path:
    name = (
        config.run.name
        or f"{config.method.name}-{config.model.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    return Path(config.run.root) / name


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


def _slice_for_preview(images: Tensor, pair: ViewPair, regions: MatchedRegions | None, n: int):
    cut = lambda t: t[:n].detach().float().cpu() if t.is_floating_point() else t[:n].cpu()  # noqa: E731
    return (
        cut(images),
        ViewPair(*(cut(t) for t in pair)),
        None if regions is None else MatchedRegions(*(cut(t) for t in regions)),
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
        return _run(config, context)
    finally:
        teardown_process(context)


def _run(config: PretrainConfig, ctx: ProcessContext) -> PretrainResult:
    train, method = config.train, config.method
    device, main = ctx.device, ctx.rank == 0
    seed_everything(train.seed, train.deterministic, device)

    dataset = UnlabeledDataset(config.data)
    bands = dataset.num_bands
    if config.model.in_channels is not None and config.model.in_channels != bands:
        raise ConfigError(
            f"model.in_channels is {config.model.in_channels} but the data has {bands} band(s)"
        )
    mean, std = _normalization(config, bands)
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

    run_dir = _run_dir(config)
    ckpt_dir = run_dir / "checkpoints"
    resume_from = resume_source(config.run.resume, bool(config.run.name), ckpt_dir)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))

    model = PretrainModel(config.model, method, bands).to(device)
    memory_format = torch.channels_last if train.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    if train.sync_bn and ctx.world_size > 1:
        if device.type != "cuda":
            raise ConfigError(
                "train.sync_bn needs CUDA devices (torch's SyncBatchNorm is CUDA-only)"
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = build_optimizer(model, config.optim)
    scheduler = build_scheduler(optimizer, total_steps, config.optim, steps_per_epoch)
    amp_dtype = resolve_amp_dtype(train.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    views = PairedViews(config.views).to(device)
    generator = views_generator(train.seed, ctx.rank, device)

    step, checkpoint, notes = 0, None, []
    if resume_from is not None:
        payload = load_checkpoint(resume_from)
        notes = changed_settings(payload["config"], to_dict(config))
        _check_architecture(model, payload, resume_from)
        model.net.load_state_dict(payload["model"])
        model.load_heads(payload["heads"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        if payload["scaler"] and scaler.is_enabled():
            scaler.load_state_dict(payload["scaler"])
        rng = payload["rng"]
        if isinstance(rng, list):  # one state per rank
            if ctx.rank < len(rng):
                restore_rng(rng[ctx.rank], generator)
            elif main:
                print(f"{resume_from} holds random states of {len(rng)} process(es): "
                      f"processes {len(rng)}.. start fresh views streams")  # fmt: skip
        else:
            restore_rng(rng, generator)
        step, checkpoint = int(payload["step"]), resume_from
    if step >= total_steps and main:
        print(f"{run_dir}: already at step {step} of {total_steps}; nothing to do")

    net: nn.Module = model
    if ctx.world_size > 1:
        net = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=not model.uses_decoder,
        )
    if train.compile:
        net = torch.compile(net)

    monitor = RunMonitor(run_dir, main, total_steps, step, config.run.progress)
    history: list[dict[str, float]] = []
    if main:
        monitor.info(
            f"contrastseg {__version__} pretrain: {method.name}, {config.model.arch}, {bands} band(s), "
            f"{dataset.summary()}; {steps_per_epoch} steps/epoch, {total_steps} steps, "
            f"batch {train.batch_size} x {ctx.world_size} process(es) on {device}"
            + (f", amp {amp_dtype}" if amp_dtype else "")
            + resume_note(config.run.resume, resume_from, step)
        )
        for note in notes:
            monitor.info(note)

    def save(at_step: int, epoch: int, rng: list) -> Path:
        payload = {
            "format": CHECKPOINT_FORMAT,
            "version": __version__,
            "step": at_step,
            "epoch": epoch,
            "config": to_dict(config),
            "in_channels": bands,
            "model": model.net.state_dict(),
            "heads": model.heads_state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng,
        }
        path = save_atomic(payload, checkpoint_path(ckpt_dir, at_step))
        prune_checkpoints(ckpt_dir, config.run.keep_last)
        return path

    global_batch = train.batch_size * ctx.world_size
    sums: dict[str, Tensor] = {}
    window_steps, window_wait, window_start = 0, 0.0, time.perf_counter()
    try:
        while step < total_steps:
            epoch, skip = divmod(step, steps_per_epoch)
            set_loader_epoch(loader, epoch)
            batches = iterate_keeping_rng(resume_loader(loader, skip))
            wait_start = time.perf_counter()
            for batch in batches:
                window_wait += time.perf_counter() - wait_start
                batch = batch.to(device, non_blocking=True)
                valid = valid_pixels(batch, dataset.nodata)  # None: no nodata pixel
                # nodata pixels enter the views as the band mean (0 once normalised)
                images = fill_invalid(to_float(batch, config.data.scale), valid, mean)
                with torch.no_grad():
                    pair = views(images, generator)
                    # no region or point is matched on a nodata source pixel
                    pair = pair._replace(
                        index1=drop_invalid_sources(pair.index1, valid),
                        index2=drop_invalid_sources(pair.index2, valid),
                    )
                    inputs = model.prepare(pair, generator, images.shape[-2] * images.shape[-1])
                    v1 = to_float(pair.view1, 1.0, mean, std).contiguous(
                        memory_format=memory_format
                    )
                    v2 = to_float(pair.view2, 1.0, mean, std).contiguous(
                        memory_format=memory_format
                    )
                with autocast_context(device, amp_dtype):
                    out: dict[str, Tensor] = net(v1, v2, **inputs)
                finite = torch.isfinite(out["total"].detach()).float()
                if ctx.world_size > 1:
                    dist.all_reduce(finite, op=dist.ReduceOp.MIN)
                if not bool(finite):
                    parts = {k: float(v.detach()) for k, v in out.items()}
                    raise TrainingDiverged(
                        f"step {step + 1}: the loss is not finite ({parts}); stopping before the "
                        f"update, so the weights are untouched"
                        + (
                            f" and the newest checkpoint {checkpoint} is intact"
                            if checkpoint
                            else ""
                        )
                        + ". Lower optim.lr, set optim.grad_clip, or try train.amp=off."
                    )
                optimizer_step(
                    out["total"],
                    optimizer,
                    scheduler,
                    scaler,
                    model.parameters(),
                    config.optim.grad_clip,
                )
                step += 1
                window_steps += 1
                for key, value in out.items():  # whatever the method returns
                    key = key if "/" in key else f"loss/{key}"
                    sums[key] = sums.get(key, 0) + value.detach().float()

                if (
                    main
                    and config.run.image_every
                    and (step == 1 or step % config.run.image_every == 0)
                ):
                    png = draw_view_grid(
                        *_slice_for_preview(images, pair, inputs.get("regions"), 4),
                        run_dir / "views" / f"step_{step:08d}.png",
                        rgb_bands=config.views.rgb_bands,
                    )
                    monitor.image(step, "views/pairs", png)

                if step % config.run.log_every == 0 or step == total_steps:
                    values = reduce_mean(
                        {k: v / window_steps for k, v in sums.items()}, ctx.world_size
                    )
                    elapsed = time.perf_counter() - window_start
                    values["lr"] = optimizer.param_groups[0]["lr"]
                    values["throughput/images_per_s"] = window_steps * global_batch / elapsed
                    values["throughput/data_wait_fraction"] = window_wait / elapsed
                    if device.type == "cuda":
                        values["memory/gpu_max_allocated_gib"] = (
                            torch.cuda.max_memory_allocated(device) / 2**30
                        )
                    values["epoch"] = epoch + 1
                    history.append(monitor.scalars(step, values))
                    if main:
                        monitor.advance(
                            window_steps,
                            {
                                "loss": f"{values['loss/total']:.4f}",
                                "img/s": f"{values['throughput/images_per_s']:.1f}",
                            },
                        )
                        if monitor.bar is None:
                            monitor.info(
                                f"step {step}/{total_steps} loss {values['loss/total']:.4f} "
                                f"lr {values['lr']:.2e} {values['throughput/images_per_s']:.1f} img/s"
                            )
                    sums, window_steps, window_wait = {}, 0, 0.0
                    window_start = time.perf_counter()

                if step % config.run.checkpoint_every == 0 or step == total_steps:
                    # every rank's views generator, so a resumed DDP run keeps its streams
                    rng = [capture_rng(generator)]
                    if ctx.world_size > 1:
                        rng = [None] * ctx.world_size
                        dist.all_gather_object(rng, capture_rng(generator))
                    failure: Exception | None = None
                    if main:
                        try:
                            checkpoint = save(step, epoch, rng)
                        except Exception as err:  # e.g. a full disk
                            failure = err
                    if ctx.world_size > 1:
                        # Every rank learns whether the save worked, instead of waiting at a
                        # barrier for a rank 0 that has died until the backend times out.
                        saved = torch.ones(1, device=device) * (failure is None)
                        dist.all_reduce(saved, op=dist.ReduceOp.MIN)
                        if not main and not bool(saved):
                            raise RuntimeError(
                                f"rank 0 could not write the step-{step} checkpoint (its error "
                                f"is in rank 0's output); stopping rank {ctx.rank} too"
                            )
                    if failure is not None:
                        raise failure
                if step >= total_steps:
                    break
                wait_start = time.perf_counter()
        if main and checkpoint is not None:
            monitor.info(f"done: step {step}, checkpoint {checkpoint}")
    finally:
        monitor.close()
    return PretrainResult(run_dir, step, checkpoint, history)
