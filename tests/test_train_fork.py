"""Forking a run from a checkpoint: ``run.fork(step=..., lr=...)`` and the monitor's overlay."""

from __future__ import annotations

import json
import random
import threading

import pytest
from train_helpers import toy_run, train_losses

import workbench as wb
from workbench.errors import SessionStateError, SpecError
from workbench.events import EventHub
from workbench.train import LoRA, RunState, TrainSpec
from workbench.train.fork import fork_steps
from workbench.widgets.training_monitor import TrainingMonitor

SPEC = TrainSpec(
    max_steps=20,
    lr=5e-3,
    batch_size=8,
    eval_every=10,
    save_every=5,
    keep_checkpoints="all",
    seed=3,
)
PAIRS = [("cat", "red"), ("dog", "green"), ("bird", "blue"), ("fish", "apple")]


def _rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        key, value = PAIRS[rng.randrange(len(PAIRS))]
        digits = " ".join(str(rng.randrange(10)) for _ in range(rng.randrange(1, 4)))
        rows.append({"question": f"{digits} {key}", "answer": value})
    return rows


def _session(folder, model_dir) -> wb.Session:
    s = wb.Session(folder, verbose=False)
    s.load_model(str(model_dir))
    s.load_data(_rows(32), validation=_rows(8, seed=1))
    return s


def _folders(tmp_path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "runs").iterdir())


@pytest.mark.parametrize("fixture", ["tiny_model_dir", "tiny_gpt2_dir"])
def test_a_fork_continues_the_parent_exactly_or_with_its_new_lr(tmp_path, request, fixture):
    model_dir = request.getfixturevalue(fixture)
    parent = toy_run(model_dir, tmp_path / "runs" / "run-001", SPEC)
    assert parent.state is RunState.FINISHED
    losses = train_losses(parent)

    same = parent.fork(step=10)
    assert same.wait(60).state is RunState.FINISHED
    # Weights, AdamW state, RNG, data position and schedule all continue: the same losses.
    assert train_losses(same) == pytest.approx(losses, abs=1e-5)
    assert [r.step for r in same.history if r.kind == "train"] == list(range(1, 21))

    lower = parent.fork(step=10, lr=1e-3)
    assert lower.wait(60).state is RunState.FINISHED
    forked = train_losses(lower)
    assert forked[:10] == losses[:10]  # the parent's prefix, as the overlay shows it
    assert forked[10] == pytest.approx(losses[10], abs=1e-5)  # step 11 starts from step 10
    assert all(abs(a - b) > 1e-4 for a, b in zip(forked[11:], losses[11:], strict=True))
    # The new lr is the peak of the same linear schedule, placed at the fork step.
    step_11 = next(r for r in lower.history if r.kind == "train" and r.step == 11)
    parent_11 = next(r for r in parent.history if r.kind == "train" and r.step == 11)
    assert step_11.lr == pytest.approx(parent_11.lr * 1e-3 / 5e-3)

    assert _folders(tmp_path) == ["run-001", "run-002", "run-003"]
    meta = json.loads((lower.run_dir / "run.json").read_text())
    assert meta["forked_from"] == {"run": "run-001", "step": 10}
    assert meta["fork_changes"] == {"lr": 1e-3}
    assert json.loads((same.run_dir / "run.json").read_text())["fork_changes"] == {}
    assert [p.name for p in parent.forks] == ["run-002", "run-003"]
    assert lower.parent == parent.run_dir and parent.parent is None
    assert parent.superseded_by is lower
    # The fork's folder is a run of its own: its first checkpoint is the fork step.
    assert fork_steps(lower)[0] == 10


def test_a_fork_says_clearly_what_it_cannot_do(tmp_path, tiny_model_dir):
    spec = TrainSpec(max_steps=10, lr=5e-3, batch_size=8, save_every=2, seed=3)
    parent = toy_run(tiny_model_dir, tmp_path / "runs" / "run-001", spec)
    assert fork_steps(parent) == [8, 10]  # keep_checkpoints=2 pruned the rest
    with pytest.raises(SpecError) as err:
        parent.fork(step=4, lr=1e-3)
    assert "no checkpoint at step 4" in str(err.value)
    assert "checkpoints exist at steps [8, 10]" in str(err.value)
    assert "keep_checkpoints='all'" in str(err.value)
    with pytest.raises(SpecError, match="a fork cannot change lora: it defines the adapter"):
        parent.fork(step=8, lora=LoRA(r=4))
    with pytest.raises(SpecError, match="a fork cannot change batch_size"):
        parent.fork(step=8, batch_size=4)
    with pytest.raises(SpecError, match="a fork cannot change quantization"):
        parent.fork(step=8, quantization="4bit")
    with pytest.raises(SpecError, match=r"does not know the setting\(s\) \['learning_rate'\]"):
        parent.fork(step=8, learning_rate=1e-3)
    with pytest.raises(SpecError, match="none past its start at step 8"):
        parent.fork(step=8, max_steps=8)
    with pytest.raises(SpecError, match="max_length= re-cuts the data"):
        parent.fork(step=8, max_length=16)
    parent.fork(step=8, lora=LoRA(), lr=5e-3, max_steps=9).wait(60)  # unchanged: allowed
    assert _folders(tmp_path) == ["run-001", "run-002"]  # the refusals wrote nothing


