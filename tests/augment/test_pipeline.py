"""Tests of contrastseg/augment/pipeline.py: Kornia modules composed into one warp per view."""

import dataclasses

import numpy as np
import pytest
import ramps
import torch

from contrastseg.augment.config import (
    ColorConfig,
    CropConfig,
    FlipConfig,
    GrayscaleConfig,
    PipelineConfig,
    Rot90Config,
    RotationConfig,
    ViewsConfig,
)
from contrastseg.augment.ops.registry import TRACKED_GEOMETRIC
from contrastseg.augment.views import PairedViews

H, W, S = 40, 48, 32


def ramp(b, bands=2):
    return ramps.ramp(b, H, W, bands)


def check_half_pixel_rule(view, index):
    ramps.check_half_pixel_rule(view, index, H, W)
    # Pixels outside the source (index 0) are 0.
    assert (view.permute(0, 2, 3, 1)[index == 0] == 0).all()


def pipeline_views(t2=None, t1=None, **kwargs):
    kwargs = {"size": S, "value_range": None, **kwargs}
    return PairedViews(ViewsConfig(t1=t1 or PipelineConfig(), t2=t2 or PipelineConfig(), **kwargs))


BUILT_IN = {
    "crop": PipelineConfig(),
    "flip": PipelineConfig(flip=FlipConfig(horizontal_p=0.5, vertical_p=0.5)),
    "rot90": PipelineConfig(rot90=Rot90Config(p=0.7)),
    "rotation": PipelineConfig(rotation=RotationConfig(p=0.8, degrees=(-45.0, 45.0))),
    "all": PipelineConfig(
        flip=FlipConfig(horizontal_p=0.5, vertical_p=0.5),
        rot90=Rot90Config(p=0.8),
        rotation=RotationConfig(p=0.5, degrees=(-180.0, 180.0)),
    ),
}


@pytest.mark.parametrize("name", list(BUILT_IN))
def test_each_built_in_op_obeys_the_half_pixel_rule(name):
    pair = pipeline_views(BUILT_IN[name])(ramp(12), torch.Generator().manual_seed(3))
    assert pair.view1.shape == (12, 2, S, S) and pair.index2.shape == (12, S, S)
    check_half_pixel_rule(pair.view1, pair.index1)
    check_half_pixel_rule(pair.view2, pair.index2)
    assert (pair.index1 > 0).all()  # a crop never leaves the source
    if name == "rotation":
        assert (pair.index2 == 0).any()


#: Each trackable Kornia op with strong settings (p < 1 checks the untouched samples too).
EXTRA = {
    "RandomAffine": {"degrees": 30.0, "translate": [0.1, 0.1], "scale": [0.8, 1.2], "shear": 10.0},
    "RandomFlipChoice": {},
    "RandomHorizontalFlip": {},
    "RandomPerspective": {"distortion_scale": 0.5},
    "RandomQuarterTurn": {},
    "RandomRotation": {"degrees": 40.0},
    "RandomRotation90": {"times": [-3, 3]},
    "RandomShear": {"shear": 20.0},
    "RandomTranslate": {"translate_x": [-0.2, 0.2], "translate_y": [-0.2, 0.2]},
    "RandomVerticalFlip": {},
}


def test_the_extra_op_table_covers_every_trackable_op():
    assert sorted(EXTRA) == sorted(TRACKED_GEOMETRIC)


@pytest.mark.parametrize("name", sorted(EXTRA))
def test_each_trackable_kornia_op_obeys_the_half_pixel_rule(name):
    # p < 1: the samples the op skips keep the identity in the product.
    t2 = PipelineConfig(extra=[{"name": name, "p": 0.75, **EXTRA[name]}])
    views = pipeline_views(t2)
    pair = views(ramp(8), torch.Generator().manual_seed(1))
    op = views.pipelines[1].ops[-1]
    applied = op._params["batch_prob"] > 0.5
    assert applied.any() and not applied.all()
    check_half_pixel_rule(pair.view2, pair.index2)


