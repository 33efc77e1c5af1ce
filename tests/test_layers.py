"""The package's layers, read from every module's imports (module-level and inside functions):

    errors, version, devices < data, models, guides < inference, plots < spec, runs
    < experiments < cli

No import runs up a layer and no module imports one that (directly or not) imports it back.
"""

import ast
from pathlib import Path

import aevb

PACKAGE = Path(aevb.__file__).parent

#: edges that still break a rule, each with the issue that removes it (none left: grids
#: build RunSpecs instead of ``aevb train`` command lines)
KNOWN: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from aevb.x import y`: the module aevb.x.y if there is one, else aevb.x
                targets = [
                    f"{node.module}.{a.name}"
                    if f"{node.module}.{a.name}" in modules
                    else node.module
                    for a in node.names
                ]
            assert not (isinstance(node, ast.ImportFrom) and node.level), f"{name}: relative"
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "aevb"


def test_the_graph_sees_the_imports():
    graph = _import_graph()
    assert "aevb.inference.evaluate" in graph["aevb.inference.loop"]
    assert "aevb.inference.rundir" in graph["aevb.inference.mcem"]  # `from x import module`


def test_no_import_runs_up_a_layer():
    # the rules; data, models and guides form one layer (fa-synthetic is drawn
    # from a factor-analysis model)
    low = {"inference", "experiments", "cli", "plots", "spec", "runs"}
    forbidden = {
        "data": low,
        "models": low,
        "guides": low,
        "version": {"data", "models", "guides", "errors"} | low,
        # Pyro's non-public names, below everything that uses them
        "pyro_compat": {"data", "models", "guides", "errors", "devices", "registry"} | low,
        "errors": {"data", "models", "guides", "devices"} | low,
        "devices": {"data", "models", "guides"} | low,
        "inference": {"experiments", "cli", "spec", "runs"},
        "plots": {"experiments", "cli", "spec", "runs"},
        "spec": {"experiments", "cli"},
        "runs": {"experiments", "cli"},
        "experiments": {"cli"},
    }
    bad = sorted(
        (a, b)
        for a, targets in _import_graph().items()
        for b in targets
        if _layer(b) in forbidden.get(_layer(a), set()) and (a, b) not in KNOWN
    )
    assert not bad, bad


def test_only_the_console_entry_point_imports_the_cli():
    importers = sorted(
        a for a, targets in _import_graph().items() if "aevb.cli" in targets and a != "aevb.cli"
    )
    assert importers == sorted(a for a, b in KNOWN if b == "aevb.cli")


def test_no_import_cycles():
    graph = {
        a: {b for b in targets if (a, b) not in KNOWN} for a, targets in _import_graph().items()
    }
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles
