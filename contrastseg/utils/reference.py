"""The configuration reference: one row per key, from the fields' descriptions.

What ``contrastseg config --reference`` prints and ``docs/configuration.md`` holds (kept in
step with the code by a test): each key with its type, its default and the description of
its field (the docstring under it, :func:`field_docs`).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any

import yaml

from contrastseg.utils.sections import _hints, _type_name, to_dict, union_variants


def field_docs(cls: type) -> dict[str, str]:
    """One line of documentation per field: its description, else the docstring's Attributes.

    A field's description is the docstring under it (``use_attribute_docstrings``). Base
    classes are read first, so a section that subclasses another (new defaults) keeps the
    documentation of the fields it inherits or redeclares.
    """
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if dataclasses.is_dataclass(base):
            docs.update(_attributes_docs(base))
            own = getattr(base, "__pydantic_fields__", {})
            for name in vars(base).get("__annotations__", {}):
                info = own.get(name)
                if info is not None and info.description:
                    docs[name] = " ".join(info.description.split())
    return docs


def _attributes_docs(cls: type) -> dict[str, str]:
    """The ``Attributes:`` entries of ``cls``'s own docstring."""
    docs: dict[str, str] = {}
    doc = cls.__dict__.get("__doc__") or ""
    in_attrs = False
    last = ""
    for line in inspect.cleandoc(doc).splitlines():
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
            elif line.strip() and last:
                docs[last] += " " + line.strip()
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
    hints = _hints(cls)
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
        variants = union_variants(hints[f.name])
        tables = (
            [(f"{f.name}.name: {n}", v()) for n, v in variants.items()]
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
