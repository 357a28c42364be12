"""Build typed dataclass configs from YAML dicts, strictly, and describe them.

Generic machinery used by :mod:`contrastseg.config`: every section of a config is a plain
dataclass whose fields have defaults; :func:`from_dict` turns a (YAML) mapping into an
instance, refusing unknown keys and wrong types with a message that names the key and the
file; :func:`apply_overrides` applies ``--set section.key=value`` strings;
:func:`field_docs` reads each field's one-line documentation (a ``#:`` comment above the
field, or an ``Attributes:`` entry in the class docstring) for the configuration reference.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import reprlib
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is unknown, of the wrong type or impossible; the message says where."""


#: A number as Python writes it: 1e-4, 3E5, .5, 5., 1_000.5, +2 (not nan / inf).
_NUMBER = re.compile(r"^[+-]?(\d(_?\d)*(\.(\d(_?\d)*)?)?|\.\d(_?\d)*)([eE][+-]?\d(_?\d)*)?$")
_NAN_WORDS = ("nan", ".nan")
#: Keys whose value may be NaN (a nodata value of NaN marks NaN pixels as missing).
NAN_KEYS = ("nodata",)


def _nan_allowed(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in NAN_KEYS


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML keeps the last)."""

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


def safe_load_unique(stream: Any) -> Any:
    """``yaml.safe_load`` with duplicate keys refused (:class:`UniqueKeyLoader`)."""
    return yaml.load(stream, Loader=UniqueKeyLoader)


def _where(key: str, source: str | None) -> str:
    return f"{key!r}" + (f" in {source}" if source else "")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = get_args(tp)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return f"tuple[{_type_name(args[0])}, ...]"
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if origin is dict or tp is dict:
        args = get_args(tp) or (Any, Any)
        return f"mapping[{', '.join(_type_name(a) for a in args)}]"
    if tp is Any:
        return "Any"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 200
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 10
_SHORT.maxlevel = 2


def _short(value: Any) -> str:
    """``repr(value)`` cut to a readable size (a YAML anchor bomb expands to megabytes)."""
    return _SHORT.repr(value)


def _coerce(value: Any, tp: Any, key: str, source: str | None) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert lists to tuples etc."""
    origin = get_origin(tp)
    bad = ConfigError(
        f"{_where(key, source)}: expected {_type_name(tp)}, got {_short(value)} ({type(value).__name__})"
    )
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if value is not None and not isinstance(value, Mapping):
            raise bad
        variant = getattr(tp, "config_variant", None)
        if variant is not None:  # a section whose class depends on its content (method.name)
            tp, value = variant(value, key, source)
        if value is None:
            return tp()
        return from_dict(tp, value, source=source, prefix=key)
    if origin is Literal:
        # YAML 1.1 reads a bare on/off/yes/no as a bool: give back the word the choice means
        if isinstance(value, bool):
            words = [
                w
                for w in (("on", "yes", "true") if value else ("off", "no", "false"))
                if w in get_args(tp)
            ]
            value = words[0] if words else value
        if value not in get_args(tp):
            raise ConfigError(
                f"{_where(key, source)}: {_short(value)} is not one of {', '.join(map(repr, get_args(tp)))}"
            )
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise bad
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError as err:
                errors.append(err)
        if len(errors) == 1:
            raise errors[0]
        raise bad
    if origin in (list, tuple):
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise bad
        args = get_args(tp)
        if origin is list:
            return [_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(
                f"{_where(key, source)}: expected {len(args)} values ({_type_name(tp)}), got {_short(value)}"
            )
        return tuple(
            _coerce(v, a, f"{key}[{i}]", source)
            for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if origin is dict or tp is dict:
        # A free-form mapping (e.g. the arguments of an op named by one of its keys): keys and
        # values are checked against the annotation; a plain ``dict`` accepts any.
        if not isinstance(value, Mapping):
            raise bad
        key_type, value_type = get_args(tp) or (Any, Any)
        return {
            _coerce(k, key_type, f"{key} (a key)", source): _coerce(
                v, value_type, f"{key}.{k}", source
            )
            for k, v in value.items()
        }
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, str) and _NUMBER.match(value.strip()):
            # YAML 1.1 reads 1e-4 and 3E5 (no dot) as strings; Python reads them as numbers
            value = float(value.strip())
        elif isinstance(value, str) and value.strip().lower() in _NAN_WORDS and _nan_allowed(key):
            value = math.nan
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        if not math.isfinite(value) and not (math.isnan(value) and _nan_allowed(key)):
            raise ConfigError(
                f"{_where(key, source)}: expected a finite number, got {_short(value)}"
            )
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    if isinstance(tp, type):
        if not isinstance(value, tp):
            raise bad
        return value
    return value  # pragma: no cover - annotations outside the supported set


def coerce(value: Any, tp: Any, key: str, source: str | None = None) -> Any:
    """Check one value against a type annotation as config values are checked.

    For files that are not configs but hold config-like values (band statistics):
    numbers written ``1e-4`` are accepted, non-finite floats are refused.

    Raises:
        ConfigError: the value does not fit ``tp``; the message names ``key`` and ``source``.
    """
    return _coerce(value, tp, key, source)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(
    cls: type[T], data: Mapping[str, Any] | None, source: str | None = None, prefix: str = ""
) -> T:
    """Build dataclass ``cls`` from a mapping, strictly.

    Args:
        cls: a dataclass whose fields all have defaults.
        data: the mapping (e.g. parsed YAML); ``None`` means all defaults.
        source: the file the mapping came from, named in error messages.
        prefix: the dotted key of this section, named in error messages.

    Raises:
        ConfigError: an unknown key (the message lists the known ones), a value of the wrong
            type, or an impossible value rejected by the dataclass's ``__post_init__``.
    """
    data = dict(data or {})
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        name = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(
            f"unknown key {_where(name, source)}; "
            f"{'section ' + repr(prefix) if prefix else 'the top level'} accepts: {', '.join(fields)}"
        )
    kwargs = {}
    defaults = None
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        if (
            dataclasses.is_dataclass(hints[name])
            and isinstance(value, Mapping)
            and not hasattr(hints[name], "config_variant")  # its content picks its defaults
        ):
            # A sub-section given in part keeps the enclosing default for the rest (e.g.
            # ViewsConfig.t2's recipe), not the defaults of the sub-section's class.
            defaults = cls() if defaults is None else defaults
            value = merge_mappings(to_dict(getattr(defaults, name)), value)
        kwargs[name] = _coerce(value, hints[name], key, source)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        where = (
            f" (section {prefix!r}" + (f" in {source})" if source else ")")
            if prefix
            else (f" (in {source})" if source else "")
        )
        raise ConfigError(f"{err}{where}") from err


def merge_mappings(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``, mapping by mapping (lists and scalars are replaced whole)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_mappings(out[key], value)
        else:
            out[key] = value
    return out


def to_dict(obj: Any) -> Any:
    """A dataclass config as plain dicts / lists / scalars (YAML- and checkpoint-safe)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


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
        node, node_cls = data, cls
        for depth, part in enumerate(path):
            fields = {f.name: f for f in dataclasses.fields(node_cls)}
            keys = getattr(node_cls, "config_keys", None)
            if keys is not None:  # a section with variants takes the keys of all of them
                fields = {**dict.fromkeys(sorted(keys())), **fields}
            if part not in fields:
                where = ".".join(path[:depth]) or "the top level"
                raise ConfigError(
                    f"--set {text!r}: unknown key {'.'.join(path[: depth + 1])!r}; "
                    f"{where} accepts: {', '.join(fields)}"
                )
            if depth == len(path) - 1:
                node[part] = value
                break
            sub_cls = _hints(node_cls).get(part)
            if not dataclasses.is_dataclass(sub_cls):
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
            node, node_cls = child, sub_cls
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


_ATTR_RE = re.compile(r"^\s{4,}(\w+)(?:\s*\([^)]*\))?:\s*(.+)$")


def field_docs(cls: type) -> dict[str, str]:
    """One line of documentation per field: ``#:`` comments, else the docstring's Attributes.

    Base classes are read first, so a section that subclasses another (new defaults) keeps
    the documentation of the fields it inherits.
    """
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__[1:]):
        if dataclasses.is_dataclass(base):
            docs.update(_own_field_docs(base))
    docs.update(_own_field_docs(cls))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    docs: dict[str, str] = {}
    doc = inspect.getdoc(cls) or ""
    in_attrs = False
    for line in doc.splitlines():
        if line.strip() == "Attributes:":
            in_attrs = True
            continue
        if in_attrs:
            if line and not line.startswith(" "):
                in_attrs = False
                continue
            m = re.match(r"^\s+(\w+)(?:\s*\([^)]*\))?:\s*(.+)$", line)
            if m and len(line) - len(line.lstrip()) <= 4:
                docs[m.group(1)] = m.group(2).strip()
                last = m.group(1)
            elif line.strip() and docs:
                docs[last] += " " + line.strip()
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return docs
    pending: list[str] = []
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        m = re.match(r"^(\w+)\s*:", stripped)
        if m and m.group(1) in {f.name for f in dataclasses.fields(cls)}:
            trailing = re.search(r"#:\s*(.+)$", stripped)
            text = " ".join(pending) or (trailing.group(1).strip() if trailing else "")
            if text:
                docs[m.group(1)] = text
        pending = []
    return docs


def _default_text(value: Any) -> str:
    if dataclasses.is_dataclass(value):
        return ""
    text = yaml.safe_dump(to_dict(value), default_flow_style=True, width=10_000).strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    return text.removesuffix("...").strip()


def config_reference(instance: Any, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """Rows ``(key, type, default, meaning)`` for every field of a default config instance.

    Nested sections are flattened (``views.t2.flip.horizontal_p``), with the defaults the
    enclosing section gives them.
    """
    rows = []
    cls = type(instance)
    hints = _hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        default = getattr(instance, f.name)
        if dataclasses.is_dataclass(default):
            rows += config_reference(default, f"{key}.")
            continue
        rows.append((key, _type_name(hints[f.name]), _default_text(default), docs.get(f.name, "")))
    return rows


def config_reference_markdown(cls: type) -> str:
    """The configuration reference of ``cls`` as Markdown: one table per top-level section."""
    out = []
    docs = field_docs(cls)
    instance = cls()
    cell = lambda s: s.replace("|", "\\|")  # noqa: E731
    top = [
        row
        for row in config_reference(instance)
        if "." not in row[0] and not dataclasses.is_dataclass(getattr(instance, row[0]))
    ]
    if top:
        out += ["#### top level\n", "| key | type | default | meaning |", "|---|---|---|---|"]
        out += [f"| `{k}` | {cell(t)} | `{cell(d)}` | {cell(m)} |" for k, t, d, m in top]
        out.append("")
    for f in dataclasses.fields(cls):
        section = getattr(instance, f.name)
        if not dataclasses.is_dataclass(section):
            continue
        variants = getattr(type(section), "config_variants", None)
        tables = (
            [(f"{f.name}.name: {n}", v()) for n, v in variants().items()]
            if variants is not None
            else [(None, section)]
        )
        out.append(f"#### `{f.name}`: {docs.get(f.name, '')}\n")
        for title, instance_ in tables:
            if title:
                out.append(f"`{title}`\n")
            out.append("| key | type | default | meaning |")
            out.append("|---|---|---|---|")
            for key, type_name, default, meaning in config_reference(instance_, f"{f.name}."):
                out.append(f"| `{key}` | {cell(type_name)} | `{cell(default)}` | {cell(meaning)} |")
            out.append("")
    return "\n".join(out).rstrip() + "\n"
