"""Typed configuration of ``contrastseg finetune`` (and the evaluation settings it shares).

Sections: ``data`` (labeled data, label fraction), ``normalize``, ``model`` (used only
without a pretrained checkpoint; with one, its architecture wins), ``pretrained`` (file and
parts), ``mode`` (linear / decoder / finetune / lp-ft), ``loss``, ``optim``, ``train``, ``eval`` and
``run``. The defaults are the GLCNet fine-tuning recipe: Adam 1e-4, 150 epochs, batch 16,
cross-entropy.

The loss is a string in the catalogue's compact syntax (``"ce"``, ``"dice+ce"``,
``"0.5*dice+focal"``); arguments of a term go in ``loss_args`` as ``"term.arg=value"``
strings (the value is read as YAML), e.g. ``["focal.gamma=2.0", "ce.label_smoothing=0.1"]``:
the config loader's types cannot express a free mapping, and this keeps ``--set`` usable.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import field
from typing import Annotated, Any, Literal

import pydantic
from pydantic import Field

import contrastseg.config as _config
from contrastseg.config import (
    ModelSection,
    NormalizeConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    load_config,
    model_config,
)
from contrastseg.data.config import LabeledDataConfig
from contrastseg.losses.segmentation import build_loss, parse_loss_spec
from contrastseg.utils.sections import (
    Bool,
    ConfigError,
    Float,
    FloatPair,
    Int,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Str,
    on_registries_changed,
    section,
)

__all__ = [
    "EvalConfig",
    "FinetuneConfig",
    "FinetuneOptimConfig",
    "FinetuneRunConfig",
    "FinetuneTrainConfig",
    "LinearProbeConfig",
    "PretrainedConfig",
    "load_finetune_config",
    "loss_spec",
]


@section("pretrained")
class PretrainedConfig:
    """Which pretrained weights start the segmenter."""

    path: Str | None = None
    """pretraining checkpoint or exported weights; None = random initialisation"""
    parts: Literal["auto", "backbone", "backbone+aspp", "encoder", "all"] = "auto"
    """parts loaded: backbone, encoder (= backbone+aspp for DeepLabV3+, the GLCNet default; the
    backbone for U-Net / FPN) or all (adds the decoder); auto = encoder, and in linear mode
    every part in front of the probed features"""
    freeze_bn: Bool = False
    """keep the BatchNorm running statistics of the loaded parts as pretrained (their layers stay
    in eval mode; their scale and shift still train): for small fine-tuning batches"""


@section("linear")
class LinearProbeConfig:
    """The linear probe (``mode: linear``, and the first stage of ``mode: lp-ft``): which frozen
    features, and how its softmax regression is solved (to convergence, on cached features)."""

    features: Literal["auto", "decoder", "encoder", "backbone"] = "auto"
    """features the 1x1 head reads: decoder (stride 4), encoder (ASPP output) or backbone (last
    ResNet stage); auto = the deepest part the checkpoint's method trained (simclr,
    global_style: encoder; local, glcnet, dense: decoder; an exported backbone: backbone; a
    random start: decoder). lp-ft always reads the decoder (the segmenter's head)"""
    l2_grid: Annotated[list[NonNegativeFloat], Field(min_length=1)] = field(
        default_factory=lambda: [1e-2, 1e-3, 1e-4]
    )
    """L2 strengths of the head (objective mean(CE) + l2 / 2 * ||W||^2 on standardised features);
    one fit each, the best val mIoU is kept (ties: the stronger)"""
    max_iter: PositiveInt = 300
    """L-BFGS iterations per fit at most (it stops earlier once the gradient vanishes)"""
    max_cells: PositiveInt = 200000
    """labeled pixels the head is fitted on at most (evenly spaced over all patches)"""
    pixel_step: PositiveInt = 4
    """distance in pixels between two sampled pixels of a patch (both axes)"""


@section("optim")
class FinetuneOptimConfig(OptimConfig):
    """Optimizer and schedule of fine-tuning (GLCNet: Adam, lr 1e-4)."""

    lr: PositiveFloat = 1e-4
    """peak learning rate"""
    betas: FloatPair = (0.9, 0.999)
    """Adam / AdamW betas"""
    weight_decay: NonNegativeFloat = 0.0
    """weight decay (on biases and normalisation weights too when decay_norm_and_bias)"""
    layer_decay: Annotated[Float, Field(gt=0, le=1)] = 1.0
    """layer-wise learning-rate decay: the classifier trains at lr, each level closer to the input
    at this factor more (DeepLabV3+: decoder x d, ASPP x d^2, layer4 x d^3 ... the stem x d^7);
    1 = the same lr everywhere. Multiplies with pretrained_lr_scale"""


@section("train")
class FinetuneTrainConfig(TrainConfig):
    """Length, batch, device, precision of fine-tuning (GLCNet: 150 epochs, batch 16)."""

    epochs: PositiveInt = 150
    """passes over the labeled training patches"""
    batch_size: Int = 16
    """patches per step"""
    num_workers: NonNegativeInt = 2
    """DataLoader worker processes"""
    augment: Bool = True
    """augment the training patches (image and mask alike)"""
    augment_recipe: Literal["basic", "official"] = "basic"
    """``basic``: independent flips and rot90 (ours); ``official``: the official GLCNet fine-tuning
    augmentation (flips, rot90, shift-scale, HSV, band jitter)"""
    patience: NonNegativeInt = 0
    """stop after this many validations without a better val mIoU (0 = train to the step cap; in
    lp-ft mode, validations of the fine-tuning stage)"""


@section("eval")
class EvalConfig:
    """Sliding-window evaluation (validation during training, test at the end, evaluate, predict)."""

    window: Annotated[Int, Field(ge=16)] = 512
    """window side in pixels"""
    stride: Int | None = None
    """step between windows; None = window // 2"""
    batch_size: PositiveInt = 4
    """windows per forward pass"""
    flip: Bool = False
    """average with the logits of flipped windows (test-time augmentation)"""
    exclude: list[NonNegativeInt] = field(default_factory=list)
    """class ids left out of the means (e.g. ISPRS clutter = 5); OA and kappa keep them"""
    every: PositiveInt = 1
    """validate every N epochs (and always after the last)"""
    every_steps: PositiveInt | None = None
    """validate every N optimizer steps instead (and after the last); None = every N epochs. For
    label fractions whose epochs are long (or short) compared with the patience window"""
    overlays: NonNegativeInt = 4
    """images shown as prediction overlays in the reports"""

    def __post_init__(self) -> None:
        if self.stride is not None and not 1 <= self.stride <= self.window:
            raise ValueError(
                f"eval.stride must lie in [1, window={self.window}], got {self.stride}"
            )


@section("run")
class FinetuneRunConfig(RunConfig):
    """Where the fine-tuning run writes, and how often (checkpoints at epoch ends)."""

    log_every: PositiveInt = 10
    """log scalars every N steps"""
    checkpoint_every: PositiveInt = 200
    """write a checkpoint at the first epoch end after every N steps (and always at the end)"""
    keep_last: PositiveInt = 2
    """keep the newest K step checkpoints (best.pt is kept apart; 2, so a resume falls back past a
    damaged newest one)"""
    image_every: NonNegativeInt = 0
    """unused by fine-tuning (overlays come with each report)"""


@section("")
class FinetuneConfig:
    """Everything ``contrastseg finetune`` needs."""

    data: LabeledDataConfig = field(default_factory=lambda: LabeledDataConfig(preset="demo"))
    """labeled data: preset or folders, splits (val selects the model, test is scored once), label
    fraction"""
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    """per-band normalisation; all empty = the pretraining checkpoint's normalisation"""
    model: ModelSection = field(default_factory=model_config)
    """the network built without a checkpoint; with one, its architecture wins unless model.name
    names another decoder (its backbone is kept)"""
    pretrained: PretrainedConfig = field(default_factory=PretrainedConfig)
    """pretrained weights and the parts loaded"""
    mode: Literal["linear", "decoder", "finetune", "lp-ft"] = "finetune"
    """linear (only the 1x1 classifier, solved on the frozen network), decoder (backbone frozen),
    finetune (all) or lp-ft (the linear probe's head first, then all from it)"""
    linear: LinearProbeConfig = field(default_factory=LinearProbeConfig)
    """the linear probe: features and solver (mode: linear, and lp-ft's first stage)"""
    pretrained_lr_scale: Float = 1.0
    """learning-rate factor of the pretrained parts in finetune and lp-ft modes (1 = same lr)"""
    loss: Str = "ce"
    """segmentation loss in compact syntax, e.g. ce, dice+ce, 0.5*dice+focal"""
    loss_args: list[Str] = field(default_factory=list)
    """loss term arguments as 'term.arg=value' strings, e.g. focal.gamma=2.0"""
    optim: FinetuneOptimConfig = field(default_factory=FinetuneOptimConfig)
    """optimizer and schedule"""
    train: FinetuneTrainConfig = field(default_factory=FinetuneTrainConfig)
    """length, batch, device, precision"""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """sliding-window evaluation settings"""
    run: FinetuneRunConfig = field(default_factory=FinetuneRunConfig)
    """outputs: run folder, logging, checkpoints"""

    def __post_init__(self) -> None:
        if not 0.0 <= self.pretrained_lr_scale <= 1.0:
            raise ValueError(
                f"pretrained_lr_scale must lie in [0, 1], got {self.pretrained_lr_scale}"
            )
        if self.pretrained_lr_scale == 0.0 and self.mode in ("finetune", "lp-ft"):
            raise ValueError(
                "pretrained_lr_scale=0 in finetune mode freezes nothing cleanly; "
                "use mode: decoder to freeze the backbone"
            )
        try:
            build_loss(loss_spec(self.loss, self.loss_args), ignore_index=self.data.ignore_index)
        except ValueError as err:
            raise ValueError(f"loss / loss_args: {err}") from err


@on_registries_changed
def _rebuild_model_union() -> None:
    """Follow :mod:`contrastseg.config` when it rebuilt ``ModelSection`` for a network
    registered after import (its listener runs first: it was registered first)."""
    global ModelSection
    if ModelSection is not _config.ModelSection:
        ModelSection = _config.ModelSection
        pydantic.dataclasses.rebuild_dataclass(FinetuneConfig, force=True)


def loss_spec(loss: str, loss_args: Sequence[str] = ()) -> str | list[dict[str, Any]]:
    """``loss`` + ``loss_args`` -> a spec for :func:`~contrastseg.losses.segmentation.build_loss`.

    ``"0.5*dice+focal"`` with ``["focal.gamma=2"]`` becomes
    ``[{"name": "dice", "weight": 0.5}, {"name": "focal", "weight": 1.0, "gamma": 2}]``
    (read by :func:`~contrastseg.losses.segmentation.parse_loss_spec`).

    Raises:
        ValueError: an argument not written ``term.arg=value`` or naming a term not in ``loss``.
    """
    if not loss_args:
        return loss
    return [
        {"name": t.name, "weight": t.weight, **t.kwargs} for t in parse_loss_spec(loss, loss_args)
    ]


def load_finetune_config(
    path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()
) -> FinetuneConfig:
    """Load a fine-tuning config from YAML (``None`` = finetune_demo.yaml) plus ``--set`` overrides.

    Raises:
        FileNotFoundError: the file does not exist.
        ConfigError: an unknown key, a wrong type or an impossible value, naming key and file.
    """
    return load_config(FinetuneConfig, path, overrides, "finetune_demo.yaml")


__all__ += ["ConfigError"]
