"""Blind A/B ratings: written as made, survive a kill, torn lines tolerated, summarised."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
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
    with pytest.warns(WorkbenchWarning, match=r"skipped line\(s\) 2"):
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
