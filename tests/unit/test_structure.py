"""The code stays changeable: short functions, classes of one concern, Faust's private API in one
module. A function that must be long says why in EXCEPTIONS (reviewed when it changes)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_FUNCTION_LINES = 60
MAX_CLASS_LINES = 300

#: "path:name" → why it is longer than the rule. Keep this list short.
EXCEPTIONS: dict[str, str] = {
    "streams/core/shares.py:ShareWindows": (
        "the share windows' one data structure: ring buffers per (pool, region), their merge, "
        "expiry and checkpoint format, kept together because every method relies on the same "
        "row and bucket invariants (documented on the class) and on the hot path"),
    "streams/core/shifts.py:ShiftEngine": (
        "one vectorised state machine over every tracked region: the step and trend tests "
        "share the baseline, noise and episode arrays they update together each step"),
}


def _lines(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> int:
    """Lines of a definition, its docstring not counted (a docstring is welcome at any length)."""
    assert node.end_lineno is not None
    lines = node.end_lineno - node.lineno + 1
    first = node.body[0] if node.body else None
    if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str) and first.end_lineno is not None):
        lines -= first.end_lineno - first.lineno + 1
    return lines


def _definitions() -> list[tuple[str, str, int, bool]]:
    found = []
    for folder in ("streams", "api", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    lines = _lines(node)
                    where = f"{path.relative_to(ROOT)}:{node.name}"
                    found.append((where, node.name, lines, isinstance(node, ast.ClassDef)))
    return found


def test_functions_and_classes_fit_on_a_screen() -> None:
    too_long = [
        f"{where} ({lines} lines)"
        for where, _, lines, is_class in _definitions()
        if lines > (MAX_CLASS_LINES if is_class else MAX_FUNCTION_LINES)
        and where not in EXCEPTIONS
    ]
    assert too_long == []


def test_every_exception_is_still_needed() -> None:
    sizes = {where: (lines, is_class) for where, _, lines, is_class in _definitions()}
    stale = [
        where for where in EXCEPTIONS
        if where not in sizes
        or sizes[where][0] <= (MAX_CLASS_LINES if sizes[where][1] else MAX_FUNCTION_LINES)
    ]
    assert stale == []
