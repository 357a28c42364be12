"""The linear probe: a 1x1 classifier on frozen features that were actually pretrained.

A linear probe measures a representation (SimCLR's linear evaluation, Chen et al. 2020): the
network is frozen, BatchNorm included, and only a per-pixel linear classifier trains. It
measures the pretraining only when the frozen features are the ones the method trained:

- **features** (:data:`~contrastseg.models.CLASSIFIER_FEATURES`): ``decoder``
  (stride 4), ``encoder`` (DeepLabV3+: ASPP output; U-Net / FPN: the backbone's last stage)
  or ``backbone`` (the ResNet's last stage); the parts in front of each are the network's
  own (:meth:`~contrastseg.models.SegmentationNet.feature_parts`). The default is the deepest part the checkpoint trained: SimCLR and the global
  style loss never run the decoder, so their checkpoints hold a randomly initialised one, and
  an exported backbone file holds the ResNet only (:func:`default_features`).
- **loading**: every part between the input and the probed features comes from the file; a
  part the file lacks, or that its method never trained, is an error naming it
  (:func:`required_parts`, :func:`check_trained`), never silently random.
- **random starts**: the running statistics of frozen BatchNorm layers that no file filled
  are estimated on the labeled training patches before the head trains
  (:func:`estimate_batchnorm`); otherwise a random baseline normalises with mean 0 and
  variance 1 and the probe sees features of arbitrary scale.

The head itself is the ``classifier`` of a :class:`~contrastseg.models.SegmentationNet` built
with ``classifier_features``, so a probe checkpoint is an ordinary fine-tuning checkpoint for
``evaluate``, ``predict`` and ``export``. :class:`Patience` is the early-stopping rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from contrastseg.methods import available_methods, get_method
from contrastseg.models.registry import ALL_PARTS, model_class, part_names
from contrastseg.train.runtime import modes_kept
from contrastseg.utils.configtools import ConfigError

#: The ``pretrained.parts`` value that loads exactly the parts in front of each kind of features.
LOAD_PARTS: dict[str, str] = {"backbone": "backbone", "encoder": "backbone+aspp", "decoder": "all"}
_DEEPEST_FIRST = ("decoder", "encoder", "backbone")


def feature_parts(features: str, model: str | None = None) -> tuple[str, ...]:
    """The parts the input passes through to reach ``features`` in network ``model`` (``model.name``)."""
    return model_class(model).feature_parts(features)


def parts_in_state(state: Mapping[str, Any]) -> set[str]:
    """The network parts (``backbone``, ``aspp``, ``decoder`` ...) a state dict has keys for."""
    return {key.split(".", 1)[0] for key in state} & set(ALL_PARTS)


def trained_parts(
    state: Mapping[str, Any], payload: Mapping[str, Any], model: str | None = None
) -> tuple[str, ...]:
    """The parts a weights file holds *trained* weights for, as parts of network ``model``.

    A pretraining checkpoint names its method, and a method's checkpoint holds every part of
    the network whether it trained it or not; other files (fine-tuning checkpoints, exports,
    torchvision weights) are taken at their word: every part present counts. When ``model``
    (a ``model.name``) differs from the checkpoint's network, only its backbone fits.
    """
    present = parts_in_state(state)
    config = payload.get("config") or {}
    method = config.get("method", {}).get("name")
    source = (config.get("model") or {}).get("name") if payload else None
    if payload.get("format") == "contrastseg.pretrain" and method in available_methods():
        parts = get_method(method).parts_trained(model_class(source))
        trained = tuple(p for p in parts if p in present)
    else:
        trained = tuple(p for p in ALL_PARTS if p in present)
    if payload and model_class(source) is not model_class(model):
        trained = tuple(p for p in trained if p == "backbone")
    return trained


def default_features(trained: Iterable[str] | None, model: str | None = None) -> str:
    """The deepest features whose parts were all trained; ``decoder`` for a random start."""
    if trained is None:
        return "decoder"
    trained = set(trained)
    for features in _DEEPEST_FIRST:
        if set(feature_parts(features, model)) <= trained:
            return features
    raise ConfigError("the weights file holds no backbone weights: nothing to probe")


def required_parts(features: str, parts: str, model: str | None = None) -> None:
    """Check that ``pretrained.parts`` loads every part in front of the probed ``features``.

    Raises:
        ConfigError: a frozen part that would be left at its initial values.
    """
    needed = feature_parts(features, model)
    left = [p for p in needed if p not in part_names(model, parts)]
    if left:
        raise ConfigError(
            f"a linear probe of {features} features runs {'+'.join(needed)} "
            f"frozen, but pretrained.parts={parts} does not load {', '.join(left)}: it would stay "
            f"randomly initialised. Use pretrained.parts={LOAD_PARTS[features]} (or auto)"
        )


def check_trained(
    features: str,
    trained: Iterable[str],
    path: str,
    method: str | None,
    model: str | None = None,
    setting: str = "linear.features",
) -> None:
    """Refuse to probe features behind a part that ``path`` did not train.

    Args:
        features: the probed features.
        trained: the parts ``path`` trained (:func:`trained_parts`).
        path: what the weights are (a file, or the run being pretrained): starts the message.
        method: the pretraining method that trained them, if known.
        model: ``model.name`` of the network.
        setting: the setting that chose ``features``, named in the message
            (``linear.features`` for fine-tuning, ``probe.features`` for the online probe,
            ``--features`` for ``contrastseg probe``).

    Raises:
        ConfigError: naming the untrained part, the features that can be probed and ``setting``.
    """
    trained = set(trained)
    left = [p for p in feature_parts(features, model) if p not in trained]
    if left:
        why = f"its method ({method}) never trains" if method else "it holds no weights for"
        possible = [f for f in _DEEPEST_FIRST if set(feature_parts(f, model)) <= trained]
        raise ConfigError(
            f"{path}: cannot probe {features} features: {why} {', '.join(left)}, which would "
            f"stay at its initial values; probe {' or '.join(possible) or 'nothing'} "
            f"({setting})"
        )


@torch.no_grad()
def estimate_batchnorm(
    model: nn.Module,
    modules: Iterable[nn.Module],
    batches: Iterable[Tensor],
    forward: Callable[[Tensor], Any],
    max_batches: int | None = None,
) -> int:
    """Set the running statistics of the BatchNorm layers in ``modules`` from data.

    Every BatchNorm layer of ``modules`` is reset and switched to a cumulative average
    (``momentum=None``), ``forward`` runs once per batch with only those layers in train mode
    and no gradient, and each layer ends with the mean of its per-batch means and (unbiased)
    variances: the statistics the layer would see on these images, not its initial 0 / 1.

    Args:
        model: the whole network (put back in its previous mode afterwards).
        modules: the parts whose BatchNorm statistics are estimated.
        batches: ready input batches ``(B, C, H, W)`` on the model's device, ``B >= 2``.
        forward: runs the network on a batch (e.g. ``model.classifier_input``).
        max_batches: stop after this many batches (None = all).

    Returns:
        The number of batches used (0 leaves the statistics as they were).
    """
    norms = [
        m
        for part in modules
        for m in part.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    if not norms:
        return 0
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.momentum) for m in norms]
    used = 0
    with modes_kept(model):
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        try:
            for batch in batches:
                if max_batches is not None and used >= max_batches:
                    break
                forward(batch)
                used += 1
        finally:
            for m, (mean, var, momentum) in zip(norms, saved, strict=True):
                m.momentum = momentum
                if used == 0:
                    m.running_mean.copy_(mean)
                    m.running_var.copy_(var)
    return used


class Patience:
    """Early stopping on a validation score: stop after ``patience`` validations without a new best.

    ``patience = 0`` never stops. The state is a plain dict (``best``, ``stale``) so that it
    goes into checkpoints and a resumed run stops where the uninterrupted one would have.
    """

    def __init__(self, patience: int, best: float = -1.0, stale: int = 0) -> None:
        if patience < 0:
            raise ValueError(f"patience must be >= 0, got {patience}")
        self.patience, self.best, self.stale = patience, best, stale

    def update(self, score: float) -> bool:
        """Record one validation; True when it is a new best (strictly higher)."""
        if score > self.best:
            self.best, self.stale = score, 0
            return True
        self.stale += 1
        return False

    @property
    def exhausted(self) -> bool:
        """True once ``patience`` validations in a row brought no improvement."""
        return self.patience > 0 and self.stale >= self.patience
