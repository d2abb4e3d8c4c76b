"""Workshop exercises: a cell that still has a gap to fill in stops with one friendly line.

An exercise notebook leaves gaps for the participant: ``...`` where an answer goes. Run as it
is, such a cell would fail deep inside a library (``SpecError: max_length=Ellipsis ...``) or
run on with ``Ellipsis`` as a value and fail later, somewhere else. The exercise notebooks
call :func:`enable_gap_check` in the cell after their parameters (``%load_ext
workbench.exercises`` does the same); from then on a cell whose code still holds a gap does
not run at all. It stops with one line instead of a traceback::

    This cell has a gap to fill in: line 1 `CUTOFF = ...`. Replace the `...` with your answer,
    then run the cell again.

as an error named ``ExerciseGap``, so *Run All* stops at the first cell to fill in. A cell
without a gap runs as always, and its errors show their usual traceback.

A gap is an Ellipsis literal where a value or a statement goes: ``x = ...``, ``f(...)``,
``[...]``, a line or a function body that is only ``...``. An Ellipsis inside brackets that
index (``array[..., 0]``, ``Callable[..., int]``), in an annotation, as a sentinel
(``def f(x=...)``, ``x is ...``) or as a stub's body (a ``Protocol``'s methods,
``@abstractmethod`` and ``@overload`` ones) is code, not a gap. A magic's code
(``%time x = ...``) is checked too, and quoted as typed.

Examples:
    >>> [(gap.line, gap.text) for gap in find_gaps("CUTOFF = ...\\nchecked = f(CUTOFF)")]
    [(1, 'CUTOFF = ...')]
    >>> find_gaps("x = array[..., 0]")
    []
    >>> gaps = find_gaps("kept = ...\\nreport_cut = ...")
    >>> print(gap_message(gaps))  # doctest: +NORMALIZE_WHITESPACE
    This cell has 2 gaps to fill in: line 1 `kept = ...`, line 2 `report_cut = ...`.
    Replace each `...` with your answer, then run the cell again.
"""

from __future__ import annotations

import ast
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from IPython.core.error import InputRejected

__all__ = [
    "ExerciseCheckError",
    "ExerciseGap",
    "Gap",
    "check",
    "check_call",
    "check_defined",
    "check_number",
    "check_type",
    "disable_gap_check",
    "enable_gap_check",
    "find_gaps",
    "gap_message",
    "load_ipython_extension",
    "unload_ipython_extension",
]

_SHOWN = 3  # gaps named in the message; more are counted


@dataclass(frozen=True)
class Gap:
    """One ``...`` left to fill in: its line in the cell, that line's text, and the function
    whose body it is (when it is one).

    Examples:
        >>> Gap(2, "LRS = [...]").text
        'LRS = [...]'
    """

    line: int
    text: str
    function: str = ""


class ExerciseGap(InputRejected):
    """A cell still has a gap to fill in, so it was not run.

    In a notebook it shows as its message alone, without a traceback (IPython calls
    ``_render_traceback_`` for that), and as an error, so *Run All* stops there.

    Examples:
        >>> err = ExerciseGap("This cell has a gap to fill in: line 1 `x = ...`.")
        >>> err._render_traceback_()
        ['This cell has a gap to fill in: line 1 `x = ...`.']
    """

    def _render_traceback_(self) -> list[str]:
        return [str(self)]


class ExerciseCheckError(AssertionError):
    """An exercise's check that does not hold: one line saying what to look at.

    Shown as its message alone (no traceback), like :class:`ExerciseGap`; an
    ``AssertionError``, so code that catches those still does.

    Examples:
        >>> ExerciseCheckError("BEST_LR should be 0.0005")._render_traceback_()
        ['Not yet: BEST_LR should be 0.0005']
    """

    def _render_traceback_(self) -> list[str]:
        return [f"Not yet: {self}"]


