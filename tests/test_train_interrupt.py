"""Ctrl-C (a notebook's stop button) the moment a run starts: train, resume and fork stop
the run they started, saving its step, and the session holds it. Before, an interrupt there
either undid the start under a live training thread (its adapter taken off, its folder
removed) or left the run training with nobody waiting."""

from __future__ import annotations

import signal
import threading

import pytest

import workbench as wb
from workbench.train import RunState

ROWS = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)]


def _interrupt_when_running(s: wb.Session) -> list:
    """Send this process a real SIGINT from the listener of the first ``running`` state:
    the main thread, inside ``Run.start``, once the run's status says running."""
    sent = []

    def listener(event) -> None:
        if event.status.state is RunState.RUNNING and not sent:
            sent.append(event.run)
            signal.raise_signal(signal.SIGINT)

    s.on("train_state", listener)
    return sent


def _training_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("train:") and t.is_alive()]


def _started_and_stopped(s: wb.Session, err: KeyboardInterrupt, sent: list) -> wb.Run:
    run = s.run
    assert run is not None and str(run.run_dir) == sent[0]
    assert str(err).startswith(f"interrupted: {run.run_dir.name} stopped at step ")
    assert run.state is RunState.STOPPED and not _training_threads()
    assert (run.run_dir / "checkpoints" / f"step-{run.status.step:08d}").is_dir()
    assert any(".lora_A." in name for name, _ in s.model.named_parameters())
    return run


@pytest.mark.parametrize("wait", [True, False])
def test_train_interrupted_as_its_run_starts_stops_the_run_and_holds_it(
    tmp_path, tiny_model_dir, wait
):
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.load_data(ROWS, validation=None)
    sent = _interrupt_when_running(s)
    with pytest.raises(KeyboardInterrupt) as caught:
        s.train(max_steps=6, batch_size=2, wait=wait)
    run = _started_and_stopped(s, caught.value, sent)
    assert run.resume().state is RunState.RUNNING  # the stopped run goes on, as said
    assert run.wait().state is RunState.FINISHED and run.status.step == 6


def test_resume_interrupted_as_its_run_starts_stops_it_and_keeps_the_resumed_model(
    tmp_path, tiny_model_dir
):
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.load_data(ROWS, validation=None)
    first = s.train(max_steps=6, batch_size=2, wait=False)
    first.stop()
    first.wait()
    later = wb.Session(tmp_path / "later", verbose=False)
    sent = _interrupt_when_running(later)
    with pytest.raises(KeyboardInterrupt) as caught:
        later.resume(first.run_dir, model=str(tiny_model_dir), wait=True)
    run = _started_and_stopped(later, caught.value, sent)
    assert run.model is later.model  # the model the run trains, not the one put back
    assert later.resume(run.run_dir, wait=True).status.step == 6


def test_fork_interrupted_as_its_run_starts_stops_the_fork_and_the_session_holds_it(
    tmp_path, tiny_model_dir
):
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.load_data(ROWS, validation=None)
    parent = s.train(max_steps=4, batch_size=2, save_every=2, keep_checkpoints="all", wait=True)
    sent = _interrupt_when_running(s)
    with pytest.raises(KeyboardInterrupt) as caught:
        parent.fork(step=2, lr=1e-4, wait=True)
    fork = _started_and_stopped(s, caught.value, sent)
    assert fork is not parent and fork.run_dir != parent.run_dir


