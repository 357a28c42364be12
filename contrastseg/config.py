"""Typed configuration of ``contrastseg pretrain``, loaded from YAML with ``--set`` overrides.

``views`` also accepts ``preset: glcnet | glcnet_official | simclr`` and a labeled ``data``
section ``preset: potsdam | vaihingen | dubai | demo``: the preset's values are merged under the
section's own keys before typing (:func:`resolve_presets`), so explicit values win. A config file has one mapping per section (``data``, ``views``, ``normalize``, ``model``,
``method``, ``optim``, ``train``, ``run``); every key has a default, so a file names only
what it changes. Unknown keys, wrong types and impossible values are errors that name the
key and the file. ``load_pretrain_config`` returns a :class:`PretrainConfig`;
``contrastseg.utils.configtools.to_dict`` turns it back into plain YAML-safe data, which is
what the run directory and the checkpoints keep.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Callable, Sequence
from dataclasses import field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import pydantic
from pydantic import Field

from contrastseg.augment.config import ViewsConfig
from contrastseg.data.config import LabeledDataConfig, UnlabeledDataConfig
from contrastseg.data.presets import preset_mapping, resolve_preset
from contrastseg.methods.base import (
    DEFAULT_METHOD,
    MethodConfig,
    drop_foreign_method_keys,
    method_config,
    method_sections,
)
from contrastseg.models.config import (
    DEFAULT_MODEL,
    ModelConfig,
    drop_foreign_model_keys,
    model_config,
    model_sections,
)
from contrastseg.utils.configtools import apply_overrides, load_yaml, parse_override
from contrastseg.utils.sections import (
    Bool,
    ChoiceWord,
    ConfigError,
    Float,
    FloatPair,
    Int,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Str,
    from_dict,
    merge_mappings,
    on_registries_changed,
    section,
    tagged_union,
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
    "model_config",
]

T = TypeVar("T")

#: The bundled configs: package data, so a wheel or ``pip install .`` carries them; the
#: repository's top-level ``configs/`` is the user-facing copy (kept equal by a test).
CONFIG_DIR = Path(str(resources.files("contrastseg") / "configs"))


def _source(info: pydantic.ValidationInfo) -> str | None:
    return (info.context or {}).get("source")


def _method_input(value: Any, info: pydantic.ValidationInfo) -> Any:
    return drop_foreign_method_keys(value, info.field_name or "method", _source(info))


def _model_input(value: Any, info: pydantic.ValidationInfo) -> Any:
    return drop_foreign_model_keys(value, info.field_name or "model", _source(info))


#: The ``method`` section: the config class of the method its ``name`` picks (no name: the
#: default method); keys of another method are dropped with a warning.
MethodSection = tagged_union(method_sections(), DEFAULT_METHOD, _method_input)
#: The ``model`` section: the config class of the network its ``name`` picks (no name: the
#: default network); keys of another network are dropped with a warning.
ModelSection = tagged_union(model_sections(), DEFAULT_MODEL, _model_input)


@section("normalize")
class NormalizeConfig:
    """Per-band normalisation applied on the device after the views (on ``[0, 1]``-scaled data)."""

    stats_file: Str | None = None
    """YAML written by ``contrastseg stats`` (keys ``mean`` and ``std``); overrides mean/std"""
    mean: list[Float] | None = None
    """per-band mean of the scaled data; None = no centring"""
    std: list[Float] | None = None
    """per-band standard deviation of the scaled data; None = no scaling"""

    def __post_init__(self) -> None:
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError(f"normalize.std must be positive, got {self.std}")
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ValueError(
                f"normalize.mean has {len(self.mean)} values but normalize.std has {len(self.std)}"
            )


@section("optim")
class OptimConfig:
    """Optimizer and learning-rate schedule (stepped every iteration)."""

    name: Literal["adam", "adamw", "sgd", "lars"] = "adam"
    """adam, adamw, sgd or lars"""
    lr: PositiveFloat = 1e-3
    """peak learning rate"""
    betas: FloatPair = (0.9, 0.99)
    """Adam / AdamW betas"""
    weight_decay: NonNegativeFloat = 1e-5
    """weight decay (on biases and normalisation weights too when decay_norm_and_bias)"""
    decay_norm_and_bias: Bool = False
    """also decay biases and normalisation weights (the official GLCNet code decays every
    parameter; ours leaves them out, as most contrastive recipes do)"""
    scale_lr_with_world_size: Bool = False
    """multiply lr by the number of processes (the official GLCNet code: 1e-3 x world size)"""
    momentum: Float = 0.9
    """SGD / LARS momentum"""
    lars_eta: Float = 0.001
    """LARS trust coefficient"""
    warmup_steps: NonNegativeInt = 0
    """linear warmup length in optimizer steps"""
    schedule: Literal["cosine", "constant", "exponential"] = "cosine"
    """cosine decay to the final lr after warmup, constant, or exponential (lr * gamma ** t)"""
    schedule_unit: Literal["step", "epoch"] = "step"
    """what the schedule counts: optimizer steps, or epochs (lr changes once per epoch, as torch's
    CosineAnnealingLR / the official GLCNet fine-tuning's lr * 0.98 per epoch)"""
    gamma: Annotated[Float, Field(gt=0, le=1)] = 0.98
    """factor per schedule unit of the exponential schedule"""
    min_lr_ratio: Annotated[Float, Field(ge=0, le=1)] = 0.0
    """final learning rate as a fraction of lr (cosine)"""
    min_lr: Float | None = None
    """final learning rate of the cosine in absolute terms (replaces min_lr_ratio when set; the
    official GLCNet pretraining: 4e-8)"""
    grad_clip: PositiveFloat | None = None
    """clip the global gradient norm to this value; None = no clipping"""
    implementation: Literal["auto", "fused", "foreach", "for-loop"] = "auto"
    """how torch runs the Adam / AdamW / SGD update: auto = fused for Adam and AdamW where torch
    (>= 2.4) has the kernel for the parameters' device (CPU and CUDA), else torch's default (SGD:
    torch's fused SGD mishandles a step the fp16 gradient scaler skips); fused (one kernel over all
    parameters: on the CPU a ResNet-18 DeepLabV3+ Adam update takes 7 ms fused, 27 ms foreach and
    56 ms in torch's CPU default, the for-loop), foreach, or for-loop. The same update to float
    rounding; lars has one implementation"""

    def __post_init__(self) -> None:
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optim.betas must lie in [0, 1), got {self.betas}")
        if self.name == "lars" and self.implementation in ("fused", "foreach"):
            raise ValueError(
                f"optim.implementation: {self.implementation} is for adam, adamw and sgd; "
                "lars has one implementation (a for-loop): use auto"
            )
        if self.name == "sgd" and self.implementation == "fused":
            raise ValueError(
                "optim.implementation: fused is for adam and adamw: torch's fused SGD starts its "
                "momentum from uninitialised memory when the first step is one the fp16 gradient "
                "scaler skips; use auto (foreach on CUDA) or foreach"
            )
        if self.min_lr is not None and not 0.0 <= self.min_lr <= self.lr:
            raise ValueError(f"optim.min_lr must lie in [0, optim.lr], got {self.min_lr}")


@section("train")
class TrainConfig:
    """How long, on what, and how fast."""

    epochs: PositiveInt = 400
    """passes over the data"""
    max_steps: PositiveInt | None = None
    """stop after this many optimizer steps (overrides epochs); None = epochs decide"""
    batch_size: Int = 256
    """images per process and step (the global batch is this times the number of processes)"""
    num_workers: NonNegativeInt = 4
    """DataLoader worker processes per training process"""
    device: Str = "auto"
    """auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps"""
    amp: Annotated[Literal["auto", "bf16", "fp16", "off"], ChoiceWord] = "auto"
    """mixed precision: auto, bf16, fp16 or off. auto: bf16 on CUDA where supported, else fp16
    with a grad scaler; bf16 on a CPU with native bf16 (AVX512-BF16 or AMX: 1.6-1.7x the fp32
    step, benchmarks/cpu_step.py), else off"""
    channels_last: Bool | Literal["auto"] = "auto"
    """channels_last memory format for model and inputs: auto (on CUDA and on a CPU, where it
    measured 1.08-1.12x in fp32; off on MPS), true or false"""
    compile: Bool = False
    """wrap the model in torch.compile (on a CPU it measured no faster, 0.98-1.0x the eager
    ResNet-18 step, after 44-99 s of compiling: benchmarks/cpu_step.py; the first logged step
    compiles once more, the graph with the health statistics)"""
    seed: Int = 0
    """seed of weights, data order, views and regions"""
    deterministic: Bool = False
    """deterministic algorithms (slower; bitwise-reproducible resume on CPU; on CUDA cuBLAS's fixed
    workspace, and an operation without a deterministic kernel warns by name)"""
    sync_bn: Bool = False
    """SyncBatchNorm across processes (CUDA only)"""
    num_threads: Int | None = None
    """torch CPU threads of this process (torch.set_num_threads); None = auto, what torch picks
    (one per core). On a CPU shared with other jobs, fewer threads than cores run faster:
    threads that wait on each other stall every operation."""

    def __post_init__(self) -> None:
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(
                f"train.num_threads must be >= 1 or null (auto), got {self.num_threads}"
            )
        if self.batch_size < 2:
            raise ValueError(
                f"train.batch_size must be >= 2 (NT-Xent needs negatives and BatchNorm needs "
                f"more than one sample), got {self.batch_size}"
            )


@section("probe")
class ProbeConfig:
    """The online segmentation probe: a linear head on the frozen features, scored on val images."""

    every: NonNegativeInt = 0
    """probe every N optimizer steps (and at the last step); 0 = off"""
    data: LabeledDataConfig = field(default_factory=lambda: LabeledDataConfig(preset="demo"))
    """the probe's labeled data (preset or folders, splits, label_fraction): the train split fits
    the head, the val split is scored; its bands must be the pretraining bands"""
    features: Literal["auto", "decoder", "encoder", "backbone"] = "auto"
    """features probed: auto = what the method trains (decoder for glcnet/local/dense, encoder for
    simclr/global_style), or decoder / encoder / backbone"""
    max_patches: PositiveInt = 16
    """labeled training patches the head is fitted on (their features are computed once)"""
    max_cells: PositiveInt = 20000
    """labeled pixels the head is fitted on at most, drawn evenly from all"""
    pixel_step: PositiveInt = 4
    """distance in pixels between two sampled pixels of a patch (both axes)"""
    l2_grid: Annotated[list[NonNegativeFloat], Field(min_length=1)] = field(
        default_factory=lambda: [1e-2, 1e-3, 1e-4]
    )
    """L2 strengths of the head's softmax regression (solved to convergence by L-BFGS); with
    several, every 4th probe patch is held out to choose among them"""
    max_iter: PositiveInt = 300
    """L-BFGS iterations per fit at most"""
    encoder_too: Bool = True
    """with decoder features, also probe the encoder features (what a default fine-tune transfers),
    logged as probe/encoder/*; doubles the probe's validation cost"""
    window: Annotated[Int, Field(ge=16)] = 256
    """sliding-window side for the val images"""
    stride: Int | None = None
    """sliding-window step; None = window // 2"""
    batch_size: PositiveInt = 8
    """patches / windows per forward pass"""
    exclude: list[Int] = field(default_factory=list)
    """class ids left out of the means (OA and kappa keep them)"""

    def __post_init__(self) -> None:
        if self.stride is not None and not 1 <= self.stride <= self.window:
            raise ValueError(
                f"probe.stride must lie in [1, window={self.window}], got {self.stride}"
            )


@section("train")
class PretrainTrainConfig(TrainConfig):
    """How long, on what, how fast, and what counts as a collapsed embedding space."""

    collapse_std: Annotated[Float, Field(ge=0, lt=1)] = 0.1
    """a branch whose embedding spread (health/<branch>/std: 1 = spread over the sphere, 0 = every
    embedding the same) stays below this is reported as collapsed"""
    collapse_patience: PositiveInt = 3
    """consecutive log steps below collapse_std before the collapse is reported"""
    stop_on_collapse: Bool = False
    """stop the run (with a checkpoint) when a collapse is reported"""


@section("run")
class RunConfig:
    """Where the run writes, and how often."""

    root: Str = "runs"
    """folder holding one sub-folder per run"""
    name: Str = ""
    """run name (sub-folder of root); empty = method-arch-timestamp"""
    log_every: PositiveInt = 10
    """log scalars every N steps"""
    image_every: NonNegativeInt = 200
    """log view pairs with their matched regions every N steps (0 = never)"""
    checkpoint_every: PositiveInt = 500
    """write a checkpoint every N steps (and always at the end)"""
    keep_last: PositiveInt = 3
    """keep the newest K step checkpoints"""
    resume: Str = "never"
    """never (refuse a run folder that has checkpoints), auto (continue from the newest), or a
    checkpoint path"""
    progress: Bool = True
    """show a tqdm progress bar"""

    def __post_init__(self) -> None:
        check_run_name(self.name)


def check_run_name(name: str) -> None:
    """Refuse a ``run.name`` that is not one folder name inside ``run.root``.

    ``../x``, ``a/b``, ``/abs/path``, ``.`` and ``..`` would write (and overwrite
    ``config.yaml``, append to ``train.log``) outside the run root or into it; checked when
    the config is built, before anything is written.
    """
    if not name:
        return  # empty: a timestamped name
    separators = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
    if name in (".", "..") or any(sep in name for sep in separators) or "\0" in name:
        raise ValueError(
            f"run.name must be one folder name inside run.root (no '/', '\\', '.' or '..'), "
            f"got {name!r}; use run.root to write elsewhere"
        )


@section("")
class PretrainConfig:
    """Everything ``contrastseg pretrain`` needs."""

    data: UnlabeledDataConfig = field(default_factory=UnlabeledDataConfig)
    """unlabeled imagery (empty roots = built-in demo scenes)"""
    views: ViewsConfig = field(default_factory=ViewsConfig)
    """the two views (t1, t2) made on the device"""
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    """per-band normalisation after the views"""
    model: ModelSection = field(default_factory=model_config)
    """the network that is pretrained (model.name picks it and its keys)"""
    method: MethodSection = field(default_factory=method_config)
    """the self-supervised method (method.name picks it and its keys)"""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """optimizer and schedule"""
    train: PretrainTrainConfig = field(default_factory=PretrainTrainConfig)
    """length, batch, device, precision"""
    run: RunConfig = field(default_factory=RunConfig)
    """outputs: run folder, logging, checkpoints"""
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    """the online segmentation probe (off unless probe.every > 0)"""

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


def _name_unions() -> tuple[Any, Any]:
    return (
        tagged_union(method_sections(), DEFAULT_METHOD, _method_input),
        tagged_union(model_sections(), DEFAULT_MODEL, _model_input),
    )


_BUILT_FROM = (method_sections(), model_sections())


@on_registries_changed
def _rebuild_name_unions() -> None:
    """Rebuild ``MethodSection`` / ``ModelSection`` and the configs holding them when a method or
    network was registered after this module was imported (a user's ``@register_method``)."""
    global MethodSection, ModelSection, _BUILT_FROM
    now = (method_sections(), model_sections())
    complete = all(
        pydantic.dataclasses.is_pydantic_dataclass(c) for group in now for c in group.values()
    )
    if now == _BUILT_FROM or not complete:  # unchanged, or a section not yet decorated
        return
    MethodSection, ModelSection = _name_unions()
    _BUILT_FROM = now
    pydantic.dataclasses.rebuild_dataclass(PretrainConfig, force=True)


def bundled_configs() -> list[str]:
    """File names of the configs shipped inside the package (``contrastseg/configs/*.yaml``)."""
    return sorted(p.name for p in CONFIG_DIR.iterdir() if p.name.endswith(".yaml"))


def resolve_config_path(path: str | os.PathLike[str]) -> Path:
    """A config path as given, or the name of a config bundled with the package.

    ``quickstart``, ``quickstart.yaml`` and ``configs/quickstart.yaml`` (the repository's
    user-facing copy, as the README spells it) name the bundled file when no such file
    exists from the current folder, so an installed package finds its configs anywhere.
    """
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    if candidate.is_dir():
        raise ValueError(f"--config {path} is a folder; name the YAML file")
    names = [str(path), f"{path}.yaml"]
    if candidate.parent.name == "configs":
        names += [candidate.name, f"{candidate.name}.yaml"]
    for name in names:
        bundled = CONFIG_DIR / name
        if bundled.is_file():
            return bundled
    raise FileNotFoundError(
        f"config file not found: {path} (also looked for a bundled config in {CONFIG_DIR}: "
        f"{', '.join(bundled_configs())})"
    )


def _views_preset(name: str) -> dict:
    return to_dict(ViewsConfig.preset(name))  # type: ignore[arg-type]


#: Sections whose ``preset`` key names values merged under the section, by section class:
#: the preset's mapping, and whether ``preset`` is a field of the class (kept, for
#: information) or only a loading instruction (removed).
PRESET_SECTIONS: dict[type, tuple[Callable[[str], dict], bool]] = {
    LabeledDataConfig: (preset_mapping, True),
    ViewsConfig: (_views_preset, False),
}


def resolve_presets(
    data: dict, cls: type, overrides: Sequence[str] = (), source: str = "the config"
) -> dict:
    """Apply ``--set`` overrides to a raw config mapping, then merge each section's preset under it.

    A preset (``data.preset: dubai``, ``views.preset: simclr``) is a mapping merged *under*
    the user's section (:func:`~contrastseg.utils.configtools.merge_mappings`), so every
    value the file or a ``--set`` gives wins, also one equal to the field's default. A section
    without a ``preset`` key takes the preset of the class's default (the fine-tuning
    ``data`` section: ``demo``). The result is fully resolved: loading it again gives the
    same config.

    Raises:
        ConfigError: an unknown preset or key, naming the file.
    """
    hints = typing.get_type_hints(cls)
    sections = {f.name: f for f in dataclasses.fields(cls) if hints.get(f.name) in PRESET_SECTIONS}
    rest = []
    for text in overrides:
        key = text.split("=", 1)[0].strip()
        section = key.removesuffix(".preset")
        if (
            key.endswith(".preset")
            and section in sections
            and not PRESET_SECTIONS[hints[section]][1]
        ):
            # not a field of the section's class: apply_overrides would refuse it
            data.setdefault(section, {})
            if not isinstance(data[section], dict):
                raise ConfigError(f"'{section}' in {source}: expected a mapping")
            data[section]["preset"] = parse_override(text)[1]
        else:
            rest.append(text)
    data = apply_overrides(data, cls, rest)
    _merge_presets(data, cls, source)
    return data


def _holds_preset_sections(cls: Any) -> bool:
    """Whether dataclass ``cls`` has a preset section among its fields (``ProbeConfig.data``)."""
    if not dataclasses.is_dataclass(cls):
        return False
    hints = typing.get_type_hints(cls)
    return any(
        hints.get(f.name) in PRESET_SECTIONS or _holds_preset_sections(hints.get(f.name))
        for f in dataclasses.fields(cls)
    )


def _merge_presets(data: dict, cls: type, source: str, prefix: str = "") -> None:
    """Merge the preset of every preset section of ``cls`` under ``data``'s, in place; nested
    sections (``probe.data``) too."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint, name = hints.get(f.name), prefix + f.name
        if hint not in PRESET_SECTIONS:
            if _holds_preset_sections(hint):
                if data.get(f.name) is None:
                    data[f.name] = {}  # the defaults, whose preset is resolved like a file's
                if not isinstance(data[f.name], dict):
                    raise ConfigError(f"'{name}' in {source}: expected a mapping")
                _merge_presets(data[f.name], hint, source, f"{name}.")
            continue
        preset, keep = PRESET_SECTIONS[hint]
        section = data.get(f.name)
        if section is None:
            section = {}
        if not isinstance(section, dict):
            raise ConfigError(f"'{name}' in {source}: expected a mapping")
        default = None
        if keep and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory().preset  # e.g. the fine-tuning data's demo
        chosen = section.get("preset", default)
        if chosen is None:
            continue
        try:
            base = preset(chosen)
        except ValueError as err:
            raise ConfigError(f"'{name}.preset' in {source}: {err}") from err
        if keep:
            data[f.name] = resolve_preset(section, chosen)
        else:
            data[f.name] = merge_mappings(base, {k: v for k, v in section.items() if k != "preset"})


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
    data = resolve_presets(load_yaml(str(resolved)), cls, overrides, str(resolved))
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
