"""The package's import graph, read from the source (imports inside functions included): no
cycle anywhere, and the engine imports nothing of the layers above it and knows no flags."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hyperface_jax"
# What the engine (pure JAX) must not import: flags, files, the jobs and CLIs over it.
ABOVE_THE_ENGINE = ("absl", "hyperface_jax.io", "hyperface_jax.jobs", "hyperface_jax.cli",
                    "hyperface_jax.measure", "hyperface_jax.pack")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, modules) -> set[str]:
    """Every module `path` imports, anywhere in it (`from package import module` is an
    import of the module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (the package imports absolutely)"
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names
                         if f"{node.module}.{alias.name}" in modules)
    return found


def _graph():
    modules = _modules()
    return {name: {m for m in _imports(path, modules) if m in modules and m != name}
            for name, path in modules.items()}, modules


def _cycle(graph) -> list[str] | None:
    """One import cycle of `graph`, or None (depth-first search)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_package_has_no_import_cycle():
    graph, _ = _graph()
    assert "hyperface_jax.engine.kernels" in graph["hyperface_jax.engine.search"]  # reads imports
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_a_cycle_is_found_when_there_is_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_the_engine_imports_nothing_above_it_and_raises_no_flag_errors():
    _, modules = _graph()
    engine = {name: path for name, path in modules.items()
              if name.startswith("hyperface_jax.engine")}
    assert len(engine) >= 10
    for name, path in engine.items():
        imported = _imports(path, modules)
        bad = sorted(m for m in imported
                     if any(m == p or m.startswith(p + ".") for p in ABOVE_THE_ENGINE))
        assert not bad, (name, bad)
        tree = ast.parse(path.read_text())
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        assert "InputError" not in names, name
        strings = [n.value for n in ast.walk(tree)
                   if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        assert not [s for s in strings if "--" in s], (name, [s for s in strings if "--" in s])
