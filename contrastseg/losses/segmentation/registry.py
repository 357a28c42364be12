"""Build a segmentation loss from a config value.

Accepted specs:

- a string of ``+``-separated terms, each ``name`` or ``weight*name``:
  ``"ce"``, ``"dice+ce"``, ``"0.5*dice + focal"``;
- a dict ``{"name": "focal_tversky", "gamma": 0.75}``, optionally with ``"weight"``;
- a list of such strings or dicts, summed.

:func:`parse_loss_spec` reads them (and the ``term.arg=value`` arguments a fine-tuning config
gives the terms of a string spec); :func:`build_loss` builds the modules.

``build_loss`` returns a :class:`WeightedSumLoss` whose ``forward`` gives the weighted sum;
unknown names or arguments raise ``ValueError`` that lists what exists.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
import yaml
from torch import Tensor, nn

from contrastseg.losses.segmentation.compound import (
    ComboLoss,
    DiceFocalLoss,
    ExpLogLoss,
    HybridFocalLoss,
    UnifiedFocalLoss,
)
from contrastseg.losses.segmentation.distribution import (
    BalancedBCELoss,
    CrossEntropyLoss,
    FocalLoss,
)
from contrastseg.losses.segmentation.lovasz import LovaszSoftmaxLoss
from contrastseg.losses.segmentation.region import (
    DiceLoss,
    FocalTverskyLoss,
    JaccardLoss,
    LogCoshDiceLoss,
    SensitivitySpecificityLoss,
    TverskyLoss,
)

# name -> (module class, default keyword arguments, one-line description)
_LOSSES: dict[str, tuple[type[nn.Module], dict[str, Any], str]] = {
    "ce": (CrossEntropyLoss, {}, "cross-entropy (optional class_weight, label_smoothing)"),
    "weighted_ce": (
        CrossEntropyLoss,
        {"class_weight": "balanced"},
        "cross-entropy with class weights, 'balanced' = n_pixels / (K * count_c) by default",
    ),
    "label_smoothing_ce": (
        CrossEntropyLoss,
        {"label_smoothing": 0.1},
        "cross-entropy with label smoothing 0.1 (Szegedy et al. 2016)",
    ),
    "balanced_bce": (
        BalancedBCELoss,
        {},
        "class-balanced binary cross-entropy, binary logits (Xie & Tu 2015)",
    ),
    "focal": (FocalLoss, {}, "focal loss, gamma and per-class alpha (Lin et al. 2017)"),
    "dice": (
        DiceLoss,
        {},
        "soft Dice per class, mean over present classes (Milletari 2016, Sudre 2017)",
    ),
    "jaccard": (JaccardLoss, {}, "soft Jaccard / IoU per class (Rahman & Wang 2016)"),
    "sensitivity_specificity": (
        SensitivitySpecificityLoss,
        {},
        "sensitivity-specificity loss (Brosch et al. 2015)",
    ),
    "tversky": (TverskyLoss, {}, "Tversky loss, alpha on FP, beta on FN (Salehi et al. 2017)"),
    "focal_tversky": (
        FocalTverskyLoss,
        {},
        "focal Tversky loss, (1 - TI_c)^gamma per class (Abraham & Khan 2019)",
    ),
    "log_cosh_dice": (LogCoshDiceLoss, {}, "log(cosh(Dice loss)) (Jadon 2020)"),
    "lovasz": (LovaszSoftmaxLoss, {}, "Lovász-softmax over present classes (Berman et al. 2018)"),
    "combo": (ComboLoss, {}, "alpha * weighted CE - (1 - alpha) * Dice (Taghanaki et al. 2019)"),
    "dice_focal": (DiceFocalLoss, {}, "Dice + focal (Zhu et al. 2019)"),
    "hybrid_focal": (
        HybridFocalLoss,
        {},
        "lambda * focal + (1 - lambda) * focal Tversky (Yeung et al. 2022)",
    ),
    "unified_focal": (UnifiedFocalLoss, {}, "symmetric unified focal loss (Yeung et al. 2022)"),
    "exp_log": (ExpLogLoss, {}, "exponential logarithmic loss (Wong et al. 2018)"),
}

_ALIASES = {
    "cross_entropy": "ce",
    "wce": "weighted_ce",
    "iou": "jaccard",
    "lovasz_softmax": "lovasz",
    "exponential_logarithmic": "exp_log",
}

# Filled in by build_loss from its own arguments, never by the spec.
_CONTEXT = ("ignore_index", "class_counts")

_NUMBER = r"[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?"
_TERM = re.compile(rf"^\s*(?:(?P<weight>{_NUMBER})\s*\*\s*)?(?P<name>[A-Za-z_]\w*)\s*$")
_FLOAT = re.compile(rf"[-+]?{_NUMBER}")


def _yaml_value(raw: str) -> Any:
    """A term argument's value read as YAML, ``1e-3`` as a float (YAML 1.2, as configs read it)."""
    value = yaml.safe_load(raw)
    return float(value) if isinstance(value, str) and _FLOAT.fullmatch(value) else value


