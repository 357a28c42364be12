"""The linear probe: features the checkpoint trained, frozen parts loaded or estimated, a head that converges."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_runs import SMALL_MODEL, TINY_FINETUNE
from torch import nn

from contrastseg.config import load_pretrain_config
from contrastseg.models import DeepLabV3Plus
from contrastseg.models.pretrained import export_weights
from contrastseg.train.checkpoint import list_checkpoints
from contrastseg.train.finetune import run_finetune
from contrastseg.train.finetune_config import load_finetune_config
from contrastseg.train.pretrain import run_pretrain
from contrastseg.train.probe import (
    Patience,
    default_features,
    estimate_batchnorm,
    trained_parts,
)
from contrastseg.utils.configtools import ConfigError

# decoder 24 channels, ASPP 32: the log and head shapes tell the two apart
SMALL_MODEL = [*SMALL_MODEL, "model.decoder_channels=24"]
TINY = [*TINY_FINETUNE, "eval.overlays=0", "mode=linear", "model.decoder_channels=24"]


def _pretrain(root: Path, method: str) -> Path:
    config = load_pretrain_config(
        None,
        [
            f"run.root={root}", f"run.name={method}", "run.progress=false", "run.image_every=0",
            "train.max_steps=1", "train.batch_size=4", "train.num_workers=0",
            "data.demo.n_scenes=4", "data.demo.size=64", "data.patch_size=48",
            "views.size=32", "method.region_size=8", f"method.name={method}", *SMALL_MODEL,
        ],
    )  # fmt: skip
    return run_pretrain(config).checkpoint


@pytest.fixture(scope="module")
def checkpoints(module_tmp) -> dict[str, Path]:
    root = module_tmp
    return {method: _pretrain(root, method) for method in ("glcnet", "simclr")}


def _probe(tmp_path: Path, *extra: str):
    return run_finetune(
        load_finetune_config(None, [*TINY, f"run.root={tmp_path}", "run.name=probe", *extra])
    )


def _selected(run_dir: Path) -> dict:
    """The probe's checkpoint (a linear probe is solved, not trained: best.pt is all it writes)."""
    assert not list_checkpoints(run_dir / "checkpoints")
    return torch.load(run_dir / "best.pt", weights_only=True)


def test_every_frozen_tensor_comes_from_the_checkpoint(tmp_path, checkpoints):
    # default parts (auto): a GLCNet checkpoint trained the decoder, so the probe reads the
    # decoder features and loads backbone, ASPP and decoder, BatchNorm statistics included
    result = _probe(tmp_path, f"pretrained.path={checkpoints['glcnet']}")
    source = torch.load(checkpoints["glcnet"], weights_only=True)["model"]
    trained = _selected(result.run_dir)
    assert trained["model_config"]["classifier_features"] == "decoder"
    frozen = {k: v for k, v in trained["model"].items() if not k.startswith("classifier.")}
    assert set(frozen) == set(source)  # no frozen tensor that the checkpoint lacks
    for key, value in frozen.items():
        torch.testing.assert_close(value, source[key], rtol=0, atol=0, msg=key)
    assert trained["model"]["classifier.weight"].shape == (6, 24, 1, 1)  # demo: 6 classes
    log = (result.run_dir / "train.log").read_text()
    assert "linear probe on frozen decoder features: 24 channels at stride 4" in log
    assert "estimated" not in log  # nothing random to estimate


def test_a_simclr_checkpoint_is_probed_on_encoder_features(tmp_path, checkpoints):
    result = _probe(tmp_path, f"pretrained.path={checkpoints['simclr']}")
    trained = _selected(result.run_dir)
    assert trained["model_config"]["classifier_features"] == "encoder"
    assert trained["model"]["classifier.weight"].shape == (6, 32, 1, 1)  # ASPP channels
    assert result.load_report is not None
    assert result.load_report.parts == "backbone+aspp" and result.load_report.complete
    log = (result.run_dir / "train.log").read_text()
    assert "linear probe on frozen encoder features: 32 channels at stride 16" in log


def test_untrained_or_unloaded_frozen_parts_are_refused(tmp_path, checkpoints):
    # SimCLR never runs the decoder: its decoder weights are the initial ones
    with pytest.raises(ConfigError, match=r"simclr.*never trains decoder.*\(linear\.features\)"):
        _probe(tmp_path, f"pretrained.path={checkpoints['simclr']}", "linear.features=decoder")
    # the frozen ASPP would not be loaded
    with pytest.raises(ConfigError, match=r"does not load aspp"):
        _probe(
            tmp_path,
            f"pretrained.path={checkpoints['glcnet']}",
            "linear.features=encoder",
            "pretrained.parts=backbone",
        )
    # an exported backbone has no ASPP: encoder features would be random
    exported = export_weights(checkpoints["glcnet"], tmp_path / "backbone.pth")
    with pytest.raises(ConfigError, match=r"backbone\.pth: cannot probe encoder"):
        _probe(tmp_path, f"pretrained.path={exported}", "linear.features=encoder")


