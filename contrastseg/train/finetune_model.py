"""What a fine-tune starts from: the segmenter, its weights, its frozen parts, its optimizer.

- :func:`build_start_model`: the network of the pretrained checkpoint's architecture (or of
  ``model``) with a fresh classifier on the features the mode reads (the linear probe: what
  the checkpoint trained, see :mod:`contrastseg.train.probe`), the chosen parts loaded, and
  the names of the parts some file filled;
- :func:`frozen_modules` / :func:`set_train_mode`: what ``mode`` freezes (parameters and
  BatchNorm statistics);
- :func:`start_normalization`: the per-band normalisation (config, stats file, or the
  pretraining checkpoint's);
- :func:`build_finetune_optimizer`: the optimizer, with ``pretrained_lr_scale`` for loaded
  parts and ``optim.layer_decay`` per level (:func:`layer_levels`);
- :func:`frozen_batchnorms`: the BatchNorm layers ``pretrained.freeze_bn`` keeps in eval mode;
- :func:`labeled_split`: a split of the labeled data, with errors that say what to set.
"""

from __future__ import annotations

from torch import nn

from contrastseg.data.labeled import LabeledDataset
from contrastseg.data.stats import normalization_values, stored_normalization
from contrastseg.models.pretrained import LoadReport, load_pretrained, read_state_dict
from contrastseg.models.registry import part_names
from contrastseg.train.evaluate import (
    build_segmenter,
    pretrained_model_config,
)
from contrastseg.train.finetune_config import FinetuneConfig
from contrastseg.train.optim import build_optimizer
from contrastseg.train.probe import (
    LOAD_PARTS,
    check_trained,
    default_features,
    required_parts,
    trained_parts,
)
from contrastseg.utils.configtools import ConfigError, to_dict

#: At most this many batches estimate the BatchNorm statistics of frozen, untrained parts.
BN_ESTIMATION_BATCHES = 200


def frozen_modules(model: nn.Module, mode: str) -> list[nn.Module]:
    """The parts of the network that ``mode`` freezes (parameters and BN statistics)."""
    if mode == "linear":
        return model.part_modules()
    if mode == "decoder":
        return [model.backbone]
    return []


def set_train_mode(model: nn.Module, frozen: list[nn.Module]) -> None:
    """``model.train()`` with the frozen parts in eval mode, so their BN statistics stay fixed."""
    model.train()
    for module in frozen:
        module.eval()


def start_normalization(
    config: FinetuneConfig, pretrain: dict, bands: int
) -> tuple[list | None, list | None]:
    """The per-band normalisation of a fine-tune: the config's ``normalize`` when it sets
    anything, else the values the pretraining checkpoint ``pretrain`` was trained on (see
    :func:`~contrastseg.data.stats.stored_normalization`), else none."""
    norm = config.normalize
    if norm.stats_file or norm.mean is not None or norm.std is not None or not pretrain:
        return normalization_values(norm, bands)
    return stored_normalization(pretrain, config.pretrained.path, bands)


def labeled_split(config: FinetuneConfig, split: str, required: bool) -> LabeledDataset | None:
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


def build_start_model(config: FinetuneConfig, num_classes: int, bands: int):
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
            model_config = pretrained_model_config(payload["config"]["model"], config.model)
            if payload.get("in_channels") not in (None, bands):
                raise ConfigError(
                    f"{path} was trained on {payload['in_channels']} band(s) but the labeled data has "
                    f"{bands}; select matching bands with data.bands"
                )
    parts, features = config.pretrained.parts, "decoder"
    if config.mode == "linear":
        name = model_config.get("name")
        trained = trained_parts(state, payload, name) if path else None
        features = config.linear.features
        if features == "auto":
            features = default_features(trained, name)
        if parts == "auto":
            parts = LOAD_PARTS[features]
        required_parts(features, parts, name)
        if path:
            method = (payload.get("config") or {}).get("method", {}).get("name")
            check_trained(features, trained or (), str(path), method, name)
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
        loaded_parts = set(part_names(model, parts))
    elif config.model.backbone_weights:
        model.backbone.load_weights(config.model.backbone_weights)
        loaded_parts = {"backbone"}
    return model, model_config, payload, report, loaded_parts


#: Backbone stages from the output to the input, for ``optim.layer_decay`` (the stem last).
_BACKBONE_LEVELS = ("layer4", "layer3", "layer2", "layer1")


def layer_levels(model: nn.Module) -> dict[str, int]:
    """The depth of every parameter counted from the output, for layer-wise lr decay.

    The classifier is level 0; then each part from the output to the input (DeepLabV3+:
    decoder 1, ASPP 2), the backbone's stages ``layer4`` .. ``layer1`` one level each and its
    stem (``conv1``, ``bn1``) the deepest level.
    """
    order: list[str] = []
    for part in reversed(model.parts):
        if part == "backbone":
            order += [f"backbone.{stage}" for stage in _BACKBONE_LEVELS] + ["backbone"]
        else:
            order.append(part)
    levels = {}
    for name, _ in model.named_parameters():
        hit = next((i for i, prefix in enumerate(order, 1) if name.startswith(prefix + ".")), None)
        levels[name] = 0 if name.startswith("classifier.") or hit is None else hit
    return levels


def frozen_batchnorms(
    model: nn.Module, config: FinetuneConfig, loaded: set[str]
) -> list[nn.Module]:
    """The BatchNorm layers of the loaded parts when ``pretrained.freeze_bn`` (kept in eval
    mode: their running statistics stay the pretrained ones), else none."""
    if not config.pretrained.freeze_bn:
        return []
    return [
        m
        for name, part in model.named_children()
        if name in loaded
        for m in part.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]


def build_finetune_optimizer(model: nn.Module, config: FinetuneConfig, report: LoadReport | None):
    """The optimizer of ``config.optim``; in finetune and lp-ft modes each parameter's lr is
    multiplied by ``pretrained_lr_scale`` when a file loaded it and by ``optim.layer_decay``
    to the power of its level (:func:`layer_levels`)."""
    settings = config.optim
    optimizer = build_optimizer(model, settings)
    if config.mode not in ("finetune", "lp-ft"):
        return optimizer
    scale = config.pretrained_lr_scale if report is not None else 1.0
    decay = settings.layer_decay
    if scale == 1.0 and decay == 1.0:
        return optimizer
    names = {id(p): n for n, p in model.named_parameters()}
    loaded = set(report.loaded) if report is not None else set()
    levels = layer_levels(model)
    groups = []
    for group in optimizer.param_groups:
        base = {k: v for k, v in group.items() if k != "params"}
        factors: dict[float, list] = {}
        for p in group["params"]:
            name = names[id(p)]
            factor = decay ** levels[name] * (scale if name in loaded else 1.0)
            factors.setdefault(factor, []).append(p)
        groups += [
            {**base, "params": params, "lr": base["lr"] * factor}
            for factor, params in sorted(factors.items(), reverse=True)
        ]
    optimizer.param_groups.clear()
    for group in groups:
        optimizer.add_param_group(group)
    return optimizer
