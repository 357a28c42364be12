"""Audit: nothing a user owns is overwritten (export onto its input or an existing file)."""

from __future__ import annotations

import hashlib

import torch

from contrastseg.cli import main
from contrastseg.train.checkpoint import checksum_path, save_atomic, verify_file


def _checkpoint(path):
    """A tiny pretraining-format checkpoint (a backbone conv and a decoder tensor)."""
    model = {"backbone.conv1.weight": torch.ones(2, 1, 1, 1), "decoder.w": torch.zeros(3)}
    return save_atomic({"format": "contrastseg.pretrain", "model": model, "step": 1}, path)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_export_refuses_its_own_input_even_with_overwrite(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "step_00000001.pt")
    before = ckpt.read_bytes()
    for extra in ([], ["--overwrite"]):
        assert main(["export", str(ckpt), "--out", str(ckpt), *extra]) == 2
        assert "is the input" in capsys.readouterr().err
    # a run folder stands for its newest checkpoint: the same file by another spelling
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "." / ckpt.name)]) == 2
    assert ckpt.read_bytes() == before
    verify_file(ckpt)  # its sidecar still vouches for the untouched checkpoint


def test_export_refuses_an_existing_file_unless_overwrite(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "step_00000001.pt")
    out = tmp_path / "mine.pth"
    out.write_bytes(b"the user's file")
    assert main(["export", str(ckpt), "--out", str(out)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"the user's file"
    assert main(["export", str(ckpt), "--out", str(out), "--overwrite"]) == 0
    assert list(torch.load(out, weights_only=True)) == ["conv1.weight"]
    # the checksum vouches for what was written
    assert checksum_path(out).read_text().split()[0] == _sha(out)
    assert main(["export", str(ckpt), "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_predict_refuses_existing_outputs_before_predicting_unless_overwrite(
    finetuned_best, tmp_path, capsys
):
    import numpy as np
    from PIL import Image

    image = tmp_path / "scene.png"
    Image.fromarray(np.zeros((40, 40, 4), np.uint8)).save(image)
    out = tmp_path / "pred"
    out.mkdir()
    (out / "scene_labels.png").write_bytes(b"the user's map")
    args = ["predict", "--checkpoint", str(finetuned_best), str(image), "--out", str(out)]
    assert main(args) == 2
    assert "already exist" in capsys.readouterr().err
    assert (out / "scene_labels.png").read_bytes() == b"the user's map"
    assert not (out / "scene_preview.png").exists()  # nothing was predicted
    assert main([*args, "--overwrite"]) == 0
    assert Image.open(out / "scene_labels.png").size == (40, 40)


def test_evaluate_probe_and_stats_refuse_an_existing_report_unless_overwrite(
    finetuned_best, tmp_path, capsys
):
    report = tmp_path / "ev"
    report.mkdir()
    (report / "metrics.json").write_text("{}")
    evaluate = ["evaluate", "--checkpoint", str(finetuned_best), "--out", str(report)]
    assert main(evaluate) == 2
    assert "already holds an evaluation report" in capsys.readouterr().err
    assert (report / "metrics.json").read_text() == "{}"
    mine = tmp_path / "mine.json"
    mine.write_text("the user's file")
    probe = ["probe", "--checkpoint", str(finetuned_best), "--out", str(mine)]
    assert main(probe) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    stats = ["stats", "--max-samples", "4", "--out", str(mine)]
    assert main(stats) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert mine.read_text() == "the user's file"
