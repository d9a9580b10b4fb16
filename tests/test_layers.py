"""The house's layering: no import cycles between ens's modules, and task names only in the task modules."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ensemble"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path, modules: set[str]) -> set[str]:
    """Modules imported when ``path`` is imported: module-level statements (not inside functions, and not
    under ``if TYPE_CHECKING``). Importing ``a.b.c`` imports ``a`` and ``a.b`` first, except where those are
    the importer's own packages (already being imported); ``from . import name`` of a name defined in the
    package's ``__init__`` is a real import of the package."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in modules else base)

    visit(ast.parse(path.read_text()).body)
    own = {".".join(name.split(".")[:i]) for i in range(1, len(name.split(".")))}
    out = set()
    for mod in found:
        parts = mod.split(".")
        out.add(mod)
        out.update(p for p in (".".join(parts[:i]) for i in range(1, len(parts))) if p not in own)
    return out


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: {d for d in _top_level_imports(p, set(modules)) if d in modules and d != m} for m, p in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_the_graph_sees_real_imports():
    graph = _graph()
    assert "ensemble.store" in graph["ensemble.fusion.core"]
    assert "ensemble.tasks" in graph["ensemble.store"]
    assert "ensemble.fusion.core" in graph["ensemble.fusion.summary"]
    assert "ensemble.fusion" in graph["ensemble.reporting.build"]  # importing a submodule imports its package


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_a_cycle_is_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_code_outside_the_task_modules_branches_on_a_task_name():
    """Comparisons with a task's name (``== "segmentation"``, ``.task == ...``) live in ensemble/tasks only."""
    pattern = re.compile(
        r"""(==|!=|\bin)\s*\(?\s*["'](classification|segmentation)["']|["'](classification|segmentation)["']\s*(==|!=)"""
    )
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.is_relative_to(PACKAGE / "tasks"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    assert offenders == []


def test_no_api_name_is_shadowed_by_a_submodule():
    """``import ensemble as ens; ens.train(...)``: importing ``ensemble.X`` binds X on the package, so no public
    function of the API may share its name with a module of the package."""
    import pkgutil

    import ensemble

    modules = {m.name for m in pkgutil.iter_modules(ensemble.__path__)}
    assert modules & set(ensemble.__all__) == set()
    assert {"fuse", "predict", "report", "train"} <= set(ensemble.__all__)


def test_the_package_re_exports_exactly_the_api():
    """``ensemble/__init__.py`` names the API without importing it (``import ensemble`` stays instant): the two
    lists must agree, and every name must resolve to the API's own function."""
    import ensemble
    from ensemble import api

    assert set(ensemble.__all__) - {"__version__"} == set(api.__all__)
    assert all(getattr(ensemble, name) is getattr(api, name) for name in api.__all__)
