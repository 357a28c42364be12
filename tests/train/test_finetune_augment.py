"""The official fine-tuning augmentation against a restatement of data_for_seg.join_transform."""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from contrastseg.train.finetune_augment import _flip_rotate, _shift_scale, official_augment


def _official_dihedral(n: int) -> Counter:
    """np.flip by f in [1, 0, -1, 2, 2][randint(0, 5)], then np.rot90(k = randint(0, 4))."""
    rng, base, out = np.random.RandomState(0), np.arange(4).reshape(2, 2), Counter()
    for _ in range(n):
        f = [1, 0, -1, 2, 2][rng.randint(0, 5)]
        x = base if f == 2 else (np.flip(base, f) if f != -1 else np.flipud(np.fliplr(base)))
        out[tuple(np.rot90(x, rng.randint(0, 4), (1, 0)).reshape(-1))] += 1
    return out


def test_flip_and_rotation_frequencies_match_the_official_ones() -> None:
    n = 8000
    masks = torch.arange(4).view(1, 2, 2).repeat(n, 1, 1)
    generator = torch.Generator().manual_seed(0)
    _, rotated = _flip_rotate(masks[:, None].float(), masks, generator)
    ours = Counter(tuple(m.reshape(-1).tolist()) for m in rotated)
    official = _official_dihedral(100000)
    assert set(ours) == set(official)
    chi2 = sum((ours[k] - official[k] * n / 1e5) ** 2 / (official[k] * n / 1e5) for k in official)
    assert chi2 < 30.0, (ours, official)  # 7 dof: p < 1e-4 beyond 29.9


def _official_border_rate(side: int, n: int) -> float:
    """How often randomShiftScaleRotate(p=0.5, shift/scale/aspect 0.1, angle 0) leaves a border.

    Its matrix at angle 0 scales both axes by cos(0) * sx, sx = scale * aspect / sqrt(aspect);
    output pixel u shows source (u - side / 2 - dx) / sx + side / 2, outside the patch when
    that rounds beyond [0, side - 1] (the nearest-neighbour mask's rule).
    """
    rng = np.random.RandomState(0)
    hit = rng.random_sample(n) < 0.5
    scale, aspect = rng.uniform(0.9, 1.1, n), rng.uniform(0.9, 1.1, n)
    sx = np.cos(0.0) * scale * aspect / aspect**0.5
    dx, dy = (np.round(rng.uniform(-0.1, 0.1, n) * side) for _ in range(2))
    u = np.array([0.0, side - 1.0])
    border = np.zeros(n, dtype=bool)
    for shift in (dx, dy):
        src = (u[None] - side / 2 - shift[:, None]) / sx[:, None] + side / 2
        border |= (src[:, 0] < -0.5) | (src[:, 1] > side - 0.5)
    return float((hit & border).mean())


def test_shift_scale_warps_half_the_patches_and_fills_with_ignore() -> None:
    n = 2000
    images = torch.ones(n, 1, 16, 16)
    masks = torch.full((n, 16, 16), 2, dtype=torch.long)
    x, y = _shift_scale(images, masks, torch.Generator().manual_seed(1), ignore_index=255)
    assert set(y.unique().tolist()) <= {2, 255}
    warped = (y == 255).flatten(1).any(1).float().mean().item()
    # p = 0.5 of a warp, and a warp leaves a border unless its shift and scale cancel
    expected = _official_border_rate(16, 200000)
    assert abs(warped - expected) < 4 * (expected * (1 - expected) / n) ** 0.5, (warped, expected)
    assert torch.all((x == 0) | (y != 255)[:, None] | (x < 1))


def test_official_augment_keeps_shapes_and_normalisation() -> None:
    generator = torch.Generator().manual_seed(2)
    images = torch.rand(8, 4, 16, 16)
    mean, std = [0.5, 0.4, 0.3, 0.2], [0.2, 0.2, 0.3, 0.3]
    normed = (images - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    masks = torch.randint(0, 5, (8, 16, 16))
    x, y = official_augment(normed, masks, generator, mean, std, ignore_index=255)
    assert x.shape == normed.shape and x.dtype == normed.dtype
    assert y.shape == masks.shape and y.dtype == masks.dtype
    back = x * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    assert back.min() >= -1e-5 and back.max() <= 1 + 1e-5
