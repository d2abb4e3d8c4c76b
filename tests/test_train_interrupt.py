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
