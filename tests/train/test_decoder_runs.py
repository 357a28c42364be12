"""U-Net and FPN through the engines: pretraining with every branch, fine-tuning on a swapped decoder."""

from pathlib import Path

import pytest
import torch
from tiny_runs import SMALL_MODEL, TINY_FINETUNE

from contrastseg.config import load_pretrain_config
from contrastseg.train.evaluate import load_segmenter
from contrastseg.train.finetune import run_finetune
from contrastseg.train.finetune_config import load_finetune_config
from contrastseg.train.pretrain import run_pretrain

PRETRAIN = [
    "run.progress=false", "run.image_every=0", "train.max_steps=1", "train.batch_size=4",
    "train.num_workers=0", "data.demo.n_scenes=4", "data.demo.size=64", "data.patch_size=48",
    "views.size=32", *SMALL_MODEL,
]  # fmt: skip


def pretrain(root: Path, *extra: str) -> Path:
    config = load_pretrain_config(None, [f"run.root={root}", "run.name=p", *PRETRAIN, *extra])
    return run_pretrain(config).checkpoint


@pytest.mark.parametrize(
    ("model", "method"),
    [("unet", "glcnet"), ("fpn", "dense"), ("fpn", "simclr"), ("unet", "local")],
)
def test_pretraining_runs_on_unet_and_fpn(tmp_path, model, method):
    extra = ["method.region_size=8"] if method in ("glcnet", "local") else []
    path = pretrain(tmp_path, f"model.name={model}", f"method.name={method}", *extra)
    payload = torch.load(path, weights_only=True)
    assert payload["config"]["model"]["name"] == model
    assert {k.split(".")[0] for k in payload["model"]} == {"backbone", "decoder"}


@pytest.fixture(scope="module")
def deeplab_checkpoint(module_tmp) -> Path:
    return pretrain(module_tmp, "method.region_size=8")


def finetune(tmp_path: Path, *extra: str):
    overrides = [*TINY_FINETUNE, f"run.root={tmp_path}", "run.name=ft", *extra]
    return run_finetune(load_finetune_config(None, overrides))


@pytest.mark.parametrize("name", ["unet", "fpn"])
def test_a_deeplab_encoder_fine_tunes_as_unet_or_fpn(tmp_path, deeplab_checkpoint, name):
    result = finetune(
        tmp_path, f"pretrained.path={deeplab_checkpoint}", f"model.name={name}", "mode=decoder"
    )
    assert result.load_report is not None and result.load_report.complete
    assert all(k.startswith("backbone.") for k in result.load_report.loaded)
    source = torch.load(deeplab_checkpoint, weights_only=True)["model"]
    best = torch.load(result.best_checkpoint, weights_only=True)
    assert best["model_config"]["name"] == name
    assert best["model_config"]["arch"] == "resnet18"
    for key, value in source.items():  # mode=decoder: the loaded backbone stays as it was
        if key.startswith("backbone."):
            torch.testing.assert_close(best["model"][key], value, rtol=0, atol=0)
    segmenter = load_segmenter(result.best_checkpoint, device="cpu")
    assert type(segmenter.model).name == name
    bands = segmenter.model.in_channels
    assert segmenter.model(torch.zeros(1, bands, 32, 32)).shape[-2:] == (32, 32)


def test_linear_probe_of_a_swapped_decoder_reads_the_backbone(tmp_path, deeplab_checkpoint):
    # GLCNet trained DeepLabV3+'s decoder, not the U-Net's: the probe reads encoder features
    result = finetune(
        tmp_path, f"pretrained.path={deeplab_checkpoint}", "model.name=unet", "mode=linear"
    )
    best = torch.load(result.best_checkpoint, weights_only=True)
    assert best["model_config"]["classifier_features"] == "encoder"
    assert best["model"]["classifier.weight"].shape[1] == 512  # resnet18 layer4
