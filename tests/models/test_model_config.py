"""The ``model`` section: one config class per network, chosen by ``model.name``."""

import warnings

import pytest
import torch

from contrastseg.config import load_pretrain_config
from contrastseg.methods import get_method
from contrastseg.models import (
    MODELS,
    DeepLabV3PlusConfig,
    FPNConfig,
    UNetConfig,
    build_model,
    model_config,
    model_config_from_mapping,
)
from contrastseg.utils.configtools import ConfigError


def test_model_name_selects_the_network_config_and_its_defaults():
    config = load_pretrain_config(None, ["model.name=unet"])
    assert type(config.model) is UNetConfig and config.model.decoder_channels == 64
    assert type(load_pretrain_config(None, []).model) is DeepLabV3PlusConfig
    fpn = load_pretrain_config(None, ["model.name=fpn", "model.fpn_channels=32"]).model
    assert type(fpn) is FPNConfig and (fpn.fpn_channels, fpn.decoder_channels) == (32, 128)
    for name, cls in MODELS.items():  # every network declares its config class
        assert cls.config_class.network == name


def test_keys_of_another_network_are_dropped_with_one_warning():
    with pytest.warns(UserWarning, match=r"model\.aspp_channels.*not a setting of model 'unet'"):
        config = load_pretrain_config(None, ["model.aspp_channels=32", "model.name=unet"])
    assert not hasattr(config.model, "aspp_channels")


def test_unknown_key_and_unknown_name_are_refused():
    with pytest.raises(ConfigError, match=r"unknown key 'model\.widht'"):
        load_pretrain_config(None, ["model.widht=3"])
    with pytest.raises(ConfigError, match=r"unknown model 'unte' \(did you mean 'unet'\?\)"):
        load_pretrain_config(None, ["model.name=unte"])


def test_old_flat_checkpoint_model_mapping_still_builds():
    # a checkpoint's model mapping before the per-network classes: every network's keys flat
    flat = {
        "name": "unet", "arch": "resnet18", "in_channels": 3, "output_stride": 16,
        "backbone_weights": None, "aspp_channels": 256, "decoder_channels": None,
        "low_level_channels": 48, "separable": False, "aspp_dropout": 0.5,
        "decoder_dropout": [0.0, 0.0], "bn_momentum": 0.1, "dilation_convention": "torchvision",
        "unet_channels": [16, 8], "fpn_channels": 256, "fpn_dropout": 0.2,
        "classifier_features": "decoder",
    }  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # silently: a checkpoint is not the user's config
        config = model_config_from_mapping(flat)
        net = build_model(flat, 3, num_classes=2)
    assert config == UNetConfig(arch="resnet18", in_channels=3, unet_channels=(16, 8))
    assert net.decoder_channels == 64 and net(torch.randn(2, 3, 32, 32)).shape == (2, 2, 32, 32)
    old_deeplab = {k: v for k, v in flat.items() if k != "name"}  # before U-Net existed: no name
    assert type(model_config_from_mapping(old_deeplab)) is DeepLabV3PlusConfig


def test_methods_declare_features_and_each_network_maps_them_to_parts():
    assert get_method("simclr").trained_features == ("encoder",)
    assert get_method("glcnet").trained_features == ("encoder", "decoder")
    assert get_method("simclr").parts_trained(MODELS["deeplabv3plus"]) == ("backbone", "aspp")
    assert get_method("simclr").parts_trained(MODELS["unet"]) == ("backbone",)
    assert get_method("dense").parts_trained(MODELS["fpn"]) == ("backbone", "decoder")
    assert get_method("local").uses_decoder and not get_method("global_style").uses_decoder


def test_model_config_factory_drops_other_networks_widths():
    config = model_config("fpn", arch="resnet18", aspp_channels=8, fpn_channels=8)
    assert config == FPNConfig(arch="resnet18", fpn_channels=8)
    with pytest.raises(
        ConfigError, match=r"unknown key 'model\.widht'; section 'model' accepts: name, arch"
    ):
        model_config("fpn", widht=3)