def available_losses() -> dict[str, str]:
    """Registered loss names (aliases included) and a one-line description of each."""
    names = {name: description for name, (_, _, description) in _LOSSES.items()}
    names.update({alias: f"alias of {target!r}" for alias, target in _ALIASES.items()})
    return names


def loss_arguments(name: str) -> list[str]:
    """The keyword arguments a spec may give the loss ``name``."""
    cls = _LOSSES[_canonical(name)][0]
    params = inspect.signature(cls.__init__).parameters
    return [p for p in params if p not in ("self", *_CONTEXT)]


class WeightedSumLoss(nn.Module):
    """Weighted sum of segmentation losses.

    Attributes:
        names: term names, in order (a repeated name gets a ``_2`` suffix).
        weights: the weight of each term.
        terms: the loss modules.
        last_terms: detached value of each term from the latest ``forward``, for logging.
    """

    def __init__(
        self, names: Sequence[str], weights: Sequence[float], terms: Sequence[nn.Module]
    ) -> None:
        super().__init__()
        self.names = list(names)
        self.weights = [float(w) for w in weights]
        self.terms = nn.ModuleList(terms)
        self.last_terms: dict[str, float | Tensor] = {}

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """``sum_k weight_k * term_k(logits (B, K, H, W), target (B, H, W))`` as a 0-d tensor."""
        total: Tensor | None = None
        values = {}
        for name, weight, term in zip(self.names, self.weights, self.terms, strict=True):
            value = term(logits, target)
            values[name] = value.detach()
            total = weight * value if total is None else total + weight * value
        self.last_terms = values
        assert total is not None  # build_loss never makes an empty sum
        return total

    def extra_repr(self) -> str:
        return " + ".join(f"{w:g}*{n}" for n, w in zip(self.names, self.weights, strict=True))


