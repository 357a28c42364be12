"""``contrastseg export --format onnx``: onnxruntime gives PyTorch's logits at any input size."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

import contrastseg  # noqa: E402
from contrastseg.cli import main  # noqa: E402
from contrastseg.deploy import export_onnx  # noqa: E402
from contrastseg.train.evaluate import load_segmenter  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent / "train"))
from tiny_runs import TINY_FINETUNE, pretrain_tiny  # noqa: E402

MEAN, STD = [0.3, 0.4, 0.5, 0.2], [0.2, 0.25, 0.1, 0.3]


@pytest.mark.slow
def test_onnx_model_gives_the_checkpoints_logits_at_any_size_and_records_its_input(tmp_path):
    tuned = contrastseg.finetune(
        overrides=[
            f"run.root={tmp_path}",
            "run.name=ft",
            *TINY_FINETUNE,
            f"normalize.mean={MEAN}",
            f"normalize.std={STD}",
        ]
    )
    path = tmp_path / "model.onnx"  # through the command line: cli -> api.export -> deploy
    assert main(["export", str(tuned.run_dir), "--out", str(path), "--format", "onnx"]) == 0
    session = ort.InferenceSession(str(path))
    segmenter = load_segmenter(tuned.best_checkpoint, "cpu")
    for shape in [(1, 4, 64, 64), (2, 4, 45, 77)]:  # another batch, and not a multiple of 32
        x = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():  # the oracle: the network on explicitly normalised input
            expected = segmenter.model(
                (x - torch.tensor(MEAN).view(1, -1, 1, 1)) / torch.tensor(STD).view(1, -1, 1, 1)
            ).numpy()
        (logits,) = session.run(None, {"input": x.numpy()})
        assert logits.shape == (shape[0], 6, *shape[2:])
        np.testing.assert_allclose(logits, expected, atol=2e-4, rtol=1e-4)
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["contrastseg.mean"]) == pytest.approx(MEAN)
    assert json.loads(meta["contrastseg.std"]) == pytest.approx(STD)
    assert json.loads(meta["contrastseg.classes"])[1] == "building"
    assert "divided by contrastseg.scale" in meta["contrastseg.input"]
    # an existing file is kept unless overwrite; the checkpoint itself never
    before = path.read_bytes()
    with pytest.raises(ValueError, match="overwrite"):
        export_onnx(tuned.best_checkpoint, path)
    assert path.read_bytes() == before
    with pytest.raises(ValueError):
        export_onnx(tuned.best_checkpoint, tuned.best_checkpoint, overwrite=True)
    assert not list(tmp_path.glob(".*.partial"))


def test_a_pretraining_checkpoint_is_refused_with_a_message(tmp_path):
    checkpoint = pretrain_tiny(tmp_path)
    with pytest.raises((ValueError, FileNotFoundError), match=r"pretrain|fine-tun"):
        export_onnx(checkpoint, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()
