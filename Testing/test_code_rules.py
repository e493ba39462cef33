"""The code rules a reviewer would otherwise check by eye (issue 23), read from the source with ``ast`` and
``tokenize``: nothing is imported, so the whole file runs in about a second.

* Library modules return data and never print: ``print(`` only in the CLI layer (``AtlasSegLib/cli/``).
* A function-level import (an ``import`` inside a function) says why it is not at the top, in a comment on its line
  or the line before: a lazy import is a decision (startup time, an optional dependency, Slicer's GUI thread), and
  an unexplained one is either a hidden import circle or a leftover.
* No AtlasSegLib function over ``MAX_LINES`` lines unless its docstring says why ("long because ...").

(No private name imported across AtlasSegLib modules, and no import circle: ``test_import_structure.py``.)

Each rule has a test that runs its checker on a small bad snippet, so the rule can fail."""
from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "AtlasSegLib"
SLICER = ROOT / "AtlasSeg"
MAX_LINES = 120
LONG_REASON = "long because"

def _files(root: Path) -> list:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _comment_lines(source: str) -> set:
    """The numbers of the lines that hold a comment."""
    return {tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(source).readline)
            if tok.type == tokenize.COMMENT}


# ------------------------------------------------------------------------------------------------ the checkers
def prints(source: str) -> list:
    """Line numbers of ``print(...)`` calls."""
    return [node.lineno for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"]


def unexplained_imports(source: str) -> list:
    """(line, first imported module) of each function-level import without a reason: a comment on one of its lines
    or on the line right above it. Consecutive imports (blank lines between allowed) form one group that one
    comment above its first import explains, as in::

        # here: numpy and SimpleITK stay out of the parser's start
        import numpy as np
        import SimpleITK as sitk
    """
    tree = ast.parse(source)
    comments = _comment_lines(source)
    missing = []

    def groups(body: list):
        group = []
        for stmt in body:
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                group.append(stmt)
            elif group:
                yield group
                group = []
        if group:
            yield group

    def explained(group: list) -> bool:
        return any(line in comments for stmt in group for line in range(stmt.lineno - (stmt is group[0]),
                                                                             stmt.end_lineno + 1))

    def visit(node, in_function: bool):
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            for child in getattr(node, field, None) or ():
                if not isinstance(child, ast.AST):
                    continue
                inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
                visit(child, inside)
        if in_function:
            for field in ("body", "orelse", "finalbody"):
                body = getattr(node, field, None)
                if isinstance(body, list):
                    for group in groups(body):
                        if not explained(group):
                            missing.append((group[0].lineno, group[0].names[0].name if isinstance(
                                group[0], ast.Import) else f"{'.' * group[0].level}{group[0].module or ''}"))

    visit(tree, False)
    return sorted(missing)


def long_functions(source: str, max_lines: int = MAX_LINES) -> list:
    """(name, lines) of functions longer than ``max_lines`` whose docstring does not say why (LONG_REASON)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            lines = node.end_lineno - first + 1
            if lines > max_lines and LONG_REASON not in " ".join((ast.get_docstring(node) or "").split()).lower():
                out.append((node.name, lines))
    return out


def _violations(root: Path, check, skip=lambda rel: False) -> dict:
    out = {}
    for path in _files(root):
        rel = path.relative_to(root)
        if skip(rel):
            continue
        found = check(path.read_text(encoding="utf-8"))
        if found:
            out[rel.as_posix()] = found
    return out


# ------------------------------------------------------------------------------------------------ the rules
def test_library_modules_never_print_only_the_cli_layer_does():
    bad = _violations(LIB, prints, skip=lambda rel: rel.parts[0] == "cli")
    assert not bad, (f"print() outside AtlasSegLib/cli/ (file: lines): {bad}; return the data and let the command "
                     "in AtlasSegLib/cli/ print it (warnings for the user: logging)")


def test_every_function_level_import_says_why_in_a_comment():
    bad = {f"AtlasSegLib/{k}": v for k, v in _violations(LIB, unexplained_imports).items()}
    bad.update({f"AtlasSeg/{k}": v for k, v in _violations(SLICER, unexplained_imports).items()})
    assert not bad, (f"function-level imports without a reason (file: [(line, module)]): {bad}; move each to the top "
                     "of its module, or say why it waits (a comment on its line or the line before)")


def test_no_library_function_over_120_lines_without_a_reason():
    bad = _violations(LIB, long_functions)
    assert not bad, (f"AtlasSegLib functions over {MAX_LINES} lines (file: [(function, lines)]): {bad}; split them "
                     f"into steps, or say in the docstring why not ('{LONG_REASON} ...')")


# ------------------------------------------------------------------------------------------------ the checkers can fail
def test_print_checker_finds_a_print_and_ignores_other_calls():
    source = "import logging\n\ndef f(x):\n    logging.info(x)\n    print(x)\n    return x.print()\n"
    assert prints(source) == [5]


def test_import_checker_finds_an_unexplained_function_level_import():
    source = '''import os  # module level: never needs a reason


def unexplained():
    import json
    return json


def explained_above():
    # here: keeps torch out of the CLI's start
    import torch

    import numpy as np
    return torch, np


def explained_on_the_line():
    from . import heavy  # optional dependency
    return heavy


def unexplained_in_a_method_after_a_statement():
    x = 1
    try:
        from .download import cached_path
    except ImportError:  # this comment is on another line: it explains nothing above
        cached_path = None
    return x, cached_path


class C:
    def m(self):
        import slicer
        return slicer
'''
    assert unexplained_imports(source) == [(5, "json"), (25, ".download"), (33, "slicer")]


def test_long_function_checker_needs_the_reason_in_the_docstring():
    body = "".join(f"    x{i} = {i}\n" for i in range(130))
    plain = f"def plain():\n{body}"
    reasoned = f'def reasoned():\n    """One table of constants; long because\n    splitting it hides the order."""\n{body}'
    short = "def short():\n    return 1\n"
    assert long_functions(plain) == [("plain", 131)]
    assert long_functions(reasoned) == []
    assert long_functions(short) == []
