"""The downstream engine behind ``contrastseg finetune``: linear probe, decoder training, fine-tuning.

A network of the pretrained checkpoint's architecture (or another decoder family, ``model.name``,
on its backbone) gets a fresh 1x1 classifier for the
labeled data's classes; the chosen parts (``backbone``, ``backbone+aspp`` or ``all``) are
loaded from the checkpoint (:func:`~contrastseg.models.pretrained.load_pretrained`). Modes
(GLCNet, Li et al. 2022, Sec. IV; linear evaluation as in SimCLR, Chen et al. 2020):

- ``linear``: the linear probe (:mod:`contrastseg.train.probe`): backbone, ASPP and decoder
  frozen *and* their BatchNorm layers kept in eval mode; the 1x1 classifier on the features
  the checkpoint trained (``linear.features``) is the softmax regression of the cached
  features of every labeled patch, solved to convergence for each L2 strength of
  ``linear.l2_grid``, the one with the best validation mIoU kept
  (:mod:`contrastseg.train.linear_fit`);
- ``decoder``: the backbone is frozen (BN in eval mode); ASPP, decoder and classifier train;
- ``finetune``: everything trains; pretrained parts at ``pretrained_lr_scale`` x lr, each
  level closer to the input at ``optim.layer_decay`` x more, BatchNorm statistics of the
  loaded parts kept when ``pretrained.freeze_bn``;
- ``lp-ft`` (LP-FT, Kumar et al., ICLR 2022): the classifier on the decoder features is first
  solved as in ``linear`` on the frozen network (BatchNorm frozen), then everything is
  fine-tuned from that head as in ``finetune`` (``optim.lr``, ``optim.warmup_steps``: the
  fine-tuning stage's own); the probe's weights are the first ``best.pt``, which fine-tuning
  replaces only with a better validation mIoU.

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

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from contrastseg import __version__
from contrastseg.data.labeled import LabeledDataset
from contrastseg.data.loader import build_loader, to_float
from contrastseg.losses.segmentation import (
    build_loss,
    count_labels,
    needs_class_counts,
    parse_loss_spec,
)
from contrastseg.models.pretrained import LoadReport
from contrastseg.train.checkpoint import (
    save_atomic,
)
from contrastseg.train.evaluate import (
    FINETUNE_FORMAT,
    Segmenter,
    evaluate_dataset,
    load_finetune_checkpoint,
)
from contrastseg.train.finetune_augment import official_augment
from contrastseg.train.finetune_config import FinetuneConfig, loss_spec
from contrastseg.train.finetune_model import (
    BN_ESTIMATION_BATCHES,
    build_finetune_optimizer,
    build_start_model,
    frozen_batchnorms,
    frozen_modules,
    labeled_split,
    set_train_mode,
    start_normalization,
)
from contrastseg.train.linear_fit import ProbeFit, cache_pixels, fit_probe_head
from contrastseg.train.loop import (
    TrainingTask,
    TrainState,
)
from contrastseg.train.monitor import RunMonitor
from contrastseg.train.optim import build_scheduler
from contrastseg.train.probe import (
    Patience,
    estimate_batchnorm,
)
from contrastseg.train.report import write_report
from contrastseg.train.run import TrainingRun
from contrastseg.train.runtime import (
    apply_num_threads,
    autocast_context,
    modes_kept,
    process_settings_kept,
    resolve_amp_dtype,
    resolve_memory_format,
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


class FinetuneTask(TrainingTask):
    """The fine-tuning step (augmented labeled patches -> segmenter -> loss) and its validation.

    At the end of every ``eval.every``-th epoch (and of the run) the segmenter is scored on the
    validation split by sliding-window inference; a better mIoU writes ``best.pt``, and
    ``patience`` validations without one stop the run (0 = never).
    """

    def __init__(
        self,
        config: FinetuneConfig,
        model: nn.Module,
        forward: nn.Module,
        criterion: nn.Module,
        generator: torch.Generator,
        frozen: list[nn.Module],
        segmenter: Segmenter,
        val_set: LabeledDataset,
        mean: list[float] | None,
        std: list[float] | None,
        memory_format: torch.memory_format,
        amp_dtype: torch.dtype | None,
        device: torch.device,
        content: Any,
        total_steps: int,
        epochs: int,
        best_path: Path,
    ) -> None:
        self.config, self.model, self.forward, self.criterion = config, model, forward, criterion
        self.generator, self.frozen, self.segmenter, self.val_set = (
            generator,
            frozen,
            segmenter,
            val_set,
        )
        self.mean, self.std, self.memory_format = mean, std, memory_format
        self.amp_dtype, self.device, self.content = amp_dtype, device, content
        self.ignore_index = val_set.ignore_index
        self.patience = config.train.patience
        self.best: dict[str, Any] = {"epoch": 0, "miou": -1.0, "metrics": {}, "stale": 0}
        self.best_confusion = None
        self.history: list[dict[str, float]] = []
        self.monitor: RunMonitor | None = None
        self.total_steps, self.epochs, self.best_path = total_steps, epochs, best_path
        self.steps_per_epoch = max(1, -(-total_steps // max(epochs, 1)))  # set exactly below
        # labeled pixels of the epoch's batches, summed on the device (one sync per epoch)
        self.labeled = torch.zeros((), dtype=torch.int64, device=device)
        self.batches = 0

    def log_name(self, key: str) -> str:
        return "loss/train" if key == "total" else super().log_name(key)

    def on_epoch_start(self, epoch: int) -> None:
        set_train_mode(self.model, self.frozen)
        self.labeled.zero_()
        self.batches = 0

    def train_step(self, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        images, masks = batch
        config = self.config
        x = to_float(
            images.to(self.device, non_blocking=True), config.data.scale, self.mean, self.std
        )
        y = masks.to(self.device, non_blocking=True)
        if config.train.augment and config.train.augment_recipe == "official":
            x, y = official_augment(x, y, self.generator, self.mean, self.std, self.ignore_index)
        elif config.train.augment:
            x, y = augment_batch(x, y, self.generator)
        self.labeled += (y != self.ignore_index).sum()
        self.batches += 1
        with autocast_context(self.device, self.amp_dtype):
            logits = self.forward(x.contiguous(memory_format=self.memory_format))
        return {"total": self.criterion(logits.float(), y)}

    def on_step_end(self, step: int, out: dict[str, Tensor]) -> bool:
        every = self.config.eval.every_steps
        if every is None or step % every or step >= self.total_steps:
            return False  # the last step validates at the end of its epoch
        return self.validate((step - 1) // self.steps_per_epoch, step)

    def on_epoch_end(self, epoch: int, step: int) -> bool:
        config = self.config
        if self.batches and int(self.labeled) == 0:
            raise ConfigError(
                f"epoch {epoch + 1}: its training masks hold no labeled pixel (every pixel is "
                f"ignore_index {self.ignore_index} or nodata): there is nothing to train on; "
                "check data.label_fraction / label_list, ignore_values and the masks"
            )
        if step < self.total_steps and (
            config.eval.every_steps is not None or (epoch + 1) % config.eval.every
        ):
            return False
        return self.validate(epoch, step)

    def validate(self, epoch: int, step: int) -> bool:
        """Score val; a better mIoU writes best.pt; True when patience is exhausted."""
        config, monitor = self.config, self.monitor
        confusion = evaluate_dataset(
            self.segmenter, self.val_set, config.eval, None, config.train.amp
        )
        metrics = confusion.compute(config.eval.exclude)
        miou = metrics["miou"] if metrics["miou"] is not None else 0.0
        values = {
            f"val/{k}": metrics[k] or 0.0 for k in ("miou", "overall_accuracy", "kappa", "mean_f1")
        }
        self.history.append(monitor.scalars(step, values))
        best = self.best
        rule = Patience(self.patience, best["miou"], best.get("stale", 0))
        improved = rule.update(miou)
        monitor.info(f"epoch {epoch + 1}/{self.epochs} step {step}: val mIoU {100 * miou:.2f}"
                     + (" (best so far)" if improved else f" (best {100 * best['miou']:.2f} at epoch {best['epoch']})"))  # fmt: skip
        if improved:
            self.best = {"epoch": epoch + 1, "miou": miou, "metrics": metrics, "stale": 0}
            self.best_confusion = confusion
            best_pt = {**self.content(), "best": dict(self.best), "step": step, "epoch": epoch + 1}
            save_atomic(best_pt, self.best_path)
        else:
            best["stale"] = rule.stale
        if rule.exhausted:
            monitor.info(
                f"val mIoU has not improved for {rule.stale} validation(s) "
                f"(patience {self.patience}): stopping at step {step}"
            )
            return True
        return False

    def resume(self, payload: dict[str, Any], path: Path) -> None:
        """Weights, validation history and best record of a step checkpoint of this run.

        Raises:
            ValueError: ``path`` holds no training state (``best.pt``) or another network.
        """
        missing = [k for k in ("optimizer", "scheduler", "rng", "history") if k not in payload]
        if missing:
            raise ValueError(
                f"{path} is not a resumable checkpoint (it lacks {', '.join(missing)}; best.pt "
                "holds weights only): resume from a step_*.pt in the run's checkpoints folder"
            )
        problems = state_dict_mismatches(self.model.state_dict(), payload["model"])
        if problems:
            raise ValueError(
                f"{path} does not fit the model this config builds: " + " | ".join(problems)
            )
        self.model.load_state_dict(payload["model"])
        self.history, self.best = list(payload["history"]), dict(payload["best"])
        # best.pt is written at every improvement, step checkpoints only every few steps: the
        # interrupted run may have validated a better model after this checkpoint. Those
        # weights are on disk and were scored on val, so they stay the best so far (the
        # record and best.pt then agree whatever the repeated epochs score).
        if self.best_path.is_file():
            written = load_finetune_checkpoint(self.best_path).get("best") or {}
            if written.get("miou", -1.0) > self.best["miou"]:
                self.best = written

    def report_selected(
        self, test_set: LabeledDataset | None, run_dir: Path, step: int
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Load ``best.pt`` into the model and write its val and test reports.

        Returns:
            The val and test metrics (None without a test split).
        """
        config, monitor, best, amp = self.config, self.monitor, self.best, self.config.train.amp
        selected = load_finetune_checkpoint(self.best_path)
        self.model.load_state_dict(selected["model"])
        confusion = self.best_confusion
        if confusion is None:  # selected before a resume: score it again
            confusion = evaluate_dataset(self.segmenter, self.val_set, config.eval, None, amp)
        classes, exclude = self.segmenter.classes, config.eval.exclude
        about = lambda split: {"checkpoint": str(self.best_path), "split": split,  # noqa: E731
                               "epoch": best["epoch"]}  # fmt: skip
        val_metrics = write_report(confusion, classes, run_dir / "val", exclude, about("val"))
        if test_set is None:
            monitor.info("no test split configured (data.test): the test report is skipped")
            return val_metrics, None
        overlays = run_dir / "test" / "overlays"
        test_metrics = write_report(
            evaluate_dataset(self.segmenter, test_set, config.eval, overlays, amp),
            classes, run_dir / "test", exclude, about("test"),
        )  # fmt: skip
        keys = ("miou", "overall_accuracy", "kappa", "mean_f1")
        monitor.scalars(step, {f"test/{k}": test_metrics[k] or 0.0 for k in keys})
        monitor.info(
            f"test (weights of epoch {best['epoch']}):\n"
            + (run_dir / "test" / "metrics.txt").read_text()
        )
        return val_metrics, test_metrics

    def checkpoint_content(self) -> dict[str, Any]:
        return {**self.content(), "best": dict(self.best), "history": list(self.history)}


