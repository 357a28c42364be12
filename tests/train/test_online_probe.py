"""The quick segmentation probe: known answers, during pretraining, and on any checkpoint."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from contrastseg.cli import main
from contrastseg.config import ProbeConfig, load_pretrain_config
from contrastseg.data.config import LabeledDataConfig
from contrastseg.data.labeled import LabeledDataset
from contrastseg.models import DeepLabV3Plus
from contrastseg.train.linear_fit import fit_probe_head
from contrastseg.train.model import PretrainModel
from contrastseg.train.online_probe import (
    ProbedNetwork,
    probe_datasets,
    probe_patch_indices,
    run_probe,
)
from contrastseg.train.pretrain import run_pretrain
from contrastseg.utils.configtools import ConfigError

PROBE_DEMO = [
    "probe.data.demo.n_scenes=4",
    "probe.data.demo.size=64",
    "probe.data.patch_size=32",
    "probe.window=32",
]
TINY = [
    "run.progress=false", "run.image_every=0", "run.log_every=2", "train.batch_size=4",
    "train.num_workers=0", "data.demo.n_scenes=4", "data.demo.size=64", "data.patch_size=48",
    "views.size=32", "method.region_size=8", "model.arch=resnet18", "model.aspp_channels=16",
    "model.decoder_channels=16", *PROBE_DEMO,
]  # fmt: skip


def _one_hot_folder(root, classes=3):
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        labels = rng.integers(0, classes, (6, 6)).repeat(8, 0).repeat(8, 1)
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.eye(classes, dtype=np.uint8)[labels] * 255).save(
            root / "images" / f"{name}.png"
        )
        Image.fromarray(labels.astype(np.uint8)).save(root / "masks" / f"{name}.png")


def _probe_config(root, **settings):
    data = LabeledDataConfig(
        root=str(root), mask_format="index", classes=["x", "y", "z"], train=["a", "b"],
        val=["c"], patch_size=16,
    )  # fmt: skip
    return ProbeConfig(every=1, data=data, window=48, max_patches=64, max_cells=10**6, **settings)


def test_features_that_are_the_one_hot_label_are_probed_to_miou_100(tmp_path, monkeypatch):
    _one_hot_folder(tmp_path)
    config = _probe_config(tmp_path, pixel_step=1, l2_grid=[1e-3])
    net = DeepLabV3Plus(None, "resnet18", 3, aspp_channels=8, decoder_channels=8)
    # the frozen features are the input itself (the one-hot of the label), at stride 1
    monkeypatch.setattr(ProbedNetwork, "forward_features", lambda self, x: x)
    monkeypatch.setattr(DeepLabV3Plus, "feature_stride", lambda self, features: 1)
    result = run_probe(
        net, "decoder", config, probe_datasets(config), None, None, None, torch.device("cpu")
    )
    assert result.metrics["miou"] == pytest.approx(1.0)
    assert result.metrics["kappa"] == pytest.approx(1.0)
    assert result.cells == 2 * 9 * 16 * 16  # every pixel of the 18 training patches
    assert result.l2 == 1e-3
    # with an L2 grid, every 4th patch (4 of 18) is held out to choose the strength, and
    # pixel_step 4 reads 4 x 4 pixels of each 16 px patch
    chosen = run_probe(
        net, "decoder", _probe_config(tmp_path), probe_datasets(config), None, None, None,
        torch.device("cpu"),
    )  # fmt: skip
    assert chosen.cells == 14 * 4 * 4
    assert chosen.l2 in (1e-2, 1e-3, 1e-4)
    assert chosen.metrics["miou"] == pytest.approx(1.0)


def test_random_features_score_near_chance(tmp_path, monkeypatch):
    _one_hot_folder(tmp_path)
    config = _probe_config(tmp_path)
    net = DeepLabV3Plus(None, "resnet18", 3, aspp_channels=8, decoder_channels=8)
    generator = torch.Generator().manual_seed(0)
    monkeypatch.setattr(
        ProbedNetwork, "forward_features",
        lambda self, x: torch.randn(x.shape[0], 8, *x.shape[-2:], generator=generator),
    )  # fmt: skip
    monkeypatch.setattr(DeepLabV3Plus, "feature_stride", lambda self, features: 1)
    result = run_probe(
        net, "decoder", config, probe_datasets(config), None, None, None, torch.device("cpu")
    )
    assert abs(result.metrics["kappa"]) < 0.1
    assert result.metrics["overall_accuracy"] < 0.5


def test_fit_head_folds_the_standardisation_into_the_convolution():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 4, generator=g) * torch.tensor([1.0, 10.0, 0.1, 3.0]) + 5
    scores = (x - 5) / torch.tensor([1.0, 10.0, 0.1, 3.0]) @ torch.randn(4, 3, generator=g)
    y = scores.argmax(1)  # linearly separable, on features of very different scales
    head = fit_probe_head(x, y, 3, [1e-4]).head
    logits = head(x[:, :, None, None])[:, :, 0, 0]
    assert (logits.argmax(1) == y).float().mean() > 0.95  # a separable problem is solved


def test_online_probe_logs_and_keeps_the_best_checkpoint(tmp_path):
    config = load_pretrain_config(
        None, [*TINY, f"run.root={tmp_path}", "run.name=p", "train.max_steps=4", "probe.every=2"]
    )
    result = run_pretrain(config)
    records = [
        json.loads(line) for line in (result.run_dir / "scalars.jsonl").read_text().splitlines()
    ]
    probes = [r for r in records if "probe/miou" in r]
    assert [r["step"] for r in probes] == [2, 4]
    for record in probes:
        assert 0 < record["probe/overall_accuracy"] <= 1 and record["probe/seconds"] > 0
        assert 0 < record["probe/share_of_run_time"] < 1
    best = torch.load(result.run_dir / "best_probe.pt", weights_only=True)
    assert best["format"] == "contrastseg.pretrain"
    assert best["probe"]["probe/miou"] == max(r["probe/miou"] for r in probes)
    log = (result.run_dir / "train.log").read_text()
    assert "probe at step 2:" in log and "on decoder features (16 channels, stride 4" in log
    assert "% of the run's time so far" in log


def test_probe_command_scores_a_run_and_an_exported_backbone(tmp_path, capsys):
    config = load_pretrain_config(
        None, [*TINY, f"run.root={tmp_path}", "run.name=p", "train.max_steps=1"]
    )
    run_pretrain(config)
    sets = [a for s in PROBE_DEMO for a in ("--set", s)]
    out = tmp_path / "probe.json"
    assert main(["probe", "--checkpoint", str(tmp_path / "p"), *sets, "--out", str(out)]) == 0
    assert "on decoder features" in capsys.readouterr().out
    assert json.loads(out.read_text())["features"] == "decoder"
    assert main(["export", str(tmp_path / "p"), "--out", str(tmp_path / "bb.pth")]) == 0
    assert main(["probe", "--checkpoint", str(tmp_path / "bb.pth"), *sets]) == 0
    assert "on backbone features (512 channels, stride 16" in capsys.readouterr().out
    # a backbone file cannot be probed on decoder features: they were never trained
    assert (
        main(["probe", "--checkpoint", str(tmp_path / "bb.pth"), "--features", "decoder", *sets])
        == 2
    )
    err = capsys.readouterr().err
    assert "cannot probe decoder features" in err
    assert err.rstrip().endswith("probe backbone (--features)")  # the option that chose them


def test_the_probe_leaves_the_training_run_unchanged(tmp_path):
    # the probe fits its head and reads its data without touching the run's random streams,
    # so a run with probes trains exactly as one without (and resumes bitwise alike)
    runs = {}
    for name, extra in (("plain", []), ("probed", ["probe.every=2"])):
        config = load_pretrain_config(
            None, [*TINY, f"run.root={tmp_path}", f"run.name={name}", "train.max_steps=6", *extra]
        )
        runs[name] = [r["loss/total"] for r in run_pretrain(config).history]
    assert runs["probed"] == runs["plain"]


def _class_folder(root, fills):
    """3-band images whose bands are the one-hot of their labels: one image per entry of
    ``fills``, a class id (the whole 48 x 48 image) or None (random 8 px blocks of 3 classes)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    for name, fill in fills.items():
        if fill is None:
            labels = rng.integers(0, 3, (6, 6)).repeat(8, 0).repeat(8, 1)
        else:
            labels = np.full((48, 48), fill)
        Image.fromarray(np.eye(3, dtype=np.uint8)[labels] * 255).save(
            root / "images" / f"{name}.png"
        )
        Image.fromarray(labels.astype(np.uint8)).save(root / "masks" / f"{name}.png")


