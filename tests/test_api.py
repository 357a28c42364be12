"""The Python API (``contrastseg.pretrain`` ...) is the command line's work, called from Python."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import contrastseg
from contrastseg.api import override_strings, pretrain_config
from contrastseg.config import load_pretrain_config

sys.path.insert(0, str(Path(__file__).resolve().parent / "train"))
from tiny_runs import TINY_FINETUNE, TINY_PRETRAIN


def test_keyword_sections_are_dotted_set_strings():
    assert override_strings(["optim.lr=1e-4"], train={"steps": 2, "amp": "off"}, mode="lp-ft") == [
        "optim.lr=1e-4",
        "train.steps=2",
        'train.amp="off"',
        'mode="lp-ft"',
    ]
    nested = override_strings(views={"t2": {"extra": [{"name": "RandomErasing", "p": 0.3}]}})
    assert nested == ['views.t2.extra=[{"name": "RandomErasing", "p": 0.3}]']
    with pytest.raises(ValueError, match=r"section\.key=value"):
        override_strings(["train.steps"])


def test_the_package_exposes_the_api_lazily():
    import subprocess
    import sys

    code = ("import sys, contrastseg; assert 'torch' not in sys.modules; "
            "assert contrastseg.api.pretrain is contrastseg.pretrain; print('ok')")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_a_config_from_keywords_is_the_one_the_command_line_loads():
    by_cli = load_pretrain_config(None, ["train.batch_size=6", "method.lam=0.25", "run.name=x"])
    by_api = pretrain_config(train={"batch_size": 6}, method={"lam": 0.25}, run={"name": "x"})
    assert by_api == by_cli
    # a config object plus overrides goes through the loader, with its validation
    assert pretrain_config(by_api, train={"batch_size": 8}).train.batch_size == 8
    assert pretrain_config(by_api) is by_api
    with pytest.raises(ValueError, match=r"method\.lam"):
        pretrain_config(by_api, method={"lam": 3})
    with pytest.raises(TypeError, match="PretrainConfig"):
        pretrain_config(42)


def _scene(folder: Path) -> Path:
    """A 4-band demo-like image of 40 x 48 px (not a multiple of the window)."""
    image = np.random.default_rng(0).integers(0, 255, (4, 40, 48), dtype=np.uint8)
    tifffile.imwrite(folder / "scene.tif", image, photometric="minisblack", planarconfig="separate")
    return folder / "scene.tif"


@pytest.mark.slow
def test_pretrain_finetune_evaluate_predict_export_from_python(tmp_path):
    torch.manual_seed(0)
    run = contrastseg.pretrain(overrides=[f"run.root={tmp_path}", *TINY_PRETRAIN])
    assert run.checkpoint is not None and run.step == 2
    tuned = contrastseg.finetune(
        pretrained=run.run_dir,
        overrides=[f"run.root={tmp_path}", "run.name=ft", *TINY_FINETUNE],
    )
    assert tuned.best_checkpoint == tmp_path / "ft" / "best.pt"
    # evaluate scores the same best.pt on the same test split: the fine-tune's own test scores
    scores = contrastseg.evaluate(tuned.run_dir, out=tmp_path / "eval")
    assert scores.metrics["miou"] == pytest.approx(tuned.test_metrics["miou"], abs=1e-6)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["miou"] == pytest.approx(
        scores.metrics["miou"]
    )
    with pytest.raises(ValueError, match="already holds an evaluation report"):
        contrastseg.evaluate(tuned.run_dir, out=tmp_path / "eval")
    written = contrastseg.predict(tuned.run_dir, [_scene(tmp_path)], tmp_path / "pred",
                                  format="png", preview=False)  # fmt: skip
    labels = np.asarray(Image.open(written[0]))
    assert labels.shape == (40, 48) and labels.max() < 6
    exported = contrastseg.export(run.run_dir, tmp_path / "backbone.pth")
    weights = torch.load(exported, weights_only=True)
    assert "conv1.weight" in weights and "layer4.1.bn2.running_var" in weights
    with pytest.raises(ValueError):
        contrastseg.export(run.run_dir, exported)  # an existing file without overwrite
