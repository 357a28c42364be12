"""The single resample of a view: image and index map from one view-to-source matrix.

Every view pixel ``(u, v)`` (column, row; pixel centres at integers) is mapped to a
continuous source position ``(x, y)`` in the same convention by the ``(B, 3, 3)`` inverse of
the view's composed source-to-view matrix (:mod:`contrastseg.augment.pipeline`). The image is
sampled bilinearly at ``(x, y)`` and the index map takes the nearest source pixel
``(floor(x + 0.5), floor(y + 0.5))`` of the *same* position, so on a coordinate ramp the
view value and the position its index names differ by at most half a pixel, however many
geometric ops made the matrix.

The coordinate planes are computed with element-wise float32 arithmetic (no matmul), with
autocast off: a TF32 or bfloat16 matmul would move source positions by up to a pixel on
large images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _plane_parts(
    affine: Tensor, row: int, size: int, scale: float, shift: float
) -> tuple[Tensor, Tensor]:
    """``(B, 1, S)`` and ``(B, S, 1)`` parts of ``scale * (a_row . (u, v, 1)) + shift``.

    Their broadcast sum is the plane over the view, so building it costs one pass over
    ``(B, S, S)`` instead of four.
    """
    r = torch.arange(size, device=affine.device, dtype=torch.float32)
    a = affine.float()
    along_u = (a[:, row, 0, None] * scale) * r
    along_v = (a[:, row, 1, None] * r + a[:, row, 2, None]) * scale + shift
    return along_u[:, None, :], along_v[:, :, None]


def pixel_index(col: Tensor, row: Tensor, height: int, width: int, inside: Tensor | None) -> Tensor:
    """Index map ``row * width + col + 1`` of whole-pixel positions, 0 where not ``inside``.

    Args:
        col, row: ``(B, S, S)`` float whole-pixel positions (modified in place when
            ``inside`` is ``None``: clamped into the source).
        height, width: source size.
        inside: ``(B, S, S)`` bool, or ``None`` when every position is known to be in the
            source up to rounding.

    Returns:
        ``(B, S, S)`` int64.
    """
    if inside is None:
        col.clamp_(0, width - 1)
        row.clamp_(0, height - 1)
    # int32 arithmetic where it cannot overflow: half the memory traffic of int64.
    flat = row.to(torch.int64 if height * width >= 2**31 - 1 else torch.int32) * width
    flat = flat.add_(col.to(flat.dtype)).add_(1)
    return (flat if inside is None else torch.where(inside, flat, 0)).long()


def _grid_scale(height: int, width: int) -> tuple[float, float]:
    # align_corners=True maps -1 / +1 to the centres of the first / last pixel, the pixel-centre
    # convention of the positions.
    return 2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)


def _sample(images: Tensor, grid: Tensor) -> Tensor:
    work = images if images.dtype in (torch.float32, torch.float64) else images.float()
    return F.grid_sample(
        work, grid.to(work.dtype), mode="bilinear", padding_mode="border", align_corners=True
    )


def resample(images: Tensor, affine: Tensor, size: int) -> Tensor:
    """Bilinear samples of ``images`` at the source positions of ``affine`` (border padding).

    Args:
        images: ``(B, C, H, W)`` float.
        affine: ``(B, 2, 3)`` view pixel -> source pixel map (pixel centres at integers).
        size: side of the square output.

    Returns:
        ``(B, C, size, size)`` in float32 (float64 stays float64).
    """
    sx, sy = _grid_scale(*images.shape[-2:])
    # The grid is the position plane, scaled.
    ux, vx = _plane_parts(affine, 0, size, sx, -1.0)
    uy, vy = _plane_parts(affine, 1, size, sy, -1.0)
    return _sample(images, torch.stack([ux, uy], dim=-1) + torch.stack([vx, vy], dim=-1))


def _projective_warp(images: Tensor, matrix: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """View, nearest column and row through a ``(B, 3, 3)`` projective view -> source map."""
    w = torch.add(*_plane_parts(matrix, 2, size, 1.0, 0.0))
    x = torch.add(*_plane_parts(matrix, 0, size, 1.0, 0.0)).div_(w)
    y = torch.add(*_plane_parts(matrix, 1, size, 1.0, 0.0)).div_(w)
    sx, sy = _grid_scale(*images.shape[-2:])
    view = _sample(images, torch.stack([x * sx - 1.0, y * sy - 1.0], dim=-1))
    return view, x.add_(0.5).floor_(), y.add_(0.5).floor_()


def warp_with_index(
    images: Tensor, to_source: Tensor, size: int, may_leave_source: bool = True
) -> tuple[Tensor, Tensor]:
    """Resample ``images`` through ``to_source`` and build the matching index map.

    Args:
        images: ``(B, C, H, W)`` float source images.
        to_source: view pixel -> source pixel map, ``(B, 2, 3)`` affine or ``(B, 3, 3)``
            projective (positions divided by the third row).
        size: side of the square view.
        may_leave_source: whether some view pixels may lie outside the source (rotations,
            affine maps). When false (crops, flips and quarter turns stay inside the crop box),
            the outside test and the masking are skipped and the nearest pixel is only
            clamped into the source, which saves about half the work.

    Returns:
        ``view`` ``(B, C, size, size)`` (bilinear; positions within half a pixel outside the
        source take the border value; pixels whose nearest source pixel is outside are 0) and
        ``index`` ``(B, size, size)`` int64: ``row * W + col + 1`` of the nearest source
        pixel, or 0 when that pixel is outside the source.
    """
    _, _, height, width = images.shape
    if to_source.shape[-2] == 3:
        view, col, row = _projective_warp(images, to_source, size)
    else:
        col = torch.add(*_plane_parts(to_source, 0, size, 1.0, 0.5)).floor_()  # floor(x + 0.5)
        row = torch.add(*_plane_parts(to_source, 1, size, 1.0, 0.5)).floor_()
        view = resample(images, to_source, size)
    inside = None
    if may_leave_source:
        inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    index = pixel_index(col, row, height, width, inside)
    if inside is not None:
        view = view * inside[:, None].to(view.dtype)
    return view.to(images.dtype), index
