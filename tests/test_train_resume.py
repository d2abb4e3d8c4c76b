"""A run killed with SIGKILL resumes in a new process from its last complete checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from train_helpers import toy_run, train_losses

from workbench.errors import SpecError, WorkbenchWarning
from workbench.events import EventHub
from workbench.train import RunState, TrainSpec, resume_run
from workbench.train.checkpoint import latest_checkpoint

TESTS = Path(__file__).resolve().parent
SPEC = "TrainSpec(max_steps=30, lr=5e-3, batch_size=8, eval_every=10, save_every=5, seed=3)"

START = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from train_helpers import toy_run
from workbench.events import EventHub
from workbench.train import TrainSpec

events = EventHub()

def kill(payload):
    if payload.record.step == 12:
        os.kill(os.getpid(), signal.SIGKILL)

events.on("train_log", kill)
toy_run(Path({model!r}), Path({run!r}), {spec}, events=events, wait=True)
"""

RESUME = """
import sys
from workbench.train import resume_run
run = resume_run({run!r}, wait=True)
print("RESULT", run.state.value, run.status.step)
"""


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_sigkill_then_resume_in_a_new_process(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    killed = _python(
        START.format(tests=str(TESTS), model=str(tiny_model_dir), run=str(run_dir), spec=SPEC)
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert latest_checkpoint(run_dir).name == "step-00000010"
    from workbench.widgets.training_monitor import TrainingMonitor

    # status.json still says "running" (it is written when the state changes), but nobody
    # holds the folder: the monitor of the folder says where the run really ended.
    assert '"state": "running"' in (run_dir / "status.json").read_text()
    dead = TrainingMonitor.from_folder(run_dir)
    assert dead.status_text().startswith("failed · step 12/30"), dead.status_text()
    assert "interrupted at step 12" in dead.status_text()
    assert f"Session.resume('{run_dir}') goes on from step 10" in dead.status_text()
    # The history's numbers, not the blank ones of a status file written at the start.
    import json

    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    last_train = [r for r in history if r["kind"] == "train"][-1]
    assert dead._status.elapsed == last_train["elapsed"] > 0
    assert "memory -" not in dead.status_text()
    evals = [r["eval_loss"] for r in history if r["kind"] == "eval"]  # at step 10
    assert evals and f"eval {evals[-1]:.4f}" in dead.status_text()
    status = (run_dir / "status.json").read_text()
    (run_dir / "status.json").write_text(status[:20])  # damaged: read from the history
    with pytest.warns(WorkbenchWarning, match="status.json is damaged"):
        assert TrainingMonitor.from_folder(run_dir).status_text().startswith("failed · step 12/30")
    (run_dir / "status.json").write_text(status)
    # What a kill in the middle of a save leaves behind: a hidden partial folder.
    partial = run_dir / "checkpoints" / ".step-00000015.partial-abc"
    partial.mkdir()
    (partial / "trainable.safetensors").write_bytes(b"half")

    resumed = _python(RESUME.format(run=str(run_dir)))
    assert "RESULT finished 30" in resumed.stdout, resumed.stderr[-2000:]
    assert "step 11/30" in resumed.stdout and "step 10/30" not in resumed.stdout

    straight = toy_run(tiny_model_dir, tmp_path / "straight", eval(SPEC))
    monitor = TrainingMonitor.from_folder(run_dir)
    assert list(monitor.traces["loss"].x) == list(range(1, 31))
    assert list(monitor.traces["loss"].y) == pytest.approx(train_losses(straight), rel=1e-5)
    assert monitor.status_text().startswith("finished · step 30/30")


def test_resume_continues_in_process_from_a_stopped_folder(tiny_model_dir, tmp_path):
    from train_helpers import fresh

    run = toy_run(
        tiny_model_dir,
        tmp_path / "run",
        TrainSpec(max_steps=6, batch_size=8, save_every=2, eval_every=3),
    )
    assert run.state is RunState.FINISHED
    again = resume_run(
        tmp_path / "run",
        EventHub(),
        wait=True,
        model=fresh(tiny_model_dir).model,
        tokenizer=run.tokenizer,
    )
    assert again.state is RunState.FINISHED and again.status.step == 6
    assert len(train_losses(again)) == 6
    # a finished run resumed keeps the figures of its last step and evaluation
    for name in ("loss", "eval_loss", "tokens_per_s", "memory"):
        kept = getattr(again.status, name)
        assert kept is not None and kept == pytest.approx(getattr(run.status, name)), name
    from workbench.widgets.training_monitor import TrainingMonitor

    line = TrainingMonitor.from_folder(tmp_path / "run").status_text()
    assert f"loss {run.status.loss:.4f}" in line and "- tok/s" not in line


def test_resuming_a_folder_without_a_run_is_a_clear_error(tmp_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(SpecError, match=r"holds no training run \(no run.json\)"):
        resume_run(empty, EventHub())
    assert list(empty.iterdir()) == []
    with pytest.raises(SpecError, match="holds no training run"):
        resume_run(tmp_path / "absent", EventHub())
    assert not (tmp_path / "absent").exists()


def test_a_run_whose_checkpoints_were_deleted_restarts_with_a_warning(tiny_model_dir, tmp_path):
    import shutil

    from train_helpers import fresh

    run = toy_run(
        tiny_model_dir, tmp_path / "run", TrainSpec(max_steps=4, batch_size=8, save_every=2)
    )
    shutil.rmtree(run.run_dir / "checkpoints")
    with pytest.warns(WorkbenchWarning, match="restarts from step 0; it had reached step 4"):
        again = resume_run(
            run.run_dir,
            EventHub(),
            wait=True,
            model=fresh(tiny_model_dir).model,
            tokenizer=run.tokenizer,
        )
    assert again.state is RunState.FINISHED and len(train_losses(again)) == 4


@pytest.mark.parametrize("seed", [2**64, -1, "x"])
def test_a_seed_torch_cannot_take_is_refused_before_a_run_folder_is_made(tmp_path, seed):
    with pytest.raises(SpecError, match=f"seed={seed!r} must be"):
        TrainSpec(seed=seed)
    from workbench.data.prepared import DataSpec

    if not isinstance(seed, int) or seed < 0:
        with pytest.raises(SpecError, match=f"seed={seed!r} must be an integer >= 0"):
            DataSpec(seed=seed)


def test_a_run_whose_base_model_moved_resumes_where_it_is_now(tiny_model_dir, tmp_path):
    import shutil

    import workbench as wb
    from workbench.errors import ModelLoadError
    from workbench.train.store import read_meta

    base = Path(shutil.copytree(tiny_model_dir, tmp_path / "base"))
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(base))
    s.load_data([{"question": f"q{i}?", "answer": f"a{i}"} for i in range(16)], validation=None)
    run = s.train(max_steps=6, batch_size=8, save_every=2)
    moved = base.rename(tmp_path / "moved")
    later = wb.Session(tmp_path / "s", verbose=False)
    with pytest.raises(ModelLoadError, match=r"run\.json names; if it has moved, .*model="):
        later.resume(run.run_dir)
    resumed = later.resume(run.run_dir, model=str(moved), wait=True)
    assert resumed.state is RunState.FINISHED and resumed.status.step == 6
    assert read_meta(run.run_dir)["model_spec"]["spec"] == str(moved)


SHIPPED_CODE = """
from pathlib import Path
from transformers import LlamaConfig, LlamaForCausalLM

Path({marker!r}).touch()  # the proof that the folder's code ran


class ShippedConfig(LlamaConfig):
    pass


class ShippedModel(LlamaForCausalLM):
    config_class = ShippedConfig
"""


def _model_with_shipped_code(tiny_model_dir: Path, folder: Path) -> Path:
    import json
    import shutil

    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "shipped.ShippedConfig",
        "AutoModelForCausalLM": "shipped.ShippedModel",
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "shipped.py").write_text(SHIPPED_CODE.format(marker=str(folder / "ran")))
    return folder


def test_a_handed_run_folder_runs_its_models_code_only_when_the_resume_allows_it(
    tiny_model_dir, tmp_path
):
    # run.json's trust_remote_code was obeyed: resuming a folder someone handed over ran
    # the Python code of whatever model folder its run.json named, without a word.
    import workbench as wb

    shipped = _model_with_shipped_code(tiny_model_dir, tmp_path / "shipped")
    s = wb.Session(tmp_path / "theirs", verbose=False)
    s.load_model(str(shipped), trust_remote_code=True)
    s.load_data([{"question": f"q{i}?", "answer": f"a{i}"} for i in range(16)], validation=None)
    run = s.train(max_steps=6, batch_size=8, save_every=2, wait=False)
    run.stop()
    run.wait()
    (shipped / "ran").unlink()
    for module in [m for m in sys.modules if "shipped" in m]:  # transformers caches it
        del sys.modules[module]
    meta = (Path(run.run_dir) / "run.json").read_bytes()
    later = wb.Session(tmp_path / "mine", verbose=False)
    with pytest.raises(SpecError, match=r"run\.json: its base model .*trust_remote_code=True"):
        later.resume(run.run_dir)
    with pytest.raises(SpecError, match=r"trust_remote_code=True"):
        resume_run(run.run_dir)
    assert not (shipped / "ran").exists()
    assert (Path(run.run_dir) / "run.json").read_bytes() == meta
    resumed = later.resume(run.run_dir, trust_remote_code=True, wait=True)
    assert resumed.state is RunState.FINISHED and (shipped / "ran").exists()


def test_a_resume_refused_for_the_wrong_model_leaves_run_json_naming_the_right_one(
    tiny_model_dir, tiny_gpt2_dir, tmp_path
):
    # run.json named the wrong model before its checkpoint refused it: every plain resume
    # after that loaded it again and failed ("checkpoint ... does not match").
    import workbench as wb
    from workbench.errors import WorkbenchError
    from workbench.train.store import read_meta

    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.load_data([{"question": f"q{i}?", "answer": f"a{i}"} for i in range(16)], validation=None)
    run = s.train(max_steps=40, batch_size=8, save_every=1, wait=False)
    run.pause()  # then stopped with its checkpoint, as a notebook leaves a run
    assert run.stop() and run.wait().state is RunState.STOPPED
    s.close()
    meta = read_meta(run.run_dir)
    later = wb.Session(tmp_path / "s", verbose=False)
    with pytest.raises(WorkbenchError, match="is not the one run-001 started from"):
        later.resume(run.run_dir, model=str(tiny_gpt2_dir))
    assert read_meta(run.run_dir)["model_spec"] == meta["model_spec"]
    again = wb.Session(tmp_path / "s", verbose=False).resume(run.run_dir, wait=True)
    assert (again.state, again.status.step) == (RunState.FINISHED, 40)


def test_a_run_is_not_resumed_on_another_model_of_its_architecture(tiny_model_dir, tmp_path):
    # Another checkpoint of the same family (the instruct model for the base) resumed in
    # silence: the loss jumped from 3.9 to 17.6 and run.json named the wrong base for good.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import workbench as wb
    from workbench.train.store import read_meta

    other = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for param in other.parameters():
            param.add_(0.01)
    other.save_pretrained(tmp_path / "other")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "other")
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.load_data([{"question": f"q{i}?", "answer": f"a{i}"} for i in range(16)], validation=None)
    run = s.train(max_steps=40, batch_size=8, save_every=1, wait=False)
    run.pause()
    assert run.stop() and run.wait().state is RunState.STOPPED
    s.close()
    recorded = read_meta(run.run_dir)
    later = wb.Session(tmp_path / "s", verbose=False)
    later.load_model(str(tiny_model_dir))  # a session with a model of its own
    own, answer = later.model, later.generate("q1?", max_new_tokens=4)
    with pytest.raises(SpecError, match=r"this base model is not the one run-001 started from"):
        later.resume(run.run_dir, model=str(tmp_path / "other"))
    assert read_meta(run.run_dir) == recorded
    # the refusal did not cost the session its model (it held the refused one)
    assert later.model is own and later.generate("q1?", max_new_tokens=4) == answer
    assert later.folder.state()["model"]["spec"] == str(tiny_model_dir)
    resumed = later.resume(run.run_dir, wait=True)  # on its own base it goes on
    assert (resumed.state, resumed.status.step) == (RunState.FINISHED, 40)


