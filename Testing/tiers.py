"""Why a test is expensive, worked out from its code at collection, so the marks never go stale.

A test's tiers come from the code it runs before any assertion of its own: the test function, every fixture in
its fixture closure (``item.fixturenames``: fixtures of fixtures too), its module's ``pytestmark``, and,
transitively, every function or class of the test folder those reference (``_run`` helpers, ``report_cases``,
``chromium_devtools.Browser``...). Library code is not read: a reference to a library callable that runs a network
is itself the evidence. Not seen: a fixture fetched by a name computed at run time (``request.getfixturevalue(
case)``); the CI time rule below catches what that hides.

- ``engine``: runs one of the project's networks: the demo model (``run_demo``, ``atlasseg demo``, ``--model ID``),
  a SegResNet in SuPreM's layout (``small_segresnet``), a batch (``run_batch``), the pipeline (``Segmenter``,
  ``segment``, ``load_model``) unless it is given the tiny predictor (``bone_model``), or the Slicer module's engine
  (``requires_engine``).
- ``subprocess``: starts a process (``subprocess.*``, ``os.system``, a pty, or a library callable that always
  does, ``PROCESS_CALLABLES``): the atlasseg CLI or ``python -c`` pay an interpreter and torch import each (2-5 s
  on two cores), an outside tool its own start.
- ``external``: needs a program outside Python's environment: dciodvfy, plastimatch, Chromium, dcmqi, Ray.
- ``slow``: long for a reason no reference shows (large arrays, many iterations): marked by hand in the test
  file, with a comment saying why.

A tier someone adds by hand (``@pytest.mark.engine``) is kept; detection only adds. Under CI the conftest fails
a test with no tier whose setup or call takes longer than ``QUICK_LIMIT_S``, with its name, so a test this
detection misses is found on the first CI run, not by a slow quick tier months later.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

TESTING = Path(__file__).resolve().parent

TIERS = {
    "engine": "runs one of the project's networks (demo model, SegResNet/SuPreM, the Slicer module's engine)",
    "subprocess": "starts a process (the atlasseg CLI, python -c, an outside tool)",
    "external": "needs a program outside Python's environment: dciodvfy, plastimatch, Chromium, dcmqi or Ray",
    "slow": "long for a reason its code does not show; marked by hand with a comment",
}
REPRESENTATIVE = "quick_representative"
# Under CI, the most a test with no tier may take (setup or call); ATLASSEG_QUICK_LIMIT_S for test_tiers' own check.
QUICK_LIMIT_S = float(os.environ.get("ATLASSEG_QUICK_LIMIT_S", "5"))

# Library and test-helper callables ("module.qualname") whose use means a real network runs.
ENGINE_CALLABLES = {
    "AtlasSegLib.demo.run_demo",  # the demo model on a phantom
    "AtlasSegLib.batch.run_batch",  # a model over a folder of cases
    "models_for_tests.small_segresnet",  # a SegResNet in SuPreM's layout
}
# The pipeline with whatever model it is given: a real network, unless the code uses the tiny predictor instead
# (models_for_tests.bone_model: a TorchScript threshold, the pipeline's stages in seconds).
PIPELINE_CALLABLES = {"AtlasSegLib.pipeline.Segmenter", "AtlasSegLib.pipeline.segment",
                      "AtlasSegLib.networks.load_model"}
TINY_PREDICTORS = {"models_for_tests.bone_model"}
# A CLI argument that picks a built-in model (the demo model, a SuPreM network): "--model", model_id.
ENGINE_ARGUMENTS = {"--model"}
# CLI commands that always run a built-in model: ``atlasseg demo``.
ENGINE_COMMANDS = {"demo"}
# Marks of the Slicer-module tests that run the engine CLI (in a process the module's runner starts).
ENGINE_NAMES = {"requires_engine": ("engine", "subprocess")}
# Identifiers or strings naming an outside program (substring, case-insensitive).
# Not "dcmqi" itself: ctdata's dcmqi_ct3slice is a series, not the tool.
EXTERNAL_WORDS = ("dciodvfy", "plastimatch", "chromium", "segimage2itk", "itkimage2seg")
# Modules whose use means an outside runtime (Ray's raylet and GCS processes).
EXTERNAL_MODULES = {"ray"}
EXTERNAL_CALLABLES = {"AtlasSegLib.cluster.import_ray"}
# CLI arguments that start or join Ray: atlasseg batch --workers N / --ray-address.
EXTERNAL_ARGUMENTS = {"--workers", "--ray-address"}
# Library callables that always start a process of their own (the Slicer module's runner launches it, so the
# test's code shows no subprocess call): the dependency check imports the whole closure in a fresh interpreter.
PROCESS_CALLABLES = {"AtlasSegModule.AtlasSegDependencies.smokeTest",
                     "AtlasSegModule.AtlasSegDependencies.installRequirements"}
SPAWNING = {
    "subprocess": {"run", "Popen", "call", "check_call", "check_output", "getoutput", "getstatusoutput"},
    "os": {"system", "popen", "spawnv", "spawnvp", "spawnl", "spawnlp", "execv", "execvp", "forkpty"},
    "pty": {"spawn", "fork"},
    "asyncio": {"create_subprocess_exec", "create_subprocess_shell"},
    "multiprocessing": {"Process", "Pool", "get_context"},
}


def _in_testing(obj) -> bool:
    try:
        path = inspect.getsourcefile(obj)
    except TypeError:
        return False
    return path is not None and Path(path).resolve().is_relative_to(TESTING) and Path(path).name != "tiers.py"


def _outside_calls(node):
    """``node`` and its descendants, not entering calls."""
    yield node
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, ast.Call):
            yield from _outside_calls(child)


def _qualname(obj) -> str:
    module = getattr(obj, "__module__", None) or ""
    return f"{module}.{getattr(obj, '__qualname__', '')}"


class _Reader:
    """Evidence of one object's source (function, class or module of the test folder)."""

    def __init__(self, obj, *, only_pytestmark: bool = False):
        self.obj = obj
        self.tiers: set = set()
        self.why: dict = {}
        self.follow: list = []
        if isinstance(obj, types.ModuleType):
            self.namespace = vars(obj)
        elif isinstance(obj, type):
            self.namespace = vars(sys.modules.get(obj.__module__, types.ModuleType("?")))
        else:
            self.namespace = getattr(obj, "__globals__", {})
        try:
            source = inspect.getsource(obj)
            tree = ast.parse(textwrap.dedent(source))
        except (OSError, TypeError, SyntaxError):  # no source, or a lambda's line that is not a statement
            return
        if only_pytestmark:  # a module: only its ``pytestmark = ...`` (marks of every test in it)
            tree = ast.Module([n for n in tree.body if isinstance(n, ast.Assign)
                               and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in n.targets)], [])
        self.local = self._local_imports(tree)
        # A word compared with or joined into a path is data, not a run: command[:7] == [..., "--model"],
        # tmp_path / "demo".
        # Docstrings and other bare strings are prose ("Without plastimatch: ...").
        # (but a call inside the comparison is a run: assert main(["demo", ...]) == 0).
        self.inert = {id(c) for n in ast.walk(tree) if isinstance(n, (ast.Compare, ast.BinOp))
                      for c in _outside_calls(n) if isinstance(c, ast.Constant)}
        self.inert |= {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}
        self.called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
        # A command word counts where it is the command of an argv list: main(["demo", ...]), [*CLI, "demo", ...]
        # (not mktemp("demo"), tmp_path / "demo").
        self.commands = set()
        for n in ast.walk(tree):
            if isinstance(n, (ast.List, ast.Tuple)):
                first = next((e for e in n.elts if not isinstance(e, ast.Starred)), None)
                if isinstance(first, ast.Constant):
                    self.commands.add(id(first))
        for node in ast.walk(tree):
            self._visit(node)

    @staticmethod
    def _local_imports(tree) -> dict:
        """Names bound by imports inside the function (``from AtlasSegLib.demo import run_demo`` in a fixture)."""
        names = {}
        for node in ast.walk(tree):
            try:
                if isinstance(node, ast.Import):
                    for a in node.names:
                        names[(a.asname or a.name).split(".")[0]] = importlib.import_module(a.name.split(".")[0])
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    module = importlib.import_module(node.module)
                    for a in node.names:
                        if hasattr(module, a.name):
                            names[a.asname or a.name] = getattr(module, a.name)
                        else:
                            names[a.asname or a.name] = importlib.import_module(f"{node.module}.{a.name}")
            except Exception:  # an optional module (ray) missing here: a name that resolves to nothing
                continue
        return names

    def _resolve(self, node):
        if isinstance(node, ast.Name):
            if node.id in self.local:
                return self.local[node.id]
            return self.namespace.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self._resolve(node.value)
            if isinstance(base, (types.ModuleType, type)):
                return getattr(base, node.attr, None)
        return None

    def _add(self, tier: str, why: str) -> None:
        self.tiers.add(tier)
        self.why.setdefault(tier, why)

    def _visit(self, node) -> None:
        if isinstance(node, (ast.Name, ast.Attribute)):
            name = node.id if isinstance(node, ast.Name) else node.attr
            for tier in ENGINE_NAMES.get(name, ()):
                self._add(tier, name)
            if any(w in name.lower() for w in EXTERNAL_WORDS):
                self._add("external", name)
            obj = self._resolve(node)
            if obj is None:
                return
            if isinstance(node, ast.Attribute):
                base = self._resolve(node.value)
                if isinstance(base, types.ModuleType) and node.attr in SPAWNING.get(base.__name__, ()):
                    self._add("subprocess", f"{base.__name__}.{node.attr}")
            if isinstance(obj, types.ModuleType) and obj.__name__.split(".")[0] in EXTERNAL_MODULES:
                self._add("external", obj.__name__)
            if callable(obj) or isinstance(obj, types.ModuleType):
                qual = _qualname(obj) if not isinstance(obj, types.ModuleType) else obj.__name__
                if qual in ENGINE_CALLABLES:
                    self._add("engine", qual)
                if qual in PIPELINE_CALLABLES and id(node) in self.called:  # not Segmenter._to_input_grid
                    self._add("pipeline", qual)
                if qual in TINY_PREDICTORS:
                    self._add("tiny", qual)
                if qual in EXTERNAL_CALLABLES:
                    self._add("external", qual)
                if obj is subprocess.run or obj is subprocess.Popen or qual in PROCESS_CALLABLES:
                    self._add("subprocess", qual)
            # Functions and classes of the test folder are read in turn; a module is not (only the names used
            # from it: ``review_scene.makeReviewScene`` resolves to the function).
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and _in_testing(obj):
                self.follow.append(obj)
            elif isinstance(obj, (list, tuple)):  # CLI = [...], DEMO = ["--model", "atlasseg-demo"]
                self._constants(obj, name)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in self.inert:
            self._constants([node.value], repr(node.value), command=id(node) in self.commands)

    def _constants(self, values, where: str, *, command: bool = False) -> None:
        values = [v for v in values if isinstance(v, str)]
        for value in values:
            if value in ENGINE_ARGUMENTS or (command and value in ENGINE_COMMANDS):
                self._add("engine", f"argument {value!r}")
            if value in EXTERNAL_ARGUMENTS:
                self._add("external", f"argument {value!r}")
            if any(w in value.lower() for w in EXTERNAL_WORDS):
                self._add("external", where)


