"""Config sections as pydantic v2 dataclasses, and their errors as one line.

Every section of a config is a pydantic dataclass (:func:`section`): unknown keys are refused
(``extra="forbid"``), scalar values are typed strictly (:data:`Int` refuses ``"3"``, ``3.5``
and ``True``; :data:`Float` accepts ints and refuses bools and non-finite numbers), simple
ranges are field constraints (:data:`PositiveInt`, ``Field(ge=...)``), and all of it runs
when a section is built in code too. A section whose ``name`` picks its class (``method``,
``model``) is a :func:`tagged_union`. :func:`config_error` turns a
``pydantic.ValidationError`` into the package's one-line :class:`ConfigError` naming the
dotted key, the value, the file and, for an unknown key, the accepted keys and a close
match; :func:`from_dict` builds a section from a (YAML) mapping with it.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import reprlib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import annotated_types
import pydantic
import pydantic.dataclasses
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Discriminator, Tag

T = TypeVar("T")

_NAN_WORDS = ("nan", ".nan")


class ConfigError(ValueError):
    """A config value is unknown, of the wrong type or impossible; the message says where."""


#: How every config section is validated.
SECTION_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False, use_attribute_docstrings=True)


def _choice_word(value: Any) -> Any:
    # YAML 1.1 reads a bare on/off/yes/no as a bool: give back the word the choice means
    if isinstance(value, bool):
        return "on" if value else "off"
    return value


def _nan_word(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() in _NAN_WORDS:
        return math.nan
    return value


def _not_infinite(value: float | None) -> float | None:
    if value is not None and math.isinf(value):
        raise ValueError(f"expected a finite number or NaN, got {value}")
    return value


#: The scalar types of config fields: strict (an ``Int`` refuses ``"3"``, ``3.5`` and ``True``;
#: a ``Bool`` refuses ``"yes"``; a ``Float`` accepts ints, refuses bools and strings). Lists,
#: tuples and sections stay lax: a YAML list fills a tuple, a mapping a section.
Int = Annotated[int, pydantic.Strict()]
Float = Annotated[float, pydantic.Strict()]
Bool = Annotated[bool, pydantic.Strict()]
Str = Annotated[str, pydantic.Strict()]
#: The usual ranges, as field constraints (a subclass that changes a default keeps them by
#: naming the same alias).
PositiveInt = Annotated[Int, pydantic.Field(ge=1)]
NonNegativeInt = Annotated[Int, pydantic.Field(ge=0)]
PositiveFloat = Annotated[Float, pydantic.Field(gt=0)]
NonNegativeFloat = Annotated[Float, pydantic.Field(ge=0)]


class _ProbabilityMark:
    """Marks a [0, 1] range as a probability, for the error message."""


_PROBABILITY = _ProbabilityMark()
#: A probability: a float in [0, 1].
Probability = Annotated[Float, pydantic.Field(ge=0, le=1), _PROBABILITY]
#: A ``Literal`` choice holding ``off`` / ``on`` that YAML 1.1 may have read as a bool.
ChoiceWord = BeforeValidator(_choice_word)
#: A nodata value: a number, NaN (``.nan`` or ``nan``: NaN pixels are missing) or None.
Nodata = Annotated[
    Annotated[float, pydantic.Strict(), pydantic.Field(allow_inf_nan=True)] | None,
    BeforeValidator(_nan_word),
    AfterValidator(_not_infinite),
]
#: Two floats, e.g. a (min, max) range.
FloatPair = tuple[Float, Float]


def section(key: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: a config section, a pydantic dataclass found under dotted ``key``.

    It validates (:data:`SECTION_CONFIG`) whenever it is built, from a file or in code;
    building it in code raises a one-line :class:`ConfigError` naming ``key.field``.
    """

    def wrap(cls: type[T]) -> type[T]:
        built = pydantic.dataclasses.dataclass(cls, config=SECTION_CONFIG)
        init = built.__init__

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            try:
                init(self, *args, **kwargs)
            except pydantic.ValidationError as err:
                raise config_error(err, type(self), prefix=key) from None

        built.__init__ = __init__  # type: ignore[method-assign]
        registries_changed()  # a method's or network's config may have just become complete
        return built  # type: ignore[return-value]

    return wrap