def test_a_running_run_is_refused_and_a_paused_one_is_stopped_then_forked(tmp_path, tiny_model_dir):
    events, reached, gate = EventHub(), threading.Event(), threading.Event()

    def hold(payload):
        if payload.record.kind == "train" and payload.record.step == 9:
            reached.set()
            gate.wait(30)

    events.on("train_log", hold)
    spec = TrainSpec(max_steps=30, lr=5e-3, batch_size=8, save_every=2, seed=3)
    parent = toy_run(tiny_model_dir, tmp_path / "runs" / "run-001", spec, events, wait=False)
    assert reached.wait(30)
    monitor = parent.monitor()
    assert monitor.fork_button.disabled and monitor.fork_step.disabled
    with pytest.raises(SessionStateError, match=r"run-001 is running .*call run.pause\(\) first"):
        parent.fork(step=6)
    parent.pause(wait=False)
    gate.set()
    assert parent.pause(timeout=30).step == 9
    assert fork_steps(parent) == [6, 8, 9]  # two checkpoints, and the step it is paused at
    # Stopping saves step 9 and prunes step 6 (keep_checkpoints=2): forking from step 6
    # still works, from a copy taken before the stop.
    fork = parent.fork(step=6, lr=1e-3, max_steps=10)
    assert parent.state is RunState.STOPPED and parent.superseded_by is fork
    assert fork_steps(parent) == [8, 9]
    assert fork.wait(60).state is RunState.FINISHED
    assert [r.step for r in fork.history if r.kind == "train"] == list(range(1, 11))
    with pytest.raises(SessionStateError, match="handed its model to its fork run-002"):
        parent.resume()
    assert monitor.resume_button.disabled


def test_the_session_adopts_the_fork_and_recuts_the_data(tmp_path, tiny_model_dir):
    s = _session(tmp_path, tiny_model_dir)
    parent = s.train(max_steps=8, lr=5e-3, save_every=4, keep_checkpoints=None, wait=False)
    assert parent.wait(60).state is RunState.FINISHED
    longest = int(parent.loop.train.lengths.max())
    fork = parent.fork(step=4, max_length=longest - 4)
    assert s.run is fork and s.model is fork.model
    assert fork.wait(60).state is RunState.FINISHED
    assert int(fork.loop.train.lengths.max()) <= longest - 4
    meta = json.loads((fork.run_dir / "run.json").read_text())
    assert meta["fork_changes"] == {"max_length": longest - 4}
    # resumed, a fork is checked against its parent's base as its parent would be
    parents = json.loads((parent.run_dir / "run.json").read_text())
    assert meta["base_fingerprint"] == parents["base_fingerprint"]
    assert isinstance(s.generate("1 cat", max_new_tokens=3), str)
    s.load_model(str(tiny_model_dir))  # the session's model is no longer the run's
    # its model was let go of with the load (Session.resume goes on from its checkpoints)
    with pytest.raises(SessionStateError, match="let go of when the session loaded another"):
        parent.fork(step=4)


def test_the_monitor_overlays_parent_and_forks_and_its_button_forks(tmp_path, tiny_model_dir):
    s = _session(tmp_path, tiny_model_dir)
    spec = {"max_steps": 12, "lr": 5e-3, "batch_size": 8, "save_every": 3}
    parent = s.train(keep_checkpoints="all", wait=False, **spec)
    assert parent.wait(60).state is RunState.FINISHED
    fork = parent.fork(step=6, lr=1e-3)
    assert fork.wait(60).state is RunState.FINISHED
    parent_losses, fork_losses = train_losses(parent), train_losses(fork)

    monitor = fork.monitor()
    assert set(monitor.overlays) == {"run-001 (parent)", "fork points"}
    overlay = monitor.overlays["run-001 (parent)"]
    assert list(overlay.x) == list(range(1, 13))
    assert list(overlay.y) == pytest.approx(parent_losses)
    assert list(monitor.traces["loss"].y) == pytest.approx(fork_losses)
    points = monitor.overlays["fork points"]
    assert (list(points.x), list(points.text)) == ([6], ["fork @6"])
    assert list(points.y) == pytest.approx([parent_losses[5]])
    assert [shape.x0 for shape in monitor.figure.layout.shapes] == [6]
    assert list(TrainingMonitor.from_folder(fork.run_dir).overlays) == list(monitor.overlays)

    seen = parent.monitor()
    label = "run-002 fork @6, lr 1e-3"
    assert list(seen.overlays[label].x) == list(range(6, 13))
    assert list(seen.overlays[label].y) == pytest.approx(fork_losses[5:])
    assert list(seen.overlays["fork points"].text) == ["run-002 @6"]

    # The Fork button of the fork's monitor: a fork of the fork, from its step-9 checkpoint.
    assert list(monitor.fork_step.options) == [6, 9, 12]
    assert not monitor.fork_button.disabled
    monitor.fork_step.value, monitor.fork_lr.value = 9, 5e-4
    monitor.fork_button.click()
    grandchild = monitor.last_fork
    assert grandchild is s.run and grandchild.run_dir.name == "run-003"
    assert monitor.fork_box.children == (grandchild.monitor().widget,)
    assert "started run-003 fork @9, lr 5e-4" in monitor.fork_html.value
    assert grandchild.wait(60).state is RunState.FINISHED
    monitor.refresh()
    mine = monitor.overlays["run-003 fork @9, lr 5e-4"]
    assert list(mine.x) == list(range(9, 13))
    assert list(mine.y) == pytest.approx(train_losses(grandchild)[8:])
    assert _folders(tmp_path) == ["run-001", "run-002", "run-003"]
    monitor.fork_step.value = 12
    monitor.fork_lr.value = 1e-3
    monitor.fork_button.click()  # run-002 no longer has steps to run past 12: says why
    assert "none past its start at step 12" in monitor.fork_html.value
    for m in (monitor, seen):
        m.close()


