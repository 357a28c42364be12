"""``model.name`` -> network class, and the part names every loader / exporter / freezer uses.

:func:`build_model` is the one place that turns a model config into a network; weights
loading (:mod:`contrastseg.models.pretrained`), the linear probe, fine-tuning modes and export
ask the network (or its class) for its parts instead of keeping lists of key prefixes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from contrastseg.models.base import SegmentationNet
from contrastseg.models.config import (
    DEFAULT_MODEL,
    ModelConfig,
    config_class,
    model_config_from_mapping,
)
from contrastseg.models.deeplab import DeepLabV3Plus
from contrastseg.models.deeplabv3 import DeepLabV3
from contrastseg.models.fcn import FCN
from contrastseg.models.fpn import FPN
from contrastseg.models.parsenet import ParseNet
from contrastseg.models.pspnet import PSPNet
from contrastseg.models.resunet import ResUNet
from contrastseg.models.segnet import SegNet
from contrastseg.models.unet import UNet

#: The networks ``model.name`` chooses from (the first is the default): one line per network.
MODELS: dict[str, type[SegmentationNet]] = {
    "deeplabv3plus": DeepLabV3Plus,
    "unet": UNet,
    "fpn": FPN,
    "fcn": FCN,
    "deeplabv3": DeepLabV3,
    "pspnet": PSPNet,
    "resunet": ResUNet,
    "parsenet": ParseNet,
    "segnet": SegNet,
}
for _name, _cls in MODELS.items():  # the config class each network file declares
    assert _cls.name == _name and _cls.config_class.network == _name, _name
assert next(iter(MODELS)) == DEFAULT_MODEL
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
        ValueError: an unknown name (a ``ConfigError``; the message lists the close matches
            and the known names).
    """
    return MODELS[config_class(name).network]


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


def build_model(
    config: ModelConfig | Mapping[str, Any],
    in_channels: int,
    num_classes: int | None = None,
    classifier_features: Literal["decoder", "encoder", "backbone"] = "decoder",
    backbone_weights: bool = True,
) -> SegmentationNet:
    """The network ``config.name`` names, built from its :class:`~contrastseg.models.ModelConfig`.

    Args:
        config: a ``ModelConfig`` (of the network's class) or a mapping (``config["model"]``
            of a checkpoint, also one with the flat keys of every network that checkpoints
            before the per-network config classes hold; keys of other networks are ignored,
            missing keys take their defaults).
        in_channels: input bands.
        num_classes: classifier outputs; ``None`` = no classifier (pretraining).
        classifier_features: what the classifier reads (see :data:`CLASSIFIER_FEATURES`).
        backbone_weights: load ``config.backbone_weights`` when it is set.

    Raises:
        ValueError: an unknown ``model.name`` or an impossible setting.
    """
    if type(config) is ModelConfig:  # the shared keys only: the named network's defaults
        config = dataclasses.asdict(config)
    config = model_config_from_mapping(config)
    return MODELS[config.network].from_config(
        config, in_channels, num_classes, classifier_features, backbone_weights
    )
