"""The official GLCNet fine-tuning network, restated from T-SS-GLCNet (github:GeoX-Lab/G-RSIM).

- ``models/v3p_encoder_ft.py`` (the fine-tuning model, ``load_self_parameters=1``): its
  ``Decoder`` runs conv1 (1x1, 48) - bn1 - relu, then conv2 (3x3) - bn2 - relu -
  Dropout(0.5), conv3 (3x3) - bn3 - relu - Dropout(0.1), conv4 (1x1 classifier), lines
  18-56; ``DeepLab(bn_momentum=0.9)``, line 73, passes the momentum to every BatchNorm.
- ``models/deeplab_utils/sync_batchnorm/batchnorm.py``: on one device the layer is
  ``F.batch_norm(..., self.training, self.momentum, ...)`` (lines 70-73), PyTorch's update
  ``running = (1 - m) * running + m * batch`` (lines 144-145 write the same for several).
- ``models/deeplab_utils/ResNet.py``: output stride 16 -> dilations [1, 1, 1, 2], strides
  [1, 2, 2, 1]; 8 -> [1, 1, 2, 4], [1, 2, 1, 1] (lines 69-74); ``_make_layer`` gives the
  first block the stage's stride *and dilation* and the others dilation only (lines 95-110);
  a Bottleneck's stride and dilation sit on conv2 (3x3, padding = dilation), lines 34-35.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from contrastseg.config import load_pretrain_config, model_config
from contrastseg.models.backbone import ResNetBackbone
from contrastseg.models.deeplab import DeepLabV3Plus
from contrastseg.models.registry import build_model
from contrastseg.train.finetune_config import load_finetune_config

torch.set_grad_enabled(True)

OFFICIAL_STAGES = {16: ([1, 1, 1, 2], [1, 2, 2, 1]), 8: ([1, 1, 2, 4], [1, 2, 1, 1])}


def _small(**kwargs) -> DeepLabV3Plus:
    kwargs = {"arch": "resnet18", "aspp_channels": 32, "decoder_channels": 32, **kwargs}
    return DeepLabV3Plus(num_classes=3, **kwargs)


def _decoder_call_order(model: DeepLabV3Plus) -> list[nn.Module]:
    """The leaf modules of decoder and classifier in the order one forward calls them."""
    order, hooks = [], []
    for part in (model.decoder, model.classifier):
        for module in part.modules():
            if not list(module.children()):
                hooks.append(module.register_forward_hook(lambda m, i, o: order.append(m)))
    model.eval()(torch.randn(2, 3, 64, 64))
    for hook in hooks:
        hook.remove()
    return order


def _signature(module: nn.Module) -> tuple:
    if isinstance(module, nn.Conv2d):
        return ("conv", module.kernel_size[0])
    if isinstance(module, nn.Dropout):
        return ("dropout", module.p)
    return (type(module).__name__,)


def test_decoder_dropout_sits_where_the_official_decoder_has_it() -> None:
    order = [_signature(m) for m in _decoder_call_order(_small(decoder_dropout=(0.5, 0.1)))]
    official = [
        ("conv", 1), ("BatchNorm2d",), ("ReLU",),  # conv1 - bn1 - relu (the skip)
        ("conv", 3), ("BatchNorm2d",), ("ReLU",), ("dropout", 0.5),  # conv2 - bn2 - relu - dropout2
        ("conv", 3), ("BatchNorm2d",), ("ReLU",), ("dropout", 0.1),  # conv3 - bn3 - relu - dropout3
        ("conv", 1),  # conv4: the classifier
    ]  # fmt: skip
    assert order == official


def test_default_decoder_has_no_dropout_and_the_same_keys() -> None:
    default, official = _small(), _small(decoder_dropout=(0.5, 0.1))
    assert not any(isinstance(m, nn.Dropout) for m in default.decoder.modules())
    assert [_signature(m) for m in _decoder_call_order(default)] == [
        ("conv", 1), ("BatchNorm2d",), ("ReLU",),
        ("conv", 3), ("BatchNorm2d",), ("ReLU",),
        ("conv", 3), ("BatchNorm2d",), ("ReLU",),
        ("conv", 1),
    ]  # fmt: skip
    # dropout has no parameters: the same state-dict keys, weights move both ways
    assert list(default.state_dict()) == list(official.state_dict())
    official.load_state_dict(default.state_dict(), strict=True)
    # only the ASPP's own dropout (the official Encoder has it too) is in either network
    assert [m.p for m in default.modules() if isinstance(m, nn.Dropout)] == [0.5]


def test_decoder_dropout_is_identity_in_eval_mode_and_drops_in_training() -> None:
    torch.manual_seed(0)
    default = _small()
    official = _small(decoder_dropout=(0.5, 0.1))
    official.load_state_dict(default.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(official.eval()(x), default.eval()(x), rtol=0, atol=0)
        seen = {}
        for name, model in (("official", official), ("default", default)):
            hook = model.decoder.fuse[0].register_forward_hook(
                lambda m, i, o, name=name: seen.setdefault(name, o)
            )
            torch.manual_seed(1)
            model.train()(x)
            hook.remove()
    # training mode: the same activations (BN on batch statistics), then Dropout(0.5)
    # zeroes about half of them and doubles the rest
    kept = seen["official"] != 0
    torch.testing.assert_close(seen["official"][kept], 2 * seen["default"][kept])
    alive = seen["default"] != 0
    assert 0.45 < (kept & alive).sum() / alive.sum() < 0.55


def test_official_configs_build_networks_with_momentum_09_on_every_batchnorm() -> None:
    finetune = load_finetune_config("configs/finetune_official.yaml")
    pretrain = load_pretrain_config("configs/glcnet_official.yaml")
    assert finetune.model.bn_momentum == 0.9 and pretrain.model.bn_momentum == 0.9
    assert finetune.model.decoder_dropout == (0.5, 0.1)
    # the official pretraining decoder (models/GLCNet.py lines 66, 69) has no dropout
    assert pretrain.model.decoder_dropout == (0.0, 0.0)
    assert finetune.model.dilation_convention == pretrain.model.dilation_convention == "official"
    small = {"arch": "resnet18", "aspp_channels": 32, "decoder_channels": 32}
    for config, classes in ((finetune.model, 6), (pretrain.model, None)):
        model = build_model({**vars(config), **small}, in_channels=4, num_classes=classes)
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        assert len(norms) > 20
        assert {m.momentum for m in norms} == {0.9}
        assert model.backbone.layer4[0].conv1.dilation == (2, 2)  # resnet18: conv1 is strided


def test_default_config_keeps_torch_momentum_and_torchvision_dilation() -> None:
    model = build_model(model_config(arch="resnet18"), in_channels=3, num_classes=2)
    assert {m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)} == {0.1}
    assert model.backbone.layer4[0].conv1.dilation == (1, 1)
    # a checkpoint's model config from before these keys builds the same network
    old = build_model({"arch": "resnet18"}, in_channels=3, num_classes=2)
    assert [_signature(m) for m in old.modules()] == [_signature(m) for m in model.modules()]


def test_momentum_09_weighs_the_new_batch_as_the_official_layer_does() -> None:
    """PyTorch's convention, as F.batch_norm in SynchronizedBatchNorm2d: 0.9 x the batch."""
    model = _small(bn_momentum=0.9)
    bn = model.decoder.reduce[1]
    x = torch.randn(4, bn.num_features, 5, 5) * 3 + 2
    before_mean, before_var = bn.running_mean.clone(), bn.running_var.clone()
    bn.train()(x)
    flat = x.transpose(0, 1).reshape(bn.num_features, -1)
    expected_mean = 0.1 * before_mean + 0.9 * flat.mean(1)
    expected_var = 0.1 * before_var + 0.9 * flat.var(1, unbiased=True)
    torch.testing.assert_close(bn.running_mean, expected_mean)
    torch.testing.assert_close(bn.running_var, expected_var)


