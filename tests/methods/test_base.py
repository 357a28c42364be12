"""The method registry: one config class per method, names found or refused, heads registered once."""

import dataclasses
import json
import warnings
from pathlib import Path

import pytest
import torch

from contrastseg.config import load_pretrain_config, model_config
from contrastseg.methods import (
    GLCNetConfig,
    SimCLRConfig,
    available_methods,
    get_method,
    method_config,
)
from contrastseg.train.model import PretrainModel, upgrade_heads
from contrastseg.utils.configtools import ConfigError, to_dict

LAYOUT_0_1_0 = Path(__file__).resolve().parents[1] / "train" / "heads_layout_0_1_0.json"
MODEL = model_config(arch="resnet18", aspp_channels=32, decoder_channels=24, low_level_channels=8)


def test_every_method_is_registered_with_its_own_config():
    assert available_methods() == ["dense", "glcnet", "global_style", "local", "simclr"]
    for name in available_methods():
        method = get_method(name)
        assert method.name == name and method.config_class().name == name


def test_method_name_selects_the_config_class_and_its_keys():
    config = load_pretrain_config(None, ["method.name=simclr", "method.global_head=[128, 32]"])
    assert isinstance(config.method, SimCLRConfig)
    assert set(to_dict(config.method)) == {
        "name", "temperature", "decoupled", "gather", "queue_size", "global_head",
        "head_batch_norm",
    }  # fmt: skip
    assert config.method.global_head == [128, 32]
    assert isinstance(load_pretrain_config(None, []).method, GLCNetConfig)


def test_unknown_method_or_key_is_refused_with_a_hint():
    with pytest.raises(ConfigError, match=r"unknown method 'glcnt' \(did you mean 'glcnet'\?\)"):
        load_pretrain_config(None, ["method.name=glcnt"])
    with pytest.raises(ConfigError, match=r"unknown key 'method\.regoin_size'"):
        load_pretrain_config(None, ["method.regoin_size=8"])
    # a key of the method itself that it does not have: refused
    with pytest.raises(ConfigError, match=r"method\.lam must lie in \[0, 1\)"):
        load_pretrain_config(None, ["method.name=dense", "method.lam=1.0"])


def test_keys_of_another_method_are_dropped_with_a_warning():
    # quickstart.yaml sets region settings: switching to simclr keeps working
    with pytest.warns(UserWarning, match=r"method\.num_regions, method\.region_size.*'simclr'"):
        config = load_pretrain_config(None, ["method.name=simclr"])
    assert not hasattr(config.method, "region_size")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_pretrain_config(None, ["method.name=local"])  # its own keys: no warning


@pytest.mark.parametrize("name", ["simclr", "global_style", "local", "glcnet", "dense"])
def test_every_tensor_is_registered_once(name):
    model = PretrainModel(MODEL, method_config(name), 3)
    state = model.state_dict(keep_vars=True)
    pointers = [v.data_ptr() for v in state.values() if v.numel()]
    assert len(pointers) == len(set(pointers))
    assert set(model.heads_state_dict()) == {
        k[len("method.") :] for k in state if k.startswith("method.")
    }


@pytest.mark.parametrize("name", ["simclr", "global_style", "local", "glcnet"])
def test_heads_of_0_1_0_checkpoints_load(name):
    # the key names and shapes as contrastseg 0.1.0 wrote them (recorded from that code)
    old_layout = json.loads(LAYOUT_0_1_0.read_text())["heads"][name]
    generator = torch.Generator().manual_seed(0)
    old = {}
    for key, shape in old_layout.items():
        twin = key.removeprefix("glcnet.")  # 0.1.0 held the GLCNet heads twice, same tensors
        old[key] = old[twin].clone() if twin in old else torch.randn(shape, generator=generator)
    old = {k: (v.long() if k.endswith("num_batches_tracked") else v) for k, v in old.items()}
    model = PretrainModel(MODEL, method_config(name), 3)
    model.load_heads(old)
    new = model.heads_state_dict()
    assert set(upgrade_heads(old)) == set(new)
    # same order too: a checkpoint's optimizer state follows the order of the parameters
    assert list(upgrade_heads(old)) == list(new)
    for key, value in upgrade_heads(old).items():
        torch.testing.assert_close(new[key], value, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("name", "queues"),
    [
        ("simclr", {"global_queue": 64}),
        ("global_style", {"global_loss.queue": 64}),
        ("local", {"local_loss.queue": 32}),
        ("glcnet", {"global_loss.queue": 64, "local_loss.queue": 32}),
        ("dense", {"global_loss.queue": 64, "dense_loss.queue": 32}),
    ],
)
def test_queue_size_gives_every_branch_a_queue_of_its_embedding_width(name, queues):
    heads = {"global_head": [128, 64], "local_head": [48, 32], "dense_head": [48, 32]}
    keys = {f.name for f in dataclasses.fields(get_method(name).config_class)}
    own = {k: v for k, v in heads.items() if k in keys}
    plain = PretrainModel(MODEL, method_config(name, **own), 3).heads_state_dict()
    assert not any("queue" in key for key in plain)  # queue_size 0: the heads of today
    model = PretrainModel(MODEL, method_config(name, queue_size=100, **own), 3)
    state = model.heads_state_dict()
    extra = {key for key in state if key not in plain}
    assert extra == {f"{q}.{b}" for q in queues for b in ("embeddings", "ptr", "count")}
    for prefix, dim in queues.items():
        assert state[f"{prefix}.embeddings"].shape == (100, dim)
        assert state[f"{prefix}.embeddings"].dtype == torch.float32
    # the parameters, and so the optimizer state's order, are those of today
    today = PretrainModel(MODEL, method_config(name, **own), 3).method
    assert [k for k, _ in model.method.named_parameters()] == [
        k for k, _ in today.named_parameters()
    ]


def test_queue_size_must_not_be_negative():
    with pytest.raises(ConfigError, match=r"method\.queue_size must be >= 0"):
        load_pretrain_config(None, ["method.queue_size=-1"])
    assert load_pretrain_config(None, ["method.queue_size=0"]).method.queue_size == 0
