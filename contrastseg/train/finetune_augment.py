"""The official GLCNet fine-tuning augmentation (``train.augment_recipe: official``).

``join_transform`` of the official utils/data_for_seg.py (github.com/GeoX-Lab/G-RSIM,
T-SS-GLCNet), per training patch: one of {horizontal flip, vertical flip, both, none,
none}; a rotation by ``k * 90`` degrees, ``k`` uniform in {0, 1, 2, 3}; with probability
0.5 a shift-scale warp (shift up to 10 % of the side; one scale on both axes, isotropic,
as the official matrix at angle 0 is; no rotation, zero border); with probability 0.5 an HSV shift of the RGB bands
(hue +-30 OpenCV units, saturation +-5, value +-15 on the 0-255 scale); on bands after the
third, per-band brightness / contrast factors in [0.99, 1.01] and 0.1 % impulse noise.

Deviations, on purpose: the mask is warped with nearest-neighbour sampling and the border
it gains is ``ignore_index`` (the official code interpolates class ids bilinearly and
fills the border with class 0); the hue wraps modulo 180 units (see
:class:`~contrastseg.augment.ops.glcnet.RandomGLCNetColor`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastseg.augment.ops.glcnet import band_brightness_contrast, pixel_impulses, rgb_hsv_shift


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=generator.device)


def _flip_rotate(
    images: Tensor, masks: Tensor, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Per sample: flip code from [h, v, both, none, none], then ``k`` quarter turns (square)."""
    b = images.shape[0]
    draws = torch.randint(0, 20, (b,), generator=generator, device=generator.device)
    choice, turns = (draws % 5).to(images.device), (draws // 5).to(images.device)
    out_x, out_y = images, masks
    for value, dims in ((0, (-1,)), (1, (-2,)), (2, (-2, -1))):
        hit = choice == value
        out_x = torch.where(hit[:, None, None, None], out_x.flip(dims), out_x)
        out_y = torch.where(hit[:, None, None], out_y.flip(dims), out_y)
    if images.shape[-1] == images.shape[-2]:
        base_x, base_y = out_x, out_y
        for k in (1, 2, 3):
            hit = turns == k
            rx, ry = torch.rot90(base_x, k, (-2, -1)), torch.rot90(base_y, k, (-2, -1))
            out_x = torch.where(hit[:, None, None, None], rx, out_x)
            out_y = torch.where(hit[:, None, None], ry, out_y)
    return out_x, out_y


def _shift_scale(
    images: Tensor, masks: Tensor, generator: torch.Generator, ignore_index: int
) -> tuple[Tensor, Tensor]:
    """``randomShiftScaleRotate(shift 0.1, scale 0.1, aspect 0.1, rotate 0, p=0.5)``.

    The official code draws ``scale`` and ``aspect`` uniform in [0.9, 1.1] and sets
    ``sx = scale * aspect / sqrt(aspect)``, ``sy = scale / sqrt(aspect)``, but its matrix
    ``[[cos(angle) sx, -sin(angle) sy], [sin(angle) sy, cos(angle) sx]]`` puts ``sx`` on
    both diagonal entries, so at angle 0 the warp is isotropic: pixel ``x`` goes to
    ``s (x - W / 2) + W / 2 + dx`` and likewise in y with the same ``s = scale sqrt(aspect)``;
    ``dx``, ``dy`` are rounded to whole pixels. The aspect draw only shapes the distribution
    of ``s``.
    """
    b, _, h, w = images.shape
    apply = torch.rand(b, generator=generator, device=generator.device) < 0.5
    scale, aspect = _uniform(b, 0.9, 1.1, generator), _uniform(b, 0.9, 1.1, generator)
    dx = torch.round(_uniform(b, -0.1, 0.1, generator) * w)
    dy = torch.round(_uniform(b, -0.1, 0.1, generator) * h)
    s = torch.where(apply, scale * aspect.sqrt(), torch.ones_like(scale))
    zero = torch.zeros_like(dx)
    dx, dy = torch.where(apply, dx, zero), torch.where(apply, dy, zero)
    return _warp(images, masks, s, dx, dy, ignore_index)


def _warp(
    images: Tensor, masks: Tensor, s: Tensor, dx: Tensor, dy: Tensor, ignore_index: int
) -> tuple[Tensor, Tensor]:
    """Send pixel ``(x, y)`` to ``(s (x - W/2) + W/2 + dx, s (y - H/2) + H/2 + dy)`` per sample.

    The image is sampled bilinearly with a zero border, the mask by nearest neighbour with
    an ``ignore_index`` border (the official code interpolates the mask bilinearly and fills
    the border with class 0).
    """
    b, _, h, w = images.shape
    device = images.device
    s, dx, dy = (t.to(device=device, dtype=torch.float32)[:, None] for t in (s, dx, dy))
    u = torch.arange(w, device=device, dtype=torch.float32)
    v = torch.arange(h, device=device, dtype=torch.float32)
    # The source position of every output pixel (inverse map), as grid_sample coordinates.
    xs = (u[None] - w / 2 - dx) / s + w / 2
    ys = (v[None] - h / 2 - dy) / s + h / 2
    gx = (2 * xs / max(w - 1, 1) - 1)[:, None, :].expand(b, h, w)
    gy = (2 * ys / max(h - 1, 1) - 1)[:, :, None].expand(b, h, w)
    grid = torch.stack([gx, gy], dim=-1).to(images.dtype)
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    labels = F.grid_sample(
        (masks + 1).to(images.dtype)[:, None], grid, mode="nearest", align_corners=True
    )[:, 0].long()
    labels = torch.where(labels == 0, torch.full_like(labels, ignore_index), labels - 1)
    return warped, labels.to(masks.dtype)


def official_augment(
    images: Tensor,
    masks: Tensor,
    generator: torch.Generator,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    ignore_index: int,
    rgb_bands: Sequence[int] = (0, 1, 2),
) -> tuple[Tensor, Tensor]:
    """The official fine-tuning augmentation of a normalised batch (see the module docstring).

    The ops act on values in [0, 1]: the batch is de-normalised with ``mean`` / ``std``
    (those of ``to_float``), augmented and normalised again.

    Args:
        images: ``(B, C, H, W)`` float, ``(x / scale - mean) / std``.
        masks: ``(B, H, W)`` int64 class ids.
        generator: random source on ``images``' device.
        mean, std: per-band normalisation (None = 0 and 1).
        ignore_index: the label of pixels the warp brings in from outside.
        rgb_bands: R, G, B band indices for the HSV shift.

    Returns:
        ``(images, masks)`` of the same shapes and dtypes.
    """
    b, bands = images.shape[:2]
    m = images.new_tensor(mean if mean is not None else [0.0] * bands)[None, :, None, None]
    s = images.new_tensor(std if std is not None else [1.0] * bands)[None, :, None, None]
    x = images * s + m
    x, y = _flip_rotate(x, masks, generator)
    x, y = _shift_scale(x, y, generator, ignore_index)
    x = x.clamp(0.0, 1.0)
    if bands >= 3:
        rgb = list(rgb_bands)
        hsv = torch.rand(b, generator=generator, device=generator.device) < 0.5
        hue = torch.randint(-30, 31, (b,), generator=generator, device=generator.device).float()
        sat, val = _uniform(b, -5.0, 5.0, generator), _uniform(b, -15.0, 15.0, generator)
        shifted = rgb_hsv_shift(x[:, rgb], *(t.to(x.device) for t in (hue, sat, val)))
        x = x.clone()
        x[:, rgb] = torch.where(
            hsv.to(x.device)[:, None, None, None], shifted.to(x.dtype), x[:, rgb]
        )
    extra = list(range(3, bands)) if bands >= 3 else list(range(bands))
    if extra:
        factors = [_uniform(b * len(extra), 0.99, 1.01, generator) for _ in range(2)]
        bright, contrast = (f.view(b, len(extra)).to(x.device) for f in factors)
        jittered = band_brightness_contrast(x[:, extra], bright, contrast)
        x = x.clone()
        x[:, extra] = pixel_impulses(jittered, 0.001, generator)
    return (x - m) / s, y
