"""The downstream engine behind ``contrastseg finetune``: linear probe, decoder training, fine-tuning.

A DeepLabV3+ of the pretrained checkpoint's architecture gets a fresh 1x1 classifier for the
labeled data's classes; the chosen parts (``backbone``, ``backbone+aspp`` or ``all``) are
loaded from the checkpoint (:func:`~contrastseg.models.pretrained.load_pretrained`). Modes
(GLCNet, Li et al. 2022, Sec. IV; linear evaluation as in SimCLR, Chen et al. 2020):

- ``linear``: the linear probe (:mod:`contrastseg.train.probe`): backbone, ASPP and decoder
  frozen *and* their BatchNorm layers kept in eval mode; only a 1x1 classifier on the features
  the checkpoint trained (``linear.features``) trains, at ``linear.lr``, until the validation
  mIoU stops improving (``linear.patience``);
- ``decoder``: the backbone is frozen (BN in eval mode); ASPP, decoder and classifier train;
- ``finetune``: everything trains; pretrained parts at ``pretrained_lr_scale`` x lr.

Frozen parts that no weights file filled (a random start) get BatchNorm statistics estimated
on the labeled training patches before training. The model is selected on the validation
split (mIoU, sliding-window over whole images; ``train.patience`` stops early); the test split
is scored once, at the end, with the selected weights. Run folder:

    runs/<name>/config.yaml, train.log, scalars.jsonl, events.out.*  (TensorBoard)
    runs/<name>/checkpoints/step_*.pt   resumable (optimizer, schedule, RNG)
    runs/<name>/best.pt                 the selected segmenter (evaluate / predict / export)
    runs/<name>/val/, test/             metrics.json, metrics.txt, confusion_matrix.png, overlays/
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from contrastseg import __version__
from contrastseg.data.labeled import LabeledDataset
from contrastseg.data.loader import build_loader, set_loader_epoch, to_float
from contrastseg.data.stats import load_stats_yaml
from contrastseg.losses.segmentation import build_loss, count_labels
from contrastseg.models.pretrained import PARTS, LoadReport, load_pretrained, read_state_dict
from contrastseg.train.checkpoint import (
    capture_rng,
    changed_settings,
    checkpoint_path,
    prune_checkpoints,
    restore_rng,
    resume_note,
    resume_source,
    save_atomic,
)
from contrastseg.train.evaluate import (
    FINETUNE_FORMAT,
    Segmenter,
    build_segmenter,
    evaluate_dataset,
    load_finetune_checkpoint,
)
from contrastseg.train.finetune_augment import official_augment
from contrastseg.train.finetune_config import FinetuneConfig, loss_spec
from contrastseg.train.monitor import RunMonitor
from contrastseg.train.optim import build_optimizer, build_scheduler
from contrastseg.train.pretrain import TrainingDiverged
from contrastseg.train.probe import (
    LOAD_PARTS,
    Patience,
    check_trained,
    default_features,
    estimate_batchnorm,
    required_parts,
    trained_parts,
)
from contrastseg.train.report import write_report
from contrastseg.train.runtime import (
    autocast_context,
    iterate_keeping_rng,
    optimizer_step,
    resolve_amp_dtype,
    seed_everything,
)
from contrastseg.utils.configtools import ConfigError, to_dict
from contrastseg.utils.device import resolve_device
from contrastseg.utils.state import state_dict_mismatches


@dataclass
class FinetuneResult:
    """What :func:`run_finetune` returns.

    Attributes:
        run_dir: the run folder.
        best_checkpoint: ``best.pt``, the weights selected on the validation split.
        best_epoch: the epoch (1-based) those weights come from.
        val_metrics: validation metrics of the selected weights.
        test_metrics: test metrics of the selected weights (None without a test split).
        step: optimizer steps done.
        history: logged scalars, one dict per log step or validation.
        load_report: what was loaded from the pretrained file (None = random init).
    """

    run_dir: Path
    best_checkpoint: Path
    best_epoch: int
    val_metrics: dict[str, Any]
    test_metrics: dict[str, Any] | None
    step: int
    history: list[dict[str, float]] = field(default_factory=list)
    load_report: LoadReport | None = None


#: At most this many batches estimate the BatchNorm statistics of frozen, untrained parts.
BN_ESTIMATION_BATCHES = 200


def frozen_modules(model: nn.Module, mode: str) -> list[nn.Module]:
    """The parts of a DeepLabV3+ that ``mode`` freezes (parameters and BN statistics)."""
    if mode == "linear":
        return [model.backbone, model.aspp, model.decoder]
    if mode == "decoder":
        return [model.backbone]
    return []


def set_train_mode(model: nn.Module, frozen: list[nn.Module]) -> None:
    """``model.train()`` with the frozen parts in eval mode, so their BN statistics stay fixed."""
    model.train()
    for module in frozen:
        module.eval()


def augment_batch(
    images: Tensor, masks: Tensor, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Random horizontal flip, vertical flip and 90-degree rotation per sample (image and mask alike).

    Batched on the device (no loop over samples, no host round trip): each transform is
    computed for the whole batch and selected per sample. Rotations need square patches;
    non-square batches are only flipped.

    Shapes: ``images (B, C, H, W)``, ``masks (B, H, W)``.
    """
    draws = torch.randint(0, 4, (images.shape[0], 3), generator=generator, device=generator.device)
    draws = draws.to(images.device)

    def pick(flag: Tensor, transformed: tuple[Tensor, Tensor], current: tuple[Tensor, Tensor]):
        return (
            torch.where(flag[:, None, None, None], transformed[0], current[0]),
            torch.where(flag[:, None, None], transformed[1], current[1]),
        )

    out = (images, masks)
    out = pick(draws[:, 0] % 2 == 1, (out[0].flip(-1), out[1].flip(-1)), out)
    out = pick(draws[:, 1] % 2 == 1, (out[0].flip(-2), out[1].flip(-2)), out)
    if images.shape[-1] == images.shape[-2]:
        base = out
        for k in (1, 2, 3):
            rotated = (torch.rot90(base[0], k, (-2, -1)), torch.rot90(base[1], k, (-2, -1)))
            out = pick(draws[:, 2] == k, rotated, out)
    return out


