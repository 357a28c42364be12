"""Shared inputs of the audit suite: one tiny fine-tuned checkpoint (CPU, a few seconds)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "train"))
from tiny_runs import TINY_FINETUNE


@pytest.fixture(scope="session")
def finetuned_best(tmp_path_factory) -> Path:
    """``best.pt`` of a one-step fine-tuning run on 4 demo scenes of 64 px."""
    from contrastseg.data import write_demo_dataset
    from contrastseg.train.finetune import run_finetune
    from contrastseg.train.finetune_config import load_finetune_config

    root = tmp_path_factory.mktemp("audit-ft")
    data = write_demo_dataset(root / "demo", n_scenes=4, size=64, bands=4)
    overrides = [*TINY_FINETUNE, "train.max_steps=1", "eval.overlays=0"]
    config = load_finetune_config(
        None, [*overrides, f"data.root={data}", f"run.root={root}", "run.name=ft"]
    )
    return run_finetune(config).run_dir / "best.pt"
