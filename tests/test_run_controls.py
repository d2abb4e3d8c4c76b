"""Run controls in odd orders and from two threads: pause, step_once, resume, stop, wait.

Teaching mode steps a paused run one optimizer step at a time, and the monitor's buttons
call the same methods as the notebook, from another thread, while the worker trains. These
tests drive real runs of the tiny model through the interleavings that could race and check
what the user sees: each accepted ``step_once`` is exactly one step (none lost, none extra),
a blocking control returns only once the run has settled (paused with nothing left to do,
or ended), ``run.status`` agrees with ``run.history`` and ``status.json``, and the published
``train_state`` events only make legal moves.

The worker is held at chosen points by a ``train_log`` listener that blocks (the worker
publishes on its own thread), so most interleavings are forced, not left to timing; the
last test adds a seeded stress loop of random control sequences from two threads.
"""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from train_helpers import Recorder, fresh, toy_run

from workbench.errors import SessionStateError, SpecError
from workbench.events import EventHub
from workbench.train import RunState, TrainSpec
from workbench.train.checkpoint import latest_checkpoint

# Never reaches max_steps in these tests; no scheduled evaluation or checkpoint gets in the
# way (stop() always saves the step it stopped at).
SPEC = TrainSpec(max_steps=500, lr=5e-3, batch_size=2, eval_every=1000, save_every=1000, seed=5)
WAIT = 90.0  # generous: a loaded 2-core machine may take seconds per control

# Which train_state may follow which. stop() sets "stopping" under the lock the worker
# waits on, so a run stopped by the user always passes through it; a launched run's states
# come from its child's status file, which may skip it ("running"/"paused" -> "stopped").
LEGAL = {
    "running": {"paused", "stopping", "stopped", "finished", "failed"},
    "paused": {"running", "stopping", "stopped", "failed"},
    "stopping": {"stopped", "failed"},
    "stopped": {"running"},
    "finished": set(),
    "failed": set(),
}


class Gate:
    """Holds the worker inside the ``train_log`` event of one record until released."""

    def __init__(self, events: EventHub) -> None:
        self.kind, self.step = "", -1
        self.reached, self.go = threading.Event(), threading.Event()
        events.on("train_log", self._hold)

    def arm(self, kind: str, step: int) -> None:
        self.kind, self.step = kind, step
        self.reached.clear()
        self.go.clear()

    def release(self) -> None:
        self.kind = ""
        self.go.set()

    def _hold(self, payload) -> None:
        if (payload.record.kind, payload.record.step) == (self.kind, self.step):
            self.reached.set()
            self.go.wait(WAIT)


def _start(tiny_model_dir, run_dir, spec=SPEC, loaded=None):
    """A run paused near its start, with its state recorder and a gate."""
    events = EventHub()
    recorder, gate = Recorder(events), Gate(events)
    run = toy_run(tiny_model_dir, run_dir, spec, events=events, wait=False, n=16, loaded=loaded)
    assert run.pause(timeout=WAIT).state is RunState.PAUSED
    return run, recorder, gate