@pytest.mark.parametrize("output_stride", [16, 8])
def test_official_dilation_matches_the_official_resnet_table(output_stride: int) -> None:
    model = ResNetBackbone("resnet50", output_stride=output_stride, dilation_convention="official")
    dilations, strides = OFFICIAL_STAGES[output_stride]
    for i, (dilation, stride) in enumerate(zip(dilations, strides, strict=True)):
        stage = getattr(model, f"layer{i + 1}")
        for j, block in enumerate(stage):
            conv = block.conv2
            expect_stride = stride if j == 0 else 1
            assert conv.stride == (expect_stride,) * 2, (i, j)
            assert conv.dilation == (dilation,) * 2, (i, j)
            assert conv.padding == (dilation,) * 2, (i, j)
            assert block.conv1.stride == block.conv3.stride == (1, 1)
        assert stage[0].downsample[0].stride == (stride, stride)


def test_torchvision_convention_stays_the_default_and_differs_only_in_first_blocks() -> None:
    default = ResNetBackbone("resnet50", output_stride=16)
    tv = torchvision.models.resnet50(
        weights=None, replace_stride_with_dilation=[False, False, True]
    )
    assert default.layer4[0].conv2.dilation == tv.layer4[0].conv2.dilation == (1, 1)
    official = ResNetBackbone("resnet50", output_stride=16, dilation_convention="official")
    differing = {
        name
        for (name, a), (_, b) in zip(default.named_modules(), official.named_modules(), strict=True)
        if isinstance(a, nn.Conv2d) and (a.dilation, a.padding) != (b.dilation, b.padding)
    }
    assert differing == {"layer4.0.conv2"}


