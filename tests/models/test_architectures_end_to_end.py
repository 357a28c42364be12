"""Every architecture end to end through the CLI: a 2-step GLCNet pretraining with
``--set model.name=X``, then ``finetune --pretrained RUN --decoder X`` (tiny sizes, ResNet-18)."""

import pytest
import torch

from contrastseg.cli import main
from contrastseg.models import MODELS

TINY = [
    "run.progress=false", "run.image_every=0", "train.batch_size=4", "train.num_workers=0",
    "data.demo.n_scenes=4", "data.demo.size=64", "model.arch=resnet18",
]  # fmt: skip
PRETRAIN = [*TINY, "train.max_steps=2", "data.patch_size=48", "views.size=32",
            "method.name=glcnet", "method.region_size=8"]  # fmt: skip
FINETUNE = [*TINY, "train.max_steps=1", "data.patch_size=32", "data.label_fraction=1.0",
            "eval.window=32", "eval.stride=32", "eval.overlays=0"]  # fmt: skip
#: settings a network needs besides its name (SegNet: its one backbone)
OWN = {
    "segnet": ["model.arch=vgg16_bn", "model.output_stride=32"],
    "unet+timm": ["model.arch=timm/convnext_atto", "model.output_stride=32"],
}
#: SegNet's VGG16-BN and the ConvNeXt reach stride 32 undilated: 64 px views (a 2 x 2 map)
OWN_PRETRAIN = {
    "segnet": ["data.patch_size=64", "views.size=64"],
    "unet+timm": ["data.patch_size=64", "views.size=64"],
}


def sets(values: list[str]) -> list[str]:
    return [arg for value in values for arg in ("--set", value)]


@pytest.mark.parametrize("name", [*MODELS, "unet+timm"])
def test_pretrain_then_finetune_every_architecture(tmp_path, name, capsys):
    if name == "unet+timm":  # a timm encoder through the same engines
        pytest.importorskip("timm")
    own, own_pretrain = OWN.get(name, []), OWN_PRETRAIN.get(name, [])
    name = name.removesuffix("+timm")
    root = f"run.root={tmp_path}"
    argv = [
        "pretrain",
        *sets(
            [
                *PRETRAIN,
                root,
                "run.name=pre",
                f"model.name={name}",
                *own,
                *own_pretrain,
            ]
        ),
    ]
    assert main(argv) == 0
    run = tmp_path / "pre"
    pretrained = torch.load(sorted((run / "checkpoints").glob("step_*.pt"))[-1], weights_only=True)
    assert pretrained["config"]["model"]["name"] == name
    argv = ["finetune", "--pretrained", str(run), "--decoder", name, "--name", "ft"]
    argv += ["--mode", "decoder"]  # the pretrained backbone frozen, the parts after it trained
    assert main([*argv, *sets([*FINETUNE, root, *own])]) == 0
    best = torch.load(tmp_path / "ft" / "best.pt", weights_only=True)
    assert best["model_config"]["name"] == name
    # the pretrained backbone loaded and stayed frozen (mode decoder): every tensor as pretrained
    backbone = {k: v for k, v in pretrained["model"].items() if k.startswith("backbone.")}
    assert backbone and all(torch.equal(best["model"][k], v) for k, v in backbone.items())
    rest = [k for k in best["model"] if not k.startswith(("backbone.", "classifier."))]
    assert any(not torch.equal(best["model"][k], pretrained["model"][k]) for k in rest)
