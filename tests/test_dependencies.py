"""Every third-party module selftune imports at module top is a declared dependency (a fresh
install of a missing one fails at `import selftune`: langdetect once did, on `make demo`)."""

import ast
import pathlib
import re
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Installed with a declared dependency, imported under another name.
COMES_WITH = {"yaml": "pyyaml", "huggingface_hub": "transformers", "pyarrow": "datasets"}


def _module_top_imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / "selftune").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module top only: imports inside functions are the lazy, optional ones
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top != "selftune" and top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_module_top_import_is_a_declared_dependency():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~\[ ;]", spec, maxsplit=1)[0].lower().replace("_", "-") for spec in declared}
    imports = _module_top_imports()
    assert "langdetect" in imports and "torch" in imports  # the scan sees what it must
    missing = {
        module: sorted(files)
        for module, files in imports.items()
        if COMES_WITH.get(module, module).lower().replace("_", "-") not in names
    }
    assert not missing, f"imported at module top but not in pyproject's dependencies: {missing}"
