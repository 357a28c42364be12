"""The official fine-tuning shift-scale warp is isotropic: restated from data_for_seg.py.

``randomShiftScaleRotate`` (T-SS-GLCNet/utils/data_for_seg.py, lines 184-247) draws
``scale`` and ``aspect`` in [0.9, 1.1], sets ``sx = scale * aspect / sqrt(aspect)`` and
``sy = scale / sqrt(aspect)``, then builds ``[[cos(a) sx, -sin(a) sy], [sin(a) sy, cos(a) sx]]``:
at ``a = 0`` both axes scale by ``sx``. :func:`_official_matrix` restates that and solves the
perspective transform of its box, as ``cv2.getPerspectiveTransform`` does.
"""

from __future__ import annotations

import numpy as np
import torch

from contrastseg.train.finetune_augment import _shift_scale

SIDE = 64


def _official_matrix(side: int, scale: float, aspect: float, dx: float, dy: float) -> np.ndarray:
    """The 3x3 matrix of randomShiftScaleRotate(angle 0) for these draws (source -> output)."""
    angle = 0.0
    sx, sy = scale * aspect / aspect**0.5, scale / aspect**0.5
    cc, ss = np.cos(angle / 180 * np.pi) * sx, np.sin(angle / 180 * np.pi) * sy
    rotate = np.array([[cc, -ss], [ss, cc]])
    box0 = np.array([[0, 0], [side, 0], [side, side], [0, side]], dtype=np.float64)
    box1 = (box0 - side / 2) @ rotate.T + np.array([side / 2 + dx, side / 2 + dy])
    # getPerspectiveTransform: the 8 unknowns of [[a, b, c], [d, e, f], [g, h, 1]]
    rows, rhs = [], []
    for (x, y), (u, v) in zip(box0, box1, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    return np.append(np.linalg.solve(np.array(rows), np.array(rhs)), 1.0).reshape(3, 3)


def test_the_official_matrix_scales_both_axes_alike() -> None:
    """The restatement itself: aspect does not make the official warp anisotropic."""
    rng = np.random.RandomState(0)
    for _ in range(50):
        scale, aspect = rng.uniform(0.9, 1.1, 2)
        dx, dy = np.round(rng.uniform(-0.1, 0.1, 2) * SIDE)
        m = _official_matrix(SIDE, scale, aspect, dx, dy)
        s = scale * aspect**0.5
        np.testing.assert_allclose(m[0, :2], [s, 0], atol=1e-9)
        np.testing.assert_allclose(m[1, :2], [0, s], atol=1e-9)
        np.testing.assert_allclose(m[2], [0, 0, 1], atol=1e-9)


def _ramps(n: int) -> torch.Tensor:
    """Band 0: the column index, band 1: the row index."""
    idx = torch.arange(SIDE, dtype=torch.float32)
    return torch.stack([idx.expand(SIDE, SIDE), idx[:, None].expand(SIDE, SIDE)])[None].repeat(
        n, 1, 1, 1
    )


def _fitted_maps(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, (output -> source slope, intercept) along x and along y, from the ramps.

    The centre 16 x 16 pixels always show source pixels well inside the patch (shift <= 6,
    scale in [0.85, 1.16]), where bilinear sampling of a ramp is exact.
    """
    centre = slice(SIDE // 2 - 8, SIDE // 2 + 8)
    bx, by = x[:, 0, centre, centre], x[:, 1, centre, centre]
    u = torch.arange(SIDE, dtype=torch.float32)[centre]
    # band 0 varies along columns only, band 1 along rows only: an axis-aligned map
    torch.testing.assert_close(bx, bx[:, :1].expand_as(bx), atol=1e-3, rtol=0)
    torch.testing.assert_close(by, by[:, :, :1].expand_as(by), atol=1e-3, rtol=0)
    rows = []
    for values in (bx[:, 0], by[:, :, 0]):
        slope = (values[:, -1] - values[:, 0]) / (u[-1] - u[0])
        rows.append((slope, values[:, 0] - slope * u[0]))
    return rows[0], rows[1]


def test_the_warp_is_isotropic_with_the_official_scale_distribution() -> None:
    n = 1200
    x, _ = _shift_scale(
        _ramps(n),
        torch.zeros(n, SIDE, SIDE, dtype=torch.long),
        torch.Generator().manual_seed(3),
        255,
    )
    (slope_x, icpt_x), (slope_y, icpt_y) = _fitted_maps(x)
    # one scale on both axes, in every sample
    torch.testing.assert_close(slope_x, slope_y, atol=2e-4, rtol=0)
    warped = (slope_x - 1).abs() > 1e-4
    assert 0.4 < warped.float().mean() < 0.6
    s = 1 / slope_x[warped].double().numpy()
    # the shift is a whole number of pixels: source = (u - W/2 - dx) / s + W/2
    dx = (SIDE / 2 - icpt_x[warped].double().numpy()) * s - SIDE / 2
    dy = (SIDE / 2 - icpt_y[warped].double().numpy()) * s - SIDE / 2
    np.testing.assert_allclose(dx, np.round(dx), atol=5e-3)
    np.testing.assert_allclose(dy, np.round(dy), atol=5e-3)
    assert np.abs(np.round(dx)).max() <= round(0.1 * SIDE)
    # the scale's distribution is the official matrix's diagonal entry's (two-sample KS test)
    rng = np.random.RandomState(1)
    official = np.array(
        [_official_matrix(SIDE, *rng.uniform(0.9, 1.1, 2), 0, 0)[0, 0] for _ in range(20000)]
    )
    grid = np.sort(np.concatenate([s, official]))
    ecdf = lambda a: np.searchsorted(np.sort(a), grid, side="right") / a.size  # noqa: E731
    d = np.abs(ecdf(s) - ecdf(official)).max()
    crit = np.sqrt(-np.log(1e-4 / 2) / 2) * np.sqrt(1 / s.size + 1 / official.size)
    assert d < crit, (d, crit)


def test_mask_and_image_are_warped_alike() -> None:
    """Each kept label is the class of the source pixel nearest to the image's sample point."""
    n = 64
    images = _ramps(n)
    grid = torch.arange(SIDE * SIDE).view(SIDE, SIDE)
    masks = grid[None].repeat(n, 1, 1)  # class id = row * SIDE + col
    x, y = _shift_scale(images, masks, torch.Generator().manual_seed(4), ignore_index=-1)
    kept = y >= 0
    row, col = torch.div(y, SIDE, rounding_mode="floor"), y % SIDE
    inner = kept & (row > 0) & (row < SIDE - 1) & (col > 0) & (col < SIDE - 1)
    assert inner.float().mean() > 0.8
    assert ((x[:, 0] - col)[inner].abs().max()) <= 0.5 + 1e-4
    assert ((x[:, 1] - row)[inner].abs().max()) <= 0.5 + 1e-4
    assert (~kept).any()  # some warps brought in a border
