"""The YAML shim and ``--set``: what turns files and overrides into the mappings configs are built from.

:class:`UniqueKeyLoader` refuses duplicate keys and reads ``1e-4`` as a number (YAML 1.1
reads it as a string); :func:`load_yaml` reads a config file with errors that name it;
:func:`apply_overrides` applies ``--set section.key=value`` strings (the value parsed as
YAML), checking each key path against the config's sections. The sections themselves, their
types and their one-line errors are :mod:`contrastseg.utils.sections`; the configuration
reference is :mod:`contrastseg.utils.reference` (both re-exported here).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from typing import Any

import yaml

from contrastseg.utils.reference import config_reference, config_reference_markdown, field_docs
from contrastseg.utils.sections import (
    Bool,
    ChoiceWord,
    ConfigError,
    Float,
    FloatPair,
    Int,
    Nodata,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Probability,
    Str,
    coerce,
    config_error,
    from_dict,
    merge_mappings,
    section,
    section_fields,
    tagged_union,
    to_dict,
    union_variants,
)

__all__ = [
    "Bool",
    "ChoiceWord",
    "ConfigError",
    "Float",
    "FloatPair",
    "Int",
    "Nodata",
    "NonNegativeFloat",
    "NonNegativeInt",
    "PositiveFloat",
    "PositiveInt",
    "Probability",
    "Str",
    "UniqueKeyLoader",
    "apply_overrides",
    "coerce",
    "config_error",
    "config_reference",
    "config_reference_markdown",
    "field_docs",
    "from_dict",
    "load_yaml",
    "merge_mappings",
    "parse_override",
    "safe_load_unique",
    "section",
    "tagged_union",
    "to_dict",
    "union_variants",
]

#: What YAML 1.1 leaves a string but Python reads as a float: an exponent without a dot or sign.
_EXPONENT_FLOAT = re.compile(r"^[+-]?(\d(_?\d)*(\.(\d(_?\d)*)?)?|\.\d(_?\d)*)[eE][+-]?\d(_?\d)*$")
_NAN_WORDS = ("nan", ".nan")


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML keeps the last)
    and reads every number Python writes as a number (``1e-4``, which YAML 1.1 leaves a string)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            line = key_node.start_mark.line + 1
            try:
                hash(key)
            except TypeError:
                name = key_node.start_mark.name
                raise ConfigError(
                    ("" if name.startswith("<") else f"{name}: ")
                    + f"line {line}: a key must be a name, got a {type(key).__name__}"
                ) from None
            if key in seen:
                name = key_node.start_mark.name
                raise ConfigError(
                    ("" if name.startswith("<") else f"{name}: ")
                    + f"key {key!r} is given twice (lines {seen[key]} and {line}); YAML would "
                    "silently keep the second: remove one"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


# A copy of the resolvers, so that adding one does not change yaml.SafeLoader's own lists.
UniqueKeyLoader.yaml_implicit_resolvers = {
    k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("+-0123456789.")
)


def safe_load_unique(stream: Any) -> Any:
    """``yaml.safe_load`` with duplicate keys refused and ``1e-4`` read as a number."""
    return yaml.load(stream, Loader=UniqueKeyLoader)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and the value parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    try:
        value = safe_load_unique(raw) if raw.strip() else ""
    except ConfigError as err:
        raise ConfigError(f"--set {text!r}: {err}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({err})") from err
    return key.split("."), value


def apply_overrides(data: dict[str, Any], cls: type, overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to a raw config mapping, checking each key path against ``cls``."""
    for text in overrides:
        path, value = parse_override(text)
        node, node_fields = data, section_fields(cls)
        for depth, part in enumerate(path):
            assert node_fields is not None
            if part not in node_fields:
                where = ".".join(path[:depth]) or "the top level"
                close = difflib.get_close_matches(part, list(node_fields), n=1)
                raise ConfigError(
                    f"--set {text!r}: unknown key {'.'.join(path[: depth + 1])!r}; "
                    f"{where} accepts: {', '.join(node_fields)}"
                    + (f" (did you mean {close[0]!r}?)" if close else "")
                )
            if depth == len(path) - 1:
                node[part] = value
                break
            sub_fields = section_fields(node_fields[part])
            if sub_fields is None:
                raise ConfigError(
                    f"--set {text!r}: {'.'.join(path[: depth + 1])!r} is a value, not a section"
                )
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(
                    f"--set {text!r}: {'.'.join(path[: depth + 1])!r} is not a mapping"
                )
            node, node_fields = child, sub_fields
    return data


def load_yaml(path: str) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = safe_load_unique(handle)
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}"
        )
    return data