#: Called when a method or network may have been registered (see :func:`on_registries_changed`).
_LISTENERS: list[Callable[[], None]] = []


def on_registries_changed(listener: Callable[[], None]) -> Callable[[], None]:
    r"""Call ``listener`` whenever a method or network is registered, or a section is declared.

    The configs whose ``method`` / ``model`` sections are :func:`tagged_union`\ s of the
    registries rebuild them here, so a method registered after ``contrastseg.config`` was
    imported (``@register_method`` in a user's script) can be chosen by name.
    """
    _LISTENERS.append(listener)
    return listener


def registries_changed() -> None:
    """Tell the listeners of :func:`on_registries_changed` (each decides whether to rebuild)."""
    for listener in list(_LISTENERS):
        listener()


def tagged_union(
    variants: Mapping[str, type],
    default: str | None,
    prepare: Callable[[Any, pydantic.ValidationInfo], Any] | None = None,
) -> Any:
    """The annotation of a section whose ``name`` picks its class (``method``, ``model``).

    A mapping or instance without a name takes ``default``; ``prepare`` sees the raw value first
    (e.g. to drop the keys of another variant). An unknown name is an error listing the names.
    """

    def tag(value: Any) -> str | None:
        name = value.get("name") if isinstance(value, Mapping) else getattr(value, "name", None)
        return default if name is None else str(name)

    members = tuple(Annotated[cls, Tag(name)] for name, cls in variants.items())
    metadata: list[Any] = [Discriminator(tag)]
    if prepare is not None:
        metadata.append(BeforeValidator(prepare))
    return Annotated[(Union[members], *metadata)]  # type: ignore[valid-type]  # noqa: UP007


def union_variants(tp: Any) -> dict[str, type] | None:
    """The class of each name of a :func:`tagged_union` annotation; None for any other."""
    if get_origin(tp) is not Annotated:
        return None
    inner, *metadata = get_args(tp)
    if not any(isinstance(m, Discriminator) for m in metadata):
        return None
    out = {}
    for member in get_args(inner):
        cls, *tags = get_args(member)
        out[next(t.tag for t in tags if isinstance(t, Tag))] = cls
    return out


def _strip(tp: Any) -> Any:
    """An annotation without its ``Annotated`` metadata (a tagged union is kept whole)."""
    while get_origin(tp) is Annotated and union_variants(tp) is None:
        tp = get_args(tp)[0]
    return tp


def _where(key: str, source: str | None) -> str:
    return f"{key!r}" + (f" in {source}" if source else "")


def _type_name(tp: Any) -> str:
    variants = union_variants(tp)
    if variants is not None:
        return "mapping"
    tp = _strip(tp)
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


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _bounds_text(metadata: Sequence[Any]) -> str | None:
    """``>= 0``, ``> 0`` or ``[0, 1)``: the range the bound constraints of a field allow."""
    low = high = None
    for m in metadata:
        if isinstance(m, annotated_types.Gt):
            low = ("(", m.gt)
        elif isinstance(m, annotated_types.Ge):
            low = ("[", m.ge)
        elif isinstance(m, annotated_types.Lt):
            high = (")", m.lt)
        elif isinstance(m, annotated_types.Le):
            high = ("]", m.le)
    if low and high:
        return f"lie in {low[0]}{low[1]}, {high[1]}{high[0]}"
    if low:
        return f"be {'>' if low[0] == '(' else '>='} {low[1]}"
    if high:
        return f"be {'<' if high[0] == ')' else '<='} {high[1]}"
    return None