def run_finetune(config: FinetuneConfig) -> FinetuneResult:
    """Train a segmenter on a label fraction, select it on val, score it once on test.

    Raises:
        ConfigError: settings that cannot work with this data (no val split, band mismatch ...).
        TrainingDiverged: the loss became NaN/Inf.
        ValueError / FileNotFoundError: unreadable data or weights, a mismatching checkpoint.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("contrastseg finetune runs in one process; launch it without torchrun")
    with process_settings_kept():
        return _finetune(config)


def _finetune(config: FinetuneConfig) -> FinetuneResult:
    train, device = config.train, resolve_device(config.train.device)
    apply_num_threads(train.num_threads)
    seed_everything(train.seed, train.deterministic, device)
    dataset = labeled_split(config, "train", True)
    val_set = labeled_split(config, "val", True)
    test_set = labeled_split(config, "test", False)
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

    model, model_config, pretrain, report, loaded = build_start_model(
        config, dataset.num_classes, bands
    )
    mean, std = start_normalization(config, pretrain, bands)
    frozen = frozen_modules(model, config.mode)
    for module in frozen:
        module.requires_grad_(False)
    # kept in eval mode during training: frozen parts, and pretrained BatchNorm when asked
    eval_modules = frozen + frozen_batchnorms(model, config, loaded)
    features = model.classifier_features
    amp_dtype = resolve_amp_dtype(train.amp, device)
    memory_format = resolve_memory_format(train.channels_last, device)
    model.to(device, memory_format=memory_format)
    net = torch.compile(model) if train.compile else model
    spec = loss_spec(config.loss, config.loss_args)
    counts = None
    if needs_class_counts(parse_loss_spec(spec)):
        counts = sum(
            count_labels(dataset[i][1], dataset.num_classes, dataset.ignore_index)
            for i in range(len(dataset))
        )
    criterion = build_loss(spec, dataset.num_classes, dataset.ignore_index, counts).to(device)
    optimizer = build_finetune_optimizer(model, config, report)
    scheduler = build_scheduler(optimizer, total_steps, config.optim, len(loader))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    generator = torch.Generator(device=device).manual_seed(train.seed * 1_000_003 + 17)

    with TrainingRun(config, f"finetune-{config.mode}-{time.strftime('%Y%m%d-%H%M%S')}") as run:
        run_dir = run.run_dir
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

        def payload_base() -> dict[str, Any]:
            """What every fine-tuning checkpoint (step_*.pt and best.pt) holds about the segmenter."""
            return {
                "format": FINETUNE_FORMAT, "version": __version__, "config": to_dict(config),
                "model_config": dict(model_config), "in_channels": bands,
                "num_classes": dataset.num_classes, "classes": classes, "palette": dataset.palette,
                "ignore_index": dataset.ignore_index, "bands": config.data.bands, "scale": config.data.scale,
                "normalize": {"mean": mean, "std": std}, "model": model.state_dict(),
                "pretrained": None if report is None else {
                    "path": report.path, "parts": report.parts, "loaded": len(report.loaded),
                    "missing": report.missing, "unexpected": report.unexpected},
            }  # fmt: skip

        task = FinetuneTask(
            config, model, net, criterion, generator, eval_modules, segmenter, val_set, mean, std,
            memory_format, amp_dtype, device, payload_base, total_steps, epochs, run_dir / "best.pt",
        )  # fmt: skip
        task.steps_per_epoch = len(loader)
        state = TrainState(model, optimizer, scheduler, scaler, generator)
        saved_state = run.resume(load_finetune_checkpoint)
        resume = run.resume_from
        if saved_state is not None:
            task.resume(saved_state, resume)
        loop = run.start(state, run.loop_settings(total_steps, batch_size), net, ("test/",))
        monitor = task.monitor = run.monitor
        run.announce(
            f"contrastseg {__version__} finetune ({config.mode}): {type(model).name} on "
            f"{model_config['arch']}, {bands} band(s), "
            f"{len(dataset)} labeled patch(es), {len(val_set)} val / {len(test_set) if test_set else 0} test "
            f"image(s); {len(loader)} steps/epoch, {total_steps} steps on {device}"
            + (f"; {report.summary()}" if report else "; random initialisation")
        )
        if config.mode in ("linear", "lp-ft") and resume is None:
            monitor.info(
                f"linear probe on frozen {features} features: {model.feature_channels(features)} "
                f"channels at stride {model.feature_stride(features)}; softmax regression, L2 "
                f"from {config.linear.l2_grid} on val"
            )
        # the probe (linear, and lp-ft's first stage) reads the network frozen, BN included
        probing = config.mode in ("linear", "lp-ft") and resume is None
        probed = model.part_modules() if probing else frozen
        unloaded = [m for name, m in model.named_children() if m in probed and name not in loaded]
        if unloaded and resume is None:
            estimate_loader = build_loader(
                dataset,
                batch_size,
                train.num_workers,
                shuffle=False,
                drop_last=True,
                seed=train.seed,
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
        if probing:
            fit, confusion = solve_head(
                model, config, dataset, val_set, segmenter, batch_size, device, mean, std,
                memory_format, amp_dtype,
            )  # fmt: skip
            monitor.info(f"linear probe ({features} features): {fit.summary()}")
            metrics = confusion.compute(config.eval.exclude)
            values = {
                f"val/{k}": metrics[k] or 0.0
                for k in ("miou", "overall_accuracy", "kappa", "mean_f1")
            }
            task.history.append(monitor.scalars(0, {**values, "probe/l2": fit.l2}))
            task.best = {
                "epoch": 0, "miou": metrics["miou"] or 0.0, "metrics": metrics, "stale": 0,
                "l2": fit.l2,
            }  # fmt: skip
            task.best_confusion = confusion
            save_atomic({**payload_base(), "best": dict(task.best), "step": 0, "epoch": 0},
                        run_dir / "best.pt")  # fmt: skip
            monitor.info(
                f"linear probe: val mIoU {100 * task.best['miou']:.2f}"
                + (" (fine-tuning starts from this head)" if config.mode == "lp-ft" else "")
            )
        step = 0
        if config.mode != "linear":
            step = loop.run(task, loader).step
        best = task.best

        val_metrics, test_metrics = task.report_selected(test_set, run.run_dir, step)
    return FinetuneResult(
        run_dir, task.best_path, int(best["epoch"]), val_metrics, test_metrics, step, task.history,
        report,
    )  # fmt: skip


def solve_head(
    model: nn.Module,
    config: FinetuneConfig,
    dataset: LabeledDataset,
    val_set: LabeledDataset,
    segmenter: Segmenter,
    batch_size: int,
    device: torch.device,
    mean: list[float] | None,
    std: list[float] | None,
    memory_format: torch.memory_format,
    amp_dtype: torch.dtype | None,
) -> tuple[ProbeFit, Any]:
    """The linear probe's head, solved on the frozen network and put into ``model.classifier``.

    The features the classifier reads are computed once for every labeled training patch (no
    augmentation; the network in eval mode), the softmax regression is solved for each L2
    strength of ``linear.l2_grid`` (:func:`~contrastseg.train.linear_fit.fit_probe_head`), and
    each head is scored on the validation split; the best one stays in the model.

    Returns:
        ``(fit, confusion)``: the fit and the validation confusion matrix of the chosen head.
    """
    settings = config.linear
    loader = build_loader(
        dataset, batch_size, config.train.num_workers, shuffle=False, drop_last=False,
        seed=config.train.seed,
    )  # fmt: skip
    batches = (
        (
            to_float(images.to(device), config.data.scale, mean, std).contiguous(
                memory_format=memory_format
            ),
            masks.to(device),
        )
        for images, masks in loader
    )
    with modes_kept(model), autocast_context(device, amp_dtype):
        x, y = cache_pixels(
            model.classifier_input, batches, dataset.ignore_index, settings.pixel_step,
            settings.max_cells,
        )  # fmt: skip
    if len(y) == 0:
        raise ConfigError(
            "the labeled training patches hold no labeled pixel (every mask pixel is "
            f"data.ignore_index={dataset.ignore_index}): the linear probe has nothing to fit"
        )
    confusions: dict[int, Any] = {}

    def score(head: nn.Module) -> float:
        model.classifier.load_state_dict(head.state_dict())
        confusion = evaluate_dataset(segmenter, val_set, config.eval, None, config.train.amp)
        confusions[len(confusions)] = confusion
        return confusion.compute(config.eval.exclude)["miou"] or 0.0

    fit = fit_probe_head(x, y, dataset.num_classes, settings.l2_grid, score, settings.max_iter)
    model.classifier.load_state_dict(fit.head.state_dict())
    tried = sorted(fit.fits, reverse=True)  # the order fit_probe_head scored them in
    if confusions:
        return fit, confusions[tried.index(fit.l2)]
    return fit, evaluate_dataset(segmenter, val_set, config.eval, None, config.train.amp)
