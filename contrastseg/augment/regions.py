"""``match_regions``: region pairs whose centres are the same source pixel in both views.

GLCNet's local branch (Li et al., TGRS 2022) contrasts, per image, a few fixed-size
windows of view 1 with the windows of view 2 centred on the same ground location. The
official code searches Python sets per sample; here the whole batch is matched at once:
the view-2 positions are scattered into a source-indexed table (one row per image), each
view-1 candidate looks its source pixel up in that table, and the centres are drawn by
top-k over random keys. No ``argwhere``, no host synchronisation when
``num_source_pixels`` is given. The two tables take ``2 * 4 * B * (H_src * W_src + 1)``
bytes (about 134 MB for 256 sources of 256 x 256).

Box convention: ``x1, y1, x2, y2`` in view pixel-edge coordinates (pixel ``j`` spans
``[j, j + 1)``), integers, ``x2 - x1 == y2 - y1 == size``. The pixel *at the centre* of a
box is ``(floor((y1 + y2) / 2), floor((x1 + x2) / 2))``; a box centred on pixel ``c`` is
``[c - size // 2, c - size // 2 + size)``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class MatchedRegions(NamedTuple):
    """Matched windows of the two views.

    Attributes:
        boxes1, boxes2: ``(B, n, 4)`` float32 ``x1, y1, x2, y2`` in view pixels.
        valid: ``(B, n)`` bool; invalid pairs carry the box ``(0, 0, size, size)``.
    """

    boxes1: Tensor
    boxes2: Tensor
    valid: Tensor


def _check_index(name: str, index: Tensor) -> None:
    if (
        not isinstance(index, Tensor)
        or index.ndim != 3
        or index.is_floating_point()
        or index.dtype == torch.bool
    ):
        got = (
            (tuple(index.shape), index.dtype) if isinstance(index, Tensor) else type(index).__name__
        )
        raise ValueError(f"match_regions: {name} must be an integer (B, H, W) index map, got {got}")


def _fit_region(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """Rows ``r0 <= r < r1`` and columns ``c0 <= c < c1`` where a centred window fits the view."""
    half = size // 2
    return half, max(height - size + half + 1, half), half, max(width - size + half + 1, half)


def _first_positions(slots: Tensor, valid: Tensor, table_len: int) -> Tensor:
    """``(table_len,)`` smallest flat position (per image row of ``slots``) of each source slot.

    Slots that no valid position names keep the sentinel ``L`` (positions per image);
    ``amin`` is deterministic, unlike a plain scatter with repeated targets.
    """
    length = slots.shape[1]
    # int32 positions halve the memory traffic of the table (positions per image < 2**31).
    pos = torch.arange(length, device=slots.device, dtype=torch.int32).expand_as(slots)
    value = torch.where(valid, pos, length)
    table = torch.full((table_len,), length, dtype=torch.int32, device=slots.device)
    return table.scatter_reduce_(0, slots.reshape(-1), value.reshape(-1), reduce="amin")


def _boxes(pos: Tensor, width: int, r0: int, c0: int, size: int) -> Tensor:
    """Boxes of windows centred on positions ``pos`` of the fit region (``width`` columns)."""
    x1 = (pos % width) + c0 - size // 2
    y1 = torch.div(pos, width, rounding_mode="floor") + r0 - size // 2
    return torch.stack([x1, y1, x1 + size, y1 + size], dim=-1).float()


def match_regions(
    index1: Tensor,
    index2: Tensor,
    num_regions: int,
    size: int,
    generator: torch.Generator | None = None,
    num_source_pixels: int | None = None,
) -> MatchedRegions:
    """Draw ``num_regions`` window pairs per image whose centres show the same source pixel.

    Candidate centres are source pixels present in both views at positions where a
    ``size x size`` window fits inside both views; each image draws distinct candidates
    uniformly at random (over source pixels, whatever their duplication in the views).
    When a source pixel appears at several fitting positions of a view (upsampled crops),
    the first of them in raster order is used.

    Args:
        index1, index2: ``(B, H1, W1)`` and ``(B, H2, W2)`` integer index maps
            (:class:`~contrastseg.augment.views.ViewPair`).
        num_regions: pairs per image (``n``).
        size: window side in view pixels.
        generator: random source on the maps' device (``None``: the device's default).
        num_source_pixels: ``H_src * W_src`` of the source images (sizes the lookup table;
            larger index values are treated as outside); when ``None`` it is
            taken from the largest index, which costs one device-to-host synchronisation.

    Returns:
        :class:`MatchedRegions` with ``(B, n, 4)`` boxes and a ``(B, n)`` validity mask; for
        every valid pair ``index1`` at the centre of ``boxes1`` equals ``index2`` at the
        centre of ``boxes2`` (see the module docstring for the box convention). Images with
        fewer than ``n`` candidates get invalid pairs, never an exception.

    Raises:
        ValueError: bad shapes or dtypes, non-positive ``num_regions`` / ``size``, or a
            generator on another device.
    """
    _check_index("index1", index1)
    _check_index("index2", index2)
    if index1.shape[0] != index2.shape[0] or index1.device != index2.device:
        raise ValueError(
            f"match_regions: index1 {tuple(index1.shape)} on {index1.device} and index2 "
            f"{tuple(index2.shape)} on {index2.device} must share batch size and device"
        )
    for name, value in (("num_regions", num_regions), ("size", size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"match_regions: {name} must be a positive integer, got {value!r}")
    b, h1, w1 = index1.shape
    _, h2, w2 = index2.shape
    device = index1.device
    if generator is not None and torch.device(generator.device).type != device.type:
        raise ValueError(
            f"match_regions: the generator is on {generator.device} but the index maps are on "
            f"{device}; make it with torch.Generator(device=index1.device)"
        )
    if num_source_pixels is None:
        num_source_pixels = int(max(int(index1.max()), int(index2.max()), 1)) if b > 0 else 1
    table_size = num_source_pixels + 1  # slot 0 collects "outside" and unfit positions

    # Built on the device (a torch.tensor(list, device=cuda) would wait for a copy).
    fallback = torch.zeros(4, device=device)
    fallback[2:] = float(size)
    a0, a1, e0, e1 = _fit_region(h1, w1, size)
    f0, f1, g0, g1 = _fit_region(h2, w2, size)
    if a1 <= a0 or e1 <= e0 or f1 <= f0 or g1 <= g0 or b == 0:  # the window fits nowhere
        boxes = fallback.expand(b, num_regions, 4).clone()
        return MatchedRegions(
            boxes, boxes.clone(), torch.zeros(b, num_regions, dtype=torch.bool, device=device)
        )
    # Only the positions where a window fits can be centres: work on those sub-grids.
    sub1 = index1[:, a0:a1, e0:e1].reshape(b, -1)
    sub2 = index2[:, f0:f1, g0:g1].reshape(b, -1)
    table_len = b * table_size
    offsets = torch.arange(b, device=device)[:, None] * table_size
    # Slot 0 of each image collects "outside" pixels (and out-of-range values, clamped).
    slots1 = sub1.long().clamp(0, table_size - 1).add_(offsets)
    slots2 = sub2.long().clamp(0, table_size - 1).add_(offsets)
    inside1 = (sub1 > 0) & (sub1 <= num_source_pixels)
    first1 = _first_positions(slots1, inside1, table_len)
    first2 = _first_positions(slots2, (sub2 > 0) & (sub2 <= num_source_pixels), table_len)
    partner = torch.take(first2, slots1)  # (B, L1) view-2 sub-grid position, or L2 if none
    pos1 = torch.arange(sub1.shape[1], device=device, dtype=torch.int32)
    # One candidate per source pixel: its first view-1 position.
    candidate = inside1 & (torch.take(first1, slots1) == pos1) & (partner < sub2.shape[1])

    keys = torch.rand(sub1.shape, generator=generator, device=device)
    keys.masked_fill_(~candidate, -1.0)
    k = min(num_regions, sub1.shape[1])
    top, chosen = torch.topk(keys, k, dim=1)
    valid = top >= 0
    boxes1 = _boxes(chosen, e1 - e0, a0, e0, size)
    boxes2 = _boxes(torch.gather(partner, 1, chosen).long(), g1 - g0, f0, g0, size)
    boxes1 = torch.where(valid[..., None], boxes1, fallback)
    boxes2 = torch.where(valid[..., None], boxes2, fallback)
    if k < num_regions:
        pad = num_regions - k
        boxes1 = torch.cat([boxes1, fallback.expand(b, pad, 4)], dim=1)
        boxes2 = torch.cat([boxes2, fallback.expand(b, pad, 4)], dim=1)
        valid = torch.cat([valid, valid.new_zeros(b, pad)], dim=1)
    return MatchedRegions(boxes1, boxes2, valid)
