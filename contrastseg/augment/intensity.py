"""Batched multi-band intensity ops with one parameter per sample.

Each op takes ``(B, C, H, W)`` float images and per-sample parameters of shape ``(B,)`` and
works for any band count: brightness, contrast, "grayscale", blur and noise act on every
band; saturation and hue act on an RGB triple picked by band indices. Formulas follow
torchvision's ``ColorJitter`` / ``GaussianBlur`` (SimCLR, Chen et al. 2020), with contrast
taken around each band's own mean because a multi-band image has no luminance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

#: ITU-R 601 luma weights as torchvision rounds them in rgb_to_grayscale.
_LUMA = (0.2989, 0.587, 0.114)


def _per_sample(values: Tensor) -> Tensor:
    return values.view(-1, 1, 1, 1)


def adjust_brightness(images: Tensor, factor: Tensor) -> Tensor:
    """``images * factor``, one factor per sample."""
    return images * _per_sample(factor).to(images.dtype)


def adjust_contrast(images: Tensor, factor: Tensor) -> Tensor:
    """Blend every band with its own spatial mean: ``mean + factor * (x - mean)``."""
    mean = images.mean(dim=(-2, -1), keepdim=True)
    return mean + _per_sample(factor).to(images.dtype) * (images - mean)


def adjust_saturation(rgb: Tensor, factor: Tensor) -> Tensor:
    """Blend ``(B, 3, H, W)`` RGB with its luma: ``gray + factor * (rgb - gray)``."""
    # Scalar weights, not a weight tensor: no host-to-device copy per call.
    gray = (_LUMA[0] * rgb[:, 0:1] + _LUMA[1] * rgb[:, 1:2] + _LUMA[2] * rgb[:, 2:3]).to(rgb.dtype)
    return gray + _per_sample(factor).to(rgb.dtype) * (rgb - gray)


def adjust_hue(rgb: Tensor, shift: Tensor) -> Tensor:
    """Rotate the HSV hue of ``(B, 3, H, W)`` RGB by ``shift`` turns (``(B,)``, in [-0.5, 0.5]).

    Value and saturation are unchanged by a hue rotation, so the pixel's max and chroma are
    kept and only the hue is turned, then mapped back with the standard HSV-to-RGB formula
    ``channel_n = max - chroma * clamp(min(k, 4 - k), 0, 1)``, ``k = (n + 6 h) mod 6`` for
    ``n = 5, 3, 1`` (R, G, B). Same result as a full RGB -> HSV -> RGB round trip
    (torchvision's ``adjust_hue``), at a fraction of the element-wise passes.
    """
    r, g, b = rgb.unbind(dim=1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    chroma = maxc - torch.minimum(torch.minimum(r, g), b)
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    # Hue in sixths of a turn; grey pixels (chroma 0) get any hue, they stay grey.
    hue = torch.where(
        maxc == r, (g - b) / safe, torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4)
    )
    hue = hue + (6 * shift).view(-1, 1, 1).to(rgb.dtype)
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(hue + n, 6.0)
        channels.append(maxc - chroma * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))
    return torch.stack(channels, dim=1)


def to_band_mean(images: Tensor) -> Tensor:
    """ "Grayscale" for any band count: every band replaced by the mean over bands."""
    return images.mean(dim=1, keepdim=True).expand_as(images)


def to_one_band(images: Tensor, band: Tensor) -> Tensor:
    """ "Grayscale" from one band: every band of sample ``i`` replaced by its band ``band[i]``.

    Args:
        images: ``(B, C, H, W)``.
        band: ``(B,)`` int64 band indices in ``[0, C)``.
    """
    index = band.view(-1, 1, 1, 1).expand(-1, 1, *images.shape[-2:])
    return torch.gather(images, 1, index).expand_as(images)


def color_jitter(
    images: Tensor,
    brightness: Tensor,
    contrast: Tensor,
    saturation: Tensor | None,
    hue: Tensor | None,
    rgb_bands: Sequence[int] | None,
    clamp: Callable[[Tensor], Tensor],
) -> Tensor:
    """torchvision's ``ColorJitter`` in the fixed order brightness, contrast, saturation, hue.

    Brightness and contrast act on every band (contrast around each band's mean), saturation
    and hue on ``rgb_bands`` only; ``clamp`` follows brightness, contrast and saturation.

    Args:
        images: ``(B, C, H, W)``.
        brightness, contrast: ``(B,)`` factors.
        saturation: ``(B,)`` factors, or ``None`` to skip.
        hue: ``(B,)`` shifts in turns, or ``None`` to skip.
        rgb_bands: the R, G, B band indices, or ``None`` (saturation and hue skipped).
        clamp: the value-range clamp (identity for none).
    """
    out = clamp(adjust_brightness(images, brightness))
    out = clamp(adjust_contrast(out, contrast))
    if rgb_bands is None or (saturation is None and hue is None):
        return out
    # Band by band (three slices) rather than an index tensor, which would need a
    # host-to-device copy on every call.
    rgb = torch.stack([out[:, band] for band in rgb_bands], dim=1)
    if saturation is not None:
        rgb = clamp(adjust_saturation(rgb, saturation))
    if hue is not None:
        rgb = adjust_hue(rgb, hue)
    out = out.clone()
    for i, band in enumerate(rgb_bands):
        out[:, band] = rgb[:, i]
    return out


def gaussian_kernel_size(sigma_max: float) -> int:
    """Odd kernel side covering three sigmas either side of the centre."""
    return 2 * math.ceil(3 * sigma_max) + 1


def gaussian_blur(images: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Separable Gaussian blur with a per-sample ``sigma`` (in pixels), reflect padding.

    Args:
        images: ``(B, C, H, W)``.
        sigma: ``(B,)`` positive standard deviations.
        kernel_size: odd kernel side, the same for the whole batch.
    """
    b, c, h, w = images.shape
    half = kernel_size // 2
    t = torch.arange(-half, half + 1, device=images.device, dtype=torch.float32)
    kernel = torch.exp(-(t[None] ** 2) / (2 * sigma.float()[:, None] ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).to(images.dtype)
    kernel = kernel.repeat_interleave(c, dim=0)  # (B*C, k): one kernel per band of each sample
    mode = "reflect" if half < min(h, w) else "replicate"
    x = F.pad(images.reshape(1, b * c, h, w), (half, half, half, half), mode=mode)
    x = F.conv2d(x, kernel.view(b * c, 1, 1, kernel_size), groups=b * c)
    x = F.conv2d(x, kernel.view(b * c, 1, kernel_size, 1), groups=b * c)
    return x.view(b, c, h, w)


def gaussian_noise(images: Tensor, std: Tensor, generator: torch.Generator | None) -> Tensor:
    """Add ``N(0, std^2)`` noise, ``std`` per sample, drawn from ``generator``."""
    noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    return images + noise * _per_sample(std).to(images.dtype)


def apply_to_selected(
    mask: Tensor,
    op: Callable[[Tensor, Callable[[Tensor], Tensor]], Tensor],
    images: Tensor,
    subset: bool | None = None,
) -> Tensor:
    """Apply a per-sample ``op(images, pick)`` to the samples ``mask`` selects.

    ``pick`` restricts a ``(B, ...)`` parameter tensor to the samples ``op`` receives. With
    ``subset`` (the default on the CPU) only the selected samples are computed; otherwise
    (the default elsewhere) every sample is computed and ``torch.where`` chooses, which
    avoids a device-to-host synchronisation. The ops are per sample, so both give the same
    result (the noise op draws fewer numbers in subset mode).
    """
    if subset is None:
        subset = images.device.type == "cpu"
    if not subset:
        chosen = op(images, lambda t: t)
        return torch.where(mask.view(-1, *([1] * (images.ndim - 1))), chosen, images)
    rows = mask.nonzero().squeeze(1)
    if rows.numel() == 0:
        return images
    picked = op(images.index_select(0, rows), lambda t: t.index_select(0, rows))
    return images.index_copy(0, rows, picked)