def _until(predicate, timeout=WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def _train_steps(run) -> list[int]:
    return [r.step for r in run.history if r.kind == "train"]


def _file_state(run) -> str:
    return json.loads((run.run_dir / "status.json").read_text())["state"]


def _assert_legal(states: list[str]) -> None:
    assert states and states[0] == "running", states
    for k, (a, b) in enumerate(itertools.pairwise(states)):
        assert b in LEGAL[a], f"{a!r} -> {b!r} at event {k + 1}: {states}"


def _assert_settled(run, recorder, state=RunState.PAUSED, step=None) -> None:
    """The run is in ``state``; status, history, status.json and the events all agree."""
    status = run.status
    assert status.state is state, status
    steps = _train_steps(run)
    assert steps == list(range(1, len(steps) + 1)), steps  # no step lost or taken twice
    assert status.step == (steps[-1] if steps else 0)
    if step is not None:
        assert status.step == step
    # The event and the file go out just after the status changes: allow them a moment.
    assert _until(lambda: recorder.states[-1] == state.value), recorder.states
    assert _until(lambda: _file_state(run) == state.value)
    _assert_legal(recorder.states)


def _end(run, recorder) -> None:
    """Stop the run; it ends stopped with a checkpoint of the step it reached."""
    run.stop()
    status = run.wait(WAIT)
    assert status.state is RunState.STOPPED, status
    assert latest_checkpoint(run.run_dir).name == f"step-{status.step:08d}"
    # wait() returns after the worker's last act, publishing "stopped": nothing comes later.
    assert recorder.states[-1] == "stopped", recorder.states
    assert _file_state(run) == "stopped"
    _assert_settled(run, recorder, RunState.STOPPED)


@pytest.fixture
def pool():
    with ThreadPoolExecutor(2) as executor:
        yield executor


def test_step_once_is_refused_until_the_pause_is_honoured(tiny_model_dir, tmp_path):
    run, recorder, gate = _start(tiny_model_dir, tmp_path / "run")
    at = run.status.step + 2
    gate.arm("train", at)
    run.resume()
    assert gate.reached.wait(WAIT)  # the worker is inside step `at`: still running
    assert run.pause(wait=False).state is RunState.RUNNING
    with pytest.raises(SpecError, match="step_once needs a paused run, but it is running"):
        run.step_once()
    gate.release()
    assert run.pause(timeout=WAIT).step == at
    status = run.step_once(timeout=WAIT)
    assert (status.state, status.step) == (RunState.PAUSED, at + 1)
    _assert_settled(run, recorder, step=at + 1)
    _end(run, recorder)


def test_steps_asked_before_the_worker_wakes_are_each_taken_once(tiny_model_dir, tmp_path, pool):
    run, recorder, gate = _start(tiny_model_dir, tmp_path / "run")
    start = run.status.step
    # Evaluate now while paused: the worker serves it still paused, and is held in its record.
    gate.arm("eval", start)
    run.evaluate_now()
    assert gate.reached.wait(WAIT)
    assert run.step_once(wait=False).state is RunState.PAUSED
    assert run.step_once(wait=False).state is RunState.PAUSED
    third = pool.submit(run.step_once, timeout=WAIT)  # asked third: returns after the third
    paused = pool.submit(run.pause, timeout=WAIT)  # returns once nothing is left to do
    assert _until(lambda: run.pending_steps == 3)  # the third is asked before the worker goes
    gate.release()
    for future in (third, paused):
        status = future.result(WAIT)
        assert (status.state, status.step) == (RunState.PAUSED, start + 3)
    _assert_settled(run, recorder, step=start + 3)
    assert recorder.states[-6:] == ["running", "paused"] * 3
    _end(run, recorder)


def test_pause_while_a_single_step_runs_returns_after_it(tiny_model_dir, tmp_path, pool):
    run, recorder, gate = _start(tiny_model_dir, tmp_path / "run")
    start = run.status.step
    gate.arm("train", start + 1)
    assert run.step_once(wait=False).step == start
    assert gate.reached.wait(WAIT)
    assert run.state is RunState.RUNNING
    paused = pool.submit(run.pause, timeout=WAIT)
    assert run.pause(wait=False).state is RunState.RUNNING  # asked twice: still one step
    with pytest.raises(SpecError, match="but it is running"):
        run.step_once()  # the button is only for a paused run
    gate.release()
    status = paused.result(WAIT)
    assert (status.state, status.step) == (RunState.PAUSED, start + 1)
    assert run.step_once(timeout=WAIT).step == start + 2
    _assert_settled(run, recorder, step=start + 2)
    _end(run, recorder)


def test_stop_during_a_single_step_saves_that_step(tiny_model_dir, tmp_path, pool):
    run, recorder, gate = _start(tiny_model_dir, tmp_path / "run")
    start = run.status.step
    gate.arm("train", start + 1)
    stepping = pool.submit(run.step_once, timeout=WAIT)
    assert gate.reached.wait(WAIT)
    assert run.stop().state is RunState.STOPPING
    with pytest.raises(SpecError, match="but it is stopping"):
        run.step_once()
    with pytest.raises(SessionStateError, match="still stopping"):
        run.resume()
    assert run.pause().state is RunState.STOPPING  # nothing to pause: it returns at once
    gate.release()
    assert stepping.result(WAIT).state is RunState.STOPPED
    status = run.wait(WAIT)
    assert (status.state, status.step, status.message) == (
        RunState.STOPPED,
        start + 1,
        "stopped by the user",
    )
    assert latest_checkpoint(run.run_dir).name == f"step-{start + 1:08d}"
    assert recorder.states[-4:] == ["paused", "running", "stopping", "stopped"]
    _assert_settled(run, recorder, RunState.STOPPED, step=start + 1)
    # A new worker goes on from there, and teaching mode works on it as before.
    run.resume()
    assert run.pause(timeout=WAIT).state is RunState.PAUSED
    at = run.status.step
    assert run.step_once(timeout=WAIT).step == at + 1
    _assert_settled(run, recorder, step=at + 1)
    _end(run, recorder)


def test_stop_of_a_paused_run_reports_stopping_even_when_the_worker_ends_at_once(
    tiny_model_dir, tmp_path
):
    # A paused worker wakes on stop() and may save and end before stop() returns: stop()
    # still reports (and publishes) the "stopping" it set, every time.
    run, recorder, _ = _start(tiny_model_dir, tmp_path / "run")
    for _ in range(3):
        assert run.stop().state is RunState.STOPPING
        assert run.wait(WAIT).state is RunState.STOPPED
        assert recorder.states[-2:] == ["stopping", "stopped"], recorder.states
        run.resume()
        assert run.pause(timeout=WAIT).state is RunState.PAUSED
    # The worst interleaving, forced: any later state change from this thread waits until
    # the worker has ended the run (as a caller preempted right after asking would).
    caller, set_state = threading.current_thread(), run._set_state

    def late_from_the_caller(worker, state, **changes):
        if threading.current_thread() is caller:
            assert _until(lambda: run.status.done)
        return set_state(worker, state, **changes)

    run._set_state = late_from_the_caller
    assert run.stop().state is RunState.STOPPING
    assert run.wait(WAIT).state is RunState.STOPPED
    assert recorder.states[-2:] == ["stopping", "stopped"], recorder.states


def test_stop_while_a_single_step_is_asked_but_not_begun(tiny_model_dir, tmp_path):
    run, recorder, gate = _start(tiny_model_dir, tmp_path / "run")
    start = run.status.step
    gate.arm("eval", start)
    run.evaluate_now()
    assert gate.reached.wait(WAIT)
    run.step_once(wait=False)
    run.stop()
    gate.release()
    status = run.wait(WAIT)
    assert (status.state, status.step) == (RunState.STOPPED, start)  # stop wins
    # The step asked before the stop is forgotten, not taken by the next start.
    run.resume()
    assert run.pause(timeout=WAIT).state is RunState.PAUSED
    at = run.status.step
    assert run.step_once(timeout=WAIT).step == at + 1
    _assert_settled(run, recorder, step=at + 1)
    _end(run, recorder)


def test_step_once_right_after_resume_is_refused_and_leaves_nothing_behind(
    tiny_model_dir, tmp_path
):
    run, recorder, gate = _start(tiny_model_dir, tmp_path / "run")
    start = run.status.step
    gate.arm("eval", start)
    run.evaluate_now()
    assert gate.reached.wait(WAIT)  # the worker is busy: the state still says paused
    run.resume()
    assert run.state is RunState.PAUSED and run.resuming  # what the session's checks read
    with pytest.raises(SpecError, match="step_once needs a paused run, but it is resuming"):
        run.step_once(wait=False)
    gate.release()
    run.wait(step=start + 2, timeout=WAIT)
    assert not run.resuming
    at = run.pause(timeout=WAIT).step
    # Paused means paused: no step asked earlier sneaks in now.
    assert run.step_once(timeout=WAIT).step == at + 1
    assert run.step_once(timeout=WAIT).step == at + 2
    _assert_settled(run, recorder, step=at + 2)
    _end(run, recorder)


def test_resume_after_step_once_without_wait(tiny_model_dir, tmp_path, pool):
    spec = TrainSpec(max_steps=8, lr=5e-3, batch_size=2, eval_every=100, save_every=100)
    run, recorder, gate = _start(tiny_model_dir, tmp_path / "run", spec)
    start = run.status.step
    gate.arm("eval", start)
    run.evaluate_now()
    assert gate.reached.wait(WAIT)
    run.step_once(wait=False)
    waiting = pool.submit(run.step_once, timeout=WAIT)  # overtaken by resume(): returns
    assert _until(lambda: run.pending_steps == 2)
    run.resume()
    gate.release()
    assert waiting.result(WAIT).state in (RunState.PAUSED, RunState.RUNNING, RunState.FINISHED)
    status = run.wait(WAIT)
    assert (status.state, status.step) == (RunState.FINISHED, 8)
    assert run.wait().state is RunState.FINISHED  # wait() on an ended run returns at once
    _assert_settled(run, recorder, RunState.FINISHED, step=8)


def test_step_once_on_the_last_step_finishes(tiny_model_dir, tmp_path, pool):
    spec = TrainSpec(max_steps=4, lr=5e-3, batch_size=2, eval_every=100, save_every=100)
    run, recorder, gate = _start(tiny_model_dir, tmp_path / "run", spec)
    while run.status.step < 3:
        assert run.step_once(timeout=WAIT).state is RunState.PAUSED
    gate.arm("eval", 3)
    run.evaluate_now()
    assert gate.reached.wait(WAIT)
    run.step_once(wait=False)  # the last step
    extra = pool.submit(run.step_once, timeout=WAIT)  # no step left for it: it sees the end
    assert _until(lambda: run.pending_steps == 2)
    gate.release()
    assert extra.result(WAIT).state is RunState.FINISHED
    status = run.wait(WAIT)
    assert (status.state, status.step) == (RunState.FINISHED, 4)
    assert recorder.states[-3:] == ["paused", "running", "finished"]
    assert latest_checkpoint(run.run_dir).name == "step-00000004"
    with pytest.raises(SpecError, match="but it is finished"):
        run.step_once()
    assert run.pause().state is RunState.FINISHED
    _assert_settled(run, recorder, RunState.FINISHED, step=4)


def test_a_run_that_fails_during_a_single_step(tiny_model_dir, tmp_path, pool):
    loaded = fresh(tiny_model_dir)
    poison = threading.Event()

    def nan_when_asked(module, inputs, output):
        return output * float("nan") if module.training and poison.is_set() else output

    loaded.model.model.norm.register_forward_hook(nan_when_asked)
    run, recorder, _gate = _start(tiny_model_dir, tmp_path / "run", loaded=loaded)
    start = run.step_once(timeout=WAIT).step  # a checkpoint-less run has nothing to keep
    run.save_now()
    assert _until(lambda: latest_checkpoint(run.run_dir) is not None)
    poison.set()
    run.step_once(wait=False)
    paused = pool.submit(run.pause, timeout=WAIT)  # returns once the step is over: failed
    assert paused.result(WAIT).state is RunState.FAILED
    status = run.wait(WAIT)
    assert status.state is RunState.FAILED
    assert status.error.startswith(f"the training loss became nan at step {start + 1}")
    assert status.step == start
    assert latest_checkpoint(run.run_dir).name == f"step-{start:08d}"
    assert recorder.states[-3:] == ["paused", "running", "failed"]
    _assert_settled(run, recorder, RunState.FAILED, step=start)
    with pytest.raises(SpecError, match="the run is failed; nothing to resume"):
        run.resume()


def test_two_threads_resuming_a_stopped_run_start_one_worker(tiny_model_dir, tmp_path, pool):
    run, recorder, _gate = _start(tiny_model_dir, tmp_path / "run")
    for _ in range(4):
        _end(run, recorder)
        together = threading.Barrier(2)

        def resume(together=together):
            together.wait(WAIT)
            return run.resume()

        resumed = [pool.submit(resume), pool.submit(resume)]
        for future in resumed:
            future.result(WAIT)
        assert run.state is RunState.RUNNING
        # One "running", from the one new worker (a second would train the same model).
        assert _until(lambda: recorder.states[-1] != "stopped")
        assert recorder.states[-1] == "running", recorder.states
        assert run.pause(timeout=WAIT).state is RunState.PAUSED
        assert run.step_once(timeout=WAIT).state is RunState.PAUSED
        _assert_settled(run, recorder)
    _end(run, recorder)


# -- stress: random control sequences from two threads --------------------------------------
TEACHING = ["step", "step", "step_nowait", "step_nowait", "pause", "pause_nowait", "eval"]
FREE = [*TEACHING, "resume", "resume", "stop", "save"]


def _control(run, op: str) -> bool:
    """Do ``op``; ``True`` when it was a ``step_once`` the run accepted."""
    try:
        if op in ("step", "step_nowait"):
            run.step_once(wait=op == "step", timeout=WAIT)
            return True
        if op == "pause":
            run.pause(timeout=WAIT)
        elif op == "pause_nowait":
            run.pause(wait=False)
        elif op == "resume":
            run.resume()
        elif op == "stop":
            run.stop()
        elif op == "eval":
            run.evaluate_now()
        elif op == "save":
            run.save_now()
    except (SpecError, SessionStateError):  # refused (not paused, still stopping): no effect
        pass
    return False


def _settle(run) -> None:
    """Bring the run back to paused (waiting out a stop, then resuming)."""
    if run.state in (RunState.STOPPING, RunState.STOPPED):
        status = run.wait(WAIT)
        assert status.state is RunState.STOPPED, status
        assert latest_checkpoint(run.run_dir).name == f"step-{status.step:08d}"
        run.resume()
    assert run.pause(timeout=WAIT).state is RunState.PAUSED


def test_random_control_sequences_from_two_threads(tiny_model_dir, tmp_path, pool):
    rng = random.Random(20240611)
    run, recorder, _gate = _start(tiny_model_dir, tmp_path / "run")
    for round_ in range(36):
        teaching = round_ % 3 != 2  # two rounds in three only step and pause a paused run
        ops = TEACHING if teaching else FREE
        mine = [rng.choice(ops) for _ in range(rng.randint(2, 6))]
        theirs = [rng.choice(ops) for _ in range(rng.randint(2, 6))]
        before = run.status.step
        other = pool.submit(lambda ops=theirs: sum(_control(run, op) for op in ops))
        accepted = sum(_control(run, op) for op in mine) + other.result(WAIT)
        _settle(run)
        where = f"round {round_}: {mine} | {theirs}"
        if teaching:  # every accepted step_once is one step, none lost, none extra
            assert run.status.step == before + accepted, where
        _assert_settled(run, recorder)
    _end(run, recorder)


def test_resume_waits_for_an_evaluation_of_the_stopped_run_on_another_thread(
    tiny_model_dir, tmp_path, pool
):
    run, recorder, gate = _start(tiny_model_dir, tmp_path / "run")
    _end(run, recorder)
    step = run.status.step
    gate.arm("eval", step)
    evaluating = pool.submit(run.evaluate_now)  # served on that thread: no worker runs
    assert gate.reached.wait(WAIT)
    resuming = pool.submit(run.resume)
    time.sleep(1.0)  # room for a resume that does not wait to start a worker
    assert not resuming.done() and run.state is RunState.STOPPED
    assert recorder.states[-1] == "stopped"
    gate.release()
    evaluating.result(WAIT)
    assert resuming.result(WAIT).state is RunState.RUNNING  # then it resumes
    evals = [r for r in run.history if r.kind == "eval"]
    assert [r.step for r in evals] == [step]  # evaluated the weights it stopped with
    _end(run, recorder)
    assert _train_steps(run) == list(range(1, run.status.step + 1))


def test_evaluating_the_same_step_again_does_not_count_against_early_stopping(
    tiny_model_dir, tmp_path
):
    # Paused right after a scheduled evaluation: "Evaluate now" clicked twice evaluates the
    # same weights twice. With patience 1, each used to count as "no improvement", and the
    # second click ended a run that was still improving.
    spec = TrainSpec(max_steps=500, lr=5e-3, batch_size=2, eval_every=1, early_stopping=1, seed=5)
    run, recorder, _ = _start(tiny_model_dir, tmp_path / "run", spec)
    step = run.status.step
    evals = [r for r in run.history if r.kind == "eval"]
    assert evals and evals[-1].step == step  # evaluated at the step it paused on
    run.evaluate_now()
    run.evaluate_now()
    assert _until(lambda: len([r for r in run.history if r.kind == "eval"]) == len(evals) + 2)
    again = [r for r in run.history if r.kind == "eval"][-2:]
    assert [r.step for r in again] == [step, step]
    assert [r.eval_loss for r in again] == [evals[-1].eval_loss] * 2  # the same weights
    assert run.status.state is RunState.PAUSED and run.early.bad == 0
    _end(run, recorder)
