"""The textbook architectures against well-kept implementations with the same weights, and analytically.

torchvision's ``fcn_resnet50`` / ``deeplabv3_resnet50`` (``weights=None``: random weights,
BatchNorm statistics randomised here) load into ``fcn`` / ``deeplabv3`` under the documented
key mappings and give the same logits.
"""

import pytest
import torch
import torch.nn.functional as F
import torchvision

from contrastseg.config import load_pretrain_config
from contrastseg.models import FCN, MODELS, DeepLabV3, build_model, model_config
from contrastseg.models.deeplabv3 import torchvision_key
from contrastseg.models.fcn import TORCHVISION_KEYS as FCN_KEYS


def randomise_norms(net: torch.nn.Module, seed: int = 0) -> None:
    """Random BatchNorm statistics and affine parameters (a fresh network's are 0/1)."""
    generator = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=generator) * 0.1)


def same_logits(theirs: torch.nn.Module, ours: torch.nn.Module, rename) -> None:
    randomise_norms(theirs)
    state = {rename(k): v for k, v in theirs.state_dict().items()}
    ours.load_state_dict(state, strict=True)  # every key maps, none left over
    theirs.eval(), ours.eval()
    x = torch.randn(2, 3, 48, 56, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = theirs(x)["out"], ours(x)
    assert got.shape == expected.shape == (2, 6, 48, 56)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_fcn_32s_at_stride_8_is_torchvision_fcn_resnet50():
    torch.manual_seed(0)
    theirs = torchvision.models.segmentation.fcn_resnet50(
        weights=None, weights_backbone=None, num_classes=6
    )

    def rename(key: str) -> str:
        for prefix, target in FCN_KEYS.items():
            if key.startswith(prefix):
                return target + key.removeprefix(prefix)
        return key

    same_logits(theirs, FCN(6, "resnet50", 3, output_stride=8, variant="32s"), rename)


def test_deeplabv3_at_stride_8_is_torchvision_deeplabv3_resnet50():
    torch.manual_seed(0)
    theirs = torchvision.models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=6
    )
    same_logits(theirs, DeepLabV3(6, "resnet50", 3, output_stride=8), torchvision_key)


@pytest.mark.parametrize("variant, skips", [("32s", 0), ("16s", 1), ("8s", 2)])
def test_fcn_variants_fuse_their_skips(variant, skips):
    net = build_model(
        model_config("fcn", arch="resnet18", variant=variant, decoder_channels=8), 3, 2
    ).eval()
    assert len(net.decoder.skips) == skips and net.decoder_stride == (32, 16, 8)[skips]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        stages = net.backbone.stages(x)
        head = net.head(stages[-1])
        assert torch.equal(net.forward_features(x).decoder, net._decode(stages, head))
        # zero-initialised skips (the paper): an untrained 16s / 8s is its 32s, upsampled
        expected = head
        for skip in (stages[2], stages[1])[:skips]:
            expected = F.interpolate(expected, size=skip.shape[-2:], mode="bilinear")
        torch.testing.assert_close(net.forward_features(x).decoder, expected)
        # a trained skip adds its 1x1 projection after the upsampling
        for conv in net.decoder.skips:
            torch.nn.init.normal_(conv.weight)
        expected = head
        for conv, skip in zip(net.decoder.skips, (stages[2], stages[1]), strict=False):
            expected = F.interpolate(expected, size=skip.shape[-2:], mode="bilinear")
            expected = expected + F.conv2d(skip, conv.weight, conv.bias)
        torch.testing.assert_close(net.forward_features(x).decoder, expected)


def test_pspnet_decoder_matches_smp_pspnet():
    smp = pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(0)
    ours = build_model(
        model_config("pspnet", arch="resnet18", output_stride=32, decoder_channels=24,
                     bottleneck_kernel=1), 4, num_classes=3,
    ).eval()  # fmt: skip
    randomise_norms(ours)
    theirs = smp.PSPNet("resnet18", encoder_weights=None, in_channels=4, classes=3,
                        encoder_depth=5, psp_out_channels=24, upsampling=32).eval()  # fmt: skip
    # our backbone.* is smp's encoder.*, the decoder keys are smp's; smp's head is a 3x3 conv
    state = {
        ("encoder." + k.removeprefix("backbone.") if k.startswith("backbone.") else k): v
        for k, v in ours.state_dict().items()
        if not k.startswith("classifier.")
    }
    missing, unexpected = theirs.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("segmentation_head.") for k in missing)
    x = torch.randn(2, 4, 96, 128)
    with torch.no_grad():
        expected = theirs.decoder(theirs.encoder(x))
        got = ours.forward_features(x)
    assert got.decoder.shape == expected.shape == (2, 24, 3, 4)
    torch.testing.assert_close(got.decoder, expected, atol=1e-5, rtol=1e-5)


