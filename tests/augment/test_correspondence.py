"""Tests of contrastseg/augment/correspondence.py and pooling.sample_cells against brute-force oracles."""

import numpy as np
import pytest
import torch

from contrastseg.augment.config import RotationConfig, ViewsConfig
from contrastseg.augment.correspondence import match_points
from contrastseg.augment.pooling import sample_cells
from contrastseg.augment.views import PairedViews


def views(b=4, size=40, seed=0):
    cfg = ViewsConfig(size=size, rgb_bands=None)
    cfg.t2.rotation = RotationConfig(p=1.0, degrees=(-60.0, 60.0))
    return PairedViews(cfg)(torch.rand(b, 3, 50, 56), torch.Generator().manual_seed(seed))


def oracle(index1, index2, stride):
    """Per image: {view-1 cell-centre pixel (x, y) -> view-2 centroid} for every matchable cell."""
    out = []
    for i1, i2 in zip(index1.numpy(), index2.numpy(), strict=True):
        matches = {}
        for r in range(stride // 2, i1.shape[0], stride):
            for c in range(stride // 2, i1.shape[1], stride):
                if i1[r, c] <= 0:
                    continue
                rows, cols = np.nonzero(i2 == i1[r, c])
                if len(rows):
                    matches[(c + 0.5, r + 0.5)] = (cols.mean() + 0.5, rows.mean() + 0.5)
        out.append(matches)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_points_match_the_brute_force_footprint_centroids(seed):
    pair = views(seed=seed)
    points = match_points(pair.index1, pair.index2, 30, 4, torch.Generator().manual_seed(seed))
    expected = oracle(pair.index1, pair.index2, 4)
    for b, matches in enumerate(expected):
        valid = points.valid[b]
        assert int(valid.sum()) == min(30, len(matches))
        assert bool(valid[: int(valid.sum())].all())  # valid points come first
        chosen = [tuple(p) for p in points.points1[b][valid].tolist()]
        assert len(set(chosen)) == len(chosen)  # without replacement
        for p1, p2 in zip(chosen, points.points2[b][valid].tolist(), strict=True):
            np.testing.assert_allclose(p2, matches[p1], atol=1e-4)


def test_identical_views_match_each_cell_to_itself():
    index = (torch.arange(24 * 20).reshape(1, 24, 20) + 1).expand(2, -1, -1)
    points = match_points(index, index, 1000, 4, num_source_pixels=24 * 20)
    assert int(points.valid.sum()) == 2 * 6 * 5  # every cell, and padding slots invalid
    torch.testing.assert_close(points.points1[points.valid], points.points2[points.valid])


def test_disjoint_views_give_no_valid_point_and_empty_maps_work():
    index1 = torch.arange(1, 65).reshape(1, 8, 8)
    points = match_points(index1, index1 + 100, 5)
    assert not points.valid.any()
    empty = torch.zeros(2, 0, 0, dtype=torch.long)
    assert match_points(empty, empty, 3).valid.shape == (2, 3)


def test_draw_is_uniform_over_matchable_cells():
    # 9 matchable cells, 3 drawn per call: each is drawn with probability 1/3
    index = torch.arange(1, 145).reshape(1, 12, 12)
    counts = torch.zeros(9)
    generator = torch.Generator().manual_seed(0)
    trials = 3000
    for _ in range(trials):
        points = match_points(index, index, 3, 4, generator, num_source_pixels=144)
        cells = (points.points1[0, :, 1] // 4 * 3 + points.points1[0, :, 0] // 4).long()
        counts[cells] += 1
    expected = trials / 3
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 26.1  # chi-square, 8 degrees of freedom, p = 0.001


def test_bad_arguments_are_refused():
    index = torch.ones(1, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="integer"):
        match_points(index.float(), index, 2)
    with pytest.raises(ValueError, match="num_points and stride"):
        match_points(index, index, 0)
    with pytest.raises(ValueError, match="hold 1 and 2 images"):
        match_points(index, index.expand(2, -1, -1), 2)


def test_sample_cells_takes_the_cell_under_each_point():
    features = torch.randn(2, 3, 5, 6, requires_grad=True)
    points = torch.tensor(
        [[[0.5, 0.5], [23.9, 19.9], [8.0, 4.0]], [[30.0, -1.0], [4.1, 7.9], [0, 0]]]
    )
    out = sample_cells(features, points, 4)
    f = features.detach().numpy()
    for b in range(2):
        for k, (x, y) in enumerate(points[b].tolist()):
            col = min(max(int(np.floor(x / 4)), 0), 5)
            row = min(max(int(np.floor(y / 4)), 0), 4)
            np.testing.assert_allclose(out[b, k].detach().numpy(), f[b, :, row, col])
    out.sum().backward()  # differentiable
    assert features.grad is not None and features.grad.sum() == 6 * 3
