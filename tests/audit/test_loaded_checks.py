"""Audit: everything loaded is checked (finite weights, data that holds something to learn)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contrastseg.cli import main
from contrastseg.data import LabeledDataset, write_demo_dataset
from contrastseg.models.pretrained import read_state_dict
from contrastseg.train.evaluate import evaluate_dataset, load_segmenter, run_predict
from contrastseg.train.finetune_config import load_finetune_config


def _with_nan(source: Path, out: Path) -> Path:
    payload = torch.load(source, weights_only=True)
    payload["model"]["classifier.weight"].view(-1)[0] = float("nan")
    torch.save(payload, out)
    return out


def test_nan_weights_are_refused_on_load_naming_file_and_tensor(finetuned_best, tmp_path, capsys):
    bad = _with_nan(finetuned_best, tmp_path / "nan.pt")
    named = r"nan\.pt: model\.classifier\.weight holds 1 non-finite value"
    with pytest.raises(ValueError, match=named):
        run_predict(bad, [], tmp_path / "pred")
    with pytest.raises(ValueError, match=named):
        read_state_dict(bad)  # --pretrained and probe read weights through it
    for command in (["evaluate", "--checkpoint"], ["probe", "--checkpoint"]):
        assert main([*command, str(bad)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "model.classifier.weight holds 1 non-finite" in err
    assert not (tmp_path / "pred").exists()


def test_a_pickle_refusal_does_not_advise_loading_code(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "x": Path("x")}, evil)
    with pytest.raises(ValueError, match=r"evil\.pt is not a readable .*pickled objects") as err:
        read_state_dict(evil)
    assert "weights_only" not in str(err.value) and "\n" not in str(err.value)


def _ignored_masks(root: Path, pattern: str) -> None:
    for mask in sorted((root / "masks").glob(pattern)):
        Image.fromarray(np.full((64, 64), 255, np.uint8)).save(mask)


def test_training_or_validating_on_masks_without_a_labeled_pixel_is_refused(tmp_path):
    root = write_demo_dataset(tmp_path / "demo", n_scenes=4, size=64, bands=4)
    config = load_finetune_config(None, [f"data.root={root}"]).data
    LabeledDataset(config, "train")  # labeled: fine
    _ignored_masks(root, "train_*.png")
    with pytest.raises(ValueError, match=r"split 'train' hold no labeled pixel .*nothing to train"):
        LabeledDataset(config, "train")
    _ignored_masks(root, "val_*.png")
    with pytest.raises(ValueError, match=r"split 'val' hold no labeled pixel .*nothing to score"):
        LabeledDataset(config, "val")


def test_a_validation_that_scores_no_pixel_is_an_error_not_a_score(finetuned_best, tmp_path):
    root = write_demo_dataset(tmp_path / "demo", n_scenes=4, size=64, bands=4)
    segmenter = load_segmenter(finetuned_best, "cpu", [f"data.root={root}"])
    val = LabeledDataset(segmenter.config.data, "val", whole_images=True)
    assert int(evaluate_dataset(segmenter, val, segmenter.config.eval).matrix.sum()) > 0
    _ignored_masks(root, "val_*.png")  # after indexing: found when scored
    with pytest.raises(ValueError, match=r"split 'val' scored 0 pixels"):
        evaluate_dataset(segmenter, val, segmenter.config.eval)
