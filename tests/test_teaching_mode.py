"""Teaching mode on the tiny model: single steps while paused, per-layer norms, the heatmap."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
from train_helpers import Recorder, toy_run, train_losses

from workbench.errors import SpecError
from workbench.events import EventHub
from workbench.train import RunState, TrainSpec
from workbench.train.norms import block_index, group_norms, layer_groups

SPEC = TrainSpec(max_steps=8, lr=5e-3, batch_size=8, eval_every=100, save_every=100, seed=5)
LAYERS = 2  # the tiny model's transformer blocks


def _held_run(tiny_model_dir, run_dir, spec, hold_at: int):
    """A run whose worker waits inside the ``train_log`` of step ``hold_at`` until released."""
    events, reached, gate = EventHub(), threading.Event(), threading.Event()
    recorder = Recorder(events)

    def hold(payload):
        if payload.record.kind == "train" and payload.record.step == hold_at:
            reached.set()
            gate.wait(30)

    events.on("train_log", hold)
    run = toy_run(tiny_model_dir, run_dir, spec, events=events, wait=False)
    assert reached.wait(30)
    return run, recorder, gate


def _paused_at(tiny_model_dir, run_dir, spec, step: int):
    run, recorder, gate = _held_run(tiny_model_dir, run_dir, spec, step)
    run.pause(wait=False)
    gate.set()
    assert run.pause(timeout=30).state is RunState.PAUSED
    return run, recorder


def _until(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def test_step_once_takes_exactly_one_step_and_stays_paused(tiny_model_dir, tmp_path):
    straight = toy_run(tiny_model_dir, tmp_path / "straight", SPEC)
    run, recorder = _paused_at(tiny_model_dir, tmp_path / "run", SPEC, 2)
    with pytest.raises(SpecError, match="step_once needs a paused run, but it is"):
        straight.step_once()
    assert run.status.step == 2
    status = run.step_once(timeout=30)
    assert (status.state, status.step) == (RunState.PAUSED, 3)
    time.sleep(0.3)  # a paused worker stays put: no second step sneaks in
    assert (run.state, run.status.step, len(train_losses(run))) == (RunState.PAUSED, 3, 3)
    assert run.step_once(timeout=30).step == 4
    # The status changes just before its event goes out, so the recorder may lag a moment.
    expected = ["running", "paused", "running", "paused", "running", "paused"]
    assert _until(lambda: recorder.states == expected), recorder.states
    run.resume()
    assert run.wait(60).state is RunState.FINISHED
    assert recorder.states[-2:] == ["running", "finished"]
    # Stepping restores the RNG like resume(): the run matches an uninterrupted one.
    assert train_losses(run) == pytest.approx(train_losses(straight), rel=1e-5, abs=1e-7)
    assert run.layer_norms == []  # not tracked unless asked


def test_layer_norms_one_record_per_step(tiny_model_dir, tmp_path):
    spec = TrainSpec(max_steps=5, lr=5e-3, batch_size=8, eval_every=100, track_layer_norms=True)
    events = EventHub()
    published = []
    events.on("train_layer_norms", published.append)
    run = toy_run(tiny_model_dir, tmp_path / "run", spec, events=events)
    assert run.state is RunState.FINISHED
    assert [r["step"] for r in run.layer_norms] == [1, 2, 3, 4, 5]
    for record in run.layer_norms:
        assert record["layers"] == list(range(LAYERS))
        values = record["weight"] + record["grad"]
        assert len(values) == 2 * LAYERS and all(math.isfinite(v) and v > 0 for v in values)
    assert [p.step for p in published] == [1, 2, 3, 4, 5]
    assert published[0].run == str(run.run_dir)
    # Every LoRA matrix sits in a block, so the blocks' gradient norms make up the clipped
    # run's whole (pre-clipping) gradient norm.
    norms = [r.grad_norm for r in run.history if r.kind == "train"]
    totals = [math.sqrt(sum(g * g for g in r["grad"])) for r in run.layer_norms]
    assert totals == pytest.approx(norms, rel=1e-4)
    weights = [r["weight"] for r in run.layer_norms]
    assert weights[-1] != weights[0]  # the adapter moved
    assert group_norms(layer_groups(run.model), "weight") == pytest.approx(weights[-1])


def test_block_index_and_spec_field():
    assert block_index("base_model.model.model.layers.1.mlp.up_proj.lora_B.default.weight") == 1
    assert block_index("base_model.model.lm_head.weight") is None
    spec = TrainSpec(track_layer_norms=True)
    assert TrainSpec.from_dict(spec.to_dict()).track_layer_norms is True
    assert TrainSpec().track_layer_norms is False
    with pytest.raises(SpecError, match=r"track_layer_norms='yes' must be a bool"):
        TrainSpec(track_layer_norms="yes")


def test_teaching_monitor_steps_and_fills_the_heatmap(tiny_model_dir, tmp_path):
    run, _recorder, gate = _held_run(tiny_model_dir, tmp_path / "run", SPEC, 2)
    monitor = run.monitor(teaching=True)  # also turns layer-norm tracking on
    assert monitor.teaching and run.monitor() is monitor
    assert any(monitor.step_button in getattr(c, "children", ()) for c in monitor.widget.children)
    assert monitor.step_button.disabled  # running
    run.pause(wait=False)
    gate.set()
    assert run.pause(timeout=30).state is RunState.PAUSED
    assert _until(lambda: not monitor.step_button.disabled)
    assert monitor.heatmap.trace.z.shape == (0, 0)  # tracking began after step 2's backward
    monitor.step_button.click()
    assert monitor.step_button.disabled  # until the worker is paused again
    assert _until(lambda: run.status.step == 3 and not monitor.step_button.disabled)
    assert run.state is RunState.PAUSED
    assert _until(lambda: monitor.heatmap.trace.z.shape == (LAYERS, 1))
    monitor.step_button.click()
    assert _until(lambda: monitor.heatmap.trace.z.shape == (LAYERS, 2))
    assert list(monitor.heatmap.trace.x) == [3.0, 4.0]
    assert list(monitor.heatmap.trace.y) == list(range(LAYERS))
    grads = np.array([r["grad"] for r in run.layer_norms]).T  # blocks x steps
    np.testing.assert_allclose(monitor.heatmap.trace.z, grads)
    monitor.heatmap.kind.value = "weight"  # the toggle re-renders at once
    np.testing.assert_allclose(
        monitor.heatmap.trace.z, np.array([r["weight"] for r in run.layer_norms]).T
    )
    monitor.resume_button.click()
    assert run.wait(60).state is RunState.FINISHED
    monitor.refresh()
    assert monitor.heatmap.trace.z.shape == (LAYERS, SPEC.max_steps - 2)
    assert monitor.step_button.disabled
    with pytest.raises(SpecError, match="but it is finished"):
        run.step_once()
    monitor.close()


def test_a_step_click_while_a_resume_is_under_way_is_disabled_and_harmless(
    tiny_model_dir, tmp_path
):
    run, _recorder = _paused_at(tiny_model_dir, tmp_path / "run", SPEC, 2)
    held, gate = threading.Event(), threading.Event()

    def hold_running(payload):  # registered before the monitor: it hears "running" late
        if payload.status.state is RunState.RUNNING:
            held.set()
            gate.wait(30)

    off = run.events.on("train_state", hold_running)
    monitor = run.monitor(teaching=True)
    assert not monitor.step_button.disabled  # paused
    monitor.resume_button.click()
    assert held.wait(30)  # the worker runs; the monitor still shows paused
    assert monitor.status_text().startswith("paused")
    assert monitor.step_button.disabled and monitor.resume_button.disabled
    monitor.step_button.click()  # a click that lands anyway is refused quietly
    gate.set()
    off()
    assert run.wait(60).state is RunState.FINISHED
    assert [r.step for r in run.history if r.kind == "train"] == list(range(1, SPEC.max_steps + 1))
    monitor.close()