def test_pspnet_pyramid_pools_each_bin_and_keeps_its_input():
    net = build_model(model_config("pspnet", arch="resnet18", bins=[1, 2]), 3, 2).eval()
    x = torch.randn(1, 512, 4, 6)
    with torch.no_grad():
        out = net.decoder.psp(x)
    assert out.shape == (1, 512 + 2 * 256, 4, 6)
    assert torch.equal(out[:, 512:], x)  # the input, concatenated last
    # bin 1: the global mean through the 1x1 conv (bias, no BN), ReLU, constant over the map
    conv = net.decoder.psp.blocks[0].pool[1][0]
    mean = x.mean(dim=(2, 3))
    expected = torch.relu(mean @ conv.weight[:, :, 0, 0].T + conv.bias)
    torch.testing.assert_close(out[0, :256], expected[0, :, None, None].expand(256, 4, 6))
    # bin 2: each quadrant's mean, before the conv
    pooled = net.decoder.psp.blocks[1].pool[0](x)
    torch.testing.assert_close(pooled[0, :, 0, 0], x[0, :, :2, :3].mean(dim=(1, 2)))


def test_resunet_block_is_a_residual_unit_with_a_projection_shortcut():
    net = build_model(
        model_config("resunet", arch="resnet18", unet_channels=(16, 8), decoder_channels=8), 3, 2
    ).eval()
    randomise_norms(net)
    block = net.decoder.blocks[2]
    x, skip = torch.randn(1, 8, 4, 5), torch.randn(1, 64, 8, 10)

    def bn(t, m):
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    # transcription: upsample (nearest), concatenate, conv-BN-ReLU-conv-BN + conv1x1-BN, ReLU
    z = torch.cat([x.repeat_interleave(2, -2).repeat_interleave(2, -1), skip], dim=1)
    a = F.relu(bn(F.conv2d(z, block.conv1[0].weight, padding=1), block.conv1[1]))
    a = bn(F.conv2d(a, block.conv2[0].weight, padding=1), block.conv2[1])
    expected = F.relu(a + bn(F.conv2d(z, block.shortcut[0].weight), block.shortcut[1]))
    with torch.no_grad():
        torch.testing.assert_close(block(x, skip), expected)
    # the rest is the U-Net: the same keys but for the residual units' shortcuts
    unet = build_model(
        model_config("unet", arch="resnet18", unet_channels=(16, 8), decoder_channels=8), 3, 2
    )
    extra = set(net.state_dict()) - set(unet.state_dict())
    assert extra and all(".shortcut." in k for k in extra)
    assert set(unet.state_dict()) <= set(net.state_dict())


def test_parsenet_fuses_l2_normalised_scaled_local_and_global_features():
    net = build_model(model_config("parsenet", arch="resnet18", scale_init=3.0), 3, 2).eval()
    assert net.decoder_channels == 1024 and net.decoder_stride == 8
    # every position holds one of two vectors: (3, 4, 0 ...) on the left, (0, 0, 5, 12, 0 ...) right
    x = torch.zeros(1, 512, 2, 4)
    x[0, :2, :, :2] = torch.tensor([3.0, 4.0])[:, None, None]
    x[0, 2:4, :, 2:] = torch.tensor([5.0, 12.0])[:, None, None]
    with torch.no_grad():
        out = net.decoder([x])
    assert out.shape == (1, 1024, 2, 4)
    local, context = out[0, :512], out[0, 512:]
    torch.testing.assert_close(local[:2, 0, 0], 3.0 * torch.tensor([0.6, 0.8]))
    torch.testing.assert_close(local[2:4, 1, 3], 3.0 * torch.tensor([5 / 13, 12 / 13]))
    assert local[2:].abs().sum() > 0 and local[4:].abs().sum() == 0
    # the context: the mean vector (1.5, 2, 2.5, 6) / |.|, scaled, the same at every position
    mean = torch.tensor([1.5, 2.0, 2.5, 6.0])
    expected = 3.0 * mean / mean.norm()
    torch.testing.assert_close(context[:4], expected[:, None, None].expand(4, 2, 4))
    assert context[4:].abs().sum() == 0
    # the scales are learned per channel
    net.decoder.global_scale.data[0] = 7.0
    with torch.no_grad():
        torch.testing.assert_close(
            net.decoder([x])[0, 512], torch.full((2, 4), 7.0 * 1.5 / mean.norm())
        )


def test_segnet_backbone_is_torchvision_vgg16_bn_features():
    theirs = torchvision.models.vgg16_bn(weights=None).eval()
    randomise_norms(theirs)
    net = build_model(model_config("segnet"), 3, 2).eval()
    missing, unexpected = net.backbone.load_state_dict(theirs.state_dict(), strict=False)
    assert not missing and all(k.startswith("classifier.") for k in unexpected)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(net.forward_features(x).encoder, theirs.features(x))