# A real SIGINT at a chosen file operation of the start (an audit hook, in a child process:
# hooks cannot be removed): where a Ctrl-C lands before the run's thread exists.
_AT_FILE_SCRIPT = """
import json, os, signal, sys, threading, traceback
import torch
import workbench as wb

tiny, folder, mode = sys.argv[1], sys.argv[2], sys.argv[3]
rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)]
s = wb.Session(folder, verbose=False)
s.load_model(tiny)
s.load_data(rows, validation=None)
out = {}
if mode == "fork":
    parent = s.train(max_steps=4, batch_size=2, save_every=2, keep_checkpoints="all", wait=True)
    before = {n: p.detach().clone() for n, p in s.model.named_parameters() if p.requires_grad}
# each an audit event ("open" or "shutil.rmtree") and the parts its path holds
targets = {
    # the reserved, empty run-001 swapped out for the written one, then removed
    "train": [("shutil.rmtree", ".run-001.partial")],
    # writing run.json, then the clean-up of that half-written folder (a double click)
    "twice": [("open", "run-001", "run.json"), ("shutil.rmtree", "run-001")],
    "fork": [("open", "run-002", "step-00000002", "optimizer.pt")],  # its first checkpoint
}
pending = list(targets[mode])

def hook(event, args):
    if pending and event == pending[0][0] and all(p in str(args[0]) for p in pending[0][1:]):
        pending.pop(0)
        signal.raise_signal(signal.SIGINT)

sys.addaudithook(hook)
try:
    if mode == "fork":
        parent.fork(step=2, lr=1e-4, wait=True)
    else:
        s.train(max_steps=4, batch_size=2, wait=True)
    out["raised"] = None
except KeyboardInterrupt as err:
    out["raised"] = str(err)
    out["chained"] = "During handling" in "".join(traceback.format_exception(err))
out["sent"] = len(targets[mode]) - len(pending)
pending.clear()
out["run"] = None if s.run is None else s.run.run_dir.name
out["runs"] = sorted(p.name for p in (s.folder.root / "runs").iterdir() if p.is_dir())
out["lora"] = any("lora_" in n for n, _ in s.model.named_parameters())
out["threads"] = [t.name for t in threading.enumerate() if t.name.startswith("train:")]
if mode == "fork":
    now = dict(s.model.named_parameters())
    out["parent_weights_back"] = all(torch.equal(now[n], p) for n, p in before.items())
    out["superseded"] = parent.superseded_by is not None
    out["fork_after"] = parent.fork(step=2, lr=1e-4, wait=True).state.value
else:
    out["train_after"] = s.train(max_steps=2, batch_size=2, wait=True).state.value
print("RESULT " + json.dumps(out))
"""


def _interrupted_at_a_file(tmp_path, tiny_model_dir, mode: str) -> dict:
    import json
    import subprocess
    import sys

    script = tmp_path / "at_file.py"
    script.write_text(_AT_FILE_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(tiny_model_dir), str(tmp_path / "s"), mode],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


@pytest.mark.parametrize("mode", ["train", "twice"])
def test_an_interrupt_while_the_run_folder_is_written_leaves_nothing(
    tmp_path, tiny_model_dir, mode
):
    # It left runs/run-001 holding data and run.json; a second Ctrl-C during the clean-up
    # (a double click on stop) left the folder half removed under a chained traceback.
    out = _interrupted_at_a_file(tmp_path, tiny_model_dir, mode)
    assert out["sent"] == (2 if mode == "twice" else 1)
    assert out["raised"] is not None and not out["chained"]
    assert out["run"] is None and not out["lora"] and not out["threads"]
    assert out["runs"] == []
    assert out["train_after"] == "finished"


def test_a_fork_interrupted_before_it_starts_gives_the_parent_its_weights_back(
    tmp_path, tiny_model_dir
):
    # Its checkpoint was already in the shared model: s.run said the parent's step 4 while
    # the model held step 2's weights, the parent pointed at a fork that never ran, and
    # runs/run-002 stayed behind.
    out = _interrupted_at_a_file(tmp_path, tiny_model_dir, "fork")
    assert out["sent"] == 1 and out["raised"] is not None
    assert out["run"] == "run-001" and out["runs"] == ["run-001"]
    assert out["parent_weights_back"] and not out["superseded"] and not out["threads"]
    assert out["fork_after"] == "finished"
