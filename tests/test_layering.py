"""The import graph of the four packages, read from their source (every import, lazy ones too):
the torch-free runtime reaches into ``training`` / ``export`` only through the torch backend, and
no module imports itself back through others."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("omg_rt", "training", "export", "kernels", "benchmarks")
# the torch backend runs a checkpoint's own model: the one arrow from the runtime into training
TORCH_BACKEND = "omg_rt.backends.torch"


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imports(path: Path, *, top_level: bool) -> set[str]:
    """Our modules ``path`` imports at run time (never those under ``if TYPE_CHECKING``): all of
    them, or only those its module body runs when it is imported."""
    tree = ast.parse(path.read_text(), str(path))
    nodes, found = list(tree.body), set()
    while nodes:
        node = nodes.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            nodes.extend(node.orelse)
            continue
        if not top_level:
            nodes.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & set(MODULES)
            found |= submodules or {node.module}
    return found & set(MODULES)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_the_runtime_reaches_training_and_export_only_through_the_torch_backend():
    arrows = sorted(
        f"{module} -> {target}"
        for module, path in MODULES.items() if module.split(".")[0] == "omg_rt"
        for target in _imports(path, top_level=False)
        if target.split(".")[0] in ("training", "export") and module != TORCH_BACKEND)
    assert arrows == []
    assert any(t.startswith("training.") for t in _imports(MODULES[TORCH_BACKEND],
                                                           top_level=False))


@pytest.mark.parametrize("top_level", [True, False], ids=["at-import", "lazy-too"])
def test_no_module_imports_itself_back(top_level):
    graph = {module: _imports(path, top_level=top_level) for module, path in MODULES.items()}
    if not top_level:  # the runtime's torch backend -> training -> the runtime is the one loop
        graph[TORCH_BACKEND] = {t for t in graph[TORCH_BACKEND] if not t.startswith("training")}
    assert _cycle(graph) is None
