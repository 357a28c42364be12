"""Kornia augmentation classes for multi-band views, and ``extra:`` ops built by name.

Our multi-band ops as ``kornia.augmentation`` classes, so that they mix with Kornia's own in
one sequence (Kornia's parameter generation, ``p`` and ``same_on_batch``):

- :class:`RandomBandColorJitter`: torchvision ``ColorJitter`` semantics in the fixed order
  brightness, contrast, saturation, hue; contrast around each band's own mean, saturation
  and hue on the named RGB bands only (Kornia's colour ops need exactly 3 channels).
- :class:`RandomBandGrayscale`: every band replaced by the band mean, or by one random band.
- :class:`RandomBandGaussianNoise`: additive noise with a per-sample std drawn from a range.
- :class:`RandomQuarterTurn`: rotation by k * 90 degrees, k uniform in {1, 2, 3} (or in
  {0, 1, 2, 3} with ``include_zero``, the official GLCNet draw), done with ``torch.rot90``
  (exact permutation, no resampling); Kornia's ``RandomRotation90`` rounds a continuous
  draw (k = 2 twice as likely as 1 or 3) and resamples bilinearly.
- :class:`RandomFlipChoice`: one of {horizontal, vertical, both, none, none} (the official
  GLCNet flip), an exact permutation.
- :class:`RandomGLCNetColor`: the official GLCNet ``color_aug``: HSV shifts in OpenCV 8-bit
  units on the RGB bands half the time, and with other than 3 bands per-band
  brightness / contrast and 0.1 % impulse noise.
- :class:`RandomOpenCVBlur`: ``cv2.GaussianBlur`` with a kernel of 3, 5 or 7 and OpenCV's
  sigma for that kernel (the official GLCNet blur).

:func:`make_op` builds any op of ``kornia.augmentation`` (or of this module) from a config
mapping ``{name: ..., **arguments}`` and refuses the ones whose pixel mapping an index map
cannot follow.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import kornia.augmentation as K
import torch
from kornia.augmentation import random_generator as rg
from torch import Tensor, nn

from contrastseg.augment import geometry, intensity

#: Geometric Kornia ops whose image follows their ``transform_matrix`` (bilinear resampling,
#: pixel centres at integers) and keep the view's size: the index map can follow them.
#: Checked on a coordinate ramp in tests/augment/test_kornia_views.py.
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


class _ComputeSelectedOnly:
    """Mixin for per-sample Kornia ops: with ``p < 1`` on the CPU, compute only the chosen samples.

    Kornia's base computes every sample and blends with ``torch.where``, which keeps GPU runs
    free of host synchronisation but costs the skipped samples' work on a CPU; there the
    chosen rows are computed alone (:func:`~contrastseg.augment.intensity.apply_to_selected`).
    Only for ops whose parameters are all per sample (first dimension B).
    """

    def transform_inputs(
        self,
        input: Tensor,
        params: dict[str, Tensor],
        flags: dict[str, Any],
        transform: Tensor | None = None,
        **kwargs: Any,
    ) -> Tensor:
        always = self.p == 1.0 and self.p_batch == 1.0  # type: ignore[attr-defined]
        if always or input.device.type != "cpu" or kwargs or input.ndim != 4:
            return super().transform_inputs(input, params, flags, transform, **kwargs)  # type: ignore[misc]
        batch = input.shape[0]

        def op(x: Tensor, pick: Any) -> Tensor:
            # forward_input_shape is (B, C, H, W) itself, not one row per sample.
            chosen = {
                k: pick(v)
                if isinstance(v, Tensor)
                and v.ndim
                and v.shape[0] == batch
                and k != "forward_input_shape"
                else v
                for k, v in params.items()
            }
            chosen_transform = None if transform is None else pick(transform)
            return self.apply_transform(x, chosen, flags, chosen_transform)  # type: ignore[attr-defined]

        return intensity.apply_to_selected(params["batch_prob"] > 0.5, op, input, subset=True)


def _to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """Parameters (drawn on the CPU by Kornia) to the images' device without a synchronisation.

    A blocking copy from pageable host memory waits for the GPU's queue; a non-blocking one
    stages the source before it returns, so the source may be reused at once (as Kornia does).
    """
    non_blocking = device.type == "cuda" and tensor.device.type == "cpu" and not tensor.is_pinned()
    return tensor.to(device, non_blocking=non_blocking)


def _uniform_range(low: float, high: float) -> Tensor:
    return torch.tensor([float(low), float(high)])


def _clamp(images: Tensor, value_range: tuple[float, float] | None) -> Tensor:
    return images if value_range is None else images.clamp(value_range[0], value_range[1])


class RandomBandColorJitter(_ComputeSelectedOnly, K.IntensityAugmentationBase2D):
    """Colour distortion for any band count (torchvision ``ColorJitter``, fixed order b, c, s, h).

    Factors are drawn uniformly from ``[max(0, 1 - x), 1 + x]`` (hue shift from
    ``[-hue, hue]`` turns), one per sample. Brightness and contrast act on every band, contrast
    around each band's spatial mean (a multi-band image has no luminance); saturation and hue
    act on ``rgb_bands``. Results are clamped to ``value_range`` after brightness, contrast
    and saturation, as torchvision does for ``[0, 1]`` images.

    Args:
        brightness, contrast, saturation: half-widths of the factor ranges (>= 0).
        hue: half-width of the hue shift range in turns, in [0, 0.5].
        rgb_bands: indices of the red, green and blue bands; ``None`` skips saturation and hue.
        value_range: ``(low, high)`` to clamp to, or ``None``.
        p: probability per sample.
        same_on_batch: one draw for the whole batch.
        keepdim: Kornia's ``keepdim``.
    """

    def __init__(
        self,
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
        hue: float = 0.0,
        rgb_bands: Sequence[int] | None = (0, 1, 2),
        value_range: tuple[float, float] | None = (0.0, 1.0),
        p: float = 1.0,
        same_on_batch: bool = False,
        keepdim: bool = False,
    ) -> None:
        super().__init__(p=p, same_on_batch=same_on_batch, keepdim=keepdim)
        for name, value in (("brightness", brightness), ("contrast", contrast)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if saturation < 0 or not 0 <= hue <= 0.5:
            raise ValueError(
                f"saturation must be >= 0 and hue in [0, 0.5], got {saturation}, {hue}"
            )
        rgb = None if rgb_bands is None else tuple(int(b) for b in rgb_bands)
        self._param_generator = rg.PlainUniformGenerator(
            (_uniform_range(max(0.0, 1 - brightness), 1 + brightness), "brightness", None, None),
            (_uniform_range(max(0.0, 1 - contrast), 1 + contrast), "contrast", None, None),
            (_uniform_range(max(0.0, 1 - saturation), 1 + saturation), "saturation", None, None),
            (_uniform_range(-hue, hue), "hue", None, None),
        )
        self.flags = {
            "rgb_bands": rgb,
            "value_range": value_range,
            "saturation": rgb is not None and saturation > 0,
            "hue": rgb is not None and hue > 0,
        }

    def apply_transform(
        self,
        input: Tensor,
        params: dict[str, Tensor],
        flags: dict[str, Any],
        transform: Tensor | None = None,
    ) -> Tensor:
        """Jitter ``(B, C, H, W)`` images with the ``(B,)`` factors in ``params``."""
        rgb = flags["rgb_bands"]
        if rgb is not None and (flags["saturation"] or flags["hue"]) and max(rgb) >= input.shape[1]:
            raise ValueError(
                f"rgb_bands = {list(rgb)} names a band the {input.shape[1]}-band images lack"
            )

        def factor(name: str) -> Tensor:
            return _to_device(params[name], input.device)

        return intensity.color_jitter(
            input,
            factor("brightness"),
            factor("contrast"),
            factor("saturation") if flags["saturation"] else None,
            factor("hue") if flags["hue"] else None,
            rgb,
            lambda x: _clamp(x, flags["value_range"]),
        )


class RandomBandGrayscale(_ComputeSelectedOnly, K.IntensityAugmentationBase2D):
    """ "Grayscale" for any band count: every band replaced by the band mean or a random band.

    Args:
        mode: ``"mean"`` (the mean over bands) or ``"random_band"`` (one band, uniform per sample).
        p: probability per sample.
        same_on_batch: one draw for the whole batch.
        keepdim: Kornia's ``keepdim``.
    """

    def __init__(
        self, mode: str = "mean", p: float = 0.1, same_on_batch: bool = False, keepdim: bool = False
    ) -> None:
        super().__init__(p=p, same_on_batch=same_on_batch, keepdim=keepdim)
        if mode not in ("mean", "random_band"):
            raise ValueError(f"mode must be 'mean' or 'random_band', got {mode!r}")
        self.flags = {"mode": mode}

    def generate_parameters(self, batch_shape: tuple[int, ...]) -> dict[str, Tensor]:
        """``band``: ``(B,)`` int64, uniform over the ``batch_shape[1]`` bands."""
        draws = 1 if self.same_on_batch else batch_shape[0]
        band = (torch.rand(draws) * batch_shape[1]).long().clamp_(max=batch_shape[1] - 1)
        return {"band": band.expand(batch_shape[0])}

    def apply_transform(
        self,
        input: Tensor,
        params: dict[str, Tensor],
        flags: dict[str, Any],
        transform: Tensor | None = None,
    ) -> Tensor:
        """Replace every band of ``(B, C, H, W)`` images by the mean or ``params["band"]``."""
        if flags["mode"] == "mean":
            return intensity.to_band_mean(input)
        return intensity.to_one_band(input, _to_device(params["band"], input.device))


class RandomBandGaussianNoise(_ComputeSelectedOnly, K.IntensityAugmentationBase2D):
    """Additive ``N(0, std^2)`` noise, independent per pixel and band, ``std`` per sample.

    Kornia's ``RandomGaussianNoise`` has one fixed std; this draws it from a range, then
    clamps to ``value_range``. The noise comes from the global generator of the images'
    device (``PairedViews`` seeds it from its own generator).

    Args:
        std: ``(min, max)`` of the standard deviation, sampled uniformly.
        value_range: ``(low, high)`` to clamp to, or ``None``.
        p: probability per sample.
        same_on_batch: one std for the whole batch.
        keepdim: Kornia's ``keepdim``.
    """

    def __init__(
        self,
        std: tuple[float, float] = (0.01, 0.05),
        value_range: tuple[float, float] | None = (0.0, 1.0),
        p: float = 0.5,
        same_on_batch: bool = False,
        keepdim: bool = False,
    ) -> None:
        super().__init__(p=p, same_on_batch=same_on_batch, keepdim=keepdim)
        if len(std) != 2 or not 0 <= std[0] <= std[1]:
            raise ValueError(f"std must be (min, max) with 0 <= min <= max, got {std}")
        self._param_generator = rg.PlainUniformGenerator((_uniform_range(*std), "std", None, None))
        self.flags = {"value_range": value_range}

    def apply_transform(
        self,
        input: Tensor,
        params: dict[str, Tensor],
        flags: dict[str, Any],
        transform: Tensor | None = None,
    ) -> Tensor:
        """``(B, C, H, W)`` images plus noise of std ``params["std"]`` (``(B,)``)."""
        noisy = intensity.gaussian_noise(input, _to_device(params["std"], input.device), None)
        return _clamp(noisy, flags["value_range"])


class _NoInverse:
    """Geometric ops of views: no inverse needed (an index map records the mapping instead)."""

    def inverse_transform(
        self,
        input: Tensor,
        flags: dict[str, Any],
        transform: Tensor | None = None,
        size: tuple[int, int] | None = None,
    ) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no inverse")


class RandomQuarterTurn(_NoInverse, _ComputeSelectedOnly, K.GeometricAugmentationBase2D):
    """Rotation of square images by k quarter turns, k uniform in {1, 2, 3} when applied.

    Turns like ``torch.rot90(x, k, dims=(-2, -1))`` (counter-clockwise on screen), an exact
    permutation of the pixels; ``transform_matrix`` is the exact rotation about the centre.

    Args:
        p: probability per sample.
        include_zero: k uniform in {0, 1, 2, 3} instead (the official GLCNet draw: with
            ``p = 0.8`` a sample keeps its orientation with probability 0.2 + 0.8 / 4).
        same_on_batch: one k for the whole batch.
        keepdim: Kornia's ``keepdim``.
    """

    def __init__(
        self,
        p: float = 0.5,
        include_zero: bool = False,
        same_on_batch: bool = False,
        keepdim: bool = False,
    ) -> None:
        super().__init__(p=p, same_on_batch=same_on_batch, keepdim=keepdim)
        self.include_zero = bool(include_zero)

    def generate_parameters(self, batch_shape: tuple[int, ...]) -> dict[str, Tensor]:
        """``k``: ``(B,)`` int64 quarter turns, uniform in {1, 2, 3} (or {0, 1, 2, 3})."""
        if batch_shape[-1] != batch_shape[-2]:
            raise ValueError(f"RandomQuarterTurn needs square images, got {tuple(batch_shape)}")
        draws = 1 if self.same_on_batch else batch_shape[0]
        low = 0 if self.include_zero else 1
        k = low + (torch.rand(draws) * (4 - low)).long().clamp_(max=3 - low)
        return {"k": k.expand(batch_shape[0])}

    def compute_transformation(
        self, input: Tensor, params: dict[str, Tensor], flags: dict[str, Any]
    ) -> Tensor:
        """``(B, 3, 3)`` maps input pixel ``(x, y)`` to output pixel ``(u, v)``."""
        k = _to_device(params["k"], input.device)
        # cos, sin of k * 90 degrees exactly, in {-1, 0, 1}.
        sign = 1 - 2 * torch.div(k, 2, rounding_mode="floor")
        cos = ((1 - k % 2) * sign).to(input.dtype)
        sin = ((k % 2) * sign).to(input.dtype)
        c = (input.shape[-1] - 1) / 2.0
        zero, one = torch.zeros_like(cos), torch.ones_like(cos)
        # (u - c, v - c) = [[cos, sin], [-sin, cos]] (x - c, y - c): torch.rot90 with k = 1
        # sends input (x, y) to (y, W - 1 - x).
        rows = [
            torch.stack([cos, sin, c - c * (cos + sin)], dim=1),
            torch.stack([-sin, cos, c - c * (cos - sin)], dim=1),
            torch.stack([zero, zero, one], dim=1),
        ]
        return torch.stack(rows, dim=1)

    def apply_transform(
        self,
        input: Tensor,
        params: dict[str, Tensor],
        flags: dict[str, Any],
        transform: Tensor | None = None,
    ) -> Tensor:
        """Turn each ``(C, S, S)`` sample of the batch by its ``k``."""
        k = _to_device(params["k"], input.device)
        out = input
        for turns in (1, 2, 3):
            # The rows of each k are disjoint, so ``out`` still holds the input on them.
            out = intensity.apply_to_selected(
                k == turns, lambda x, pick, t=turns: torch.rot90(x, t, dims=(-2, -1)), out
            )
        return out


class GaussianBlur(_ComputeSelectedOnly, K.RandomGaussianBlur):
    """Kornia's ``RandomGaussianBlur``, computing only the chosen samples on the CPU."""


