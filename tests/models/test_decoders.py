"""DeepLabV3+, U-Net and FPN on one backbone: shapes, declared parts, key stability, smp oracles."""

import math
from pathlib import Path

import pytest
import torch

from contrastseg.models import (
    MODELS,
    DeepLabV3Plus,
    ModelConfig,
    build_model,
    model_config,
    part_names,
)
from contrastseg.models.pretrained import export_weights, load_pretrained

SMALL = {"decoder_channels": 16, "aspp_channels": 16, "low_level_channels": 8}
SMALL.update(unet_channels=(16, 16), fpn_channels=16)
#: networks whose decoder features have stride 4; the others at their own (FCN, DeepLabV3)
STRIDE_4 = ("deeplabv3plus", "unet", "fpn")
#: networks with encoder parts beyond the backbone (their width 16 in SMALL)
OWN_ENCODER = ("deeplabv3plus", "deeplabv3", "fcn")


def small(name: str, arch: str = "resnet18", output_stride: int = 16, **kw) -> ModelConfig:
    if name == "segnet":  # VGG16-BN only, stride 32
        arch, output_stride = "vgg16_bn", 32
    return model_config(name=name, arch=arch, output_stride=output_stride, **{**SMALL, **kw})


@pytest.mark.parametrize(
    "name, arch",
    [(n, a) for n in MODELS for a in ("resnet18", "resnet50") if n != "segnet" or a == "resnet18"],
)  # SegNet has one backbone, VGG16-BN
def test_shapes_for_every_model_stride_and_band_count(name, arch):
    for output_stride in (8, 16):
        for bands in (3, 4):
            net = build_model(small(name, arch, output_stride), bands, num_classes=5).eval()
            x = torch.randn(2, bands, 48, 80)  # not a multiple of 32: sizes follow the skips
            with torch.no_grad():
                out = net(x, return_features=True)
            assert out.logits.shape == (2, 5, 48, 80)
            stride = net.feature_stride("decoder")  # 4, or the network's own (FCN, DeepLabV3)
            size = (math.ceil(48 / stride), math.ceil(80 / stride))
            assert out.decoder.shape == (2, net.decoder_channels, *size)
            assert stride == (4 if name in STRIDE_4 else stride)
            stride = net.feature_stride("encoder")
            rounding = math.floor if name == "segnet" else math.ceil  # VGG's pools floor
            size = (rounding(48 / stride), rounding(80 / stride))
            assert out.encoder.shape == (2, net.encoder_channels, *size)
            expected = 16 if name in OWN_ENCODER else net.backbone.out_channels
            assert net.encoder_channels == expected


