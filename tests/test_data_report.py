"""The data report: counts, lengths, every problem kind, text and HTML output."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pytest
from data_fixtures import CHAT_ROW, cache_dir, load, tokenizer, write_jsonl

from workbench.data import PROBLEM_KINDS, PreparedData, Problem
from workbench.data.duplicates import duplicate_problems

__all__ = ["cache_dir", "tokenizer"]

LONG = (
    "Please summarize the following meeting notes about the quarterly budget review for "
    "the marketing team and list every action item with its owner and due date"
)


def _qa(i):
    return {"question": f"What is item number {i} called in the catalogue?", "answer": f"item {i}"}


def _kinds(data, kind):
    return [p for p in data.report().problems if p.kind == kind]


def test_counts_lengths_and_share(tokenizer, cache_dir):
    rows = [_qa(i) for i in range(40)]
    data = PreparedData.load(rows, tokenizer, validation=0.25, cache_dir=cache_dir)
    report = data.report()
    assert (report.rows, report.train, report.validation, report.skipped) == (40, 30, 10, 0)
    stats = data.stats(None)
    assert report.lengths["total"].max == stats["n_tokens"].max()
    assert report.lengths["answer"].min == stats["n_answer"].min() > 0
    parts = report.lengths["prompt"].mean + report.lengths["answer"].mean
    assert abs(parts - report.lengths["total"].mean) < 0.11  # means are rounded to 0.1
    labels = [lab for ds in (data.train, data.validation) for row in ds["labels"] for lab in row]
    assert abs(report.trained_share - sum(lab != -100 for lab in labels) / len(labels)) < 1e-9
    assert sum(report.histogram[0]) == 40
    assert data.report() is report  # cached


def test_duplicates_near_duplicates_and_leaks(tokenizer, cache_dir):
    rows = [_qa(i) for i in range(30)]
    rows.append({"question": "What is item number 3 called in the  CATALOGUE?", "answer": "Item 3"})
    rows.append({"question": LONG, "answer": "ok"})
    rows.append({"question": LONG.replace("quarterly", "annual"), "answer": "ok"})
    val = [
        {"question": "what is item number 7 called in the catalogue?", "answer": "item 7"},
        {"question": LONG.replace("marketing", "sales"), "answer": "ok"},
        {"question": "Something unrelated entirely", "answer": "yes"},
    ]
    data = PreparedData.load(rows, tokenizer, validation=val, cache_dir=cache_dir)
    (dup,) = _kinds(data, "duplicate")
    assert (dup.split, dup.row) == ("train", 30) and "train row 3" in dup.message
    (near,) = _kinds(data, "near_duplicate")
    assert (near.split, near.row) == ("train", 32) and "train row 31" in near.message
    leaks = sorted((p.row, "nearly" in p.message) for p in _kinds(data, "leak"))
    assert leaks == [(0, False), (1, True)]


def _rows_with_a_duplicate():
    rows = [_qa(i) for i in range(40)] + [_qa(5)]  # row 40 repeats row 5
    return rows


def test_the_duplicate_scan_runs_beside_tokenizing_once_per_rows(tokenizer, cache_dir, monkeypatch):
    import threading

    from workbench.data import prepared

    scans = []

    def scan(train, validation=None, stop=None):
        scans.append((threading.current_thread().name, len(train), len(validation or ())))
        return duplicate_problems(train, validation, stop)

    monkeypatch.setattr(prepared, "duplicate_problems", scan)
    rows = _rows_with_a_duplicate()
    data = PreparedData.load(rows, tokenizer, validation=None, cache_dir=cache_dir)
    shorter = data.with_max_length(12)  # the same rows, tokenized again: not scanned again
    (dup,) = _kinds(data, "duplicate")
    assert (dup.split, dup.row) == ("train", 40) and "train row 5" in dup.message
    assert [(p.kind, p.row) for p in _kinds(shorter, "duplicate")] == [("duplicate", 40)]
    # the background scan, and at most one more raced when the report waited for it
    names = {name for name, _, _ in scans}
    assert 1 <= len(scans) <= 2 and names <= {
        "workbench-duplicates-idle",
        "workbench-duplicates-awaited",
    }
    assert {(n_train, n_val) for _, n_train, n_val in scans} == {(41, 0)}
    before = len(scans)
    assert [(p.kind, p.row) for p in _kinds(data.with_max_length(20), "duplicate")] == [
        ("duplicate", 40)
    ]
    assert len(scans) == before  # done once: later copies reuse the problems


@pytest.mark.skipif(sys.platform != "linux", reason="the scan's priority is lowered on Linux")
def test_a_starved_background_scan_is_raced_and_the_loser_stops(tokenizer, cache_dir, monkeypatch):
    # On a busy machine the lowest-priority scan may get no CPU at all: the report must not
    # wait for it. Here it is held until the report is done, as a starved thread would be.
    import threading

    from workbench.data import prepared
    from workbench.data.duplicates import ScanStoppedError

    release, outcome, errors = threading.Event(), [], []
    monkeypatch.setattr(threading, "excepthook", errors.append)

    def scan(train, validation=None, stop=None):
        if threading.current_thread().name.endswith("idle"):
            release.wait(60)
            try:
                duplicate_problems(train, validation, stop)
            except ScanStoppedError:
                outcome.append("stopped")
                raise
            outcome.append("finished")
        return duplicate_problems(train, validation, stop)

    monkeypatch.setattr(prepared, "duplicate_problems", scan)
    data = PreparedData.load(_rows_with_a_duplicate(), tokenizer, validation=None,
                             cache_dir=cache_dir)  # fmt: skip
    (dup,) = _kinds(data, "duplicate")  # answered by the raced scan while the first is held
    assert (dup.split, dup.row) == ("train", 40)
    release.set()
    for thread in threading.enumerate():
        if thread.name == "workbench-duplicates-idle":
            thread.join(60)
    assert outcome == ["stopped"] and errors == []
    assert [(p.kind, p.row) for p in _kinds(data, "duplicate")] == [("duplicate", 40)]


@pytest.mark.skipif(sys.platform != "linux", reason="the scan's priority is lowered on Linux")
def test_a_background_scan_getting_cpu_is_not_raced(tokenizer, cache_dir, monkeypatch):
    # Two scans would hold twice the memory: one that progresses is waited for. Its thread
    # keeps normal priority here (reported as lowered), so a busy test machine cannot starve it.
    import threading
    import time

    from workbench.data import prepared, scan_thread

    monkeypatch.setattr(scan_thread, "_lower_thread_priority", lambda: True)
    # A machine busy with other jobs gives a normal thread less than the default 25% of a
    # core (CI with other test processes did): only a scan getting almost none is starved.
    monkeypatch.setattr(scan_thread, "STARVED_SHARE", 0.02)
    names = []

    def scan(train, validation=None, stop=None):
        names.append(threading.current_thread().name)
        end = time.thread_time() + 1.5  # 1.5 s of CPU: six looks of the waiting report
        while time.thread_time() < end:
            pass
        return duplicate_problems(train, validation, stop)

    monkeypatch.setattr(prepared, "duplicate_problems", scan)
    data = PreparedData.load(_rows_with_a_duplicate(), tokenizer, validation=None,
                             cache_dir=cache_dir)  # fmt: skip
    assert [(p.kind, p.row) for p in _kinds(data, "duplicate")] == [("duplicate", 40)]
    assert names == ["workbench-duplicates-idle"]


def test_dropped_data_stops_its_background_scan_and_a_copy_keeps_it(tokenizer, cache_dir,
                                                                    monkeypatch):  # fmt: skip
    # A notebook cell that loads again drops the last data: its scan (which holds the rows'
    # memory for the length of a scan) must not run on for no one.
    import gc
    import threading
    import weakref

    from workbench.data import prepared
    from workbench.data.duplicates import ScanStoppedError

    outcome = []

    def endless(train, validation=None, stop=None):  # ends only when told to stop
        while not stop():
            threading.Event().wait(0.01)
        outcome.append(threading.current_thread().name)
        raise ScanStoppedError

    monkeypatch.setattr(prepared, "duplicate_problems", endless)
    data = PreparedData.load([_qa(i) for i in range(20)], tokenizer, cache_dir=cache_dir)
    (scan,) = [t for t in threading.enumerate() if t.name == "workbench-duplicates-idle"]
    copy = data.with_max_length(8)
    dropped = weakref.ref(data)
    del data
    gc.collect()
    assert dropped() is None  # the running scan does not keep the data alive
    scan.join(0.5)
    assert scan.is_alive() and outcome == []  # the copy shares the scan and still holds it
    del copy
    gc.collect()
    scan.join(30)
    assert not scan.is_alive() and outcome == ["workbench-duplicates-idle"]


def _run_in_fresh_process(source, tokenizer, tmp_path, *more_args, timeout=300):
    """Stdout of ``source`` run as a script with the tokenizer's folder, a cache folder and
    ``more_args`` as its arguments."""
    script = tmp_path / "script.py"
    script.write_text(source)
    args = [sys.executable, str(script), tokenizer.name_or_path, str(tmp_path / "c"), *more_args]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=True).stdout


_EXIT_DURING_SCAN = """
import sys, time
from pathlib import Path
from transformers import AutoTokenizer
from workbench.data import PreparedData, prepared
from workbench.data.duplicates import ScanStoppedError

