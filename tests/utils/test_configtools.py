"""Tests of contrastseg/utils/configtools.py: free-form mappings in typed configs."""

import dataclasses
from typing import Any

import pytest

from contrastseg.utils.configtools import (
    ConfigError,
    apply_overrides,
    config_reference,
    from_dict,
    to_dict,
)


@dataclasses.dataclass
class Section:
    ops: list[dict[str, Any]] = dataclasses.field(default_factory=list)  #: free-form ops
    weights: dict[str, float] = dataclasses.field(default_factory=dict)  #: typed values


@dataclasses.dataclass
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


@dataclasses.dataclass
class Inner:
    a: float = 0.0  #: a
    b: float = 0.0  #: b


@dataclasses.dataclass
class Outer:
    inner: Inner = dataclasses.field(default_factory=lambda: Inner(a=1.0, b=2.0))


def test_a_partly_given_section_keeps_the_enclosing_default():
    # Outer's default for `inner` is Inner(1, 2), not Inner(): setting b keeps a = 1.
    assert from_dict(Outer, {"inner": {"b": 5.0}}).inner == Inner(a=1.0, b=5.0)
    assert from_dict(Outer, apply_overrides({}, Outer, ["inner.a=3"])).inner == Inner(3.0, 2.0)