class RandomFlipChoice(_NoInverse, _ComputeSelectedOnly, K.GeometricAugmentationBase2D):
    """One of {horizontal flip, vertical flip, both, none, none}, uniformly (official GLCNet).

    The official code draws ``f = [1, 0, -1, 2, 2][randint(0, 5)]`` and flips with
    ``np.flip(x, f)`` (1: left-right, 0: up-down, -1: both, 2: none). ``code`` 1, 2, 3 are
    horizontal, vertical, both; 0 is none.

    Args:
        p: probability per sample of drawing from the five choices at all.
        same_on_batch: one choice for the whole batch.
        keepdim: Kornia's ``keepdim``.
    """

    def __init__(self, p: float = 1.0, same_on_batch: bool = False, keepdim: bool = False) -> None:
        super().__init__(p=p, same_on_batch=same_on_batch, keepdim=keepdim)

    def generate_parameters(self, batch_shape: tuple[int, ...]) -> dict[str, Tensor]:
        """``code``: ``(B,)`` int64 in {1, 2, 3, 0, 0}, each of the five entries 1/5."""
        draws = 1 if self.same_on_batch else batch_shape[0]
        choice = (torch.rand(draws) * 5).long().clamp_(max=4)
        code = torch.tensor([1, 2, 3, 0, 0])[choice]
        return {"code": code.expand(batch_shape[0])}

    def compute_transformation(
        self, input: Tensor, params: dict[str, Tensor], flags: dict[str, Any]
    ) -> Tensor:
        """``(B, 3, 3)`` maps input pixel ``(x, y)`` to output pixel ``(u, v)``."""
        code = _to_device(params["code"], input.device)
        sx = 1 - 2 * (code % 2)  # -1 for horizontal (1) and both (3)
        sy = 1 - 2 * torch.div(code, 2, rounding_mode="floor")  # -1 for vertical and both
        sx, sy = sx.to(input.dtype), sy.to(input.dtype)
        width, height = input.shape[-1] - 1, input.shape[-2] - 1
        zero, one = torch.zeros_like(sx), torch.ones_like(sx)
        rows = [
            torch.stack([sx, zero, (1 - sx) / 2 * width], dim=1),
            torch.stack([zero, sy, (1 - sy) / 2 * height], dim=1),
            torch.stack([zero, zero, one], dim=1),
        ]
        return torch.stack(rows, dim=1)

    def apply_transform(
        self,
        input: Tensor,
        params: dict[str, Tensor],
        flags: dict[str, Any],
        transform: Tensor | None = None,
    ) -> Tensor:
        """Flip each ``(C, H, W)`` sample as its ``code`` says."""
        code = _to_device(params["code"], input.device)
        out = input
        for value, dims in ((1, (-1,)), (2, (-2,)), (3, (-2, -1))):
            out = intensity.apply_to_selected(
                code == value, lambda x, pick, d=dims: torch.flip(x, d), out
            )
        return out


