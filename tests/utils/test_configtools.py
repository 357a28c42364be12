"""Tests of contrastseg/utils/configtools.py: free-form mappings, numbers, non-finite values, duplicates."""

import dataclasses
import math
from typing import Any

import pytest

from contrastseg.config import load_pretrain_config
from contrastseg.utils.configtools import (
    ConfigError,
    apply_overrides,
    config_reference,
    from_dict,
    section,
    to_dict,
)


@section("")
class Section:
    ops: list[dict[str, Any]] = dataclasses.field(default_factory=list)  #: free-form ops
    weights: dict[str, float] = dataclasses.field(default_factory=dict)  #: typed values


@section("")
class Top:
    section: Section = dataclasses.field(default_factory=Section)


def test_list_of_mappings_round_trips():
    data = {"section": {"ops": [{"name": "A", "k": [1, 2]}, {"name": "B"}], "weights": {"x": 2}}}
    cfg = from_dict(Top, data)
    assert cfg.section.ops == [{"name": "A", "k": [1, 2]}, {"name": "B"}]
    assert cfg.section.weights == {"x": 2.0} and isinstance(cfg.section.weights["x"], float)
    assert to_dict(cfg) == {"section": {**data["section"], "weights": {"x": 2.0}}}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"section": {"ops": [{"name": "A"}, 3]}},
            r"'section\.ops\[1\]': expected mapping\[str, Any\]",
        ),
        ({"section": {"ops": {"name": "A"}}}, r"'section\.ops': expected list"),
        ({"section": {"weights": {"x": "heavy"}}}, r"'section\.weights\.x': expected float"),
        ({"section": {"weights": {1: 2.0}}}, r"'section\.weights \(a key\)': expected str"),
    ],
)
def test_bad_mappings_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Top, data)


def test_set_override_of_a_list_of_mappings_and_reference_row():
    data = apply_overrides({}, Top, ["section.ops=[{name: A, p: 0.5}]"])
    assert from_dict(Top, data).section.ops == [{"name": "A", "p": 0.5}]
    rows = {key: (tp, default) for key, tp, default, _ in config_reference(Top())}
    assert rows["section.ops"] == ("list[mapping[str, Any]]", "[]")


@section("")
class Inner:
    a: float = 0.0  #: a
    b: float = 0.0  #: b


@section("")
class Outer:
    inner: Inner = dataclasses.field(default_factory=lambda: Inner(a=1.0, b=2.0))


def test_a_partly_given_section_keeps_the_enclosing_default():
    # Outer's default for `inner` is Inner(1, 2), not Inner(): setting b keeps a = 1.
    assert from_dict(Outer, {"inner": {"b": 5.0}}).inner == Inner(a=1.0, b=5.0)
    assert from_dict(Outer, apply_overrides({}, Outer, ["inner.a=3"])).inner == Inner(3.0, 2.0)


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


def test_the_yaml_shim_reads_exponents_as_numbers_and_leaves_pyyaml_alone():
    import yaml

    from contrastseg.utils.configtools import safe_load_unique

    assert safe_load_unique("a: 1e-4\nb: 3E5\nc: 1.0e-3\nd: v1e4\n") == {
        "a": 1e-4, "b": 3e5, "c": 1e-3, "d": "v1e4"
    }  # fmt: skip
    assert yaml.safe_load("a: 1e-4") == {"a": "1e-4"}  # the shared SafeLoader is unchanged


def test_coerce_is_strict_and_names_the_key():
    from contrastseg.utils.configtools import Float, Int, coerce

    assert coerce([1, 2.5], list[Float], "mean") == [1.0, 2.5]
    with pytest.raises(ConfigError, match=r"'std\[1\]' in s\.yaml: expected float, got True"):
        coerce([1.0, True], list[Float], "std", "s.yaml")
    with pytest.raises(ConfigError, match=r"'count': expected int, got '3'"):
        coerce("3", Int, "count")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "optim.betas=[0.9]",
            r"'optim\.betas'.*: expected 2 values \(tuple\[float, float\]\), got \[0\.9\]",
        ),
        ("optim.betas=[0.9, x]", r"'optim\.betas\[1\]'.*: expected float, got 'x' \(str\)"),
        ("data.roots=abc", r"'data\.roots'.*: expected list\[str\], got 'abc' \(str\)"),
        ("model.output_stride=12", r"'model\.output_stride'.*: 12 is not one of 8, 16, 32"),
    ],
)
def test_type_errors_name_the_key_path_and_the_type(override, message):
    with pytest.raises(ConfigError, match=message):
        load_pretrain_config(None, [override])
