"""A process killed while an evaluation saves leaves no half-written ``evaluations/eval-NNN``.

Each kill is real: the evaluation runs in a child process that SIGKILLs itself just before
the chosen file of the save is written (a hook installed in that child only). The folder it
leaves must hold nothing of the evaluation, ``Evaluation.load`` must say what it is, and the
session's next evaluation must remove it, but never a complete evaluation or a folder that
a live process still evaluates into.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import workbench as wb
from workbench.errors import EvaluationError, WorkbenchWarning
from workbench.evaluation import Evaluation
from workbench.evaluation.checkpoints import CheckpointEvaluation
from workbench.session_folder import SessionFolder

ROWS = [{"question": f"{i} cat", "answer": "red"} for i in range(12)]
EVALUATE = "s.evaluate(metrics=['exact_match'], max_new_tokens=2, wait=True)"
GRID = "s.evaluate(checkpoints='all', metrics=['exact_match'], max_new_tokens=2)"

# Installed in the child only: SIGKILL just before `NAME` is written into an evaluation
# folder, however the save writes it (a file written in place, or a temporary renamed to it).
KILL_BEFORE = """
import os, pathlib, signal
def _dies_at(path):
    path = pathlib.Path(path)
    return path.name == NAME and "evaluations" in path.parts
def _hooked(real, destination):
    def call(*args, **kwargs):
        if _dies_at(destination(args)):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return call
os.replace = _hooked(os.replace, lambda a: a[1])
pathlib.Path.write_text = _hooked(pathlib.Path.write_text, lambda a: a[0])
"""


def _session_code(root: Path, model: Path, train: bool) -> str:
    code = f"""
    import workbench as wb
    s = wb.Session({str(root)!r}, verbose=False)
    s.load_model({str(model)!r})
    s.load_data({ROWS!r}, validation=0.5)
    """
    if train:
        code += "s.train(max_steps=2, save_every=1, batch_size=2, wait=True)\n"
    return textwrap.dedent(code)


def _killed_while_saving(root: Path, model: Path, name: str, call: str, train=False) -> None:
    """Run ``call`` in a child process that SIGKILLs itself before ``name`` is written."""
    code = _session_code(root, model, train) + f"NAME = {name!r}\n" + KILL_BEFORE + call
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == -9, done.stderr[-2000:]


def _session(root: Path, model: Path) -> wb.Session:
    s = wb.Session(root, verbose=False)
    s.load_model(str(model))
    s.load_data(ROWS, validation=0.5)
    return s


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("name", ["scores.json", "settings.json"])
def test_an_evaluation_killed_while_saving_leaves_no_half_written_folder(
    tmp_path, tiny_model_dir, name
):
    root = tmp_path / "session"
    _killed_while_saving(root, tiny_model_dir, name, EVALUATE)
    folder = root / "evaluations" / "eval-001"
    assert _listing(folder) == []  # nothing of the evaluation: it was never placed
    with pytest.raises(EvaluationError) as refused:
        Evaluation.load(folder)
    said = str(refused.value)
    assert str(folder) in said and "is empty" in said and "killed" in said

    again = _session(root, tiny_model_dir).evaluate(
        metrics=["exact_match"], max_new_tokens=2, wait=True
    )
    assert again.path.name == "eval-002"
    assert _listing(root / "evaluations") == ["eval-002"]  # the killed one's leftovers gone
    assert _listing(again.path) == ["rows.jsonl", "scores.json", "settings.json"]
    assert [r.outputs for r in Evaluation.load(again.path).rows] == [r.outputs for r in again.rows]


def test_a_checkpoint_grid_killed_while_saving_leaves_no_half_written_folder(
    tmp_path, tiny_model_dir
):
    root = tmp_path / "session"
    _killed_while_saving(root, tiny_model_dir, "grid.json", GRID, train=True)
    folder = root / "evaluations" / "eval-001"
    assert _listing(folder) == []  # no step-* folders without their grid.json
    with pytest.raises(EvaluationError) as refused:
        CheckpointEvaluation.load(folder)
    said = str(refused.value)
    assert str(folder) in said and "is empty" in said and "killed" in said

    with SessionFolder(root).reserved("evaluations") as reserved:
        assert reserved.name == "eval-002"
    assert _listing(root / "evaluations") == ["eval-002"]


def test_a_complete_evaluation_and_a_running_one_are_never_removed(tmp_path, tiny_model_dir):
    root = tmp_path / "session"
    s = _session(root, tiny_model_dir)
    complete = s.evaluate(metrics=["exact_match"], max_new_tokens=2, wait=True).path
    holder = textwrap.dedent(f"""
        import sys
        from workbench.session_folder import SessionFolder
        with SessionFolder({str(root)!r}).reserved("evaluations") as folder:
            print(folder.name, flush=True)
            sys.stdin.readline()  # evaluating, until the test lets it end
    """)
    child = subprocess.Popen(
        [sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        running = child.stdout.readline().strip()
        assert running == "eval-002"
        later = s.evaluate(metrics=["exact_match"], max_new_tokens=2, wait=True)
        assert later.path.name == "eval-003"
        assert (root / "evaluations" / running).is_dir()  # the live one's folder kept
        assert _listing(complete) == ["rows.jsonl", "scores.json", "settings.json"]
    finally:
        child.communicate("\n", timeout=60)
    assert child.returncode == 0


def test_an_evaluation_on_a_full_disk_is_returned_and_leaves_no_lock_or_staging(
    small_disk, tiny_model_dir
):
    disk = small_disk(512)
    s = _session(disk / "s", tiny_model_dir)
    with open(disk / "filler", "wb", buffering=0) as handle, contextlib.suppress(OSError):
        while True:  # take every free byte
            handle.write(b"\0" * 4096)
    with pytest.warns(WorkbenchWarning) as said:  # it could not be saved, nor recorded
        ev = s.evaluate(metrics=["exact_match"], max_new_tokens=2, wait=True)
    assert any("done but could not be saved" in str(w.message) for w in said)
    assert ev.path is None and len(ev.rows) == 6
    assert _listing(disk / "s" / "evaluations") == ["eval-001"]  # no writer's lock, no staging
    assert _listing(disk / "s" / "evaluations" / "eval-001") == []
    s.close()
