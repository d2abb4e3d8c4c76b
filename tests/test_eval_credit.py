"""Scores belong to the weights they measured. Found by QA: a model card and ``diagnose()``
kept an evaluation after training, a fork, another adapter strength, or a paused run going on
had changed the weights, so an exported card claimed scores measured on other weights. A
merge keeps them: the merged model computes what was measured. The report keeps showing the
latest evaluation, saying what it measured (the run, its step, the strength).
"""

from __future__ import annotations

import pytest

import workbench as wb

ROWS = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)]
FAST = dict(metrics=["exact_match"], max_new_tokens=2, limit=2)


@pytest.fixture
def session(tiny_model_dir, tmp_path):
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.load_data(ROWS, validation=0.25)
    yield s
    s.close()


def _card(s, name: str, format: str = "adapter") -> str:
    return (s.export(f"export/{name}", format=format) / "README.md").read_text()


def test_training_again_drops_the_scores_of_the_earlier_weights(session):
    session.train(max_steps=2, batch_size=2, wait=True)
    session.evaluate(**FAST)
    assert set(session.scores_summary()) == {"exact_match"}
    assert "| exact_match |" in _card(session, "first")
    session.merge()
    assert set(session.scores_summary()) == {"exact_match"}  # the same function, merged
    assert "| exact_match |" in _card(session, "merged", "safetensors")
    session.train(max_steps=2, batch_size=2, wait=True)
    assert session.scores_summary() == {}
    assert "not evaluated" in _card(session, "second")


def test_a_fork_drops_the_scores_of_its_parent(session):
    run = session.train(max_steps=2, batch_size=2, wait=True)
    session.evaluate(**FAST)
    run.fork(step=1, lr=5e-3).wait()
    assert session.scores_summary() == {}
    assert "not evaluated" in _card(session, "fork")


def test_scores_hold_only_at_the_adapter_strength_they_were_measured_at(session):
    session.train(max_steps=2, batch_size=2, wait=True)
    session.set_adapter_strength(0)
    session.evaluate(**FAST)
    measured = session.scores_summary()
    assert set(measured) == {"exact_match"}
    session.set_adapter_strength(1)
    assert session.scores_summary() == {}
    assert "not evaluated" in _card(session, "full-strength", "safetensors")
    session.set_adapter_strength(0)
    assert session.scores_summary() == measured


def test_an_evaluation_of_a_paused_run_names_its_step_and_lapses_as_it_goes_on(session):
    run = session.train(max_steps=40, batch_size=2, wait=False)
    try:
        assert run.pause().state.value == "paused"
        paused_at = run.status.step
        evaluation = session.evaluate(**FAST)
        assert evaluation.settings["step"] == paused_at
        assert set(session.scores_summary()) == {"exact_match"}
        assert "exact_match" in session.report("paused.html").read_text()
    except BaseException:  # a failed check: no one would resume it
        run.stop()
        run.wait()
        raise
    run.resume()
    run.wait()
    assert run.status.step == 40 > paused_at
    assert session.scores_summary() == {}
    assert f"evaluation of run-001 at step {paused_at} (" in session.report().read_text()
    compared = wb.compare([session.run_dir])
    header, rows = compared.table()
    assert rows[0][header.index("steps")] == "40"
    assert rows[0][header.index("eval_step")] == str(paused_at)


def test_a_metric_named_with_markdown_or_html_keeps_the_card_s_table_whole():
    # Found by QA: a "|" in a metric's name split the card's table row, HTML went in raw and
    # a NaN score read "nan".
    from workbench.deploy.model_card import ModelCard

    scores = {"f1|<img src=x onerror=alert(1)>": {"base": float("nan"), "tuned": 0.5}}
    card = ModelCard("m", "adapter", scores=scores).render()
    row = next(line for line in card.splitlines() if line.startswith("| f1"))
    assert row == r"| f1\|&lt;img src=x onerror=alert(1)&gt; | - | 0.5 |"


def test_generation_settings_the_evaluation_sets_itself_are_taken_or_named(session):
    # Found by QA: both failed as a bare TypeError, given twice to generate().
    with pytest.raises(wb.SpecError, match=r"give it as max_new_tokens=\.\.\."):
        session.evaluate(**FAST, generation={"max_new_tokens": 3})
    cut = session.evaluate(**FAST, generation={"stop_strings": ["a"]})
    assert "a" in cut.settings["stop_strings"] and "stop_strings" not in cut.settings["generation"]
    assert all("a" not in answer for row in cut.rows for answer in row.outputs.values())
