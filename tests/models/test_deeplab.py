import math

import pytest
import torch

from contrastseg.models import ARCHITECTURES, DeepLabV3Plus, aspp_rates

H, W = 70, 94  # non-square, not a multiple of 32


def _ceil_div_pow2(n: int, k: int) -> int:
    for _ in range(k):
        n = math.ceil(n / 2)
    return n


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("bands", [3, 4, 13])
def test_output_shapes(arch, output_stride, bands):
    model = DeepLabV3Plus(
        num_classes=5, arch=arch, in_channels=bands, output_stride=output_stride
    ).eval()
    with torch.no_grad():
        out = model(torch.randn(2, bands, H, W), return_features=True)
    k = int(math.log2(output_stride))
    assert out.logits.shape == (2, 5, H, W)
    assert out.encoder.shape == (2, 256, _ceil_div_pow2(H, k), _ceil_div_pow2(W, k))
    assert out.decoder.shape == (2, 256, _ceil_div_pow2(H, 2), _ceil_div_pow2(W, 2))


def test_aspp_rates_scale_with_output_stride():
    assert aspp_rates(16) == (6, 12, 18)
    assert aspp_rates(8) == (12, 24, 36)
    model = DeepLabV3Plus(num_classes=2, arch="resnet18", output_stride=8)
    dilations = [branch[0].dilation[0] for branch in model.aspp.branches[1:4]]
    assert dilations == [12, 24, 36]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_gradients_reach_every_parameter(arch):
    torch.manual_seed(0)
    model = DeepLabV3Plus(num_classes=3, arch=arch, in_channels=4, output_stride=16).train()
    x = torch.randn(2, 4, 64, 72)
    target = torch.randint(0, 3, (2, 64, 72))
    torch.nn.functional.cross_entropy(model(x), target).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_separable_variant_and_feature_only_paths():
    model = DeepLabV3Plus(num_classes=None, arch="resnet18", in_channels=4, separable=True).eval()
    assert model.classifier is None
    x = torch.randn(2, 4, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x, decoder=False)
        assert feats.encoder.shape == (2, 256, 4, 4) and feats.decoder is None
        feats = model.forward_features(x)
        assert feats.decoder.shape == (2, 256, 16, 16)
    depthwise = [m for m in model.aspp.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 3
    with pytest.raises(RuntimeError, match="num_classes=None"):
        model(x)


def test_one_decoder_convolution_as_smp():
    """decoder_convs: 1 (smp's decoder): one 3x3 block after the skip; with separable it is
    depthwise 3x3 (304 groups) + pointwise 304 -> 256, smp's SeparableConv2d, and the
    decoder's convolution FLOPs are the analytic count of those layers."""
    from torch.utils.flop_counter import FlopCounterMode

    from contrastseg.config import load_pretrain_config
    from contrastseg.utils.configtools import ConfigError

    light = DeepLabV3Plus(None, "resnet18", 3, separable=True, decoder_convs=1).eval()
    assert len(light.decoder.fuse) == 1
    depthwise, pointwise = (
        m for m in light.decoder.fuse.modules() if isinstance(m, torch.nn.Conv2d)
    )
    assert (depthwise.groups, depthwise.in_channels, depthwise.kernel_size) == (304, 304, (3, 3))
    assert (pointwise.in_channels, pointwise.out_channels) == (304, 256)
    x, low = torch.randn(2, 256, 6, 6), torch.randn(2, 64, 24, 24)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        out = light.decoder(x, low)
    assert out.shape == (2, 256, 24, 24)
    pixels = 2 * 24 * 24
    analytic = 2 * pixels * (64 * 48 + 304 * 9 + 304 * 256)  # reduce, depthwise, pointwise
    assert counter.get_total_flops() == analytic
    full = DeepLabV3Plus(None, "resnet18", 3).eval()
    assert {k for k in light.state_dict() if k.startswith("decoder.fuse.1")} == set()
    assert any(k.startswith("decoder.fuse.1") for k in full.state_dict())
    with pytest.raises(ConfigError, match=r"decoder_dropout.*second.*decoder_convs: 1"):
        load_pretrain_config(None, ["model.decoder_convs=1", "model.decoder_dropout=[0.5,0.1]"])
    with pytest.raises(ConfigError, match=r"model\.decoder_convs"):
        load_pretrain_config(None, ["model.decoder_convs=3"])
    config = load_pretrain_config(None, ["model.decoder_convs=1", "model.decoder_dropout=[0.5,0]"])
    assert config.model.decoder_convs == 1


def test_band_count_mismatch_names_both_numbers():
    model = DeepLabV3Plus(num_classes=2, arch="resnet18", in_channels=4).eval()
    with pytest.raises(ValueError, match=r"input has 3 bands but the model was built for 4"):
        model(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        model(torch.randn(4, 32, 32))
    with pytest.raises(ValueError, match="floating-point"):
        model(torch.zeros(1, 4, 32, 32, dtype=torch.uint8))


def test_single_image_batch_in_training_is_a_clear_error():
    model = DeepLabV3Plus(num_classes=2, arch="resnet18").train()
    with pytest.raises(ValueError, match="batch of at least 2"):
        model(torch.randn(1, 3, 32, 32))


def test_fine_tuning_a_one_conv_decoder_with_the_official_dropout():
    """The official fine-tuning recipe's decoder_dropout [0.5, 0.1] on a checkpoint pretrained
    with decoder_convs: 1: the second value has no convolution to follow; it is dropped with a
    warning, not a refusal the user cannot fix (decoder_convs comes from the checkpoint)."""
    from contrastseg.models.deeplab import DeepLabV3PlusConfig
    from contrastseg.train.evaluate import build_segmenter, pretrained_model_config
    from contrastseg.utils.configtools import to_dict

    checkpoint = to_dict(DeepLabV3PlusConfig(arch="resnet18", separable=True, decoder_convs=1))
    requested = DeepLabV3PlusConfig(decoder_dropout=(0.5, 0.1))
    with pytest.warns(UserWarning, match=r"one 3x3 convolution.*\[0\.5, 0\.0\]"):
        merged = pretrained_model_config(checkpoint, requested)
    assert merged["decoder_convs"] == 1 and list(merged["decoder_dropout"]) == [0.5, 0.0]
    net = build_segmenter(merged, num_classes=3, in_channels=3)
    dropouts = [m.p for m in net.decoder.fuse.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts == [0.5] and len(net.decoder.fuse) == 1
