"""Every bundled pretraining config has a fine-tuning config that loads its checkpoints.

Cheap: each pair builds the pretraining model (ResNet-18, narrow, to keep the file small:
the fine-tuning side takes the architecture from the checkpoint, so what is checked is the
band count, the loaded parts and the key names), saves a checkpoint in the pretraining
format, and runs the fine-tuning model build and load path. No data, no training.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from contrastseg import __version__
from contrastseg.config import load_pretrain_config
from contrastseg.train.checkpoint import CHECKPOINT_FORMAT, save_atomic
from contrastseg.train.finetune_config import load_finetune_config
from contrastseg.train.finetune_model import build_start_model
from contrastseg.train.model import PretrainModel
from contrastseg.utils.configtools import to_dict

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
#: pretraining config -> the fine-tuning config its header names
PAIRS = {
    "quickstart.yaml": "finetune_demo.yaml",
    "glcnet_dubai.yaml": "finetune_dubai.yaml",
    "glcnet_potsdam.yaml": "finetune_potsdam.yaml",
    "simclr_potsdam.yaml": "finetune_potsdam.yaml",
    "glcnet_official.yaml": "finetune_official.yaml",
}
#: bands of a dataset when data.bands is unset: Dubai JPEGs are RGB
UNSET_BANDS = {"dubai": 3}
SMALL = ["model.arch=resnet18", "model.aspp_channels=16", "model.decoder_channels=16"]


def test_every_pretraining_config_has_a_pair() -> None:
    finetune = {p.name for p in CONFIGS.glob("finetune_*.yaml")}
    pretrain = {p.name for p in CONFIGS.glob("*.yaml")} - finetune
    assert set(PAIRS) == pretrain
    assert set(PAIRS.values()) == finetune


def _pretrain_bands(config) -> int:
    if config.data.bands is not None:
        return len(config.data.bands)
    if not config.data.roots:
        return config.data.demo.bands
    return UNSET_BANDS["dubai"]


def _finetune_bands(config) -> int:
    if config.data.bands is not None:
        return len(config.data.bands)
    if config.data.preset == "demo":
        return config.data.demo.bands
    return UNSET_BANDS[config.data.preset]


@pytest.mark.parametrize("pretrain_file", sorted(PAIRS))
def test_the_finetune_config_loads_the_pretraining_checkpoint(
    pretrain_file: str, tmp_path: Path
) -> None:
    pre = load_pretrain_config(CONFIGS / pretrain_file, SMALL)
    bands = _pretrain_bands(pre)
    model = PretrainModel(pre.model, pre.method, bands)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": __version__,
        "step": 1,
        "epoch": 0,
        "config": to_dict(pre),
        "in_channels": bands,
        "model": model.net.state_dict(),
        "heads": model.heads_state_dict(),
    }
    path = save_atomic(payload, tmp_path / "step_00000001.pt")
    fine = load_finetune_config(CONFIGS / PAIRS[pretrain_file], [f"pretrained.path={path}"])
    assert _finetune_bands(fine) == bands, (pretrain_file, PAIRS[pretrain_file])
    _, _, _, report, loaded = build_start_model(fine, 6, _finetune_bands(fine))
    assert report is not None and report.loaded and not report.missing
    assert loaded >= {"backbone", "aspp"}
