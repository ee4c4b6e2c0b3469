"""The layers point one way: foundation (llm_twin, the generated twin protos) <- services <-
training / operators <- the application shell (twin_cli). Every import counts, also the ones inside
functions. And nothing imports itself back through others: no cycle between packages, and none
between modules (a module-level cycle works only while every import in it stays inside a function)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RANK = {"llm_twin": 0, "twin": 0, "services": 1, "training": 2, "operators": 2, "twin_cli": 3}
SIBLINGS_APART = {("training", "operators"), ("operators", "training")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Absolute names of every project module or package the file imports."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names}
    return {f for f in found if f.split(".")[0] in RANK}


def violations(files: dict[str, set[str]]) -> list[str]:
    out = []
    for module, targets in files.items():
        top = module.split(".")[0]
        for target in targets:
            other = target.split(".")[0]
            if RANK[other] > RANK[top] or (top, other) in SIBLINGS_APART:
                out.append(f"{module} imports {target}")
    return sorted(out)


def project_files() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for top in RANK for p in (ROOT / top).rglob("*.py")}


def unit(name: str) -> str:
    """The package a module belongs to, for the cycle check: services.retrieval, llm_twin.features,
    llm_twin (its top-level modules), twin_cli ..."""
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and (ROOT / parts[0] / parts[1]).is_dir() else parts[0]


def cycles(files: dict[str, set[str]]) -> list[list[str]]:
    graph: dict[str, set[str]] = {}
    for module, targets in files.items():
        for target in targets:
            a, b = unit(module), unit(target)
            if a != b:
                graph.setdefault(a, set()).add(b)
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    return found


def module_cycles(files: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of modules (each import resolved to the module it loads; a
    module's own parent packages do not count: Python has them loaded before the module runs)."""
    modules = set(files)

    def resolve(target: str) -> str:
        while target and target not in modules:
            target = target.rsplit(".", 1)[0] if "." in target else ""
        return target

    graph = {m: {r for t in targets if (r := resolve(t)) and r != m and not m.startswith(r + ".")}
             for m, targets in files.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def strong(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def test_no_module_cycles():
    assert module_cycles(project_files()) == []


def test_the_module_check_finds_the_cycle_it_is_for():
    """The cycle this check was added for: core -> transformers_backend -> sampling -> core."""
    old = {"services.generation.core": {"services.generation.transformers_backend"},
           "services.generation.transformers_backend": {"services.generation.sampling"},
           "services.generation.sampling": {"services.generation.core.MAX_SEED", "services.generation"},
           "services.generation": set()}
    assert module_cycles(old) == [["services.generation.core", "services.generation.sampling",
                                   "services.generation.transformers_backend"]]
    package_import = {"services.generation.engines": {"services.generation.engines.transformers"},
                      "services.generation.engines.transformers": {"services.generation.engines.transformers.engine"},
                      "services.generation.engines.transformers.engine": {"services.generation.engines.transformers"}}
    assert module_cycles(package_import) == []  # a module importing its own package is no cycle


def test_no_layer_imports_one_above_it():
    assert violations(project_files()) == []


def test_no_package_cycles():
    assert cycles(project_files()) == []


def test_the_checks_catch_what_they_are_for():
    assert violations({"llm_twin.config": {"services.retrieval.store"}}) == [
        "llm_twin.config imports services.retrieval.store"]
    assert violations({"services.generation.server": {"training.registry"}}) != []
    assert violations({"operators.twinmodel.spec": {"training.config"}}) != []
    assert violations({"twin_cli.main": {"services.gateway", "training.pipeline", "llm_twin"}}) == []
    loop = {"services.retrieval.server": {"llm_twin.features.index"},
            "llm_twin.features.index": {"services.retrieval.store"}}
    assert cycles(loop) and set(cycles(loop)[0]) == {"services.retrieval", "llm_twin.features"}


def test_the_foundation_holds_no_application_shell():
    assert not [p.name for p in (ROOT / "llm_twin").glob("*.py")
                if p.stem in ("cli", "demo", "bench", "serving", "app")]
