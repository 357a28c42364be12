"""The bundled configs ship inside the package and equal the repository's top-level copies."""

from importlib import resources
from pathlib import Path

import pytest

from contrastseg.config import (
    CONFIG_DIR,
    bundled_configs,
    load_pretrain_config,
    resolve_config_path,
)
from contrastseg.train.finetune_config import load_finetune_config

ROOT = Path(__file__).resolve().parents[1]


def test_packaged_configs_equal_the_top_level_copies_byte_for_byte():
    top = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
    assert top and bundled_configs() == top
    for name in top:
        packaged = resources.files("contrastseg").joinpath("configs", name).read_bytes()
        assert packaged == (ROOT / "configs" / name).read_bytes(), (
            f"contrastseg/configs/{name} differs from configs/{name}: copy one onto the other"
        )


def test_bundled_names_resolve_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    for name in bundled_configs():
        stem = name.removesuffix(".yaml")
        for spelling in (name, stem, f"configs/{name}"):
            assert resolve_config_path(spelling) == CONFIG_DIR / name
    assert load_pretrain_config().run.name == "quickstart"
    assert load_finetune_config().data.preset == "demo"
    with pytest.raises(FileNotFoundError, match=r"config file not found: nope\.yaml .*quickstart"):
        resolve_config_path("nope.yaml")


def test_package_data_is_declared():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'contrastseg = ["configs/*.yaml"]' in text