@pytest.mark.parametrize("name", list(MODELS))
def test_every_key_belongs_to_a_declared_part_and_gradients_reach_all(name):
    net = build_model(small(name), 3, num_classes=2).train()
    prefixes = {k.split(".", 1)[0] for k in net.state_dict()}
    assert prefixes == {*net.parts, "classifier"}
    assert set(net.encoder_parts) < set(net.parts) and net.parts[0] == "backbone"
    net(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    for features in ("backbone", "encoder"):  # a probe head on shallower features runs no decoder
        probe = build_model(small(name), 3, 2, classifier_features=features).eval()
        assert probe(torch.randn(1, 3, 32, 32)).shape == (1, 2, 32, 32)


def test_deeplab_state_dict_keys_and_shapes_are_unchanged():
    # recorded from contrastseg before U-Net / FPN: old checkpoints must keep loading
    recorded = (Path(__file__).parent / "deeplab_resnet18_keys.txt").read_text().splitlines()
    net = DeepLabV3Plus(
        5, "resnet18", 4, aspp_channels=16, decoder_channels=16, low_level_channels=8
    )
    assert [f"{k} {tuple(v.shape)}" for k, v in net.state_dict().items()] == recorded
    default = build_model(model_config(arch="resnet18"), 4)
    assert isinstance(default, DeepLabV3Plus) and default.decoder_channels == 256


def test_part_selections_follow_the_network():
    assert part_names("deeplabv3plus", "backbone+aspp") == ("backbone", "aspp")
    assert part_names("unet", "encoder") == ("backbone",)
    assert part_names("fpn", "all") == ("backbone", "decoder")
    with pytest.raises(ValueError, match=r"model\.name: unknown model .segformer."):
        build_model({"name": "segformer"}, 3)
    with pytest.raises(ValueError, match="parts must be one of"):
        part_names("unet", "head")


@pytest.mark.parametrize("name", ["unet", "fpn"])
def test_a_deeplab_checkpoint_backbone_loads_into_another_decoder(tmp_path, name):
    source = build_model(small("deeplabv3plus"), 4)
    path = tmp_path / "deeplab.pt"
    torch.save({k: v for k, v in source.state_dict().items()}, path)
    target = build_model(small(name), 4, num_classes=3)
    report = load_pretrained(target, path, "backbone+aspp")
    assert report.complete and all(k.startswith("backbone.") for k in report.loaded)
    assert any(k.startswith("aspp.") for k in report.unexpected)
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(target.backbone.state_dict()[key], value)
    # "all" cannot fill another family's decoder: the report says so
    report = load_pretrained(build_model(small(name), 4, 3), path, "all")
    assert report.missing and all(k.startswith("decoder.") for k in report.missing)
    # export of the encoder of a U-Net / FPN is its backbone
    torch.save(target.state_dict(), tmp_path / "net.pt")
    export_weights(tmp_path / "net.pt", tmp_path / "enc.pt", part="encoder")
    exported = torch.load(tmp_path / "enc.pt", weights_only=True)
    assert exported and all(k.startswith("backbone.") for k in exported)


# --- oracles: segmentation_models_pytorch with the same weights -------------------------------


def _smp():
    return pytest.importorskip("segmentation_models_pytorch")


def _copy_into_smp(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    """Our ``backbone.*`` is smp's ``encoder.*``; decoder names are smp's."""
    state = {
        ("encoder." + k.removeprefix("backbone.") if k.startswith("backbone.") else k): v
        for k, v in ours.state_dict().items()
        if not k.startswith("classifier.")
    }
    missing, unexpected = theirs.load_state_dict(state, strict=False)
    assert not unexpected
    # smp's U-Net goes on to stride 1 (blocks 3 and 4); everything else is ours
    assert all(
        k.startswith(("decoder.blocks.3.", "decoder.blocks.4.", "segmentation_head"))
        for k in missing
    )


def _randomise_norms(net: torch.nn.Module) -> None:
    generator = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d | torch.nn.GroupNorm):
            m.weight.data = torch.rand(m.weight.shape, generator=generator) + 0.5
            m.bias.data = torch.randn(m.bias.shape, generator=generator) * 0.1
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.data = torch.randn(m.running_mean.shape, generator=generator) * 0.1
            m.running_var.data = torch.rand(m.running_var.shape, generator=generator) + 0.5


def test_unet_decoder_matches_smp_unet():
    smp = _smp()
    torch.manual_seed(0)
    ours = build_model(
        model_config(name="unet", arch="resnet18", output_stride=32, unet_channels=(32, 16),
                    decoder_channels=8), 4, num_classes=3,
    ).eval()  # fmt: skip
    _randomise_norms(ours)
    theirs = smp.Unet("resnet18", encoder_weights=None, in_channels=4, classes=3,
                      decoder_channels=(32, 16, 8, 8, 8)).eval()  # fmt: skip
    _copy_into_smp(ours, theirs)
    x = torch.randn(2, 4, 64, 96)
    with torch.no_grad():
        expected = theirs.encoder(x)
        # smp's UnetDecoder.forward, stopped after the stride-4 block (the third of five)
        shapes = [f.shape[2:] for f in expected][::-1]
        skips = expected[1:][::-1]
        y = theirs.decoder.center(skips[0])
        for i in range(3):
            y = theirs.decoder.blocks[i](y, *shapes[i + 1], skip_connection=skips[i + 1])
        got = ours.forward_features(x)
    assert torch.allclose(got.encoder, expected[-1], atol=1e-5)
    assert torch.allclose(got.decoder, y, atol=1e-5)


def test_fpn_decoder_matches_smp_fpn():
    smp = _smp()
    torch.manual_seed(0)
    ours = build_model(
        model_config(name="fpn", arch="resnet18", output_stride=32, fpn_channels=32,
                    decoder_channels=64), 4, num_classes=3,
    ).eval()  # fmt: skip
    _randomise_norms(ours)
    theirs = smp.FPN("resnet18", encoder_weights=None, in_channels=4, classes=3,
                     decoder_pyramid_channels=32, decoder_segmentation_channels=64).eval()  # fmt: skip
    _copy_into_smp(ours, theirs)
    x = torch.randn(2, 4, 64, 96)
    with torch.no_grad():
        expected = theirs.decoder(theirs.encoder(x))
        got = ours.forward_features(x).decoder
    assert got.shape == expected.shape == (2, 64, 16, 24)
    assert torch.allclose(got, expected, atol=1e-5)