def test_the_head_is_fitted_on_patches_of_every_training_image(tmp_path, monkeypatch):
    # train images a, b, c hold one class each (9 patches of 16 px apiece); 3 patches from
    # the first image alone would see class 0 only and never predict 1 or 2 on image d
    _class_folder(tmp_path, {"a": 0, "b": 1, "c": 2, "d": None})
    data = LabeledDataConfig(
        root=str(tmp_path), mask_format="index", classes=["x", "y", "z"], train=["a", "b", "c"],
        val=["d"], patch_size=16,
    )  # fmt: skip
    config = ProbeConfig(
        every=1, data=data, window=48, max_patches=3, max_cells=10**6, pixel_step=1,
        encoder_too=False,
    )  # fmt: skip
    net = DeepLabV3Plus(None, "resnet18", 3, aspp_channels=8, decoder_channels=8)
    monkeypatch.setattr(ProbedNetwork, "forward_features", lambda self, x: x)
    monkeypatch.setattr(DeepLabV3Plus, "feature_stride", lambda self, features: 1)
    datasets = probe_datasets(config)
    read = []
    original = LabeledDataset.__getitem__

    def recording(self, index):
        if self.split == "train":
            read.append(self.patch_ids[index])
        return original(self, index)

    monkeypatch.setattr(LabeledDataset, "__getitem__", recording)
    result = run_probe(net, "decoder", config, datasets, None, None, None, torch.device("cpu"))
    assert len(read) == 3 and {pid.split(":")[0] for pid in read} == {"a", "b", "c"}
    assert read[0] == datasets[0].patch_ids[0] and read[-1] == datasets[0].patch_ids[-1]
    assert result.cells == 3 * 16 * 16
    assert result.metrics["miou"] == pytest.approx(1.0)  # every class was seen
    # the encoder features, probed beside the decoder's, read the same patches once more
    first = list(read)
    read.clear()
    config.encoder_too = True
    beside = run_probe(net, "decoder", config, datasets, None, None, None, torch.device("cpu"))
    assert read == first * 2
    assert set(beside.others) == {"encoder"}
    assert beside.scalars()["probe/encoder/miou"] == pytest.approx(1.0)


