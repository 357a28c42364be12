"""Tests of contrastseg/augment/intensity.py against torchvision's functional ops and numpy."""

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from contrastseg.augment import intensity


@pytest.fixture
def rgb():
    return torch.rand(3, 3, 12, 14, generator=torch.Generator().manual_seed(0))


def test_brightness_matches_torchvision(rgb):
    factors = torch.tensor([0.6, 1.0, 1.3])
    out = intensity.adjust_brightness(rgb, factors).clamp(0, 1)
    for i, f in enumerate(factors.tolist()):
        torch.testing.assert_close(out[i], TF.adjust_brightness(rgb[i], f))


def test_contrast_is_per_band_around_the_band_mean():
    images = torch.rand(2, 5, 9, 7)
    factors = torch.tensor([0.5, 1.7])
    out = intensity.adjust_contrast(images, factors).numpy()
    x = images.numpy()
    mean = x.mean(axis=(2, 3), keepdims=True)
    expected = mean + factors.numpy()[:, None, None, None] * (x - mean)
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_saturation_matches_torchvision(rgb):
    factors = torch.tensor([0.0, 0.7, 1.5])
    out = intensity.adjust_saturation(rgb, factors).clamp(0, 1)
    for i, f in enumerate(factors.tolist()):
        torch.testing.assert_close(out[i], TF.adjust_saturation(rgb[i], f), atol=1e-5, rtol=0)


def test_hue_matches_torchvision(rgb):
    shifts = torch.tensor([-0.3, 0.0, 0.1])
    out = intensity.adjust_hue(rgb, shifts)
    for i, s in enumerate(shifts.tolist()):
        torch.testing.assert_close(out[i], TF.adjust_hue(rgb[i], s), atol=1e-4, rtol=0)


def test_blur_matches_torchvision(rgb):
    sigmas = torch.tensor([0.8, 1.1, 1.4])
    out = intensity.gaussian_blur(rgb, sigmas, kernel_size=9)
    for i, s in enumerate(sigmas.tolist()):
        torch.testing.assert_close(
            out[i], TF.gaussian_blur(rgb[i], [9, 9], [s, s]), atol=1e-5, rtol=0
        )


def test_blur_on_a_tiny_image_does_not_fail():
    out = intensity.gaussian_blur(torch.rand(2, 1, 3, 3), torch.tensor([1.0, 2.0]), kernel_size=13)
    assert out.shape == (2, 1, 3, 3) and torch.isfinite(out).all()


def test_band_mean_and_noise():
    images = torch.rand(2, 4, 5, 5)
    np.testing.assert_allclose(
        intensity.to_band_mean(images).numpy(),
        np.repeat(images.numpy().mean(1, keepdims=True), 4, 1),
        atol=1e-6,
    )
    noisy = intensity.gaussian_noise(
        torch.zeros(2, 4, 64, 64), torch.tensor([0.0, 0.1]), torch.Generator().manual_seed(0)
    )
    assert noisy[0].abs().max() == 0
    assert abs(float(noisy[1].std()) - 0.1) < 0.005