@pytest.mark.parametrize("output_stride", [16, 8])
def test_official_dilation_keeps_shapes_and_torchvision_keys(output_stride: int, tmp_path) -> None:
    tv = torchvision.models.resnet50(weights=None)
    tv_state = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    path = tmp_path / "resnet50.pth"
    torch.save(tv.state_dict(), path)
    official = ResNetBackbone(
        "resnet50", output_stride=output_stride, dilation_convention="official", weights=path
    )
    default = ResNetBackbone("resnet50", output_stride=output_stride)
    assert list(official.state_dict()) == list(default.state_dict())
    result = official.load_state_dict(tv_state, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    back = tv.load_state_dict(official.state_dict(), strict=False)
    assert sorted(back.missing_keys) == ["fc.bias", "fc.weight"] and back.unexpected_keys == []
    default.load_state_dict(tv_state)
    x = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        low_o, out_o = official.eval()(x)
        low_d, out_d = default.eval()(x)
    assert out_o.shape == out_d.shape and out_o.shape[-2:] == (
        -(-70 // output_stride),
        -(-90 // output_stride),
    )
    torch.testing.assert_close(low_o, low_d)  # layer1 is not dilated either way
    assert not torch.allclose(out_o, out_d)  # the dilated first block sees another field


def test_basic_block_stage_follows_the_same_convention() -> None:
    official = ResNetBackbone("resnet18", output_stride=8, dilation_convention="official")
    default = ResNetBackbone("resnet18", output_stride=8)
    assert official.layer3[0].conv1.dilation == (2, 2) and default.layer3[0].conv1.dilation == (
        1,
        1,
    )
    assert official.layer4[0].conv1.dilation == (4, 4) and default.layer4[0].conv1.dilation == (
        2,
        2,
    )
    for model in (official, default):
        assert model.layer4[1].conv1.dilation == model.layer4[0].conv2.dilation == (4, 4)


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValueError, match="dilation_convention"):
        ResNetBackbone("resnet18", dilation_convention="caffe")
    with pytest.raises(ValueError, match="decoder_dropout"):
        model_config(decoder_dropout=(0.5,))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="decoder_dropout"):
        model_config(decoder_dropout=(1.0, 0.1))
    for momentum in (0.0, 1.5):
        with pytest.raises(ValueError, match="bn_momentum"):
            model_config(bn_momentum=momentum)
    with pytest.raises(ValueError, match="momentum"):
        _small(bn_momentum=0.0)