def test_probe_patch_indices_are_evenly_spaced_and_distinct():
    assert probe_patch_indices(5, 16) == [0, 1, 2, 3, 4]
    assert probe_patch_indices(27, 3) == [0, 13, 26]
    for count, most in ((100, 16), (17, 16), (1000, 7)):
        chosen = probe_patch_indices(count, most)
        assert len(set(chosen)) == most and chosen == sorted(chosen)
        assert chosen[0] == 0 and chosen[-1] == count - 1


def _run_counting_steps(tmp_path, monkeypatch, steps, *extra):
    """run_pretrain with TINY and ``extra``, counting its training steps in ``steps["n"]``."""
    original = PretrainModel.forward

    def counting(self, *args, **kwargs):
        steps["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PretrainModel, "forward", counting)
    config = load_pretrain_config(
        None, [*TINY, f"run.root={tmp_path}", "run.name=bad", "train.max_steps=4", *extra]
    )
    try:
        return run_pretrain(config)
    finally:
        monkeypatch.setattr(PretrainModel, "forward", original)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            ["probe.data.preset=dubai", "probe.data.root={tmp}/missing"],
            r"probe\.data: dataset root '.*/missing' does not exist",
        ),
        (  # 3-band labeled images, 4-band pretraining data
            ["probe.data.preset=null", "probe.data.root={tmp}/labeled",
             "probe.data.mask_format=index", "probe.data.classes=[x, y, z]",
             "probe.data.val=[c]"],
            r"probe\.data \(root '.*/labeled'\) has 3 band\(s\) but the pretraining data has 4: "
            r"the probed network takes 4; select 4 bands with probe\.data\.bands",
        ),
        (
            ["probe.data.val=[train_*]"],
            r"probe\.data \(the built-in demo scenes\): image 'train_\d+' matches both "
            r"probe\.data\.val=\['train_\*'\] and probe\.data\.train=\['train_\*'\] \(the train "
            r"patterns of preset demo\).*leave out the val images",
        ),
        (
            ["probe.exclude=[6]"],
            r"probe\.exclude=\[6\]: \[6\] are not class ids of probe\.data \(the built-in demo "
            r"scenes\), whose 6 classes are 0\.\.5",
        ),
        (
            ["method.name=simclr", "probe.features=decoder"],
            r"probe\.features=decoder with method\.name=simclr: cannot probe decoder features: "
            r"its method \(simclr\) never trains decoder.*probe encoder or backbone "
            r"\(probe\.features\)",
        ),
    ],
)  # fmt: skip
def test_a_bad_probe_section_stops_the_run_before_its_first_step(
    tmp_path, monkeypatch, settings, message
):
    # a probe every 2 steps would first run after step 2: the check comes before step 1
    _one_hot_folder(tmp_path / "labeled")
    settings = [s.replace("{tmp}", str(tmp_path)) for s in settings]
    steps = {"n": 0}
    with pytest.raises(ConfigError, match=message):
        _run_counting_steps(tmp_path, monkeypatch, steps, "probe.every=2", *settings)
    assert steps["n"] == 0  # no training step
    assert not (tmp_path / "bad").exists()  # no run folder, no checkpoint
    # the same settings without the probe train
    assert _run_counting_steps(tmp_path, monkeypatch, steps, "probe.every=0", *settings).step == 4
    assert steps["n"] == 4