@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
def test_chained_ops_and_padding_modes_stay_exact(padding):
    # Two ops that move content out of the frame, with every padding mode (which the one warp
    # from the source ignores): outside the source, index 0 and value 0.
    t2 = dataclasses.replace(
        BUILT_IN["all"],
        extra=[
            {
                "name": "RandomAffine",
                "degrees": 25.0,
                "translate": [0.1, 0.1],
                "padding_mode": padding,
            },
            {"name": "RandomPerspective", "distortion_scale": 0.4, "p": 0.7},
            {
                "name": "RandomMotionBlur",
                "kernel_size": 3,
                "angle": 30.0,
                "direction": 0.0,
                "p": 0.0,
            },
        ],
    )
    pair = pipeline_views(t2)(ramp(10), torch.Generator().manual_seed(2))
    check_half_pixel_rule(pair.view2, pair.index2)
    assert 0.2 < (pair.index2 > 0).float().mean() < 1.0


def test_one_warp_equals_kornia_applying_crop_flips_and_quarter_turns_in_turn():
    # Kornia's own forward of each op with the parameters the pipeline drew: the crop
    # resamples once and the flips and quarter turns permute, so the two must agree.
    images = torch.rand(6, 3, H, W)
    t2 = PipelineConfig(flip=FlipConfig(horizontal_p=0.5, vertical_p=0.5), rot90=Rot90Config(p=0.8))
    views = pipeline_views(t2)
    pair = views(images, torch.Generator().manual_seed(4))
    ops = list(views.pipelines[1].ops)
    assert [type(op).__name__ for op in ops] == [
        "RandomResizedCrop",
        "RandomHorizontalFlip",
        "RandomVerticalFlip",
        "RandomQuarterTurn",
    ]
    x = images
    for op in ops:
        x = op(x, params=op._params)
    torch.testing.assert_close(pair.view2, x, atol=1e-4, rtol=0)
    turned = ops[3]._params
    assert ((turned["batch_prob"] > 0.5) & (turned["k"] > 0)).any()
    assert (ops[1]._params["batch_prob"] > 0.5).any()


def test_crop_then_rotation_is_sampled_once_from_the_source():
    # Oracle: numpy bilinear interpolation of the source at the position given by the product
    # of Kornia's own matrices for the drawn parameters (the crop's box corners through
    # get_perspective_transform, the rotation through get_rotation_matrix2d about the view
    # centre). Interpolating the crop and then the rotation would blur the noise image.
    from kornia.geometry.transform import get_perspective_transform, get_rotation_matrix2d

    images = torch.rand(5, 1, H, W, dtype=torch.float64)
    t2 = PipelineConfig(rotation=RotationConfig(p=0.8, degrees=(-40.0, 40.0)))
    views = pipeline_views(t2)
    pair = views(images, torch.Generator().manual_seed(6))
    crop, rotation = views.pipelines[1].ops
    src, dst = crop._params["src"].double(), crop._params["dst"].double()
    to_crop = get_perspective_transform(src, dst)
    angle = torch.where(rotation._params["batch_prob"] > 0.5, rotation._params["degrees"], 0.0)
    centre = torch.full((5, 2), (S - 1) / 2, dtype=torch.float64)
    turn = torch.eye(3, dtype=torch.float64).repeat(5, 1, 1)
    turn[:, :2] = get_rotation_matrix2d(
        centre, angle.double(), torch.ones(5, 2, dtype=torch.float64)
    )
    to_source = torch.linalg.inv(turn @ to_crop).numpy()
    v, u = np.mgrid[0:S, 0:S]
    source = images[:, 0].numpy()
    for i in range(5):
        x, y, w = (to_source[i] @ np.stack([u.ravel(), v.ravel(), np.ones(S * S)])).reshape(3, S, S)
        x, y = x / w, y / w
        inside = (x >= 0) & (x <= W - 1) & (y >= 0) & (y <= H - 1)
        x0 = np.clip(np.floor(x), 0, W - 2).astype(int)
        y0 = np.clip(np.floor(y), 0, H - 2).astype(int)
        fx, fy = x - x0, y - y0
        img = source[i]
        oracle = (
            img[y0, x0] * (1 - fx) * (1 - fy)
            + img[y0, x0 + 1] * fx * (1 - fy)
            + img[y0 + 1, x0] * (1 - fx) * fy
            + img[y0 + 1, x0 + 1] * fx * fy
        )
        np.testing.assert_allclose(pair.view2[i, 0].numpy()[inside], oracle[inside], atol=1e-4)
    assert (angle.abs() > 5).any()


