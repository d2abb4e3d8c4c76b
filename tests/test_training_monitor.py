"""TrainingMonitor driven headless by a real run on the tiny model."""

from __future__ import annotations

import threading
import time

from train_helpers import toy_run

from workbench.events import EventHub
from workbench.train import RunState, TrainSpec
from workbench.widgets.training_monitor import TrainingMonitor

SPEC = TrainSpec(max_steps=20, lr=5e-3, batch_size=8, eval_every=10, save_every=10)
PROBES = ["3 cat =>", "<script>alert(1)</script> dog =>"]


def _held_run(tiny_model_dir, run_dir, steps: set[int]):
    events, reached, gate = EventHub(), threading.Event(), threading.Event()

    def hold(payload):
        record = payload.record
        if record.kind == "train" and record.step in steps:
            steps.discard(record.step)
            reached.set()
            gate.wait(30)
            gate.clear()

    events.on("train_log", hold)
    run = toy_run(tiny_model_dir, run_dir, SPEC, events=events, wait=False, probes=PROBES)
    return run, events, reached, gate


def _until(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def test_buttons_drive_the_run_and_the_view_follows(tiny_model_dir, tmp_path):
    run, _events, reached, gate = _held_run(tiny_model_dir, tmp_path / "run", {3})
    assert reached.wait(30)
    monitor = run.monitor()
    assert len(monitor.traces["loss"].x) == 3
    assert monitor.status_html.value.startswith(
        '<div class="wb-train-status" style="">running · step 3/20 · epoch 0.38 · loss '
    )
    assert (monitor.pause_button.disabled, monitor.resume_button.disabled) == (False, True)
    monitor.pause_button.click()
    assert (monitor.pause_button.disabled, monitor.pause_button.description) == (True, "Pausing…")
    gate.set()
    assert run.pause(timeout=30).state is RunState.PAUSED
    # The status changes just before its event reaches the monitor: allow for the render.
    assert _until(
        lambda: (
            "paused · step 3/20" in monitor.status_html.value and not monitor.resume_button.disabled
        )
    )
    assert (monitor.pause_button.description, monitor.resume_button.disabled) == ("Pause", False)
    monitor.eval_button.click()
    assert _until(lambda: len(monitor.traces["eval_loss"].x) == 1)
    assert list(monitor.traces["eval_loss"].x) == [3.0]
    assert _until(lambda: "<th>step 3</th>" in monitor.probes_html.value)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in monitor.probes_html.value
    assert "<script>" not in monitor.probes_html.value
    monitor.resume_button.click()
    monitor.stop_button.click()
    status = run.wait(30)
    assert status.state is RunState.STOPPED
    monitor.refresh()
    assert len(monitor.traces["loss"].x) == status.step
    assert monitor.status_text().startswith(f"stopped · step {status.step}/20")
    assert [
        b.disabled
        for b in (
            monitor.pause_button,
            monitor.stop_button,
            monitor.eval_button,
            monitor.save_button,
        )
    ] == [True] * 4
    assert monitor.resume_button.disabled is False  # a stopped run can go on in this kernel


def test_updates_are_throttled_and_close_unsubscribes(tiny_model_dir, tmp_path):
    run, events, reached, gate = _held_run(tiny_model_dir, tmp_path / "run", {2, 6})
    assert reached.wait(30)
    reached.clear()
    before = {name: len(events._listeners[name]) for name in ("train_log", "train_state")}
    monitor = TrainingMonitor(run, min_interval=3600)
    assert len(monitor.traces["loss"].x) == 2
    gate.set()
    assert reached.wait(30)
    assert len(monitor.traces["loss"].x) == 2  # records arrived, the render waits
    monitor.refresh()  # step 6 is held in the listener before the monitor's, so 1..5
    assert list(monitor.traces["loss"].x) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert monitor.traces["loss"].y.dtype.kind == "f"
    monitor.close()
    after = {name: len(events._listeners[name]) for name in ("train_log", "train_state")}
    assert after == {name: count for name, count in before.items()}
    gate.set()
    assert run.wait(30).state is RunState.FINISHED
    monitor.refresh()
    # Step 6 was already being delivered when close() ran; nothing after it arrives.
    assert len(monitor.traces["loss"].x) == 6


def test_redisplay_a_finished_run_from_its_folder(tiny_model_dir, tmp_path):
    run = toy_run(tiny_model_dir, tmp_path / "run", SPEC, probes=PROBES)
    monitor = TrainingMonitor.from_folder(tmp_path / "run")
    assert list(monitor.traces["loss"].x) == [float(s) for s in range(1, 21)]
    assert list(monitor.traces["eval_loss"].x) == [10.0, 20.0]
    assert len(monitor.traces["smoothed"].y) == len(monitor.traces["lr"].y) == 20
    assert monitor.status_text().startswith("finished · step 20/20 · epoch 2.50 · loss ")
    assert all(
        b.disabled
        for b in (
            monitor.pause_button,
            monitor.resume_button,
            monitor.stop_button,
            monitor.eval_button,
            monitor.save_button,
        )
    )
    assert monitor.probes_html.value.count("<tr>") == 3  # header + two probes
    bundle = run._repr_mimebundle_()
    assert bundle["text/plain"].splitlines()[0] == monitor.status_text()
    assert "application/vnd.jupyter.widget-view+json" in bundle


# -- the run's own choices (batch_size="auto", packing) -------------------------------------
AUTO = TrainSpec(max_steps=3, lr=5e-3, batch_size="auto", eval_every=10, save_every=10)


def test_the_monitor_shows_the_auto_batch_and_packing_once_the_first_step_decides(
    tiny_model_dir, tmp_path
):
    import json

    events, reached, gate = EventHub(), threading.Event(), threading.Event()

    def hold(payload):  # the base model's probe answers come before the first step
        if payload.base:
            reached.set()
            gate.wait(30)

    events.on("train_probes", hold)
    run = toy_run(tiny_model_dir, tmp_path / "run", AUTO, events=events, wait=False, probes=PROBES)
    assert reached.wait(30)
    monitor = run.monitor()
    assert run.status.step == 0
    shown = monitor.choices_html.value
    assert "<b>batch size 8 (auto)</b>: its estimated peak at the longest example (" in shown
    assert "<b>packing</b>: decided at the first step" in shown
    assert monitor.choices_text().startswith("batch size 8 (auto): its estimated peak ")
    gate.set()
    # The first step's train_log event brings the decision to the open monitor.
    assert _until(lambda: "packing off" in monitor.choices_html.value)
    assert (
        "<b>packing off</b>: packing=&#x27;auto&#x27; packs on CUDA only; on cpu it did not pay"
        in monitor.choices_html.value
    )
    assert "decided at the first step" not in monitor.choices_html.value
    assert run.wait(30).state is RunState.FINISHED
    monitor.refresh()
    lines = monitor.text().splitlines()
    assert lines[0] == monitor.status_text()
    assert lines[1] == (
        f"batch size 8 (auto): {run.choices['batch_size'].split(': ', 1)[1]} · "
        f"packing off: {run.choices['packing']}"
    )
    meta = json.loads((run.run_dir / "run.json").read_text())
    assert meta["packing_choice"] == {"on": False, "reason": run.choices["packing"]}


def test_a_fixed_batch_shows_only_packing(tiny_model_dir, tmp_path):
    run = toy_run(tiny_model_dir, tmp_path / "run", SPEC)
    monitor = run.monitor()
    assert monitor.choices_text().startswith("packing off: packing='auto' packs on CUDA only")
    assert "batch size" not in monitor.choices_html.value
    assert TrainingMonitor.from_folder(run.run_dir).choices_text() == monitor.choices_text()


def test_redisplay_from_the_folder_shows_the_choices_live_and_in_the_snapshot(
    tiny_model_dir, tmp_path
):
    run = toy_run(tiny_model_dir, tmp_path / "run", AUTO)
    live = run.monitor()
    again = TrainingMonitor.from_folder(run.run_dir)
    assert again.choices_html.value == live.choices_html.value
    assert again.choices_text().startswith("batch size 8 (auto): its estimated peak ")
    assert " · packing off: packing='auto' packs on CUDA only" in again.choices_text()
    bundle = run._repr_mimebundle_()
    assert '<div class="wb-train-choices"' in bundle["text/html"]
    assert "<b>batch size 8 (auto)</b>: its estimated peak" in bundle["text/html"]
    assert bundle["text/plain"].splitlines()[1] == again.choices_text()


def test_a_hostile_reason_is_escaped(tiny_model_dir, tmp_path):
    import json

    from workbench.widgets import _snapshot

    run = toy_run(tiny_model_dir, tmp_path / "run", AUTO)
    hostile = "<img src=x onerror=alert(1)> & <script>alert(2)</script>"
    path = run.run_dir / "run.json"
    meta = json.loads(path.read_text())
    meta["batch_size_choice"] = f"batch_size='auto' chose 8: {hostile}"
    meta["packing_choice"] = {"on": True, "reason": f"packed: {hostile}"}
    path.write_text(json.dumps(meta))
    monitor = TrainingMonitor.from_folder(run.run_dir)
    escaped = "&lt;img src=x onerror=alert(1)&gt; &amp; &lt;script&gt;alert(2)&lt;/script&gt;"
    assert monitor.choices_html.value.count(escaped) == 2
    assert "<b>packing on</b>: " + escaped in monitor.choices_html.value
    html = _snapshot.snapshot_bundle(monitor)["text/html"]
    assert html.count(escaped) == 2
    assert "<img src=x" not in monitor.choices_html.value and "<img src=x" not in html
    assert "<script>" not in html
    assert monitor.choices_text() == f"batch size 8 (auto): {hostile} · packing on: {hostile}"


def test_a_run_training_elsewhere_shows_the_steps_its_history_holds(tiny_model_dir, tmp_path):
    # status.json is written at state changes only: a run another kernel trains showed
    # "running · step 0/20" from its folder while its history was at step 20
    import json

    from workbench.train.lock import RunLock

    toy_run(tiny_model_dir, tmp_path / "run", SPEC)
    status = tmp_path / "run" / "status.json"
    started = {**json.loads(status.read_text()), "state": "running", "step": 0, "epoch": 0.0}
    status.write_text(json.dumps(started))
    with RunLock(tmp_path / "run"):  # held: as by the process training it
        text = TrainingMonitor.from_folder(tmp_path / "run").status_text()
    assert text.startswith("running · step 20/20 · epoch 2.50 · loss ")


def test_a_monitor_opened_mid_run_shows_no_status_older_than_its_curve(tiny_model_dir, tmp_path):
    # The status was read before the history: "step 26" over a curve of 31 points.
    run = toy_run(tiny_model_dir, tmp_path / "run", TrainSpec(max_steps=4000), wait=False)
    behind = []
    try:
        while run.status.step < 5:
            time.sleep(0.01)
        for _ in range(40):
            monitor = TrainingMonitor(run)
            with monitor._lock:
                curve_end = max(monitor._data["step"], default=0)
                if monitor._status.step < curve_end:
                    behind.append((monitor._status.step, curve_end))
            monitor.close()
    finally:
        run.stop()
        run.wait()
    assert behind == []


def test_a_long_run_sends_a_thinned_curve_that_keeps_its_spike_and_its_last_step(
    tiny_model_dir, tmp_path
):
    # Every render sent the whole history to the browser: 1.9 MB per render at 20,000 steps
    import json

    toy_run(tiny_model_dir, tmp_path / "run", TrainSpec(max_steps=3, lr=5e-3, batch_size=8))
    with open(tmp_path / "run" / "history.jsonl", "a", encoding="utf-8") as history:
        for step in range(4, 20_001):
            loss = 50.0 if step == 12_345 else 1.0 + (step % 7) / 100
            row = {"kind": "train", "step": step, "epoch": step / 8, "loss": loss, "lr": 1e-4}
            history.write(json.dumps({**row, "grad_norm": 1.0, "eval_loss": None}) + "\n")
    monitor = TrainingMonitor.from_folder(tmp_path / "run")
    steps, losses = list(monitor.traces["loss"].x), list(monitor.traces["loss"].y)
    assert len(steps) <= 1000 and steps[-1] == 20_000.0 and steps[0] == 1.0
    assert losses[steps.index(12_345.0)] == 50.0  # the spike survives the thinning
    assert min(losses[3:]) == 1.0 and max(losses[:-1]) == 50.0
    assert len(monitor.traces["smoothed"].x) <= 1000
