"""End-to-end tests of fine-tuning, evaluation and prediction on tiny demo data (CPU, seconds)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_runs import SMALL_MODEL, TINY_FINETUNE, pretrain_tiny

from contrastseg.config import load_pretrain_config
from contrastseg.data import write_demo_dataset
from contrastseg.train.checkpoint import list_checkpoints, save_atomic
from contrastseg.train.evaluate import run_evaluate, run_predict
from contrastseg.train.finetune import augment_batch, run_finetune
from contrastseg.train.finetune_config import load_finetune_config
from contrastseg.train.pretrain import run_pretrain

DUBAI = Path(__file__).resolve().parents[3] / "shared" / "data" / "dubai-aerial"
TINY = TINY_FINETUNE


@pytest.fixture(scope="module")
def pretrained(module_tmp) -> Path:
    return pretrain_tiny(module_tmp)


def finetune_config(tmp_path, *extra):
    return load_finetune_config(None, [*TINY, f"run.root={tmp_path}", "run.name=ft", *extra])


def test_resumed_run_matches_an_uninterrupted_one(tmp_path):
    same = ["optim.schedule=constant", "data.label_fraction=0.25"]
    whole = run_finetune(finetune_config(tmp_path, *same, "train.max_steps=4", "run.name=a"))
    run_finetune(finetune_config(tmp_path, *same, "train.max_steps=2", "run.name=b"))
    resumed = run_finetune(
        finetune_config(tmp_path, *same, "train.max_steps=4", "run.name=b", "run.resume=auto")
    )
    assert resumed.step == whole.step == 4
    a = torch.load(list_checkpoints(whole.run_dir / "checkpoints")[-1], weights_only=True)
    b = torch.load(list_checkpoints(resumed.run_dir / "checkpoints")[-1], weights_only=True)
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=0, msg=key)


def test_resume_keeps_a_best_pt_written_after_its_checkpoint(tmp_path):
    run_finetune(finetune_config(tmp_path, "train.max_steps=2", "run.name=b"))
    best_path = tmp_path / "b" / "best.pt"
    crafted = torch.load(best_path, weights_only=True)
    # as if the interrupted run had validated a better model at epoch 2, after its last
    # step checkpoint (epoch 1), and written it to best.pt before dying
    crafted.update(epoch=2, best={"epoch": 2, "miou": 0.99, "metrics": {}})
    key = next(k for k in crafted["model"] if k.startswith("classifier") and "weight" in k)
    crafted["model"][key] = crafted["model"][key] + 1.0
    save_atomic(crafted, best_path)  # with its checksum, as the engine writes it
    resumed = run_finetune(
        finetune_config(tmp_path, "train.max_steps=4", "run.name=b", "run.resume=auto")
    )
    # the repeated epoch 2 scores below 0.99: best.pt and the reported selection still agree
    assert resumed.best_epoch == 2
    assert torch.equal(
        torch.load(best_path, weights_only=True)["model"][key], crafted["model"][key]
    )


def test_resume_from_an_older_checkpoint_is_refused(tmp_path):
    run_finetune(
        finetune_config(tmp_path, "train.max_steps=4", "run.name=b", "run.checkpoint_every=2")
    )
    older = tmp_path / "b" / "checkpoints" / "step_00000002.pt"
    with pytest.raises(ValueError, match=r"newer than step_00000002\.pt \(step_00000004\.pt\)"):
        run_finetune(
            finetune_config(tmp_path, "train.max_steps=6", "run.name=b", f"run.resume={older}")
        )


def numpy_metrics(truth: np.ndarray, pred: np.ndarray, k: int, ignore: int) -> dict:
    """OA, mIoU (classes present in target or prediction) and Cohen's kappa, from scratch."""
    keep = truth != ignore
    m = np.zeros((k, k))
    np.add.at(m, (truth[keep], pred[keep]), 1)
    n = m.sum()
    tp, rows, cols = np.diag(m), m.sum(1), m.sum(0)
    present = (rows + cols) > 0
    iou = tp[present] / (rows + cols - tp)[present]
    oa = tp.sum() / n
    pe = (rows * cols).sum() / n**2
    return {"overall_accuracy": oa, "miou": iou.mean(), "kappa": (oa - pe) / (1 - pe)}