def test_nan_nodata_pixels_are_probed_as_the_band_mean(tmp_path):
    # float images with NaN nodata pixels score exactly as the same images holding the band
    # mean there, with those labels ignored: a real (random) network, whose convolutions
    # would spread a NaN over the whole feature map
    import tifffile

    rng = np.random.default_rng(0)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    for name in ("nan", "mean"):
        (tmp_path / name / "images").mkdir(parents=True)
        (tmp_path / name / "masks").mkdir(parents=True)
    for key in ("a", "b", "c"):
        labels = rng.integers(0, 3, (6, 6)).repeat(8, 0).repeat(8, 1).astype(np.uint8)
        image = (
            np.eye(3, dtype=np.float32)[labels] * 0.8 + rng.random((48, 48, 3), np.float32) * 0.2
        )
        hole = np.zeros((48, 48), bool)
        hole[10:20, 5:30] = True
        with_nan = image.copy()
        with_nan[hole] = np.nan
        with_mean = image.copy()
        with_mean[hole] = mean
        ignored = np.where(hole, 255, labels).astype(np.uint8)
        for name, array, mask in (("nan", with_nan, labels), ("mean", with_mean, ignored)):
            tifffile.imwrite(tmp_path / name / "images" / f"{key}.tif", array,
                             photometric="minisblack", planarconfig="contig")  # fmt: skip
            Image.fromarray(mask).save(tmp_path / name / "masks" / f"{key}.png")
    torch.manual_seed(0)
    net = DeepLabV3Plus(None, "resnet18", 3, aspp_channels=8, decoder_channels=8).eval()
    results = {}
    for name, nodata in (("nan", float("nan")), ("mean", None)):
        data = LabeledDataConfig(
            root=str(tmp_path / name), mask_format="index", classes=["x", "y", "z"],
            train=["a", "b"], val=["c"], patch_size=32, nodata=nodata,
        )  # fmt: skip
        config = ProbeConfig(every=1, data=data, window=32, stride=16, max_patches=8, max_iter=20)
        results[name] = run_probe(
            net, "decoder", config, probe_datasets(config), None, mean, std, torch.device("cpu")
        )
    assert results["nan"].cells == results["mean"].cells > 0
    assert results["nan"].metrics["num_pixels"] == results["mean"].metrics["num_pixels"]
    assert results["nan"].metrics["num_pixels"] == 48 * 48 - 10 * 25
    for key in ("miou", "overall_accuracy", "kappa"):
        assert results["nan"].metrics[key] == pytest.approx(results["mean"].metrics[key], abs=1e-6)
    assert 0 <= results["nan"].metrics["overall_accuracy"] <= 1


def test_a_resumed_run_never_replaces_a_better_best_probe(tmp_path):
    from contrastseg.train.checkpoint import list_checkpoints, save_atomic

    common = [*TINY, f"run.root={tmp_path}", "run.name=p", "probe.every=2", "run.keep_last=1"]
    run_dir = tmp_path / "p"

    def newest_checkpoint_forgets_the_probe():  # as if written before the best probe
        (ckpt,) = list_checkpoints(run_dir / "checkpoints")
        payload = torch.load(ckpt, weights_only=True)
        payload["probe_best"] = -1.0
        save_atomic(payload, ckpt)

    def probes():
        lines = (run_dir / "scalars.jsonl").read_text().splitlines()
        return {r["step"]: r["probe/miou"] for r in map(json.loads, lines) if "probe/miou" in r}

    run_pretrain(load_pretrain_config(None, [*common, "train.max_steps=2"]))
    # what a kill leaves when a probe after the newest checkpoint scored best
    best = torch.load(run_dir / "best_probe.pt", weights_only=True)
    best["probe"]["probe/miou"] = 0.999
    save_atomic(best, run_dir / "best_probe.pt")
    newest_checkpoint_forgets_the_probe()
    run_pretrain(load_pretrain_config(None, [*common, "train.max_steps=4", "run.resume=auto"]))
    assert set(probes()) == {2, 4} and probes()[4] < 0.999
    kept = torch.load(run_dir / "best_probe.pt", weights_only=True)
    assert kept["step"] == 2 and kept["probe"]["probe/miou"] == 0.999
    log = (run_dir / "train.log").read_text()
    assert "best_probe.pt holds probe mIoU 0.9990, better than the checkpoint's -1.0000" in log
    # an unreadable best_probe.pt is no record: the next probe replaces it
    (run_dir / "best_probe.pt").write_bytes(b"not a checkpoint")
    newest_checkpoint_forgets_the_probe()
    run_pretrain(load_pretrain_config(None, [*common, "train.max_steps=6", "run.resume=auto"]))
    replaced = torch.load(run_dir / "best_probe.pt", weights_only=True)
    assert replaced["step"] == 6 and replaced["probe"]["probe/miou"] == probes()[6]