def band_brightness_contrast(images: Tensor, bright: Tensor, contrast: Tensor) -> Tensor:
    """The official GLCNet ``randomColorAugment`` on ``(B, C, H, W)`` values in [0, 1].

    ``bright`` and ``contrast`` are ``(B, C)`` factors: ``b > 1`` blends towards white
    (``x (2 - b) + (b - 1)``), ``b <= 1`` towards black (``x b``); then ``x c``, clipped.
    """
    b, c = bright.to(images.dtype)[..., None, None], contrast.to(images.dtype)[..., None, None]
    out = torch.where(b > 1, images * (2 - b) + (b - 1), images * b)
    return (out * c).clamp(0.0, 1.0)


def pixel_impulses(images: Tensor, rate: float, generator: torch.Generator | None = None) -> Tensor:
    """The official ``randpixel_noise``: each value replaced by a uniform one with prob ``rate``."""
    if rate <= 0:
        return images
    device = images.device if generator is None else generator.device
    hit = torch.rand(images.shape, generator=generator, device=device) < rate
    values = torch.rand(images.shape, generator=generator, device=device)
    return torch.where(hit.to(images.device), values.to(images), images)


def rgb_hsv_shift(rgb: Tensor, hue: Tensor, sat: Tensor, val: Tensor) -> Tensor:
    """``cv2`` 8-bit HSV shift of ``(B, 3, H, W)`` RGB in [0, 1].

    ``hue`` in OpenCV units (2 degrees each, wrapped modulo 180 units), ``sat`` and ``val``
    on the 0-255 scale, added with saturation at 0 and 255, all ``(B,)``.
    """
    from kornia.color import hsv_to_rgb, rgb_to_hsv

    hsv = rgb_to_hsv(rgb.clamp(0.0, 1.0))
    h = torch.remainder(hsv[:, 0] + (hue * (torch.pi / 90.0))[:, None, None], 2 * torch.pi)
    s = (hsv[:, 1] + (sat / 255.0)[:, None, None]).clamp(0.0, 1.0)
    v = (hsv[:, 2] + (val / 255.0)[:, None, None]).clamp(0.0, 1.0)
    return hsv_to_rgb(torch.stack([h, s, v], dim=1))


