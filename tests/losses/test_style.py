"""style_vector against numpy's mean and unbiased variance, also for half-precision input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contrastseg.losses.style import style_vector


def numpy_style(features: np.ndarray) -> np.ndarray:
    flat = features.astype(np.float64).reshape(*features.shape[:2], -1)
    return np.concatenate([flat.mean(axis=2), flat.var(axis=2, ddof=1)], axis=1)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 8, 1, 2), (3, 1, 7, 7)])
def test_matches_numpy(shape: tuple[int, int, int, int]) -> None:
    x = np.random.default_rng(sum(shape)).normal(loc=2.0, scale=3.0, size=shape)
    got = style_vector(torch.tensor(x, dtype=torch.float32))
    assert got.shape == (shape[0], 2 * shape[1]) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), numpy_style(x), rtol=1e-5, atol=1e-5)


def test_constant_map_has_zero_variance() -> None:
    x = torch.full((2, 3, 4, 4), 7.5)
    np.testing.assert_array_equal(style_vector(x).numpy(), [[7.5] * 3 + [0.0] * 3] * 2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_input_computed_in_float32(dtype: torch.dtype) -> None:
    # Values ~ +-1000: squared deviations of ~1e6 overflow float16 (max 65504).
    gen = torch.Generator().manual_seed(0)
    x = (1000 * torch.randn(2, 4, 8, 8, generator=gen)).to(dtype)
    got = style_vector(x)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    np.testing.assert_allclose(got.numpy(), numpy_style(x.float().numpy()), rtol=1e-5)


def test_under_bf16_autocast_is_float32_and_exact() -> None:
    gen = torch.Generator().manual_seed(1)
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(2, 3, 10, 10, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = conv(x)
        got = style_vector(features)
    assert features.dtype == torch.bfloat16 and got.dtype == torch.float32
    np.testing.assert_allclose(
        got.detach().numpy(), numpy_style(features.detach().float().numpy()), rtol=1e-5, atol=1e-6
    )


def test_gradient_matches_finite_differences() -> None:
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(style_vector, (x,))


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (torch.randn(2, 3, 4), r"\(B, C, H, W\)"),
        (torch.ones(2, 3, 4, 4, dtype=torch.int64), "floating-point"),
        (torch.randn(2, 3, 1, 1), "at least 2 spatial positions"),
    ],
)
def test_errors(x: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        style_vector(x)
