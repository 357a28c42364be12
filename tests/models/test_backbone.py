import math
import os

import pytest
import torch
import torchvision

from contrastseg.models.backbone import (
    ARCHITECTURES,
    ResNetBackbone,
    adapt_first_conv_weight,
    resnet_depth,
)

torch.set_grad_enabled(True)


def _strided_size(n: int, strides: int) -> int:
    for _ in range(strides):
        n = math.ceil(n / 2)
    return n


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_state_dict_round_trip_with_torchvision(arch):
    ours = ResNetBackbone(arch, in_channels=3, output_stride=8)
    tv = getattr(torchvision.models, arch)(weights=None)
    # ours -> torchvision: everything but fc.* present, nothing unexpected
    result = tv.load_state_dict(ours.state_dict(), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    assert result.unexpected_keys == []
    # torchvision -> ours: strict
    tv_state = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    ours.load_state_dict(tv_state, strict=True)
    for key, value in tv_state.items():
        assert torch.equal(ours.state_dict()[key], value)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("output_stride", [8, 16])
def test_dilated_output_subsampled_equals_plain_resnet(arch, output_stride):
    """The atrous algorithm: a dilated ResNet's output, read every (32 / os) cells, equals the
    plain stride-32 ResNet's output (eval mode, same weights). This checks strides, dilations
    and paddings of every block, BasicBlock included, against an independent network."""
    torch.manual_seed(0)
    # float64: random-init deep ResNets reach large activations in eval mode, and float32
    # summation-order differences between dilated and strided kernels would hide the signal
    plain = ResNetBackbone(arch, output_stride=32).eval().double()
    dilated = ResNetBackbone(arch, output_stride=output_stride).eval().double()
    dilated.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 75, 97, dtype=torch.float64)
    with torch.no_grad():
        low_p, out_p = plain(x)
        low_d, out_d = dilated(x)
    step = 32 // output_stride
    assert out_d.shape[-2:] == (
        _strided_size(75, 5 - int(math.log2(step))),
        _strided_size(97, 5 - int(math.log2(step))),
    )
    torch.testing.assert_close(low_d, low_p)
    torch.testing.assert_close(out_d[..., ::step, ::step], out_p)


@pytest.mark.parametrize("output_stride", [8, 16])
def test_bottleneck_dilation_matches_torchvision_replace_stride_with_dilation(output_stride):
    flags = [False, output_stride == 8, True]
    tv = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=flags).eval()
    ours = ResNetBackbone("resnet50", output_stride=output_stride).eval()
    ours.load_state_dict({k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")})
    x = torch.randn(1, 3, 66, 90)
    with torch.no_grad():
        ref = tv.layer4(tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))
        _, out = ours(x)
    torch.testing.assert_close(out, ref)


def test_resnet18_output_stride_8_really_has_stride_8():
    model = ResNetBackbone("resnet18", output_stride=8)
    strided = {
        n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.stride != (1, 1)
    }
    # conv1 (2) x maxpool (2) x layer2 (2) = 8; layer3 and layer4 keep stride 1
    assert strided == {"conv1", "layer2.0.conv1", "layer2.0.downsample.0"}
    assert model.maxpool.stride == 2
    _, out = model.eval()(torch.randn(1, 3, 128, 160))
    assert out.shape[-2:] == (16, 20)
    dilations = {
        m.dilation[0]
        for m in model.layer4.modules()
        if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] == 3
    }
    assert dilations == {2, 4}


def test_adapt_first_conv_rule():
    torch.manual_seed(0)
    w = torch.randn(64, 3, 7, 7)
    assert torch.equal(adapt_first_conv_weight(w, 3), w)
    w4 = adapt_first_conv_weight(w, 4)
    torch.testing.assert_close(w4[:, :3], w * 0.75)
    torch.testing.assert_close(w4[:, 3], w[:, 0] * 0.75)
    # identical bands: the adapted kernel responds like the RGB kernel to a grey image
    # whenever the band count is a multiple of 3 or smaller than 3
    x = torch.randn(1, 1, 20, 20)
    ref = torch.nn.functional.conv2d(x.expand(-1, 3, -1, -1), w)
    for n in (1, 2, 6, 12):
        out = torch.nn.functional.conv2d(x.expand(-1, n, -1, -1), adapt_first_conv_weight(w, n))
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="3-band"):
        adapt_first_conv_weight(torch.randn(64, 4, 7, 7), 5)


def test_load_weights_file_adapts_bands_and_strips_prefixes(tmp_path):
    tv = torchvision.models.resnet18(weights=None)
    path = tmp_path / "smp_like.pth"
    # segmentation_models_pytorch stores the encoder under "encoder." without fc
    torch.save(
        {f"encoder.{k}": v for k, v in tv.state_dict().items() if not k.startswith("fc.")}, path
    )
    model = ResNetBackbone("resnet18", in_channels=4, output_stride=16, weights=path)
    torch.testing.assert_close(model.conv1.weight, adapt_first_conv_weight(tv.conv1.weight, 4))
    torch.testing.assert_close(model.layer3[1].conv2.weight, tv.layer3[1].conv2.weight)
    # a checkpoint dict holding the state dict under "state_dict" works too
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": tv.state_dict(), "epoch": 3}, wrapped)
    ResNetBackbone("resnet18", weights=wrapped)


def test_load_weights_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        ResNetBackbone("resnet18", weights=tmp_path / "nope.pth")
    path = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    with pytest.raises(
        ValueError, match=r"r50\.pth holds resnet50 weights but the model is a resnet18"
    ):
        ResNetBackbone("resnet18", weights=path)
    junk = tmp_path / "junk.pth"
    torch.save({"step": 3}, junk)
    with pytest.raises(
        ValueError, match=r"junk\.pth: expected a state dict of tensors \(a ResNet.s"
    ):
        ResNetBackbone("resnet18", weights=junk)


class _Payload:
    """Pickled as a call of ``os.system``: what a malicious weights file contains."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_text_files_and_malicious_pickles_are_refused_by_name(tmp_path):
    text = tmp_path / "weights.txt"
    text.write_text("not weights\n")
    with pytest.raises(ValueError, match=r"weights\.txt is not a readable weights file"):
        ResNetBackbone("resnet18", weights=text)
    evil = tmp_path / "evil.pth"
    torch.save({"conv1.weight": _Payload()}, evil)
    with pytest.raises(ValueError, match=r"evil\.pth is not a readable weights file"):
        ResNetBackbone("resnet18", weights=evil)


@pytest.mark.parametrize(
    ("arch", "expected"),
    [("resnet18", "resnet18"), ("resnet34", "resnet34"), ("resnet50", "resnet50"),
     ("resnet101", "resnet101")],
)  # fmt: skip
def test_resnet_depth_from_torchvision_keys(arch, expected):
    # the oracle: torchvision's own constructors, by name
    with torch.device("meta"):  # key names only: no memory, no initialisation
        keys = getattr(torchvision.models, arch)(weights=None).state_dict().keys()
    assert resnet_depth(keys) == expected
    assert resnet_depth(f"backbone.{k}" for k in keys) == expected
    assert resnet_depth(["conv1.weight", "fc.bias"]) is None


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown backbone 'resnet152'"):
        ResNetBackbone("resnet152")
    with pytest.raises(ValueError, match="output_stride must be one of"):
        ResNetBackbone("resnet18", output_stride=4)
    with pytest.raises(ValueError, match="in_channels"):
        ResNetBackbone("resnet18", in_channels=0)