class RandomGLCNetColor(_ComputeSelectedOnly, K.IntensityAugmentationBase2D):
    """The official GLCNet ``color_aug`` for images in [0, 1].

    With 3 or more bands: with probability ``hsv_p`` an HSV shift of the RGB bands (hue an
    integer uniform in ``hue`` OpenCV units, saturation and value uniform in ``saturation``
    and ``value`` on the 0-255 scale, as ``randomHueSaturationValue``). With other than 3
    bands, then every band gets its own brightness factor ``b`` in ``[1 - brightness,
    1 + brightness]`` (``b > 1`` blends towards white, else towards black) and contrast factor
    ``c`` (``x * c``, clipped), and each value is replaced by a uniform random one with
    probability ``pixel_noise`` (``randomColorAugment`` and ``randpixel_noise``).

    Deviations: the hue wraps modulo 180 units (the official ``uint8`` addition wraps modulo
    256, which moves hues below 30 by 226 - 180 = 46 units instead of -30); values are
    continuous, not rounded to 8 bits.

    Args:
        p: probability per sample (official: 0.8).
        hsv_p: probability of the HSV shift, given the op applies (official: 0.5).
        hue, saturation, value: shift ranges (official: 30, 5, 15).
        brightness, contrast: per-band factor half-widths (official: 0.1, 0.1).
        pixel_noise: per-value probability of an impulse (official: 0.001).
        rgb_bands: the R, G, B band indices (official: the first three).
        same_on_batch, keepdim: Kornia's.
    """

    def __init__(
        self,
        p: float = 0.8,
        hsv_p: float = 0.5,
        hue: int = 30,
        saturation: float = 5.0,
        value: float = 15.0,
        brightness: float = 0.1,
        contrast: float = 0.1,
        pixel_noise: float = 0.001,
        rgb_bands: Sequence[int] = (0, 1, 2),
        same_on_batch: bool = False,
        keepdim: bool = False,
    ) -> None:
        super().__init__(p=p, same_on_batch=same_on_batch, keepdim=keepdim)
        if not 0.0 <= hsv_p <= 1.0 or not 0.0 <= pixel_noise <= 1.0:
            raise ValueError(
                f"hsv_p and pixel_noise must lie in [0, 1], got {hsv_p}, {pixel_noise}"
            )
        if min(hue, saturation, value, brightness, contrast) < 0:
            raise ValueError("hue, saturation, value, brightness and contrast must be >= 0")
        self.flags = {
            "rgb_bands": [int(b) for b in rgb_bands],
            "pixel_noise": float(pixel_noise),
        }
        self.hsv_p, self.hue = float(hsv_p), int(hue)
        self.ranges = (float(saturation), float(value), float(brightness), float(contrast))

    def generate_parameters(self, batch_shape: tuple[int, ...]) -> dict[str, Tensor]:
        """Per sample: ``hsv`` (B,) bool, ``hue``, ``sat``, ``val`` (B,), ``bright``, ``contrast`` (B, C)."""
        b, c = batch_shape[0], batch_shape[1]
        draws = 1 if self.same_on_batch else b
        saturation, value, brightness, contrast = self.ranges
        hue = torch.randint(-self.hue, self.hue + 1, (draws,)).float()

        def uniform(half: float, *shape: int) -> Tensor:
            return (torch.rand(draws, *shape) * 2 - 1) * half

        params = {
            "hsv": torch.rand(draws) < self.hsv_p,
            "hue": hue,
            "sat": uniform(saturation),
            "val": uniform(value),
            "bright": 1 + uniform(brightness, c),
            "contrast": 1 + uniform(contrast, c),
        }
        return {k: v.expand(b, *v.shape[1:]) for k, v in params.items()}

    def apply_transform(
        self,
        input: Tensor,
        params: dict[str, Tensor],
        flags: dict[str, Any],
        transform: Tensor | None = None,
    ) -> Tensor:
        """``(B, C, H, W)`` images in [0, 1] -> the same, colour-augmented."""
        device, bands = input.device, input.shape[1]
        out = input
        rgb = flags["rgb_bands"]
        if bands >= 3:
            hsv = _to_device(params["hsv"], device)
            shift = (_to_device(params[k], device) for k in ("hue", "sat", "val"))
            shifted = rgb_hsv_shift(out[:, rgb], *shift).to(out.dtype)
            out = out.clone()
            out[:, rgb] = torch.where(hsv[:, None, None, None], shifted, out[:, rgb])
        if bands != 3:
            bright = _to_device(params["bright"], device)
            out = band_brightness_contrast(out, bright, _to_device(params["contrast"], device))
            out = pixel_impulses(out, flags["pixel_noise"])
        return out


