"""Tests of contrastseg/augment/views.py: PairedViews end to end."""

import dataclasses

import numpy as np
import pytest
import ramps
import torch

from contrastseg.augment.config import (
    ColorConfig,
    GrayscaleConfig,
    PipelineConfig,
    RotationConfig,
    ViewsConfig,
)
from contrastseg.augment.views import PairedViews

H, W, S = 40, 48, 32


def ramp(b, height=H, width=W, bands=2):
    return ramps.ramp(b, height, width, bands)


def geometry_only(pipe: PipelineConfig) -> PipelineConfig:
    return dataclasses.replace(
        pipe,
        color=ColorConfig(),
        grayscale=GrayscaleConfig(),
        blur=dataclasses.replace(pipe.blur, p=0.0),
        noise=dataclasses.replace(pipe.noise, p=0.0),
    )


def check_half_pixel_rule(view, index, height=H, width=W):
    ramps.check_half_pixel_rule(view, index, height, width)


def test_full_t2_index_maps_equal_its_geometry():
    # The intensity ops draw after the geometry, so the full t2 keeps the geometry-only index
    # maps (which obey the half-pixel rule above) while changing the pixel values.
    images = torch.rand(6, 3, H, W)
    full = ViewsConfig(size=S)
    full.t2.rotation = RotationConfig(p=0.5)
    geo = dataclasses.replace(full, t2=geometry_only(full.t2))
    a = PairedViews(full)(images, torch.Generator().manual_seed(5))
    b = PairedViews(geo)(images, torch.Generator().manual_seed(5))
    assert torch.equal(a.index1, b.index1) and torch.equal(a.index2, b.index2)
    assert torch.equal(a.view1, b.view1)
    assert not torch.equal(a.view2, b.view2)
    assert a.view2.min() >= 0 and a.view2.max() <= 1  # value_range clamp


def test_same_seed_same_views_different_seed_differs_and_global_rng_is_untouched():
    images = torch.rand(4, 3, H, W)
    views = PairedViews(ViewsConfig(size=S))
    state = torch.get_rng_state()
    a = views(images, torch.Generator().manual_seed(11))
    assert torch.equal(torch.get_rng_state(), state)
    b = views(images, torch.Generator().manual_seed(11))
    c = views(images, torch.Generator().manual_seed(12))
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(a.index2, c.index2)
    g = torch.Generator().manual_seed(11)
    first, second = views(images, g), views(images, g)  # the generator moves on between calls
    assert torch.equal(first.index2, a.index2) and not torch.equal(second.index2, a.index2)
    torch.manual_seed(7)
    d = views(images)
    torch.manual_seed(7)
    e = views(images)
    assert torch.equal(d.view2, e.view2) and torch.equal(d.index2, e.index2)


def test_samples_get_different_parameters():
    images = ramp(8)
    pair = PairedViews(ViewsConfig(size=S, value_range=None, rgb_bands=None))(
        images, torch.Generator().manual_seed(0)
    )
    firsts = {int(pair.index1[i, 0, 0]) for i in range(8)}
    assert len(firsts) > 4


@pytest.mark.parametrize(("bands", "rgb"), [(4, [0, 1, 2]), (4, None), (13, [3, 2, 1]), (13, None)])
def test_multiband_inputs(bands, rgb):
    images = torch.rand(3, bands, H, W)
    cfg = ViewsConfig(size=S, rgb_bands=rgb)
    pair = PairedViews(cfg)(images, torch.Generator().manual_seed(1))
    assert pair.view1.shape == (3, bands, S, S) and pair.view2.shape == (3, bands, S, S)
    assert torch.isfinite(pair.view2).all()


def test_hue_and_saturation_touch_only_the_rgb_bands():
    images = torch.rand(4, 13, H, W)
    base = ViewsConfig(size=S, rgb_bands=[3, 2, 1], t1=PipelineConfig(), t2=PipelineConfig())
    jitter = dataclasses.replace(
        base,
        t2=PipelineConfig(
            color=ColorConfig(p=1.0, brightness=0.0, contrast=0.0, saturation=0.9, hue=0.3)
        ),
    )
    plain = PairedViews(base)(images, torch.Generator().manual_seed(2))
    coloured = PairedViews(jitter)(images, torch.Generator().manual_seed(2))
    others = [b for b in range(13) if b not in (1, 2, 3)]
    torch.testing.assert_close(coloured.view2[:, others], plain.view2[:, others])
    assert (coloured.view2[:, [1, 2, 3]] - plain.view2[:, [1, 2, 3]]).abs().max() > 0.05


def test_grayscale_replaces_every_band_by_the_band_mean():
    images = torch.rand(3, 5, H, W)
    base = ViewsConfig(size=S, rgb_bands=None, t1=PipelineConfig(), t2=PipelineConfig())
    gray = dataclasses.replace(base, t2=PipelineConfig(grayscale=GrayscaleConfig(p=1.0)))
    plain = PairedViews(base)(images, torch.Generator().manual_seed(4)).view2.numpy()
    out = PairedViews(gray)(images, torch.Generator().manual_seed(4)).view2.numpy()
    expected = np.repeat(plain.mean(axis=1, keepdims=True), 5, axis=1)
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_index_maps_stay_integer_under_autocast():
    images = torch.rand(2, 3, 300, 310)  # large enough that bfloat16 positions would be wrong
    views = PairedViews(ViewsConfig(size=S))
    reference = views(images, torch.Generator().manual_seed(9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pair = views(images, torch.Generator().manual_seed(9))
    assert pair.index1.dtype == torch.int64 and pair.index2.dtype == torch.int64
    assert torch.equal(pair.index1, reference.index1) and torch.equal(pair.index2, reference.index2)
    assert pair.view1.dtype == torch.float32
    torch.testing.assert_close(pair.view2, reference.view2)


def test_bfloat16_input_gives_bfloat16_views_and_exact_indices():
    pair = PairedViews(ViewsConfig(size=S, value_range=None, rgb_bands=None))(
        ramp(4).to(torch.bfloat16), torch.Generator().manual_seed(0)
    )
    assert pair.view1.dtype == torch.bfloat16 and pair.index1.dtype == torch.int64
    reference = PairedViews(ViewsConfig(size=S, value_range=None, rgb_bands=None))(
        ramp(4), torch.Generator().manual_seed(0)
    )
    assert torch.equal(pair.index2, reference.index2)


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "float"),
        (torch.zeros(3, 8, 8), "float"),
        (torch.zeros(2, 2, 8, 8), "rgb_bands"),
    ],
)
def test_bad_inputs_raise_clear_errors(images, match):
    with pytest.raises(ValueError, match=match):
        PairedViews(ViewsConfig(size=4))(images)


def test_subset_and_where_paths_agree():
    # The CPU computes only the selected samples, other devices compute all and select.
    from contrastseg.augment import intensity

    _apply = intensity.apply_to_selected

    images = torch.rand(5, 3, 9, 9)
    mask = torch.tensor([True, False, True, True, False])
    sigma = torch.linspace(0.5, 1.5, 5)

    def op(x, pick):
        return intensity.gaussian_blur(x, pick(sigma), 7)

    a = _apply(mask, op, images, subset=True)
    b = _apply(mask, op, images, subset=False)
    torch.testing.assert_close(a, b)
    assert torch.equal(a[~mask], images[~mask]) and not torch.equal(a[mask], images[mask])
