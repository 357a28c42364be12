import pytest
import yaml

from contrastseg.config import PretrainConfig, load_pretrain_config
from contrastseg.train.finetune_config import FinetuneConfig
from contrastseg.utils.configtools import ConfigError, field_docs, from_dict, to_dict


def _write(tmp_path, data, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_quickstart_loads_and_round_trips():
    config = load_pretrain_config()
    assert config.model.arch == "resnet18" and config.method.name == "glcnet"
    assert config.data.roots == []  # the built-in demo scenes
    again = from_dict(PretrainConfig, to_dict(config))
    assert again == config


def test_defaults_follow_the_paper_recipe():
    config = PretrainConfig()
    assert (config.model.arch, config.model.output_stride) == ("resnet50", 16)
    assert (config.method.temperature, config.method.lam) == (0.5, 0.5)
    assert (config.method.num_regions, config.method.region_size) == (4, 48)
    assert (config.optim.name, config.optim.lr, config.optim.betas) == ("adam", 1e-3, (0.9, 0.99))
    assert config.optim.weight_decay == 1e-5 and config.train.batch_size == 256
    assert config.views.size == 224


def test_overrides_are_typed_and_checked(tmp_path):
    path = _write(tmp_path, {"train": {"batch_size": 8}})
    config = load_pretrain_config(path, ["train.batch_size=32", "optim.betas=[0.8, 0.9]"])
    assert config.train.batch_size == 32 and config.optim.betas == (0.8, 0.9)
    with pytest.raises(ConfigError, match=r"unknown key 'train\.batchsize'.*accepts: epochs"):
        load_pretrain_config(path, ["train.batchsize=3"])
    with pytest.raises(ConfigError, match=r"expected section\.key=value"):
        load_pretrain_config(path, ["train.batch_size"])
    with pytest.raises(ConfigError, match=r"'train.batch_size'.*expected int, got 'many'"):
        load_pretrain_config(path, ["train.batch_size=many"])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"trian": {}}, r"unknown key 'trian' in .*cfg\.yaml; the top level accepts: data"),
        (
            {"model": {"arch": "resnet152"}},
            r"'model.arch' in .*cfg\.yaml: 'resnet152' is not one of 'resnet18'",
        ),
        (
            {"train": {"batch_size": 2.5}},
            r"'train.batch_size' in .*cfg\.yaml: expected int, got 2\.5",
        ),
        (
            {"method": {"lam": 1.5}},
            r"method\.lam must lie in \[0, 1\], got 1\.5 \(section 'method' in .*cfg\.yaml\)",
        ),
        (
            {"data": {"patch_size": 64}, "views": {"size": 96}},
            r"views\.size \(96\) is larger than data\.patch_size \(64\).*cfg\.yaml",
        ),
        (
            {"views": {"size": 32}, "data": {"patch_size": 64}, "method": {"region_size": 48}},
            r"method\.region_size \(48\) is larger than views\.size \(32\)",
        ),
        ({"views": {"t2": {"flip": {"horizontal_p": 2}}}}, r"horizontal_p must be a probability"),
    ],
)
def test_config_errors_name_key_and_file(tmp_path, data, message):
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError, match=message):
        load_pretrain_config(path)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        load_pretrain_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml is not valid YAML"):
        load_pretrain_config(bad)
    listed = _write(tmp_path, [1, 2], "list.yaml")
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_pretrain_config(listed)


def test_every_field_is_documented():
    """Every config key carries a one-line description (the configuration reference reads them)."""
    import dataclasses

    def walk(cls, prefix):
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            assert docs.get(f.name), f"{prefix}{f.name} has no documentation"
            default = (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            )
            if dataclasses.is_dataclass(default):
                walk(type(default), f"{prefix}{f.name}.")

    walk(PretrainConfig, "")
    walk(FinetuneConfig, "")


def test_yaml_off_means_the_choice_off(tmp_path):
    """YAML reads a bare `off` as False; for a choice field it means the word."""
    path = _write(tmp_path, {})
    path.write_text("train:\n  amp: off\n")
    assert load_pretrain_config(path).train.amp == "off"
    assert load_pretrain_config(path, ["train.amp=off"]).train.amp == "off"
    with pytest.raises(ConfigError, match=r"'train.deterministic'.*expected bool, got 'off'"):
        load_pretrain_config(path, ["train.deterministic='off'"])
