"""Tests of contrastseg/augment/ops/ (band, geometric, registry) against torchvision, Kornia,
numpy and torch.rot90."""

import kornia.augmentation as K
import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from contrastseg.augment.ops import (
    GaussianBlur,
    RandomBandColorJitter,
    RandomBandGaussianNoise,
    RandomBandGrayscale,
    RandomQuarterTurn,
    make_op,
)


def _jitter(**factors):
    """Fixed parameters for RandomBandColorJitter (1 = identity, hue 0 = identity)."""
    b = len(next(iter(factors.values())))
    params = {"brightness": torch.ones(b), "contrast": torch.ones(b)}
    params |= {"saturation": torch.ones(b), "hue": torch.zeros(b)}
    params |= {k: torch.tensor(v) for k, v in factors.items()}
    return params


@pytest.fixture
def rgb():
    return torch.rand(3, 3, 12, 14, generator=torch.Generator().manual_seed(0))


def test_color_jitter_brightness_saturation_hue_match_torchvision(rgb):
    op = RandomBandColorJitter(0.5, 0.0, 0.9, 0.4, rgb_bands=[0, 1, 2], p=1.0)
    for name, values, oracle in (
        ("brightness", [0.6, 1.0, 1.3], TF.adjust_brightness),
        ("saturation", [0.0, 0.7, 1.5], TF.adjust_saturation),
        ("hue", [-0.3, 0.0, 0.1], TF.adjust_hue),
    ):
        out = op(rgb, params=_jitter(**{name: values}))
        for i, v in enumerate(values):
            torch.testing.assert_close(out[i], oracle(rgb[i], v), atol=1e-4, rtol=0)


def test_color_jitter_contrast_is_per_band_and_rgb_ops_touch_only_rgb_bands():
    images = torch.rand(2, 6, 9, 7)
    op = RandomBandColorJitter(0.0, 0.8, 0.5, 0.2, rgb_bands=[4, 2, 0], value_range=None, p=1.0)
    out = op(images, params=_jitter(contrast=[0.5, 1.7])).numpy()
    x = images.numpy()
    mean = x.mean(axis=(2, 3), keepdims=True)
    expected = mean + np.array([0.5, 1.7])[:, None, None, None] * (x - mean)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    # Saturation 0 on bands (4, 2, 0) is torchvision's grayscale of that triple; 1, 3, 5 unchanged.
    out = op(images, params=_jitter(saturation=[0.0, 0.0]))
    for i in range(2):
        gray = TF.rgb_to_grayscale(images[i, [4, 2, 0]])
        for band in (4, 2, 0):
            torch.testing.assert_close(out[i, band], gray[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, [1, 3, 5]], images[:, [1, 3, 5]])


def test_color_jitter_draws_within_the_ranges_and_respects_p():
    torch.manual_seed(0)
    op = RandomBandColorJitter(0.4, 0.3, 0.2, 0.1, p=0.5)
    params = op.forward_parameters((4000, 3, 4, 4))
    assert params["brightness"].min() >= 0.6 and params["brightness"].max() <= 1.4
    assert params["contrast"].min() >= 0.7 and params["contrast"].max() <= 1.3
    assert params["hue"].abs().max() <= 0.1
    assert 0.45 < params["batch_prob"].float().mean() < 0.55


def test_grayscale_modes():
    images = torch.rand(5, 4, 6, 6)
    mean = RandomBandGrayscale("mean", p=1.0)(images).numpy()
    np.testing.assert_allclose(
        mean, np.repeat(images.numpy().mean(1, keepdims=True), 4, 1), atol=1e-6
    )
    op = RandomBandGrayscale("random_band", p=1.0)
    out = op(images).numpy()
    bands = op._params["band"].tolist()
    for i, band in enumerate(bands):
        np.testing.assert_array_equal(out[i], np.repeat(images.numpy()[i, band : band + 1], 4, 0))
    torch.manual_seed(0)
    drawn = op.forward_parameters((3000, 4, 2, 2))["band"]
    assert set(drawn.tolist()) == {0, 1, 2, 3}


def test_selected_samples_only_equals_kornias_blend():
    # On the CPU the op computes the chosen rows alone; Kornia's own path blends all rows.
    images = torch.rand(12, 3, 10, 10)
    op = RandomBandColorJitter(0.5, 0.5, 0.5, 0.2, p=0.5)
    torch.manual_seed(3)
    out = op(images)
    params = op._params
    blended = K.IntensityAugmentationBase2D.transform_inputs(op, images, params, op.flags)
    torch.testing.assert_close(out, blended)
    chosen = params["batch_prob"] > 0.5
    assert 0 < chosen.sum() < 12 and torch.equal(out[~chosen], images[~chosen])
    # A batch of 4 (the length of Kornia's forward_input_shape) works alike.
    four = images[:4]
    torch.manual_seed(0)
    out = op(four)
    torch.testing.assert_close(
        out, K.IntensityAugmentationBase2D.transform_inputs(op, four, op._params, op.flags)
    )


