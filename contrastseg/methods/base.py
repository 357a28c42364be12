"""What every self-supervised method is made of, and the registry that finds one by name.

A method is one file in :mod:`contrastseg.methods`: a config dataclass (a subclass of
:class:`MethodConfig` with the method's own keys), and a :class:`Method` module that owns the
method's projection heads and turns the network's features of the two views into named
losses. The training engine knows nothing else about it:

1. :meth:`Method.prepare` (no gradient) computes what the method needs from the view pair
   besides the images, e.g. matched regions from the index maps;
2. the engine runs the network on both views (the decoder only if :attr:`Method.uses_decoder`,
   i.e. when the method trains ``decoder`` features, :attr:`Method.trained_features`);
3. :meth:`Method.forward` returns a dict with the scalar ``"total"`` to back-propagate, one
   entry per loss part (logged as ``loss/<name>``) and detached diagnostics whose names hold
   a ``/`` (logged as they are, e.g. ``regions/valid_fraction``).

``@register_method`` adds a method to the registry; ``method.name`` in a config picks it (and
its config class: the ``method`` section is a union of the method configs discriminated by
``name``, see :func:`method_sections`).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

from pydantic import Field
from torch import Tensor, nn

from contrastseg.augment.views import ViewPair
from contrastseg.losses.ntxent import NegativeQueue
from contrastseg.metrics import embedding_health
from contrastseg.models.base import DeepLabFeatures, SegmentationNet
from contrastseg.models.config import unknown_name
from contrastseg.utils.sections import (
    Bool,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Str,
    registries_changed,
    section,
)

_REGISTRY: dict[str, type[Method]] = {}
DEFAULT_METHOD = "glcnet"


@section("method")
class MethodConfig:
    """Settings every method has: its name and the NT-Xent settings of its branches."""

    name: Str = DEFAULT_METHOD
    """the method: simclr, global_style, local, glcnet or dense (each has its own keys below)"""
    temperature: PositiveFloat = 0.5
    """NT-Xent temperature"""
    decoupled: Bool = False
    """leave the positive out of the NT-Xent denominator and add 1e-8 to it (the official GLCNet
    code)"""
    gather: Bool = True
    """gather embeddings from every process, so negatives come from the global batch"""
    queue_size: NonNegativeInt = 0
    """embeddings of earlier batches kept per branch as extra NT-Xent negatives (a MoCo-style
    queue, no gradient); 0 = off"""

    def check_views(self, views_size: int) -> None:
        """Refuse settings that cannot work with views of this size (none here)."""


@section("method")
class RegionsConfig(MethodConfig):
    """Settings of methods that contrast matched regions (:func:`~contrastseg.augment.match_regions`)."""

    num_regions: PositiveInt = 4
    """matched region pairs per image (local branch)"""
    region_size: PositiveInt = 48
    """side of the matched regions in view pixels (local branch)"""
    region_overlap: Bool = True
    """``false``: after each view-1 window is drawn, the source pixels under it leave the
    candidates, so no later centre lies in an earlier window (the official draw)"""

    def check_views(self, views_size: int) -> None:
        if self.region_size > views_size:
            raise ValueError(
                f"method.region_size ({self.region_size}) is larger than views.size "
                f"({views_size}): a region must fit inside a view"
            )


def negative_queue(config: MethodConfig, dim: int) -> NegativeQueue | None:
    """A branch's queue of ``config.queue_size`` negatives of dimension ``dim`` (None at 0)."""
    return NegativeQueue(config.queue_size, dim) if config.queue_size else None


#: A head's hidden and output widths: a non-empty list of positive integers.
Widths = Annotated[list[PositiveInt], Field(min_length=1)]


