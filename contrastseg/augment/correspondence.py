"""``match_points``: exact per-pixel correspondences between the two views, from the index maps.

A dense contrastive method needs, for a view-1 location, the place in view 2 that shows the
same ground. The index maps give it without any feature matching: the view-1 pixel at the
centre of each feature cell (stride ``s``: pixel ``(s * i + s // 2, s * j + s // 2)``) came
from source pixel ``v - 1``; every view-2 pixel that came from the same source pixel is part
of its footprint in view 2, and the footprint's centroid is the matching view-2 point. The
whole batch is done with one ``scatter_add`` into a source-indexed table (``3 * 4`` bytes per
source pixel and image) and one gather; ``num_points`` of the matched cells are kept per
image, uniformly at random, so that the memory of the loss is fixed.

Points are in view pixel-edge coordinates (pixel ``j`` spans ``[j, j + 1)``, its centre is
``j + 0.5``), ``x`` first, as the boxes of :func:`~contrastseg.augment.match_regions`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from contrastseg.augment.regions import _check_index


class MatchedPoints(NamedTuple):
    """Corresponding points of the two views.

    Attributes:
        points1: ``(B, K, 2)`` float32 ``x, y`` of view-1 pixel centres (one per feature cell).
        points2: ``(B, K, 2)`` float32 ``x, y``: the centroid of the same source pixel's
            footprint in view 2.
        valid: ``(B, K)`` bool; valid points come first, invalid slots hold ``(0.5, 0.5)``.
    """

    points1: Tensor
    points2: Tensor
    valid: Tensor


def _pixel_centres(height: int, width: int, device: torch.device) -> Tensor:
    """``(H * W, 2)`` float ``x, y`` centres of the pixels of a ``height x width`` view, row-major."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=torch.float32) + 0.5,
        torch.arange(width, device=device, dtype=torch.float32) + 0.5,
        indexing="ij",
    )
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)


def match_points(
    index1: Tensor,
    index2: Tensor,
    num_points: int,
    stride: int = 4,
    generator: torch.Generator | None = None,
    num_source_pixels: int | None = None,
) -> MatchedPoints:
    """Up to ``num_points`` view-1 cell centres per image and their exact view-2 points.

    Args:
        index1, index2: integer index maps ``(B, H1, W1)`` and ``(B, H2, W2)``; value
            ``v > 0`` is source pixel ``v - 1``, ``0`` lies outside the source.
        num_points: points kept per image (sampled uniformly among the matched cells).
        stride: feature stride: one candidate per ``stride x stride`` cell of view 1.
        generator: random generator of the sampling (on the maps' device).
        num_source_pixels: ``H_src * W_src``; ``None`` reads the largest index back from the
            device (a host synchronisation).

    Returns:
        :class:`MatchedPoints`; a cell is valid when its centre pixel came from the source
        and that source pixel appears in view 2.

    Raises:
        ValueError: maps that are not integer ``(B, H, W)`` tensors of one batch size, or a
            ``num_points`` / ``stride`` below 1.
    """
    _check_index("index1", index1)
    _check_index("index2", index2)
    if index1.shape[0] != index2.shape[0]:
        raise ValueError(
            f"match_points: index1 and index2 hold {index1.shape[0]} and {index2.shape[0]} images"
        )
    if num_points < 1 or stride < 1:
        raise ValueError(
            f"match_points: num_points and stride must be >= 1, got {num_points} and {stride}"
        )
    batch, h1, w1 = index1.shape
    h2, w2 = index2.shape[1:]
    device = index1.device
    if min(h1, w1, h2, w2) == 0:  # nothing to match
        half = torch.full((batch, num_points, 2), 0.5, device=device)
        return MatchedPoints(
            half, half.clone(), torch.zeros(batch, num_points, dtype=torch.bool, device=device)
        )
    if num_source_pixels is None:
        num_source_pixels = max((int(i.max()) for i in (index1, index2) if i.numel()), default=0)
    slots = num_source_pixels + 1  # slot 0 collects "outside the source" and bad values

    def slot(index: Tensor) -> Tensor:
        index = index.long()
        return torch.where((index > 0) & (index < slots), index, torch.zeros_like(index))

    # footprint of every source pixel in view 2: sum of x, sum of y, count
    flat2 = slot(index2).reshape(batch, -1)
    centres2 = _pixel_centres(h2, w2, device)
    values = torch.cat([centres2, torch.ones_like(centres2[:, :1])], dim=1)
    table = torch.zeros(batch, slots, 3, device=device)
    table.scatter_add_(1, flat2[..., None].expand(-1, -1, 3), values.expand(batch, -1, -1))

    # one candidate per view-1 cell: its centre pixel
    rows = torch.arange(stride // 2, h1, stride, device=device)
    cols = torch.arange(stride // 2, w1, stride, device=device)
    cand = (rows[:, None] * w1 + cols[None, :]).reshape(-1)
    source = slot(index1).reshape(batch, -1)[:, cand]  # (B, M)
    found = torch.gather(table, 1, source[..., None].expand(-1, -1, 3))  # (B, M, 3)
    count = found[..., 2]
    valid = (source > 0) & (count > 0)

    # uniform sample of the valid cells: top-k of random keys, invalid cells keyed below 0
    keys = torch.rand(source.shape, generator=generator, device=device)
    keys = torch.where(valid, keys, torch.full_like(keys, -1.0))
    if keys.shape[1] < num_points:
        keys = torch.cat([keys, keys.new_full((batch, num_points - keys.shape[1]), -1.0)], 1)
    best = keys.topk(num_points, dim=1)
    chosen_valid = best.values >= 0
    top = best.indices.clamp_max(max(source.shape[1] - 1, 0))  # padding slots: any cell

    points1 = _pixel_centres(h1, w1, device)[cand][top]  # (B, K, 2)
    picked = torch.gather(found, 1, top[..., None].expand(-1, -1, 3))
    points2 = picked[..., :2] / picked[..., 2:].clamp_min(1.0)
    half = torch.full_like(points1, 0.5)
    keep = chosen_valid[..., None]
    return MatchedPoints(
        torch.where(keep, points1, half), torch.where(keep, points2, half), chosen_valid
    )
