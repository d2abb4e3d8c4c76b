"""Evaluation on a worker thread: ``Session.evaluate(..., wait=False)`` and its progress panel.

On the tiny model with a 2-step adapter (so base and tuned columns). Where a test needs the
worker to be at a known batch, a real ``eval_progress`` subscriber (:class:`Gate`) holds the
worker inside the event until the test lets it go: no timing, no mocks.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

import workbench as wb
from workbench.errors import EvaluationError, SessionStateError
from workbench.evaluation import Evaluation
from workbench.evaluation.background import EvaluationRun
from workbench.evaluation.results import FILES
from workbench.events import EVAL_PROGRESS
from workbench.widgets.eval_progress import EvalProgressPanel

XSS = "<img src=x onerror=alert(1)>"
ROWS = [{"question": f"{XSS} q{i}", "answer": f"a{i} {XSS}"} for i in range(4)]
FAST = {"metrics": ["exact_match"], "max_new_tokens": 8, "batch_size": 1}


class Gate:
    """Holds the worker in each ``eval_progress`` event until :meth:`step` or :meth:`open`."""

    def __init__(self, session: wb.Session) -> None:
        self.arrived, self.go = threading.Semaphore(0), threading.Semaphore(0)
        self.off = session.on(EVAL_PROGRESS, self._hold)

    def _hold(self, _payload) -> None:
        self.arrived.release()
        self.go.acquire(timeout=300)

    def reach(self) -> None:
        """Wait until the worker is held after its next batch."""
        assert self.arrived.acquire(timeout=300), "the worker never reached the next batch"

    def step(self) -> None:
        """Let the held worker go on to its next batch, and wait until it is held there."""
        self.go.release()
        self.reach()

    def open(self) -> None:
        self.off()
        for _ in range(64):
            self.go.release()


@pytest.fixture(scope="module")
def session(tiny_model_dir, tmp_path_factory):
    s = wb.Session(tmp_path_factory.mktemp("eval-background"), verbose=False)
    s.load_model(str(tiny_model_dir))
    s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
    assert s.train(max_steps=2, wait=True).state.value == "finished"
    yield s
    s.close()


def eval_folders(s: wb.Session) -> list[str]:
    return [p.name for p in s.folder.numbered("evaluations")]


def test_returns_at_once_and_waits_to_the_same_evaluation_as_blocking(session):
    ev = session.evaluate(data=ROWS, **{**FAST, "max_new_tokens": 16}, wait=False)
    assert isinstance(ev, EvaluationRun)
    assert ev.done is False and ev.state == "running"
    seen = []
    while not ev.done:
        seen.append(sum(done for done, _ in ev.progress.values()))
        time.sleep(0.005)
    assert seen == sorted(seen)  # never goes back
    assert len(set(seen)) >= 3, seen  # rose while we watched
    evaluation = ev.wait()
    assert ev.state == "finished" and ev.progress == {"base": (4, 4), "tuned": (4, 4)}
    assert sorted(p.name for p in evaluation.path.iterdir()) == sorted(FILES)

    blocking = session.evaluate(data=ROWS, **{**FAST, "max_new_tokens": 16})
    assert type(blocking) is Evaluation  # wait=True (the default in scripts) is unchanged
    assert evaluation.scores == blocking.scores
    assert evaluation.rows == blocking.rows
    assert evaluation.path != blocking.path
    # What was shown on the way is what was saved; Evaluation attributes read through.
    assert [(r["index"], r["base"], r["tuned"]) for r in ev.rows_so_far] == [
        (r.index, r.outputs["base"], r.outputs["tuned"]) for r in evaluation.rows
    ]
    assert ev.scores == evaluation.scores and ev.path == evaluation.path
    assert str(ev) == str(evaluation)
    assert session.scores_summary()["exact_match"] == {
        k: blocking.scores["exact_match"][k] for k in ("base", "tuned")
    }


def test_panel_rows_grow_escaped_then_the_finished_panel_takes_their_place(session):
    gate = Gate(session)
    try:
        ev = session.evaluate(data=ROWS, **FAST, wait=False)
        live = EvalProgressPanel(ev, min_interval=0)  # renders on every event
        throttled = EvalProgressPanel(ev, min_interval=3600)  # renders when told
        at_start = throttled.row_count()  # 0, or 1 if the first batch came before it
        gate.reach()
        assert ev.progress == {"base": (1, 4), "tuned": (0, 4)}
        assert live.row_count() == 1 and (live.bar.value, live.bar.max) == (1, 8)
        assert "running: base 1/4, tuned 0/4" in live.status_html.value
        assert str(ev).startswith("Evaluation running: base 1/4, tuned 0/4")
        gate.step()
        gate.step()
        assert live.row_count() == 3 and len(ev.rows_so_far) == 3
        html = live.rows_html.value
        assert "&lt;img src=x onerror=alert(1)&gt;" in html  # in the references
        assert "<img" not in html
        assert "…</td>" in html  # the tuned column has not answered yet
        gate.step()
        gate.step()  # base 4/4, tuned 1/4: the table fills the tuned column in
        assert live.row_count() == 4
        assert [("tuned" in r) for r in ev.rows_so_far] == [True, False, False, False]
        assert throttled.row_count() == at_start  # events came; its next render is not due
        throttled.refresh()
        assert throttled.row_count() == 4
    finally:
        gate.open()
    evaluation = ev.wait()
    # The panel is now the finished EvalPanel; so is the handle's own display.
    assert live.result_panel is not None
    assert live.widget.children == (live.result_panel.widget,)
    assert live.result_panel.evaluation is evaluation
    assert ev.monitor().widget.children == (ev.monitor().result_panel.widget,)
    assert "application/vnd.jupyter.widget-view+json" in ev._repr_mimebundle_()


def test_cancel_stops_at_the_next_batch_and_leaves_no_folder(session):
    before = eval_folders(session)
    gate = Gate(session)
    try:
        ev = session.evaluate(data=ROWS, **FAST, wait=False)
        gate.reach()  # base 1/4 generated; the worker is between batches
        panel = ev.monitor()
        assert ev.cancel(wait=False) == "running"
    finally:
        gate.open()
    assert ev.cancel() == "cancelled"  # waits for the worker
    assert ev.done and ev.progress == {"base": (1, 4), "tuned": (0, 4)}
    with pytest.raises(EvaluationError, match=r"cancelled at base 1/4: nothing was saved"):
        ev.wait()
    with pytest.raises(EvaluationError, match="cancelled"):
        ev.result  # noqa: B018 - the property raises
    assert eval_folders(session) == before  # no folder, not even an empty one
    assert panel.status_text().startswith("cancelled at base 1/4, tuned 0/4 after")
    assert panel.bar.bar_style == "warning" and panel.cancel_button.disabled
    assert panel.result_panel is None and panel.row_count() == 1  # what was answered stays
    assert isinstance(session.generate("hi", max_new_tokens=2), str)  # the model is free


def test_calls_that_use_the_model_are_refused_while_it_runs(session, tiny_model_dir):
    gate = Gate(session)
    refused = {
        "train": lambda: session.train(max_steps=1),
        "resume": lambda: session.resume(session.run.run_dir),
        "load_model": lambda: session.load_model(str(tiny_model_dir)),
        "load_data": lambda: session.load_data(ROWS),
        "merge": session.merge,
        "set_adapter_strength": lambda: session.set_adapter_strength(0.5),
        "export": lambda: session.export("export/during-eval"),
        "generate": lambda: session.generate("hi", max_new_tokens=2),
        "evaluate": lambda: session.evaluate(data=ROWS, **FAST, wait=False),
    }
    try:
        ev = session.evaluate(data=ROWS, **FAST, wait=False)
        gate.reach()
        for call, fn in refused.items():
            message = (
                rf"^{call}\(\) is refused: an evaluation is running on the session's model "
                r"\(base 1/4, tuned 0/4\): ev\.wait\(\) or ev\.cancel\(\) first\.$"
            )
            with pytest.raises(SessionStateError, match=message):
                fn()
        # Reading what the session holds is still allowed.
        assert session.data_report().train > 0 and session.adapter_strength == 1.0
        assert not (session.run_dir / "export" / "during-eval").exists()
    finally:
        gate.open()
    ev.wait()
    assert type(session.model).__name__ == "PeftModelForCausalLM"  # nothing was changed
    assert isinstance(session.generate("hi", max_new_tokens=2), str)


def test_a_metric_error_surfaces_from_wait_with_its_name(session):
    def strict(prediction: str, reference: str) -> float:
        raise ValueError(f"cannot judge {XSS}")

    before = eval_folders(session)
    ev = session.evaluate(
        data=ROWS[:2], metrics=["exact_match", strict], max_new_tokens=2, wait=False
    )
    with pytest.raises(EvaluationError, match=r"metric 'strict' raised on example 0: ValueError"):
        ev.wait()
    assert ev.state == "failed" and isinstance(ev.error, EvaluationError)
    with pytest.raises(EvaluationError, match="metric 'strict'"):
        ev.scores  # noqa: B018 - reading the result raises the worker's error
    assert eval_folders(session) == before
    panel = ev.monitor()
    assert (
        panel.bar.bar_style == "danger" and "metric &#x27;strict&#x27;" in panel.status_html.value
    )
    assert "<img" not in panel.status_html.value and "&lt;img" in panel.status_html.value
    # A metric that does not exist is refused at once, before any worker starts.
    with pytest.raises(EvaluationError, match="unknown metric 'blue'"):
        session.evaluate(data=ROWS, metrics=["blue"], wait=False)


def test_answers_generated_before_a_metric_fails_are_scored_by_the_same_call_again(session):
    # A user's metric raising on the last row threw away every generated answer: fixing it
    # meant generating both columns again (minutes to hours on a real model).
    forwards = []
    hook = session.model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    broken = {"on": True}

    def overlap(prediction: str, reference: str) -> float:
        if broken["on"]:
            raise ZeroDivisionError("my bug")
        return float(prediction == reference)

    asked = {"data": ROWS, "max_new_tokens": 6, "batch_size": 2, "wait": True}
    before = eval_folders(session)
    try:
        with pytest.raises(EvaluationError, match=r"metric 'overlap' raised .*answers are kept"):
            session.evaluate(metrics=["exact_match", overlap], **asked)
        assert forwards and eval_folders(session) == before  # nothing saved half-scored
        generating = len(forwards)
        broken["on"] = False
        forwards.clear()
        scored = session.evaluate(metrics=["exact_match", overlap], **asked)
        assert forwards == []  # nothing generated again
        again = session.evaluate(metrics=["exact_match", overlap], **asked)
        assert len(forwards) == generating  # used once: the next call generates
        assert [r.outputs for r in scored.rows] == [r.outputs for r in again.rows]
        assert scored.scores == again.scores and scored.scores["overlap"]["tuned"] == 0.0
        # other settings (or another model) generate their own answers
        broken["on"] = True
        with pytest.raises(EvaluationError, match="answers are kept"):
            session.evaluate(metrics=[overlap], **asked)
        broken["on"] = False
        forwards.clear()
        session.evaluate(metrics=[overlap], **{**asked, "max_new_tokens": 5})
        assert len(forwards) > 0
    finally:
        hook.remove()


def test_the_datas_own_ids_reach_the_evaluation_rows_and_their_file(session):
    # EvalRow.id ("the row's id if the input had one") was always None.
    rows = [{"id": f"ticket-{1000 + i}", "question": f"q{i}", "answer": f"a{i}"} for i in range(3)]
    ev = session.evaluate(data=rows, metrics=["exact_match"], max_new_tokens=2, wait=True)
    assert [r.id for r in ev.rows] == ["ticket-1000", "ticket-1001", "ticket-1002"]
    assert [r.id for r in Evaluation.load(ev.path).rows] == [r.id for r in ev.rows]


def test_a_paused_run_keeps_evaluation_blocking(tiny_model_dir, tmp_path):
    s = wb.Session(tmp_path / "paused", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
    run = s.train(max_steps=100, wait=False)
    try:
        assert run.pause().state.value == "paused"
        with pytest.raises(SessionStateError, match=r"evaluate\(wait=False\) is refused while"):
            s.evaluate(data=ROWS[:1], **FAST, wait=False)
        assert isinstance(s.evaluate(data=ROWS[:1], **FAST, wait=True), Evaluation)
    finally:
        run.stop()
        run.wait()
        s.close()


def test_in_a_notebook_it_returns_at_once_and_shows_its_panel(tiny_model_dir, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    setup = f"""
import workbench as wb
s = wb.Session({str(tmp_path / "nb")!r}, verbose=False)
_ = s.load_model({str(tiny_model_dir)!r})
_ = s.load_data([{{"question": f"q{{i}}", "answer": f"a{{i}}"}} for i in range(8)])
"""
    start = f"""
ev = s.evaluate(data={ROWS!r}, metrics=["exact_match"], max_new_tokens=16, batch_size=1)
print(type(ev).__name__, ev.done)
ev
"""
    end = """
evaluation = ev.wait()
print(type(evaluation).__name__, ev.state, ev.monitor().result_panel is not None)
"""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in (setup, start, end)])
    client = NotebookClient(nb, kernel_name="python3", timeout=600)
    root = str(Path(__file__).resolve().parent.parent)  # this checkout, found first
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    client.execute(env={**os.environ, "PYTHONPATH": path})
    started, ended = nb.cells[1].outputs, nb.cells[2].outputs
    assert started[0]["text"] == "EvaluationRun False\n"  # returned before generating
    assert "application/vnd.jupyter.widget-view+json" in started[1]["data"]  # the live panel
    assert ended[0]["text"] == "Evaluation finished True\n"  # then the finished panel
