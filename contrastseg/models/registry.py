"""``model.name`` -> network class, and the part names every loader / exporter / freezer uses.

:func:`build_model` is the one place that turns a model config into a network; weights
loading (:mod:`contrastseg.models.pretrained`), the linear probe, fine-tuning modes and export
ask the network (or its class) for its parts instead of keeping lists of key prefixes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from contrastseg.models.base import SegmentationNet
from contrastseg.models.deeplab import DeepLabV3Plus
from contrastseg.models.fpn import FPN
from contrastseg.models.unet import UNet

if TYPE_CHECKING:
    from contrastseg.config import ModelConfig

#: The networks ``model.name`` chooses from (the first is the default).
MODELS: dict[str, type[SegmentationNet]] = {
    "deeplabv3plus": DeepLabV3Plus,
    "unet": UNet,
    "fpn": FPN,
}
DEFAULT_MODEL = "deeplabv3plus"
#: Every part name of every network, input to output (a state-dict prefix each).
ALL_PARTS: tuple[str, ...] = tuple(dict.fromkeys(p for c in MODELS.values() for p in c.parts))
#: Every part that sits in front of some network's encoder features.
ALL_ENCODER_PARTS: tuple[str, ...] = tuple(
    dict.fromkeys(p for c in MODELS.values() for p in c.encoder_parts)
)
#: ``pretrained.parts`` / ``--parts`` selections: the backbone, the parts in front of the
#: encoder features (``backbone+aspp`` is the DeepLabV3+ spelling of ``encoder``), everything.
PART_SELECTIONS = ("backbone", "backbone+aspp", "encoder", "all")


def model_class(name: str | None) -> type[SegmentationNet]:
    """The network class of ``model.name`` (``None`` = DeepLabV3+).

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    name = DEFAULT_MODEL if name is None else name
    if name not in MODELS:
        raise ValueError(f"model.name: unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name]


def part_names(
    model: SegmentationNet | type[SegmentationNet] | str | None, selection: str
) -> tuple[str, ...]:
    """The parts of ``model`` (a network, its class or its ``model.name``) that ``selection`` names.

    Raises:
        ValueError: an unknown selection.
    """
    cls = model if isinstance(model, type) else type(model)
    if model is None or isinstance(model, str):
        cls = model_class(model)
    if selection == "backbone":
        return ("backbone",)
    if selection in ("backbone+aspp", "encoder"):
        return cls.encoder_parts
    if selection == "all":
        return cls.parts
    raise ValueError(f"parts must be one of {', '.join(PART_SELECTIONS)}, got {selection!r}")


def _value(config: ModelConfig | Mapping[str, Any], key: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def build_model(
    config: ModelConfig | Mapping[str, Any],
    in_channels: int,
    num_classes: int | None = None,
    classifier_features: Literal["decoder", "encoder", "backbone"] = "decoder",
    backbone_weights: bool = True,
) -> SegmentationNet:
    """The network ``config.name`` names, built from a :class:`~contrastseg.config.ModelConfig`.

    Args:
        config: a ``ModelConfig`` or its dict (``config["model"]`` of a checkpoint; keys of
            other networks are ignored, missing keys take their defaults).
        in_channels: input bands.
        num_classes: classifier outputs; ``None`` = no classifier (pretraining).
        classifier_features: what the classifier reads (see :data:`CLASSIFIER_FEATURES`).
        backbone_weights: load ``config.backbone_weights`` when it is set.

    Raises:
        ValueError: an unknown ``model.name`` or an impossible setting.
    """
    cls = model_class(_value(config, "name"))
    common: dict[str, Any] = {
        "num_classes": num_classes,
        "arch": _value(config, "arch", "resnet50"),
        "in_channels": in_channels,
        "output_stride": _value(config, "output_stride", 16),
        "backbone_weights": _value(config, "backbone_weights") if backbone_weights else None,
        "classifier_features": classifier_features,
    }
    decoder_channels = _value(config, "decoder_channels")
    if decoder_channels is not None:
        common["decoder_channels"] = decoder_channels
    extra = cls.config_kwargs(lambda key, default=None: _value(config, key, default))
    return cls(**common, **extra)
