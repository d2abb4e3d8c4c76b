"""Workshop copies: a participant who runs a cell with a gap gets one line saying what to fill
in, never a library's traceback.

Every participants' copy (``notebooks/workshop/ex*.ipynb`` without ``_solution``) is run with
*Run All* semantics on the tiny model: it must stop at its first exercise cell with an
``ExerciseGap`` error whose only text is the friendly line, everything before it having run.
The extension itself (``workbench.exercises``) is checked in a real kernel: gaps stop a cell
before it runs, code that only looks like a gap runs, and other errors keep their traceback.
The workbench's own checks name a ``...`` that reaches them as a placeholder.
"""

from __future__ import annotations

import re

import jupytext
import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from tests import test_notebooks
from tests.test_notebooks import (
    EXERCISES,
    NOTEBOOKS,
    TINY,
    inject_parameters,
)

kernel_name = test_notebooks.kernel_name  # the notebooks' kernel fixture, shared

FRIENDLY = re.compile(
    r"^This cell has (a gap|\d+ gaps) to fill in: line \d+ `[^`]*\.\.\.[^`]*`.*"
    r"Replace (the|each) `\.\.\.` with your answer, then run the cell again\.$"
)
LIBRARY = ("Traceback", "File ", "site-packages", "workbench/", "SpecError", "Error:")


def run_all(nb, kernel: str, workdir, timeout: int = 600):
    """Run ``nb`` as *Run All* does (stop at the first error); returns the error or None."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    workdir.mkdir(parents=True, exist_ok=True)
    client = NotebookClient(
        nb,
        kernel_name=kernel,
        timeout=timeout,
        allow_errors=False,
        resources={"metadata": {"path": str(workdir)}},
    )
    try:
        client.execute()
    except CellExecutionError as err:
        return err
    return None


def first_exercise_source(path) -> str:
    """The source of the first cell tagged ``exercise`` in the notebook's jupytext source."""
    source = NOTEBOOKS / "src" / "workshop" / f"{path.stem}.py"
    cells = jupytext.read(source, fmt="py:percent").cells
    return next(c.source for c in cells if "exercise" in c.metadata.get("tags", []))


def errors_of(cell) -> list:
    return [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]


def all_text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        parts.extend(out.get("traceback", []))
        parts.extend(str(v) for v in out.get("data", {}).values())
    return "\n".join(parts)


@pytest.mark.parametrize("path", EXERCISES, ids=lambda p: p.name)
def test_a_participants_copy_stops_at_its_first_gap_with_a_friendly_line(
    path, tiny_model_dir, kernel_name, tmp_path
):
    nb = nbformat.read(path, as_version=4)
    inject_parameters(nb, {**TINY, "MODEL": str(tiny_model_dir)})
    error = run_all(nb, kernel_name, tmp_path / "work")
    assert error is not None, "the copy ran to the end: its gaps stopped nothing"
    assert error.ename == "ExerciseGap", (error.ename, error.evalue)

    code = [c for c in nb.cells if c.cell_type == "code"]
    failed = [i for i, c in enumerate(code) if errors_of(c)]
    assert len(failed) == 1, failed
    cell = code[failed[0]]
    # It is the first exercise cell, and every cell before it ran without an error.
    assert cell.source == first_exercise_source(path)
    assert all(c.execution_count is not None for c in code[: failed[0]])
    assert all(c.execution_count is None for c in code[failed[0] + 1 :])
    # What the participant reads: the friendly line alone, no library traceback.
    (out,) = errors_of(cell)
    assert out["ename"] == "ExerciseGap"
    assert len(out["traceback"]) == 1 and FRIENDLY.match(out["traceback"][0]), out["traceback"]
    assert out["evalue"] == out["traceback"][0]
    rest = all_text(cell).replace(out["traceback"][0], "")
    assert not any(word in rest for word in LIBRARY), rest
    for other in code[: failed[0]]:
        assert "Traceback" not in all_text(other)