def _normalization(
    config: FinetuneConfig, pretrain: dict, bands: int
) -> tuple[list | None, list | None]:
    norm = config.normalize
    mean, std, source = norm.mean, norm.std, "normalize"
    if norm.stats_file:
        stats = load_stats_yaml(norm.stats_file)
        mean, std, source = stats.mean, stats.std, norm.stats_file
    elif mean is None and std is None and pretrain:
        # same inputs as in pretraining, unless the config says otherwise
        stored = pretrain.get("config", {}).get("normalize", {})
        mean, std, source = stored.get("mean"), stored.get("std"), "the pretraining checkpoint"
        if stored.get("stats_file") and Path(stored["stats_file"]).is_file():
            stats = load_stats_yaml(stored["stats_file"])
            mean, std = stats.mean, stats.std
    for name, values in (("mean", mean), ("std", std)):
        if values is not None and len(values) != bands:
            raise ConfigError(
                f"{source}: {len(values)} {name} values but the data has {bands} band(s)"
            )
    return (None if mean is None else list(mean)), (None if std is None else list(std))


def _split(config: FinetuneConfig, split: str, required: bool) -> LabeledDataset | None:
    try:
        return LabeledDataset(config.data, split, whole_images=split != "train")
    except ValueError as err:
        if required or "is empty" not in str(err):
            hint = (
                "; model selection needs a validation split that is not the test split: set "
                "data.val patterns (e.g. ['Tile 3/*'])"
                if split == "val" and "is empty" in str(err)
                else ""
            )
            raise ConfigError(f"{err}{hint}") from err
        return None


def _build_model(config: FinetuneConfig, num_classes: int, bands: int):
    """The segmenter (or linear probe) with its start weights, the model config and what loaded.

    Returns:
        ``(model, model_config, payload, report, loaded_parts)``; ``loaded_parts`` names the
        parts some weights file filled (the others start random).
    """
    path = config.pretrained.path
    model_config, payload, state = to_dict(config.model), {}, {}
    if path:
        state, payload = read_state_dict(path)
        if payload:
            model_config = payload["config"]["model"]
            if payload.get("in_channels") not in (None, bands):
                raise ConfigError(
                    f"{path} was trained on {payload['in_channels']} band(s) but the labeled data has "
                    f"{bands}; select matching bands with data.bands"
                )
    parts, features = config.pretrained.parts, "decoder"
    if config.mode == "linear":
        trained = trained_parts(state, payload) if path else None
        features = config.linear.features
        if features == "auto":
            features = default_features(trained)
        if parts == "auto":
            parts = LOAD_PARTS[features]
        required_parts(features, parts)
        if path:
            method = (payload.get("config") or {}).get("method", {}).get("name")
            check_trained(features, trained or (), str(path), method)
    elif parts == "auto":
        parts = "backbone+aspp"
    model_config = {**model_config, "classifier_features": features}
    model = build_segmenter(model_config, num_classes, bands)
    report, loaded_parts = None, set()
    if path:
        report = load_pretrained(model, path, parts)
        if config.mode == "linear" and report.missing:
            raise ConfigError(
                f"{path} lacks {len(report.missing)} tensor(s) of the frozen parts of a linear "
                f"probe of {features} features (e.g. {', '.join(report.missing[:4])}); they "
                "would stay randomly initialised"
            )
        loaded_parts = {p.rstrip(".") for p in PARTS[parts]}
    elif config.model.backbone_weights:
        model.backbone.load_weights(config.model.backbone_weights)
        loaded_parts = {"backbone"}
    return model, model_config, payload, report, loaded_parts


