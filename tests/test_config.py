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
            r"model\.arch must be one of resnet18, .* or timm/<name> .*got 'resnet152' \(section 'model' in .*cfg\.yaml\)",
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
    # the documentation is the fields' pydantic description (the docstring under each field)
    from contrastseg.config import OptimConfig

    assert OptimConfig.__pydantic_fields__["lr"].description == "peak learning rate"


def test_yaml_off_means_the_choice_off(tmp_path):
    """YAML reads a bare `off` as False; for a choice field it means the word."""
    path = _write(tmp_path, {})
    path.write_text("train:\n  amp: off\n")
    assert load_pretrain_config(path).train.amp == "off"
    assert load_pretrain_config(path, ["train.amp=off"]).train.amp == "off"
    with pytest.raises(ConfigError, match=r"'train.deterministic'.*expected bool, got 'off'"):
        load_pretrain_config(path, ["train.deterministic='off'"])


def _potsdam_tree(root) -> list[str]:
    """The preset's layout with every tile (tiny 4-band images, RGB masks): its keys."""
    import numpy as np
    import tifffile

    from contrastseg.data.presets import POTSDAM_TEST_TILES, POTSDAM_TRAIN_TILES

    (root / "4_Ortho_RGBIR").mkdir(parents=True)
    (root / "5_Labels_all_noBoundary").mkdir()
    keys = [f"top_potsdam_{t}" for t in POTSDAM_TRAIN_TILES + POTSDAM_TEST_TILES]
    for key in keys:
        tifffile.imwrite(root / "4_Ortho_RGBIR" / f"{key}_RGBIR.tif", np.zeros((8, 8, 4), np.uint8))
        white = np.full((8, 8, 3), 255, np.uint8)  # impervious surfaces
        tifffile.imwrite(root / "5_Labels_all_noBoundary" / f"{key}_label_noBoundary.tif", white)
    return keys


def _dubai_tree(root) -> list[str]:
    """Tiles 1-8 with two tiny RGB JPEGs each and their colour masks: the keys."""
    import numpy as np
    from PIL import Image

    keys = []
    for tile in range(1, 9):
        for part in (1, 2):
            for folder in ("images", "masks"):
                (root / f"Tile {tile}" / folder).mkdir(parents=True, exist_ok=True)
            name = f"image_part_{part:03d}"
            Image.new("RGB", (8, 8)).save(root / f"Tile {tile}" / "images" / f"{name}.jpg")
            building = np.tile(np.array([0x3C, 0x10, 0x98], np.uint8), (8, 8, 1))
            Image.fromarray(building).save(root / f"Tile {tile}" / "masks" / f"{name}.png")
            keys.append(f"Tile {tile}/{name}")
    return keys


def test_every_bundled_probe_has_disjoint_nonempty_splits(tmp_path):
    """Each bundled config's probe section, on the file names of its preset: the head fits on
    training images, is scored on others, and never sees the preset's test images."""
    import fnmatch
    from pathlib import Path

    from contrastseg.data.presets import apply_preset
    from contrastseg.train.online_probe import check_probe

    configs = Path(__file__).resolve().parents[1] / "configs"
    probed = sorted(
        p.name for p in configs.glob("*.yaml") if "probe" in yaml.safe_load(p.read_text())
    )
    assert probed == ["glcnet_dubai.yaml", "glcnet_potsdam.yaml", "simclr_potsdam.yaml"]
    trees = {"potsdam": (_potsdam_tree, 4), "dubai": (_dubai_tree, 3)}  # JPEGs: RGB
    val_of = {
        "potsdam": {"top_potsdam_7_12"},
        "dubai": {"Tile 3/image_part_001", "Tile 3/image_part_002"},
    }
    features_of = {"glcnet": "decoder", "simclr": "encoder"}
    keys_of: dict[str, list[str]] = {}
    for name in probed:
        preset = load_pretrain_config(configs / name).probe.data.preset
        root = tmp_path / preset
        make, bands = trees[preset]
        if preset not in keys_of:  # the two Potsdam configs share one tree
            keys_of[preset] = make(root)
        keys = keys_of[preset]
        config = load_pretrain_config(configs / name, [f"probe.data.root={root}"])
        assert config.data.bands is None or len(config.data.bands) == bands, name
        features, (train, val) = check_probe(config, bands)
        assert features == features_of[config.method.name], name
        train_keys, val_keys = {it.key for it in train.items}, {it.key for it in val.items}
        assert val_keys == val_of[preset], name
        assert train_keys and not train_keys & val_keys, name
        held_out = {
            k
            for k in keys
            if any(fnmatch.fnmatchcase(k, p) for p in apply_preset(config.probe.data).test)
        }
        assert held_out and not (train_keys | val_keys) & held_out, name
        # every other image fits the head
        assert train_keys == set(keys) - held_out - val_keys, name


def test_the_probe_data_preset_is_resolved_on_loading_and_explicit_values_win():
    # the nested probe.data section resolves like a top-level data section: an explicit value
    # equal to the field's default (test: []) is kept, not replaced by the preset's Tile 8
    config = load_pretrain_config("glcnet_dubai.yaml", ["probe.data.test=[]"])
    assert config.probe.data.test == [] and config.probe.data.val == ["Tile 3/*"]
    assert config.probe.data.classes == ["building", "land", "road", "vegetation", "water"]
    assert load_pretrain_config("glcnet_dubai.yaml", []).probe.data.test == ["Tile 8/*"]
    # the stored config is the resolved one: loading it again gives the same
    again = from_dict(PretrainConfig, to_dict(config))
    assert to_dict(again) == to_dict(config)
    with pytest.raises(ConfigError, match=r"'probe\.data\.preset'.*unknown data preset 'dubia'"):
        load_pretrain_config(None, ["probe.data.preset=dubia"])


