"""Any timm model with features_only as the backbone: stages from timm, timm's key names in and out."""

import pytest
import torch

from contrastseg.models import build_model, model_config
from contrastseg.models.pretrained import export_weights
from contrastseg.utils.configtools import ConfigError

timm = pytest.importorskip("timm")


@pytest.mark.parametrize("name", ["convnext_atto", "efficientnet_b0"])
def test_timm_backbone_stages_and_channels_come_from_timm(name):
    net = build_model(model_config("unet", arch=f"timm/{name}", output_stride=32), 4, 3).eval()
    reference = timm.create_model(
        name, features_only=True, feature_cls="getter", in_chans=4, out_indices=(-4, -3, -2, -1)
    )
    assert net.backbone.stage_channels == tuple(reference.feature_info.channels())
    reference.load_state_dict(net.backbone.state_dict(), strict=True)  # timm's names, "model."
    reference.eval()
    x = torch.randn(2, 4, 64, 64)
    with torch.no_grad():
        ours, theirs = net.backbone.stages(x), reference(x)
        assert net(x).shape == (2, 3, 64, 64)
    assert [t.shape[-1] for t in ours] == [16, 8, 4, 2]
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)


def test_timm_backbone_exports_in_timm_key_names_and_loads_them(tmp_path):
    net = build_model(model_config("fpn", arch="timm/convnext_atto", output_stride=16), 3, 2)
    assert net.backbone.stages(torch.randn(1, 3, 64, 64))[-1].shape[-1] == 4  # dilated to 16
    torch.save({"model": net.state_dict()}, tmp_path / "net.pt")
    export_weights(tmp_path / "net.pt", tmp_path / "bb.pt", part="backbone")
    exported = torch.load(tmp_path / "bb.pt", weights_only=True)
    full = timm.create_model("convnext_atto")
    missing, unexpected = full.load_state_dict(exported, strict=False)
    assert not unexpected and all(k.startswith("head.") for k in missing)
    again = build_model(
        model_config("fpn", arch="timm/convnext_atto", backbone_weights=str(tmp_path / "bb.pt")),
        3,
        2,
    )
    for key, value in net.backbone.state_dict().items():
        assert torch.equal(again.backbone.state_dict()[key], value)


def test_unknown_backbones_are_refused_clearly():
    with pytest.raises(ValueError, match=r"model\.arch must be one of resnet18.*or timm/<name>"):
        model_config("unet", arch="resnet19")
    with pytest.raises(ValueError, match="timm cannot build it"):
        build_model(model_config("unet", arch="timm/no_such_model"), 3, 2)
    with pytest.raises((ValueError, ConfigError), match=r"model\.arch must be one of"):
        model_config("fcn", arch="vgg16_bn")  # VGG16-BN is SegNet's