def scan(train, validation=None, stop=None):  # a scan of many steps
    for _ in range(2400):
        if stop():
            Path(sys.argv[3]).write_text("stopped")
            raise ScanStoppedError
        time.sleep(0.05)
    Path(sys.argv[3]).write_text("ran to its end")
    return []

prepared.duplicate_problems = scan
rows = [{"question": f"q{i}", "answer": "a"} for i in range(20)]
PreparedData.load(rows, AutoTokenizer.from_pretrained(sys.argv[1]), cache_dir=sys.argv[2])
print("loaded; the script ends without the report")
"""


def test_a_program_ending_stops_the_background_scan_instead_of_waiting_for_it(tokenizer, tmp_path):
    marker = tmp_path / "scan.txt"
    assert "loaded" in _run_in_fresh_process(
        _EXIT_DURING_SCAN, tokenizer, tmp_path, str(marker), timeout=100
    )
    assert marker.read_text() == "stopped"  # not "ran to its end" (two minutes of steps)


_LOAD_AFTER_MAIN_ENDED = """
import sys, threading, time
from transformers import AutoTokenizer
from workbench.data import PreparedData

def work():
    while threading.main_thread().is_alive():  # the main thread has returned
        time.sleep(0.05)
    rows = [{"question": f"q{i}", "answer": "a"} for i in (*range(20), 3)]
    data = PreparedData.load(rows, AutoTokenizer.from_pretrained(sys.argv[1]), validation=None,
                             cache_dir=sys.argv[2])
    print([(p.kind, p.row) for p in data.duplicate_problems()])

