"""Valid JSON of the wrong shape in a run's or a session's files is named, never a bare error.

A history line that is JSON but no record (a key damaged by one flipped bit, a step written
as text, a loss that is no number) is skipped with a warning naming the file and the line,
as a line that is not JSON is; a ``run.json`` or ``session.json`` field of the wrong shape
is read with its default where that is safe, else refused naming the file and the field.
All on a real tiny run, its files damaged on disk.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest

import workbench as wb
from workbench.errors import SpecError, WorkbenchWarning
from workbench.widgets import TrainingMonitor

ROWS = [{"question": f"{i} cat", "answer": "red"} for i in range(16)]
DAMAGES = {
    "a key's bit flipped": (lambda r: {("stup" if k == "step" else k): v for k, v in r.items()},
                            "'step' is missing"),
    "step as text": (lambda r: {**r, "step": str(r["step"])}, "'step' is '1', not a"),
    "loss as text": (lambda r: {**r, "loss": "x"}, "'loss' is 'x', not a number"),
}  # fmt: skip


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model_dir) -> Path:
    """A session folder holding a finished 4-step run (checkpoints at 2 and 4) and an export."""
    root = tmp_path_factory.mktemp("damaged") / "session"
    s = wb.Session(root, verbose=False)
    s.load_model(str(tiny_model_dir))
    s.load_data(ROWS)
    s.train(max_steps=4, save_every=2, batch_size=4, wait=True)
    s.export("export/merged")
    return root


@pytest.fixture
def session(finished, tmp_path) -> Path:
    """A copy of the finished session folder, for this test to damage."""
    return Path(shutil.copytree(finished, tmp_path / "session"))


def _later(root: Path, model: Path) -> wb.Session:
    s = wb.Session(root, verbose=False)
    s.load_model(str(model))
    return s


def _damage_first_step(history: Path, damage) -> int:
    """Rewrite the first training record of ``history`` with ``damage``; its line number."""
    lines = history.read_text().splitlines()
    number = next(i for i, line in enumerate(lines) if json.loads(line)["kind"] == "train")
    lines[number] = json.dumps(damage(json.loads(lines[number])))
    history.write_text("\n".join(lines) + "\n")
    return number + 1


def _said(caught: list, path: Path) -> list[str]:
    return [
        str(w.message)
        for w in caught
        if issubclass(w.category, WorkbenchWarning) and str(path) in str(w.message)
    ]


@pytest.mark.parametrize("case", list(DAMAGES))
def test_a_history_record_of_the_wrong_shape_is_skipped_naming_the_file_and_line(
    session, tiny_model_dir, case
):
    damage, problem = DAMAGES[case]
    run_dir = session / "runs" / "run-001"
    history = run_dir / "history.jsonl"
    line = _damage_first_step(history, damage)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monitor = TrainingMonitor.from_folder(run_dir)
    said = _said(caught, history)
    assert len(said) == 1 and f"line(s) {line}," in said[0] and problem in said[0]
    assert list(monitor.traces["loss"].x) == [2.0, 3.0, 4.0]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compared = wb.compare([run_dir]).records()[0]
    assert compared["steps"] == 4 and isinstance(compared["final_loss"], float)
    if case != "a key's bit flipped":  # a record without a step was never drawn: no damage
        said = _said(caught, history)
        assert len(said) == 1 and f"line(s) {line}," in said[0] and problem in said[0]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = _later(session, tiny_model_dir).resume(session, wait=True)
    said = _said(caught, history)
    assert len(said) == 1 and f"line(s) {line}," in said[0] and problem in said[0]
    assert run.status.state.value == "finished" and run.status.step == 4
    assert [r.step for r in run.history if r.kind == "train"] == [2, 3, 4]


def test_run_json_without_probes_resumes_and_a_damaged_field_is_named(session, tiny_model_dir):
    run_dir = session / "runs" / "run-001"
    meta = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "probes"}))
    assert TrainingMonitor.from_folder(run_dir).status_text().startswith("finished")
    run = _later(session, tiny_model_dir).resume(run_dir, wait=True)
    assert run.status.state.value == "finished" and run.probes == []

    for field, value in (("probes", "2+2?"), ("total_steps", "4")):
        (run_dir / "run.json").write_text(json.dumps({**meta, field: value}))
        with pytest.raises(SpecError) as refused:
            _later(session, tiny_model_dir).resume(run_dir, wait=True)
        assert str(run_dir / "run.json") in str(refused.value)
        assert f"'{field}' is '{value}'" in str(refused.value)
    (run_dir / "run.json").write_text(json.dumps({**meta, "probes": {"a": 1}}))
    with pytest.raises(SpecError, match=r"run\.json is damaged: 'probes' is \{'a': 1\}"):
        TrainingMonitor.from_folder(run_dir)


def test_session_json_written_as_a_list_is_named_and_repaired(session, tiny_model_dir):
    state_file = session / "session.json"
    state = json.loads(state_file.read_text())
    state["written"] = list(state["written"])
    state_file.write_text(json.dumps(state))
    later = _later(session, tiny_model_dir)

    with (
        pytest.warns(WorkbenchWarning, match=r"session\.json is damaged: 'written' is a list"),
        pytest.raises(SpecError, match="overwrite=True"),  # not known as its own: kept
    ):
        later.export("export/merged")
    assert (session / "export" / "merged" / "config.json").is_file()
    with pytest.warns(WorkbenchWarning, match=r"session\.json is damaged"):
        later.export("export/merged", overwrite=True)
    assert "export/merged" in json.loads(state_file.read_text())["written"]


def test_a_killed_runs_damaged_history_still_opens_in_the_monitor(session):
    # A run killed while training (its status file says "running") has its progress read from
    # the history past the status file's step: a step written as text failed that comparison
    # with a bare TypeError before the damaged line was ever skipped.
    run_dir = session / "runs" / "run-001"
    status = json.loads((run_dir / "status.json").read_text())
    (run_dir / "status.json").write_text(json.dumps({**status, "state": "running", "step": 1}))
    history = run_dir / "history.jsonl"
    lines = history.read_text().splitlines()
    last = max(i for i, line in enumerate(lines) if json.loads(line)["kind"] == "train")
    lines[last] = json.dumps({**json.loads(lines[last]), "step": "4"})
    history.write_text("\n".join(lines) + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monitor = TrainingMonitor.from_folder(run_dir)
    assert _said(caught, history)
    assert "step 3/4" in monitor.text().splitlines()[0]  # its last record, the step skipped
