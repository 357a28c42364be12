"""Configuration of the paired views: one dataclass per op, one pipeline per view.

Defaults are our GLCNet-style recipe (Li et al., TGRS 2022): 224 x 224 views from random
resized crops (scale 0.4-1.0, ratio 3/4-4/3); view 1 is the crop only, view 2 adds
independent flips, rot90 (p 0.8, k in {1, 2, 3}), ColorJitter (p 0.8), band-mean
"grayscale" (p 0.1), Gaussian blur (p 0.5) and Gaussian noise (p 0.5). It differs from the
official code's view 2 in every op after the crop (docs/recipe.md);
``ViewsConfig.preset("glcnet_official")`` is the official one, and
``ViewsConfig.preset("simclr")`` SimCLR's symmetric strong pipeline (Chen et al., ICML
2020, appendix A) on both views.

Plain data: the sections hold values and check them; the Kornia modules are built from them
once, by :mod:`contrastseg.augment.pipeline`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import field
from typing import Annotated, Any, Literal

from pydantic import Field

from contrastseg.utils.sections import (
    Float,
    FloatPair,
    Int,
    NonNegativeFloat,
    PositiveInt,
    Probability,
    Str,
    section,
)


def _check_range(owner: str, name: str, value: tuple[float, float], low: float = -math.inf) -> None:
    if len(value) != 2 or not value[0] <= value[1] or value[0] < low:
        raise ValueError(
            f"{owner}.{name} must be a (min, max) pair with {low} <= min <= max, got {value}"
        )


@section("crop")
class CropConfig:
    """Random resized crop (always applied): a box of random area and aspect ratio, resized to the view.

    Attributes:
        scale: range of the box area as a fraction of the source area.
        ratio: range of the box aspect ratio (width / height), sampled log-uniformly.
    """

    scale: FloatPair = (0.4, 1.0)
    """box area / source area, (min, max)"""
    ratio: FloatPair = (3 / 4, 4 / 3)
    """box width / height, (min, max), log-uniform"""

    def __post_init__(self) -> None:
        _check_range("crop", "scale", self.scale, low=0.0)
        if self.scale[0] <= 0.0 or self.scale[1] > 1.0:
            raise ValueError(f"crop.scale must lie in (0, 1], got {self.scale}")
        _check_range("crop", "ratio", self.ratio, low=0.0)
        if self.ratio[0] <= 0.0:
            raise ValueError(f"crop.ratio must be positive, got {self.ratio}")


@section("flip")
class FlipConfig:
    """Random horizontal and vertical flips, each drawn independently.

    Attributes:
        horizontal_p: probability of a left-right flip.
        vertical_p: probability of an up-down flip.
    """

    horizontal_p: Probability = 0.0
    """probability of a left-right flip"""
    vertical_p: Probability = 0.0
    """probability of an up-down flip"""


@section("rot90")
class Rot90Config:
    """Rotation by a multiple of 90 degrees (k uniform in {1, 2, 3} when applied).

    Attributes:
        p: probability of rotating.
    """

    p: Probability = 0.0
    """probability of a rotation by 90, 180 or 270 degrees (uniform)"""


@section("rotation")
class RotationConfig:
    """Rotation by an arbitrary angle about the view centre; corners outside the source get index 0.

    Attributes:
        p: probability of rotating.
        degrees: range of the angle in degrees (counter-clockwise), sampled uniformly.
    """

    p: Probability = 0.0
    """probability of an arbitrary-angle rotation"""
    degrees: FloatPair = (-30.0, 30.0)
    """angle range in degrees, (min, max)"""

    def __post_init__(self) -> None:
        _check_range("rotation", "degrees", self.degrees)


@section("color")
class ColorConfig:
    """Colour distortion (torchvision ColorJitter semantics, fixed order b, c, s, h).

    Brightness and contrast act on every band (contrast around each band's own mean);
    saturation and hue act only on the ``rgb_bands`` of :class:`ViewsConfig`.

    Attributes:
        p: probability of applying the colour distortion at all.
        brightness: factor drawn from ``[1 - brightness, 1 + brightness]``.
        contrast: factor drawn from ``[1 - contrast, 1 + contrast]``.
        saturation: factor drawn from ``[1 - saturation, 1 + saturation]``.
        hue: shift drawn from ``[-hue, hue]`` in turns (at most 0.5).
    """

    p: Probability = 0.0
    """probability of the colour distortion"""
    brightness: NonNegativeFloat = 0.4
    """brightness factor range half-width"""
    contrast: NonNegativeFloat = 0.4
    """contrast factor range half-width (per band)"""
    saturation: NonNegativeFloat = 0.4
    """saturation factor range half-width (RGB bands only)"""
    hue: Annotated[Float, Field(ge=0, le=0.5)] = 0.1
    """hue shift range half-width in turns, <= 0.5 (RGB bands only)"""


@section("grayscale")
class GrayscaleConfig:
    """ "Grayscale" for any band count: every band replaced by the band mean (or one random band).

    Attributes:
        p: probability of the replacement.
        mode: ``mean`` (the mean over bands) or ``random_band`` (one band drawn per sample).
    """

    p: Probability = 0.0
    """probability of replacing every band by the band mean"""
    mode: Literal["mean", "random_band"] = "mean"
    """``mean`` = mean over bands; ``random_band`` = one band drawn per sample"""


@section("blur")
class BlurConfig:
    """Gaussian blur with a per-sample sigma; kernel size ``2 * ceil(3 * sigma_max) + 1``.

    Attributes:
        p: probability of blurring.
        sigma: range of the standard deviation in view pixels, sampled uniformly.
    """

    p: Probability = 0.0
    """probability of a Gaussian blur"""
    sigma: FloatPair = (0.8, 1.4)
    """sigma range in view pixels, (min, max)"""

    def __post_init__(self) -> None:
        _check_range("blur", "sigma", self.sigma, low=0.0)
        if self.sigma[0] <= 0.0:
            raise ValueError(f"blur.sigma must be positive, got {self.sigma}")


@section("noise")
class NoiseConfig:
    """Additive Gaussian noise, independent per pixel and band.

    Attributes:
        p: probability of adding noise.
        std: range of the noise standard deviation (in image units), sampled uniformly.
    """

    p: Probability = 0.0
    """probability of additive Gaussian noise"""
    std: FloatPair = (0.01, 0.05)
    """noise std range in image units, (min, max)"""

    def __post_init__(self) -> None:
        _check_range("noise", "std", self.std, low=0.0)


@section("")
class PipelineConfig:
    """The ops of one view, in the order of the fields, then the ``extra`` ops.

    Every op is a ``kornia.augmentation`` module. The geometric ones (crop, flips, rot90,
    rotation and geometric ``extra`` ops) are composed into one source-to-view matrix and the
    image is resampled once; then the intensity ops run in order.
    """

    crop: CropConfig = field(default_factory=CropConfig)
    """random resized crop"""
    flip: FlipConfig = field(default_factory=FlipConfig)
    """horizontal / vertical flips"""
    rot90: Rot90Config = field(default_factory=Rot90Config)
    """multiples of 90 degrees"""
    rotation: RotationConfig = field(default_factory=RotationConfig)
    """arbitrary angle"""
    color: ColorConfig = field(default_factory=ColorConfig)
    """colour distortion"""
    grayscale: GrayscaleConfig = field(default_factory=GrayscaleConfig)
    """band mean"""
    blur: BlurConfig = field(default_factory=BlurConfig)
    """Gaussian blur"""
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    """Gaussian noise"""
    extra: list[dict[Str, Any]] = field(default_factory=list)
    """kornia.augmentation ops appended after the built-in ones, each ``{name: <class>, <argument>:
    <value>, ...}``; geometric ones join the single warp"""

    def __post_init__(self) -> None:
        self.extra = list(self.extra)
        if self.extra:
            # Names and argument names checked here (nothing built), so a typo fails at load.
            from contrastseg.augment.ops.registry import check_op_spec

            for i, spec in enumerate(self.extra):
                check_op_spec(spec, where=f"extra[{i}]")


def _glcnet_t2() -> PipelineConfig:
    return PipelineConfig(
        flip=FlipConfig(horizontal_p=0.5, vertical_p=0.5),
        rot90=Rot90Config(p=0.8),
        color=ColorConfig(p=0.8, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1),
        grayscale=GrayscaleConfig(p=0.1),
        blur=BlurConfig(p=0.5, sigma=(0.8, 1.4)),
        noise=NoiseConfig(p=0.5, std=(0.01, 0.05)),
    )


def _glcnet_official_t2() -> PipelineConfig:
    """View 2 of ``join_transform`` in the official utils/data_for_self_GLCNet.py, in its order."""
    return PipelineConfig(
        extra=[
            {"name": "RandomFlipChoice"},  # one of h, v, h+v, none, none
            {"name": "RandomQuarterTurn", "p": 0.8, "include_zero": True},
            {"name": "RandomGLCNetColor", "p": 0.8},  # color_aug: HSV (p 0.5), band ops
            {"name": "RandomBandGrayscale", "mode": "random_band", "p": 0.1},
            {"name": "RandomOpenCVBlur", "kernel_sizes": [3, 5, 7], "p": 0.5},
        ]
    )


def _simclr_pipeline() -> PipelineConfig:
    return PipelineConfig(
        crop=CropConfig(scale=(0.08, 1.0)),
        flip=FlipConfig(horizontal_p=0.5),
        color=ColorConfig(p=0.8, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2),
        grayscale=GrayscaleConfig(p=0.2),
        blur=BlurConfig(p=0.5, sigma=(0.1, 2.0)),
    )


@section("views")
class ViewsConfig:
    """Two augmentation pipelines, ``t1`` for view 1 and ``t2`` for view 2 (our GLCNet defaults).

    Attributes:
        size: side of the square views in pixels.
        rgb_bands: the band indices of the red, green and blue bands, on which saturation and
            hue act; ``None`` when the data has no RGB triple (those two ops are skipped).
        value_range: ``(low, high)`` the intensity ops clamp to, as torchvision does for
            images in ``[0, 1]``; ``None`` for no clamping (e.g. standardised bands).
        engine: removed (there is one view pipeline); a value from an old config is
            ignored with a warning.
        t1: pipeline of view 1 (the crop only, as in GLCNet).
        t2: pipeline of view 2 (ours: crop, flips, rot90, colour, grayscale, blur, noise).
    """

    size: PositiveInt = 224
    """side of the square views in pixels"""
    rgb_bands: list[Int] | None = field(default_factory=lambda: [0, 1, 2])
    value_range: FloatPair | None = (0.0, 1.0)
    engine: Str | None = None
    """removed: one view pipeline of Kornia modules; a value is ignored with a warning"""
    t1: PipelineConfig = field(default_factory=PipelineConfig)
    """pipeline of view 1"""
    t2: PipelineConfig = field(default_factory=_glcnet_t2)
    """pipeline of view 2"""

    def __post_init__(self) -> None:
        if self.rgb_bands is not None:
            bands = list(self.rgb_bands)
            if len(bands) != 3 or len(set(bands)) != 3 or any(int(b) != b or b < 0 for b in bands):
                raise ValueError(
                    f"views.rgb_bands must be three distinct non-negative band indices or None, "
                    f"got {self.rgb_bands!r}"
                )
            self.rgb_bands = [int(b) for b in bands]
        if self.value_range is not None and not self.value_range[0] < self.value_range[1]:
            raise ValueError(
                f"views.value_range must be (low, high) with low < high or None, got {self.value_range}"
            )
        if self.engine is not None:
            warnings.warn(
                f"views.engine = {self.engine!r} is ignored: views.engine was removed (every view "
                "is one pipeline of Kornia modules resampled once); delete the key",
                FutureWarning,
                stacklevel=4,  # the caller of __init__ (past pydantic's and section()'s)
            )
            self.engine = None

    @classmethod
    def preset(
        cls, name: Literal["glcnet", "glcnet_official", "simclr"], **overrides: object
    ) -> ViewsConfig:
        """A named recipe: ``glcnet`` (the defaults), ``glcnet_official`` or ``simclr``.

        ``glcnet_official`` is view 2 of the official GLCNet code (its HSV
        jitter assumes RGB in bands 0-2 and values in [0, 1]); ``simclr`` the strong
        pipeline on both views.

        Args:
            name: ``"glcnet"``, ``"glcnet_official"`` or ``"simclr"``.
            **overrides: top-level fields to replace (e.g. ``size=96, rgb_bands=None``).

        Raises:
            ValueError: ``name`` is not a preset.
        """
        if name == "glcnet":
            return cls(**overrides)  # type: ignore[arg-type]
        kwargs: dict[str, object]
        if name == "glcnet_official":
            kwargs = {"t2": _glcnet_official_t2()}
            kwargs.update(overrides)
            return cls(**kwargs)  # type: ignore[arg-type]
        if name == "simclr":
            kwargs = {"t1": _simclr_pipeline(), "t2": _simclr_pipeline()}
            kwargs.update(overrides)
            return cls(**kwargs)  # type: ignore[arg-type]
        raise ValueError(
            f"views preset must be 'glcnet', 'glcnet_official' or 'simclr', got {name!r}"
        )