threading.Thread(target=work).start()
"""


def test_a_report_asked_after_the_main_thread_ended_still_gets_its_scan(tokenizer, tmp_path):
    # The background scan gives way to a program ending; a thread that still waits for the
    # report (the main thread returned, a worker loads data) gets a scan of its own.
    out = _run_in_fresh_process(_LOAD_AFTER_MAIN_ENDED, tokenizer, tmp_path, timeout=100)
    assert out.strip().splitlines()[-1] == "[('duplicate', 20)]"


_THREAD_PRIORITIES = """
import json, os, sys, threading, time
from transformers import AutoTokenizer
from workbench.data import PreparedData, prepared

def niceness():
    return {int(tid): int(open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()[16])
            for tid in os.listdir("/proc/self/task")}

def threads():
    return sorted((open(f"/proc/self/task/{tid}/comm").read().strip(), nice)
                  for tid, nice in niceness().items())

seen, real = [], prepared.duplicate_problems
def scan(train, validation=None, stop=None):
    me = threading.get_native_id()
    seen.append((threading.current_thread().name, me, niceness()[me]))
    return real(train, validation, stop)

prepared.duplicate_problems = scan
rows = [{"question": f"q{i}", "answer": "a"} for i in range(20)]
data = PreparedData.load(rows, AutoTokenizer.from_pretrained(sys.argv[1]), validation=None,
                         cache_dir=sys.argv[2])
data.report()
for _ in range(1000):  # until every scan's OS thread has ended (the loser stops at a step)
    if not {str(tid) for _, tid, _ in seen} & set(os.listdir("/proc/self/task")):
        break
    time.sleep(0.01)
print(json.dumps({"scan": seen, "after": threads(),
                  "process": os.getpriority(os.PRIO_PROCESS, 0)}))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="threads have their own nice value on Linux")
