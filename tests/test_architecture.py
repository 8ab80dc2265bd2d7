"""The package keeps the shape docs/architecture.md draws: every module in one layer of the doc's
layers block, imports pointing down the layers and never round in a cycle (imports inside
functions count too), selftune imports at module top except where the doc says they are lazy, no
private names imported across modules, stage modules independent of one another, and no module
over 500 lines except data tables."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "selftune"
DOC = ROOT / "docs" / "architecture.md"
# Modules that import selftune modules inside functions, on purpose (docs/architecture.md, "Imports"):
# the commands load the stage or tool they run, and the launcher loads the Trainer-based modules.
LAZY_IMPORTERS = {"commands.loop", "commands.results", "commands.tools", "train.launch"}
# Modules that are mostly data (wordings and value pools), allowed past the size limit.
DATA_TABLES = {"data.constraints.ifeval_types", "data.constraints.training_types"}
MAX_LINES = 500


def modules() -> dict[str, Path]:
    """Dotted name below selftune ('selftune' itself for the package) -> file."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        found[".".join(parts) or "selftune"] = path
    return found


MODULES = modules()


def imports_of(path: Path) -> list[tuple[str, str, bool]]:
    """(imported selftune module, imported name, inside a function) for each name `path` imports
    from selftune; `from selftune.data import prompts` counts as the module data.prompts."""
    tree = ast.parse(path.read_text())
    at_top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "selftune":
            base = node.module.removeprefix("selftune").removeprefix(".")
            for alias in node.names:
                submodule = f"{base}.{alias.name}".lstrip(".")
                if submodule in MODULES:
                    found.append((submodule, "", id(node) not in at_top))
                else:
                    found.append((base or "selftune", alias.name, id(node) not in at_top))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "selftune":
                    found.append((alias.name.removeprefix("selftune").removeprefix(".") or "selftune", "", True))
    return found


def graph() -> dict[str, set[str]]:
    return {name: {dep for dep, _, _ in imports_of(path)} - {name} for name, path in MODULES.items()}


def documented_layers() -> list[tuple[str, list[str]]]:
    """The doc's layers block, top layer first: (layer, [entries]); an entry `X/` is package X
    with everything in it, any other entry one module."""
    block = re.search(r"<!-- layers -->\n```\n(.*?)```", DOC.read_text(), re.S)
    assert block, "docs/architecture.md lost its layers block"
    layers = []
    for line in block.group(1).splitlines():
        if line.strip():
            name, entries = re.split(r"\s{2,}", line.strip(), maxsplit=1)
            layers.append((name, [entry.strip() for entry in entries.split(",")]))
    return layers


def layer_of() -> dict[str, int]:
    """Module -> its layer's height (0 = the bottom), placed by its most specific entry."""
    layers = documented_layers()
    placed: dict[str, tuple[int, int]] = {}  # module -> (specificity, height)
    for index, (_, entries) in enumerate(layers):
        height = len(layers) - 1 - index
        for entry in entries:
            package = entry.rstrip("/")
            for module in MODULES:
                if module == package or (entry.endswith("/") and module.startswith(package + ".")):
                    specificity = len(module) if module == package and not entry.endswith("/") else len(package)
                    if module not in placed or specificity > placed[module][0]:
                        placed[module] = (specificity, height)
    return {module: height for module, (_, height) in placed.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(edges.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_documented_layers_place_every_module_and_name_only_real_ones():
    placed = layer_of()
    assert sorted(set(MODULES) - set(placed)) == [], "modules in no layer of docs/architecture.md"
    for _, entries in documented_layers():
        for entry in entries:
            package = entry.rstrip("/")
            assert package in MODULES, f"docs/architecture.md names {entry}, which is not a module of selftune"


def test_the_module_graph_has_no_cycle():
    assert cycles(graph()) == []


def test_imports_point_down_the_layers():
    height = layer_of()
    upward = sorted(
        f"{module} -> {dep}" for module, deps in graph().items() for dep in deps if height[dep] > height[module]
    )
    assert upward == []


def test_selftune_imports_sit_at_module_top_except_the_documented_lazy_ones():
    lazy = sorted(
        f"{module} imports {dep} inside a function"
        for module, path in MODULES.items()
        if module not in LAZY_IMPORTERS
        for dep, _, inside in imports_of(path)
        if inside and module != "selftune"
    )
    assert lazy == []


def test_no_private_name_is_imported_across_modules():
    private = sorted(
        f"{module} imports {dep}.{name}"
        for module, path in MODULES.items()
        for dep, name, _ in imports_of(path)
        if name.startswith("_") and dep != module
    )
    assert private == []


def test_no_stage_module_imports_another():
    stages = {module for module in MODULES if module.startswith("stages.")}
    crossing = sorted(f"{module} -> {dep}" for module in stages for dep in graph()[module] & stages)
    assert crossing == []


def test_no_module_outgrows_the_size_limit_except_data_tables():
    sizes = {module: len(path.read_text().splitlines()) for module, path in MODULES.items()}
    assert {module: size for module, size in sizes.items() if size > MAX_LINES and module not in DATA_TABLES} == {}


def test_the_checks_catch_what_they_guard_against():
    """The cycle finder and the layer rule fail on a graph that breaks them."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    height = layer_of()
    assert height["cli"] > height["stages.sample"] > height["data.records"] > height["errors"]
