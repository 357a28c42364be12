"""``pool_regions``: the mean of a feature map over boxes given in view pixels.

GLCNet's local branch (Li et al., TGRS 2022) averages the decoder features (stride 4) over
each matched region. Here the feature map is never upsampled: every feature cell
``(i, j)`` stands for the view pixels ``[j * s, (j + 1) * s) x [i * s, (i + 1) * s)`` of
stride ``s`` (the map is piecewise constant), and a box's mean is the area-weighted mean of
the cells it covers. A box edge between grid lines gives the cut cells a fractional
weight (the covered fraction of their footprint), so the result is exactly the mean of the
nearest-upsampled map over the box, computed as two small weighted sums
(``einsum``) instead. It is linear in the features, hence differentiable, and runs under
autocast. Parts of a box outside the map are ignored (the mean is over the covered part).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _overlap(low: Tensor, high: Tensor, cells: int) -> Tensor:
    """``(B, n, cells)`` length of ``[low, high]`` inside each unit cell ``[j, j + 1]``."""
    j = torch.arange(cells, device=low.device, dtype=low.dtype)
    return (torch.minimum(high[..., None], j + 1) - torch.maximum(low[..., None], j)).clamp_min(0)


def pool_regions(features: Tensor, boxes: Tensor, stride: int) -> Tensor:
    """Mean of ``features`` over each box.

    Args:
        features: ``(B, C, h, w)`` feature map of a view; cell ``(i, j)`` covers view pixels
            ``[j * stride, (j + 1) * stride) x [i * stride, (i + 1) * stride)``.
        boxes: ``(B, n, 4)`` ``x1, y1, x2, y2`` in view pixel-edge coordinates (as
            :func:`~contrastseg.augment.regions.match_regions` returns them), any float.
        stride: view pixels per feature cell (4 for the DeepLabV3+ decoder).

    Returns:
        ``(B, n, C)`` area-weighted means, in the features' dtype (or autocast's). A box
        that covers no cell at all gives zeros.

    Raises:
        ValueError: bad shapes or a non-positive stride.
    """
    if features.ndim != 4:
        raise ValueError(
            f"pool_regions: features must be (B, C, h, w), got {tuple(features.shape)}"
        )
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or boxes.shape[0] != features.shape[0]:
        raise ValueError(
            f"pool_regions: boxes must be (B, n, 4) with B = {features.shape[0]}, got {tuple(boxes.shape)}"
        )
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"pool_regions: stride must be a positive integer, got {stride!r}")
    h, w = features.shape[-2:]
    scaled = boxes.float() / stride
    wx = _overlap(scaled[..., 0], scaled[..., 2], w)  # (B, n, w)
    wy = _overlap(scaled[..., 1], scaled[..., 3], h)  # (B, n, h)
    area = wx.sum(-1) * wy.sum(-1)  # covered area in cells, (B, n)
    wx = wx / area.clamp_min(1e-12)[..., None]
    # Autocast casts both einsum operands itself; outside it the weights follow the features.
    dtype = features.dtype
    # (B, C, h, w) x (B, n, w) -> (B, n, C, h), then x (B, n, h) -> (B, n, C).
    rows = torch.einsum("bchw,bnw->bnch", features, wx.to(dtype))
    return torch.einsum("bnch,bnh->bnc", rows, wy.to(dtype))


def sample_cells(features: Tensor, points: Tensor, stride: int) -> Tensor:
    """The feature cell under each point, in the convention of :func:`pool_regions`.

    Args:
        features: ``(B, C, h, w)``; cell ``(i, j)`` stands for view pixels
            ``[j * stride, (j + 1) * stride) x [i * stride, (i + 1) * stride)``.
        points: ``(B, K, 2)`` ``x, y`` in view pixel-edge coordinates (points outside the map
            take its nearest border cell).
        stride: view pixels per feature cell.

    Returns:
        ``(B, K, C)`` gathered features (differentiable with respect to ``features``).
    """
    if features.ndim != 4 or points.ndim != 3 or points.shape[0] != features.shape[0]:
        raise ValueError(
            f"sample_cells: expected features (B, C, h, w) and points (B, K, 2), got "
            f"{tuple(features.shape)} and {tuple(points.shape)}"
        )
    batch, channels, h, w = features.shape
    col = torch.div(points[..., 0], stride, rounding_mode="floor").long().clamp(0, w - 1)
    row = torch.div(points[..., 1], stride, rounding_mode="floor").long().clamp(0, h - 1)
    flat = (row * w + col)[:, None, :].expand(-1, channels, -1)  # (B, C, K)
    return torch.gather(features.reshape(batch, channels, h * w), 2, flat).transpose(1, 2)