def test_a_run_whose_tokenized_data_was_damaged_is_not_resumed(tiny_model_dir, tmp_path):
    """It trained on from the damaged rows and failed in torch.embedding at every resume."""
    from train_helpers import fresh

    run = toy_run(
        tiny_model_dir, tmp_path / "run", TrainSpec(max_steps=4, batch_size=8, save_every=2)
    )
    (arrow,) = (run.run_dir / "data" / "train").glob("*.arrow")
    data = bytearray(arrow.read_bytes())
    data[-200:-136] = bytes(64)  # 64 bytes of token ids overwritten, the size unchanged
    arrow.write_bytes(bytes(data))
    with pytest.raises(SpecError, match=r"data is damaged \(train/.*\.arrow does not match its"):
        resume_run(
            run.run_dir, EventHub(), model=fresh(tiny_model_dir).model, tokenizer=run.tokenizer
        )


@pytest.mark.parametrize("problem", ["held", "bad settings"])
def test_a_refused_resume_leaves_the_sessions_model_and_run_as_they_were(
    tiny_model_dir, tmp_path, problem
):
    # Session.resume loaded the other run's base model before the run was checked: a refusal
    # threw away the session's trained adapter, while s.run still named its run.
    import json

    import workbench as wb
    from workbench.train.lock import RunLock

    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)]
    other = wb.Session(tmp_path / "other", verbose=False)
    other.load_model(str(tiny_model_dir))
    other.load_data(rows)
    elsewhere = other.train(max_steps=1, batch_size=4, wait=True).run_dir
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.load_data(rows)
    mine = s.train(max_steps=2, batch_size=4, wait=True)
    model, answer = s.model, s.generate("q1", max_new_tokens=4)
    if problem == "bad settings":
        meta = json.loads((elsewhere / "run.json").read_text())
        meta["spec"]["method"] = "bogus"
        (elsewhere / "run.json").write_text(json.dumps(meta))
        with pytest.raises(SpecError, match="bogus"):
            s.resume(elsewhere)
    else:
        with RunLock(elsewhere), pytest.raises(SpecError, match="already being trained"):
            s.resume(elsewhere)
    assert s.model is model and s.run is mine and type(s.model).__name__.startswith("Peft")
    assert s.generate("q1", max_new_tokens=4) == answer


