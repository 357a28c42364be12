"""Batched view geometry: random resized crop, flips, rot90 and rotation as one affine map.

Every view pixel ``(u, v)`` (column, row; pixel centres at integers) is mapped to a
continuous source position ``(x, y)`` in the same convention. The image is sampled
bilinearly at ``(x, y)`` and the index map takes the nearest source pixel
``(floor(x + 0.5), floor(y + 0.5))`` of the *same* position, so on a coordinate ramp the
view value and the position its index names differ by at most half a pixel. All
geometric ops of a view are composed into one map and the image is resampled once.

The affine coefficients and the coordinate grid are computed with element-wise float32
arithmetic (no matmul), with autocast off: a TF32 or bfloat16 matmul would move source
positions by up to a pixel on large images.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastseg.augment.config import CropConfig


def sample_crop_boxes(
    batch: int,
    height: int,
    width: int,
    config: CropConfig,
    generator: torch.Generator | None,
    device: torch.device,
    attempts: int = 10,
) -> Tensor:
    """Random resized crop boxes, torchvision's rule vectorised over the batch.

    Up to ``attempts`` (area, log-ratio) draws per sample; the first that fits the source is
    kept, else the largest centred box with a ratio inside the range (torchvision's
    fallback). Boxes are continuous (not rounded to whole pixels).

    Args:
        batch, height, width: batch size and source size in pixels.
        config: scale and ratio ranges.
        generator: random source on ``device`` (``None``: the device's default generator).
        device: where the parameters live.
        attempts: draws per sample before the fallback.

    Returns:
        ``(B, 4)`` float32 ``x0, y0, w, h`` in source pixel-edge coordinates
        (pixel ``j`` spans ``[j, j + 1)``).
    """
    kw = {"generator": generator, "device": device, "dtype": torch.float32}
    area = float(height * width)
    u_area = torch.rand(batch, attempts, **kw)
    u_ratio = torch.rand(batch, attempts, **kw)
    u_pos = torch.rand(batch, 2, **kw)
    s0, s1 = config.scale
    lr0, lr1 = math.log(config.ratio[0]), math.log(config.ratio[1])
    target = area * (s0 + (s1 - s0) * u_area)
    ratio = torch.exp(lr0 + (lr1 - lr0) * u_ratio)
    w = torch.sqrt(target * ratio)
    h = torch.sqrt(target / ratio)
    fits = (w <= width) & (h <= height)
    first = torch.argmax(fits.to(torch.uint8), dim=1, keepdim=True)
    any_fit = fits.any(dim=1)
    w = torch.gather(w, 1, first).squeeze(1)
    h = torch.gather(h, 1, first).squeeze(1)
    # torchvision's fallback: whole image, its ratio clamped into the range.
    in_ratio = width / height
    if in_ratio < config.ratio[0]:
        fw, fh = float(width), width / config.ratio[0]
    elif in_ratio > config.ratio[1]:
        fw, fh = height * config.ratio[1], float(height)
    else:
        fw, fh = float(width), float(height)
    w = torch.where(any_fit, w, torch.full_like(w, fw))
    h = torch.where(any_fit, h, torch.full_like(h, fh))
    x0 = (width - w) * u_pos[:, 0]
    y0 = (height - h) * u_pos[:, 1]
    return torch.stack([x0, y0, w, h], dim=1)


def compose_view_affine(
    boxes: Tensor,
    size: int,
    hflip: Tensor,
    vflip: Tensor,
    rot90_k: Tensor,
    angle: Tensor,
) -> Tensor:
    """Affine map from view pixel coordinates to source pixel coordinates.

    The view is ``rotate(rot90(flip(resized_crop(x))))``: the crop box is resized to
    ``size x size``, flipped, turned by ``k`` quarter turns (as ``torch.rot90(v, k, (-2, -1))``)
    and rotated by ``angle`` about the view centre (90 degrees = one ``rot90`` step).

    Args:
        boxes: ``(B, 4)`` crop boxes ``x0, y0, w, h`` (edge coordinates).
        size: side of the square view.
        hflip, vflip: ``(B,)`` bool.
        rot90_k: ``(B,)`` integer quarter turns in 0..3.
        angle: ``(B,)`` float angle in degrees.

    Returns:
        ``(B, 2, 3)`` float32 ``A`` with ``[x, y] = A[:, :, :2] @ [u, v] + A[:, :, 2]``.
    """
    boxes = boxes.float()
    sx = boxes[:, 2] / size
    sy = boxes[:, 3] / size
    theta = torch.deg2rad(angle.float())
    cos, sin = torch.cos(theta), torch.sin(theta)
    # Undo in reverse order: rotation, then rot90, then flip (centred view coordinates).
    t = torch.stack([cos, -sin, sin, cos], dim=1).view(-1, 2, 2)
    # Undoing k quarter turns of torch.rot90(v, k, (-2, -1)) is the rotation matrix of
    # k * 90 degrees with exact entries (cos, sin in {-1, 0, 1}), built on the device: a
    # torch.tensor(table, device=cuda) here would block on a host-to-device copy every call.
    quarter = rot90_k.long() % 4
    sign = 1 - 2 * torch.div(quarter, 2, rounding_mode="floor")
    qcos = ((1 - quarter % 2) * sign).float()
    qsin = ((quarter % 2) * sign).float()
    k = torch.stack([qcos, -qsin, qsin, qcos], dim=1).view(-1, 2, 2)
    m = _mul2x2(k, t)
    flip = torch.stack([1.0 - 2.0 * hflip.float(), 1.0 - 2.0 * vflip.float()], dim=1)
    m = m * flip[:, :, None] * torch.stack([sx, sy], dim=1)[:, :, None]
    c = (size - 1) / 2.0
    cx = boxes[:, 0] + boxes[:, 2] / 2 - 0.5
    cy = boxes[:, 1] + boxes[:, 3] / 2 - 0.5
    tx = cx - c * (m[:, 0, 0] + m[:, 0, 1])
    ty = cy - c * (m[:, 1, 0] + m[:, 1, 1])
    return torch.cat([m, torch.stack([tx, ty], dim=1)[:, :, None]], dim=2)


def _mul2x2(a: Tensor, b: Tensor) -> Tensor:
    """Batched 2x2 product with element-wise float32 arithmetic (immune to TF32)."""
    return (a[:, :, :, None] * b[:, None, :, :]).sum(dim=2)


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


def source_positions(affine: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Source positions ``(x, y)`` of every view pixel, each ``(B, size, size)`` float32."""
    ux, vx = _plane_parts(affine, 0, size, 1.0, 0.0)
    uy, vy = _plane_parts(affine, 1, size, 1.0, 0.0)
    return ux + vx, uy + vy


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


def resample(images: Tensor, affine: Tensor, size: int) -> Tensor:
    """Bilinear samples of ``images`` at the source positions of ``affine`` (border padding).

    Args:
        images: ``(B, C, H, W)`` float.
        affine: ``(B, 2, 3)`` view pixel -> source pixel map (pixel centres at integers).
        size: side of the square output.

    Returns:
        ``(B, C, size, size)`` in float32 (float64 stays float64).
    """
    _, _, height, width = images.shape
    # align_corners=True maps -1 / +1 to the centres of the first / last pixel, the pixel-centre
    # convention of the positions; the grid is the position plane, scaled.
    sx, sy = 2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)
    ux, vx = _plane_parts(affine, 0, size, sx, -1.0)
    uy, vy = _plane_parts(affine, 1, size, sy, -1.0)
    grid = torch.stack([ux, uy], dim=-1) + torch.stack([vx, vy], dim=-1)  # (B, S, S, 2)
    work = images if images.dtype in (torch.float32, torch.float64) else images.float()
    return F.grid_sample(
        work, grid.to(work.dtype), mode="bilinear", padding_mode="border", align_corners=True
    )


