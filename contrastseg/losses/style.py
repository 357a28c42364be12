"""The style vector of a feature map: channel-wise spatial mean and variance.

GLCNet's global branch (Li et al., TGRS 2022, section III-B) describes an image by the
"style" of its encoder features, the first two moments of every channel over space (the
statistics that AdaIN, Huang & Belongie 2017, uses for style), instead of global average
pooling alone; the paper argues that this keeps more of the texture that distinguishes
remote-sensing scenes.
"""

from __future__ import annotations

import torch
from torch import Tensor


def style_vector(features: Tensor) -> Tensor:
    """Concatenate the spatial mean and the unbiased spatial variance of every channel.

    Computed in float32 (float64 input stays float64) with autocast off: a bf16/fp16 feature
    map's squared deviations would lose precision (bf16) or overflow (fp16 above ~256).

    Args:
        features: ``(B, C, H, W)`` feature map, any floating dtype, ``H * W >= 2``.

    Returns:
        ``(B, 2C)`` float32 (float64 for float64 input),
        ``[mean_1 .. mean_C, var_1 .. var_C]``; the variance has Bessel's correction
        (divided by ``H * W - 1``), the project's documented default.

    Raises:
        ValueError: not a 4-D floating-point tensor, or fewer than 2 spatial positions.
    """
    if not isinstance(features, Tensor) or features.ndim != 4:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"style_vector expects a (B, C, H, W) feature map, got {shape}")
    if not features.is_floating_point():
        raise ValueError(f"style_vector expects floating-point features, got {features.dtype}")
    if features.shape[2] * features.shape[3] < 2:
        raise ValueError(
            "style_vector needs at least 2 spatial positions for an unbiased variance, "
            f"got a feature map of shape {tuple(features.shape)}"
        )
    with torch.autocast(device_type=features.device.type, enabled=False):
        flat = features.to(torch.promote_types(features.dtype, torch.float32)).flatten(2)
        var, mean = torch.var_mean(flat, dim=2, correction=1)
        return torch.cat([mean, var], dim=1)