def test_segnet_unpooling_returns_every_value_to_its_argmax_position():
    net = build_model(model_config("segnet"), 3, 2).eval()
    x = torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = net.backbone.features[:6](x)  # stage 1 before its max-pool: (1, 64, 32, 48)
        pooled = net.backbone.pooled_stages(x)
        unpooled = F.max_unpool2d(
            pooled.outputs[0], pooled.indices[0], 2, 2, output_size=before.shape[-2:]
        )
    # transcription: in every 2x2 window the maximum stays where it was, the rest is zero
    windows = (
        before.reshape(1, 64, 16, 2, 24, 2).permute(0, 1, 2, 4, 3, 5).reshape(1, 64, 16, 24, 4)
    )
    winner = windows.argmax(dim=-1)
    expected = torch.zeros_like(windows).scatter_(
        -1, winner[..., None], windows.max(-1, keepdim=True).values
    )
    expected = expected.reshape(1, 64, 16, 24, 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(before.shape)
    assert torch.equal(unpooled, expected)
    assert torch.equal(pooled.outputs[0], windows.max(-1).values)
    # the decoder unpools each stage with its own indices, deepest first, to full resolution
    with torch.no_grad():
        features = net.forward_features(x).decoder
    assert features.shape == (1, 64, 32, 48) and net.feature_stride("decoder") == 1


def test_segnet_unpools_without_a_scatter_under_deterministic_algorithms():
    """train.deterministic: torch has no deterministic max_unpool2d; the 2x2 unpooling does
    the same, even and odd sizes, values and gradients (oracle: F.max_unpool2d)."""
    from contrastseg.models.segnet import unpool2x2
    from contrastseg.train.runtime import process_settings_kept

    g = torch.Generator().manual_seed(0)
    for size in ((8, 12), (9, 13)):
        before = torch.randn(2, 3, *size, generator=g, requires_grad=True)
        pooled, index = F.max_pool2d(before, 2, 2, return_indices=True)
        grad = torch.randn(2, 3, *size, generator=g)
        leaf = pooled.detach().requires_grad_()
        theirs = F.max_unpool2d(leaf, index, 2, 2, output_size=size)
        (theirs_grad,) = torch.autograd.grad(theirs, leaf, grad)
        leaf = pooled.detach().requires_grad_()
        mine = unpool2x2(leaf, index, size)
        (mine_grad,) = torch.autograd.grad(mine, leaf, grad)
        assert torch.equal(mine, theirs) and torch.equal(mine_grad, theirs_grad)
    net = build_model(model_config("segnet"), 3, 2).eval()
    x = torch.randn(1, 3, 32, 48, generator=g)
    with torch.no_grad():
        expected = net(x)
    with process_settings_kept():
        torch.use_deterministic_algorithms(True)  # max_unpool2d would raise here
        with torch.no_grad():
            assert torch.equal(net(x), expected)
    # an inf (an fp16 overflow) stays in its pixel, as with max_unpool2d
    pooled, index = F.max_pool2d(torch.randn(1, 1, 4, 4, generator=g), 2, 2, return_indices=True)
    pooled[0, 0, 0, 0] = float("inf")
    theirs = F.max_unpool2d(pooled, index, 2, 2, output_size=(4, 4))
    assert torch.equal(unpool2x2(pooled, index, (4, 4)), theirs)


def test_segnet_refuses_a_resnet():
    with pytest.raises(
        ValueError, match=r"model\.arch must be vgg16_bn for SegNet, got .resnet18."
    ):
        load_pretrain_config(None, ["model.name=segnet", "model.arch=resnet18"])
    with pytest.raises(
        ValueError,
        match=r"model.output_stride must be 32 for SegNet \(VGG16-BN is not dilated\), got 16",
    ):
        load_pretrain_config(None, ["model.name=segnet", "model.arch=vgg16_bn"])
    with pytest.raises(ValueError, match=r"model\.arch must be vgg16_bn"):
        build_model({"name": "segnet", "arch": "resnet50"}, 3)


def test_segnet_starts_from_a_torchvision_vgg16_bn_file_with_any_band_count(tmp_path):
    theirs = torchvision.models.vgg16_bn(weights=None)
    path = tmp_path / "vgg16_bn.pt"
    torch.save(theirs.state_dict(), path)
    net = build_model(model_config("segnet", backbone_weights=str(path)), 4, 2)
    first = theirs.features[0].weight
    # bands 0..3 take the R, G, B, R kernels, scaled by 3 / 4
    expected = first[:, [0, 1, 2, 0]] * 0.75
    torch.testing.assert_close(net.backbone.features[0].weight.detach(), expected)
    torch.testing.assert_close(
        net.backbone.features[40].weight.detach(), theirs.features[40].weight
    )


@pytest.mark.parametrize("name", list(MODELS))
def test_every_network_trains_under_deterministic_algorithms_on_the_cpu(name):
    """train.deterministic on a CPU refuses an operation without a deterministic kernel (as
    SegNet's max_unpool2d was): every network's forward and backward must have one."""
    from contrastseg.train.runtime import process_settings_kept

    arch = "vgg16_bn" if name == "segnet" else "resnet18"
    extra = {"output_stride": 32} if name == "segnet" else {}
    net = build_model(model_config(name, arch=arch, **extra), 3, 2).train()
    with process_settings_kept():
        torch.use_deterministic_algorithms(True)
        net(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
