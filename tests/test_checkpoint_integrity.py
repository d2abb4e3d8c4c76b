"""Checkpoints survive damage and full disks; one process at a time trains a run folder.

Damaged newest checkpoints are skipped for the newest valid one (warning + history record),
staging folders of killed writers are removed, pruning never deletes the last valid checkpoint,
a full disk is a WriteError that keeps the earlier checkpoints, and a run folder's lock
refuses a second trainer (another process, or another Run of this one) but not a dead one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
from train_helpers import fresh, toy_run, train_losses

from workbench.errors import SpecError, WorkbenchWarning, WriteError
from workbench.events import EventHub
from workbench.train import RunState, TrainSpec, resume_run
from workbench.train.checkpoint import (
    MANIFEST,
    checkpoint_problem,
    latest_checkpoint,
    list_checkpoints,
    save_checkpoint,
)
from workbench.train.lock import LOCK_FILE, RunLock, lock_holder

TESTS = Path(__file__).resolve().parent
SMALL = dict(max_steps=8, lr=5e-3, batch_size=8, eval_every=4, save_every=4, seed=3)
STEP4, STEP8 = "step-00000004", "step-00000008"


def _python(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{TESTS.parent}{os.pathsep}{TESTS}"}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _wait_for_line(proc: subprocess.Popen, prefix: str, timeout: float = 300) -> str:
    """Read the child's stdout until a line starts with ``prefix`` (kill it on timeout)."""
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:
            if line.startswith(prefix):
                return line
    finally:
        timer.cancel()
    raise AssertionError(f"child ended without {prefix!r}: {proc.stderr.read()[-2000:]}")


# -- a finished 8-step run per tiny model, copied for each test ---------------------------
@pytest.fixture(scope="module", params=["llama", "gpt2"])
def finished(request, tmp_path_factory):
    model_dir = request.getfixturevalue(
        f"tiny_{'model' if request.param == 'llama' else 'gpt2'}_dir"
    )
    run_dir = tmp_path_factory.mktemp(f"finished-{request.param}") / "run"
    run = toy_run(model_dir, run_dir, TrainSpec(**SMALL))
    assert run.state is RunState.FINISHED
    assert [p.name for p in list_checkpoints(run_dir)] == [STEP4, STEP8]
    return model_dir, run_dir, train_losses(run)