def test_the_duplicate_scan_takes_only_idle_cpu_and_leaves_no_thread_slowed(tokenizer, tmp_path):
    # A fresh process: Arrow's and the tokenizer's worker threads start there, and must not
    # inherit the scan thread's priority (the next load's tokenizing would crawl).
    out = _run_in_fresh_process(_THREAD_PRIORITIES, tokenizer, tmp_path).strip().splitlines()[-1]
    found = json.loads(out)
    nice = {name: n for name, _, n in found["scan"]}
    assert nice.get("workbench-duplicates-idle", 19) == 19, out
    assert nice.get("workbench-duplicates-awaited", found["process"]) == found["process"], out
    niced = [(name, n) for name, n in found["after"] if n != found["process"]]
    assert niced == [], out  # after the scans: every thread as before


def test_a_failed_duplicate_scan_fails_the_report_not_silently(tokenizer, cache_dir, monkeypatch):
    from workbench.data import prepared

    def broken(train, validation=None, stop=None):
        raise MemoryError("no room for the scan")

    monkeypatch.setattr(prepared, "duplicate_problems", broken)
    data = PreparedData.load([_qa(i) for i in range(20)], tokenizer, cache_dir=cache_dir)
    assert len(data.train) + len(data.validation) == 20  # the rows themselves are loaded
    with pytest.raises(MemoryError, match="no room for the scan"):
        data.report()


def test_split_texts_gathered_at_once_equal_the_row_by_row_gather(tokenizer, cache_dir):
    import datasets

    from workbench.data.prepared import _columns

    chats = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]
             for i in range(30)]  # fmt: skip
    table = datasets.Dataset.from_dict({"messages": chats, "n": list(range(30))})
    for split in (table.select([7, 3, 29, 0]), table.select([]), table):  # indexed, or not
        expected = split.select_columns(["messages", "n"]).with_format("arrow")[:]
        assert _columns(split, ["messages", "n"]).equals(expected)
    assert _columns(table.select([7, 3]), ["n"]).column("n").to_pylist() == [7, 3]
    rows = [_qa(i) for i in range(50)]
    data = PreparedData.load(rows, tokenizer, validation=0.2, cache_dir=cache_dir)
    questions = [r["question"] for r in rows]
    picked = [questions[r - 1] for r in data.validation["source_row"]]
    assert [t.split("\n")[0] for t in data.texts("validation").to_pylist()] == picked


def test_near_duplicates_scale_without_pairs(tokenizer):
    words = [f"w{i}" for i in range(5000)]
    texts = [
        " ".join(words[(i * 7) % 4980 : (i * 7) % 4980 + 20]) + f" n{i}" for i in range(20_000)
    ]
    texts[19_999] = texts[5] + " extra"
    problems = duplicate_problems(pa.array(texts))
    flagged = {(p.kind, p.row) for p in problems}
    assert ("near_duplicate", 19_999) in flagged


def test_empty_field_and_no_assistant_turn(tmp_path, tokenizer, cache_dir):
    rows = [{"question": "fine", "answer": "yes"}, {"question": "  ", "answer": "x"}]
    data = load(rows, tokenizer, cache_dir)
    (empty,) = _kinds(data, "empty_field")
    assert (empty.row, empty.split) == (1, "train") and "question" in empty.message
    chat = [CHAT_ROW, {"messages": [{"role": "user", "content": "anyone there?"}]}]
    data = load(chat, tokenizer, cache_dir)
    (none,) = _kinds(data, "no_trained_tokens")
    assert none.row == 1 and "no assistant" in none.message


