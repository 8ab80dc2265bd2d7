"""docs/architecture.md shows the module graph as it is, and stage modules stay independent."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGE_MODULES = {"prompts", "sample", "sft_data", "sft", "pairs", "dpo", "evaluate", "report"}


def imports() -> dict[str, set[tuple[str, str]]]:
    """module -> {(imported selftune module, imported name)}, top-level and inside functions."""
    found: dict[str, set[tuple[str, str]]] = {}
    for path in sorted((ROOT / "selftune").glob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("selftune."):
                names |= {(node.module.split(".")[1], alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module == "selftune":  # from selftune import dpo
                names |= {(alias.name, "") for alias in node.names}
        found[path.stem] = {(module, name) for module, name in names if module != path.stem}
    return found


def test_the_documented_module_graph_is_the_code():
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"<!-- module graph -->\n```\n(.*?)```", text, re.S)
    assert block, "docs/architecture.md lost its module graph block"
    documented = {}
    for line in block.group(1).splitlines():
        module, _, deps = line.partition("->")
        documented[module.strip()] = {d.strip() for d in deps.split(",") if d.strip()}
    actual = {module: {dep for dep, _ in names} for module, names in imports().items() if module != "__init__"}
    assert documented == actual


def test_no_stage_module_imports_another_stage_or_a_private_name():
    for module, names in imports().items():
        private = sorted(f"{dep}.{name}" for dep, name in names if name.startswith("_"))
        assert not private, f"{module} imports private names {private}"
        if module in STAGE_MODULES:
            stages = sorted({dep for dep, _ in names} & STAGE_MODULES)
            assert not stages, f"stage module {module} imports stage modules {stages}"