def _canonical(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _LOSSES:
        listed = ", ".join(sorted(_LOSSES)) + "; aliases: " + ", ".join(sorted(_ALIASES))
        raise ValueError(f"unknown segmentation loss {name!r}; available: {listed}")
    return key


class LossTerm(NamedTuple):
    """One term of a loss spec: ``weight * name(**kwargs)``."""

    weight: float
    name: str
    kwargs: dict[str, Any]


def parse_loss_spec(spec: Any, args: Sequence[str] = ()) -> list[LossTerm]:
    """Read a loss spec (see the module docstring) into its terms; the one parser of specs.

    Args:
        spec: ``"0.5*dice+focal"``, ``{"name": "focal", "gamma": 2.0, "weight": 0.5}`` or a
            non-empty list of these.
        args: ``"term.arg=value"`` strings (the value read as YAML) giving arguments to the
            terms of a string ``spec`` named ``term`` (every such term), e.g. ``focal.gamma=2``;
            the ``loss_args`` of a fine-tuning config.

    Raises:
        ValueError: a malformed spec or ``args`` entry, or an entry naming a term not in ``spec``.
    """
    if isinstance(spec, str):
        terms = []
        for part in spec.split("+"):
            match = _TERM.match(part)
            if match is None:
                raise ValueError(
                    f"cannot read loss term {part.strip()!r} in {spec!r}; write terms as 'name' or "
                    "'weight*name' joined by '+', e.g. '0.5*dice+ce'"
                )
            weight = float(match["weight"]) if match["weight"] else 1.0
            terms.append(LossTerm(weight, match["name"], {}))
        for text in args:
            key, eq, raw = text.partition("=")
            term, dot, arg = key.strip().partition(".")
            if not eq or not dot or not arg:
                raise ValueError(
                    f"loss_args entry {text!r}: expected 'term.arg=value', e.g. focal.gamma=2"
                )
            hits = [t for t in terms if t.name == term]
            if not hits:
                raise ValueError(
                    f"loss_args entry {text!r} names term {term!r}, which is not in loss {spec!r}"
                )
            for hit in hits:
                hit.kwargs[arg.strip()] = _yaml_value(raw)
        return terms
    if args:
        raise ValueError(f"term arguments {list(args)} apply to a string loss spec, got {spec!r}")
    if isinstance(spec, Mapping):
        kwargs = dict(spec)
        if "name" not in kwargs:
            raise ValueError(
                f"loss spec {spec!r} has no 'name'; e.g. {{'name': 'focal', 'gamma': 2.0}}"
            )
        name = kwargs.pop("name")
        weight = kwargs.pop("weight", 1.0)
        if not isinstance(name, str):
            raise ValueError(f"loss name must be a string, got {name!r}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ValueError(f"weight of loss {name!r} must be a number, got {weight!r}")
        return [LossTerm(float(weight), name, kwargs)]
    if isinstance(spec, Sequence) and len(spec) > 0:
        return [term for item in spec for term in parse_loss_spec(item)]
    raise ValueError(
        f"loss spec must be a string like 'dice+ce', a dict with 'name', or a non-empty list of "
        f"these, got {spec!r}"
    )


def needs_class_counts(terms: Sequence[LossTerm]) -> bool:
    """Whether a term weights classes ``"balanced"`` (its own argument or its loss's default),
    so that counting the training labels once pays off (else each batch's labels count)."""
    return any("balanced" in {**_LOSSES[_canonical(t.name)][1], **t.kwargs}.values() for t in terms)


def _make(
    name: str,
    kwargs: dict[str, Any],
    ignore_index: int,
    class_counts: Tensor | None,
    num_classes: int | None,
) -> nn.Module:
    key = _canonical(name)
    cls, defaults, _ = _LOSSES[key]
    accepted = loss_arguments(key)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"loss {name!r} does not accept {unknown}; it accepts {accepted} (and 'weight')"
        )
    for arg in ("class_weight", "alpha"):
        value = kwargs.get(arg, defaults.get(arg))
        if num_classes is not None and isinstance(value, Sequence) and not isinstance(value, str):
            # Binary mode (one logit channel) scores two classes, background and foreground.
            if len(value) != max(num_classes, 2):
                raise ValueError(
                    f"loss {name!r}: {arg} has {len(value)} values but num_classes={num_classes}"
                )
    params = inspect.signature(cls.__init__).parameters
    context: dict[str, Any] = {"ignore_index": ignore_index}
    if "class_counts" in params:
        context["class_counts"] = class_counts
    try:
        return cls(**{**defaults, **kwargs, **context})
    except TypeError as err:  # e.g. a list given where a number belongs
        raise ValueError(f"loss {name!r}: bad arguments {kwargs}: {err}") from err


def build_loss(
    spec: str | Mapping[str, Any] | Sequence[str | Mapping[str, Any]],
    num_classes: int | None = None,
    ignore_index: int = 255,
    class_counts: Tensor | None = None,
) -> WeightedSumLoss:
    """Build a (weighted sum of) segmentation loss(es) from a config value.

    Args:
        spec: ``"dice+ce"``, ``"0.5*dice+focal"``, ``{"name": "focal_tversky", "gamma": 0.75}``,
            or a list of these; a dict may carry ``"weight"``. See :func:`available_losses`.
        num_classes: ``K``, to check per-class lists (``class_weight``, ``alpha``) early.
        ignore_index: label of ignored pixels, passed to every term.
        class_counts: ``(K,)`` pixel counts of the training labels for ``"balanced"`` class
            weights; without them "balanced" weights come from each batch's labels.

    Returns:
        A :class:`WeightedSumLoss` called as ``loss(logits (B, K, H, W), target (B, H, W))``.

    Raises:
        ValueError: an unknown name (the message lists the registered ones), an argument the
            loss does not take (the message lists the ones it does), or a malformed spec.
    """
    if class_counts is not None:
        class_counts = torch.as_tensor(class_counts)
        if num_classes is not None and class_counts.numel() != num_classes:
            raise ValueError(
                f"class_counts has {class_counts.numel()} entries but num_classes={num_classes}"
            )
    names: list[str] = []
    weights: list[float] = []
    modules: list[nn.Module] = []
    for weight, name, kwargs in parse_loss_spec(spec):
        modules.append(_make(name, kwargs, ignore_index, class_counts, num_classes))
        label = _canonical(name)
        suffix = 2
        while label in names:
            label = f"{_canonical(name)}_{suffix}"
            suffix += 1
        names.append(label)
        weights.append(weight)
    return WeightedSumLoss(names, weights, modules)