_EXPECTED = {
    "finite_number": "a finite number",
}
_BOUNDS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def config_error(
    err: pydantic.ValidationError, root: Any, source: str | None = None, prefix: str = ""
) -> ConfigError:
    """The first error of ``err`` (validating ``root``) as one line: key path, value, file.

    An unknown key lists the keys its section accepts (and a close match); a value of the
    wrong type names the type the key takes; an unknown ``name`` of a section whose name picks
    its class lists the names.
    """
    error = err.errors(include_url=False)[0]
    if error["type"] == "missing" and error["loc"] and isinstance(error["loc"][-1], int):
        # a tuple given too few values: pydantic names the first missing item
        error = {**error, "type": "too_short", "loc": error["loc"][:-1]}
    keys: list[str] = [prefix] if prefix else []
    tp, owner, field_name = root, None, None
    loc = list(error["loc"])
    for i, part in enumerate(loc):
        variants = union_variants(tp)
        tp = _strip(tp)
        if variants is not None and isinstance(part, str) and part in variants:
            tp = variants[part]  # the tag of a tagged union: not a key
            continue
        if i + 1 < len(loc) and loc[i + 1] == "[key]":
            tp = (get_args(tp) or (Any,))[0]  # a mapping's key, not a key path
            keys[-1] += " (a key)"
            break
        if isinstance(part, int) and get_origin(tp) in (list, tuple):
            args = get_args(tp)
            tp = args[0] if get_origin(tp) is list or args[-1] is Ellipsis else args[part]
            keys[-1] += f"[{part}]"
        elif dataclasses.is_dataclass(tp):
            owner, field_name = tp, str(part)
            tp = _hints(tp).get(str(part), Any)
            keys.append(str(part))
        elif get_origin(tp) is dict or tp is dict:
            tp = (get_args(tp) or (Any, Any))[1]
            keys.append(str(part))
        elif get_origin(tp) in (Union, types.UnionType):
            continue  # a member of a plain union (float | None): not a key
        else:
            keys.append(str(part))
    key = ".".join(keys)
    kind, value = error["type"], error.get("input")
    section = ".".join(keys[:-1])
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        accepted = [f.name for f in dataclasses.fields(owner) if f.init] if owner else []
        close = difflib.get_close_matches(keys[-1], accepted, n=1)
        return ConfigError(
            f"unknown key {_where(key, source)}; "
            f"{'section ' + repr(section) if section else 'the top level'} accepts: "
            f"{', '.join(accepted)}" + (f" (did you mean {close[0]!r}?)" if close else "")
        )
    if kind == "union_tag_invalid":
        names = _expected_tags(error)
        name = error["ctx"]["tag"]
        close = difflib.get_close_matches(str(name), names, n=3)
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        return ConfigError(
            f"{_where(key + '.name', source)}: unknown {keys[-1] if keys else 'name'} "
            f"{name!r}{hint}; choose one of {', '.join(names)}"
        )
    if kind in ("value_error", "assertion_error"):
        message = str(error["ctx"].get("error", error["msg"])) if "ctx" in error else error["msg"]
        if field_name is None or _is_section(tp):
            where = (
                f" (section {key!r}" + (f" in {source})" if source else ")")
                if key
                else (f" (in {source})" if source else "")
            )
            return ConfigError(f"{message}{where}")
        return ConfigError(f"{_where(key, source)}: {message}")
    if kind in _BOUNDS:
        # the field's whole range ([0, 1)) when the constraint is on the field itself, else
        # the bound that failed (an item of a list, a member of `X | None`)
        info = getattr(owner, "__pydantic_fields__", {}).get(field_name)
        on_field = error["loc"] and error["loc"][-1] == field_name and info is not None
        ctx = error.get("ctx", {})
        if on_field and _PROBABILITY in info.metadata:
            bounds = "be a probability in [0, 1]"
        else:
            bounds = (_bounds_text(info.metadata) if on_field else None) or _bounds_text(
                [getattr(annotated_types, k.capitalize())(v) for k, v in ctx.items()]
            )
        where = (
            f" (section {section!r}" + (f" in {source})" if source else ")")
            if section
            else (f" (in {source})" if source else "")
        )
        if _strip(_without_none(tp)) is float and type(value) is int:
            value = float(value)  # as the field holds it
        return ConfigError(f"{key} must {bounds}, got {_short(value)}{where}")
    if kind == "literal_error":
        choices = get_args(_strip(tp)) if get_origin(_strip(tp)) is Literal else ()
        listed = ", ".join(map(repr, choices)) if choices else error["ctx"]["expected"]
        # YAML 1.1 read a bare yes/no/on/off/true/false as a bool, which became 'on' / 'off'
        hint = (
            " (YAML reads a bare yes/no/on/off/true/false as a boolean; quote a word you mean)"
            if value in ("on", "off") and value not in choices
            else ""
        )
        return ConfigError(f"{_where(key, source)}: {_short(value)} is not one of {listed}{hint}")
    if kind in ("too_short", "too_long") and get_origin(_strip(tp)) is tuple:
        n = len(get_args(_strip(tp)))
        return ConfigError(
            f"{_where(key, source)}: expected {n} values ({_type_name(tp)}), got {_short(value)}"
        )
    if kind == "too_short" and get_origin(_strip(_without_none(tp))) is list:
        n = error.get("ctx", {}).get("min_length", 1)
        return ConfigError(
            f"{_where(key, source)}: expected at least {n} value{'s' if n != 1 else ''}, "
            f"got {_short(value)}"
        )
    if kind in _EXPECTED:
        return ConfigError(
            f"{_where(key, source)}: expected {_EXPECTED[kind]}, got {_short(value)}"
        )
    expected = _type_name(_without_none(tp) if value is not None else tp)
    return ConfigError(
        f"{_where(key, source)}: expected {expected}, got {_short(value)} ({type(value).__name__})"
    )


