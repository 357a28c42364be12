"""``match_regions``: region pairs whose centres are the same source pixel in both views.

GLCNet's local branch (Li et al., TGRS 2022) contrasts, per image, a few fixed-size
windows of view 1 with the windows of view 2 centred on the same ground location. The
official code searches Python sets per sample; here the whole batch is matched at once
with two scatters and one gather: the view-1 positions go into a source-indexed table (one
row per image, ``amin`` keeps the first position of each source pixel), every view-2
position looks its source pixel up there, and scatters back into a table over the view-1
positions, which then holds, for the first view-1 position of each shared source pixel,
its first view-2 position. The centres are ranks drawn without replacement (Floyd's
algorithm, a few ``(B,)`` operations) and found by a cumulative count per row. No
``argwhere``, no sort, no host synchronisation when ``num_source_pixels`` is given. The
source table takes ``4 * B * (H_src * W_src + 2)`` bytes (67 MB for 256 sources of
256 x 256).

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


def _first_positions(slots: Tensor, positions: Tensor, table_width: int) -> Tensor:
    """``(B, table_width)``: per image, the smallest position of each slot in ``slots``.

    ``slots`` is ``(B, L)`` int64 and ``positions`` at least ``(B, L)``, with rows
    ``0 .. L - 1`` (materialised: a stride-0 ``expand`` halves the speed of the CPU scatter
    kernel). Slots that no position names keep the sentinel ``L``. ``amin`` makes the
    result independent of the order of the writes (deterministic on every device), unlike
    a plain scatter with repeated targets.
    """
    b, length = slots.shape
    table = torch.full((b, table_width), length, dtype=positions.dtype, device=slots.device)
    return table.scatter_reduce_(1, slots, positions[:, :length], reduce="amin")


def _draw_distinct(count: Tensor, n: int, generator: torch.Generator | None) -> Tensor:
    """``(B, n)`` int64 ranks drawn uniformly without replacement from ``[0, count_b)``.

    Robert Floyd's algorithm, one step per draw, vectorised over the batch: step ``j``
    (``count - n <= j < count``) draws ``t`` uniformly in ``[0, j]`` and keeps ``t``, or
    ``j`` itself when ``t`` was already drawn; every ``n``-subset is equally likely
    (Bentley & Floyd, CACM 1987). The subset is then put in random order (Floyd's steps
    are not: the last one favours the largest rank). Images with ``count_b < n`` get all
    their ranks, and ``-1`` in the trailing slots they cannot fill. ``count`` is ``(B,)``.
    Integer draws (no float64, which some devices lack); the modulo bias is below
    ``count / 2**62``.
    """
    b, device = count.shape[0], count.device
    j = count[:, None].long() - n + torch.arange(n, device=device)  # (B, n)
    draws = torch.randint(0, 2**62, (2, b, n), generator=generator, device=device)
    t = draws[0] % (j + 1).clamp_(min=1)  # uniform in [0, j]
    t.masked_fill_(j < 0, -1)  # no draw where j < 0: never equal to a real rank
    for step in range(1, n):  # step 0 never collides
        taken = (t[:, :step] == t[:, step : step + 1]).any(1)
        t[:, step] = torch.where(taken, j[:, step], t[:, step])
    # Random order, unfilled slots last: sort on random keys, pushed past the real ones.
    keys = draws[1].masked_fill_(t < 0, 2**62)
    return torch.gather(t, 1, keys.argsort(dim=1))


def _nth_candidates(candidate: Tensor, per_row: Tensor, ranks: Tensor) -> Tensor:
    """Flat positions of the ``ranks``-th nonzero of each image of ``candidate`` ``(B, h, w)``.

    Two levels, so that no cumulative sum runs over the whole map: with the int32 counts
    per row (``per_row``, ``(B, h)``), find the row of each rank on the row totals, then
    the column on the cumulative sum of that row alone. ``ranks`` is ``(B, n)``; a
    negative rank, or one beyond the count, gives some in-range position.
    """
    b, h, w = candidate.shape
    ends = per_row.cumsum(1, dtype=torch.int32)
    target = ranks.clamp(min=0).int() + 1
    row = torch.searchsorted(ends, target).clamp_(max=h - 1)  # first row reaching the target
    before = torch.gather(ends - per_row, 1, row)
    rows = candidate[torch.arange(b, device=candidate.device)[:, None], row]  # (B, n, w)
    col = torch.searchsorted(rows.cumsum(2, dtype=torch.int32), (target - before)[..., None])
    return row * w + col.squeeze(-1).clamp_(max=w - 1)


def _boxes(pos: Tensor, width: int, size: int) -> Tensor:
    """Boxes of windows centred on positions ``pos`` of a fit region ``width`` columns wide.

    The fit region starts at row and column ``size // 2`` (:func:`_fit_region`), so its
    position ``(r, c)`` centres the box ``(c, r, c + size, r + size)``; position 0 gives
    ``(0, 0, size, size)``, the box of invalid pairs.
    """
    x1 = pos % width
    y1 = torch.div(pos, width, rounding_mode="floor")
    return torch.stack([x1, y1, x1 + size, y1 + size], dim=-1).float()


def _draw_apart(
    candidate: Tensor,
    window: tuple[Tensor, int, int, int, int],
    n: int,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """``n`` sequential uniform draws of view-1 positions, each window's sources removed after.

    Args:
        candidate: ``(B, rows, cols)`` int32 0/1 over the fit region of view 1.
        window: ``(index1, r0, c0, size, beyond)``: the view-1 index map, the offset of the fit
            region in it, the window side and the last source-table slot.
        n: draws per image.
        generator: random source.

    Returns:
        ``(chosen, valid)``: ``(B, n)`` flat fit-region positions (0 where invalid) and a
        ``(B, n)`` bool mask; valid draws come first.
    """
    index1, r0, c0, size, beyond = window
    b, rows, cols = candidate.shape
    device = candidate.device
    # The source slot of every fit-region position; a removed slot is no candidate any more.
    slots = index1[:, r0 : r0 + rows, c0 : c0 + cols].clamp(0, beyond).reshape(b, -1).long()
    removed = torch.zeros(b, beyond + 1, dtype=torch.bool, device=device)
    flat = candidate.reshape(b, -1).bool()
    span = torch.arange(size, device=device)
    batch = torch.arange(b, device=device)
    chosen = torch.zeros(b, n, dtype=torch.long, device=device)
    valid = torch.zeros(b, n, dtype=torch.bool, device=device)
    for step in range(n):
        left = flat & ~removed.gather(1, slots)
        count = left.sum(1)
        draw = torch.randint(0, 2**62, (b,), generator=generator, device=device)
        rank = (draw % count.clamp(min=1))[:, None]
        per_row = left.view(b, rows, cols).sum(2, dtype=torch.int32)
        pos = _nth_candidates(left.view(b, rows, cols).int(), per_row, rank)[:, 0]
        ok = count > 0
        chosen[:, step] = torch.where(ok, pos, 0)
        valid[:, step] = ok
        # The view-1 window of the draw: fit-region position (r, c) centres view pixels
        # [r, r + size) x [c, c + size) (the fit region starts at size // 2).
        r, c = torch.div(pos, cols, rounding_mode="floor"), pos % cols
        ids = index1[
            batch[:, None, None], (r[:, None] + span)[:, :, None], (c[:, None] + span)[:, None]
        ]
        ids = ids.clamp(0, beyond).reshape(b, -1).long()
        tentative = removed.clone().scatter_(1, ids, True)
        remaining = (flat & ~tentative.gather(1, slots)).sum(1)
        # Too few left: only the chosen centre leaves (its source slot).
        own = slots.gather(1, pos[:, None])
        fallback = removed.clone().scatter_(1, own, True)
        update = torch.where((remaining > 1)[:, None], tentative, fallback)
        removed = torch.where(ok[:, None], update, removed)
    return chosen, valid


def drop_invalid_sources(index: Tensor, valid: Tensor | None) -> Tensor:
    """Mark view pixels whose source pixel is invalid (nodata) as outside the source (0).

    :func:`match_regions` then never centres a region on a nodata pixel: the exact rule,
    whatever the view geometry, since it acts on the source pixel each view pixel shows.

    Args:
        index: ``(B, H, W)`` index map (``v - 1`` = source pixel, 0 = outside).
        valid: ``(B, H_src, W_src)`` bool, False at nodata source pixels; None = all valid.

    Returns:
        The index map with those entries set to 0 (``index`` itself when ``valid`` is None).
    """
    if valid is None:
        return index
    flat = valid.flatten(1)
    inside = index > 0
    source = (index - 1).clamp(0, flat.shape[1] - 1).flatten(1)
    keep = flat.gather(1, source).view_as(index) & inside
    return torch.where(keep, index, torch.zeros_like(index))


def match_regions(
    index1: Tensor,
    index2: Tensor,
    num_regions: int,
    size: int,
    generator: torch.Generator | None = None,
    num_source_pixels: int | None = None,
    overlap: bool = True,
) -> MatchedRegions:
    """Draw ``num_regions`` window pairs per image whose centres show the same source pixel.

    Candidate centres are source pixels present in both views at positions where a
    ``size x size`` window fits inside both views; each image draws distinct candidates
    uniformly at random (over source pixels, whatever their duplication in the views).
    When a source pixel appears at several fitting positions of a view (upsampled crops),
    the first of them in raster order is used. With ``overlap=True`` (our default) windows
    may overlap. With ``overlap=False`` the draws are sequential, as in the official code:
    after each draw the source pixels under the chosen view-1 window leave the candidates,
    so no later centre lies in an earlier view-1 window, and each draw is uniform over the
    candidates that remain. As there, a removal that would leave fewer than 2 candidates is
    skipped; then only the chosen centre leaves (the official code keeps it and may draw it
    again).

    Args:
        index1, index2: ``(B, H1, W1)`` and ``(B, H2, W2)`` integer index maps
            (:class:`~contrastseg.augment.views.ViewPair`).
        num_regions: pairs per image (``n``).
        size: window side in view pixels.
        generator: random source on the maps' device (``None``: the device's default).
        num_source_pixels: ``H_src * W_src`` of the source images (sizes the lookup table;
            larger index values are treated as outside); when ``None`` it is
            taken from the largest index, which costs one device-to-host synchronisation.
        overlap: allow view-1 windows of one image to contain each other's centres; ``False``
            draws them apart (see above; ``num_regions`` sequential steps).

    Returns:
        :class:`MatchedRegions` with ``(B, n, 4)`` boxes and a ``(B, n)`` validity mask; for
        every valid pair ``index1`` at the centre of ``boxes1`` equals ``index2`` at the
        centre of ``boxes2`` (see the module docstring for the box convention). Images with
        fewer than ``n`` candidates get invalid pairs, never an exception; valid pairs come
        first, in random order.

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
        largest = [int(i.max()) for i in (index1, index2) if i.numel() > 0]
        num_source_pixels = max([*largest, 1])
    # Per image, a table over the source pixels: slot v holds source pixel v - 1, slot 0
    # collects "outside" (and negative) values, the last slot the values beyond the source.
    beyond = num_source_pixels + 1

    a0, a1, e0, e1 = _fit_region(h1, w1, size)
    f0, f1, g0, g1 = _fit_region(h2, w2, size)
    if a1 <= a0 or e1 <= e0 or f1 <= f0 or g1 <= g0 or b == 0:  # the window fits nowhere
        boxes = _boxes(torch.zeros(b, num_regions, dtype=torch.long, device=device), 1, size)
        return MatchedRegions(
            boxes, boxes.clone(), torch.zeros(b, num_regions, dtype=torch.bool, device=device)
        )
    # Only the positions where a window fits can be centres: work on those sub-grids.
    rows1, cols1 = a1 - a0, e1 - e0
    len1, len2 = rows1 * cols1, (f1 - f0) * (g1 - g0)
    positions = torch.arange(max(len1, len2), device=device, dtype=torch.int32).repeat(b, 1)
    # first1[v]: the first view-1 position showing source slot v (len1: none).
    slots = index1[:, a0:a1, e0:e1].clamp(0, beyond).reshape(b, -1).long()
    first1 = _first_positions(slots, positions, beyond + 1)
    first1[:, 0] = len1  # outside pixels, and values beyond the source, never match
    first1[:, beyond] = len1
    # For every view-2 position, the first view-1 position of its source pixel; then, for
    # every view-1 position, the first view-2 position that names it back. first1 is
    # one-to-one on the pixels view 1 shows, so partner[p] is the first view-2 position of
    # the source pixel first seen at p, and len2 where p is a repeat or view 2 lacks it.
    slots = index2[:, f0:f1, g0:g1].clamp(0, beyond).reshape(b, -1).long()
    seen = first1.gather(1, slots).long()
    del slots, first1  # let the allocator reuse the memory
    partner = _first_positions(seen, positions, len1 + 1)
    del seen, positions
    # int32 0/1 rather than bool: the bool comparison kernels are slower on the CPU.
    candidate = torch.empty(b, len1, dtype=torch.int32, device=device)
    torch.lt(partner[:, :len1], len2, out=candidate)
    candidate = candidate.view(b, rows1, cols1)

    k = min(num_regions, len1)
    if overlap:
        per_row = candidate.sum(2, dtype=torch.int32)  # (B, rows1)
        ranks = _draw_distinct(per_row.sum(1, dtype=torch.int32), k, generator)
        valid = ranks >= 0
        chosen = _nth_candidates(candidate, per_row, ranks).masked_fill_(~valid, 0)
    else:
        window = (index1, a0, e0, size, beyond)
        chosen, valid = _draw_apart(candidate, window, k, generator)
    boxes1 = _boxes(chosen, cols1, size)
    boxes2 = _boxes(partner.gather(1, chosen).masked_fill_(~valid, 0), g1 - g0, size)
    if k < num_regions:
        pad = torch.zeros(b, num_regions - k, dtype=torch.long, device=device)
        boxes1 = torch.cat([boxes1, _boxes(pad, 1, size)], dim=1)
        boxes2 = torch.cat([boxes2, _boxes(pad, 1, size)], dim=1)
        valid = torch.cat([valid, pad.bool()], dim=1)
    return MatchedRegions(boxes1, boxes2, valid)
