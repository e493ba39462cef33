"""AtlasSegLib's import structure: no import circles between its modules (function-level imports included, since a
lazy import hides a circle without removing it) and no private name imported from another module (a shared piece
has one public owner). Read from the source with ``ast``: nothing is imported, so this runs in milliseconds."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "AtlasSegLib"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

# Import circles among AtlasSegLib's modules (function-level imports included): none. List one here only with
# the reason it cannot be broken; a circle not listed fails the test.
KNOWN_CYCLES: set = set()

# Private names imported across modules (module, name): none. A name another module needs gets a public name in
# its owner; list one here only with the reason it cannot.
KNOWN_PRIVATE_IMPORTS: set = set()


def _modules() -> dict:
    """Dotted module name below the package (``batch``, ``sub.mod``; ``__init__`` for the package) -> path."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict) -> list:
    """(imported module, imported name or None) for every import of a package module anywhere in the file."""
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    found = []

    def module_of(dotted: str):
        # the longest prefix that is one of our modules (``outputs.SEG_DIR`` -> ``outputs``)
        parts = dotted.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in modules:
                return ".".join(parts[:n])
        return None

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE + "."):
                    target = module_of(alias.name[len(PACKAGE) + 1:])
                    if target:
                        found.append((target, None))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                dotted = ".".join(base + ([node.module] if node.module else []))
            elif node.module == PACKAGE or (node.module or "").startswith(PACKAGE + "."):
                dotted = node.module[len(PACKAGE) + 1:]
            else:
                continue
            for alias in node.names:
                sub = f"{dotted}.{alias.name}" if dotted else alias.name
                if sub in modules:  # ``from . import roinames``: the submodule itself
                    found.append((sub, None))
                else:
                    found.append((module_of(dotted) if dotted else "__init__", alias.name))
    return [(t, n) for t, n in found if t and t != name]


def _graph() -> dict:
    modules = _modules()
    return {name: {t for t, _ in _imports(name, path, modules)} for name, path in modules.items()}


def _cycles(graph: dict) -> list:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_new_import_cycle_among_atlasseglib_modules():
    new = [sorted(c) for c in _cycles(_graph()) if c not in KNOWN_CYCLES]
    assert not new, (f"import circle(s) among AtlasSegLib modules (function-level imports count): {new}; move what "
                     "both need into one of them or a third module")


def test_cycle_finder_sees_function_level_imports():
    # The finder itself must see a circle that only a lazy import closes (as gallery <-> summarize was: gallery
    # now gets what it needs of summarize as arguments).
    graph = {"a": {"b"}, "b": set(), "c": {"d"}, "d": {"e"}, "e": {"c"}}
    assert _cycles(graph) == [frozenset({"c", "d", "e"})]
    modules = _modules()
    lazy = [(t, n) for t, n in _imports("cluster", modules["cluster"], modules)]
    assert ("batch", "segment_case") in lazy  # imported inside a method of cluster.py


def _private_imports(modules: dict) -> set:
    """(importing module, "module.name") for each private name imported from another module."""
    return {(name, f"{target}.{imported}") for name, path in modules.items()
            for target, imported in _imports(name, path, modules)
            if imported and imported.startswith("_") and not imported.startswith("__")}


def test_no_new_private_name_imported_across_modules():
    new = sorted(_private_imports(_modules()) - KNOWN_PRIVATE_IMPORTS)
    assert not new, f"private names imported across AtlasSegLib modules (give each a public owner): {new}"


def test_private_name_finder_sees_lazy_and_subpackage_imports(tmp_path):
    # The rule can fail: a private name imported inside a function, and one imported from a subpackage module into
    # another (cli/x.py from ..batch), are both found; a dunder and a public name are not.
    (tmp_path / "cli").mkdir()
    lazy, sub = tmp_path / "lazy.py", tmp_path / "cli" / "x.py"
    lazy.write_text("def f():\n    from .batch import _row, find_cases\n    from . import __version__\n")
    sub.write_text("from ..batchrecord import _write_summary\n")
    modules = {"lazy": lazy, "cli.x": sub, "batch": ROOT / "batch.py", "batchrecord": ROOT / "batchrecord.py"}
    assert _private_imports(modules) == {("lazy", "batch._row"), ("cli.x", "batchrecord._write_summary")}


def test_batch_paths_share_one_public_bookkeeping_owner():
    # Both batch paths (in-process and Ray) write batch_summary.csv and batch_manifest.json through batchrecord.
    graph = _graph()
    assert "batchrecord" in graph["batch"] and "batchrecord" in graph["cluster"]