def _is_section(tp: Any) -> bool:
    return union_variants(tp) is not None or dataclasses.is_dataclass(_strip(tp))


def _expected_tags(error: Any) -> list[str]:
    return re.findall(r"'([^']*)'", str(error.get("ctx", {}).get("expected_tags", "")))


def _without_none(tp: Any) -> Any:
    tp = _strip(tp)
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


@functools.cache
def _adapter(tp: Any) -> pydantic.TypeAdapter[Any]:
    if dataclasses.is_dataclass(tp):
        return pydantic.TypeAdapter(tp)
    return pydantic.TypeAdapter(tp, config=SECTION_CONFIG)


def coerce(value: Any, tp: Any, key: str, source: str | None = None) -> Any:
    """Check one value against a type annotation as config values are checked.

    For files that are not configs but hold config-like values (band statistics):
    ints are floats, non-finite floats are refused.

    Raises:
        ConfigError: the value does not fit ``tp``; the message names ``key`` and ``source``.
    """
    try:
        return _adapter(tp).validate_python(value)
    except pydantic.ValidationError as err:
        raise config_error(err, tp, source, prefix=key) from None


def _with_section_defaults(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with each sub-section given in part completed from ``cls``'s default for it.

    A sub-section keeps the enclosing default for the keys it does not give (e.g.
    ``ViewsConfig.t2``'s recipe), not the defaults of the sub-section's class.
    """
    defaults = None
    hints = _hints(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        value = data.get(f.name)
        if isinstance(value, Mapping) and dataclasses.is_dataclass(_strip(hints[f.name])):
            defaults = cls() if defaults is None else defaults
            data[f.name] = merge_mappings(to_dict(getattr(defaults, f.name)), value)
    return data


def from_dict(
    cls: type[T], data: Mapping[str, Any] | None, source: str | None = None, prefix: str = ""
) -> T:
    """Build config section ``cls`` (a :func:`section`) from a mapping, strictly.

    Args:
        cls: a config section whose fields all have defaults.
        data: the mapping (e.g. parsed YAML); ``None`` means all defaults.
        source: the file the mapping came from, named in error messages.
        prefix: the dotted key of this section, named in error messages.

    Raises:
        ConfigError: an unknown key (the message lists the known ones), a value of the wrong
            type, or an impossible value.
    """
    data = _with_section_defaults(cls, dict(data or {}))
    try:
        return _adapter(cls).validate_python(data, context={"source": source})  # type: ignore[no-any-return]
    except pydantic.ValidationError as err:
        raise config_error(err, cls, source, prefix) from None


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


def section_fields(tp: Any) -> dict[str, Any] | None:
    """The keys of a section annotation and their annotations (every variant's for a tagged
    union); None for a value."""
    variants = union_variants(tp)
    classes = list(variants.values()) if variants is not None else [_strip(tp)]
    if not all(dataclasses.is_dataclass(c) for c in classes):
        return None
    fields: dict[str, Any] = {}
    for c in classes:
        hints = _hints(c)
        for f in dataclasses.fields(c):
            if f.init:
                fields.setdefault(f.name, hints[f.name])
    return fields