def test_a_stopped_handle_refuses_to_resume_a_folder_another_run_went_on_with(
    tmp_path, tiny_model_dir
):
    # The old handle (or its monitor's Resume button) trained on from its own step 3 after
    # s.resume(folder) had reached step 8: steps 4-6 twice in history.jsonl, the
    # checkpoints of two trajectories mixed, status.json behind the newest checkpoint.
    import json

    from workbench.errors import SessionStateError

    s = _session(tmp_path, tiny_model_dir)
    old = s.train(max_steps=1000, save_every=3, wait=False)
    old.wait(step=3)
    old.stop()
    old.wait()
    new = s.resume(old.run_dir, wait=False)
    new.wait(step=old.status.step + 4)
    new.stop()
    reached = new.wait().step
    with pytest.raises(SessionStateError) as refused:
        old.resume()
    assert str(refused.value).startswith(
        f"resume() is refused: run-001 went on without this Run: its folder says stopped at "
        f"step {reached}, where this Run stopped at step {old.status.step}"
    )
    history = [json.loads(line) for line in (old.run_dir / "history.jsonl").open()]
    steps = [row["step"] for row in history if row.get("kind") == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == reached
    assert new.resume().state is RunState.RUNNING  # the Run that went on still can
    new.stop()
    new.wait()


def test_a_handle_resumed_right_after_it_stopped_is_not_taken_for_a_moved_on_one(
    tmp_path, tiny_model_dir
):
    # Its state read "stopped" before its worker had written status.json ("stopping" at
    # the step before, or read back as failed): the resume was refused as if another Run
    # had gone on with the folder.
    import time

    s = _session(tmp_path, tiny_model_dir)
    run = s.train(max_steps=100000, wait=False)
    try:
        for _ in range(10):
            run.wait(step=run.status.step + 1)
            run.stop()
            while run.status.state is not RunState.STOPPED:
                time.sleep(0.001)
            assert run.resume().state is RunState.RUNNING
    finally:
        run.stop()
        run.wait()


def test_the_monitor_says_why_its_resume_button_was_refused(tmp_path, tiny_model_dir):
    # The refusal went to the traitlets log: nothing said, the button seemingly ignored.

    s = _session(tmp_path, tiny_model_dir)
    old = s.train(max_steps=1000, save_every=3, wait=False)
    old.wait(step=3)
    old.stop()
    old.wait()
    monitor = old.monitor()
    new = s.resume(old.run_dir, wait=False)
    new.wait(step=old.status.step + 2)
    new.stop()
    new.wait()
    monitor.resume_button.click()
    assert "went on without this Run" in monitor.refusal_html.value
    assert old.status.state is RunState.STOPPED
    monitor.close()


def _session(tmp_path, tiny_model_dir):
    import workbench as wb

    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(16)])
    return s