def test_the_gap_check_in_a_real_kernel(kernel_name, tmp_path):
    cells = [
        "from workbench.exercises import enable_gap_check\n\nenable_gap_check()",
        # Code that only looks like a gap runs: indexing, annotations, strings, comments.
        "import numpy as np\nfrom typing import Callable\n\n"
        "first = np.arange(6).reshape(2, 3)[..., 0]\n"
        "pick: Callable[..., int] = len\n"
        "print('...', first.tolist())  # ... fill in",
        # A cell with a gap does not run at all: nothing is printed, nothing assigned.
        "print('ran')\nCUTOFF = ...\nchecked = CUTOFF * 2",
        "CUTOFF",
        # Several gaps are named together; a function body that is only `...` is a gap.
        "def json_valid(prediction, reference):\n    ...\n\nLRS = [...]",
        # An error in a cell without a gap keeps its usual traceback.
        "def divide(a, b):\n    return a / b\n\ndivide(1, 0)",
        # Filled in, the cell runs.
        "CUTOFF = 256\nprint(CUTOFF * 2)",
        # Enabling again (a rerun of the notebook in the same kernel) adds nothing.
        "enable_gap_check()\nimport IPython\n"
        "print(sum(type(t).__name__ == '_GapCheck' "
        "for t in IPython.get_ipython().ast_transformers))",
        # Stubs and sentinels are code: a Protocol's methods, abstract ones, `=...` defaults.
        "import abc\nfrom typing import Protocol\n\nclass Scorer(Protocol):\n"
        "    def __call__(self, prediction: str) -> float: ...\n\n"
        "class Base(abc.ABC):\n    @abc.abstractmethod\n    def score(self): ...\n\n"
        "def pick(value=...):\n    return value is ...\n\nprint('stubs', pick())",
        # A magic's code is checked too, and quoted as typed (it was IPython's rewrite).
        "%time LR = ...",
        "%%time\nimport math\nSTEPS = ...",
        # A gap beside a sentinel's test or inside a default is still a gap; two in a magic
        # cell are each on their own line.
        "def pick(x=make(...)):\n    return x\nassert answer(...) is not None",
        "%%time\nA = ...\nB = ...",
    ]
    nb = new_notebook(cells=[new_code_cell(source) for source in cells])
    from nbclient import NotebookClient

    NotebookClient(
        nb,
        kernel_name=kernel_name,
        timeout=120,
        allow_errors=True,
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    outs = [c.outputs for c in nb.cells]

    assert not any(errors_of(c) for c in nb.cells[:2])
    assert "... [0, 3]" in all_text(nb.cells[1])

    (gap,) = errors_of(nb.cells[2])
    assert gap["ename"] == "ExerciseGap"
    assert gap["traceback"] == [
        "This cell has a gap to fill in: line 2 `CUTOFF = ...`. Replace the `...` with your "
        "answer, then run the cell again."
    ]
    assert [o for o in outs[2] if o["output_type"] == "stream"] == []  # print('ran') never ran
    assert errors_of(nb.cells[3])[0]["ename"] == "NameError"

    (two,) = errors_of(nb.cells[4])
    assert two["traceback"] == [
        "This cell has 2 gaps to fill in: line 2 `...` in `json_valid`, line 4 `LRS = [...]`. "
        "Replace each `...` with your answer, then run the cell again."
    ]

    (plain,) = errors_of(nb.cells[5])
    assert plain["ename"] == "ZeroDivisionError"
    assert len(plain["traceback"]) > 1 and "divide" in "".join(plain["traceback"])

    assert not errors_of(nb.cells[6]) and "512" in all_text(nb.cells[6])
    assert not errors_of(nb.cells[7]) and all_text(nb.cells[7]).strip() == "1"
    # they were gaps: "line 5 `def __call__(...) -> float: ...` in `__call__`"
    assert not errors_of(nb.cells[8]) and all_text(nb.cells[8]).strip() == "stubs True"
    for cell, line in (
        (nb.cells[9], "line 1 `%time LR = ...`"),
        (nb.cells[10], "line 3 `STEPS = ...`"),
    ):
        (magic,) = errors_of(cell)
        assert magic["ename"] == "ExerciseGap" and magic["traceback"] == [
            f"This cell has a gap to fill in: {line}. Replace the `...` with your answer, "
            "then run the cell again."
        ]
    for cell, lines in (
        (nb.cells[11], "line 1 `def pick(x=make(...)):`, line 3 `assert answer(...) is not None`"),
        (nb.cells[12], "line 2 `A = ...`, line 3 `B = ...`"),
    ):
        (two,) = errors_of(cell)
        assert two["traceback"] == [
            f"This cell has 2 gaps to fill in: {lines}. Replace each `...` with your answer, "
            "then run the cell again."
        ]


def test_the_workbench_calls_a_placeholder_a_placeholder(tiny_model_dir, tmp_path):
    # Without the gap check (a script, or the extension not loaded), a `...` that reaches the
    # workbench's own checks is named as a gap to fill in, not as a wrong value.
    import workbench as wb
    from workbench.errors import SpecError

    with pytest.raises(SpecError, match=r"^lr=\.\.\. is a placeholder: fill in your answer\.$"):
        wb.TrainSpec(lr=...)
    with pytest.raises(SpecError, match=r"^r=\.\.\. is a placeholder: fill in your answer\.$"):
        wb.LoRA(r=...)
    with pytest.raises(SpecError, match=r"max_steps=\.\.\. is a placeholder"):
        wb.TrainSpec(max_steps=...)

    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)], validation=None)
    with pytest.raises(SpecError) as err:
        s.set_max_length(...)
    assert str(err.value) == "max_length=... is a placeholder: fill in your answer"
    with pytest.raises(SpecError, match=r"max_length=\.\.\. is a placeholder"):
        s.load_data([{"question": "q", "answer": "a"}] * 4, validation=None, max_length=...)
    with pytest.raises(SpecError, match=r"lr=\.\.\. is a placeholder"):
        s.train(lr=..., max_steps=1, wait=True)
    s.close()