def test_an_exported_backbone_is_probed_on_backbone_features(tmp_path, checkpoints):
    exported = export_weights(checkpoints["glcnet"], tmp_path / "backbone.pth")
    result = _probe(tmp_path, f"pretrained.path={exported}")
    trained = _selected(result.run_dir)
    assert trained["model_config"]["classifier_features"] == "backbone"
    assert trained["model"]["classifier.weight"].shape == (6, 512, 1, 1)
    source = torch.load(exported, weights_only=True)
    for key, value in source.items():
        torch.testing.assert_close(trained["model"][f"backbone.{key}"], value, rtol=0, atol=0)


def test_a_random_start_estimates_its_batchnorm_statistics(tmp_path):
    result = _probe(tmp_path)
    trained = _selected(result.run_dir)["model"]
    initial = DeepLabV3Plus(6, "resnet18", 4, aspp_channels=32, decoder_channels=24).state_dict()
    means = [k for k in trained if k.endswith("running_mean")]
    assert {k.split(".")[0] for k in means} == {"backbone", "aspp", "decoder"}
    for key in means:
        assert not torch.equal(trained[key], initial[key]), key  # initial: zeros
        var = key.replace("running_mean", "running_var")
        assert not torch.equal(trained[var], initial[var]), var  # initial: ones
    log = (result.run_dir / "train.log").read_text()
    assert "BatchNorm statistics of the frozen, not pretrained backbone+aspp+decoder" in log


def test_estimate_batchnorm_gives_the_mean_of_batch_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.ReLU(), nn.Linear(1, 1))
    net[1].momentum = 0.3
    batches = [torch.randn(4, 2, 5, 5) * (i + 1) + i for i in range(3)]
    used = estimate_batchnorm(net, [net[1]], batches, lambda x: net[1](net[0](x)))
    assert used == 3
    # oracle: numpy mean of the per-batch channel means and unbiased variances
    acts = [net[0](b).detach().numpy().transpose(1, 0, 2, 3).reshape(3, -1) for b in batches]
    mean = np.mean([a.mean(1) for a in acts], axis=0)
    var = np.mean([a.var(1, ddof=1) for a in acts], axis=0)
    np.testing.assert_allclose(net[1].running_mean.numpy(), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net[1].running_var.numpy(), var, rtol=1e-5)
    assert net[1].momentum == 0.3 and net.training  # settings and mode put back


def test_patience_stops_after_n_validations_without_a_better_score():
    rule = Patience(2)
    seen = []
    for score in (0.1, 0.3, 0.3, 0.2, 0.5, 0.4, 0.4, 0.9):
        seen.append((rule.update(score), rule.exhausted))
        if rule.exhausted:
            break
    # equal is not better: 0.3 twice counts as one stale validation
    assert seen == [(True, False), (True, False), (False, False), (False, True)]
    assert rule.best == 0.3
    assert not Patience(0, stale=100).exhausted  # 0 = never stop


def test_default_features_follow_what_the_file_trained():
    state = {"backbone.conv1.weight": 0, "aspp.x": 0, "decoder.y": 0}

    def payload(method):
        return {"format": "contrastseg.pretrain", "config": {"method": {"name": method}}}

    assert default_features(trained_parts(state, payload("glcnet"))) == "decoder"
    assert default_features(trained_parts(state, payload("local"))) == "decoder"
    assert default_features(trained_parts(state, payload("simclr"))) == "encoder"
    assert default_features(trained_parts(state, payload("global_style"))) == "encoder"
    assert default_features(trained_parts({"backbone.conv1.weight": 0}, {})) == "backbone"
    assert default_features(None) == "decoder"


def _one_hot_dataset(root: Path, classes: int = 3) -> None:
    """Images whose bands are the one-hot of their label map (blocks of random classes)."""
    rng = np.random.default_rng(0)
    for split in ("a", "b", "c", "d"):
        labels = rng.integers(0, classes, (8, 8)).repeat(8, 0).repeat(8, 1)
        image = (np.eye(classes, dtype=np.uint8)[labels] * 255)[..., :3]
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "images" / f"{split}.png")
        Image.fromarray(labels.astype(np.uint8)).save(root / "masks" / f"{split}.png")


def test_one_hot_features_are_probed_to_miou_100(tmp_path, monkeypatch):
    # features that are the one-hot of the label: a working probe separates them perfectly
    _one_hot_dataset(tmp_path / "data")
    monkeypatch.setattr(DeepLabV3Plus, "classifier_input", lambda self, x: x)
    result = _probe(
        tmp_path,
        "data.preset=null", f"data.root={tmp_path / 'data'}", "data.mask_format=index",
        "data.classes=[a, b, c]", "data.train=[a, b]", "data.val=[c]", "data.test=[d]",
        "model.decoder_channels=3", "train.max_steps=400", "train.augment=false",
        "data.patch_size=32", "eval.window=64", "eval.stride=64",
        "linear.l2_grid=[0.01, 0.0001]",
    )  # fmt: skip
    assert result.val_metrics["miou"] == pytest.approx(1.0)
    assert result.test_metrics is not None and result.test_metrics["miou"] == pytest.approx(1.0)
    assert result.step == 0  # solved, not trained: no optimizer step
    log = (result.run_dir / "train.log").read_text()
    assert "val mIoU % by L2: 0.01: 100.00, 0.0001: 100.00" in log
    assert "L2 0.01 selected" in log  # a tie goes to the stronger regularisation
