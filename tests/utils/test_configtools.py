"""Config values (module: contrastseg/utils/configtools.py): numbers, non-finite, duplicates."""

from __future__ import annotations

import math

import pytest

from contrastseg.config import load_pretrain_config
from contrastseg.utils.configtools import ConfigError


@pytest.mark.parametrize("text", ["1e-4", "1E-4", "+1e-4", "0.0001", ".0001", "1_0e-5", "1e-4 "])
def test_every_number_python_writes_is_a_float(text):
    assert load_pretrain_config(None, [f"optim.lr={text}"]).optim.lr == float(text)  # oracle


def test_yaml_files_with_exponent_numbers_load(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 3e-4\n  weight_decay: 1e-6\n")
    config = load_pretrain_config(path)
    assert (config.optim.lr, config.optim.weight_decay) == (3e-4, 1e-6)


@pytest.mark.parametrize("text", [".inf", "-.inf", ".nan", "1e999"])
def test_non_finite_floats_are_refused_naming_the_key(text):
    with pytest.raises(ConfigError, match=r"'optim\.lr'.*expected a finite number"):
        load_pretrain_config(None, [f"optim.lr={text}"])


def test_nan_is_a_valid_nodata_value():
    assert math.isnan(load_pretrain_config(None, ["data.nodata=.nan"]).data.nodata)
    assert math.isnan(load_pretrain_config(None, ["data.nodata=nan"]).data.nodata)
    with pytest.raises(ConfigError, match=r"'data\.nodata'.*finite"):
        load_pretrain_config(None, ["data.nodata=.inf"])


def test_duplicate_yaml_keys_are_refused(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("optim:\n  lr: 0.1\n  momentum: 0.9\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml: key 'lr' is given twice \(lines 2 and 4\)"):
        load_pretrain_config(path)
    with pytest.raises(ConfigError, match=r"key 'lr' is given twice"):
        load_pretrain_config(None, ["optim={lr: 0.1, lr: 0.2}"])
