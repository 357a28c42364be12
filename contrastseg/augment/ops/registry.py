"""``extra:`` ops by name: any ``kornia.augmentation`` class (or one of this package's), checked.

:func:`check_op_spec` checks a config mapping ``{name: ..., **arguments}`` without building
anything (the name, whether an index map can follow the op, the argument names); the views
config calls it, so a bad op fails when the config is read. :func:`make_op` builds the op
once, when the view pipeline is built.

Geometric ops are accepted when their mapping is a matrix that keeps the view's size
(:data:`TRACKED_GEOMETRIC`): the view pipeline multiplies their ``transform_matrix`` into
the one source-to-view matrix it resamples with. Non-rigid warps (no matrix), crops, resizes
and pads (another size) and ops that mix samples are refused by name.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from typing import Any

import kornia.augmentation as K
from torch import nn

from contrastseg.augment.ops.band import (
    RandomBandColorJitter,
    RandomBandGaussianNoise,
    RandomBandGrayscale,
)
from contrastseg.augment.ops.geometric import RandomFlipChoice, RandomQuarterTurn
from contrastseg.augment.ops.glcnet import RandomGLCNetColor, RandomOpenCVBlur

#: Geometric ops whose pixel mapping is their ``transform_matrix`` (pixel centres at
#: integers) and which keep the view's size: they compose into the view's single warp.
#: Checked on a coordinate ramp in tests/augment/test_pipeline.py.
TRACKED_GEOMETRIC = (
    "RandomAffine",
    "RandomFlipChoice",
    "RandomHorizontalFlip",
    "RandomPerspective",
    "RandomQuarterTurn",
    "RandomRotation",
    "RandomRotation90",
    "RandomShear",
    "RandomTranslate",
    "RandomVerticalFlip",
)

#: Our classes, available to ``extra:`` by name like Kornia's.
OWN_OPS: dict[str, type[nn.Module]] = {
    cls.__name__: cls
    for cls in (
        RandomBandColorJitter,
        RandomBandGrayscale,
        RandomBandGaussianNoise,
        RandomQuarterTurn,
        RandomFlipChoice,
        RandomGLCNetColor,
        RandomOpenCVBlur,
    )
}


def _op_classes() -> dict[str, type[nn.Module]]:
    found: dict[str, type[nn.Module]] = {}
    for name in dir(K):
        obj = getattr(K, name)
        # Every module class, so that refused ones (mixing, 3D, containers) get a specific message.
        if isinstance(obj, type) and issubclass(obj, nn.Module) and not name.endswith("Base2D"):
            found[name] = obj
    found.update(OWN_OPS)
    return found


def _tuples(value: Any) -> Any:
    """YAML lists as tuples (Kornia's ranges and sizes are tuples)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def check_op_spec(spec: Any, where: str = "extra") -> type[nn.Module]:
    """The class an ``extra:`` mapping names, after checking the name and the argument names.

    Args:
        spec: ``{"name": <class of kornia.augmentation or of this package>, **arguments}``.
        where: the config key of ``spec``, named in errors (e.g. ``"views.t2.extra[0]"``).

    Returns:
        The op's class (nothing is built).

    Raises:
        ValueError: no or an unknown name (close matches listed), an op whose pixel mapping
            the view's single warp cannot follow (non-rigid warps, crops and resizes, mixing
            of samples), or an argument the op does not take.
    """
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise ValueError(
            f"{where}: expected a mapping with the op's class as 'name' and its arguments, "
            f"e.g. {{name: RandomMotionBlur, kernel_size: 5, angle: 30.0, direction: 0.5}}, got {spec!r}"
        )
    name = spec["name"]
    classes = _op_classes()
    if name not in classes:
        close = difflib.get_close_matches(name, list(classes), n=4, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"{where}: {name!r} is not an op of kornia.augmentation{hint}")
    cls = classes[name]
    if issubclass(cls, K.GeometricAugmentationBase2D) and name not in TRACKED_GEOMETRIC:
        raise ValueError(
            f"{where}: {name} is refused in a view: the view's single warp composes only geometric "
            "ops that map the view onto itself through their transform_matrix "
            f"({', '.join(TRACKED_GEOMETRIC)}); non-rigid warps have no such matrix, and crops, "
            "resizes and pads change the view size (set views.size and the views' crop instead)"
        )
    if not issubclass(cls, K.IntensityAugmentationBase2D | K.GeometricAugmentationBase2D):
        raise ValueError(
            f"{where}: {name} is refused in a view: it is not an intensity op, nor a geometric op "
            "with a transform matrix the view's warp can compose (it warps without a matrix, mixes "
            "samples, or is not a per-image 2D op)"
        )
    parameters = inspect.signature(cls.__init__).parameters
    accepted = [p for p in parameters if p != "self"]
    for key in spec:
        if key != "name" and key not in parameters:
            raise ValueError(
                f"{where}: {name} takes no argument {key!r}; it takes {', '.join(accepted)}"
            )
    if name in TRACKED_GEOMETRIC and spec.get("resample", "bilinear") not in (
        "bilinear",
        "BILINEAR",
    ):
        raise ValueError(
            f"{where}: {name} with resample={spec['resample']!r}: the view is resampled once, "
            "bilinearly, from all geometric ops together; drop the resample argument"
        )
    return cls


def make_op(spec: Mapping[str, Any], where: str = "extra") -> nn.Module:
    """Build the augmentation named by ``spec["name"]`` with the other keys as its arguments.

    Args:
        spec: ``{"name": <class of kornia.augmentation or of this package>, **arguments}``.
        where: the config key of ``spec``, named in errors (e.g. ``"views.t2.extra[0]"``).

    Returns:
        The module, ready to call on ``(B, C, H, W)`` images.

    Raises:
        ValueError: what :func:`check_op_spec` refuses, or a value the op refuses.
    """
    cls = check_op_spec(spec, where)
    kwargs = {k: _tuples(v) for k, v in spec.items() if k != "name"}
    try:
        op = cls(**kwargs)
    except Exception as err:  # Kornia raises ValueError, TypeError, AssertionError, ...
        raise ValueError(
            f"{where}: {spec['name']}({_arguments(kwargs)}) is refused: {err}"
        ) from err
    resample = getattr(op, "flags", {}).get("resample")
    if spec["name"] in TRACKED_GEOMETRIC and resample is not None and resample.name != "BILINEAR":
        raise ValueError(  # e.g. an integer code for resample that the name check let through
            f"{where}: {spec['name']} with resample={resample.name.lower()!r}: the view is "
            "resampled once, bilinearly; drop the resample argument"
        )
    return op


def _arguments(kwargs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def op_label(spec: Mapping[str, Any]) -> str:
    """Short text of an ``extra:`` op for titles and logs, e.g. ``RandomMotionBlur(p=0.3)``."""
    args = {k: v for k, v in spec.items() if k != "name"}
    return f"{spec.get('name')}({_arguments(args)})"