def test_a_damaged_checkpoint_is_named_not_called_missing_or_pruned(tmp_path, tiny_model_dir):
    s = _session(tmp_path, tiny_model_dir)
    run = s.train(max_steps=6, lr=5e-3, batch_size=8, save_every=2, keep_checkpoints="all")
    weights = next((run.run_dir / "checkpoints" / "step-00000004").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"damaged!")
    with pytest.raises(SpecError, match=r"checkpoint at step 4 is damaged \(.*steps \[2, 6\]"):
        run.fork(step=4)
    with pytest.warns(wb.WorkbenchWarning, match="step-00000004 is damaged .* left out"):
        grid = s.evaluate(checkpoints="all", metrics=["exact_match"], max_new_tokens=2, limit=2)
    assert grid.steps == (2, 6)


def test_a_deleted_run_folder_is_named_not_told_to_train_more(tmp_path, tiny_model_dir):
    # fork said "it has no checkpoint yet ... save_every", a sweep said "train first"
    import shutil

    import workbench as wb
    from workbench.errors import SpecError

    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)], validation=0.25)
    run = s.train(max_steps=2, batch_size=4, save_every=1, wait=True)
    shutil.rmtree(run.run_dir)
    with pytest.raises(SpecError, match=r"run-001 was deleted, with its checkpoints"):
        run.fork(step=1, lr=1e-4)
    with pytest.raises(SpecError, match=r"run-001 was deleted, with its checkpoints"):
        s.evaluate(checkpoints="all", metrics=["exact_match"])


def test_a_fork_killed_before_its_first_checkpoint_is_refused_not_restarted_from_zero(
    tmp_path, tiny_model_dir
):
    """The fork's folder is placed before its starting checkpoint is written: a process
    killed in between left a fork that resume trained from step 0 at the fork's lr, still
    labelled "forked from run-001 at step 4". Now resume says so and how to fork again."""
    import subprocess
    import sys

    child = f"""
import os, signal, workbench as wb, workbench.train.store as store
s = wb.Session({str(tmp_path)!r}, verbose=False)
s.load_model({str(tiny_model_dir)!r})
s.load_data({_rows(32)!r})
parent = s.train(max_steps=8, lr=5e-3, batch_size=4, save_every=2, keep_checkpoints="all",
                 seed=5, wait=True)
store.rewrite_jsonl = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)  # the kill
parent.fork(step=4, lr=1e-3, wait=True)
"""
    killed = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert _folders(tmp_path) == ["run-001", "run-002"]
    s = wb.Session(tmp_path, verbose=False)
    s.load_model(str(tiny_model_dir))
    with pytest.raises(SpecError, match=r"run-002 is a fork of run-001 at step 4 that has no "
                       r"valid checkpoint of its own .* Fork run-001 again \(run = session"
                       r"\.resume\('.*run-001'\); run\.fork\(step=4, \.\.\.\)\)"):  # fmt: skip
        s.resume(tmp_path / "runs" / "run-002", wait=True)
    assert not list((tmp_path / "runs" / "run-002").glob("checkpoints/step-*"))  # untouched
    parent = s.resume(tmp_path / "runs" / "run-001", wait=True)  # the way out it names
    fork = parent.fork(step=4, lr=1e-3, wait=True)
    assert fork.state is RunState.FINISHED and fork.run_dir.name == "run-003"
    assert [r.step for r in fork.history if r.kind == "train"][4:] == [5, 6, 7, 8]