class RandomOpenCVBlur(_ComputeSelectedOnly, K.IntensityAugmentationBase2D):
    """``cv2.GaussianBlur(x, (k, k), 0)`` with ``k`` uniform in ``kernel_sizes`` (official GLCNet).

    OpenCV's sigma for a kernel ``k`` and sigma 0 is ``0.3 * ((k - 1) / 2 - 1) + 0.8`` (0.8,
    1.1, 1.4 for 3, 5, 7); the border is reflected without repeating the edge (OpenCV's
    default ``BORDER_REFLECT_101``, torch's ``reflect``).

    Args:
        kernel_sizes: odd kernel sides to draw from (official: 3, 5, 7).
        p: probability per sample (official: 0.5).
        same_on_batch, keepdim: Kornia's.
    """

    def __init__(
        self,
        kernel_sizes: Sequence[int] = (3, 5, 7),
        p: float = 0.5,
        same_on_batch: bool = False,
        keepdim: bool = False,
    ) -> None:
        super().__init__(p=p, same_on_batch=same_on_batch, keepdim=keepdim)
        sizes = [int(k) for k in kernel_sizes]
        if not sizes or any(k < 1 or k % 2 == 0 for k in sizes):
            raise ValueError(f"kernel_sizes must be odd positive sides, got {kernel_sizes}")
        self.sizes = sizes

    def generate_parameters(self, batch_shape: tuple[int, ...]) -> dict[str, Tensor]:
        """``kernel``: ``(B,)`` int64 drawn uniformly from ``kernel_sizes``."""
        draws = 1 if self.same_on_batch else batch_shape[0]
        choice = (torch.rand(draws) * len(self.sizes)).long().clamp_(max=len(self.sizes) - 1)
        return {"kernel": torch.tensor(self.sizes)[choice].expand(batch_shape[0])}

    def apply_transform(
        self,
        input: Tensor,
        params: dict[str, Tensor],
        flags: dict[str, Any],
        transform: Tensor | None = None,
    ) -> Tensor:
        """Blur each sample of ``(B, C, H, W)`` with its kernel."""
        from kornia.filters import gaussian_blur2d

        kernel = _to_device(params["kernel"], input.device)
        out = input
        for k in self.sizes:
            sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8

            def blur(x: Tensor, pick: Any, k: int = k, sigma: float = sigma) -> Tensor:
                return gaussian_blur2d(x, (k, k), (sigma, sigma), border_type="reflect")

            out = intensity.apply_to_selected(kernel == k, blur, out)
        return out


