"""Multi-band intensity ops as ``kornia.augmentation`` classes (any band count).

- :class:`RandomBandColorJitter`: torchvision ``ColorJitter`` semantics in the fixed order
  brightness, contrast, saturation, hue; contrast around each band's own mean, saturation
  and hue on the named RGB bands only (Kornia's colour ops need exactly 3 channels).
- :class:`RandomBandGrayscale`: every band replaced by the band mean, or by one random band.
- :class:`RandomBandGaussianNoise`: additive noise with a per-sample std drawn from a range.
- :class:`GaussianBlur`: Kornia's ``RandomGaussianBlur``, computing only the chosen samples
  on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import kornia.augmentation as K
from kornia.augmentation import random_generator as rg
from torch import Tensor

from contrastseg.augment import intensity
from contrastseg.augment.ops._base import (
    ComputeSelectedOnly,
    clamp,
    to_device,
    uniform_index,
    uniform_range,
)


class RandomBandColorJitter(ComputeSelectedOnly, K.IntensityAugmentationBase2D):
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
            (uniform_range(max(0.0, 1 - brightness), 1 + brightness), "brightness", None, None),
            (uniform_range(max(0.0, 1 - contrast), 1 + contrast), "contrast", None, None),
            (uniform_range(max(0.0, 1 - saturation), 1 + saturation), "saturation", None, None),
            (uniform_range(-hue, hue), "hue", None, None),
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
            return to_device(params[name], input.device)

        return intensity.color_jitter(
            input,
            factor("brightness"),
            factor("contrast"),
            factor("saturation") if flags["saturation"] else None,
            factor("hue") if flags["hue"] else None,
            rgb,
            lambda x: clamp(x, flags["value_range"]),
        )


class RandomBandGrayscale(ComputeSelectedOnly, K.IntensityAugmentationBase2D):
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
        return {"band": uniform_index(batch_shape[1], batch_shape[0], self.same_on_batch)}

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
        return intensity.to_one_band(input, to_device(params["band"], input.device))


class RandomBandGaussianNoise(ComputeSelectedOnly, K.IntensityAugmentationBase2D):
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
        self._param_generator = rg.PlainUniformGenerator((uniform_range(*std), "std", None, None))
        self.flags = {"value_range": value_range}

    def apply_transform(
        self,
        input: Tensor,
        params: dict[str, Tensor],
        flags: dict[str, Any],
        transform: Tensor | None = None,
    ) -> Tensor:
        """``(B, C, H, W)`` images plus noise of std ``params["std"]`` (``(B,)``)."""
        noisy = intensity.gaussian_noise(input, to_device(params["std"], input.device), None)
        return clamp(noisy, flags["value_range"])


class GaussianBlur(ComputeSelectedOnly, K.RandomGaussianBlur):
    """Kornia's ``RandomGaussianBlur`` (its per-sample sigma draw), blurred separably.

    A square kernel with reflect padding is applied as two 1-D passes
    (:func:`~contrastseg.augment.intensity.gaussian_blur`, torchvision's formula), 1.4-1.5x
    faster than Kornia's per-sample 2-D kernels on 224 px views on a CPU; other settings go
    to Kornia's own path. On the CPU only the chosen samples are blurred.
    """

    def apply_transform(
        self,
        input: Tensor,
        params: dict[str, Tensor],
        flags: dict[str, Any],
        transform: Tensor | None = None,
    ) -> Tensor:
        """Blur each ``(C, H, W)`` sample with its ``params["sigma"]``."""
        size = flags["kernel_size"]
        side = size if isinstance(size, int) else size[0]
        square = isinstance(size, int) or size[0] == size[1]
        if not square or flags["border_type"].name != "REFLECT" or side % 2 == 0:
            return super().apply_transform(input, params, flags, transform)
        return intensity.gaussian_blur(input, to_device(params["sigma"], input.device), side)
