"""The layering of src/ensemw2s, enforced: a core that never imports kfp, pipelines/, components/ or the
orchestration modules; a CLI that nothing imports; no import cycle (function-level imports included).

The import graph is read from the source with ``ast`` (every ``import``/``from`` anywhere in a module, lazy
ones too), so an import hidden inside a function cannot slip past; the kfp rule is also checked for real by
importing every core module in a fresh interpreter where ``kfp`` cannot be imported.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PKG = SRC / "ensemw2s"
# the only modules allowed to reach up to pipelines/ and components/ (and so to kfp)
ORCHESTRATION = {"ensemw2s.cli", "ensemw2s.local", "ensemw2s.cluster", "ensemw2s.rerun"}
FORBIDDEN_IN_CORE = ("kfp", "pipelines", "components")


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _imports(path: Path, name: str) -> set[str]:
    """Every module name imported anywhere in ``path`` (absolute names; relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            # `from ensemw2s import assets` imports the module ensemw2s.assets
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        graph[name] = {m for m in _imports(path, name) if m in mods and m != name}
    return graph


def test_the_graph_sees_lazy_imports():
    graph = _graph()
    # sanity: the reader finds a function-level import we know of (cli imports cluster inside a function)
    assert "ensemw2s.cluster" in graph["ensemw2s.cli"]
    assert "ensemw2s.config" in graph["ensemw2s.steps.train_expert"]


def test_nothing_imports_the_cli():
    importers = sorted(n for n, deps in _graph().items() if "ensemw2s.cli" in deps)
    assert importers == [], f"modules importing the CLI (it only parses and dispatches): {importers}"


def test_core_never_reaches_up():
    offenders = []
    for name, path in _modules().items():
        if name in ORCHESTRATION:
            continue
        for mod in _imports(path, name):
            top = mod.split(".")[0]
            if top in FORBIDDEN_IN_CORE or mod in ORCHESTRATION:
                offenders.append(f"{name} imports {mod}")
    assert offenders == [], "core modules reaching up to the orchestration layer:\n" + "\n".join(offenders)


def test_no_import_cycle():
    graph = _graph()
    cycles = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == [], "import cycles in src/ensemw2s:\n" + "\n".join(cycles)


@pytest.mark.parametrize("blocked", ["kfp", "pipelines", "components"])
def test_every_core_module_imports_without_the_orchestration_packages(blocked):
    core = sorted(n for n in _modules() if n not in ORCHESTRATION)
    code = (f"import sys; sys.modules[{blocked!r}] = None\n"
            "import importlib\n"
            f"for m in {core!r}:\n"
            "    importlib.import_module(m)\n"
            f"assert sys.modules[{blocked!r}] is None\n"
            "print('ok', len(" + repr(core) + "))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith("ok")
