"""Audit: everything loaded is checked (finite weights, data that holds something to learn)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from contrastseg.cli import main
from contrastseg.models.pretrained import read_state_dict
from contrastseg.train.evaluate import run_predict


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
