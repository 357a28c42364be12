"""Fine-tuning that keeps the pretraining: LP-FT, layer-wise lr decay, frozen BatchNorm statistics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_runs import TINY_FINETUNE, pretrain_tiny
from torch import nn

from contrastseg.models.registry import build_model
from contrastseg.train.finetune import run_finetune
from contrastseg.train.finetune_config import load_finetune_config
from contrastseg.train.finetune_model import build_finetune_optimizer, layer_levels
from contrastseg.utils.configtools import ConfigError


@pytest.fixture(scope="module")
def pretrained(module_tmp) -> Path:
    return pretrain_tiny(module_tmp)


def _config(tmp_path, *extra):
    return load_finetune_config(None, [*TINY_FINETUNE, f"run.root={tmp_path}", *extra])


def _net():
    config = {"name": "deeplabv3plus", "arch": "resnet18", "aspp_channels": 8}
    return build_model({**config, "decoder_channels": 8}, 3, num_classes=4, backbone_weights=False)


def test_layer_levels_count_from_the_classifier_to_the_stem():
    levels = layer_levels(_net())
    expected = {
        "classifier.weight": 0, "decoder.fuse.0.0.weight": 1, "aspp.project.0.weight": 2,
        "backbone.layer4.0.conv1.weight": 3, "backbone.layer3.1.bn2.bias": 4,
        "backbone.layer2.0.downsample.0.weight": 5, "backbone.layer1.0.conv1.weight": 6,
        "backbone.conv1.weight": 7, "backbone.bn1.weight": 7,
    }  # fmt: skip
    for name, level in expected.items():
        assert levels[name] == level, name
    assert set(levels) == {n for n, _ in _net().named_parameters()}


class _Report:
    def __init__(self, loaded):
        self.loaded = loaded


@pytest.mark.parametrize("mode", ["finetune", "lp-ft"])
def test_every_parameter_gets_lr_times_decay_to_its_level_times_the_pretrained_scale(
    tmp_path, mode
):
    net = _net()
    config = _config(
        tmp_path, f"mode={mode}", "optim.lr=0.1", "optim.layer_decay=0.5",
        "pretrained_lr_scale=0.3",
    )  # fmt: skip
    loaded = [n for n, _ in net.named_parameters() if n.startswith(("backbone.", "aspp."))]
    optimizer = build_finetune_optimizer(net, config, _Report(loaded))
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    levels = layer_levels(net)
    for name, p in net.named_parameters():
        expected = 0.1 * 0.5 ** levels[name] * (0.3 if name in loaded else 1.0)
        assert lr_of[id(p)] == pytest.approx(expected), name
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(net.parameters()))
    # weight decay settings of the base groups survive the split
    plain = build_finetune_optimizer(net, _config(tmp_path, "optim.lr=0.1"), _Report(loaded))
    assert {g["lr"] for g in plain.param_groups} == {0.1}


def test_layer_decay_is_checked():
    with pytest.raises(ConfigError, match="layer_decay"):
        load_finetune_config(None, ["optim.layer_decay=0"])
    with pytest.raises(ConfigError, match="layer_decay"):
        load_finetune_config(None, ["optim.layer_decay=1.5"])


def _batchnorm_stats(state, prefix):
    return {k: v for k, v in state.items() if k.startswith(prefix) and "running_" in k}


def test_freeze_bn_keeps_the_pretrained_statistics_and_trains_the_weights(tmp_path, pretrained):
    source = torch.load(pretrained, weights_only=True)["model"]
    common = [f"pretrained.path={pretrained}", "train.max_steps=3", "eval.every_steps=100"]
    kept = run_finetune(_config(tmp_path, *common, "run.name=fbn", "pretrained.freeze_bn=true"))
    moved = run_finetune(_config(tmp_path, *common, "run.name=plain"))
    for result, frozen in ((kept, True), (moved, False)):
        state = torch.load(result.run_dir / "checkpoints" / "step_00000003.pt", weights_only=True)
        state = state["model"]
        stats = _batchnorm_stats(source, "backbone.") | _batchnorm_stats(source, "aspp.")
        assert stats
        same = [torch.equal(state[k], v) for k, v in stats.items()]
        assert all(same) if frozen else not any(same)
        # the convolutions and the BN scales train either way
        assert not torch.equal(state["backbone.conv1.weight"], source["backbone.conv1.weight"])
        assert not torch.equal(state["backbone.bn1.weight"], source["backbone.bn1.weight"])


def test_lp_ft_starts_from_the_converged_probe_and_keeps_it_unless_beaten(tmp_path, pretrained):
    common = [f"pretrained.path={pretrained}", "pretrained.parts=all", "eval.every_steps=1"]
    probe = run_finetune(
        _config(tmp_path, *common, "run.name=lp", "mode=linear", "linear.features=decoder")
    )
    lpft = run_finetune(_config(tmp_path, *common, "run.name=lpft", "mode=lp-ft"))
    assert probe.step == 0 and probe.best_epoch == 0
    first = lpft.history[0]
    # the first validation of LP-FT is the linear probe's, the same solve on the same network
    assert first["step"] == 0
    assert first["val/miou"] == pytest.approx(probe.val_metrics["miou"], abs=1e-6)
    assert lpft.step == 2
    assert lpft.val_metrics["miou"] >= first["val/miou"] - 1e-9  # best.pt: the probe or better
    log = (lpft.run_dir / "train.log").read_text()
    assert "fine-tuning starts from this head" in log
    assert "softmax regression on" in log and "L2" in log


def test_linear_mode_solves_the_head_and_changes_nothing_else(tmp_path, pretrained):
    result = run_finetune(
        _config(tmp_path, "mode=linear", f"pretrained.path={pretrained}", "pretrained.parts=all",
                "linear.l2_grid=[0.01, 0.001]", "run.name=lin")
    )  # fmt: skip
    source = torch.load(pretrained, weights_only=True)["model"]
    best = torch.load(result.best_checkpoint, weights_only=True)
    for key, value in source.items():
        torch.testing.assert_close(best["model"][key], value, rtol=0, atol=0, msg=key)
    assert best["best"]["l2"] in (0.01, 0.001)
    assert not (result.run_dir / "checkpoints").exists() or not list(
        (result.run_dir / "checkpoints").iterdir()
    )
    assert isinstance(best["model"]["classifier.weight"], torch.Tensor)
    assert best["model"]["classifier.weight"].abs().sum() > 0
    assert result.test_metrics is not None


def test_bn_module_is_in_eval_mode_only_where_asked():
    from contrastseg.train.finetune_model import set_train_mode

    net = _net()
    norms = [m for m in net.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    set_train_mode(net, norms)
    assert all(not m.training for m in norms)
    assert net.aspp.training and net.backbone.conv1.training


def test_the_cli_offers_lp_ft():
    from contrastseg.cli import build_parser

    assert build_parser().parse_args(["finetune", "--mode", "lp-ft"]).mode == "lp-ft"


def test_an_epoch_without_labeled_pixels_stops(tmp_path, monkeypatch):
    from contrastseg.train import finetune as ft

    original = ft.FinetuneTask.train_step
    monkeypatch.setattr(
        ft.FinetuneTask, "train_step",
        lambda self, b: original(self, (b[0], torch.full_like(b[1], 255))),
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"epoch 1: its training masks hold no labeled pixel"):
        run_finetune(_config(tmp_path, "run.name=x"))