def check(condition: Any, message: str) -> None:
    """Raise :class:`ExerciseCheckError` with ``message`` unless ``condition`` holds.

    Examples:
        >>> check(2 > 1, "never said")
        >>> check(1 > 2, "one is not above two")
        Traceback (most recent call last):
        workbench.exercises.ExerciseCheckError: one is not above two
    """
    if not condition:
        raise ExerciseCheckError(message)


def check_type(value: Any, expected: type | tuple[type, ...], name: str, what: str) -> None:
    """Raise :class:`ExerciseCheckError` unless ``value`` is an ``expected`` (a ``bool`` is
    no ``int`` here).

    Examples:
        >>> check_type("256", int, "CUTOFF", "a number of tokens")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        workbench.exercises.ExerciseCheckError: CUTOFF should be a number of tokens (int), ...
    """
    kinds = expected if isinstance(expected, tuple) else (expected,)
    wrong_bool = isinstance(value, bool) and bool not in kinds
    if isinstance(value, kinds) and not wrong_bool:
        return
    names = " or ".join(k.__name__ for k in kinds)
    msg = f"{name} should be {what} ({names}), got {type(value).__name__} {_shown(value)}"
    raise ExerciseCheckError(msg)


def check_defined(namespace: Mapping[str, Any], *names: str) -> None:
    """Raise :class:`ExerciseCheckError` unless every one of ``names`` is set in ``namespace``
    (a check cell passes ``globals()``) to something other than a gap (``...``).

    A check cell run before its exercise cells says so in one line, instead of a
    ``NameError``'s traceback for the first name it reads.

    Examples:
        >>> check_defined({"LRS": [1e-4, 1e-3, 1e-2]}, "LRS")
        >>> check_defined({}, "LRS")  # doctest: +NORMALIZE_WHITESPACE
        Traceback (most recent call last):
        workbench.exercises.ExerciseCheckError: LRS is not set yet: fill in and run the
        exercise cells above, then run this check again
        >>> check_defined({"LRS": [1e-4]}, "LRS", "runs", "BEST_LR")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        workbench.exercises.ExerciseCheckError: runs and BEST_LR are not set yet: ...
        >>> check_defined({"BEST_LR": ...}, "BEST_LR")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        workbench.exercises.ExerciseCheckError: BEST_LR is still `...`: replace it with ...
    """
    missing = [name for name in names if name not in namespace]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise ExerciseCheckError(
            f"{_listed(missing)} {verb} not set yet: fill in and run the exercise cells above, "
            "then run this check again"
        )
    gaps = [name for name in names if namespace[name] is Ellipsis]
    if gaps:
        verb = "is" if len(gaps) == 1 else "are"
        raise ExerciseCheckError(
            f"{_listed(gaps)} {verb} still `...`: replace it with your answer, run its cell, "
            "then run this check again"
        )


def check_number(value: Any, name: str, *, whole: bool = False, positive: bool = False) -> None:
    """Raise :class:`ExerciseCheckError` unless ``value`` is a number (a whole one if
    ``whole``, above 0 if ``positive``).

    Any real number counts (``1``, ``5e-4``, numpy's), a ``bool`` does not; text that looks
    like a number (``"1e-4"``) is named as text, to write without quotes.

    Examples:
        >>> check_number(1, "LRS[2]", positive=True)
        >>> check_number("1e-4", "LRS[0]")  # doctest: +NORMALIZE_WHITESPACE
        Traceback (most recent call last):
        workbench.exercises.ExerciseCheckError: LRS[0] should be a number, not the text
        '1e-4': write it without quotes
        >>> check_number(231.4, "CUTOFF", whole=True)
        Traceback (most recent call last):
        workbench.exercises.ExerciseCheckError: CUTOFF should be a whole number, not 231.4
        >>> check_number(0, "BEST_LR", positive=True)
        Traceback (most recent call last):
        workbench.exercises.ExerciseCheckError: BEST_LR should be above 0, not 0
    """
    if isinstance(value, str):
        msg = f"{name} should be a number, not the text {_shown(value)}: write it without quotes"
        raise ExerciseCheckError(msg)
    kind = numbers.Integral if whole else numbers.Real
    if not isinstance(value, kind) or isinstance(value, bool):
        number = "a whole number" if whole else "a number"
        shown = _shown(value)
        got = shown if isinstance(value, numbers.Real) else f"{type(value).__name__} {shown}"
        raise ExerciseCheckError(f"{name} should be {number}, not {got}")
    if positive and not value > 0:
        raise ExerciseCheckError(f"{name} should be above 0, not {_shown(value)}")