class ResizedCrop(K.RandomResizedCrop):
    """Kornia's ``RandomResizedCrop`` (resample mode), sampled in one ``grid_sample``.

    Parameters and ``transform_matrix`` are Kornia's; the image is sampled bilinearly at the
    positions the inverse matrix gives, as Kornia's ``warp_affine`` does, without its
    normalisation round trip and its two extra passes for one-pixel boxes (those fall back
    to Kornia's own path). Only for ``resample="bilinear"`` with ``align_corners=True``.
    """

    def apply_transform(
        self,
        input: Tensor,
        params: dict[str, Tensor],
        flags: dict[str, Any],
        transform: Tensor | None = None,
    ) -> Tensor:
        """Crop and resize ``(B, C, H, W)`` to ``flags["size"]`` through ``transform``."""
        src = params["src"]
        one_pixel = ((src[:, 2] - src[:, 0]) == 0).any()
        fits = flags["cropping_mode"] == "resample" and flags["align_corners"]
        size = flags["size"]
        if not fits or transform is None or bool(one_pixel) or size[0] != size[1]:
            return super().apply_transform(input, params, flags, transform)
        exact = torch.float32 if input.device.type == "mps" else torch.float64
        to_source = torch.linalg.inv_ex(transform.to(exact)).inverse[:, :2].float()
        return geometry.resample(input, to_source, size[0]).to(input.dtype)


