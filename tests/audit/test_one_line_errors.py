"""Audit: every user mistake ends in one clear line (the traceback only under --debug)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

import contrastseg.data.stats as stats_module
from contrastseg.cli import MAX_MESSAGE, main
from contrastseg.data import LabeledDataset, write_demo_dataset
from contrastseg.train.finetune_config import load_finetune_config


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("contrastseg: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_no_command_is_a_clear_message_and_status_2(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: contrastseg") and "no command given: choose one of" in err


def test_an_os_error_is_one_line_naming_the_path_and_debug_shows_the_traceback(tmp_path, capsys):
    root = tmp_path / "a-file"
    root.write_text("not a folder")
    args = ["pretrain", "--set", f"run.root={root}", "--set", "train.max_steps=1"]
    assert main(args) == 1
    assert f"{root}/quickstart: Not a directory" in _one_error_line(capsys)
    assert main(["--debug", *args]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("contrastseg: error:")
    assert main([*args, "--debug"]) == 1  # after the command too
    assert "Traceback" in capsys.readouterr().err


def test_messages_are_capped_in_length(capsys):
    assert main(["config", "--set", f"run.name={'x/' * 5000}"]) == 2
    line = _one_error_line(capsys)
    assert len(line) < MAX_MESSAGE + 100 and "more characters" in line


def test_a_checkpoint_lacking_model_config_is_one_line(finetuned_best, tmp_path, capsys):
    payload = torch.load(finetuned_best, weights_only=True)
    del payload["model_config"]
    torch.save(payload, tmp_path / "best.pt")
    assert main(["evaluate", "--checkpoint", str(tmp_path / "best.pt")]) == 2
    assert "best.pt is a damaged or foreign fine-tuning checkpoint: it lacks model_config" in (
        _one_error_line(capsys)
    )


def test_stats_out_a_folder_is_refused_before_computing(tmp_path, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("computed before the --out check")

    monkeypatch.setattr(stats_module, "compute_band_stats", never)
    assert main(["stats", "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path} is a folder" in _one_error_line(capsys)


def test_stats_refuse_to_write_a_zero_std_naming_the_band(tmp_path, capsys):
    image = np.random.default_rng(0).integers(0, 255, (2, 32, 32), dtype=np.uint8)
    image[1] = 7  # a constant band
    tifffile.imwrite(
        tmp_path / "flat.tif", image, photometric="minisblack", planarconfig="separate"
    )
    out = tmp_path / "stats.yaml"
    assert main(["stats", str(tmp_path / "flat.tif"), "--out", str(out)]) == 2
    line = _one_error_line(capsys)
    assert "band(s) [1] have a std of 0" in line and "flat.tif" in line
    assert not out.exists()


def test_a_label_list_that_is_a_folder_is_one_error_and_leaves_no_tmp(tmp_path):
    root = write_demo_dataset(tmp_path / "demo", n_scenes=4, size=64, bands=4)
    folder = tmp_path / "ids"
    folder.mkdir()
    overrides = [f"data.root={root}", "data.label_fraction=0.5", f"data.label_list={folder}"]
    config = load_finetune_config(None, [*overrides, "data.patch_size=32"]).data
    with pytest.raises(ValueError, match=r"ids' is a folder; name the list file"):
        LabeledDataset(config, "train")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo", "ids"]


def test_a_label_list_with_fraction_one_is_a_warning(tmp_path):
    root = write_demo_dataset(tmp_path / "demo", n_scenes=4, size=64, bands=4)
    config = load_finetune_config(
        None, [f"data.root={root}", "data.label_fraction=1.0", f"data.label_list={tmp_path}/i"]
    ).data
    with pytest.warns(UserWarning, match=r"is not used: label_fraction is 1\.0"):
        LabeledDataset(config, "train")


def test_a_folder_is_called_a_folder_not_missing(tmp_path, capsys):
    from contrastseg.data.readers import image_size
    from contrastseg.train.checkpoint import read_torch_file

    with pytest.raises(ValueError, match="is a folder, not an image file"):
        image_size(tmp_path)
    with pytest.raises(ValueError, match="is a folder, not a file"):
        read_torch_file(tmp_path)
    assert main(["config", "--config", str(tmp_path)]) == 2
    assert "is a folder; name the YAML file" in _one_error_line(capsys)


def test_a_yaml_key_that_is_not_a_name_is_one_line(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("? [1, 2]\n: x\n")
    assert main(["config", "--config", str(config)]) == 2
    assert "c.yaml: line 1: a key must be a name, got a list" in _one_error_line(capsys)


def test_explicit_empty_classes_and_palette_are_not_replaced_by_the_preset(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  preset: demo\n  classes: []\n  palette: []\n")
    assert main(["finetune", "--config", str(config)]) == 2
    assert "classes: [] and palette: [] leave preset 'demo' without classes" in (
        _one_error_line(capsys)
    )
    # one of them emptied: the explicit value wins, the other comes from the preset
    data = load_finetune_config(None, ["data.preset=demo", "data.classes=[]"]).data
    assert data.classes == [] and len(data.palette) == 6


def test_a_yaml_anchor_bomb_gives_a_short_message(tmp_path, capsys):
    levels = ['&l0 ["xxxxxxxx", "xxxxxxxx", "xxxxxxxx", "xxxxxxxx", "xxxxxxxx", "xxxxxxxx"]']
    levels += [f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 7)]  # 6 x 9**6 strings
    config = tmp_path / "bomb.yaml"
    config.write_text(f"data:\n  roots:\n    - [{', '.join(levels)}]\n")
    assert main(["config", "--config", str(config)]) == 2
    line = _one_error_line(capsys)
    assert "'data.roots[0]'" in line and "expected str" in line
    assert len(line) < 1500 and "more characters" not in line