def _listed(names: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _shown(value: Any) -> str:
    """``value``'s repr on one line, cut to 60 characters."""
    shown = " ".join(repr(value).split())
    return shown if len(shown) <= 60 else shown[:57] + "..."


def check_call(function: Any, *args: Any) -> Any:
    """``function(*args)``, or :class:`ExerciseCheckError` naming the call if it raises.

    Examples:
        >>> check_call(len, "abc")
        3
        >>> check_call(int, "x")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        workbench.exercises.ExerciseCheckError: int('x') raised ValueError: invalid literal ...
    """
    try:
        return function(*args)
    except Exception as err:  # the participant's code: any error is a check to fix
        call = f"{getattr(function, '__name__', 'function')}({', '.join(map(repr, args))})"
        raise ExerciseCheckError(f"{call} raised {type(err).__name__}: {err}") from None


def find_gaps(source: str) -> list[Gap]:
    """The gaps (``...`` placeholders) in a cell's code, in line order.

    Code that does not parse has no gaps here: Python reports its syntax error itself.

    Examples:
        >>> src = "def f(x):\\n    ...\\n\\nLRS = [...]\\ny = x[..., 0]\\nz: Callable[..., int]"
        >>> [(gap.line, gap.text, gap.function) for gap in find_gaps(src)]
        [(2, '...', 'f'), (4, 'LRS = [...]', '')]
        >>> find_gaps("print('...')  # ... in a comment or a string is no gap")
        []
        >>> find_gaps("if x ...")
        []
        >>> find_gaps("def pick(value=...):\\n    return value is ...")  # a sentinel
        []
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    return _gaps(tree, source.splitlines())


def gap_message(gaps: list[Gap]) -> str:
    """The one line a participant reads for a cell with ``gaps``.

    Examples:
        >>> print(gap_message([Gap(1, "CUTOFF = ...")]))  # doctest: +NORMALIZE_WHITESPACE
        This cell has a gap to fill in: line 1 `CUTOFF = ...`. Replace the `...` with your
        answer, then run the cell again.
    """
    named = ", ".join(
        f"line {gap.line} `{gap.text}`" + (f" in `{gap.function}`" if gap.function else "")
        for gap in gaps[:_SHOWN]
    )
    if len(gaps) > _SHOWN:
        named += f" and {len(gaps) - _SHOWN} more"
    if len(gaps) == 1:
        return (
            f"This cell has a gap to fill in: {named}. Replace the `...` with your answer, "
            "then run the cell again."
        )
    return (
        f"This cell has {len(gaps)} gaps to fill in: {named}. Replace each `...` with your "
        "answer, then run the cell again."
    )


class _GapCheck(ast.NodeTransformer):
    """IPython AST transformer: rejects a cell that still has gaps, before it runs."""

    def __init__(self) -> None:
        super().__init__()
        self.source = ""  # the cell being run, as typed (set before each cell)

    def remember(self, info: Any) -> None:
        self.source = info.raw_cell or info.transformed_cell or ""

    def visit(self, node: ast.AST) -> ast.AST:
        # A magic's code (%time x = ..., a %%time cell) comes here too, parsed on its own:
        # its gaps are quoted from the cell as typed (see _quoted).
        gaps = _gaps(node, self.source.splitlines())
        if gaps:
            raise ExerciseGap(gap_message(gaps))
        return node


def _gaps(tree: ast.AST, lines: list[str]) -> list[Gap]:
    code = _ellipses_that_are_code(tree)
    bodies: dict[int, str] = {}  # id of a function body's bare `...` -> the function's name
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            bodies.update({id(stmt.value): node.name for stmt in node.body if _is_bare(stmt)})
    found: dict[int, Gap] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value is Ellipsis and id(node) not in code:
            line, text = _quoted(node, lines)
            found.setdefault(line, Gap(line, text, bodies.get(id(node), "")))
    return [found[line] for line in sorted(found)]


def _ellipses_that_are_code(tree: ast.AST) -> set[int]:
    """Ids of the Ellipsis nodes that are code, not gaps: in brackets that index and in
    annotations (any depth); a bare ``...`` as a default or an operand of ``is`` (a
    sentinel); the bare ``...`` body of a stub (a ``Protocol``'s methods, ``@abstractmethod``
    and ``@overload`` ones). A gap beside them (``f(...) is None``, ``x=make(...)``) stays
    one."""
    code: set[int] = set()
    sentinels: list[ast.AST | None] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript):
            code.update(id(n) for n in ast.walk(node.slice))
        elif isinstance(node, (ast.AnnAssign, ast.arg)) and node.annotation is not None:
            code.update(id(n) for n in ast.walk(node.annotation))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            sentinels += [*node.args.defaults, *node.args.kw_defaults]
            returns = getattr(node, "returns", None)
            if returns is not None:
                code.update(id(n) for n in ast.walk(returns))
            if _names_of(getattr(node, "decorator_list", [])) & {"abstractmethod", "overload"}:
                sentinels += [stmt.value for stmt in node.body if _is_bare(stmt)]
        elif isinstance(node, ast.ClassDef) and "Protocol" in _names_of(node.bases):
            for stmt in node.body:
                body = (
                    stmt.body
                    if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef)
                    else [stmt]
                )
                sentinels += [inner.value for inner in body if _is_bare(inner)]
        elif isinstance(node, ast.Compare) and any(
            isinstance(op, (ast.Is, ast.IsNot)) for op in node.ops
        ):
            sentinels += [node.left, *node.comparators]  # `value is ...`
    code.update(id(n) for n in sentinels if isinstance(n, ast.Constant) and n.value is Ellipsis)
    return code


def _names_of(expressions: list[ast.expr]) -> set[str]:
    """The last name of each expression: ``abc.abstractmethod`` -> ``abstractmethod``."""
    names = set()
    for expression in expressions:
        named = expression  # `Protocol[T]` and `decorator(...)` name what they wrap
        while isinstance(named, (ast.Call, ast.Subscript)):
            named = named.func if isinstance(named, ast.Call) else named.value
        if isinstance(named, ast.Attribute):
            names.add(named.attr)
        elif isinstance(named, ast.Name):
            names.add(named.id)
    return names


def _quoted(gap: ast.Constant, lines: list[str]) -> tuple[int, str]:
    """The line of the cell as typed (``lines``) that holds ``gap``, and its text.

    The gap's own position holds when the code parsed is the cell itself. A magic's code is
    parsed on its own: a ``%%time`` cell's body starts on the cell's second line, and a
    ``%time x = ...`` line's code after the magic's name and options.

    Examples:
        >>> gap = ast.parse("x = ...").body[0].value
        >>> _quoted(gap, ["%%time", "x = ..."]), _quoted(gap, ["# x = ...?", "%time x = ..."])
        ((2, 'x = ...'), (2, '%time x = ...'))
    """
    at, column, width = gap.lineno, gap.col_offset, gap.end_col_offset - gap.col_offset

    def holds(number: int, start: int) -> bool:
        return 0 < number <= len(lines) and lines[number - 1][start : start + width] == "..."

    if lines and lines[0].lstrip().startswith("%%"):  # only its body is ever parsed
        return (at + 1, lines[at].strip()) if holds(at + 1, column) else (at + 1, "...")
    if holds(at, column):
        return at, lines[at - 1].strip()
    if at == 1:
        for number, line in enumerate(lines, 1):
            start = _line_magic_code(line)
            if start is not None and holds(number, start + column):
                return number, line.strip()
    return at, "..."


def _line_magic_code(line: str) -> int | None:
    """Where the code of a ``%magic [options] code`` line begins: the first place after the
    magic's name from which the rest parses as Python (``None``: no line magic)."""
    magic = re.match(r"\s*%(?!%)\w+", line)
    if magic is None:
        return None
    for start in range(magic.end(), len(line)):
        if line[start].isspace():
            continue
        try:
            ast.parse(line[start:])
        except SyntaxError:
            continue
        return start
    return None


def _is_bare(stmt: ast.stmt) -> bool:
    """The statement is ``...`` alone."""
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Constant)
        and stmt.value.value is Ellipsis
    )