def test_noise_std_range_and_clamp():
    op = RandomBandGaussianNoise((0.05, 0.1), value_range=None, p=1.0)
    out = op(torch.zeros(2, 3, 64, 64), params={"std": torch.tensor([0.05, 0.1])})
    assert abs(float(out[0].std()) - 0.05) < 0.003 and abs(float(out[1].std()) - 0.1) < 0.005
    clamped = RandomBandGaussianNoise((0.5, 0.5), value_range=(0.0, 1.0), p=1.0)(
        torch.zeros(1, 1, 8, 8)
    )
    assert clamped.min() >= 0 and clamped.max() <= 1


@pytest.mark.parametrize("border", ["reflect", "replicate"])
def test_blur_equals_kornias_blur(border):
    # The separable path (reflect) and Kornia's own (other borders) against Kornia's blur.
    images = torch.rand(3, 4, 20, 20)
    sigma = torch.tensor([0.8, 1.1, 1.4])
    out = GaussianBlur((9, 9), (0.8, 1.4), border_type=border, p=1.0)(
        images, params={"sigma": sigma}
    )
    oracle = K.RandomGaussianBlur((9, 9), (0.8, 1.4), border_type=border, p=1.0)
    torch.testing.assert_close(out, oracle(images, params={"sigma": sigma}), atol=1e-5, rtol=0)


def test_quarter_turn_is_rot90_and_its_matrix_is_kornias():
    images = torch.rand(3, 2, 7, 7)
    k = torch.tensor([1, 2, 3])
    op = RandomQuarterTurn(p=1.0)
    out = op(images, params={"k": k})
    for i in range(3):
        assert torch.equal(out[i], torch.rot90(images[i], int(k[i]), dims=(-2, -1)))
    # Kornia's RandomRotation90 reports the same matrix for the same number of turns.
    oracle = K.RandomRotation90((1, 3), p=1.0)
    oracle(images, params={"times": k.float()})
    torch.testing.assert_close(op.transform_matrix, oracle.transform_matrix, atol=1e-5, rtol=0)
    torch.manual_seed(0)
    drawn = op.forward_parameters((3000, 1, 4, 4))["k"]
    counts = torch.bincount(drawn, minlength=4)[1:].float() / 3000
    assert counts.min() > 0.3 and counts.max() < 0.37  # uniform over 1, 2, 3


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "RandomMotionBlr"}, "did you mean RandomMotionBlur"),
        ({"name": "RandomMotionBlur", "kernel": 5}, "RandomMotionBlur takes no argument 'kernel'"),
        (
            {"name": "RandomMotionBlur", "kernel_size": 4, "angle": 30.0, "direction": 0.5},
            r"RandomMotionBlur\(kernel_size=4",
        ),
        ({"name": "RandomElasticTransform"}, "RandomElasticTransform is refused"),
        ({"name": "RandomThinPlateSpline"}, "RandomThinPlateSpline is refused"),
        ({"name": "RandomCrop", "size": [8, 8]}, "RandomCrop is refused"),
        ({"name": "RandomFisheye", "center_x": [-0.3, 0.3]}, "RandomFisheye is refused"),
        ({"name": "RandomMixUpV2"}, "RandomMixUpV2 is refused"),
        ({"name": "RandomAffine", "degrees": 10.0, "resample": "nearest"}, "bilinear"),
        ({"kernel_size": 3}, "name"),
    ],
)
def test_make_op_errors_name_the_op_and_the_argument(spec, message):
    with pytest.raises(ValueError, match=message):
        make_op(spec, where="views.t2.extra[0]")


def test_make_op_builds_kornia_and_own_ops_from_yaml_values():
    blur = make_op(
        {"name": "RandomMotionBlur", "kernel_size": 5, "angle": 30.0, "direction": 0.5, "p": 0.3}
    )
    assert isinstance(blur, K.RandomMotionBlur) and blur.p == 0.3
    affine = make_op({"name": "RandomAffine", "degrees": [-10, 10], "translate": [0.1, 0.1]})
    assert isinstance(affine, K.RandomAffine)
    assert isinstance(
        make_op({"name": "RandomBandGrayscale", "mode": "random_band"}), RandomBandGrayscale
    )