def test_the_colour_op_is_color_jitter_on_the_drawn_parameters():
    # The colour op is intensity.color_jitter (tested against torchvision) on Kornia's draws.
    from contrastseg.augment import intensity

    images = torch.rand(4, 5, H, W)
    t2 = PipelineConfig(
        color=ColorConfig(p=1.0, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1),
        grayscale=GrayscaleConfig(p=0.0),
    )
    views = pipeline_views(t2, rgb_bands=[2, 1, 0], value_range=(0.0, 1.0))
    pair = views(images, torch.Generator().manual_seed(0))
    geometry_only = pipeline_views(PipelineConfig(), rgb_bands=[2, 1, 0])
    plain = geometry_only(images, torch.Generator().manual_seed(0)).view2
    jitter = views.pipelines[1].ops[1]
    p = {k: v for k, v in jitter._params.items()}
    expected = intensity.color_jitter(
        plain,
        p["brightness"],
        p["contrast"],
        p["saturation"],
        p["hue"],
        [2, 1, 0],
        lambda x: x.clamp(0, 1),
    )
    torch.testing.assert_close(pair.view2, expected)


@pytest.mark.parametrize(("bands", "rgb"), [(4, [0, 1, 2]), (13, [3, 2, 1]), (13, None)])
def test_multiband_inputs_with_extra_ops(bands, rgb):
    t2 = dataclasses.replace(
        ViewsConfig().t2,
        grayscale=GrayscaleConfig(p=0.5, mode="random_band"),
        extra=[
            {
                "name": "RandomMotionBlur",
                "kernel_size": 5,
                "angle": 30.0,
                "direction": 0.5,
                "p": 0.5,
            },
            {"name": "RandomErasing", "p": 0.5},
            {"name": "RandomChannelDropout", "p": 0.5},
            {"name": "RandomAffine", "degrees": 15.0, "p": 0.5},
        ],
    )
    pair = PairedViews(ViewsConfig(size=S, rgb_bands=rgb, t2=t2))(
        torch.rand(3, bands, H, W), torch.Generator().manual_seed(1)
    )
    assert pair.view1.shape == (3, bands, S, S) and pair.view2.shape == (3, bands, S, S)
    assert torch.isfinite(pair.view2).all()


def test_an_extra_op_that_fails_on_the_bands_is_named():
    t2 = PipelineConfig(extra=[{"name": "RandomPlanckianJitter", "p": 1.0}])
    views = pipeline_views(t2)
    with pytest.raises(ValueError, match=r"views\.t2\.extra\[0\] RandomPlanckianJitter"):
        views(torch.rand(2, 5, H, W))


def test_large_source_positions_stay_exact_through_chained_ops():
    # 3000 px wide: a float16 position, or padding mixed in with weight 1e-3, would move a
    # ramp value by more than half a pixel.
    height, width = 64, 3000
    crop = CropConfig(scale=(0.0005, 0.002), ratio=(0.5, 2.0))
    affine = {"name": "RandomAffine", "degrees": 10.0, "translate": [0.05, 0.05]}
    t2 = PipelineConfig(
        crop=crop,
        flip=FlipConfig(horizontal_p=0.5, vertical_p=0.5),
        rotation=RotationConfig(p=0.7, degrees=(-20.0, 20.0)),
        extra=[affine, affine],
    )
    pair = pipeline_views(t2, t1=PipelineConfig(crop=crop))(
        ramps.ramp(8, height, width), torch.Generator().manual_seed(0)
    )
    ramps.check_half_pixel_rule(pair.view1, pair.index1, height, width)
    ramps.check_half_pixel_rule(pair.view2, pair.index2, height, width)
    columns = (pair.index1[pair.index1 > 0] - 1) % width
    assert columns.float().std() > 500  # crops all over the strip


@pytest.mark.parametrize("preset", ["glcnet", "simclr"])
def test_presets_run_as_pipelines(preset):
    cfg = ViewsConfig.preset(preset, size=S)
    views = PairedViews(cfg)
    names = [type(op).__name__ for op in views.pipelines[1].ops]
    assert names[0] == "RandomResizedCrop" and "RandomBandColorJitter" in names
    pair = views(torch.rand(4, 3, H, W), torch.Generator().manual_seed(0))
    assert pair.view2.shape == (4, 3, S, S) and (pair.index2 > 0).all()
    assert pair.view2.min() >= 0 and pair.view2.max() <= 1  # value_range clamp