def _optimizer(model: nn.Module, config: FinetuneConfig, report: LoadReport | None):
    settings = config.optim
    if config.mode == "linear":  # the head's own learning rate
        settings = dataclasses.replace(settings, lr=config.linear.lr)
    optimizer = build_optimizer(model, settings)
    scale = config.pretrained_lr_scale
    if report is not None and config.mode == "finetune" and scale != 1.0:
        names = {id(p): n for n, p in model.named_parameters()}
        loaded = set(report.loaded)
        groups = []
        for group in optimizer.param_groups:
            settings = {k: v for k, v in group.items() if k != "params"}
            pre = [p for p in group["params"] if names[id(p)] in loaded]
            fresh = [p for p in group["params"] if names[id(p)] not in loaded]
            groups += [
                {**settings, "params": fresh},
                {**settings, "params": pre, "lr": settings["lr"] * scale},
            ]
        optimizer.param_groups.clear()
        for group in groups:
            if group["params"]:
                optimizer.add_param_group(group)
    return optimizer


def run_finetune(config: FinetuneConfig) -> FinetuneResult:
    """Train a segmenter on a label fraction, select it on val, score it once on test.

    Raises:
        ConfigError: settings that cannot work with this data (no val split, band mismatch ...).
        TrainingDiverged: the loss became NaN/Inf.
        ValueError / FileNotFoundError: unreadable data or weights, a mismatching checkpoint.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("contrastseg finetune runs in one process; launch it without torchrun")
    train, device = config.train, resolve_device(config.train.device)
    seed_everything(train.seed, train.deterministic, device)
    dataset = _split(config, "train", True)
    val_set = _split(config, "val", True)
    test_set = _split(config, "test", False)
    bands, classes = dataset.num_bands, dataset.classes
    if len(dataset) < 2:
        raise ConfigError(
            f"the label fraction leaves {len(dataset)} training patch(es); BatchNorm needs at least "
            "2: raise data.label_fraction or lower data.patch_size"
        )
    batch_size = min(train.batch_size, len(dataset))
    loader = build_loader(
        dataset, batch_size, train.num_workers, shuffle=True, drop_last=True, seed=train.seed
    )
    total_steps = train.max_steps or train.epochs * len(loader)
    epochs = -(-total_steps // len(loader))

    model, model_config, pretrain, report, loaded = _build_model(config, dataset.num_classes, bands)
    mean, std = _normalization(config, pretrain, bands)
    frozen = frozen_modules(model, config.mode)
    for module in frozen:
        module.requires_grad_(False)
    features = model.classifier_features
    memory_format = (
        torch.channels_last
        if train.channels_last and device.type == "cuda"
        else torch.contiguous_format
    )
    model.to(device, memory_format=memory_format)
    net = torch.compile(model) if train.compile else model
    spec = loss_spec(config.loss, config.loss_args)
    counts = None
    if "balanced" in json.dumps(spec) or any(t in config.loss for t in ("weighted_ce", "wce")):
        counts = sum(
            count_labels(dataset[i][1], dataset.num_classes, dataset.ignore_index)
            for i in range(len(dataset))
        )
    criterion = build_loss(spec, dataset.num_classes, dataset.ignore_index, counts).to(device)
    optimizer = _optimizer(model, config, report)
    scheduler = build_scheduler(optimizer, total_steps, config.optim, len(loader))
    amp_dtype = resolve_amp_dtype(train.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    generator = torch.Generator(device=device).manual_seed(train.seed * 1_000_003 + 17)

    name = config.run.name or f"finetune-{config.mode}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(config.run.root) / name
    ckpt_dir = run_dir / "checkpoints"
    resume = resume_source(config.run.resume, bool(config.run.name), ckpt_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    segmenter = Segmenter(
        model,
        config,
        classes,
        dataset.palette,
        config.data.bands,
        config.data.scale,
        mean,
        std,
        device,
        {},
    )

    def payload(step: int, epoch: int, full: bool) -> dict[str, Any]:
        out = {
            "format": FINETUNE_FORMAT, "version": __version__, "step": step, "epoch": epoch,
            "config": to_dict(config), "model_config": dict(model_config), "in_channels": bands,
            "num_classes": dataset.num_classes, "classes": classes, "palette": dataset.palette,
            "ignore_index": dataset.ignore_index, "bands": config.data.bands, "scale": config.data.scale,
            "normalize": {"mean": mean, "std": std}, "model": model.state_dict(),
            "best": dict(best), "pretrained": None if report is None else {
                "path": report.path, "parts": report.parts, "loaded": len(report.loaded),
                "missing": report.missing, "unexpected": report.unexpected},
        }  # fmt: skip
        if full:
            out.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                       scaler=scaler.state_dict(), rng=capture_rng(generator), history=history)  # fmt: skip
        return out

    step, start_epoch, history = 0, 0, []
    best: dict[str, Any] = {"epoch": 0, "miou": -1.0, "metrics": {}, "stale": 0}
    patience = config.linear.patience if config.mode == "linear" else train.patience
    notes: list[str] = []
    if resume is not None:
        state = load_finetune_checkpoint(resume)
        notes = changed_settings(state.get("config", {}), to_dict(config))
        missing = [k for k in ("optimizer", "scheduler", "rng", "history") if k not in state]
        if missing:
            raise ValueError(
                f"{resume} is not a resumable checkpoint (it lacks {', '.join(missing)}; best.pt "
                "holds weights only): resume from a step_*.pt in the run's checkpoints folder"
            )
        problems = state_dict_mismatches(model.state_dict(), state["model"])
        if problems:
            raise ValueError(
                f"{resume} does not fit the model this config builds: " + " | ".join(problems)
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state["scaler"] and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
        restore_rng(state["rng"], generator)
        step, start_epoch, history, best = (
            state["step"],
            state["epoch"],
            state["history"],
            state["best"],
        )
        # best.pt is written at every improvement, step checkpoints only every few steps: the
        # interrupted run may have validated a better model after this checkpoint. Those
        # weights are on disk and were scored on val, so they stay the best so far (the
        # record and best.pt then agree whatever the repeated epochs score).
        if (run_dir / "best.pt").is_file():
            written = load_finetune_checkpoint(run_dir / "best.pt").get("best") or {}
            if written.get("miou", -1.0) > best["miou"]:
                best = written

    monitor = RunMonitor(
        run_dir, True, total_steps, step, config.run.progress, rerun_prefixes=("test/",)
    )
    monitor.info(
        f"contrastseg {__version__} finetune ({config.mode}): {model_config['arch']}, {bands} band(s), "
        f"{len(dataset)} labeled patch(es), {len(val_set)} val / {len(test_set) if test_set else 0} test "
        f"image(s); {len(loader)} steps/epoch, {total_steps} steps on {device}"
        + (f"; {report.summary()}" if report else "; random initialisation")
        + resume_note(config.run.resume, resume, step)
    )
    for note in notes:
        monitor.info(note)
    if config.mode == "linear":
        monitor.info(
            f"linear probe on frozen {features} features: {model.feature_channels(features)} "
            f"channels at stride {model.feature_stride(features)}; head lr {config.linear.lr:g}, "
            f"patience {patience} validation(s)"
        )
    unloaded = [m for name, m in model.named_children() if m in frozen and name not in loaded]
    if unloaded and resume is None:
        estimate_loader = build_loader(
            dataset, batch_size, train.num_workers, shuffle=False, drop_last=True, seed=train.seed
        )
        batches = (
            to_float(images.to(device), config.data.scale, mean, std).contiguous(
                memory_format=memory_format
            )
            for images, _ in estimate_loader
        )
        with autocast_context(device, amp_dtype):
            used = estimate_batchnorm(
                model, unloaded, batches, model.classifier_input, BN_ESTIMATION_BATCHES
            )
        names = "+".join(n for n, m in model.named_children() if m in unloaded)
        monitor.info(
            f"BatchNorm statistics of the frozen, not pretrained {names} estimated on "
            f"{used} batch(es) of the labeled training patches"
        )
    best_confusion = None
    last_saved, window = step, {"loss": 0.0, "n": 0, "t": time.perf_counter()}
    try:
        for epoch in range(start_epoch, epochs):
            set_loader_epoch(loader, epoch)
            set_train_mode(model, frozen)
            for images, masks in iterate_keeping_rng(loader):
                x = to_float(images.to(device, non_blocking=True), config.data.scale, mean, std)
                y = masks.to(device, non_blocking=True)
                if train.augment and train.augment_recipe == "official":
                    x, y = official_augment(x, y, generator, mean, std, dataset.ignore_index)
                elif train.augment:
                    x, y = augment_batch(x, y, generator)
                with autocast_context(device, amp_dtype):
                    logits = net(x.contiguous(memory_format=memory_format))
                loss = criterion(logits.float(), y)
                if not torch.isfinite(loss.detach()):
                    raise TrainingDiverged(
                        f"step {step + 1}: the loss is {float(loss)}; stopping before the update. "
                        "Lower optim.lr, set optim.grad_clip, or try train.amp=off."
                    )
                optimizer_step(
                    loss, optimizer, scheduler, scaler, model.parameters(), config.optim.grad_clip
                )
                step += 1
                window["loss"] += float(loss.detach())
                window["n"] += 1
                if step % config.run.log_every == 0 or step == total_steps:
                    elapsed = time.perf_counter() - window["t"]
                    values = {"loss/train": window["loss"] / window["n"], "lr": optimizer.param_groups[0]["lr"],
                              "throughput/images_per_s": window["n"] * batch_size / elapsed, "epoch": epoch + 1}  # fmt: skip
                    history.append(monitor.scalars(step, values))
                    monitor.advance(window["n"], {"loss": f"{values['loss/train']:.4f}"})
                    window = {"loss": 0.0, "n": 0, "t": time.perf_counter()}
                if step >= total_steps:
                    break
            last = epoch + 1 == epochs or step >= total_steps
            if (epoch + 1) % config.eval.every == 0 or last:
                confusion = evaluate_dataset(segmenter, val_set, config.eval, None, train.amp)
                metrics = confusion.compute(config.eval.exclude)
                miou = metrics["miou"] if metrics["miou"] is not None else 0.0
                values = {
                    f"val/{k}": metrics[k] or 0.0
                    for k in ("miou", "overall_accuracy", "kappa", "mean_f1")
                }
                history.append(monitor.scalars(step, values))
                rule = Patience(patience, best["miou"], best.get("stale", 0))
                improved = rule.update(miou)
                monitor.info(f"epoch {epoch + 1}/{epochs} step {step}: val mIoU {100 * miou:.2f}"
                             + (" (best so far)" if improved else f" (best {100 * best['miou']:.2f} at epoch {best['epoch']})"))  # fmt: skip
                if improved:
                    best = {"epoch": epoch + 1, "miou": miou, "metrics": metrics, "stale": 0}
                    best_confusion = confusion
                    save_atomic(payload(step, epoch + 1, False), run_dir / "best.pt")
                else:
                    best["stale"] = rule.stale
                if rule.exhausted:
                    monitor.info(
                        f"val mIoU has not improved for {rule.stale} validation(s) "
                        f"(patience {patience}): stopping at step {step}"
                    )
                    last = True
            if last or step - last_saved >= config.run.checkpoint_every:
                save_atomic(payload(step, epoch + 1, True), checkpoint_path(ckpt_dir, step))
                prune_checkpoints(ckpt_dir, config.run.keep_last)
                last_saved = step
            if last:
                break

        best_path = run_dir / "best.pt"
        selected = load_finetune_checkpoint(best_path)
        model.load_state_dict(selected["model"])
        if best_confusion is None:  # selected before a resume: score it again
            best_confusion = evaluate_dataset(segmenter, val_set, config.eval, None, train.amp)
        val_metrics = write_report(
            best_confusion,
            classes, run_dir / "val", config.eval.exclude, {"checkpoint": str(best_path), "split": "val", "epoch": best["epoch"]},
        )  # fmt: skip
        test_metrics = None
        if test_set is not None:
            test_metrics = write_report(
                evaluate_dataset(segmenter, test_set, config.eval, run_dir / "test" / "overlays", train.amp),
                classes, run_dir / "test", config.eval.exclude, {"checkpoint": str(best_path), "split": "test", "epoch": best["epoch"]},
            )  # fmt: skip
            monitor.scalars(
                step,
                {
                    f"test/{k}": test_metrics[k] or 0.0
                    for k in ("miou", "overall_accuracy", "kappa", "mean_f1")
                },
            )
            monitor.info(
                f"test (weights of epoch {best['epoch']}):\n"
                + (run_dir / "test" / "metrics.txt").read_text()
            )
        else:
            monitor.info("no test split configured (data.test): the test report is skipped")
    finally:
        monitor.close()
    return FinetuneResult(
        run_dir, best_path, int(best["epoch"]), val_metrics, test_metrics, step, history, report
    )