def test_finetune_evaluate_predict_agree_with_a_numpy_oracle(tmp_path, pretrained):
    data = write_demo_dataset(tmp_path / "demo", n_scenes=4, size=64, bands=4)
    config = finetune_config(
        tmp_path, f"data.root={data}", f"pretrained.path={pretrained}",
        "pretrained_lr_scale=0.1", "loss=0.5*dice+ce",
    )  # fmt: skip
    result = run_finetune(config)
    test_json = json.loads((result.run_dir / "test" / "metrics.json").read_text())
    assert test_json["miou"] == result.test_metrics["miou"]
    for name in ("confusion_matrix.png", "metrics.txt", "overlays/test_003.png"):
        assert (result.run_dir / "test" / name).is_file()
    # the pretrained parts train at 0.1 x lr, the fresh decoder and classifier at lr
    (last,) = list_checkpoints(result.run_dir / "checkpoints")
    lrs = {
        g["initial_lr"] for g in torch.load(last, weights_only=True)["optimizer"]["param_groups"]
    }
    assert sorted(lrs) == pytest.approx([0.001, 0.01])

    metrics = run_evaluate(result.best_checkpoint, tmp_path / "eval")
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["miou"] == metrics["miou"] == result.test_metrics["miou"]

    # predict (streamed, from files) + an independent numpy confusion matrix
    image = data / "images" / "test_003.tif"
    (labels_path,) = run_predict(result.best_checkpoint, [image], tmp_path / "pred", fmt="png")
    prediction = np.asarray(Image.open(labels_path)).astype(np.int64)
    truth = np.asarray(Image.open(data / "masks" / "test_003.png")).astype(np.int64)
    oracle = numpy_metrics(truth, prediction, len(written["class_names"]), written["ignore_index"])
    for key, value in oracle.items():
        assert written[key] == pytest.approx(value, abs=1e-9), key
    assert np.asarray(written["confusion_matrix"]).sum() == (truth != 255).sum()
    assert (tmp_path / "pred" / "test_003_preview.png").is_file()


def test_evaluate_refuses_a_pretraining_checkpoint(pretrained, tmp_path):
    with pytest.raises(ValueError, match="Fine-tune it first"):
        run_evaluate(pretrained, tmp_path)


def test_augmentation_moves_image_and_mask_together():
    generator = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 5, (8, 16, 16))
    images = torch.stack([masks.float(), -masks.float()], 1)
    out_images, out_masks = augment_batch(images, masks, generator)
    torch.testing.assert_close(out_images[:, 0], out_masks.float())
    torch.testing.assert_close(out_images[:, 1], -out_masks.float())
    assert not torch.equal(out_masks, masks)  # something was flipped or rotated


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        finetune_config(tmp_path, "mode=probe")
    with pytest.raises(ValueError, match="unknown segmentation loss"):
        finetune_config(tmp_path, "loss=dice+cee")
    with pytest.raises(ValueError, match="not in loss"):
        finetune_config(tmp_path, "loss=ce", "loss_args=['focal.gamma=2']")
    with pytest.raises(ValueError, match="pretrained_lr_scale"):
        finetune_config(tmp_path, "pretrained_lr_scale=2")
    with pytest.raises(ValueError, match="validation split"):
        run_finetune(finetune_config(tmp_path, "data.val=['nothing*']"))


@pytest.mark.skipif(not DUBAI.is_dir(), reason="Dubai aerial data not present")
def test_tiny_finetune_on_dubai(tmp_path):
    config = load_finetune_config(
        "finetune_dubai.yaml",
        [
            f"data.root={DUBAI}", f"run.root={tmp_path}", "run.progress=false",
            "data.train=['Tile 2/image_part_001']", "data.val=['Tile 2/image_part_002']",
            "data.test=['Tile 2/image_part_003']", "data.patch_size=64",
            "data.label_fraction=0.05", "train.max_steps=2", "train.batch_size=2",
            "train.num_workers=0", "eval.window=256", "eval.stride=256", "eval.overlays=1",
            *SMALL_MODEL,
        ],
    )  # fmt: skip
    result = run_finetune(config)
    metrics = json.loads((result.run_dir / "test" / "metrics.json").read_text())
    assert metrics["class_names"] == ["building", "land", "road", "vegetation", "water"]
    assert metrics["num_pixels"] > 0.9 * 544 * 509  # ignored colours are rare in this set
    assert 0.0 <= metrics["overall_accuracy"] <= 1.0


