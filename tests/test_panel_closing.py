"""A closed panel closes all its widgets and lets go of what it views.

``widget.close()`` closes one widget: a panel's inner widgets (children, layouts, styles,
widgets not shown at the moment) stayed open in ipywidgets' registry, their callbacks held
the panel, and a monitor held its run, model and optimizer: after ten runs with their
monitors closed, 580 widgets were open and ten models alive (a kernel kept all day).
"""

from __future__ import annotations

import gc
import html
import weakref

import pytest
from ipywidgets.widgets.widget import _instances

import workbench as wb

ROWS = [{"question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(16)]


@pytest.fixture
def session(tmp_path, tiny_model_dir):
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.load_data(ROWS, validation=0.25)
    return s


def listeners(session) -> int:
    return sum(len(each) for each in session.events._listeners.values())


def open_after_closing(make) -> tuple[int, weakref.ref]:
    """Widgets left open by a panel ``make()`` builds and closes, and a weak reference to it."""
    gc.collect()
    before = set(_instances)
    panel = make()
    assert len(_instances) > len(before)  # it built widgets
    panel.close()
    held = weakref.ref(panel)
    del panel
    gc.collect()
    return len(set(_instances) - before), held


def test_a_closed_monitor_leaves_no_widget_and_lets_go_of_its_run(session, tiny_model_dir):
    run = session.train(max_steps=2, batch_size=4, wait=True)
    left, _ = open_after_closing(lambda shown=run: shown.monitor(teaching=True))
    assert left == 0
    assert run.monitor().widget.comm is not None  # asked again: a new, open monitor
    run.monitor().close()
    model = weakref.ref(run.model)
    session.load_model(str(tiny_model_dir))  # a fresh model and run: the first is let go of
    session.train(max_steps=1, batch_size=4, wait=True)
    del run
    gc.collect()
    assert model() is None


def test_every_panel_closes_all_its_widgets(session):
    run = session.train(max_steps=2, batch_size=4, wait=True)
    evaluation = session.evaluate(metrics=["exact_match"], limit=2, max_new_tokens=2)
    makers = {
        "data": session.inspect_data,
        "evaluation": evaluation.panel,
        "chat": lambda: session.chat(max_new_tokens=2),
        "monitor": run.monitor,
    }
    for name, make in makers.items():
        start = listeners(session)
        left, panel = open_after_closing(make)
        let_go = panel() is None or name == "monitor"  # a run keeps its (closed) monitor
        assert (name, left, let_go) == (name, 0, True)
        assert listeners(session) == start, name  # the data panel stopped following


def test_a_closed_evaluation_progress_panel_closes_the_result_panel_too(session):
    running = session.evaluate(metrics=["exact_match"], limit=2, max_new_tokens=2, wait=False)
    running.wait()
    left, _ = open_after_closing(running.monitor)
    assert left == 0
    assert running.monitor().widget.comm is not None  # asked again: a new, open panel


def test_an_open_monitor_of_an_earlier_run_lets_its_model_go_with_the_next_model(
    session, tiny_model_dir
):
    # A monitor left open (as a notebook leaves every displayed one) held its run, and the
    # run its model and optimizer: each load_model + train in a kernel kept one more model.
    from workbench.errors import SessionStateError

    run = session.train(max_steps=6, batch_size=4, save_every=1, wait=False)
    run.wait(step=3)
    run.stop()
    stopped_at = run.wait().step
    monitor = run.monitor()
    model, optimizer = weakref.ref(run.model), weakref.ref(run.loop.optimizer)
    session.load_model(str(tiny_model_dir))
    gc.collect()
    assert model() is None and optimizer() is None
    assert monitor.status_text().startswith("stopped") and run.status.step == stopped_at
    assert len(run.history) > 0 and monitor.widget.comm is not None  # the view stays
    said = "run-001's model and optimizer were let go of when the session loaded another model"
    for call in (run.resume, run.evaluate_now, run.save_now, lambda: run.fork(step=2)):
        with pytest.raises(SessionStateError, match=said):
            call()
    monitor.fork_step.value = 2
    monitor.fork_button.click()  # the view says it, rather than ignoring the click
    assert html.escape(f"fork() is refused: {said}") in monitor.fork_html.value
    resumed = session.resume(run.run_dir)  # from its checkpoint, as the refusals say
    assert resumed.wait().step == 6


def test_closing_a_parent_s_monitor_leaves_its_fork_s_monitor_open(session):
    # The Fork button shows the fork's own monitor inside the parent's: closing the parent
    # closed the fork's (which stayed subscribed, and was built again when asked for).
    run = session.train(max_steps=6, batch_size=4, save_every=2, wait=True)
    parent = run.monitor()
    parent.fork_step.value = 4
    parent.fork_button.click()
    fork = parent.last_fork
    fork.wait()
    shown = fork.monitor()  # also shown in a cell of its own, as s.run.monitor()
    assert parent.fork_box.children == (shown.widget,)
    parent.close()
    assert shown.widget.comm is not None and fork.monitor() is shown
    shown.close()


def test_every_earlier_run_lets_go_a_fork_s_parent_and_a_run_before_a_merge(
    session, tiny_model_dir
):
    # Only the latest run let go: a fork's parent, and a run replaced after merge(), kept
    # their optimizers (and the parent the model) alive behind their open monitors.
    first = session.train(max_steps=4, batch_size=4, save_every=2, wait=True)
    first.monitor()
    fork = first.fork(step=2, lr=1e-4, wait=True)
    fork.monitor()
    held = [weakref.ref(r.loop.optimizer) for r in (first, fork)] + [weakref.ref(fork.model)]
    session.merge()
    after_merge = session.train(max_steps=1, batch_size=4, wait=True)
    after_merge.monitor()
    held.append(weakref.ref(after_merge.loop.optimizer))
    session.load_model(str(tiny_model_dir))
    gc.collect()
    assert [ref() is None for ref in held] == [True] * 4


def test_a_refused_resume_leaves_the_session_s_run_as_it_was(session, tmp_path):
    # The refused resume had loaded its base, and that let go of the session's own run:
    # run.resume() said another model was loaded, though the session had its model back.
    from workbench.models.tiny import build_tiny_model

    other = build_tiny_model(tmp_path / "other", seed=1)
    run = session.train(max_steps=50, batch_size=4, save_every=2, wait=False)
    run.wait(step=2)
    run.stop()
    run.wait()
    with pytest.raises(wb.WorkbenchError):
        session.resume(run.run_dir, model=str(other), wait=False)
    assert run.model is session.model and run.resume().state.value == "running"
    run.stop()
    run.wait()
