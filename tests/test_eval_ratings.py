"""Blind A/B ratings: written as made, survive a kill, torn lines tolerated, summarised."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from tests.eval_fixtures import handmade_evaluation
from workbench.errors import WorkbenchWarning
from workbench.evaluation import EvaluationError, Rating
from workbench.evaluation.ratings import (
    BlindRater,
    append_rating,
    read_ratings,
    summarize,
    wilson_interval,
)

REPO = Path(__file__).resolve().parent.parent


def test_wilson_interval_and_summary():
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    ratings = [
        Rating(0, "tuned", "A"),
        Rating(1, "base", "B"),
        Rating(2, "base", "A"),
        Rating(3, "tuned", "tie"),
        Rating(2, "base", "B"),
    ]  # row 2 re-rated: latest wins
    s = summarize(ratings)
    assert (s.n, s.tuned_wins, s.base_wins, s.ties) == (4, 3, 0, 1)
    assert s.win_rate == pytest.approx(3.5 / 4)
    assert s.ci == pytest.approx(wilson_interval(3.5, 4))


def test_rating_validation():
    with pytest.raises(EvaluationError, match="verdict='C'"):
        Rating(0, "tuned", "C")
    with pytest.raises(EvaluationError, match="score=9"):
        Rating(0, "tuned", "A", score=9)


def test_blind_order_is_seeded_and_hides_the_model(tmp_path):
    ev = handmade_evaluation().save(tmp_path / "ev")
    one, two = (
        BlindRater(list(ev.rows), tmp_path / "a.jsonl"),
        BlindRater(list(ev.rows), tmp_path / "b.jsonl"),
    )
    assert one.order == two.order and one.a_is == two.a_is
    assert set(BlindRater(list(ev.rows), tmp_path / "c.jsonl", seed=0).a_is.values()) <= {
        "base",
        "tuned",
    }
    row, _, a, b = one.current()
    assert {a, b} == {ev.rows[row].base, ev.rows[row].tuned}
    shown_tuned = a if one.a_is[row] == "tuned" else b
    assert shown_tuned == ev.rows[row].tuned


def test_torn_last_line_is_skipped_and_repaired(tmp_path):
    path = tmp_path / "ratings.jsonl"
    append_rating(path, Rating(0, "tuned", "A"))
    with open(path, "a") as handle:
        handle.write('{"row": 1, "a_is": "tu')  # killed mid-write
    # The torn line is now reported (a warning naming the file and line), not dropped silently.
    with pytest.warns(WorkbenchWarning, match=r"ratings\.jsonl: skipped line\(s\) 2"):
        assert [r.row for r in read_ratings(path)] == [0]
    append_rating(path, Rating(2, "base", "tie"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", WorkbenchWarning)  # the same damage: said once, above
        assert [r.row for r in read_ratings(path)] == [0, 2]


def test_ratings_survive_sigkill_mid_session(tmp_path):
    ev = handmade_evaluation().save(tmp_path / "ev")
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from workbench.evaluation import Evaluation
        rater = Evaluation.load({str(ev.path)!r}).rater()
        rater.rate("A", score=4, comment="first")
        rater.rate("tie")
        print("rated", flush=True)
        time.sleep(60)
        rater.rate("B")
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "rated"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    ratings = read_ratings(ev.ratings_path)
    assert [(r.verdict, r.score, r.comment) for r in ratings] == [
        ("A", 4, "first"),
        ("tie", None, ""),
    ]
    resumed = ev.rater()
    assert len(resumed.remaining) == 1  # a new session resumes after the rated rows
    assert ev.ratings_summary().n == 2


LINE_SEPARATORS = "\u2028 \u2029 \u0085"  # kept raw in JSON; str.splitlines splits at each


def test_text_with_unicode_line_separators_survives_a_reload(tmp_path):
    """Text pasted from a PDF or a web page carries them: rows and comments must come back."""
    from dataclasses import replace

    from workbench.evaluation import Evaluation

    ev = handmade_evaluation()
    rows = list(ev.rows)
    rows[1] = replace(
        rows[1], prompt=f"pasted{LINE_SEPARATORS}text", outputs={"base": "a\u0085", "tuned": "b"}
    )
    ev = replace(ev, rows=tuple(rows)).save(tmp_path / "ev")
    with warnings.catch_warnings():
        warnings.simplefilter("error", WorkbenchWarning)  # no line looks torn
        reloaded = Evaluation.load(tmp_path / "ev")
    assert reloaded.rows == ev.rows and len(reloaded.rows) == 3
    rater = reloaded.rater()
    rater.rate("A", comment=f"first{LINE_SEPARATORS}line", row=1)
    assert [r.comment for r in read_ratings(reloaded.ratings_path)] == [
        f"first{LINE_SEPARATORS}line"
    ]
    with pytest.raises(EvaluationError, match="already rated"):
        rater.rate("B", row=1)
    assert reloaded.ratings_summary().n == 1


def test_ratings_follow_the_answers_they_judged_when_saved(tmp_path):
    from dataclasses import replace

    ev = handmade_evaluation().save(tmp_path / "ev")
    ev.rater().rate("A", row=2)
    copy = ev.save(tmp_path / "run" / "evaluation")  # the notebook's "save into the run" step
    assert [r.row for r in read_ratings(copy.ratings_path)] == [2]
    assert copy.ratings_summary().n == 1
    rescored = replace(ev, scores={}).save()  # same answers, other scores: ratings stay
    assert rescored.ratings_summary().n == 1
    other = replace(ev, rows=ev.rows[:2]).save(tmp_path / "other")
    other.rater().rate("B", row=0)
    with pytest.warns(WorkbenchWarning, match=r"ratings of other answers .*ratings\.replaced-"):
        over = other.save(tmp_path / "ev")  # other answers over the rated folder
    assert over.ratings_summary().n == 1  # row 0 of 'other', taken along; not row 2 of before
    assert [r.row for r in read_ratings(over.ratings_path)] == [0]
    (aside,) = (tmp_path / "ev").glob("ratings.replaced-*.jsonl")
    assert [r.row for r in read_ratings(aside)] == [2]


def test_the_summary_counts_only_rows_the_evaluation_has(tmp_path):
    from dataclasses import replace

    ev = handmade_evaluation().save(tmp_path / "ev")
    append_rating(ev.ratings_path, Rating(2, "tuned", "A"))
    shorter = replace(ev, rows=ev.rows[:2])
    assert shorter.ratings_summary().n == 0
    assert shorter.rater().progress() == (0, 2)


def test_rating_an_evaluation_whose_folder_was_deleted_is_refused(tmp_path):
    # it used to make a folder holding ratings alone, which a later save() set aside as
    # "ratings of other answers"
    import shutil

    ev = handmade_evaluation().save(tmp_path / "ev")
    rater = ev.rater()
    rater.rate("A")
    shutil.rmtree(tmp_path / "ev")
    with pytest.raises(EvaluationError, match=r"ev is gone .* nothing written"):
        rater.rate("B")
    with pytest.raises(EvaluationError, match=r"is gone"):
        rater.change(rater.order[0], "tie")
    assert not (tmp_path / "ev").exists()


def test_a_bare_rater_in_a_notebook_is_the_rating_panel_with_a_static_snapshot(tmp_path):
    # ev.rater() showed "<workbench.evaluation.ratings.BlindRater at 0x...>", and the rating
    # panel had no static fallback (a saved notebook showed a VBox repr)
    from workbench.widgets._snapshot import snapshot_bundle
    from workbench.widgets.ab_rating import ABRating

    ev = handmade_evaluation().save(tmp_path / "ev")
    rater = ev.rater()
    assert rater.evaluation is ev and repr(rater).startswith("BlindRater(0 of 3 rated")
    rater.rate("tie")
    bundle = ABRating(ev)._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/plain"].startswith("Blind A/B rating: 1 of 3 rated; tuned better 0")
    assert "wb-snapshot-ab-rating" in bundle["text/html"]
    assert snapshot_bundle(ABRating(ev))["text/html"] == bundle["text/html"]


def test_a_rating_the_folder_cannot_take_is_said_in_the_panel_and_kept(tmp_path):
    # The click's OSError went to ipywidgets' log: the panel said nothing, the verdict lost.
    from workbench.evaluation import EvalRow, Evaluation
    from workbench.widgets.ab_rating import ABRating

    rows = tuple(EvalRow(i, "Q", "A", {"base": "B", "tuned": "A"}) for i in range(3))
    ev = Evaluation({}, rows, {"columns": ["base", "tuned"]}).save(tmp_path / "ev")
    panel = ABRating(ev)
    ratings = Path(panel.rater.path)
    ratings.mkdir()  # the file cannot be written (a real failure, as a full disk would be)
    panel.score.value, panel.comment.value = 4, "clearer"
    shown = panel.current_row
    panel.a_button.click()
    assert panel.notice.value.startswith("<i>not saved: [Errno 21] Is a directory")
    assert "stay here to rate again" in panel.notice.value
    assert (panel.score.value, panel.comment.value, panel.current_row) == (4, "clearer", shown)
    assert panel.progress.value == "0 of 3 rated"
    ratings.rmdir()
    panel.a_button.click()
    assert panel.progress.value == "1 of 3 rated" and panel.notice.value == ""


def damage_warnings(caught: list) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, WorkbenchWarning)]


def test_a_hand_edited_row_is_read_when_whole_and_named_when_not(tmp_path):
    # "row": 8.0 (pandas' to_json, a JSON round-trip through floats) was skipped as "a write
    # cut short by a kill", which sent the user looking for a crash that never happened.
    from workbench.evaluation import EvalRow, Evaluation
    from workbench.widgets.ab_rating import ABRating

    rows = tuple(EvalRow(i, f"Q{i}", "A", {"base": "B", "tuned": "A"}) for i in range(10))
    ev = Evaluation({}, rows, {"columns": ["base", "tuned"]}).save(tmp_path / "ev")
    append_rating(ev.ratings_path, Rating(0, "tuned", "A"))
    with ev.ratings_path.open("a") as handle:
        for row in (8.0, 2.5, "three"):
            handle.write(json.dumps({"row": row, "a_is": "base", "verdict": "A"}) + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert [r.row for r in read_ratings(ev.ratings_path)] == [0, 8]
        panel = ABRating(ev)
    assert panel.progress.value == "2 of 10 rated" and 8 not in panel.rater.remaining
    assert ev.ratings_summary().base_wins == 1  # row 8 counted, as its verdict says
    (said,) = damage_warnings(caught)
    assert said.startswith(f"{ev.ratings_path}: skipped line(s) 3, 4, which are not complete")
    assert "Line 3: field 'row' is 2.5, not a row index (a whole number >= 0)." in said
    assert "Line 4: field 'row' is 'three', not a row index" in said
    assert "cut short" not in said


def test_a_damaged_ratings_file_is_warned_of_once_per_damage_not_per_read(tmp_path):
    # A panel reads the file for its summary, its next pair and its progress: each read
    # warned, so one torn line was said three times per panel build and again on every click.
    from workbench.widgets.eval_panel import EvalPanel

    ev = handmade_evaluation().save(tmp_path / "ev")
    ev.rater().rate("A")
    with ev.ratings_path.open("a") as handle:
        handle.write('{"row": 1, "a_is": "tu\n')  # a kernel killed mid-write
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        panel = EvalPanel(ev)
        assert len(damage_warnings(caught)) == 1
        assert "Line 2: not whole JSON (a write cut short by a kill" in caught[0].message.args[0]
        EvalPanel(ev)  # another panel on the same damage says nothing new
        panel.ab.a_button.click()  # nor does rating: the file grew, the damage did not
        assert panel.ab.progress.value == "2 of 3 rated"
        assert len(damage_warnings(caught)) == 1
        with ev.ratings_path.open("a") as handle:
            handle.write('{"row": 2, "a_is": "base", "verdict": "maybe"}\n')  # new damage
        assert ev.ratings_summary().n == 2
        assert len(damage_warnings(caught)) == 2
        new = damage_warnings(caught)[1]
        assert "skipped line(s) 2, 4" in new and "verdict='maybe' must be one of" in new
        first = ev.ratings_path.read_text().splitlines()[0]
        ev.ratings_path.write_text(first + "\n")  # mended by hand (one rating left)
        assert ev.ratings_summary().n == 1
        with ev.ratings_path.open("a") as handle:
            handle.write('{"row": 1, "a_is": "tu\n')  # the same tear on the same line: news
        ev.ratings_summary()
        assert len(damage_warnings(caught)) == 3
