"""compare(): loss curves and scores of several run folders side by side."""

from __future__ import annotations

import json

import pytest

from tests.eval_fixtures import handmade_evaluation
from workbench.errors import WorkbenchWarning
from workbench.evaluation import EvalRow, Evaluation, EvaluationError, compare


def _run(folder, losses, eval_losses, tuned):
    folder.mkdir(parents=True)
    lines = [{"kind": "train", "step": i + 1, "loss": x} for i, x in enumerate(losses)]
    lines += [{"kind": "eval", "step": s, "eval_loss": x} for s, x in eval_losses]
    text = "".join(json.dumps(r) + "\n" for r in lines) + '{"kind": "tra'  # torn last line
    (folder / "history.jsonl").write_text(text)
    ev = handmade_evaluation()
    ev.scores["exact_match"]["tuned"] = tuned
    ev.save(folder / "evaluations" / "eval-1")


def test_compare_two_runs(tmp_path):
    _run(tmp_path / "lr-1e-4", [3.0, 2.5, 2.0], [(3, 2.2)], 0.25)
    _run(tmp_path / "lr-5e-4", [3.0, 1.0, 0.5], [(2, 1.5), (3, 1.7)], 0.75)
    cmp = compare([tmp_path / "lr-1e-4", tmp_path / "lr-5e-4"])
    records = cmp.records()
    assert [r["run"] for r in records] == ["lr-1e-4", "lr-5e-4"]
    assert records[1]["final_loss"] == 0.5 and records[1]["best_eval_loss"] == 1.5
    assert records[1]["final_eval_loss"] == 1.7 and records[0]["steps"] == 3
    assert [r["exact_match_tuned"] for r in records] == [0.25, 0.75]
    fig = cmp.figure()
    names = [t.name for t in fig.data]
    assert "lr-5e-4 eval_loss" in names and "lr-1e-4 scores" in names
    assert "lr-5e-4" in str(cmp) and "<table" in cmp._repr_html_()