class HorizontalFlip(_ComputeSelectedOnly, K.RandomHorizontalFlip):
    """Kornia's ``RandomHorizontalFlip``, flipping only the chosen samples on the CPU."""


class VerticalFlip(_ComputeSelectedOnly, K.RandomVerticalFlip):
    """Kornia's ``RandomVerticalFlip``, flipping only the chosen samples on the CPU."""


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


def make_op(spec: Mapping[str, Any], where: str = "extra") -> nn.Module:
    """Build the augmentation named by ``spec["name"]`` with the other keys as its arguments.

    Args:
        spec: ``{"name": <class of kornia.augmentation or of this module>, **arguments}``.
        where: the config key of ``spec``, named in errors (e.g. ``"extra[0]"``).

    Returns:
        The module, ready to call on ``(B, C, H, W)`` images.

    Raises:
        ValueError: no or an unknown name (close matches listed), an argument the op does not
            take, a value it refuses, or an op whose pixel mapping an index map cannot follow
            (non-rigid warps, crops and resizes, mixing of samples).
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
            f"{where}: {name} is refused in a view: the index map follows only geometric ops "
            "that map the view onto itself through their transform_matrix "
            f"({', '.join(TRACKED_GEOMETRIC)}); non-rigid warps have no such matrix, and crops, "
            "resizes and pads change the view size (set views.size and the views' crop instead)"
        )
    if not issubclass(cls, K.IntensityAugmentationBase2D | K.GeometricAugmentationBase2D):
        raise ValueError(
            f"{where}: {name} is refused in a view: it is not an intensity op, nor a geometric op "
            "with a transform matrix the index map can follow (it warps without a matrix, mixes "
            "samples, or is not a per-image 2D op)"
        )
    kwargs = {k: _tuples(v) for k, v in spec.items() if k != "name"}
    parameters = inspect.signature(cls.__init__).parameters
    accepted = [p for p in parameters if p != "self"]
    for key in kwargs:
        if key not in parameters:
            raise ValueError(
                f"{where}: {name} takes no argument {key!r}; it takes {', '.join(accepted)}"
            )
    try:
        op = cls(**kwargs)
    except Exception as err:  # Kornia raises ValueError, TypeError, AssertionError, ...
        raise ValueError(f"{where}: {name}({_arguments(kwargs)}) is refused: {err}") from err
    resample = getattr(op, "flags", {}).get("resample")
    if name in TRACKED_GEOMETRIC and resample is not None and resample.name != "BILINEAR":
        raise ValueError(
            f"{where}: {name} with resample={resample.name.lower()!r}: the index map is exact "
            "only for bilinear resampling (the default); drop the resample argument"
        )
    return op


def _arguments(kwargs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def op_label(spec: Mapping[str, Any]) -> str:
    """Short text of an ``extra:`` op for titles and logs, e.g. ``RandomMotionBlur(p=0.3)``."""
    args = {k: v for k, v in spec.items() if k != "name"}
    return f"{spec.get('name')}({_arguments(args)})"
