"""The package's import graph, read from the source (ast): no cycle, no private name imported across
modules, no function-level import of a jaxprune module except those listed in :data:`LAZY`, and no
import from a lower layer of a higher one (:data:`LAYERS`).

An edge ``a -> b`` is an import statement in module ``a`` that names module ``b`` (``from
jaxprune.x import y`` names ``jaxprune.x.y`` when that is a module, else ``jaxprune.x``). The parent
packages Python initialises on the way are not edges: every module would then depend on
``jaxprune/__init__.py``, which re-exports everything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "jaxprune"

# Function-level imports of jaxprune modules, each kept out of module level for start-up time (the
# `jaxprune` command and `import jaxprune.<light module>` should not pay for jax, flax, tfds or
# orbax before they are needed). (importing module, imported module) -> why.
LAZY: dict[tuple[str, str], str] = {
    ("jaxprune.cli", "jaxprune.config"): "the CLI parses arguments before importing jax",
    ("jaxprune.cli", "jaxprune.data"): "the CLI parses arguments before importing jax",
    ("jaxprune.cli", "jaxprune.errors"): "the CLI parses arguments before importing jax",
    ("jaxprune.cli", "jaxprune.experiment"): "the CLI parses arguments before importing jax",
    ("jaxprune.cli", "jaxprune.harness.results"): "the CLI parses arguments before importing jax",
    ("jaxprune.cli", "jaxprune.hostmem"): "the CLI parses arguments before importing jax",
    ("jaxprune.cli", "jaxprune.sweep.report"): "`report` needs neither jax nor matplotlib up front",
    ("jaxprune.cli", "jaxprune.sweep.best"): "`report --best`: loaded with the report, not at CLI start-up",
    ("jaxprune.cli", "jaxprune.sweep.runner"): "the CLI parses arguments before importing jax",
    ("jaxprune.cli", "jaxprune.sweep.spec"): "the CLI parses arguments before importing jax",
    ("jaxprune.demo", "jaxprune.cli"): "`python -m jaxprune.demo` parses its arguments before jax loads",
    ("jaxprune.sweep.runner", "jaxprune.data"): "`jaxprune report` reads records without jax",
    ("jaxprune.sweep.runner", "jaxprune.experiment"): "`jaxprune report` reads records without jax",
    ("jaxprune.sweep.runner", "jaxprune.sweep.vmapped"): "`jaxprune report` reads records without jax",
    ("jaxprune.train.context", "jaxprune.train.checkpoint"): "orbax takes ~1 s to import",
    ("jaxprune.train.context", "jaxprune.train.parallel"): "a mesh is rarely asked for",
    ("jaxprune.train.context", "jaxprune.errors"): "keeps the context module free of imports",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not MODULES[importer].name == "__init__.py":
        base = base[:-1]
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(name: str, source: str | None = None) -> list[tuple[str, str | None, bool, int]]:
    """``(imported module, imported name or None, at module level, line)`` of each jaxprune import."""
    tree = ast.parse(MODULES[name].read_text() if source is None else source)
    out = []
    top = set(map(id, tree.body))
    # Module level = statements of the module body, including those nested in if/try at top level.
    stack = [n for n in tree.body]
    while stack:
        n = stack.pop()
        if isinstance(n, (ast.If, ast.Try)):
            for child in ast.iter_child_nodes(n):
                if isinstance(child, ast.stmt):
                    top.add(id(child))
                    stack.append(child)
                elif isinstance(child, ast.ExceptHandler):
                    for s in child.body:
                        top.add(id(s))
                        stack.append(s)
    for node in ast.walk(tree):
        at_top = id(node) in top
        if isinstance(node, ast.Import):
            out += [(a.name, None, at_top, node.lineno) for a in node.names if a.name.startswith("jaxprune")]
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(name, node)
            if module.startswith("jaxprune"):
                out += [(module, a.name, at_top, node.lineno) for a in node.names]
    return out


def _target(module: str, item: str | None) -> str:
    if item is not None and f"{module}.{item}" in MODULES:
        return f"{module}.{item}"
    return module


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for name in MODULES:
        for module, item, at_top, _ in _imports(name):
            if at_top:
                target = _target(module, item)
                if target in MODULES and target != name:
                    graph[name].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def _package(module: str) -> str:
    return module if MODULES.get(module, Path()).name == "__init__.py" else module.rsplit(".", 1)[0]


def test_the_import_graph_has_no_cycle():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()))


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_private_name_is_imported_across_modules():
    bad = []
    for name in MODULES:
        for module, item, _, line in _imports(name):
            target = _target(module, item)
            if item is not None and item.startswith("_") and target == module:
                bad.append(f"{name}:{line} imports {item} from {module}")
            # A private module (quant/_tree.py) is for its own package only.
            private = [p for p in target.split(".") if p.startswith("_")]
            if private and not name.startswith(_package(target) + ".") and name != _package(target):
                bad.append(f"{name}:{line} imports the private module {target}")
    assert not bad, "\n".join(bad)


def test_function_level_imports_are_listed():
    found, bad = set(), []
    for name in MODULES:
        for module, item, at_top, line in _imports(name):
            if at_top:
                continue
            target = _target(module, item)
            found.add((name, target))
            if (name, target) not in LAZY:
                bad.append(f"{name}:{line} imports {target} inside a function (not in LAZY)")
    assert not bad, "\n".join(bad)
    stale = sorted(set(LAZY) - found)
    assert not stale, f"LAZY lists imports that no longer exist: {stale}"


@pytest.mark.parametrize("source,expected", [
    ("from jaxprune.models.common import _takes_train\n", [("_takes_train", True)]),
    ("def f():\n    from jaxprune.train.loop import _call\n", [("_call", False)]),
    ("try:\n    import jaxprune.cli\nexcept ImportError:\n    pass\n", [(None, True)]),
])
def test_the_reader_sees_every_import(source, expected):
    assert [(item, top) for _, item, top, _ in _imports("jaxprune.cli", source)] == expected


# The layers, lowest first: core <- train <- harness <- methods <- experiment/sweep <- cli. A module may
# import its own layer or a lower one, never a higher one (function-level imports included: a lazy
# import is still a dependency). Keyed by the first name under ``jaxprune``; a new package must be
# placed here. ``lm`` is built on the train layer and, like the harness, is used only from above.
LAYERS: dict[str, int] = {
    **dict.fromkeys(["allocate", "config", "counts", "data", "dtree", "errors", "hostmem", "masks", "models",
                     "neurons", "paths", "quant", "ranking", "recipes", "results_schema", "scores", "select",
                     "shrink", "structure", "structures", "svm", "wiring", "workdir"], 0),
    "train": 1,
    "harness": 2, "lm": 2,
    "methods": 3,
    "experiment": 4, "sweep": 4,
    "cli": 5, "demo": 5,
}
# The package root re-exports the public API; it sits in the highest layer it re-exports from, so only
# modules at or above that layer (the demo) may import it.
FACADE = "jaxprune"


def _layer(module: str) -> int | None:
    if module == FACADE:
        return max(_layer(_target(m, i)) or 0 for m, i, _, _ in _imports(FACADE))
    return LAYERS.get(module.split(".")[1]) if "." in module else None


def _layer_violations(edges: list[tuple[str, str, int]]) -> list[str]:
    """``importer:line imports target`` for each edge ``(importer, target, line)`` that goes upward."""
    bad = []
    for importer, target, line in edges:
        low, high = _layer(importer), _layer(target)
        if low is not None and high is not None and high > low:
            bad.append(f"{importer}:{line} (layer {low}) imports {target} (layer {high})")
    return bad


def test_every_module_has_a_layer():
    missing = sorted(m for m in MODULES if m != FACADE and _layer(m) is None)
    assert not missing, f"place these in LAYERS: {missing}"


def test_no_layer_imports_a_higher_one():
    edges = [(name, _target(module, item), line) for name in MODULES if name != FACADE
             for module, item, _, line in _imports(name)]
    bad = _layer_violations(edges)
    assert not bad, "\n".join(bad)


def test_the_layer_check_finds_an_upward_import():
    assert _layer_violations([("jaxprune.harness.trainer", "jaxprune.sweep.group_fit", 28)]) == [
        "jaxprune.harness.trainer:28 (layer 2) imports jaxprune.sweep.group_fit (layer 4)"]
    assert _layer_violations([("jaxprune.sweep.vmapped", "jaxprune.train.group", 54)]) == []
    # The root re-exports the train layer, so the train layer may not import it.
    assert len(_layer_violations([("jaxprune.masks", FACADE, 1), ("jaxprune.demo", FACADE, 20)])) == 1
