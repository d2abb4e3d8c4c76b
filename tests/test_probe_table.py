"""The TrainingMonitor's probe table on real tiny runs: which evaluations it shows, one column
per step (Evaluate now at an evaluated step updates that column), and a layout that wraps and
scrolls instead of widening the panel."""

from __future__ import annotations

import json
import re
import threading
import time

from train_helpers import toy_run

from workbench.events import EventHub
from workbench.train import RunState, TrainSpec
from workbench.widgets.training_monitor import PROBE_COLUMNS, TrainingMonitor

PROBES = ["3 cat =>", "<script>alert(1)</script> dog =>"]


def _until(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def _columns(html: str) -> list[str]:
    return re.findall(r"<th>(step \d+)</th>", html)


def _note(html: str) -> str:
    return re.search(r'<div class="wb-probe-steps">(.*?)</div>', html).group(1)


def _disk_steps(run_dir) -> list[int]:
    rows = [json.loads(line) for line in (run_dir / "probes.jsonl").read_text().splitlines()]
    assert sum(1 for r in rows if r.get("base")) == 1  # the base answers are kept
    return [r["step"] for r in rows if not r.get("base")]


def _evals(run) -> list[int]:
    return [r.step for r in run.history if r.kind == "eval"]


def test_evaluate_now_at_an_evaluated_step_updates_its_column(tiny_model_dir, tmp_path):
    spec = TrainSpec(max_steps=8, lr=5e-3, batch_size=8, eval_every=4, save_every=8)
    events, reached, gate = EventHub(), threading.Event(), threading.Event()

    def hold(payload):  # the step-4 record is logged before step 4's scheduled evaluation
        if payload.record.kind == "train" and payload.record.step == 4:
            reached.set()
            gate.wait(60)

    events.on("train_log", hold)
    run = toy_run(tiny_model_dir, tmp_path / "run", spec, events=events, wait=False, probes=PROBES)
    assert reached.wait(60)
    monitor = run.monitor()
    run.pause(wait=False)
    gate.set()
    assert run.pause(timeout=60).state is RunState.PAUSED
    assert _evals(run) == [4]  # paused right after the scheduled evaluation at step 4
    assert _until(lambda: _columns(monitor.probes_html.value) == ["step 4"])

    run.evaluate_now()  # the same step again, twice
    assert _until(lambda: len(_evals(run)) == 2)
    run.evaluate_now()
    assert _until(lambda: len(_evals(run)) == 3)
    assert _evals(run) == [4, 4, 4]
    assert [r["step"] for r in run.probe_history] == [4]
    assert _disk_steps(tmp_path / "run") == [4]
    monitor.refresh()
    html = monitor.probes_html.value
    assert _columns(html) == ["step 4"]
    assert _note(html) == "step 4 (all 1 evaluation)"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>" not in html

    run.resume()
    assert run.wait(60).state is RunState.FINISHED
    assert [r["step"] for r in run.probe_history] == [4, 8]
    assert _disk_steps(tmp_path / "run") == [4, 8]
    monitor.refresh()
    assert _columns(monitor.probes_html.value) == ["step 4", "step 8"]
    # An ended run evaluated again at its last step: still one column per step.
    run.evaluate_now()
    assert [r["step"] for r in run.probe_history] == [4, 8]
    monitor.refresh()
    assert _columns(monitor.probes_html.value) == ["step 4", "step 8"]
    reread = TrainingMonitor.from_folder(tmp_path / "run")
    assert _columns(reread.probes_html.value) == ["step 4", "step 8"]
    monitor.close()
    reread.close()


def test_many_evaluations_keep_the_first_spread_and_latest(tiny_model_dir, tmp_path):
    spec = TrainSpec(
        max_steps=8, lr=5e-3, batch_size=8, eval_every=1, save_every=8, probe_max_new_tokens=4
    )
    run = toy_run(tiny_model_dir, tmp_path / "run", spec, probes=PROBES)
    assert [r["step"] for r in run.probe_history] == list(range(1, 9))
    monitor = run.monitor()
    html = monitor.probes_html.value
    # 8 evaluations, 5 columns: the first, three evenly spaced, the latest.
    assert PROBE_COLUMNS == 5
    assert _columns(html) == ["step 1", "step 3", "step 5", "step 6", "step 8"]
    expected = "steps 1, 3, 5, 6, 8 of 8 evaluations: the first, evenly spaced ones and the latest"
    assert _note(html) == expected
    # A fixed layout: one width per column, long answers wrap, the table scrolls past 360px.
    assert 'style="table-layout:fixed;width:100%;"' in html
    assert html.count("<col ") == 2 + 5
    assert "overflow-wrap:anywhere" in html and "max-height:360px;overflow:auto" in html

    # The picker offers every step; a picked step shows between the first and the latest.
    picker = monitor.probe_step
    assert picker.layout.display == ""
    assert picker.options[0] == ("first, evenly spaced, latest", -1)
    assert [value for _, value in picker.options[1:]] == list(range(1, 9))
    picker.value = 4
    html = monitor.probes_html.value
    assert _columns(html) == ["step 1", "step 4", "step 8"]
    assert (
        _note(html) == "steps 1, 4, 8 of 8 evaluations: the first, step 4 (picked) and the latest"
    )
    monitor.refresh()  # a later render keeps the pick
    assert _columns(monitor.probes_html.value) == ["step 1", "step 4", "step 8"]
    picker.value = -1
    assert _columns(monitor.probes_html.value) == ["step 1", "step 3", "step 5", "step 6", "step 8"]
    monitor.close()


def test_few_evaluations_show_all_and_hide_the_picker(tiny_model_dir, tmp_path):
    spec = TrainSpec(max_steps=4, lr=5e-3, batch_size=8, eval_every=2, probe_max_new_tokens=4)
    run = toy_run(tiny_model_dir, tmp_path / "run", spec, probes=PROBES)
    monitor = TrainingMonitor.from_folder(run.run_dir)
    html = monitor.probes_html.value
    assert _columns(html) == ["step 2", "step 4"]
    assert _note(html) == "steps 2, 4 (all 2 evaluations)"
    assert html.count("<tr>") == 1 + len(PROBES)  # header + one row per probe
    assert monitor.probe_step.layout.display == "none"
    monitor.close()


def test_probe_answers_end_at_the_templates_end_of_turn(tiny_model_dir, tmp_path):
    # As an evaluation's answers do: the Gemma run showed probe answers running on past the
    # JSON into noise, because the probes generated without the template's stop string.
    import workbench as wb
    from workbench.models.generation import generate_text

    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
    stop = "<|im_end|>"  # the end of turn of the tiny model's own chat template
    prompt = s.example(0).prompt
    run = s.train(max_steps=2, wait=True, probes=[prompt])
    assert run.probe_stops == [stop]
    assert json.loads((run.run_dir / "run.json").read_text())["probe_stops"] == [stop]
    want = generate_text(
        run.model, run.tokenizer, [prompt], run.spec.probe_max_new_tokens, stop_strings=[stop]
    )
    assert run.probe_history[-1]["outputs"] == want
    resumed = wb.Session(tmp_path / "s", verbose=False).resume(run.run_dir, wait=True)
    assert resumed.probe_stops == [stop]


def test_an_empty_probe_answer_is_marked_and_one_not_recorded_is_blank():
    # Both showed as an empty cell: a model that said nothing looked like one not asked.
    from workbench._display import EMPTY_ANSWER
    from workbench.widgets.training_monitor import _probe_table

    html = _probe_table(["prompt", "base", "step 4"], [[" ", None, "\n"], ["<b>", "b", "c"]])
    cells = re.findall(r"<td[^>]*>(.*?)</td>", html)
    assert cells == [" ", "", EMPTY_ANSWER, "&lt;b&gt;", "b", "c"]  # the prompt stays as is
