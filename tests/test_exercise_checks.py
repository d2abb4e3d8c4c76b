"""Workshop check cells: what a participant reads when an answer is not there yet.

Each exercise ends with a **Check** cell. Whatever the participant did (nothing yet, text
where a number goes, a dict keyed by strings), it must answer with one ``Not yet: ...`` line
that names the actual problem, never a ``NameError`` or a ``ValueError`` from an f-string.

The check cells run here as they are in the jupytext sources (``notebooks/src/workshop``),
with a namespace prepared as the exercise cells would leave it: fakes stand in for runs and
reports, so nothing trains.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import jupytext
import numpy as np
import pytest

from workbench.exercises import ExerciseCheckError, check_type

WORKSHOP = Path(__file__).resolve().parent.parent / "notebooks" / "src" / "workshop"
SHARED = WORKSHOP.parent / "_shared"
NOT_SET = "not set yet: fill in and run the exercise cells above, then run this check again"


def cells(exercise: str) -> list:
    return jupytext.read(WORKSHOP / f"{exercise}.py", fmt="py:percent").cells


def check_cell(exercise: str) -> str:
    """The source of the code cell after the ``**Check.**`` heading."""
    found = cells(exercise)
    at = next(i for i, c in enumerate(found) if c.source.strip() == "**Check.**")
    return found[at + 1].source


def student_sees(exercise: str, **namespace) -> str:
    """Run ``exercise``'s check cell in ``namespace``: its ``Not yet`` line, or its output.

    Any other error propagates (a participant would see its traceback), failing the test.
    """
    code = compile(check_cell(exercise), f"<{exercise} check>", "exec")
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(code, namespace)
    except ExerciseCheckError as err:
        return "\n".join(err._render_traceback_())
    return out.getvalue()


def fake_run(eval_loss: float, state: str = "finished") -> SimpleNamespace:
    status = SimpleNamespace(state=SimpleNamespace(value=state), eval_loss=eval_loss)
    return SimpleNamespace(status=status, run_dir="runs/ex3/lr-x")


def ex3_namespace(rates, keys=None, best=None) -> dict:
    """LRS, runs and BEST_LR as the exercise leaves them; the last rate has the lowest loss."""
    keys = rates if keys is None else keys
    runs = {key: fake_run(2.0 - i / 10) for i, key in enumerate(keys)}
    return {"LRS": rates, "runs": runs, "BEST_LR": rates[-1] if best is None else best}


# -- before the exercise: no NameError -------------------------------------------------------


@pytest.mark.parametrize(
    ("exercise", "names"),
    [
        ("ex1_data", "report and clean are"),
        ("ex2_cutoff", "CUTOFF is"),
        ("ex3_learning_rate", "LRS is"),
        ("ex4_compare", "json_valid and fields_correct are"),
        ("ex5_explore", "FOUND is"),
    ],
)
def test_a_check_run_before_its_exercise_says_what_to_run(exercise, names):
    assert student_sees(exercise) == f"Not yet: {names} {NOT_SET}"


def test_a_check_run_before_its_exercise_shows_one_line_in_ipython(capsys):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell()
    result = shell.run_cell(check_cell("ex3_learning_rate"))
    assert type(result.error_in_exec).__name__ == "ExerciseCheckError"
    assert capsys.readouterr().out.strip() == f"Not yet: LRS is {NOT_SET}"


def test_a_later_exercise_not_done_is_named_after_the_earlier_ones_pass():
    ns = ex3_namespace([1e-4, 1e-3, 1e-2])
    del ns["BEST_LR"]
    assert student_sees("ex3_learning_rate", **ns) == f"Not yet: BEST_LR is {NOT_SET}"

    rows = [{"input": f"r{i}", "output": "{}"} for i in range(20)]
    ex1 = {"rows": rows, "train": rows, "report": SimpleNamespace(count=lambda kind: 0)}
    assert student_sees("ex1_data", **ex1) == f"Not yet: clean is {NOT_SET}"

    ex4 = {"json": json}
    for name in ("json_valid", "fields_correct"):
        exec((SHARED / f"{name}.py").read_text(), ex4)
    assert student_sees("ex4_compare", **ex4) == f"Not yet: ev is {NOT_SET}"


def test_ex2_names_kept_and_report_cut_once_the_cutoff_is_right(monkeypatch):
    class Whole:  # PreparedData.load's result: answers cut below 112 tokens
        def truncation_at(self, cutoff, split=None):
            return {"answers": 0 if cutoff >= 112 else 5}

    monkeypatch.setattr("workbench.data.PreparedData.load", lambda *a, **k: Whole())
    total = SimpleNamespace(max=500)
    ns = {
        "CUTOFF": 112,
        "report": SimpleNamespace(lengths={"total": total}),
        "rows": [{}] * 20,
        "s": SimpleNamespace(tokenizer=None),
        "test": [],
    }
    assert student_sees("ex2_cutoff", **ns) == f"Not yet: kept and report_cut are {NOT_SET}"


def test_ex5_names_each_exercise_left_to_do():
    ns = {"FOUND": {"flat_loss", "answers_cut"}}
    assert student_sees("ex5_explore", **ns) == f"Not yet: finder and GOOD_LR are {NOT_SET}"
    ns.update(finder=SimpleNamespace(suggested_lr=3e-4), GOOD_LR=3e-4)
    assert student_sees("ex5_explore", **ns) == f"Not yet: fixed and after are {NOT_SET}"


# -- ex3: the learning rates ----------------------------------------------------------------


def test_ex3_accepts_an_int_rate():
    # 1 is a learning rate (the workbench trains at lr=1); only its type was refused.
    ns = ex3_namespace([1e-4, 1e-2, 1])
    assert student_sees("ex3_learning_rate", **ns) == "best learning rate: 1\n"
    ns = ex3_namespace([np.float32(1e-4), np.float64(1e-3), 1e-2])
    assert student_sees("ex3_learning_rate", **ns) == "best learning rate: 0.01\n"


def test_ex3_names_a_rate_written_as_text():
    ns = ex3_namespace(["1e-4", "1e-3", "1e-2"])
    assert student_sees("ex3_learning_rate", **ns) == (
        "Not yet: LRS[0] should be a number, not the text '1e-4': write it without quotes"
    )
    # As the exercise cell leaves it: short_run("1e-4") raised, so runs was never set.
    del ns["runs"], ns["BEST_LR"]
    assert student_sees("ex3_learning_rate", **ns) == (
        "Not yet: LRS[0] should be a number, not the text '1e-4': write it without quotes"
    )
    ns["LRS"] = [1e-4, 1e-3, 1e-2]
    assert student_sees("ex3_learning_rate", **ns) == f"Not yet: runs is {NOT_SET}"


def test_ex3_names_a_rate_that_is_not_positive_or_not_a_number():
    ns = ex3_namespace([1e-4, 0, 1e-2])
    assert student_sees("ex3_learning_rate", **ns) == "Not yet: LRS[1] should be above 0, not 0"
    ns = ex3_namespace([1e-4, 1e-3, None])
    assert student_sees("ex3_learning_rate", **ns) == (
        "Not yet: LRS[2] should be a number, not NoneType None"
    )
    ns = ex3_namespace([1e-4, 1e-4, 1e-2])
    assert student_sees("ex3_learning_rate", **ns) == (
        "Not yet: LRS should hold three or more different rates, not [0.0001, 0.0001, 0.01]"
    )


def test_ex3_runs_keyed_by_text_is_a_not_yet_not_a_format_error():
    rates = [1e-4, 1e-3, 1e-2]
    ns = ex3_namespace(rates, keys=[f"{lr:g}" for lr in rates], best=1e-2)
    assert student_sees("ex3_learning_rate", **ns) == (
        "Not yet: runs should be keyed by the learning rates themselves "
        "(runs = {lr: short_run(lr) for lr in LRS}), not by str '0.0001'"
    )


def test_ex3_runs_that_miss_a_rate_or_are_not_runs():
    ns = ex3_namespace([1e-4, 1e-3, 1e-2], keys=[1e-4, 1e-3])
    assert student_sees("ex3_learning_rate", **ns) == "Not yet: runs has no run for [0.01] of LRS"
    ns = ex3_namespace([1e-4, 1e-3, 1e-2])
    ns["runs"][1e-3] = "runs/ex3/lr-0.001"
    assert student_sees("ex3_learning_rate", **ns) == (
        "Not yet: runs[0.001] should be what short_run returns, not 'runs/ex3/lr-0.001'"
    )
    ns = ex3_namespace([1e-4, 1e-3, 1e-2])
    ns["runs"][1e-3] = fake_run(1.0, "failed")
    assert student_sees("ex3_learning_rate", **ns) == (
        "Not yet: the run at lr=0.001 should have finished, not be failed"
    )


def test_ex3_best_lr_written_as_text():
    ns = ex3_namespace([1e-4, 1e-3, 1e-2], best="1e-2")
    assert student_sees("ex3_learning_rate", **ns) == (
        "Not yet: BEST_LR should be a number, not the text '1e-2': write it without quotes"
    )


def test_ex3_short_run_with_a_text_rate_reaches_the_workbench_message(
    tiny_model_dir, tmp_path, monkeypatch
):
    from workbench.errors import SpecError

    monkeypatch.chdir(tmp_path)
    setup = next(c.source for c in cells("ex3_learning_rate") if "def short_run" in c.source)
    ns = {"MODEL": str(tiny_model_dir), "TRAIN_SIZE": 8, "TEST_SIZE": 4, "STEPS": 1}
    ns["BATCH_SIZE"] = 2
    exec(compile(setup, "<ex3 setup>", "exec"), ns)
    with pytest.raises(SpecError, match=r"^lr='2e-4' must be a number > 0"):
        ns["short_run"]("2e-4")


# -- ex2: the cutoff ------------------------------------------------------------------------


def ex2_namespace(cutoff) -> dict:
    total = SimpleNamespace(max=500)
    return {"CUTOFF": cutoff, "report": SimpleNamespace(lengths={"total": total})}


def test_ex2_names_a_cutoff_written_as_text_or_not_whole():
    assert student_sees("ex2_cutoff", **ex2_namespace("256")) == (
        "Not yet: CUTOFF should be a number, not the text '256': write it without quotes"
    )
    assert student_sees("ex2_cutoff", **ex2_namespace(231.4)) == (
        "Not yet: CUTOFF should be a whole number, not 231.4"
    )


def test_ex2_accepts_a_numpy_whole_number():
    # A cutoff computed with numpy (np.int64) is a whole number: the check goes on to its value.
    assert student_sees("ex2_cutoff", **ex2_namespace(np.int64(1024))) == (
        "Not yet: CUTOFF should be a multiple of 16 below the longest example (500), not 1024"
    )


# -- ex5: the learning rate the finder suggests ---------------------------------------------


def test_ex5_names_good_lr_written_as_text_or_not_the_suggestion():
    ns = {"FOUND": {"flat_loss", "answers_cut"}, "finder": SimpleNamespace(suggested_lr=3e-4)}
    assert student_sees("ex5_explore", **ns, GOOD_LR="3e-4") == (
        "Not yet: GOOD_LR should be a number, not the text '3e-4': write it without quotes"
    )
    assert student_sees("ex5_explore", **ns, GOOD_LR=1e-3) == (
        "Not yet: GOOD_LR should be the finder's suggestion, 3.0e-04, not 0.001"
    )
    ns["finder"] = None
    assert student_sees("ex5_explore", **ns, GOOD_LR=1e-3) == (
        "Not yet: finder should be what s.find_lr(...) returns, not None"
    )


# -- the helpers ----------------------------------------------------------------------------


def test_check_type_shows_a_value_on_one_line():
    import pandas as pd

    kept = pd.DataFrame([{"input": "a", "output": "b"}, {"input": "c", "output": "d"}])
    with pytest.raises(ExerciseCheckError) as err:
        check_type(kept, list, "kept", "a list of rows")
    assert str(err.value) == (
        "kept should be a list of rows (list), got DataFrame input output 0 a b 1 c d"
    )