def warp_with_index(
    images: Tensor, affine: Tensor, size: int, may_leave_source: bool = True
) -> tuple[Tensor, Tensor]:
    """Resample ``images`` through ``affine`` and build the matching index map.

    Args:
        images: ``(B, C, H, W)`` float source images.
        affine: ``(B, 2, 3)`` from :func:`compose_view_affine`.
        size: side of the square view.
        may_leave_source: whether some view pixels may lie outside the source (arbitrary
            rotations). When false (crops, flips and rot90 stay inside the crop box, at least
            half a view pixel's footprint from its edge), the outside test and the masking
            are skipped and the nearest pixel is only clamped into the source, which saves
            about half the work.

    Returns:
        ``view`` ``(B, C, size, size)`` (bilinear; positions within half a pixel outside the
        source take the border value; pixels whose nearest source pixel is outside are 0) and
        ``index`` ``(B, size, size)`` int64: ``row * W + col + 1`` of the nearest source
        pixel, or 0 when that pixel is outside the source.
    """
    _, _, height, width = images.shape
    col = torch.add(*_plane_parts(affine, 0, size, 1.0, 0.5)).floor_()  # nearest: floor(x + 0.5)
    row = torch.add(*_plane_parts(affine, 1, size, 1.0, 0.5)).floor_()
    inside = None
    if may_leave_source:
        inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    index = pixel_index(col, row, height, width, inside)
    view = resample(images, affine, size)
    if inside is not None:
        view = view * inside[:, None].to(view.dtype)
    return view.to(images.dtype), index