_CHECKS: dict[int, _GapCheck] = {}  # id(shell) -> its check, so enabling twice adds one


def enable_gap_check(shell: Any = None) -> bool:
    """From now on, a cell with a gap stops with :func:`gap_message` instead of running.

    Returns ``False`` (and does nothing) outside IPython, e.g. in a plain script; calling
    it again in the same kernel changes nothing.

    Examples:
        >>> enable_gap_check()  # not in IPython here
        False
        >>> from IPython.core.interactiveshell import InteractiveShell
        >>> shell = InteractiveShell()
        >>> enable_gap_check(shell), enable_gap_check(shell)
        (True, True)
        >>> result = shell.run_cell("CUTOFF = ...")  # doctest: +NORMALIZE_WHITESPACE
        This cell has a gap to fill in: line 1 `CUTOFF = ...`. Replace the `...` with your
        answer, then run the cell again.
        >>> type(result.error_before_exec).__name__, "CUTOFF" in shell.user_ns
        ('ExerciseGap', False)
        >>> disable_gap_check(shell)
    """
    if shell is None:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is None:
            return False
    if id(shell) in _CHECKS:
        return True
    check = _GapCheck()
    shell.events.register("pre_run_cell", check.remember)
    shell.ast_transformers.append(check)
    _CHECKS[id(shell)] = check
    return True