_READERS: dict = {}


def _reader(obj) -> _Reader:
    key = id(obj)
    if key not in _READERS:  # the object kept alive with it: its id stays its own
        _READERS[key] = (obj, _Reader(obj, only_pytestmark=isinstance(obj, types.ModuleType)))
    return _READERS[key][1]


def evidence(roots) -> dict:
    """tier -> the first reference that put it there (for a message), over ``roots`` and all they reach."""
    found: dict = {}
    seen: set = set()
    todo = [inspect.unwrap(r) for r in roots]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        r = _reader(obj)
        for tier in r.tiers:
            found.setdefault(tier, f"{getattr(obj, '__qualname__', getattr(obj, '__name__', obj))}: {r.why[tier]}")
        todo.extend(r.follow)
    # The pipeline runs a real network unless the tiny predictor is what it is given.
    pipeline, tiny = found.pop("pipeline", None), found.pop("tiny", None)
    if pipeline and not tiny:
        found.setdefault("engine", pipeline)
    return found


def item_roots(item) -> list:
    """The test function and the functions of every fixture it uses (its closure), from the test folder."""
    roots = []
    module = getattr(item, "module", None)
    if module is not None and _in_testing(module):
        roots.append(module)  # its pytestmark only
    function = getattr(item, "function", None) or getattr(item, "obj", None)
    if function is not None:
        roots.append(function)
        cls = getattr(item, "cls", None)
        if cls is not None:
            roots.append(cls)  # setUp / setup_method and the class's helpers
    info = getattr(item, "_fixtureinfo", None)
    for name in getattr(item, "fixturenames", ()):
        defs = info.name2fixturedefs.get(name) if info is not None else None
        if not defs:
            continue
        func = getattr(defs[-1], "func", None)
        func = getattr(func, "__wrapped__", func)
        if func is not None and _in_testing(func):
            roots.append(func)
    return roots


def item_tiers(item) -> dict:
    return evidence(item_roots(item))


def marker_lines() -> list:
    """For pyproject's ``markers`` (kept in step by test_tiers)."""
    return [f"{name}: {text}" for name, text in TIERS.items()] + [
        f"{REPRESENTATIVE}: runs in make test-quick although it has a tier (one per tier)"]


def quick_expression() -> str:
    return f"not ({' or '.join(TIERS)}) or {REPRESENTATIVE}"


def is_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")