def _copy(finished, tmp_path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(finished[1], run_dir)
    return run_dir


def _resume(model_dir: Path, run_dir: Path):
    loaded = fresh(model_dir)
    return resume_run(
        run_dir, EventHub(), wait=True, model=loaded.model, tokenizer=loaded.tokenizer
    )


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGES = {
    "truncated weights": (
        lambda c: _truncate(c / "trainable.safetensors"),
        r"trainable.safetensors has \d+ bytes, expected \d+",
    ),
    "truncated optimizer": (
        lambda c: _truncate(c / "optimizer.pt"),
        r"optimizer.pt has \d+ bytes, expected \d+",
    ),
    "empty state.json": (
        lambda c: (c / "state.json").write_text(""),
        r"state.json has 0 bytes, expected \d+",
    ),
    "missing manifest": (lambda c: (c / MANIFEST).unlink(), "manifest.json is missing"),
    "flipped byte": (
        lambda c: _flip_byte(c / "trainable.safetensors"),
        "trainable.safetensors does not match its SHA-256",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_newest_checkpoint_is_skipped_for_the_previous_one(finished, tmp_path, damage):
    model_dir, _, losses = finished
    run_dir = _copy(finished, tmp_path)
    harm, reason = DAMAGES[damage]
    harm(run_dir / "checkpoints" / STEP8)
    assert checkpoint_problem(run_dir / "checkpoints" / STEP8) is not None

    with pytest.warns(
        WorkbenchWarning,
        match=rf"skipped damaged checkpoint {STEP8} .*\({reason}"
        rf"\); resuming from {STEP4}",
    ):
        run = _resume(model_dir, run_dir)
    assert run.state is RunState.FINISHED and run.status.step == 8
    notes = [r for r in run.history if r.kind == "warning"]
    assert len(notes) == 1 and STEP8 in notes[0].message and notes[0].step == 4
    saved = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [r["message"] for r in saved if r["kind"] == "warning"] == [notes[0].message]
    # Steps 5..8 were redone from step 4's state: the same losses as the first time.
    assert [r.step for r in run.history if r.kind == "train"] == list(range(1, 9))
    assert train_losses(run) == pytest.approx(losses, rel=1e-5)
    assert checkpoint_problem(run_dir / "checkpoints" / STEP8) is None  # rewritten whole


def test_no_valid_checkpoint_restarts_from_step_0_and_says_so(finished, tmp_path):
    model_dir, _, losses = finished
    run_dir = _copy(finished, tmp_path)
    for name in (STEP4, STEP8):
        _truncate(run_dir / "checkpoints" / name / "optimizer.pt")
    with pytest.warns(WorkbenchWarning, match="restarts from step 0") as caught:
        run = _resume(model_dir, run_dir)
    skipped = [str(w.message) for w in caught if "skipped damaged" in str(w.message)]
    assert len(skipped) == 2 and STEP8 in skipped[0] and STEP4 in skipped[1]
    assert run.state is RunState.FINISHED and run.status.step == 8
    assert train_losses(run) == pytest.approx(losses, rel=1e-5)


def _make_legacy(checkpoint: Path) -> None:
    """What the previous version wrote: no manifest, no "format" in state.json."""
    (checkpoint / MANIFEST).unlink()
    state = json.loads((checkpoint / "state.json").read_text())
    del state["format"]
    (checkpoint / "state.json").write_text(json.dumps(state))


def test_old_checkpoints_without_a_manifest_are_used_when_their_files_load(finished, tmp_path):
    model_dir, _, losses = finished
    run_dir = _copy(finished, tmp_path)
    for name in (STEP4, STEP8):
        _make_legacy(run_dir / "checkpoints" / name)
    _truncate(run_dir / "checkpoints" / STEP8 / "trainable.safetensors")
    assert checkpoint_problem(run_dir / "checkpoints" / STEP4) is None
    with pytest.warns(WorkbenchWarning, match=rf"{STEP8} .*trainable.safetensors does not load"):
        run = _resume(model_dir, run_dir)
    assert run.status.step == 8 and train_losses(run) == pytest.approx(losses, rel=1e-5)


def test_leftover_staging_folders_are_removed_at_resume(finished, tmp_path):
    model_dir, _, _ = finished
    run_dir = _copy(finished, tmp_path)
    partials = [
        run_dir / "checkpoints" / ".step-00000012.partial-abcd",
        tmp_path / ".run.partial-wxyz0000",
    ]
    other = tmp_path / ".other-run.partial-1234"  # another run's: not ours to remove
    for folder in (*partials, other):
        folder.mkdir()
        (folder / "trainable.safetensors").write_bytes(b"half")
    run = _resume(model_dir, run_dir)
    assert run.state is RunState.FINISHED
    assert not any(p.exists() for p in partials) and other.is_dir()


# -- pruning and full disks, on a plain torch layer ----------------------------------------
def _layer(size: int = 4):
    layer = torch.nn.Linear(size, size)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1)
    layer(torch.ones(1, size)).sum().backward()
    optimizer.step()  # AdamW keeps two moments per weight from here on
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return layer, optimizer, scheduler


def _save(run_dir: Path, parts, step: int, keep: int = 2) -> Path:
    return save_checkpoint(run_dir, *parts, {"step": step, "micro": step}, keep=keep)


def test_pruning_never_deletes_the_last_valid_checkpoint(tmp_path):
    parts = _layer()
    for step in (4, 6):
        _save(tmp_path, parts, step, keep=5)
    _truncate(tmp_path / "checkpoints" / "step-00000006" / "optimizer.pt")
    _save(tmp_path, parts, 8, keep=2)
    # Counting the damaged step 6 as one of two would have deleted step 4.
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000004", "step-00000008"]

    # A damaged checkpoint past the step a run resumed from stays until replaced, uncounted.
    _truncate(tmp_path / "checkpoints" / "step-00000008" / "trainable.safetensors")
    _save(tmp_path, parts, 5, keep=2)
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["step-00000004", "step-00000005", "step-00000008"]
    assert latest_checkpoint(tmp_path).name == "step-00000005"
    _save(tmp_path, parts, 8, keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000008"]
    assert checkpoint_problem(tmp_path / "checkpoints" / "step-00000008") is None


def _fill(disk: Path, leave_bytes: int) -> None:
    free = shutil.disk_usage(disk).free
    (disk / "filler").write_bytes(b"\0" * max(0, free - leave_bytes))


@pytest.mark.parametrize("precheck", [True, False], ids=["checked first", "failed mid-write"])
def test_a_full_disk_is_a_write_error_that_keeps_earlier_checkpoints(
    small_disk, monkeypatch, precheck
):
    run_dir = small_disk(4096) / "run"
    parts = _layer(256)  # ~0.25 MB of weights + 0.5 MB of AdamW moments per checkpoint
    first = _save(run_dir, parts, 5)
    _fill(run_dir.parent, 300 * 1024)
    if not precheck:  # the estimate said it fits; the disk filled anyway (another writer)
        monkeypatch.setattr("workbench.train.checkpoint.check_free_space", lambda *a: None)
    with pytest.raises(
        WriteError,
        match=rf"no space left on device at {run_dir}/checkpoints.*"
        r"\d+\.\d MB needed",
    ):
        _save(run_dir, parts, 10)
    assert [p.name for p in list_checkpoints(run_dir)] == [first.name]
    assert checkpoint_problem(first) is None
    assert list((run_dir / "checkpoints").iterdir()) == [first]  # no staging folder left


def test_a_disk_filling_during_a_run_fails_it_and_the_run_resumes_later(tiny_model_dir, small_disk):
    run_dir = small_disk(8192) / "run"
    events = EventHub()
    events.on("train_checkpoint", lambda p: p.step == 4 and _fill(run_dir.parent, 100_000))
    run = toy_run(tiny_model_dir, run_dir, TrainSpec(**SMALL), events=events)
    assert run.state is RunState.FAILED and isinstance(run.error, WriteError)
    assert str(run_dir / "checkpoints") in str(run.error) and "MB needed" in str(run.error)
    assert [p.name for p in list_checkpoints(run_dir)] == [STEP4]
    (run_dir.parent / "filler").unlink()
    again = _resume(tiny_model_dir, run_dir)
    assert again.state is RunState.FINISHED and again.status.step == 8


# -- the run folder's lock -------------------------------------------------------------------
HOLD = """
import sys, time
from workbench.train.lock import RunLock
RunLock(sys.argv[1]).acquire()
print("HELD", flush=True)
time.sleep(600)
"""


def test_a_live_holder_refuses_resume_and_a_killed_one_is_taken_over(finished, tmp_path):
    model_dir, _, _ = finished
    run_dir = _copy(finished, tmp_path)
    history = (run_dir / "history.jsonl").read_bytes()
    holder = _python(HOLD, str(run_dir))
    try:
        _wait_for_line(holder, "HELD")
        with pytest.raises(
            SpecError,
            match=rf"{run_dir} is being trained by another process "
            rf"\(pid {holder.pid} .*kill {holder.pid}",
        ):
            resume_run(run_dir, EventHub())
        assert (run_dir / "history.jsonl").read_bytes() == history  # nothing was touched
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock_holder(run_dir)["pid"] == holder.pid  # the dead holder's pid stays in the file
    lock = RunLock(run_dir).acquire()
    assert lock.previous["pid"] == holder.pid and lock_holder(run_dir)["pid"] == os.getpid()
    lock.release()
    assert _resume(model_dir, run_dir).state is RunState.FINISHED


def test_a_second_resume_in_the_same_process_is_refused_while_the_first_runs(finished, tmp_path):
    model_dir, _, losses = finished
    run_dir = _copy(finished, tmp_path)
    shutil.rmtree(run_dir / "checkpoints" / STEP8)
    loaded = fresh(model_dir)
    first = resume_run(run_dir, EventHub(), model=loaded.model, tokenizer=loaded.tokenizer)
    first.pause()
    try:
        with pytest.raises(
            SpecError,
            match=rf"{run_dir} is already being trained by this "
            rf"process \(pid {os.getpid()}\)",
        ):
            resume_run(run_dir, EventHub())
    finally:
        first.resume()
        first.wait()
    assert first.state is RunState.FINISHED and train_losses(first) == pytest.approx(losses)
    with RunLock(run_dir) as lock:  # the ended worker gave the folder back
        assert lock.held


def test_the_lock_is_released_when_resume_fails_before_training(finished, tmp_path):
    run_dir = _copy(finished, tmp_path)
    shutil.rmtree(run_dir / "data" / "train")
    with pytest.raises(SpecError, match="no data/train folder"):
        resume_run(run_dir, EventHub())
    with RunLock(run_dir) as lock:
        assert lock.held
    assert (run_dir / LOCK_FILE).read_text() == ""


# -- SIGKILL in the middle of a checkpoint write, then a damaged newest checkpoint ---------
SPEC = "TrainSpec(max_steps=30, lr=5e-3, batch_size=8, eval_every=10, save_every=5, seed=3)"

KILLED_IN_WRITE = """
import sys, time
from pathlib import Path
import workbench.train.checkpoint as checkpoint
from train_helpers import toy_run
from workbench.train import TrainSpec

original = checkpoint._write_files

def write_then_hang(folder, model, optimizer, scheduler, state):
    original(folder, model, optimizer, scheduler, state)
    if state["step"] == 15:  # files written, manifest not yet, folder not renamed
        print("IN-WRITE", folder, flush=True)
        time.sleep(600)

checkpoint._write_files = write_then_hang
toy_run(Path({model!r}), Path({run!r}), {spec}, wait=False).wait()
"""

RESUME = """
from workbench.train import resume_run
run = resume_run({run!r}, wait=True)
print("RESULT", run.state.value, run.status.step)
"""


def test_sigkill_during_a_checkpoint_write_then_damage_then_resume(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    child = _python(KILLED_IN_WRITE.format(model=str(tiny_model_dir), run=str(run_dir), spec=SPEC))
    staging = Path(_wait_for_line(child, "IN-WRITE").split(maxsplit=1)[1].strip())
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -9
    assert staging.is_dir() and staging.name.startswith(".step-00000015.partial-")
    assert (staging / "state.json").is_file() and not (staging / MANIFEST).exists()
    names = [p.name for p in list_checkpoints(run_dir)]
    assert names == ["step-00000005", "step-00000010"]
    _truncate(run_dir / "checkpoints" / "step-00000010" / "trainable.safetensors")

    resumed = _python(RESUME.format(run=str(run_dir)))
    out, err = resumed.communicate(timeout=300)
    assert "RESULT finished 30" in out, err[-2000:]
    assert "skipped damaged checkpoint step-00000010" in err
    assert "resuming from step-00000005" in err
    assert "step 6/30" in out and "step 5/30" not in out
    assert not staging.exists()

    straight = toy_run(tiny_model_dir, tmp_path / "straight", eval(SPEC))
    rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in rows if r["kind"] == "train"] == list(range(1, 31))
    assert losses == pytest.approx(train_losses(straight), rel=1e-5)
    assert losses[-1] == pytest.approx(train_losses(straight)[-1], rel=1e-5)


RUN_FILE_DAMAGES = {
    "run.json not UTF-8": ("run.json", b"\xff\xfe{garbage", "codec can't decode"),
    "run.json empty": ("run.json", b"", "Expecting value"),
    "run.json a list": ("run.json", b"[1, 2]", "no JSON object"),
}


@pytest.mark.parametrize("damage", list(RUN_FILE_DAMAGES))
def test_a_damaged_run_file_is_named_wherever_the_run_is_read(finished, tmp_path, damage):
    # These were UnicodeDecodeError, JSONDecodeError or AttributeError from deep inside.
    import workbench as wb
    from workbench.errors import WorkbenchError
    from workbench.train import check_resumable
    from workbench.widgets import TrainingMonitor

    run_dir = _copy(finished, tmp_path)
    name, content, says = RUN_FILE_DAMAGES[damage]
    (run_dir / name).write_bytes(content)
    named = rf"run\.json is not a readable run file: .*{says}"
    for read in (check_resumable, TrainingMonitor.from_folder, lambda f: wb.compare([f])):
        with pytest.raises(WorkbenchError, match=named):
            read(run_dir)


def test_damaged_lines_in_a_runs_records_are_skipped_and_named(finished, tmp_path):
    import workbench as wb
    from workbench.errors import SpecError
    from workbench.train import check_resumable
    from workbench.widgets import TrainingMonitor

    run_dir = _copy(finished, tmp_path)
    meta = json.loads((run_dir / "run.json").read_text())
    history = run_dir / "history.jsonl"
    lines = history.read_text().splitlines()
    history.write_text("\n".join([lines[0], "[1, 2]", "7", *lines[1:]]) + "\n")
    (run_dir / "status.json").write_text(json.dumps({"state": "bogus", "step": 8}))
    with pytest.warns(WorkbenchWarning, match=r"history\.jsonl: skipped line\(s\) 2, 3"):
        results = wb.compare([run_dir])  # was AttributeError: 'list' object has no 'get'
    assert results.runs[0].curve("loss")[0] == list(range(1, 9))
    with pytest.warns(WorkbenchWarning, match=r"status\.json is damaged \(unknown state 'bogus'\)"):
        monitor = TrainingMonitor.from_folder(run_dir)  # was ValueError: not a RunState
    assert monitor._status.step == 8 and "8/8" in monitor.status_html.value
    (run_dir / "run.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "spec"}))
    for resume in (check_resumable, resume_run):  # were KeyError: 'spec'
        with pytest.raises(SpecError, match=r"run\.json holds no training settings \('spec'\)"):
            resume(run_dir)
    (run_dir / "status.json").write_text(json.dumps({"state": ["running"], "step": 8}))
    with pytest.warns(WorkbenchWarning, match=r"unknown state \['running'\]"):
        TrainingMonitor.from_folder(run_dir)  # was TypeError: unhashable type: 'list'