def disable_gap_check(shell: Any) -> None:
    """Undo :func:`enable_gap_check` for ``shell``: cells with gaps run again.

    Examples:
        >>> from IPython.core.interactiveshell import InteractiveShell
        >>> shell = InteractiveShell()
        >>> _ = enable_gap_check(shell); disable_gap_check(shell)
        >>> shell.run_cell("x = ...").success
        True
    """
    check = _CHECKS.pop(id(shell), None)
    if check is None:
        return
    shell.events.unregister("pre_run_cell", check.remember)
    if check in shell.ast_transformers:
        shell.ast_transformers.remove(check)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext workbench.exercises``: the same as :func:`enable_gap_check`.

    Examples:
        >>> from IPython.core.interactiveshell import InteractiveShell
        >>> shell = InteractiveShell()
        >>> load_ipython_extension(shell)
        >>> shell.run_cell("answer = ...").success  # doctest: +NORMALIZE_WHITESPACE
        This cell has a gap to fill in: line 1 `answer = ...`. Replace the `...` with your
        answer, then run the cell again.
        False
        >>> unload_ipython_extension(shell)
    """
    enable_gap_check(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext workbench.exercises``: the same as :func:`disable_gap_check`.

    Examples:
        >>> from IPython.core.interactiveshell import InteractiveShell
        >>> unload_ipython_extension(InteractiveShell())  # never loaded: nothing to undo
    """
    disable_gap_check(ipython)