def test_turns_after_the_last_answer_are_reported_with_their_token_cost(tokenizer, cache_dir):
    def turn(role, text):
        return {"role": role, "content": text}

    trailing = {"messages": [*CHAT_ROW["messages"], turn("user", "And 4+4?")]}
    sharegpt_two = {
        "conversations": [
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello"},
            {"from": "human", "value": "Still there?"},
            {"from": "human", "value": "Hello?"},
        ]
    }
    untrained_last = {"messages": [*CHAT_ROW["messages"], {**turn("assistant", "x"), "weight": 0}]}
    data = load([CHAT_ROW, trailing, untrained_last], tokenizer, cache_dir)
    (one,) = _kinds(data, "unanswered_turn")  # a weight-0 last answer is the user's choice
    tokens = data.example(1).tokens
    last_trained = max(i for i, t in enumerate(tokens) if t.trained)
    after_answer = tokens[last_trained + 1 :]
    assert one.row == 1 and one.message.startswith(
        f"the conversation goes on after its last answer with a user turn ({len(after_answer)} "
        "tokens) that trains nothing"
    )
    assert "And 4+4?" in "".join(t.text for t in after_answer)
    # a weight-0 answer inside the tail: every turn after the last trained answer is named
    tail = [*CHAT_ROW["messages"], turn("user", "Again?"), {**turn("assistant", "x"), "weight": 0}]
    mixed = load([{"messages": [*tail, turn("user", "ok")]}], tokenizer, cache_dir)
    (three,) = _kinds(mixed, "unanswered_turn")
    tokens = mixed.example(0).tokens
    after = len(tokens) - 1 - max(i for i, t in enumerate(tokens) if t.trained)
    assert f"with 3 turns (user, assistant, user) ({after} tokens)" in three.message
    data = load([sharegpt_two], tokenizer, cache_dir)
    (two,) = _kinds(data, "unanswered_turn")
    assert "with 2 turns (user, user)" in two.message and "drop them" in two.message
    assert data.report().count("unanswered_turn") == 1 and not _kinds(
        load([CHAT_ROW], tokenizer, cache_dir), "unanswered_turn"
    )


def test_truncation_problem_kinds(tokenizer, cache_dir):
    long_prompt = {"question": LONG, "answer": "ok"}
    long_answer = {"question": "hi", "answer": LONG}
    data = load(
        [long_prompt, long_answer, {"question": "a", "answer": "b"}],
        tokenizer,
        cache_dir,
        max_length=24,
    )
    assert [p.row for p in _kinds(data, "no_trained_tokens")] == [0]
    assert [p.row for p in _kinds(data, "truncated_answer")] == [1]
    assert all(label == -100 for label in data.train[0]["labels"])  # answer truncated away
    text = load([{"text": LONG}], tokenizer, cache_dir, max_length=10)
    (too_long,) = _kinds(text, "too_long")
    assert too_long.row == 0 and "max_length=10" in too_long.message


def test_small_dataset_states_its_rule(tokenizer, cache_dir):
    (small,) = _kinds(load([_qa(1)], tokenizer, cache_dir), "small_dataset")
    assert small.row is None and "rule of thumb" in small.message and "100" in small.message
    assert not _kinds(load([_qa(i) for i in range(120)], tokenizer, cache_dir), "small_dataset")


def test_text_report_has_the_same_facts(tmp_path, tokenizer, cache_dir):
    rows = [_qa(i) for i in range(5)] + ["{broken", _qa(1)]
    data = load(write_jsonl(tmp_path / "d.jsonl", rows), tokenizer, cache_dir, on_error="skip")
    report = data.report()
    text = str(report)
    assert "d.jsonl" in text and "format 'qa'" in text
    assert "7 read, 1 skipped; train 6, validation 0" in text
    assert f"{report.trained_share:.1%}" in text
    assert f"{report.lengths['total'].max:>7}" in text
    for kind, n in report.by_kind.items():
        assert f"{n} {kind}" in text
    assert "line 6" in text


def test_html_report_escapes_rows(tokenizer, cache_dir):
    rows = [{"question": "<script>alert(1)</script>", "answer": "x"}] * 2
    data = load(rows, tokenizer, cache_dir)
    bad = Problem(0, "duplicate", "<img src=x onerror=alert(1)>", "train")
    assert (
        "<img"
        not in type(data.report())(**{**data.report().__dict__, "problems": (bad,)})._repr_html_()
    )
    assert "<script>" not in data.report()._repr_html_()


def test_problem_kind_is_checked():
    import pytest

    from workbench.errors import SpecError

    assert "leak" in PROBLEM_KINDS
    with pytest.raises(SpecError, match="kind"):
        Problem(0, "oops", "x", "train")


def test_loaded_data_pickles_and_copies_with_its_duplicates(tokenizer, cache_dir):
    import copy
    import pickle

    rows = _rows_with_a_duplicate()
    data = PreparedData.load(rows, tokenizer, validation=None, cache_dir=cache_dir)
    for twin in (pickle.loads(pickle.dumps(data)), copy.deepcopy(data)):
        assert [(p.kind, p.row) for p in twin.duplicate_problems()] == [("duplicate", 40)]
        assert twin.report().train == data.report().train
