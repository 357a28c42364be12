"""The official GLCNet view ops (utils/data_for_self_GLCNet.py) as ``kornia.augmentation`` classes.

- :class:`RandomGLCNetColor`: ``color_aug``: HSV shifts in OpenCV 8-bit units on the RGB
  bands half the time, and with other than 3 bands per-band brightness / contrast and 0.1 %
  impulse noise.
- :class:`RandomOpenCVBlur`: ``cv2.GaussianBlur`` with a kernel of 3, 5 or 7 and OpenCV's
  sigma for that kernel.

The functions :func:`band_brightness_contrast`, :func:`pixel_impulses` and
:func:`rgb_hsv_shift` are shared with the fine-tuning augmentation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import kornia.augmentation as K
import torch
from torch import Tensor

from contrastseg.augment import intensity
from contrastseg.augment.ops._base import ComputeSelectedOnly, to_device, uniform_index


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


class RandomGLCNetColor(ComputeSelectedOnly, K.IntensityAugmentationBase2D):
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
            hsv = to_device(params["hsv"], device)
            shift = (to_device(params[k], device) for k in ("hue", "sat", "val"))
            shifted = rgb_hsv_shift(out[:, rgb], *shift).to(out.dtype)
            out = out.clone()
            out[:, rgb] = torch.where(hsv[:, None, None, None], shifted, out[:, rgb])
        if bands != 3:
            bright = to_device(params["bright"], device)
            out = band_brightness_contrast(out, bright, to_device(params["contrast"], device))
            out = pixel_impulses(out, flags["pixel_noise"])
        return out


class RandomOpenCVBlur(ComputeSelectedOnly, K.IntensityAugmentationBase2D):
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
        choice = uniform_index(len(self.sizes), batch_shape[0], self.same_on_batch)
        return {"kernel": torch.tensor(self.sizes)[choice]}

    def apply_transform(
        self,
        input: Tensor,
        params: dict[str, Tensor],
        flags: dict[str, Any],
        transform: Tensor | None = None,
    ) -> Tensor:
        """Blur each sample of ``(B, C, H, W)`` with its kernel."""
        from kornia.filters import gaussian_blur2d

        kernel = to_device(params["kernel"], input.device)
        out = input
        for k in self.sizes:
            sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8

            def blur(x: Tensor, pick: Any, k: int = k, sigma: float = sigma) -> Tensor:
                return gaussian_blur2d(x, (k, k), (sigma, sigma), border_type="reflect")

            out = intensity.apply_to_selected(kernel == k, blur, out)
        return out