def test_compare_bad_input(tmp_path):
    with pytest.raises(EvaluationError, match="give at least one run folder"):
        compare([])
    with pytest.raises(EvaluationError, match="does not exist"):
        compare([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvaluationError, match="no history.jsonl and no saved evaluation"):
        compare([tmp_path / "empty"])


def test_compare_shows_the_scores_session_evaluate_saved_for_each_run(tmp_path, tiny_model_dir):
    """``Session.evaluate`` saves under the session folder's ``evaluations/``; compare finds
    each run's own there, and a copy saved into the run folder too counts once."""
    import workbench as wb

    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.load_data(
        [{"question": f"What is {i}?", "answer": str(i)} for i in range(12)], validation=0.34
    )
    scored = {}
    for lr in (1e-4, 1e-3):
        s.load_model(str(tiny_model_dir))  # a fresh adapter for each run
        run = s.train(max_steps=2, batch_size=4, lr=lr)
        ev = s.evaluate(metrics=["exact_match", "rouge"], max_new_tokens=3)
        assert ev.settings["run"] == run.run_dir.name
        scored[run.run_dir] = ev.scores["rougeL"]["tuned"]
    first, second = scored
    ev.save(second / "evaluation")  # the notebook's step: a copy in the run folder
    records = wb.compare([first, second]).records()
    assert [r["rougeL_tuned"] for r in records] == [scored[first], scored[second]]
    assert [len(r.evaluations) for r in wb.compare([first, second]).runs] == [1, 1]


def test_compare_says_what_each_latest_evaluation_measured(tmp_path, tiny_model_dir):
    # compare showed a run's latest evaluation whatever it was: one row of other data, an
    # adapter switched off, or a checkpoint sweep's earlier weights; a session folder was
    # read as one run. A damaged evaluation broke compare for every run, or quietly gave an
    # older one's scores.
    import workbench as wb
    from workbench.errors import WorkbenchWarning

    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    rows = [{"question": f"What is {i}?", "answer": str(i)} for i in range(12)]
    s.load_data(rows[:8], validation=rows[8:])
    run = s.train(max_steps=2, batch_size=4)
    full = s.evaluate(metrics=["exact_match"], max_new_tokens=2)
    s.evaluate(checkpoints="all", metrics=["exact_match"], max_new_tokens=2, limit=1)
    record = wb.compare(tmp_path / "s").records()[0]  # a session folder: its runs
    assert record["run"] == run.run_dir.name
    assert (record["eval_rows"], record["eval_data"]) == (4, "validation split")
    assert "adapter_strength" not in record

    s.set_adapter_strength(0.0)
    other = s.evaluate(data=[{"question": "other?", "answer": "x"}], metrics=["exact_match"])
    # print, the panel and the report said "tuned" and "evaluation of run-001" only
    measured = "on data= (list); tuned column at adapter strength 0"
    assert str(other).splitlines()[0].startswith(f"Evaluation of 1 examples ({measured})")
    assert f"<p>Measured {measured}.</p>" in other.panel().scores_html.value
    s.set_adapter_strength(1.0)
    assert f"1 rows; base, tuned; {measured})" in s.report().read_text()
    assert "Measured" not in full.panel().scores_html.value and "(" not in str(full).split("\n")[0]
    header, rows = wb.compare([run.run_dir]).table()
    shown = dict(zip(header, rows[0], strict=True))
    assert shown["eval_rows"] == "1" and shown["eval_data"].startswith("data= (list)")
    assert shown["adapter_strength"] == "0"

    latest = sorted((tmp_path / "s" / "evaluations").glob("eval-*"))[-1]
    (latest / "rows.jsonl").write_text("")  # emptied: its scores still stand, its rows not
    with pytest.raises(EvaluationError, match=r"it holds 0 rows, settings.json says 1"):
        wb.Evaluation.load(latest)
    shown = wb.compare([run.run_dir])  # the table reads scores only
    assert shown.records()[0]["eval_rows"] == 1
    with pytest.raises(EvaluationError, match=r"it holds 0 rows, settings.json says 1"):
        shown.runs[0].latest.rows  # noqa: B018
    (latest / "scores.json").write_text("[]")
    with pytest.warns(WorkbenchWarning, match=rf"left out of the comparison: {latest}"):
        record = wb.compare([run.run_dir]).records()[0]
    assert record["eval_rows"] == 4 and record["exact_match_tuned"] == pytest.approx(
        full.scores["exact_match"]["tuned"]
    )


@pytest.mark.parametrize(
    ("file", "text", "says"),
    [
        ("scores.json", "[]", "scores.json is damaged: it holds a list, not a JSON object"),
        ("scores.json", '{"em": {"base_ci": null}}', "scores.json is damaged: "),
        ("settings.json", "[1]", "settings.json is damaged: it holds a list"),
        ("rows.jsonl", "{}\n", "rows.jsonl is damaged at line 1: "),
    ],
)
def test_a_damaged_evaluation_file_is_named(tmp_path, file, text, says):
    folder = handmade_evaluation().save(tmp_path / "ev").path
    (folder / file).write_text(text)
    with pytest.raises(EvaluationError, match=rf"{folder / file} is damaged"):
        try:
            from workbench.evaluation import Evaluation

            Evaluation.load(folder)
        except EvaluationError as err:
            assert says in str(err)
            raise


def test_an_untrained_model_is_evaluated_and_exported_as_the_base(tmp_path, tiny_model_dir):
    # its scores were labelled "tuned", and its export's card said "Fine-tuned ..." (lora)
    import workbench as wb

    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    rows = [{"question": f"What is {i}?", "answer": str(i)} for i in range(12)]
    s.load_data(rows[:8], validation=rows[8:])
    ev = s.evaluate(metrics=["exact_match"], max_new_tokens=2)
    assert ev.columns == ("base",) and "tuned" not in ev.scores["exact_match"]
    card = (s.export("export/plain") / "README.md").read_text()
    assert f"\n# {tiny_model_dir}\n" in card and "tags: [tuning-workbench]" in card
    assert "## Data\n\nnot recorded" in card  # no run trained on the loaded data

    run = s.train(max_steps=1, batch_size=4, wait=True)
    s.load_data(rows[:3] * 2)  # other data, loaded after the run
    card = (s.export("export/tuned") / "README.md").read_text()
    assert "# Fine-tuned" in card and "tags: [tuning-workbench, lora]" in card
    assert "train 8, validation 4" in card  # the run's data, not the data loaded now
    s.merge()
    assert s.evaluate(data=rows[8:], metrics=["exact_match"]).columns == ("tuned",)
    assert run.state.value == "finished"


def test_an_evaluation_an_earlier_version_saved_without_its_run_is_named_not_dropped(tmp_path):
    session = tmp_path / "session"
    (session / "session.json").parent.mkdir()
    (session / "session.json").write_text("{}")
    _run(session / "runs" / "run-001", [3.0, 2.0], [(2, 2.1)], 0.5)
    (session / "runs" / "run-001" / "run.json").write_text("{}")
    old = handmade_evaluation()
    assert "run" not in old.settings  # as versions before the run was recorded saved it
    old.scores["exact_match"]["tuned"] = 0.75
    old.save(session / "evaluations" / "eval-001")
    with pytest.warns(WorkbenchWarning, match=r"left out of the comparison: evaluations/eval-001 "):
        records = compare([session]).records()
    assert [r["exact_match_tuned"] for r in records] == [0.5]  # the run's own, not the guess


def test_a_base_model_evaluated_before_any_run_is_not_taken_for_an_old_version(
    tmp_path, tiny_model_dir
):
    import warnings

    import workbench as wb

    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.load_data([{"question": f"What is {i}?", "answer": str(i)} for i in range(12)])
    base = s.evaluate(metrics=["exact_match"], max_new_tokens=2)
    assert base.settings["run"] is None
    run = s.train(max_steps=1, batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", WorkbenchWarning)
        records = wb.compare(tmp_path / "s").records()
    assert [r["run"] for r in records] == [run.run_dir.name]


def test_runs_evaluated_otherwise_are_said_not_measured_alike(tmp_path, tiny_model_dir):
    # Two different validation lists both read "data= (list)", and a run evaluated with
    # 16 new tokens instead of 2 seemed to gain: one column, nothing said.
    import workbench as wb

    rows = [{"question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(24)]

    def evaluated(name, validation, **settings):
        s = wb.Session(tmp_path / name, verbose=False)
        s.load_model(str(tiny_model_dir))
        s.load_data(rows, validation=validation)
        s.train(max_steps=1, batch_size=4, wait=True)
        s.evaluate(data=validation, metrics=["exact_match"], **settings)
        return s.run.run_dir

    same = evaluated("a", rows[:4], max_new_tokens=2)
    other_rows = evaluated("b", rows[4:8], max_new_tokens=2)
    longer = evaluated("c", rows[:4], max_new_tokens=16)
    alike = compare([same, evaluated("d", rows[:4], max_new_tokens=2)])
    assert alike.unlike() == []
    with pytest.warns(WorkbenchWarning, match="not measured alike: the rows"):
        unlike = compare([same, other_rows, longer])
    assert [line.split(" differs")[0] for line in unlike.unlike()] == [
        "the rows (prompts and references)",
        "max_new_tokens",
    ]
    # the runs share a folder name, so they are named by the folders that tell them apart
    said = f"Not measured alike: max_new_tokens differs: {longer.relative_to(tmp_path)} 16; "
    assert said in str(unlike)
    assert "Not measured alike" in unlike._repr_html_()


def test_the_score_table_reads_no_rows_until_they_are_asked_for(tmp_path):
    # compare read every row of every evaluation for a table of scores: 60 runs of 5,000
    # rows took 7 s and 750 MB, and one damaged rows.jsonl stopped the whole comparison.
    _run(tmp_path / "lr-1e-4", [3.0, 2.5], [(2, 2.2)], 0.25)
    _run(tmp_path / "lr-5e-4", [3.0, 1.0], [(2, 1.5)], 0.75)
    damaged = tmp_path / "lr-5e-4" / "evaluations" / "eval-1" / "rows.jsonl"
    lines = damaged.read_text().splitlines(keepends=True)
    damaged.write_text(lines[0] + '{"index": 1, "prompt": "torn\n' + lines[2])
    cmp = compare([tmp_path / "lr-1e-4", tmp_path / "lr-5e-4"])
    assert [r["exact_match_tuned"] for r in cmp.records()] == [0.25, 0.75]
    assert "lr-5e-4" in str(cmp) and cmp.unlike() == [] and "<img " in cmp.static_html()
    assert "exact_match" in repr(cmp.runs[1].latest)  # says what it holds, reads no rows
    whole = Evaluation.load(tmp_path / "lr-1e-4" / "evaluations" / "eval-1")
    assert cmp.runs[0].latest.rows == whole.rows and cmp.runs[0].latest == whole
    with pytest.raises(EvaluationError, match=rf"{damaged} is damaged at line 2: "):
        cmp.runs[1].latest.rows  # noqa: B018


@pytest.mark.parametrize("count", [3, 12])
@pytest.mark.parametrize("kept", [True, False], ids=["rows-kept", "saved-without-a-count"])
def test_rows_read_on_demand_are_the_rows_and_intervals_a_full_load_gives(tmp_path, count, kept):
    """Under 10 rows a load drops a saved interval; an evaluation saved before settings kept
    the row count has its first lines counted for that, not all of its rows read."""
    rows = tuple(
        EvalRow(i, f"q{i}", "a", {"tuned": "a"}, {"em": {"tuned": 1.0}}) for i in range(count)
    )
    scores = {"em": {"tuned": 1.0, "tuned_ci": (0.7, 1.0), "higher_is_better": True}}
    settings = {"columns": ["tuned"], **({"rows": count} if kept else {})}
    folder = Evaluation(scores, rows, settings).save(tmp_path / "ev").path
    lazy, full = Evaluation.load(folder, lazy=True), Evaluation.load(folder)
    assert repr(lazy.scores) == repr(full.scores)
    assert lazy.scores["em"]["tuned_ci"] == (0.7, 1.0) if count >= 10 else True
    assert lazy.rows == full.rows == rows and str(lazy) == str(full)


def _session(folder, tiny_model_dir, validation: int):
    import workbench as wb

    s = wb.Session(folder, verbose=False)
    s.load_model(str(tiny_model_dir))
    rows = [{"question": f"What is {i}?", "answer": str(i)} for i in range(8 + validation)]
    s.load_data(rows[:8], validation=rows[8:])
    s.train(max_steps=1, batch_size=4, wait=True)
    return s.evaluate(metrics=["exact_match"], max_new_tokens=2)


def test_a_folder_of_sessions_stands_for_each_sessions_runs(tmp_path, tiny_model_dir):
    # compare(parent) read a folder of session folders as one run named after the folder,
    # every session's evaluations mixed, showing whichever was saved last.
    import workbench as wb

    parent = tmp_path / "workshop"
    alice = _session(parent / "alice", tiny_model_dir, validation=4)
    bob = _session(parent / "bob", tiny_model_dir, validation=3)
    with pytest.warns(WorkbenchWarning, match="number of rows differs: alice/run-001 4; bob/"):
        cmp = compare(parent)
    assert [r.name for r in cmp.runs] == ["alice/run-001", "bob/run-001"]
    assert [r.latest.path for r in cmp.runs] == [alice.path, bob.path]
    assert [r["eval_rows"] for r in cmp.records()] == [4, 3]
    # a session's runs/ folder is a folder of runs, each with its session's evaluations
    assert [r.latest.path for r in compare(parent / "bob" / "runs").runs] == [bob.path]

    wb.Session(parent / "carol", verbose=False).load_model(str(tiny_model_dir))  # no run yet
    alice.save(parent / "alice-copy")  # an evaluation that is no run
    with pytest.warns(WorkbenchWarning) as caught:
        assert len(compare(parent).runs) == 2
    said = "\n".join(str(w.message) for w in caught)
    assert f"left out of the comparison of {parent}: carol (session folders without runs" in said
    assert f"left out of the comparison of {parent}: alice-copy (not runs)" in said
    for run in parent.glob("*/runs/*"):
        (run / "run.json").unlink()
    with pytest.raises(EvaluationError, match=r"the session folders in .*\(alice, bob, carol\)"):
        compare(parent)


def test_runs_of_the_same_name_are_told_apart_by_their_folders(tmp_path):
    # Two sessions' run-001 were each named by its whole absolute path in the table.
    for session in ("alice", "bob"):
        _run(tmp_path / session / "runs" / "run-001", [3.0, 2.0], [], 0.5)
    _run(tmp_path / "lr-5e-4", [3.0, 1.0], [], 0.75)
    runs = [tmp_path / "alice/runs/run-001", tmp_path / "bob/runs/run-001", tmp_path / "lr-5e-4"]
    cmp = compare(runs)
    assert [r.name for r in cmp.runs] == ["alice/runs/run-001", "bob/runs/run-001", "lr-5e-4"]
    assert [r["run"] for r in cmp.records()] == [r.name for r in cmp.runs]
