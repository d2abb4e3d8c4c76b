"""The ratings file is the one source of truth: panels and kernels skip each other's rows.

A real evaluation of the tiny model (a LoRA adapter with random weights, so base and tuned
answers differ) is rated by two panels, two headless raters and two processes; the file is
checked after each step, and what the panels show is compared with it.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import warnings
from collections import Counter
from pathlib import Path

import pytest

from workbench.errors import EvaluationError, WorkbenchWarning
from workbench.evaluation import Evaluation, Rating
from workbench.evaluation.ratings import BlindRater, append_rating, read_ratings, summarize

N_ROWS = 16
WORDS = [f"item {i}: {w}" for i, w in enumerate(["apple", "banana", "cherry", "fish"] * 4)]


@pytest.fixture(scope="module")
def evaluated(tiny_model_dir, tmp_path_factory) -> Evaluation:
    """A saved 16-row base vs tuned evaluation of the tiny model."""
    import torch
    from peft import LoraConfig, get_peft_model

    from workbench.evaluation import run_evaluation
    from workbench.models.loading import load_model

    loaded = load_model(str(tiny_model_dir), on_event=lambda m: None)
    tok = loaded.tokenizer
    torch.manual_seed(0)
    config = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(loaded.model, config)
    rows = [
        {
            "prompt": tok.apply_chat_template(
                [{"role": "user", "content": word}], tokenize=False, add_generation_prompt=True
            ),
            "reference": "red",
        }
        for word in WORDS
    ]
    out = tmp_path_factory.mktemp("ratings") / "eval"
    return run_evaluation(
        model,
        tok,
        rows,
        metrics=["exact_match"],
        max_new_tokens=3,
        batch_size=N_ROWS,
        out_dir=out,
    )


@pytest.fixture
def ev(evaluated, tmp_path) -> Evaluation:
    """A fresh copy of the evaluation folder (no ratings yet) for one test."""
    folder = tmp_path / "eval"
    shutil.copytree(evaluated.path, folder)
    return Evaluation.load(folder)


def file_rows(ev: Evaluation) -> list[int]:
    """The row of every record in the ratings file, in order (read raw, line by line)."""
    text = ev.ratings_path.read_text(encoding="utf-8") if ev.ratings_path.exists() else ""
    return [json.loads(line)["row"] for line in text.splitlines()]


def shown_count(panel) -> int:
    """The number of rated rows a panel shows ("12 of 16 rated" -> 12)."""
    rated, _, total, _ = panel.progress.value.split()
    assert int(total) == N_ROWS
    return int(rated)


def test_the_evaluation_is_real(evaluated):
    assert len(evaluated.rows) == N_ROWS and evaluated.columns == ("base", "tuned")
    assert any(r.base != r.tuned for r in evaluated.rows)


def test_two_panels_rating_alternately_never_rate_a_row_twice(ev):
    from workbench.widgets.ab_rating import ABRating

    seen = []
    one, two = ABRating(ev), ABRating(ev, on_rated=seen.append)  # same seed: same first pair
    assert one.current_row == two.current_row
    clicks = 0
    while not (one.a_button.disabled and two.a_button.disabled):
        panel = (one, two)[clicks % 2]
        if not panel.a_button.disabled:
            (panel.a_button if clicks % 3 else panel.tie_button).click()
        clicks += 1
        rows = file_rows(ev)
        assert len(rows) == len(set(rows))  # never the same row twice
        assert shown_count(one) == shown_count(two) == len(rows)  # both panels agree with it
        for shown in (one.current_row, two.current_row):
            assert shown is None or shown not in rows  # neither panel shows a rated pair
    assert sorted(file_rows(ev)) == list(range(N_ROWS))
    assert one.progress.value == two.progress.value == f"{N_ROWS} of {N_ROWS} rated"
    assert one.prompt_html.value == two.prompt_html.value == "<b>all rated</b>"
    assert len(seen) == N_ROWS  # panel two heard of every rating, its own and panel one's
    assert ev.ratings_summary().n == N_ROWS


def test_two_raters_with_stale_pairs_skip_each_others_rows(ev):
    """Two headless raters (as in two kernels: nobody tells the other) on one file."""
    one, two = ev.rater(), ev.rater()
    first = one.current()[0]
    assert two.current()[0] == first  # both show the same pair
    one.rate("A")
    with pytest.raises(EvaluationError, match=f"row {first} is already rated"):
        two.rate("B")  # the pair it showed was rated meanwhile: refused, nothing written
    assert file_rows(ev) == [first]
    assert two.current()[0] != first  # re-read: the next unrated row
    other = BlindRater(list(ev.rows), ev.ratings_path, seed=7)  # another order too
    raters = [one, two, other]
    turn = 0
    while two.remaining:
        rater = raters[turn % 3]
        if rater.current() is not None:
            rater.rate(("A", "B", "tie")[turn % 3])
        turn += 1
    rows = file_rows(ev)
    assert sorted(rows) == list(range(N_ROWS)) and len(rows) == N_ROWS


def test_a_panel_shown_a_pair_rated_in_another_kernel_writes_nothing(ev):
    from workbench.widgets.ab_rating import ABRating

    panel = ABRating(ev)
    shown = panel.current_row
    elsewhere = ev.rater()  # no panel: like a second kernel
    elsewhere.rate("B")
    assert file_rows(ev) == [shown]
    panel.a_button.click()  # the stale pair: refused, the next one shown
    assert file_rows(ev) == [shown]
    assert "rated meanwhile in another panel or kernel" in panel.notice.value
    assert panel.current_row not in (None, shown)
    assert panel.progress.value == f"1 of {N_ROWS} rated"
    for _ in range(11):
        elsewhere.rate("tie")
    panel.show_current()
    assert len(set(file_rows(ev))) == 12
    assert panel.progress.value == f"12 of {N_ROWS} rated"
    assert panel.current_row not in file_rows(ev)


def test_a_changed_verdict_is_recorded_as_a_change_and_counted_once(ev):
    from workbench.widgets.ab_rating import ABRating

    panel = ABRating(ev)
    row = panel.current_row
    shown_a = panel.a_html.value
    first = panel.rate("A")
    assert panel.current_row != row and not panel.change_button.disabled
    panel.change_button.click()  # "change previous verdict": the same pair, A and B as before
    assert panel.current_row == row and panel.a_html.value == shown_a
    assert "was: A better" in panel.notice.value
    panel.comment.value = "on second thought"
    panel.tie_button.click()
    records = [json.loads(line) for line in ev.ratings_path.read_text().splitlines()]
    assert [(r["row"], r["verdict"], r["kind"]) for r in records] == [
        (row, "A", "rating"),
        (row, "tie", "change"),
    ]
    assert records[1]["revises"] == first.id == records[0]["id"]
    assert records[1]["a_is"] == records[0]["a_is"] and records[1]["comment"] == "on second thought"
    summary = ev.ratings_summary()
    assert (summary.n, summary.ties, summary.tuned_wins + summary.base_wins, summary.changed) == (
        1,
        1,
        0,
        1,
    )
    assert "1 verdict(s) changed" in str(summary)
    assert panel.progress.value == f"1 of {N_ROWS} rated"  # a change is not a new row
    assert panel.current_row not in (None, row)  # back to the next unrated pair
    panel.change_button.click()
    panel.change_button.click()  # "cancel change": nothing written
    assert len(read_ratings(ev.ratings_path)) == 2
    with pytest.raises(EvaluationError, match="has no verdict yet to change"):
        ev.rater().change(panel.current_row, "A")


def _append_many(path: str, start: int, count: int, comment: str, go) -> None:
    go.wait()
    for row in range(start, start + count):
        append_rating(path, Rating(row, "tuned", "A", 3, comment, float(row)))


def _rate_all(folders: list[str], go, out) -> None:
    import time

    from workbench.evaluation import ratings

    read = ratings._read_unlocked

    def slow_read(path):  # widen the read-then-append window, so a missing lock shows
        found = read(path)
        time.sleep(0.005)
        return found

    ratings._read_unlocked = slow_read
    raters = [Evaluation.load(folder).rater() for folder in folders]
    written = 0
    go.wait()
    for rater in raters:
        while rater.current() is not None:
            try:
                rater.rate("B")
                written += 1
            except EvaluationError:
                pass  # the other process took the row between current() and rate()
    out.put(written)


def test_two_processes_append_400_intact_lines(tmp_path):
    path = tmp_path / "ratings.jsonl"
    # Comments longer than a pipe or a write buffer: a line would tear if it were split.
    comments = ["é" * 40_000 + "|one", "z" * 70_000 + "|two"]
    ctx = multiprocessing.get_context("spawn")
    go = ctx.Event()
    procs = [
        ctx.Process(target=_append_many, args=(str(path), i * 200, 200, comments[i], go))
        for i in range(2)
    ]
    for proc in procs:
        proc.start()
    go.set()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 400
    records = [json.loads(line) for line in lines]  # every line is whole JSON
    assert sorted(r["row"] for r in records) == list(range(400))
    assert Counter(r["comment"] for r in records) == {comments[0]: 200, comments[1]: 200}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(read_ratings(path)) == 400


def test_two_processes_rating_at_once_never_rate_a_row_twice(ev, tmp_path):
    # Two copies of the evaluation, rated in turn: more rows to collide on.
    folders = [ev.path, tmp_path / "copy"]
    for folder in folders[1:]:
        shutil.copytree(ev.path, folder)
    ctx = multiprocessing.get_context("spawn")
    go, written = ctx.Event(), ctx.Queue()
    args = ([str(f) for f in folders], go, written)
    procs = [ctx.Process(target=_rate_all, args=args) for _ in range(2)]
    for proc in procs:
        proc.start()
    go.set()  # both start together, on the same first pair (same seed)
    counts = [written.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    assert sum(counts) == N_ROWS * len(folders)
    for folder in folders:
        rows = [json.loads(line)["row"] for line in (folder / "ratings.jsonl").open()]
        assert sorted(rows) == list(range(N_ROWS))


def test_a_truncated_last_line_is_skipped_with_a_warning(ev):
    from workbench.widgets.ab_rating import ABRating

    rater = ev.rater()
    for verdict in ("A", "B", "tie"):
        rater.rate(verdict)
    with open(ev.ratings_path, "a", encoding="utf-8") as handle:
        handle.write('{"row": 9, "a_is": "tuned", "verd')  # a kernel killed mid-write
    message = rf"{ev.ratings_path}: skipped line\(s\) 4, which are not complete ratings"
    with pytest.warns(WorkbenchWarning, match=message):
        assert len(read_ratings(ev.ratings_path)) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error", WorkbenchWarning)  # said once, above: not per read
        panel = ABRating(ev)  # no crash: the torn line costs only itself
        assert panel.progress.value == f"3 of {N_ROWS} rated"
        panel.a_button.click()  # the next record starts on a line of its own
        assert panel.progress.value == f"4 of {N_ROWS} rated"
        lines = Path(ev.ratings_path).read_text().splitlines()
        assert len(lines) == 5 and json.loads(lines[4])["row"] == panel.rated_here[-1]
        assert summarize(read_ratings(ev.ratings_path)).n == 4
