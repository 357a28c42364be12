"""The ``model`` config section: the keys every network shares, and one subclass per network.

Each network file declares its config class, a subclass of :class:`ModelConfig` with its own
keys and their defaults, and sets ``network`` to its ``model.name``; ``model.name`` in a
config picks the class (the ``model`` section is a union discriminated by ``name``), as ``method.name`` picks a
method's. Keys of another network (``aspp_channels`` after ``--set model.name=unet``) are
dropped with a one-line warning, so one base config serves every network; a key that no
network has is refused by the loader; an unknown name lists the close matches.

A checkpoint written before the per-network classes keeps every network's keys flat in its
``model`` mapping; :func:`model_config_from_mapping` reads it (the other networks' keys
are dropped silently there).
"""

from __future__ import annotations

import dataclasses
import difflib
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from contrastseg.models.backbones import check_arch
from contrastseg.utils.sections import ConfigError, Int, Str, from_dict, section

#: ``model.name`` when the config names none (and a fine-tune has no checkpoint to take it from).
DEFAULT_MODEL = "deeplabv3plus"
#: The config class of every network, by ``model.name``, in registration order (the default first).
_CONFIGS: dict[str, type[ModelConfig]] = {}


@section("model")
class ModelConfig:
    """The segmentation network: a backbone and the decoder ``model.name`` chooses."""

    name: Str | None = None
    """network (each has its own keys below); fine-tuning from a checkpoint: set it to swap the
    decoder, null = the checkpoint's (else deeplabv3plus)"""
    arch: Str = "resnet50"
    """backbone: resnet18, resnet34, resnet50, resnet101 (torchvision keys) or timm/NAME, any timm
    model with features_only (e.g. timm/convnext_tiny; the [timm] extra)"""
    in_channels: Int | None = None
    """input bands; None = the data's band count"""
    output_stride: Literal[8, 16, 32] = 16
    """output stride of the backbone (8 or 16: the last stages dilated; ASPP rates scale with it)"""
    backbone_weights: Str | None = None
    """optional ResNet weights file in torchvision key names to start from"""

    #: the ``model.name`` this class configures (set by each network's subclass)
    network: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.network:
            if cls.network in _CONFIGS and _CONFIGS[cls.network].__qualname__ != cls.__qualname__:
                raise ValueError(f"a model config for {cls.network!r} is declared already")
            _CONFIGS[cls.network] = cls

    def __post_init__(self) -> None:
        if self.name is None and self.network != DEFAULT_MODEL:
            self.name = self.network or None
        if self.name is not None and self.network and self.name != self.network:
            raise ValueError(
                f"model.name is {self.name!r} but {type(self).__name__} configures {self.network!r}"
            )
        self.check_arch()
        if self.in_channels is not None and self.in_channels < 1:
            raise ValueError(f"model.in_channels must be >= 1, got {self.in_channels}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_channels") and isinstance(value, int) and value < 1:
                raise ValueError(f"model.{f.name} must be >= 1, got {value}")
            if f.name.endswith("dropout") and isinstance(value, float) and not 0 <= value < 1:
                raise ValueError(f"model.{f.name} must lie in [0, 1), got {value}")

    def check_arch(self) -> None:
        """Refuse a backbone this network cannot be built on (here: not a ResNet or timm model)."""
        check_arch(self.arch)


def config_class(name: str | None, key: str = "model.name", source: str | None = None) -> type:
    """The config class of network ``name`` (``None`` = the default network).

    Raises:
        ConfigError: an unknown name (the message lists the close matches and every name).
    """
    name = DEFAULT_MODEL if name is None else name
    if name not in _CONFIGS:
        raise unknown_name("model", name, list(_CONFIGS), key, source)
    return _CONFIGS[name]


def unknown_name(
    kind: str, name: object, known: list[str], key: str, source: str | None
) -> ConfigError:
    """The error for an unknown ``model.name`` / ``method.name``: close matches, then every name."""
    close = difflib.get_close_matches(str(name), known, n=3)
    hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
    return ConfigError(
        f"{key}{' in ' + source if source else ''}: unknown {kind} {name!r}{hint}; "
        f"choose one of {', '.join(known)}"
    )


def _variant(
    data: Mapping[str, Any] | None, key: str, source: str | None, warn: bool
) -> tuple[type, dict[str, Any]]:
    data = dict(data or {})
    variant = config_class(data.get("name"), f"{key}.name", source)
    if "decoder_channels" in data and data["decoder_channels"] is None:
        del data["decoder_channels"]
    own = {f.name for f in dataclasses.fields(variant)}
    foreign = sorted(k for k in data if k not in own and k in all_model_keys())
    if foreign and warn:
        warnings.warn(
            f"{', '.join(f'{key}.{k}' for k in foreign)}"
            f"{' in ' + source if source else ''}: not a setting of model "
            f"{data.get('name') or DEFAULT_MODEL!r}; ignored",
            UserWarning,
            stacklevel=3,
        )
    return variant, {k: v for k, v in data.items() if k not in foreign}


def all_model_keys() -> set[str]:
    """Every key some network accepts (what ``--set model.KEY`` may name)."""
    return {f.name for c in _CONFIGS.values() for f in dataclasses.fields(c)}


def model_sections() -> dict[str, type[ModelConfig]]:
    """The config class of every network, by ``model.name``, the default first."""
    return dict(_CONFIGS)


def drop_foreign_model_keys(data: Any, key: str = "model", source: str | None = None) -> Any:
    """A raw ``model`` mapping without the keys of another network (dropped with a warning)
    and without ``decoder_channels: null`` (configs before the per-network classes: the
    network's default); an unknown name is left for the validation to refuse."""
    if not isinstance(data, Mapping) or (data.get("name") or DEFAULT_MODEL) not in _CONFIGS:
        return data
    return _variant(data, key, source, warn=True)[1]


def model_config(name: str | None = None, **settings: Any) -> ModelConfig:
    """The config of network ``name`` (``None`` = the default) with its defaults, updated by ``settings``.

    Keys of other networks in ``settings`` are dropped silently (one set of widths serves
    every network, as in tests and benchmarks); an unknown key is a ``TypeError``.
    """
    variant, kept = _variant({**settings, "name": name}, "model", None, warn=False)
    return variant(**kept)


def model_config_from_mapping(
    data: Mapping[str, Any] | ModelConfig, source: str | None = None
) -> ModelConfig:
    """A typed model config from a checkpoint's ``model`` mapping (flat keys of every network welcome).

    Keys no network has (``classifier_features``, written beside the model keys by
    fine-tuning) are ignored; the other networks' keys are dropped silently.

    Raises:
        ConfigError: an unknown ``name`` or an impossible value.
    """
    if isinstance(data, ModelConfig):
        return data
    known = all_model_keys()
    variant, kept = _variant(
        {k: v for k, v in data.items() if k in known}, "model", source, warn=False
    )
    return from_dict(variant, kept, source=source, prefix="model")
