"""Typed configuration of ``contrastseg pretrain``, loaded from YAML with ``--set`` overrides.

``views`` also accepts ``preset: glcnet | glcnet_official | simclr`` (the recipe, with the file's other
``views`` keys applied over it). A config file has one mapping per section (``data``, ``views``, ``normalize``, ``model``,
``method``, ``optim``, ``train``, ``run``); every key has a default, so a file names only
what it changes. Unknown keys, wrong types and impossible values are errors that name the
key and the file. ``load_pretrain_config`` returns a :class:`PretrainConfig`;
``contrastseg.utils.configtools.to_dict`` turns it back into plain YAML-safe data, which is
what the run directory and the checkpoints keep.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from contrastseg.augment.config import ViewsConfig
from contrastseg.data.config import UnlabeledDataConfig
from contrastseg.methods.base import MethodConfig, method_config
from contrastseg.utils.configtools import (
    ConfigError,
    apply_overrides,
    from_dict,
    load_yaml,
    merge_mappings,
    to_dict,
)

__all__ = [
    "ConfigError",
    "MethodConfig",
    "ModelConfig",
    "NormalizeConfig",
    "OptimConfig",
    "PretrainConfig",
    "RunConfig",
    "TrainConfig",
    "load_pretrain_config",
]

T = TypeVar("T")

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class NormalizeConfig:
    """Per-band normalisation applied on the device after the views (on ``[0, 1]``-scaled data)."""

    #: YAML written by ``contrastseg stats`` (keys ``mean`` and ``std``); overrides mean/std
    stats_file: str | None = None
    #: per-band mean of the scaled data; None = no centring
    mean: list[float] | None = None
    #: per-band standard deviation of the scaled data; None = no scaling
    std: list[float] | None = None

    def __post_init__(self) -> None:
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError(f"normalize.std must be positive, got {self.std}")
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ValueError(
                f"normalize.mean has {len(self.mean)} values but normalize.std has {len(self.std)}"
            )


@dataclass
class ModelConfig:
    """The DeepLabV3+ encoder-decoder that is pretrained."""

    #: backbone: resnet18, resnet34, resnet50 or resnet101
    arch: Literal["resnet18", "resnet34", "resnet50", "resnet101"] = "resnet50"
    #: input bands; None = the data's band count
    in_channels: int | None = None
    #: output stride of the backbone (ASPP rates scale with it)
    output_stride: Literal[8, 16, 32] = 16
    #: optional ResNet weights file in torchvision key names to start from
    backbone_weights: str | None = None
    #: channels of the ASPP branches and output (the encoder features)
    aspp_channels: int = 256
    #: channels of the decoder's 3x3 convolutions (the decoder features)
    decoder_channels: int = 256
    #: channels the stride-4 skip is reduced to
    low_level_channels: int = 48
    #: depthwise-separable 3x3 convolutions in ASPP and decoder
    separable: bool = False
    #: dropout after the ASPP fusion
    aspp_dropout: float = 0.5

    def __post_init__(self) -> None:
        if self.in_channels is not None and self.in_channels < 1:
            raise ValueError(f"model.in_channels must be >= 1, got {self.in_channels}")
        for name in ("aspp_channels", "decoder_channels", "low_level_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.aspp_dropout < 1.0:
            raise ValueError(f"model.aspp_dropout must lie in [0, 1), got {self.aspp_dropout}")


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule (stepped every iteration)."""

    #: adam, adamw, sgd or lars
    name: Literal["adam", "adamw", "sgd", "lars"] = "adam"
    #: peak learning rate
    lr: float = 1e-3
    #: Adam / AdamW betas
    betas: tuple[float, float] = (0.9, 0.99)
    #: weight decay (on biases and normalisation weights too when decay_norm_and_bias)
    weight_decay: float = 1e-5
    #: also decay biases and normalisation weights (the official GLCNet code decays every
    #: parameter; ours leaves them out, as most contrastive recipes do)
    decay_norm_and_bias: bool = False
    #: multiply lr by the number of processes (the official GLCNet code: 1e-3 x world size)
    scale_lr_with_world_size: bool = False
    #: SGD / LARS momentum
    momentum: float = 0.9
    #: LARS trust coefficient
    lars_eta: float = 0.001
    #: linear warmup length in optimizer steps
    warmup_steps: int = 0
    #: cosine decay to the final lr after warmup, constant, or exponential (lr * gamma ** t)
    schedule: Literal["cosine", "constant", "exponential"] = "cosine"
    #: what the schedule counts: optimizer steps, or epochs (lr changes once per epoch, as
    #: torch's CosineAnnealingLR / the official GLCNet fine-tuning's lr * 0.98 per epoch)
    schedule_unit: Literal["step", "epoch"] = "step"
    #: factor per schedule unit of the exponential schedule
    gamma: float = 0.98
    #: final learning rate as a fraction of lr (cosine)
    min_lr_ratio: float = 0.0
    #: final learning rate of the cosine in absolute terms (replaces min_lr_ratio when set;
    #: the official GLCNet pretraining: 4e-8)
    min_lr: float | None = None
    #: clip the global gradient norm to this value; None = no clipping
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optim.betas must lie in [0, 1), got {self.betas}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"optim.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        if self.schedule not in ("cosine", "constant", "exponential"):
            raise ValueError(
                f"optim.schedule must be cosine, constant or exponential, got {self.schedule!r}"
            )
        if self.schedule_unit not in ("step", "epoch"):
            raise ValueError(
                f"optim.schedule_unit must be step or epoch, got {self.schedule_unit!r}"
            )
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"optim.gamma must lie in (0, 1], got {self.gamma}")
        if self.min_lr is not None and not 0.0 <= self.min_lr <= self.lr:
            raise ValueError(f"optim.min_lr must lie in [0, optim.lr], got {self.min_lr}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"optim.grad_clip must be > 0 or null, got {self.grad_clip}")


@dataclass
class TrainConfig:
    """How long, on what, and how fast."""

    #: passes over the data
    epochs: int = 400
    #: stop after this many optimizer steps (overrides epochs); None = epochs decide
    max_steps: int | None = None
    #: images per process and step (the global batch is this times the number of processes)
    batch_size: int = 256
    #: DataLoader worker processes per training process
    num_workers: int = 4
    #: auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps
    device: str = "auto"
    #: mixed precision: auto (bf16 where supported, else fp16 with a grad scaler on CUDA; off on CPU), bf16, fp16, off
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    #: channels_last memory format for model and inputs (faster convolutions on GPUs)
    channels_last: bool = True
    #: wrap the model in torch.compile
    compile: bool = False
    #: seed of weights, data order, views and regions
    seed: int = 0
    #: deterministic algorithms (slower; bitwise-reproducible resume on CPU)
    deterministic: bool = False
    #: SyncBatchNorm across processes (CUDA only)
    sync_bn: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"train.epochs must be >= 1, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"train.max_steps must be >= 1 or null, got {self.max_steps}")
        if self.batch_size < 2:
            raise ValueError(
                f"train.batch_size must be >= 2 (NT-Xent needs negatives and BatchNorm needs "
                f"more than one sample), got {self.batch_size}"
            )
        if self.num_workers < 0:
            raise ValueError(f"train.num_workers must be >= 0, got {self.num_workers}")


@dataclass
class RunConfig:
    """Where the run writes, and how often."""

    #: folder holding one sub-folder per run
    root: str = "runs"
    #: run name (sub-folder of root); empty = method-arch-timestamp
    name: str = ""
    #: log scalars every N steps
    log_every: int = 10
    #: log view pairs with their matched regions every N steps (0 = never)
    image_every: int = 200
    #: write a checkpoint every N steps (and always at the end)
    checkpoint_every: int = 500
    #: keep the newest K step checkpoints
    keep_last: int = 3
    #: never (refuse a run folder that has checkpoints), auto (continue from the newest), or a checkpoint path
    resume: str = "never"
    #: show a tqdm progress bar
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("log_every", "checkpoint_every", "keep_last"):
            if getattr(self, name) < 1:
                raise ValueError(f"run.{name} must be >= 1, got {getattr(self, name)}")
        if self.image_every < 0:
            raise ValueError(f"run.image_every must be >= 0, got {self.image_every}")


@dataclass
class PretrainConfig:
    """Everything ``contrastseg pretrain`` needs."""

    #: unlabeled imagery (empty roots = built-in demo scenes)
    data: UnlabeledDataConfig = field(default_factory=UnlabeledDataConfig)
    #: the two views (t1, t2) made on the device
    views: ViewsConfig = field(default_factory=ViewsConfig)
    #: per-band normalisation after the views
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    #: the DeepLabV3+ that is pretrained
    model: ModelConfig = field(default_factory=ModelConfig)
    #: the self-supervised method (method.name picks it and its keys)
    method: MethodConfig = field(default_factory=method_config)
    #: optimizer and schedule
    optim: OptimConfig = field(default_factory=OptimConfig)
    #: length, batch, device, precision
    train: TrainConfig = field(default_factory=TrainConfig)
    #: outputs: run folder, logging, checkpoints
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        if self.views.size > self.data.patch_size:
            raise ValueError(
                f"views.size ({self.views.size}) is larger than data.patch_size "
                f"({self.data.patch_size}): a view is cut from a patch"
            )
        self.method.check_views(self.views.size)
        bands = self.data.bands
        if (
            self.model.in_channels is not None
            and bands is not None
            and len(bands) != self.model.in_channels
        ):
            raise ValueError(
                f"model.in_channels is {self.model.in_channels} but data.bands selects {len(bands)} bands"
            )


def resolve_config_path(path: str | os.PathLike[str]) -> Path:
    """A config path as given, or the name of a file in the package's ``configs/`` folder."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    for name in (str(path), f"{path}.yaml"):
        bundled = CONFIG_DIR / name
        if bundled.is_file():
            return bundled
    raise FileNotFoundError(
        f"config file not found: {path} (also looked in {CONFIG_DIR} for a bundled config)"
    )


def _expand_views_preset(data: dict, overrides: Sequence[str], source: str) -> list[str]:
    """Replace ``views.preset: glcnet|glcnet_official|simclr`` by the preset's values, under the file's own keys.

    Returns the overrides that remain once a ``--set views.preset=...`` has been applied.
    """
    rest = []
    for text in overrides:
        if text.replace(" ", "").startswith("views.preset="):
            data.setdefault("views", {})
            if not isinstance(data["views"], dict):
                raise ConfigError(f"'views' in {source}: expected a mapping")
            data["views"]["preset"] = text.split("=", 1)[1].strip()
        else:
            rest.append(text)
    views = data.get("views")
    if isinstance(views, dict) and "preset" in views:
        name = views.pop("preset")
        try:
            base = to_dict(ViewsConfig.preset(name))
        except ValueError as err:
            raise ConfigError(f"'views.preset' in {source}: {err}") from err
        data["views"] = merge_mappings(base, views)
    return rest


def load_config(
    cls: type[T],
    path: str | os.PathLike[str] | None,
    overrides: Sequence[str],
    default_name: str,
) -> T:
    """Load config dataclass ``cls`` from YAML (``None`` = bundled ``default_name``) plus ``--set``s.

    Raises:
        FileNotFoundError: the file does not exist.
        ConfigError: an unknown key, a wrong type or an impossible value, naming key and file.
    """
    resolved = resolve_config_path(path if path is not None else default_name)
    data = load_yaml(str(resolved))
    if any(f.name == "views" for f in dataclasses.fields(cls)):
        overrides = _expand_views_preset(data, overrides, str(resolved))
    data = apply_overrides(data, cls, overrides)
    source = str(resolved) + (" with --set overrides" if overrides else "")
    return from_dict(cls, data, source=source)


def load_pretrain_config(
    path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()
) -> PretrainConfig:
    """Load a pretraining config from YAML (``None`` = the bundled quickstart) plus ``--set`` overrides.

    Raises:
        FileNotFoundError: the file does not exist.
        ConfigError: an unknown key, a wrong type or an impossible value, naming key and file.
    """
    return load_config(PretrainConfig, path, overrides, "quickstart.yaml")
