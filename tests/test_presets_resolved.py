"""One preset mechanism: a preset is merged under the user's mapping before typing."""

import pytest
import yaml

from contrastseg.config import load_pretrain_config
from contrastseg.data.splits import assign_split
from contrastseg.train.finetune_config import load_finetune_config
from contrastseg.utils.configtools import ConfigError, to_dict


def _write(tmp_path, data, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_an_explicit_value_equal_to_the_default_wins_over_the_data_preset(tmp_path):
    path = _write(
        tmp_path, {"data": {"preset": "Dubai", "root": "x", "test": [], "ignore_index": 255}}
    )
    config = load_finetune_config(path)
    assert config.data.preset == "dubai" and config.data.test == []
    assert config.data.classes[0] == "building" and config.data.ignore_index == 255
    keys = ["Tile 8/images/a", "Tile 1/images/b"]
    assert assign_split(keys, "test", config.data.train, config.data.val, config.data.test) == []
    # the same through --set, and the preset's value where nothing is said
    assert load_finetune_config(path, ["data.test=['Tile 7/*']"]).data.test == ["Tile 7/*"]
    assert load_finetune_config(
        _write(tmp_path, {"data": {"preset": "dubai"}}, "b.yaml")
    ).data.test == ["Tile 8/*"]


def test_an_explicit_value_equal_to_the_default_wins_over_the_views_preset(tmp_path):
    # simclr colour-distorts view 1 with p 0.8; 0.0 is the field's default and is meant
    path = _write(tmp_path, {"views": {"preset": "simclr", "t1": {"color": {"p": 0.0}}}})
    config = load_pretrain_config(path)
    assert config.views.t1.color.p == 0.0 and config.views.t2.color.p == 0.8
    assert config.views.t1.crop.scale == (0.08, 1.0)  # the rest of the preset
    assert "preset" not in to_dict(config)["views"]  # resolved: the values, not the name
    flipped = load_pretrain_config(path, ["views.preset=glcnet"])
    assert flipped.views.t2.crop.scale == (0.4, 1.0) and flipped.views.t1.color.p == 0.0


@pytest.mark.parametrize(
    ("loader", "name", "extra"),
    [
        (load_finetune_config, "finetune_dubai.yaml", ["data.test=[]", "model.name=unet"]),
        (load_finetune_config, None, []),
        (load_pretrain_config, None, ["views.preset=simclr"]),
    ],
)
def test_a_saved_config_reloads_as_the_same_config(tmp_path, loader, name, extra):
    config = loader(name, extra)
    saved = _write(tmp_path, to_dict(config), "config.yaml")  # what the run folder keeps
    assert loader(saved) == config


def test_unknown_presets_name_the_key_and_file(tmp_path):
    path = _write(tmp_path, {"data": {"preset": "isaid"}})
    with pytest.raises(ConfigError, match=r"'data\.preset' in .*cfg\.yaml: unknown data preset"):
        load_finetune_config(path)
    with pytest.raises(ConfigError, match=r"'views\.preset' in .*: views preset must be"):
        load_pretrain_config(None, ["views.preset=byol"])


def test_configs_stored_before_resolution_still_read_their_preset():
    # fine-tuning checkpoints and config.yaml files written before presets were resolved on
    # loading hold every field, the preset's name and the fields' defaults (no classes)
    from contrastseg.config import resolve_presets
    from contrastseg.data.config import LabeledDataConfig
    from contrastseg.train.finetune_config import FinetuneConfig
    from contrastseg.utils.configtools import from_dict

    stored = to_dict(FinetuneConfig(data=LabeledDataConfig(preset="dubai", test=["Tile 7/*"])))
    config = from_dict(FinetuneConfig, resolve_presets(stored, FinetuneConfig))
    assert config.data.classes[0] == "building" and config.data.test == ["Tile 7/*"]
    assert config.data.ignore_colors == ["#9B9B9B", "#000000"]