def test_batched_augmentation_equals_per_sample_flips_and_rotations():
    """The batched dihedral augmentation against a per-sample loop over the same draws."""
    from contrastseg.train.finetune import augment_batch

    images = torch.arange(8 * 2 * 5 * 5, dtype=torch.float32).reshape(8, 2, 5, 5)
    masks = images[:, 0].long()
    out_images, out_masks = augment_batch(images, masks, torch.Generator().manual_seed(3))
    draws = torch.randint(0, 4, (8, 3), generator=torch.Generator().manual_seed(3))
    for i, (h, v, k) in enumerate(draws.tolist()):
        expected = images[i]
        if h % 2:
            expected = expected.flip(-1)
        if v % 2:
            expected = expected.flip(-2)
        expected = torch.rot90(expected, k, (-2, -1))
        assert torch.equal(out_images[i], expected)
        assert torch.equal(out_masks[i], expected[0].long())


def test_validation_every_n_steps_across_epoch_ends(tmp_path, pretrained):
    # 2 steps per epoch; eval.every_steps=3 validates at steps 3 and 6, and after the last (7)
    config = finetune_config(tmp_path, "train.max_steps=7", "eval.every_steps=3")
    result = run_finetune(config)
    validated = [r["step"] for r in result.history if "val/miou" in r]
    assert validated == [3, 6, 7]
    assert result.step == 7
    # the frozen backbone of a decoder-mode run stays in eval mode after a mid-epoch
    # validation: its BatchNorm statistics are still the pretrained ones at the end
    config = finetune_config(
        tmp_path, "train.max_steps=4", "eval.every_steps=1", "mode=decoder", "run.name=d",
        f"pretrained.path={pretrained}",
    )  # fmt: skip
    result = run_finetune(config)
    assert [r["step"] for r in result.history if "val/miou" in r] == [1, 2, 3, 4]
    (last,) = list_checkpoints(result.run_dir / "checkpoints")
    trained = torch.load(last, weights_only=True)["model"]
    source = torch.load(pretrained, weights_only=True)["model"]
    for key in (k for k in source if k.startswith("backbone.") and "running" in k):
        torch.testing.assert_close(trained[key], source[key], rtol=0, atol=0, msg=key)


def test_a_checkpoint_carries_its_normalisation_when_the_stats_file_is_gone(tmp_path):
    import yaml

    from contrastseg.utils.configtools import ConfigError

    stats = tmp_path / "stats.yaml"
    mean, std = [0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]
    stats.write_text(yaml.safe_dump({"mean": mean, "std": std, "count": 1, "scale": 1.0}))
    config = load_pretrain_config(
        None,
        [
            f"run.root={tmp_path}", "run.name=pre", "run.progress=false", "run.image_every=0",
            "train.max_steps=1", "train.batch_size=4", "train.num_workers=0",
            "data.demo.n_scenes=4", "data.demo.size=64", "data.patch_size=48",
            "views.size=32", "method.region_size=8", f"normalize.stats_file={stats}", *SMALL_MODEL,
        ],
    )  # fmt: skip
    checkpoint = run_pretrain(config).checkpoint
    payload = torch.load(checkpoint, weights_only=True)
    assert payload["normalize"] == {"mean": mean, "std": std}
    stats.unlink()  # the fine-tune runs elsewhere: the file is gone, the values are not
    result = run_finetune(finetune_config(tmp_path, f"pretrained.path={checkpoint}"))
    (last,) = list_checkpoints(result.run_dir / "checkpoints")
    assert torch.load(last, weights_only=True)["normalize"] == {"mean": mean, "std": std}
    # a 0.1.0 checkpoint stored only the config: its missing stats file is named, not ignored
    del payload["normalize"]
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    with pytest.raises(ConfigError, match=r"stats\.yaml'.*does not exist here.*normalize\.mean"):
        run_finetune(finetune_config(tmp_path, f"pretrained.path={old}", "run.name=old"))
    # the config's own normalisation wins over the checkpoint's
    result = run_finetune(
        finetune_config(
            tmp_path, f"pretrained.path={old}", "run.name=own", "normalize.mean=[0, 0, 0, 0]"
        )
    )
    (last,) = list_checkpoints(result.run_dir / "checkpoints")
    assert torch.load(last, weights_only=True)["normalize"] == {"mean": [0, 0, 0, 0], "std": None}
