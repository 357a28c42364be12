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