def test_sections_validate_when_built_in_code():
    import dataclasses

    from contrastseg.config import OptimConfig, TrainConfig

    with pytest.raises(ConfigError, match=r"optim\.lr must be > 0, got -1\.0 \(section 'optim'\)"):
        OptimConfig(lr=-1)
    with pytest.raises(ConfigError, match=r"optim\.lr must be > 0, got 0\.0"):
        dataclasses.replace(OptimConfig(), lr=0.0)
    for bad in ("3", 3.5, True):
        with pytest.raises(ConfigError, match=r"'train\.epochs': expected int, got"):
            TrainConfig(epochs=bad)
    with pytest.raises(ConfigError, match=r"unknown key 'optim\.lrr'.*\(did you mean 'lr'\?\)"):
        OptimConfig(lrr=0.1)
    assert OptimConfig(lr=1).lr == 1.0 and isinstance(OptimConfig(lr=1).lr, float)
    from contrastseg.augment.config import FlipConfig

    with pytest.raises(
        ConfigError, match=r"flip\.vertical_p must be a probability in \[0, 1\], got 2\.0"
    ):
        FlipConfig(vertical_p=2)
    with pytest.raises(ConfigError, match=r"train\.collapse_std must lie in \[0, 1\), got 1\.0"):
        PretrainConfig(train={"collapse_std": 1})


def test_method_and_model_names_pick_the_section_class():
    from contrastseg.methods import GLCNetConfig, SimCLRConfig
    from contrastseg.models import DeepLabV3PlusConfig, FPNConfig

    config = PretrainConfig(method={"name": "simclr"}, model={"name": "fpn"})
    assert type(config.method) is SimCLRConfig and type(config.model) is FPNConfig
    # no name: the default method and network
    config = from_dict(PretrainConfig, {"method": {"lam": 0.25}, "model": {"arch": "resnet18"}})
    assert type(config.method) is GLCNetConfig and config.method.lam == 0.25
    assert type(config.model) is DeepLabV3PlusConfig and config.model.arch == "resnet18"
    with pytest.raises(
        ConfigError, match=r"'method\.name': unknown method 'simclrr' \(did you mean 'simclr'\?\)"
    ):
        PretrainConfig(method={"name": "simclrr"})
    with pytest.raises(ConfigError, match=r"unknown model 'zzz'; choose one of deeplabv3plus"):
        from_dict(PretrainConfig, {"model": {"name": "zzz"}})
    with pytest.raises(ConfigError):
        SimCLRConfig(name="glcnet")  # a method's config holds its own name only


def test_an_unknown_key_in_a_file_names_a_close_match(tmp_path):
    path = _write(tmp_path, {"optim": {"lrr": 0.1}})
    with pytest.raises(
        ConfigError,
        match=r"unknown key 'optim\.lrr' in .*cfg\.yaml; section 'optim' accepts: name, lr, .*"
        r"\(did you mean 'lr'\?\)",
    ):
        load_pretrain_config(path)
    with pytest.raises(ConfigError, match=r"'train\.deterministic'.*expected bool, got 'yes'"):
        load_pretrain_config(None, ["train.deterministic='yes'"])


def test_subclasses_keep_the_constraints_of_the_fields_they_override():
    """A section that subclasses another to change defaults (FinetuneTrainConfig) must keep the
    range of each field it redeclares: its annotation replaces the base class's."""
    import dataclasses

    import annotated_types

    import contrastseg.train.finetune_config
    from contrastseg.methods.base import method_sections
    from contrastseg.models.config import model_sections

    classes = {
        c
        for module in (contrastseg.config, contrastseg.train.finetune_config)
        for c in vars(module).values()
        if isinstance(c, type) and dataclasses.is_dataclass(c)
    }
    classes |= set(method_sections().values()) | set(model_sections().values())
    bounds = (annotated_types.Gt, annotated_types.Ge, annotated_types.Lt, annotated_types.Le)

    def ranges(info):
        return [m for m in info.metadata if isinstance(m, (*bounds, annotated_types.MinLen))]

    checked = 0
    for cls in classes:
        for base in cls.__mro__[1:]:
            if not dataclasses.is_dataclass(base):
                continue
            for name, info in base.__pydantic_fields__.items():
                if ranges(info):
                    assert ranges(cls.__pydantic_fields__[name]) == ranges(info), (
                        f"{cls.__name__}.{name} drops the constraints of {base.__name__}.{name}"
                    )
                    checked += 1
    assert checked > 10


def test_a_yaml_boolean_where_a_word_is_expected_says_why():
    """``amp: yes`` reaches the loader as True: the message says YAML made it a boolean."""
    with pytest.raises(ConfigError, match=r"'on' is not one of .*YAML reads a bare yes/no/on/off"):
        load_pretrain_config(None, ["train.amp=yes"])
    assert load_pretrain_config(None, ["train.amp=off"]).train.amp == "off"  # a choice's word