class Method(nn.Module):
    """Base of the self-supervised methods: heads and losses on the network's features.

    Subclasses set the class attributes and implement :meth:`forward` (and
    :meth:`prepare` when they need more than the views).

    Attributes:
        name: the registry name (``method.name``).
        config_class: the method's config dataclass.
        trained_features: the features the method's losses train: ``encoder`` (the global
            branch) and/or ``decoder`` (local and dense branches); each network maps them to
            its parts (:meth:`parts_trained`), what a linear probe of its checkpoints may
            read (see :mod:`contrastseg.train.probe`).
        uses_decoder: the network runs its decoder for this method (``decoder`` among the
            trained features; set from them).
    """

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    trained_features: ClassVar[tuple[str, ...]] = ("encoder",)
    uses_decoder: ClassVar[bool] = False
    #: whether :meth:`forward` adds its embedding-health diagnostics (``health/*``): the
    #: training loop turns them on for the steps it logs only (they cost a few reductions
    #: and an N x N similarity of up to HEALTH_MAX_PAIRS embeddings per branch)
    diagnostics: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        unknown = set(cls.trained_features) - {"encoder", "decoder"}
        if unknown:
            raise TypeError(f"{cls.__name__}.trained_features: unknown features {sorted(unknown)}")
        cls.uses_decoder = "decoder" in cls.trained_features

    @classmethod
    def parts_trained(cls, network: SegmentationNet | type[SegmentationNet]) -> tuple[str, ...]:
        """The parts of ``network`` (a network or its class) this method's losses train."""
        return network.trained_parts(cls.trained_features)

    def __init__(self, config: MethodConfig, net: SegmentationNet) -> None:
        super().__init__()
        self.config = config

    def prepare(self, pair: ViewPair, generator: Any, num_source_pixels: int) -> dict[str, Any]:
        """What :meth:`forward` needs from the view pair besides the features (no gradient).

        Args:
            pair: the views and their index maps.
            generator: the views' random generator (for random sampling).
            num_source_pixels: ``H * W`` of the images the views were made from.
        """
        return {}

    def forward(
        self, feats1: DeepLabFeatures, feats2: DeepLabFeatures, **inputs: Any
    ) -> dict[str, Tensor]:
        """Named losses (``"total"`` first) and detached diagnostics of one step."""
        raise NotImplementedError

    def health(
        self, branch: str, z1: Tensor, z2: Tensor, valid: Tensor | None = None
    ) -> dict[str, Tensor]:
        """:func:`health` of a branch on steps with :attr:`diagnostics`, else nothing."""
        return health(branch, z1, z2, valid) if self.diagnostics else {}

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available as ``method.name: <cls.name>``."""
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__name__} needs a class attribute 'name'")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"a method named {cls.name!r} is registered already")
    _REGISTRY[cls.name] = cls
    registries_changed()  # the configs' method section can now pick it by name
    return cls


def available_methods() -> list[str]:
    """The registered method names, sorted."""
    return sorted(_REGISTRY)


def get_method(name: str, key: str = "method.name", source: str | None = None) -> type[Method]:
    """The method class registered as ``name``.

    Raises:
        ConfigError: no such method (the message lists the close matches and every name).
    """
    if name not in _REGISTRY:
        raise unknown_name("method", name, available_methods(), repr(key), source)
    return _REGISTRY[name]


def method_config(name: str = DEFAULT_METHOD, **settings: Any) -> MethodConfig:
    """The config of method ``name`` with its defaults, updated by ``settings``."""
    return get_method(name).config_class(name=name, **settings)


def build_method(config: MethodConfig, net: SegmentationNet) -> Method:
    """The :class:`Method` module that ``config.name`` selects, for this network."""
    method = get_method(config.name)
    if not isinstance(config, method.config_class):
        raise TypeError(
            f"method {config.name!r} takes a {method.config_class.__name__}, "
            f"got a {type(config).__name__}"
        )
    return method(config, net)


def method_sections() -> dict[str, type[MethodConfig]]:
    """The config class of every registered method, by name, the default first (what the
    ``method`` section's ``name`` picks, see :func:`contrastseg.config.MethodSection`)."""
    names = sorted(_REGISTRY, key=lambda n: (n != DEFAULT_METHOD, n))
    return {name: _REGISTRY[name].config_class for name in names}


def drop_foreign_method_keys(data: Any, key: str = "method", source: str | None = None) -> Any:
    """A raw ``method`` mapping without the keys of *another* registered method.

    Keys of another method (e.g. ``region_size`` after switching to ``simclr`` with ``--set``)
    are dropped with a warning, so that one base config serves every method; a key that no
    method has, or an unknown name, is left for the validation to refuse.
    """
    if not isinstance(data, Mapping):
        return data
    name = data.get("name", DEFAULT_METHOD)
    if name not in _REGISTRY:
        return data
    own = {f.name for f in dataclasses.fields(_REGISTRY[name].config_class)}
    foreign = sorted(k for k in data if k not in own and k in all_method_keys())
    if foreign:
        warnings.warn(
            f"{', '.join(f'{key}.{k}' for k in foreign)}"
            f"{' in ' + source if source else ''}: not a setting of method {name!r}; ignored",
            UserWarning,
            stacklevel=2,
        )
    return {k: v for k, v in data.items() if k not in foreign}


def all_method_keys() -> set[str]:
    """Every config key of every registered method."""
    return {f.name for m in _REGISTRY.values() for f in dataclasses.fields(m.config_class)}


def health(branch: str, z1: Tensor, z2: Tensor, valid: Tensor | None = None) -> dict[str, Tensor]:
    """A branch's embedding-health diagnostics as ``health/<branch>/<statistic>`` entries.

    See :func:`contrastseg.metrics.embedding_health`; ``valid`` (any shape with ``N``
    elements) marks the pairs that count.
    """
    flat = None if valid is None else valid.reshape(-1)
    return {
        f"health/{branch}/{k}": v
        for k, v in embedding_health(z1.detach(), z2.detach(), flat).items()
    }
