"""The converged linear probe: softmax regression solved to the optimum, checked against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from contrastseg.metrics import ConfusionMatrix
from contrastseg.train.linear_fit import (
    cache_pixels,
    fit_probe_head,
    fit_softmax,
    fold_head,
    pixel_grid,
)


def _problem(n=2000, c=12, k=4, noise=0.8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g)
    w = torch.randn(k, c, generator=g)
    y = (x @ w.T + noise * torch.randn(n, k, generator=g)).argmax(1)
    return x, y


def _miou(pred, y, k):
    confusion = ConfusionMatrix(k, 255)
    confusion.update(pred, y)
    return confusion.compute()["miou"]


@pytest.mark.parametrize("l2", [1e-2, 1e-3])
def test_fit_matches_scikit_learn(l2):
    linear_model = pytest.importorskip("sklearn.linear_model")
    x, y = _problem()
    x_test, y_test = _problem(seed=1)
    fit = fit_softmax(x, y, 4, l2, max_iter=500)
    # scikit-learn minimises C * sum(CE) + ||W||^2 / 2 (intercept free): C = 1 / (N * l2)
    reference = linear_model.LogisticRegression(C=1 / (len(y) * l2), max_iter=10000, tol=1e-10)
    reference.fit(x.numpy(), y.numpy())
    assert fit.grad_norm < 1e-4
    np.testing.assert_allclose(fit.weight.numpy(), reference.coef_, atol=2e-3)
    # the intercepts are defined up to a common shift (softmax is invariant to it)
    np.testing.assert_allclose(
        fit.bias.numpy() - fit.bias.numpy().mean(),
        reference.intercept_ - reference.intercept_.mean(),
        atol=2e-3,
    )
    ours = _miou((x_test @ fit.weight.T + fit.bias).argmax(1), y_test, 4)
    theirs = _miou(torch.as_tensor(reference.predict(x_test.numpy())), y_test, 4)
    assert abs(ours - theirs) < 0.01  # within 1 point of mIoU


def test_objective_is_at_its_minimum():
    """At the solution the gradient of mean(CE) + l2/2 ||W||^2 vanishes (analytic check)."""
    x, y = _problem(n=500, c=5, k=3)
    l2 = 1e-2
    fit = fit_softmax(x, y, 3, l2)
    p = torch.softmax(x @ fit.weight.T + fit.bias, 1)
    onehot = F.one_hot(y, 3).float()
    grad_w = (p - onehot).T @ x / len(y) + l2 * fit.weight
    grad_b = (p - onehot).mean(0)
    assert grad_w.abs().max() < 1e-4 and grad_b.abs().max() < 1e-4


def test_strong_l2_shrinks_the_weights_to_zero():
    x, y = _problem(n=400)
    assert fit_softmax(x, y, 4, 1e3).weight.abs().max() < 1e-3
    assert fit_softmax(x, y, 4, 1e-4).weight.abs().max() > 1.0


def test_folded_head_reads_raw_features():
    x, y = _problem(n=300, c=6, k=3)
    x = x * torch.tensor([1.0, 100.0, 0.01, 5.0, 1.0, 3.0]) + 7.0  # scales apart
    result = fit_probe_head(x, y, 3, [1e-3])
    mean, std = x.mean(0), x.std(0)
    fit = result.fits[1e-3]
    expected = ((x - mean) / std) @ fit.weight.T + fit.bias
    got = result.head(x[:, :, None, None])[:, :, 0, 0]
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=1e-3)
    folded = fold_head(fit, mean, std)
    torch.testing.assert_close(folded.weight, result.head.weight)


def test_l2_is_chosen_by_the_score_ties_going_to_the_stronger():
    x, y = _problem(n=300)
    seen = []

    def score(head):
        seen.append(float(head.weight.abs().max()))
        return 0.5  # every strength scores the same: the strongest wins

    result = fit_probe_head(x, y, 4, [1e-4, 1e-1, 1e-2], score)
    assert result.l2 == 1e-1
    assert list(result.scores) == [1e-4, 1e-1, 1e-2]  # in the order given
    assert seen == sorted(seen)  # fitted strongest first: weights grow

    def prefer_weak(head):
        return float(head.weight.abs().max())

    assert fit_probe_head(x, y, 4, [1e-4, 1e-1, 1e-2], prefer_weak).l2 == 1e-4


def test_probe_head_errors():
    x, y = _problem(n=50)
    with pytest.raises(ValueError, match="validation score"):
        fit_probe_head(x, y, 4, [1e-3, 1e-2])
    with pytest.raises(ValueError, match="no labeled pixel"):
        fit_probe_head(x[:0], y[:0], 4, [1e-3])
    with pytest.raises(ValueError, match="empty"):
        fit_probe_head(x, y, 4, [])


def test_cached_pixels_are_the_upsampled_features():
    """Sampling equals F.interpolate(bilinear, align_corners=False) read at the grid pixels."""
    g = torch.Generator().manual_seed(3)
    features = torch.randn(2, 5, 8, 9, generator=g)
    labels = torch.randint(0, 3, (2, 32, 36), generator=g)
    labels[0, :8] = 255  # ignored rows
    x, y = cache_pixels(lambda t: t, [(features, labels)], 255, pixel_step=3)
    full = F.interpolate(features, size=(32, 36), mode="bilinear", align_corners=False)
    rows, cols = pixel_grid(32, 3), pixel_grid(36, 3)
    expected = full.permute(0, 2, 3, 1)[:, rows][:, :, cols]
    picked = labels[:, rows][:, :, cols]
    keep = picked != 255
    torch.testing.assert_close(x, expected[keep], atol=1e-5, rtol=1e-5)
    assert torch.equal(y, picked[keep])
    assert (y != 255).all() and len(y) < picked.numel()
    x_few, _ = cache_pixels(lambda t: t, [(features, labels)], 255, pixel_step=3, max_cells=10)
    assert len(x_few) == 10


def test_pixel_grid():
    assert pixel_grid(10, 4).tolist() == [2, 6]
    assert pixel_grid(3, 8).tolist() == [2]
    assert pixel_grid(1, 4).tolist() == [0]
