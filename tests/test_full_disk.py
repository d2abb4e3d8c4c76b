"""A disk that fills up while the session writes: a WriteError naming the path, nothing
half-written, and finished work kept (a real tmpfs from the ``small_disk`` fixture)."""

from __future__ import annotations

import json
import os

import pytest
from data_fixtures import tokenizer

from workbench._io import atomic_write_text
from workbench.errors import WorkbenchWarning, WriteError

__all__ = ["tokenizer"]  # a fixture used by name


def _fill(folder):
    """Take every free byte of the disk ``folder`` is on."""
    with open(folder / "filler", "wb", buffering=0) as handle:  # nothing left to flush
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError:
            pass


def test_a_small_file_written_to_a_full_disk_names_the_file_not_its_temporary(small_disk):
    disk = small_disk(64)
    _fill(disk)
    with pytest.raises(WriteError, match=f"no space left on device at {disk / 'session.json'}"):
        atomic_write_text(disk / "session.json", "x" * 10_000)
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]


def test_loading_data_onto_a_full_disk_names_the_cache_and_leaves_nothing(small_disk, tokenizer):
    from workbench.data import PreparedData

    disk = small_disk(256)
    rows = [{"question": f"question {i} " * 20, "answer": f"answer {i} " * 20} for i in range(2000)]
    with pytest.raises(WriteError, match=f"no space left on device at {disk}"):
        PreparedData.load(rows, tokenizer, cache_dir=str(disk), validation=None)
    assert not list(disk.rglob("*.arrow")) and not list(disk.rglob("*.incomplete"))


def test_an_evaluation_that_cannot_be_saved_is_returned_with_its_answers(
    small_disk, tiny_model_dir
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workbench.evaluation import run_evaluation

    disk = small_disk(64)
    _fill(disk)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    rows = [{"prompt": f"Say {i}.", "reference": str(i)} for i in range(3)]
    with pytest.warns(WorkbenchWarning, match="done but could not be saved .*no space left"):
        ev = run_evaluation(
            model,
            AutoTokenizer.from_pretrained(tiny_model_dir),
            rows,
            metrics=["exact_match"],
            compare_base=False,
            max_new_tokens=2,
            out_dir=disk / "eval-001",
        )
    assert ev.path is None and len(ev.rows) == 3 and "exact_match" in ev.scores
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]  # no half-written folder


def test_a_sessions_evaluation_on_a_full_disk_is_returned_not_lost(small_disk, tiny_model_dir):
    # It warned "returned unsaved", then raised recording eval-001 in session.json.
    import workbench as wb

    disk = small_disk(512)
    s = wb.Session(disk / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    _fill(disk)
    rows = [{"question": f"Say {i}.", "answer": str(i)} for i in range(3)]
    with pytest.warns(WorkbenchWarning) as said:
        ev = s.evaluate(data=rows, metrics=["exact_match"], max_new_tokens=2, wait=True)
    assert len(ev.rows) == 3 and "exact_match" in ev.scores and ev.path is None
    messages = [str(w.message) for w in said]
    assert any("done but could not be saved" in m for m in messages)
    assert any(
        "eval-001 could not be recorded in session.json: no space left" in m for m in messages
    )
    s.close()


def test_training_onto_a_full_disk_names_the_run_folder_and_leaves_nothing(
    small_disk, tiny_model_dir
):
    # datasets' save_to_disk of the run's tokenized data raised a bare "[Errno 28] No space
    # left on device" naming no folder.
    import workbench as wb

    disk = small_disk(512)
    s = wb.Session(disk / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.load_data([{"question": f"What is {i}?", "answer": str(i)} for i in range(200)])
    _fill(disk)
    with pytest.raises(wb.WriteError, match=r"no space left on device at .*runs.run-001"):
        s.train(max_steps=1, wait=True)
    assert [p.name for p in (disk / "s" / "runs").iterdir()] == []
    s.close()


def test_a_rating_onto_a_full_disk_names_the_ratings_file(small_disk):
    # A headless rater's append raised a bare "[Errno 28] No space left on device".
    import workbench as wb
    from workbench.evaluation.ratings import RATINGS_FILE, Rating, append_rating, read_ratings

    disk = small_disk(64)
    path = disk / RATINGS_FILE
    append_rating(path, Rating(0, "tuned", "A"))
    _fill(disk)
    with pytest.raises(wb.WriteError, match=rf"no space left on device at .*{RATINGS_FILE}"):
        append_rating(path, Rating(1, "tuned", "B", comment="why " * 4096))  # a new page
    assert [r.row for r in read_ratings(path)] == [0]  # the earlier verdict is kept


def test_an_export_to_another_disk_stands_when_the_session_folders_disk_is_full(
    small_disk, tiny_model_dir, tmp_path
):
    # The run's error says "export still works"; it failed writing session.json instead.
    from transformers import AutoModelForCausalLM

    import workbench as wb

    disk = small_disk(512)
    s = wb.Session(disk / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    _fill(disk)
    with pytest.warns(WorkbenchWarning, match=r"session\.json was not updated \(no space left"):
        folder = s.export(tmp_path / "elsewhere")
    assert AutoModelForCausalLM.from_pretrained(folder).config.model_type == "llama"
    s.close()


def test_what_a_killed_writer_left_beside_a_file_is_cleared_by_the_next_write(tmp_path):
    # A report page written while the process was killed left its 55 MB temporary for good.
    import os
    import time

    old, fresh = tmp_path / ".report.html.a1b2c3d4", tmp_path / ".report.html.d4e5f6g7"
    old.write_text("half a page")
    fresh.write_text("a page being written now")
    hours_ago = time.time() - 2 * 3600
    os.utime(old, (hours_ago, hours_ago))
    atomic_write_text(tmp_path / "report.html", "<html></html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".report.html.d4e5f6g7", "report.html"]


def test_a_run_lock_that_cannot_name_its_holder_is_not_taken(small_disk):
    from workbench.train.lock import RunLock, is_held

    disk = small_disk(64)
    run_dir = disk / "run-001"
    run_dir.mkdir()
    _fill(disk)
    lock_file = run_dir / ".workbench.lock"
    with pytest.raises(WriteError, match=f"no space left on device at {lock_file}"):
        RunLock(run_dir).acquire()
    assert not is_held(run_dir)  # the refused lock is given back, not kept by an open file
    (disk / "filler").unlink()
    lock = RunLock(run_dir).acquire()
    assert lock.held and json.loads(lock_file.read_text())["pid"] == os.getpid()
    lock.release()


def test_a_training_script_onto_a_full_disk_names_the_folder_and_leaves_nothing(
    small_disk, tiny_model_dir, tmp_path
):
    # to_script raised a bare "[Errno 28] No space left on device" naming no folder.
    import workbench as wb

    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.load_data([{"question": f"What is {i}?", "answer": str(i)} for i in range(16)])
    s.train(max_steps=1, wait=True)
    disk = small_disk(64)
    _fill(disk)
    with pytest.raises(wb.WriteError, match=r"no space left on device at .*disk-0.script"):
        s.to_script(disk / "script")
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]  # no half-written folder
    s.close()
