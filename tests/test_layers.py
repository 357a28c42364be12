"""The package's import layers: no import circle, no import from a lower layer to a higher one.

The imports are read from the source with :mod:`ast` (nothing is imported, so no import-time
side effect can hide or add an edge), every ``import contrastseg...`` and
``from contrastseg... import ...`` anywhere in a file: a late import inside a function
counts like one at the top, since it ties the two modules together just the same.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "contrastseg"

#: The layer order, lowest first: a module may import modules of its own layer and of lower
#: ones. ``<root>`` is ``contrastseg/__init__.py``, the Python API (it loads
#: ``load_pretrained`` lazily).
LAYERS: tuple[frozenset[str], ...] = tuple(
    frozenset(layer.split())
    for layer in (
        "utils",  # device, distributed helpers, YAML shim, weights-file integrity
        "data augment losses metrics",  # each on utils alone
        "models inference",  # networks; sliding-window prediction over a network
        "methods",  # self-supervised methods: models + losses + augment
        "config",  # the top-level config assembled from every section
        "train",  # the engines
        "deploy",  # ONNX export of a fine-tuned segmenter (reads it through train.evaluate)
        "api",  # the Python API: one function per subcommand
        "cli",  # the command line, a thin layer over the API
        "<root>",
    )
)
#: Names lower layers may import from the package root: it defines them without importing
#: anything of the package at import time (checked below).
ROOT_CONSTANTS = frozenset({"__version__"})


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def area(module: str) -> str:
    """``contrastseg.train.loop`` -> ``train``; ``contrastseg`` -> ``<root>``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "<root>"


def layer_of(module: str) -> int:
    found = [i for i, layer in enumerate(LAYERS) if area(module) in layer]
    assert len(found) == 1, f"{module}: its area {area(module)!r} is in {len(found)} layers"
    return found[0]


def _target(name: str) -> str:
    """The package module an import of ``name`` executes (its deepest existing prefix)."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def imports(path: Path) -> Iterator[tuple[str, int, ast.AST]]:
    """``(imported module, line, node)`` for every package import in a file."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "contrastseg":
                    yield _target(alias.name), node.lineno, node
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: a relative import"
            if node.module is None or node.module.split(".")[0] != "contrastseg":
                continue
            for alias in node.names:
                if node.module == "contrastseg" and alias.name in ROOT_CONSTANTS:
                    continue
                full = f"{node.module}.{alias.name}"  # a submodule, or a name in a module
                yield (full if full in MODULES else _target(node.module)), node.lineno, node


def import_graph() -> nx.DiGraph:
    """Modules as nodes, one edge per importing -> imported pair, with the lines."""
    graph = nx.DiGraph()
    graph.add_nodes_from(MODULES)
    for module, path in MODULES.items():
        for target, line, _ in imports(path):
            if target != module:
                where = f"{path.relative_to(PACKAGE.parent)}:{line}"
                if graph.has_edge(module, target):
                    graph.edges[module, target]["lines"].append(where)
                else:
                    graph.add_edge(module, target, lines=[where])
    return graph


def circles(graph: nx.DiGraph) -> list[str]:
    """One line per import circle (a strongly connected set of modules): its modules, and one
    cycle through them with the line of each import."""
    found = []
    for component in nx.strongly_connected_components(graph):
        if len(component) < 2:
            continue
        cycle = nx.find_cycle(graph.subgraph(component), source=min(component))
        path = " -> ".join(f"{a} ({graph.edges[a, b]['lines'][0]})" for a, b in cycle)
        found.append(f"{', '.join(sorted(component))}: e.g. {path} -> {cycle[0][0]}")
    return sorted(found)


def upward(graph: nx.DiGraph) -> list[str]:
    """One line per import from a lower layer to a higher one."""
    return sorted(
        {
            f"{line}: {a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
            for a, b, lines in graph.edges(data="lines")
            if layer_of(b) > layer_of(a)
            for line in lines
        }
    )


def test_every_area_has_one_layer():
    areas = {area(m) for m in MODULES}
    listed = set().union(*LAYERS)
    assert areas == listed, f"areas without a layer: {areas - listed}; stale: {listed - areas}"
    for module in MODULES:
        layer_of(module)


def test_root_defines_its_constants_without_importing_the_package():
    # lower layers import __version__ from the root, which must not pull in a higher layer
    tree = ast.parse(MODULES["contrastseg"].read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
    assert not [name for name in names if name.split(".")[0] == "contrastseg"], names
    assigned = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets}
    assert ROOT_CONSTANTS <= assigned


def test_no_import_circle():
    found = circles(import_graph())
    assert not found, "import circles:\n" + "\n".join(found)


def test_no_upward_import():
    found = upward(import_graph())
    assert not found, "imports from a lower layer to a higher one:\n" + "\n".join(found)


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """A package of three modules in layers utils < models < train, to test the checks."""

    def build(sources: dict[str, str]) -> nx.DiGraph:
        for name, text in sources.items():
            path = tmp_path / "contrastseg" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "contrastseg")
        modules = {module_name(p): p for p in sorted((tmp_path / "contrastseg").rglob("*.py"))}
        monkeypatch.setattr(sys.modules[__name__], "MODULES", modules)
        return import_graph()

    return build


def test_checks_find_a_late_circle_and_an_upward_import(fake_package):
    graph = fake_package(
        {
            "__init__.py": "__version__ = '0'\n",
            "utils/__init__.py": "",
            "utils/a.py": "def f():\n    from contrastseg.train import loop\n",
            "models/__init__.py": "",
            "models/b.py": "from contrastseg import __version__\nimport contrastseg.utils.a\n",
            "train/__init__.py": "",
            "train/loop.py": "from contrastseg.models.b import x\nfrom contrastseg.utils import a\n",
        }
    )
    (circle,) = circles(graph)  # one circle, found though one of its imports is late
    assert circle.startswith("contrastseg.models.b, contrastseg.train.loop, contrastseg.utils.a: ")
    assert "contrastseg.utils.a (contrastseg/utils/a.py:2)" in circle
    # __version__ from the root is no edge; models.b -> utils.a and loop -> models.b go down
    assert upward(graph) == [
        "contrastseg/utils/a.py:2: contrastseg.utils.a (layer 0) imports "
        "contrastseg.train.loop (layer 5)"
    ]
