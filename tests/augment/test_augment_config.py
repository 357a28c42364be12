"""Tests of contrastseg/augment/config.py (named apart from tests/test_config.py: no __init__ files)."""

import dataclasses

import pytest

from contrastseg.augment.config import (
    BlurConfig,
    ColorConfig,
    CropConfig,
    FlipConfig,
    NoiseConfig,
    RotationConfig,
    ViewsConfig,
)


def test_defaults_follow_the_glcnet_recipe():
    cfg = ViewsConfig()
    assert cfg.size == 224
    assert cfg.rgb_bands == [0, 1, 2]
    for pipe in (cfg.t1, cfg.t2):
        assert pipe.crop.scale == (0.4, 1.0)
        assert pipe.crop.ratio == pytest.approx((3 / 4, 4 / 3))
    # t1: crop only.
    t1 = cfg.t1
    assert (t1.flip.horizontal_p, t1.flip.vertical_p, t1.rot90.p, t1.rotation.p) == (0, 0, 0, 0)
    assert (t1.color.p, t1.grayscale.p, t1.blur.p, t1.noise.p) == (0, 0, 0, 0)
    # t2: flips, rot90 0.8, no rotation, colour 0.8, grayscale 0.1, blur 0.5 sigma 0.8-1.4, noise.
    t2 = cfg.t2
    assert t2.flip.horizontal_p > 0 and t2.flip.vertical_p > 0
    assert t2.rot90.p == 0.8 and t2.rotation.p == 0.0
    assert t2.color.p == 0.8 and t2.grayscale.p == 0.1
    assert t2.blur.p == 0.5 and t2.blur.sigma == (0.8, 1.4)
    assert t2.noise.p > 0


def test_simclr_preset_is_symmetric_and_strong():
    cfg = ViewsConfig.preset("simclr", size=96)
    assert cfg.size == 96
    assert cfg.t1 == cfg.t2
    assert cfg.t1.color.brightness == 0.8 and cfg.t1.color.hue == 0.2
    assert cfg.t1.grayscale.p == 0.2 and cfg.t1.crop.scale == (0.08, 1.0)
    assert ViewsConfig.preset("glcnet") == ViewsConfig()


def test_presets_do_not_share_mutable_state():
    a, b = ViewsConfig(), ViewsConfig()
    a.t2.rot90.p = 0.0
    a.rgb_bands.append(5)
    assert b.t2.rot90.p == 0.8 and b.rgb_bands == [0, 1, 2]


def test_every_field_has_a_default():
    def check(cls):
        for f in dataclasses.fields(cls):
            assert (
                f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            ), f.name

    for cls in (
        ViewsConfig,
        CropConfig,
        FlipConfig,
        RotationConfig,
        ColorConfig,
        BlurConfig,
        NoiseConfig,
    ):
        check(cls)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: ViewsConfig(size=0), "views.size"),
        (lambda: ViewsConfig(rgb_bands=[0, 1]), "views.rgb_bands"),
        (lambda: ViewsConfig(rgb_bands=[0, 0, 1]), "views.rgb_bands"),
        (lambda: ViewsConfig(value_range=(1.0, 0.0)), "views.value_range"),
        (lambda: CropConfig(scale=(0.0, 1.0)), "crop.scale"),
        (lambda: CropConfig(scale=(0.5, 1.5)), "crop.scale"),
        (lambda: CropConfig(ratio=(2.0, 1.0)), "crop.ratio"),
        (lambda: FlipConfig(horizontal_p=1.5), "flip.horizontal_p"),
        (lambda: RotationConfig(degrees=(10.0, -10.0)), "rotation.degrees"),
        (lambda: ColorConfig(hue=0.7), "color.hue"),
        (lambda: ColorConfig(contrast=-0.1), "color.contrast"),
        (lambda: BlurConfig(sigma=(0.0, 1.0)), "blur.sigma"),
        (lambda: NoiseConfig(p=-0.1), "noise.p"),
    ],
)
def test_validation_names_the_field(build, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        build()


def test_unknown_preset():
    with pytest.raises(ValueError, match="preset"):
        ViewsConfig.preset("moco")


def test_extra_ops_from_yaml_are_checked_by_name_not_built():
    from contrastseg.utils.configtools import ConfigError, from_dict

    data = {
        "t2": {
            "grayscale": {"p": 0.2, "mode": "random_band"},
            "extra": [
                {"name": "RandomMotionBlur", "kernel_size": 5, "angle": 30.0, "direction": 0.5}
            ],
        },
    }
    cfg = from_dict(ViewsConfig, data, prefix="views")
    assert cfg.t2.extra[0]["name"] == "RandomMotionBlur" and cfg.t1.extra == []
    assert cfg.t2.grayscale.mode == "random_band"
    bad = {"t2": {"extra": [{"name": "RandomMotionBlr"}]}}
    with pytest.raises(
        ConfigError, match=r"extra\[0\].*did you mean RandomMotionBlur.*'views\.t2'"
    ):
        from_dict(ViewsConfig, bad, prefix="views")
    refused = {"t2": {"extra": [{"name": "RandomElasticTransform"}]}}
    with pytest.raises(ConfigError, match="RandomElasticTransform is refused"):
        from_dict(ViewsConfig, refused, prefix="views")
    # An impossible value is the op's to refuse, when the views are built (once).
    odd = {
        "t2": {
            "extra": [
                {"name": "RandomMotionBlur", "kernel_size": 4, "angle": 1.0, "direction": 0.0}
            ]
        }
    }
    assert from_dict(ViewsConfig, odd, prefix="views").t2.extra[0]["kernel_size"] == 4


@pytest.mark.parametrize("engine", ["native", "kornia"])
def test_an_old_config_with_views_engine_loads_with_a_one_line_warning(tmp_path, engine):
    from contrastseg.config import load_pretrain_config

    path = tmp_path / "c.yaml"
    path.write_text(
        f"views:\n  preset: simclr\n  engine: {engine}\n  t2:\n"
        "    extra: [{name: RandomMotionBlur, kernel_size: 5, angle: 30.0, direction: 0.5}]\n"
    )
    with pytest.warns(
        FutureWarning, match=rf"views\.engine = '{engine}' is ignored.*delete the key"
    ):
        views = load_pretrain_config(str(path)).views
    assert views.engine is None and views.t2.extra[0]["name"] == "RandomMotionBlur"
    assert views.t2.color.brightness == 0.8 and views.t1.extra == []  # the rest is simclr's


def test_setting_one_t2_key_keeps_the_rest_of_the_glcnet_t2():
    from contrastseg.utils.configtools import from_dict

    cfg = from_dict(ViewsConfig, {"t2": {"rot90": {"p": 0.5}}}, prefix="views")
    assert cfg.t2.rot90.p == 0.5
    assert cfg.t2.flip == ViewsConfig().t2.flip and cfg.t2.color.p == 0.8