def test_a_launched_rank_takes_trust_from_its_launcher_never_from_run_json(
    tiny_model_dir, tmp_path, monkeypatch
):
    # The ranks of a launched run read trust_remote_code from run.json (any truthy value:
    # "true" and 1 passed the resume's check, which asked `is True`).
    from workbench.train.launch.rank import _load_model
    from workbench.train.launch.spec import TRUST_VARIABLE, rank_environment

    shipped = _model_with_shipped_code(tiny_model_dir, tmp_path / "shipped")
    meta = {"model_spec": {"spec": str(shipped), "trust_remote_code": "true"}}
    monkeypatch.setenv(TRUST_VARIABLE, "1")  # as if the user's shell had it: not passed on
    assert TRUST_VARIABLE not in rank_environment(1)
    monkeypatch.delenv(TRUST_VARIABLE)
    with pytest.raises(SpecError, match=r"trust_remote_code=True"):
        _load_model(meta, tmp_path / "run", "cpu")
    from workbench.train import check_remote_code_allowed

    for truthy in ("true", 1):
        with pytest.raises(SpecError, match=r"trust_remote_code=True"):
            check_remote_code_allowed(
                {"model_spec": {"trust_remote_code": truthy}}, tmp_path, False
            )
    assert not (shipped / "ran").exists()
    monkeypatch.setenv(TRUST_VARIABLE, "1")  # what the launcher sets when the caller allowed
    model, _ = _load_model(meta, tmp_path / "run", "cpu")
    assert (shipped / "ran").exists() and model is not None
