"""Session integrity: calls that would harm a run are refused, folders are never reused, runs
that diverge say so, and the Run's control flow never lets ``wait()`` return early."""

from __future__ import annotations

import json
import math
import random
import shutil
import time

import pytest
import torch
from train_helpers import delete_under_a_writer

import workbench as wb
from workbench.errors import SessionStateError, SpecError, WorkbenchWarning
from workbench.train import RunState

PAIRS = [("cat", "red"), ("dog", "green"), ("bird", "blue"), ("fish", "apple")]
ARCHITECTURES = ["tiny_model_dir", "tiny_gpt2_dir"]


def toy_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        key, value = PAIRS[rng.randrange(len(PAIRS))]
        digits = " ".join(str(rng.randrange(10)) for _ in range(rng.randrange(1, 4)))
        rows.append({"question": f"{digits} {key}", "answer": value})
    return rows


def session_with_data(folder, model_dir) -> wb.Session:
    s = wb.Session(folder, verbose=False)
    s.load_model(str(model_dir))
    s.load_data(toy_rows(32), validation=toy_rows(8, seed=1))
    return s


@pytest.fixture(params=ARCHITECTURES)
def model_dir(request):
    return request.getfixturevalue(request.param)


# -- item 2: a table of calls x run states ---------------------------------------------------
MUTATING = {
    "load_model": lambda s, m: s.load_model(str(m)),
    "load_data": lambda s, m: s.load_data(toy_rows(4)),
    "set_max_length": lambda s, m: s.set_max_length(32),
    "train": lambda s, m: s.train(max_steps=2),
    "resume": lambda s, m: s.resume(s.run.run_dir),
    "merge": lambda s, m: s.merge(),
    "load_adapter": lambda s, m: s.load_adapter(s.run.run_dir),
}
READ_ONLY = {
    "generate": lambda s, m: s.generate("1 cat", max_new_tokens=3),
    "evaluate": lambda s, m: s.evaluate(metrics=["exact_match"], max_new_tokens=3, limit=2),
    "export": lambda s, m: s.export("export/paused-copy", format="adapter"),
}


def test_every_call_is_refused_while_the_run_trains(tmp_path, model_dir):
    s = session_with_data(tmp_path / "s", model_dir)
    run = s.train(max_steps=400, lr=5e-3, batch_size=4, eval_every=1000, wait=False)
    try:
        assert run.state is RunState.RUNNING  # set before train() returns
        for name, call in {**MUTATING, **READ_ONLY}.items():
            with pytest.raises(SessionStateError) as info:
                call(s, model_dir)
            text = str(info.value)
            assert text.startswith(f"{name}() is refused while run-001 is running"), text
            assert "run.stop()" in text
            if name in READ_ONLY:
                assert "run.pause()" in text
        assert run.state is RunState.RUNNING
    finally:
        run.stop()
        run.wait()
    assert run.state is RunState.STOPPED and run.error is None


def test_paused_run_allows_read_only_calls_and_resumes_unharmed(tmp_path, model_dir):
    settings = {"max_steps": 12, "lr": 5e-3, "batch_size": 4, "eval_every": 6, "seed": 5}
    reference = session_with_data(tmp_path / "ref", model_dir)
    expected = [r.loss for r in reference.train(wait=True, **settings).history if r.kind == "train"]

    s = session_with_data(tmp_path / "s", model_dir)
    run = s.train(wait=False, **settings)
    run.pause()
    assert run.state is RunState.PAUSED
    for name, call in MUTATING.items():
        with pytest.raises(
            SessionStateError,
            match=rf"^{name}\(\) is refused while run-001 is "
            r"paused.*run\.stop\(\)",
        ):
            call(s, model_dir)
    paused_at = run.status.step
    text = READ_ONLY["generate"](s, model_dir)
    evaluation = READ_ONLY["evaluate"](s, model_dir)
    folder = READ_ONLY["export"](s, model_dir)
    assert isinstance(text, str) and set(evaluation.scores["exact_match"]) >= {"base", "tuned"}
    assert (folder / "adapter_config.json").is_file()
    assert run.state is RunState.PAUSED and run.status.step == paused_at
    # resume() said "paused" until the worker woke (tens of ms): a generate() or export()
    # right after it passed the check and ran under the training steps (losses 0.05 off).
    run.resume()
    with pytest.raises(SessionStateError, match=r"generate\(\) is refused while run-001 is"):
        READ_ONLY["generate"](s, model_dir)
    assert run.wait().state is RunState.FINISHED
    losses = [r.loss for r in run.history if r.kind == "train"]
    assert losses == pytest.approx(expected, rel=1e-5)


# -- item 3: numbered folders ------------------------------------------------------------------
def test_deleted_run_and_evaluation_folders_are_never_reused(tmp_path, model_dir):
    tiny_model_dir = model_dir
    s = session_with_data(tmp_path / "s", tiny_model_dir)
    first = s.train(max_steps=2, lr=5e-3, batch_size=8, wait=True)
    s.load_model(str(tiny_model_dir))
    second = s.train(max_steps=2, lr=5e-3, batch_size=8, wait=True)
    assert [first.run_dir.name, second.run_dir.name] == ["run-001", "run-002"]
    shutil.rmtree(first.run_dir)
    s.load_model(str(tiny_model_dir))
    third = s.train(max_steps=2, lr=5e-3, batch_size=8, wait=True)
    assert third.run_dir.name == "run-003" and third.state is RunState.FINISHED
    shutil.rmtree(third.run_dir)  # the latest: its name is still not given to another run
    s.load_model(str(tiny_model_dir))
    assert s.train(max_steps=1, lr=5e-3, batch_size=8, wait=True).run_dir.name == "run-004"

    evals = [s.evaluate(metrics=["exact_match"], max_new_tokens=2, limit=2) for _ in range(2)]
    assert [e.path.name for e in evals] == ["eval-001", "eval-002"]
    kept = {p.name: p.read_bytes() for p in evals[1].path.iterdir()}
    shutil.rmtree(evals[0].path)
    latest = s.evaluate(metrics=["exact_match"], max_new_tokens=2, limit=2)
    assert latest.path.name == "eval-003"
    assert {p.name: p.read_bytes() for p in evals[1].path.iterdir()} == kept
    shutil.rmtree(latest.path)
    assert s.evaluate(metrics=["exact_match"], max_new_tokens=2, limit=2).path.name == "eval-004"

    # The whole session folder deleted, session.json with it: the live session still never
    # gives run-001 to another run (an evaluation of the old model names run-004 there).
    shutil.rmtree(tmp_path / "s")
    assert s.evaluate(metrics=["exact_match"], max_new_tokens=2, limit=2).path.name == "eval-005"
    s.load_model(str(tiny_model_dir))
    assert s.train(max_steps=1, lr=5e-3, batch_size=8, wait=True).run_dir.name == "run-005"


def test_save_now_on_a_run_whose_folder_was_deleted_is_refused(tmp_path, model_dir):
    # It made runs/run-001/checkpoints/step-* alone, with no run.json: nothing could resume
    # it ("holds no training run"), and save_now() said nothing.
    s = session_with_data(tmp_path, model_dir)
    run = s.train(max_steps=2, wait=True)
    shutil.rmtree(run.run_dir)
    with pytest.raises(SpecError, match=r"run-001 was deleted: there is no run folder to save"):
        run.save_now()
    assert not run.run_dir.exists()


def test_a_train_killed_while_writing_its_run_folder_leaves_nothing_for_good(tmp_path, model_dir):
    # It left an empty runs/run-001 and .run-001.partial-* (a copy of the tokenized data)
    # for good: the next run took run-002 and cleaned only its own name's leftovers.
    import os
    import subprocess
    import sys

    child = f"""
import os, signal, workbench as wb, workbench.train.store as store
s = wb.Session({str(tmp_path)!r}, verbose=False)
s.load_model({str(model_dir)!r})
s.load_data({toy_rows(16)!r})
store.write_manifest = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)  # data written
s.train(max_steps=1, wait=True)
"""
    killed = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    runs = tmp_path / "runs"
    left = sorted(p.name for p in runs.iterdir())
    assert left[0].startswith(".run-001.partial-") and left[1:] == ["run-001"]
    s = session_with_data(tmp_path, model_dir)
    s.train(max_steps=1, wait=True)  # within the hour: a start in progress is never touched
    assert len(list(runs.iterdir())) == 3
    hour_ago = time.time() - 3700
    for path in [*runs.glob(".run-001.partial-*"), runs / "run-001"]:
        for inner in [path, *path.rglob("*")]:
            os.utime(inner, (hour_ago, hour_ago))
    session_with_data(tmp_path, model_dir).train(max_steps=1, wait=True)
    assert sorted(p.name for p in runs.iterdir()) == ["run-002", "run-003"]


def test_two_processes_sharing_a_session_folder_keep_each_others_records(tmp_path):
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from workbench.session_folder import SessionFolder\n"
        "folder = SessionFolder(sys.argv[1])\n"
        "for i in range(60):\n"
        "    folder.record({f'{sys.argv[2]}-{i}': i})\n"
        "    folder.remember(folder.root, by=sys.argv[2], what=str(i))\n"
    )
    writers = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), tag]) for tag in "ab"]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    from workbench.session_folder import SessionFolder

    state = SessionFolder(tmp_path).state()
    assert {f"{tag}-{i}" for tag in "ab" for i in range(60)} <= set(state)


def test_a_run_records_the_model_its_own_session_loaded_not_the_folders_latest(
    tmp_path, tiny_model_dir, tiny_gpt2_dir
):
    # Two kernels on one folder (a handout's wb.Session("runs/demo")): A loaded Llama, B then
    # loaded GPT-2, A trained; A's run.json named GPT-2 (read back from session.json), so
    # Session.resume and to_script rebuilt A's run on B's model.
    from workbench.train.store import read_meta

    a = session_with_data(tmp_path / "shared", tiny_model_dir)
    wb.Session(tmp_path / "shared", verbose=False).load_model(str(tiny_gpt2_dir))
    run = a.train(max_steps=2, wait=True)
    assert read_meta(run.run_dir)["model_spec"]["spec"] == str(tiny_model_dir)
    again = wb.Session(tmp_path / "shared", verbose=False)
    again.resume(run.run_dir, wait=True)
    assert again.loaded.source.spec == str(tiny_model_dir)


def test_a_run_trained_after_a_merge_is_not_rebuilt_on_the_unmerged_base(tmp_path, tiny_model_dir):
    # run-002, trained after merge(), recorded only the base's name: to_script wrote a script
    # training it on the base without run-001, and Session.resume said only "this base model
    # is not the one run-002 started from".
    from workbench.train.store import read_meta

    s = session_with_data(tmp_path / "s", tiny_model_dir)
    s.train(max_steps=2, lr=1e-2, wait=True)
    s.merge()
    merged = s.export("export/merged")
    run = s.train(max_steps=2, lr=1e-2, wait=True)
    assert read_meta(run.run_dir)["model_spec"]["merged_from"] == ["run-001"]
    answer = s.generate("1 cat", max_new_tokens=5)
    with pytest.raises(SpecError, match="with run-001 merged in .*export that merged model"):
        s.to_script("script")
    assert not (s.run_dir / "script").exists()
    again = wb.Session(tmp_path / "s", verbose=False)
    with pytest.raises(SpecError, match=r"run-002 started from .* with run-001 merged in"):
        again.resume(run.run_dir)
    again.resume(run.run_dir, model=str(merged), wait=True)
    assert again.generate("1 cat", max_new_tokens=5) == answer
    assert read_meta(run.run_dir)["model_spec"]["merged_from"] is None  # the export holds it
    assert again.to_script("script").is_dir()


def test_a_state_file_damaged_twice_keeps_both_copies(tmp_path):
    from workbench.session_folder import SessionFolder

    folder = SessionFolder(tmp_path)
    for damage in ("{not json", "[1, 2]"):
        (tmp_path / "session.json").write_text(damage)
        with pytest.warns(WorkbenchWarning, match="was damaged"):
            assert folder.state() == {}
    assert (tmp_path / "session.json.damaged").read_text() == "{not json"
    assert (tmp_path / "session.json.damaged-2").read_text() == "[1, 2]"


def test_a_failed_train_call_leaves_no_empty_run_folder(tmp_path, tiny_model_dir):
    s = session_with_data(tmp_path / "s", tiny_model_dir)
    with pytest.raises(SpecError):
        s.train(max_steps=2, lora=wb.LoRA(r=4, target=["no_such_layer"]))
    assert not (tmp_path / "s" / "runs").exists() or not any((tmp_path / "s" / "runs").iterdir())
    assert s.train(max_steps=1, lr=5e-3, wait=True).run_dir.name == "run-001"


# -- item 7: divergence ---------------------------------------------------------------------
@pytest.fixture(scope="module", params=["llama", "gpt2", "qwen2", "gemma3"])
def any_architecture(request, tmp_path_factory):
    from workbench.models.tiny import build_tiny_model

    return request.param, build_tiny_model(
        tmp_path_factory.mktemp("m") / request.param, request.param
    )


def test_implausible_learning_rate_warns_and_a_broken_run_fails(tmp_path, any_architecture):
    name, folder = any_architecture
    s = session_with_data(tmp_path / "s", folder)
    with pytest.warns(WorkbenchWarning, match=r"lr=1000 is far above what lora usually"):
        run = s.train(max_steps=30, lr=1000.0, batch_size=8, eval_every=100, wait=True)
    assert run.state is RunState.FAILED, name
    error = run.status.error
    assert "lr=1000 is probably far too high" in error
    losses = [r.loss for r in run.history if r.kind == "train"]
    uniform = math.log(len(s.tokenizer))
    if "collapsed" in error:  # llama, gpt2, qwen2: the same output for every input
        assert losses[-1] == pytest.approx(uniform, rel=0.01) and "ln(vocabulary)" in error
    else:  # gemma3: confidently wrong, far above ln(vocabulary)
        assert "diverged" in error and min(losses[-5:]) > 1.2 * uniform
    assert run.status.step < 30  # it stopped as soon as the verdict was certain


def test_plausible_learning_rate_gives_no_warning(recwarn):
    wb.TrainSpec(lr=2e-4)
    wb.TrainSpec(lr=2e-5, method="full")
    assert not [w for w in recwarn if issubclass(w.category, WorkbenchWarning)]


def test_nan_at_the_first_step_does_not_promise_a_checkpoint(tmp_path, tiny_model_dir):
    s = session_with_data(tmp_path / "s", tiny_model_dir)

    def poison(module, inputs, output):
        return output * float("nan") if module.training else output

    s.loaded.model.model.norm.register_forward_hook(poison)
    run = s.train(max_steps=5, lr=5e-3, batch_size=8, wait=True)
    assert run.state is RunState.FAILED
    assert run.status.error.startswith("the training loss became nan at step 1")
    assert "No complete checkpoint is left" in run.status.error
    assert "is kept" not in run.status.error


# -- item 9: resume takes a session folder --------------------------------------------------
def test_resume_accepts_the_session_folder(tmp_path, model_dir):
    s = session_with_data(tmp_path / "s", model_dir)
    run = s.train(max_steps=6, lr=5e-3, batch_size=8, save_every=3, wait=False)
    run.pause()
    run.stop()
    run.wait()
    messages = []
    other = wb.Session(tmp_path / "s", verbose=False)
    other.on("progress", messages.append)
    resumed = other.resume(tmp_path / "s", wait=True)
    assert resumed.run_dir == run.run_dir and resumed.state is RunState.FINISHED
    assert f"resuming the latest run in {tmp_path / 's'}: {run.run_dir}" in messages


def test_resume_of_a_folder_without_runs_says_what_to_give(tmp_path):
    s = wb.Session(tmp_path / "empty", verbose=False)
    with pytest.raises(SpecError) as info:
        s.resume(tmp_path / "empty")
    text = str(info.value)
    assert "holds no training run" in text and "run.json" in text
    assert "start_run" not in text and "resume_run" not in text


# -- item 10: the Run's control flow ----------------------------------------------------------
def test_wait_after_resume_never_returns_while_the_new_worker_trains(tmp_path, model_dir):
    s = session_with_data(tmp_path / "s", model_dir)
    run = s.train(max_steps=40, lr=5e-3, batch_size=4, eval_every=1000, save_every=1000, wait=False)
    states = []
    s.on("train_state", lambda p: states.append(p.status.state.value))
    for _ in range(3):
        run.stop()
        assert run.wait().state is RunState.STOPPED
        step = run.status.step
        run.resume()
        assert run.state is RunState.RUNNING  # at once, not when the new thread gets going
    status = run.wait()
    assert status.state is RunState.FINISHED and status.step == 40
    time.sleep(0.2)
    assert run.status.step == 40 and step < 40
    assert states == ["stopping", "stopped", "running"] * 3 + ["finished"]
    assert [r.step for r in run.history if r.kind == "train"] == list(range(1, 41))


def test_close_stops_the_run_and_removes_the_session_listeners(tmp_path, tiny_model_dir, capsys):
    s = wb.Session(tmp_path / "s", verbose=True)
    s.load_model(str(tiny_model_dir))
    s.load_data(toy_rows(16), validation=0)
    run = s.train(max_steps=400, lr=5e-3, batch_size=4, wait=False)
    capsys.readouterr()
    s.close()
    assert run.state is RunState.STOPPED and (run.run_dir / "checkpoints").is_dir()
    s.events.emit("progress", "after close")
    assert "after close" not in capsys.readouterr().out


def test_deleting_the_run_folder_mid_run_fails_it_clearly(tmp_path, tiny_model_dir):
    s = session_with_data(tmp_path / "s", tiny_model_dir)
    run = s.train(max_steps=400, lr=5e-3, batch_size=4, eval_every=1000, wait=False)
    run.pause()
    delete_under_a_writer(run.run_dir)  # the paused worker may still be renaming status.json
    run.resume()
    status = run.wait(timeout=120)
    assert status.state is RunState.FAILED
    assert status.error.startswith(f"cannot write to the run folder {run.run_dir}")
    assert "No complete checkpoint is left" in status.error
    assert isinstance(s.generate("1 cat", max_new_tokens=2), str)


def test_the_session_writes_the_accelerate_script_of_its_run(tmp_path, tiny_model_dir):
    s = session_with_data(tmp_path / "s", tiny_model_dir)
    s.train(max_steps=1, lr=5e-3, wait=True)
    folder = s.to_script("script")
    assert folder == (tmp_path / "s" / "script").resolve()
    assert {"train.py", "train_core.py", "accelerate_config.yaml"} <= {
        p.name for p in folder.iterdir()
    }
    assert not hasattr(s.run, "to_script")  # train/ never imports deploy/


def test_an_interrupt_while_train_blocks_stops_the_run_and_keeps_it(tmp_path, tiny_model_dir):
    # Ctrl-C (or a notebook's stop button) during a blocking train() used to leave the run
    # training behind the session's back (s.run was None), or abort a script's process.
    import _thread
    import json
    import threading

    s = session_with_data(tmp_path / "s", tiny_model_dir)
    status = tmp_path / "s" / "runs" / "run-001" / "status.json"

    history = status.with_name("history.jsonl")

    def interrupt_after_two_steps():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if history.is_file() and history.read_text().count('"kind": "train"') >= 2:
                break
            time.sleep(0.02)
        _thread.interrupt_main()  # as Ctrl-C: raised in the main thread, which waits

    threading.Thread(target=interrupt_after_two_steps, daemon=True).start()
    with pytest.raises(KeyboardInterrupt) as interrupted:
        s.train(max_steps=5000, lr=5e-3, batch_size=2, wait=True)
    run = s.run
    assert run is not None and run.status.state is RunState.STOPPED
    assert str(interrupted.value) == (  # the cell's `run = ...` never got its value
        f"interrupted: run-001 stopped at step {run.status.step} of 5000; Session.run holds "
        "it (s.run), s.run.resume() goes on"
    )
    assert json.loads(status.read_text())["state"] == "stopped"
    stopped_at = run.status.step
    assert (run.run_dir / "checkpoints" / f"step-{stopped_at:08d}").is_dir()
    time.sleep(0.5)
    assert run.status.step == stopped_at  # nothing trains on behind the session
    with pytest.raises(SpecError, match="already carries an adapter"):
        s.train(max_steps=2)


def test_a_new_model_is_not_credited_with_the_earlier_run_or_data(tmp_path, tiny_model_dir):
    # load_model used to keep the earlier run's training settings and scores (the next
    # export's model card claimed them), credit the next evaluation to that run, and keep
    # data tokenized by another tokenizer, which then trained on ids the new one misreads.
    from workbench.errors import NoDataError
    from workbench.models.tiny import build_tiny_model

    s = session_with_data(tmp_path / "s", tiny_model_dir)
    assert s.train(max_steps=2, lr=5e-3, batch_size=8, wait=True).state is RunState.FINISHED
    assert s.evaluate(metrics=["exact_match"], max_new_tokens=2).settings["run"] == "run-001"
    s.load_model(str(tiny_model_dir))  # the same tokenizer: the data stays
    assert s.has_data and s.training_summary() == {} and s.scores_summary() == {}
    again = s.evaluate(metrics=["exact_match"], max_new_tokens=2)
    assert again.settings.get("run") is None and again.columns == ("base",)  # nothing tuned it
    card = (s.export("export/base") / "README.md").read_text()
    assert "## Training\n\nnot recorded" in card  # this model's own evaluation only:
    assert "| exact_match | 0 | - |" in card  # scored as the base it is
    assert all(finding.step is None for finding in s.diagnose())  # none about a run

    other = build_tiny_model(tmp_path / "other", vocab_size=300)
    with pytest.warns(WorkbenchWarning, match="tokenized for the earlier model's tokenizer"):
        s.load_model(str(other))
    assert not s.has_data
    with pytest.raises(NoDataError):
        s.train(max_steps=1)


def test_a_merged_run_leaves_no_training_hooks_for_the_next(tmp_path, tiny_model_dir):
    # NEFTune's noise hook and gradient checkpointing outlived the run that asked for them:
    # after merge(), the next run trained with noise it did not ask for, and every export's
    # config.json said use_cache=false.
    import json

    s = session_with_data(tmp_path / "s", tiny_model_dir)
    first = s.train(
        max_steps=2, batch_size=4, neftune_alpha=5.0, gradient_checkpointing=True, wait=True
    )
    assert first.state is RunState.FINISHED
    folder = s.export("export/first")
    assert json.loads((folder / "config.json").read_text()).get("use_cache", True) is True
    s.merge()

    def noise_hooks(model):
        hooks = model.get_input_embeddings()._forward_hooks.values()
        return [h for h in hooks if getattr(h, "_workbench_neftune", False)]

    assert not noise_hooks(s.model) and not s.model.is_activation_checkpointing
    second = s.train(max_steps=1, batch_size=4, gradient_checkpointing=False, wait=True)
    base = second.model.get_base_model()
    assert not noise_hooks(base) and not base.is_activation_checkpointing
    base.train()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(base.get_input_embeddings()(ids), base.get_input_embeddings()(ids))


def test_neftune_noise_is_on_only_while_the_run_trains(tmp_path, tiny_model_dir):
    # The hook stayed on the model after the run: find_lr on the tuned model (train-mode
    # forwards) got noise it did not ask for, losses up to 3.1 apart.
    def noise_hooks(model):
        hooks = model.get_input_embeddings()._forward_hooks.values()
        return [h for h in hooks if getattr(h, "_workbench_neftune", False)]

    def losses(run):
        return [r.loss for r in run.history if r.kind == "train"]

    options = {"max_steps": 30, "batch_size": 4, "seed": 3, "eval_every": 100}
    whole = session_with_data(tmp_path / "a", tiny_model_dir)
    noisy = whole.train(neftune_alpha=5.0, wait=True, **options)
    assert noisy.state is RunState.FINISHED and not noise_hooks(whole.model)
    quiet = session_with_data(tmp_path / "b", tiny_model_dir).train(wait=True, **options)
    assert losses(quiet) != losses(noisy)  # the noise was there while it trained
    embeddings = whole.model.get_input_embeddings()
    whole.model.train()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(embeddings(ids), embeddings(ids))
    whole.model.train(False)
    stopped_session = session_with_data(tmp_path / "c", tiny_model_dir)
    run = stopped_session.train(neftune_alpha=5.0, wait=False, **options)
    run.stop()
    if run.wait().state is RunState.STOPPED:
        assert not noise_hooks(stopped_session.model)
        run.resume()
        assert run.wait().state is RunState.FINISHED
    assert losses(run) == losses(noisy) and not noise_hooks(stopped_session.model)


def test_a_start_that_fails_after_wrapping_leaves_nothing(tmp_path, tiny_model_dir, monkeypatch):
    # A setting only the optimizer or scheduler refuses used to fail after the adapter was
    # put on the model and the run folder made: every later train() then refused "an
    # adapter already attached". The failure is injected where such a refusal comes from.
    from workbench.models.strength import lora_layers
    from workbench.train import loop as loop_module

    s = session_with_data(tmp_path / "s", tiny_model_dir)

    def refused(*args, **kwargs):
        raise ValueError("lr_end (1e-07) must be smaller than initial lr (1e-08)")

    monkeypatch.setattr(loop_module.TrainLoop, "__init__", refused)
    with pytest.raises(ValueError, match="lr_end"):
        s.train(max_steps=2, wait=True)
    monkeypatch.undo()
    assert lora_layers(s.model) == [] and s.run is None
    assert not (tmp_path / "s" / "runs" / "run-001").exists()
    assert s.train(max_steps=1, wait=True).state is RunState.FINISHED


def test_a_collapsed_run_points_to_a_checkpoint_from_before_the_collapse(tmp_path, tiny_model_dir):
    # It used to name the newest checkpoint, saved after the loss had collapsed, and say
    # Session.resume goes on from it: resuming went on with a dead model.
    import re

    s = session_with_data(tmp_path / "s", tiny_model_dir)
    with pytest.warns(WorkbenchWarning, match="far above"):
        run = s.train(
            max_steps=30, lr=1000.0, batch_size=8, eval_every=100, save_every=1,
            keep_checkpoints="all", wait=True,
        )  # fmt: skip
    assert run.state is RunState.FAILED and "collapsed" in run.status.error
    uniform = math.log(len(s.tokenizer))
    losses = {r.step: r.loss for r in run.history if r.kind == "train"}
    bad = [step for step, loss in losses.items() if loss >= 0.99 * uniform]  # no better
    first_bad = min(step for step in bad if all(s_ in bad for s_ in range(step, max(bad) + 1)))
    error = run.status.error
    assert f"before the loss went bad (at step {first_bad})" in error
    assert "Session.resume(...) goes on from it" not in error
    named = re.search(r"is step-(\d+): run\.fork\(step=(\d+), lr=\.\.\.\)", error)
    if first_bad > 1:  # a checkpoint of every step: the one just before the collapse
        assert named and int(named.group(1)) == int(named.group(2)) == first_bad - 1
    else:  # lr=1000 breaks the tiny model at its first step: nothing to go back to
        assert "No checkpoint from before the loss went bad (at step 1)" in error


def test_a_fork_that_collapses_points_back_to_the_step_it_forked_from(tmp_path, tiny_model_dir):
    s = session_with_data(tmp_path / "s", tiny_model_dir)
    parent = s.train(
        max_steps=60, lr=5e-3, batch_size=8, eval_every=100, save_every=10,
        keep_checkpoints="all", wait=False,
    )  # fmt: skip
    parent.wait(step=20)
    parent.stop()
    assert parent.wait().state is RunState.STOPPED
    uniform = math.log(len(s.tokenizer))
    assert [r.loss for r in parent.history if r.kind == "train"][-1] < 0.9 * uniform
    with pytest.warns(WorkbenchWarning, match="far above"):
        fork = parent.fork(step=20, lr=1000.0, wait=True)
    assert fork.state is RunState.FAILED, fork.status.error
    assert "is step-00000020: run.fork(step=20, lr=...) goes on from it" in fork.status.error


def test_a_one_step_run_trains_and_an_explicit_whole_run_warmup_is_said(tmp_path, tiny_model_dir):
    # The default warm-up (3%) rounded up to the only step, at lr 0: the run "finished"
    # with every LoRA B matrix still zero, the tuned model the base, and nothing said.
    import warnings as w

    s = session_with_data(tmp_path / "s", tiny_model_dir)
    with w.catch_warnings():
        w.simplefilter("error", WorkbenchWarning)
        run = s.train(max_steps=1, lr=5e-3, batch_size=4, wait=True)
    lora_b = [p for n, p in run.model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)
    assert [r.lr for r in run.history if r.kind == "train"] == [pytest.approx(5e-3)]
    s.load_model(str(tiny_model_dir))
    with pytest.warns(
        WorkbenchWarning,
        match=r"warmup=1 is 1 step, as long as the whole run "
        r"\(1 step \(its first step, at lr 0, trains nothing\)\)",
    ):
        s.train(max_steps=1, warmup=1, wait=True)


def test_a_lora_rank_above_every_adapted_layer_is_said(tmp_path, tiny_model_dir):
    # r=1000 on hidden size 64 trained 19x the model's parameters in silence.
    s = session_with_data(tmp_path / "s", tiny_model_dir)
    with pytest.warns(
        WorkbenchWarning,
        match=r"LoRA r=1000 is above the rank any adapted "
        r"layer can take .*at most 64 here.*r=64 learns the same",
    ) as said:
        run = s.train(lora=wb.LoRA(r=1000), max_steps=1, wait=True)
    assert [r.filename for r in said if "LoRA r=1000" in str(r.message)] == [__file__]
    assert any("LoRA r=1000" in (r.message or "") for r in run.history if r.kind == "warning")
    s.load_model(str(tiny_model_dir))
    import warnings as w

    with w.catch_warnings():
        w.simplefilter("error", WorkbenchWarning)
        s.train(lora=wb.LoRA(r=64, target=["q_proj"]), max_steps=1, wait=True)
    s.load_model(str(tiny_model_dir))
    with pytest.warns(
        WorkbenchWarning,
        match=r"lora=LoRA\(r=4, ...\) is not used by "
        r"method='full', which trains every weight",
    ):
        s.train(method="full", lora=wb.LoRA(r=4), lr=1e-5, max_steps=1, wait=True)


def test_a_batch_size_above_the_rows_is_said_and_recorded_as_the_rows(tmp_path, tiny_model_dir):
    # batch_size=100 on 32 rows took all 32 each step and was recorded (and planned for in
    # memory) as 100, in silence.
    import warnings as w

    s = session_with_data(tmp_path / "s", tiny_model_dir)
    with pytest.warns(
        WorkbenchWarning,
        match=r"batch_size=100 is above the 32 training examples: each step takes all 32, "
        r"so the run uses batch_size=32",
    ):
        large = s.train(max_steps=2, batch_size=100, wait=True)
    assert large.spec.batch_size == 32
    assert json.loads((large.run_dir / "run.json").read_text())["spec"]["batch_size"] == 32
    s.load_model(str(tiny_model_dir))
    with w.catch_warnings():
        w.simplefilter("error", WorkbenchWarning)
        exact = s.train(max_steps=2, batch_size=32, wait=True)
    losses = [[r.loss for r in run.history if r.kind == "train"] for run in (large, exact)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-6) and len(losses[0]) == 2


def test_a_second_run_training_beside_another_in_one_process_is_warned(tmp_path, tiny_model_dir):
    # Two sessions' runs at once shared torch's generator: with dropout, neither repeated
    # its seed (losses 0.08 apart from the same run alone), and nothing said so.
    import time
    import warnings as w

    first = session_with_data(tmp_path / "a", tiny_model_dir)
    second = session_with_data(tmp_path / "b", tiny_model_dir)
    running = first.train(max_steps=400, batch_size=4, wait=False)
    deadline = time.time() + 60
    while running.status.step < 1 and time.time() < deadline:
        time.sleep(0.05)
    try:
        with pytest.warns(
            WorkbenchWarning,
            match=r"run-001 is training in this process too: "
            r"both runs draw their random numbers",
        ) as said:
            beside = second.train(max_steps=2, batch_size=4, wait=True)
        assert [r.filename for r in said if "in this process too" in str(r.message)] == [__file__]
        assert any("in this process too" in (r.message or "") for r in beside.history)
    finally:
        running.stop()
        running.wait()
    second.load_model(str(tiny_model_dir))
    with w.catch_warnings():
        w.simplefilter("error", WorkbenchWarning)
        second.train(max_steps=1, batch_size=4, wait=True)  # the other one has ended


def test_a_warmup_the_run_cannot_use_is_said_and_a_high_lr_warned_once(tmp_path, tiny_model_dir):
    import warnings as w

    s = session_with_data(tmp_path / "s", tiny_model_dir)
    with pytest.warns(WorkbenchWarning, match=r"warmup=3 is ignored by scheduler='constant'"):
        run = s.train(max_steps=4, scheduler="constant", warmup=3, wait=True)
    assert any("ignored by scheduler='constant'" in (r.message or "") for r in run.history)
    s.load_model(str(tiny_model_dir))
    with pytest.warns(WorkbenchWarning, match=r"warmup=10 is 10 steps, as long as the whole run"):
        s.train(max_steps=4, warmup=10, wait=True)
    s.load_model(str(tiny_model_dir))
    with w.catch_warnings(record=True) as caught:
        w.simplefilter("always")
        s.train(max_steps=1, lr=0.02, batch_size="auto", wait=True)
    lr_warnings = [c for c in caught if "is far above" in str(c.message)]
    assert len(lr_warnings) == 1  # not once more for each choice made on the user's behalf


def test_an_interrupt_while_a_fork_blocks_stops_the_fork(tmp_path, tiny_model_dir):
    # The fork went on training unseen, and the session refused generate() while it did.
    import _thread
    import threading

    s = session_with_data(tmp_path / "s", tiny_model_dir)
    parent = s.train(max_steps=4, save_every=2, keep_checkpoints="all", lr=5e-3, batch_size=2)
    history = parent.run_dir.parent / "run-002" / "history.jsonl"

    def interrupt_after_two_steps():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            # the fork's history starts with the parent's two steps: two more of its own
            if history.is_file() and history.read_text().count('"kind": "train"') >= 4:
                break
            time.sleep(0.02)
        _thread.interrupt_main()

    threading.Thread(target=interrupt_after_two_steps, daemon=True).start()
    with pytest.raises(KeyboardInterrupt) as interrupted:
        parent.fork(2, max_steps=5000, wait=True)
    fork = s.run
    assert fork.run_dir.name == "run-002" and fork.status.state is RunState.STOPPED
    assert str(interrupted.value).startswith(
        f"interrupted: run-002 stopped at step {fork.status.step} of 5000"
    )
    stopped_at = fork.status.step
    time.sleep(0.5)
    assert fork.status.step == stopped_at  # nothing trains on behind the session
    assert isinstance(s.generate("q1", max_new_tokens=2), str)


@pytest.mark.parametrize("stderr_closed", [False, True], ids=["stderr", "stderr-closed"])
def test_a_script_ending_under_a_background_run_stops_it_with_its_step_saved(
    tmp_path, tiny_model_dir, stderr_closed
):
    # The process aborted ("terminate called without an active exception") and the run
    # folder kept no checkpoint, its status "running" at step 0.
    import subprocess
    import sys

    script = _training_in_the_background(tmp_path / "s", tiny_model_dir, 5000)
    script += "import sys; sys.stderr.close()\n" if stderr_closed else ""  # print must not stop it
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "terminate called" not in done.stderr
    said = f"stopping {tmp_path / 's' / 'runs' / 'run-001'}: the process is ending"
    assert (said in done.stderr) is not stderr_closed
    run_dir = tmp_path / "s" / "runs" / "run-001"
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "stopped" and status["step"] >= 3
    assert (run_dir / "checkpoints" / f"step-{status['step']:08d}").is_dir()


def test_a_run_paused_by_an_earlier_session_object_goes_on_in_the_new_one(tmp_path, tiny_model_dir):
    # Run All again while a run was paused: its worker waited for a resume nobody could
    # send, holding the model and the folder's lock, and s.resume(folder) was refused.
    first = session_with_data(tmp_path / "s", tiny_model_dir)
    paused = first.train(max_steps=5000, lr=5e-3, batch_size=2, wait=False)
    paused.pause()
    paused_at = paused.status.step
    again = session_with_data(tmp_path / "s", tiny_model_dir)
    said: list[str] = []
    again.on("progress", said.append)
    run = again.resume(paused.run_dir, wait=False)
    try:
        assert paused.status.state is RunState.STOPPED and paused.status.step == paused_at
        assert "stopping run-001, paused in this kernel, to go on with its folder here" in said
        run.wait(step=paused_at + 2)
        steps = [r.step for r in run.history if r.kind == "train"]
        assert steps == list(range(1, steps[-1] + 1))  # from the paused step on, once each
    finally:
        run.stop()
        run.wait()


def test_a_refused_resume_leaves_the_paused_run_of_an_earlier_session_paused(
    tmp_path, tiny_model_dir
):
    first = session_with_data(tmp_path / "s", tiny_model_dir)
    paused = first.train(max_steps=5000, lr=5e-3, batch_size=2, wait=False)
    paused.pause()
    again = session_with_data(tmp_path / "s", tiny_model_dir)
    try:
        with pytest.raises(SpecError, match="processes=0 must be a positive int"):
            again.resume(paused.run_dir, wait=False, processes=0)
        assert paused.status.state is RunState.PAUSED
    finally:
        paused.stop()
        paused.wait()


def test_a_forked_child_ending_leaves_the_parents_runs_training(tmp_path, tiny_model_dir):
    # The child stopped the parent's runs it inherited: "stopping" written into the live
    # status.json, then 120 s waiting for a thread that did not exist in it.
    import subprocess
    import sys
    import textwrap

    script = _training_in_the_background(tmp_path / "s", tiny_model_dir, 100000)
    script += textwrap.dedent(
        """
        import json, os, sys, time
        child = os.fork()
        if child == 0:
            sys.exit(0)  # a normal end: the exit handlers run in the child
        started = time.monotonic()
        os.waitpid(child, 0)
        took = time.monotonic() - started
        state = json.loads((run.run_dir / "status.json").read_text())["state"]
        print("CHILD", round(took, 1), state, run.status.state.value, flush=True)
        run.stop()
        run.wait()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    line = next(x for x in done.stdout.splitlines() if x.startswith("CHILD"))
    _, took, on_disk, in_memory = line.split()
    assert (on_disk, in_memory) == ("running", "running") and float(took) < 30, line


def _training_in_the_background(folder, model_dir, steps: int) -> str:
    """A script's lines: a session training ``steps`` in the background, past step 3."""
    import textwrap

    return textwrap.dedent(
        f"""
        import workbench as wb
        s = wb.Session({str(folder)!r}, verbose=False)
        s.load_model({str(model_dir)!r})
        s.load_data([{{"question": f"q{{i}}", "answer": f"a{{i}}"}} for i in range(16)])
        run = s.train(max_steps={steps}, wait=False)
        run.wait(step=3)
        """
    )


def test_after_a_merge_the_next_run_s_base_column_says_it_is_the_merged_model(
    tmp_path, tiny_model_dir
):
    # After merge() and a second train(), evaluate() said "one column, no base", then showed
    # a base column holding run-001's merged model, credited to no one.
    s = session_with_data(tmp_path / "s", tiny_model_dir)
    s.train(max_steps=2, batch_size=4, wait=True)
    s.merge()
    s.train(max_steps=1, batch_size=4, wait=True)
    said: list[str] = []
    s.on("progress", said.append)
    ev = s.evaluate(metrics=["exact_match"], limit=2, max_new_tokens=2)
    assert ev.columns == ("base", "tuned") and not any("no base" in m for m in said)
    assert (
        "base: the loaded model with run-001 merged in (what run-002 started from), not "
        "the model as loaded" in said
    )
    assert ev.measured() == "base column: the loaded model with run-001 merged in"
    assert wb.Evaluation.load(ev.path).measured() == ev.measured()  # kept in settings.json
    s.merge()
    assert s.evaluate(metrics=["exact_match"], limit=2, max_new_tokens=2).columns == ("tuned",)
    assert "the adapter is merged: one column, no base (its weights are gone)" in said


def test_an_interrupted_evaluation_says_it_saved_nothing(tmp_path, tiny_model_dir):
    # A bare KeyboardInterrupt from inside attention, where train() says where its run is.
    import _thread

    s = session_with_data(tmp_path / "s", tiny_model_dir)
    s.train(max_steps=1, batch_size=4, wait=True)
    off = s.on("eval_progress", lambda _payload: _thread.interrupt_main())
    with pytest.raises(KeyboardInterrupt) as interrupted:
        s.evaluate(metrics=["exact_match"], max_new_tokens=64, batch_size=1)
    off()
    assert str(interrupted.value).startswith(
        "interrupted: the evaluation stopped before it finished and saved nothing"
    )
    assert not list((tmp_path / "s" / "evaluations").glob("eval-*"))
    assert s.evaluate(metrics=["exact_match"], limit=2, max_new_tokens=2).columns


def test_a_notebook_run_again_stops_the_run_its_earlier_session_left_paused(
    tmp_path, tiny_model_dir
):
    # Run All again while a run was paused: the old Session's run waited for a resume
    # nobody could send, with its thread, lock and model, one more per rerun.
    import threading

    first = session_with_data(tmp_path / "s", tiny_model_dir)
    left = first.train(max_steps=1000, batch_size=4, wait=False)
    left.pause()
    again = session_with_data(tmp_path / "s", tiny_model_dir)
    said: list[str] = []
    again.on("progress", said.append)
    run = again.train(max_steps=1, batch_size=4, wait=True)
    assert run.run_dir.name == "run-002" and left.status.state is RunState.STOPPED
    assert any(m.startswith("stopping run-001, left paused by an earlier Session") for m in said)
    assert not [t for t in threading.enumerate() if t.name.startswith("train:run-001")]
    assert left.resume().state is RunState.RUNNING  # its own Session can still go on with it
    left.stop()
    left.wait()


def test_a_refused_train_leaves_another_session_s_paused_run_alone(tmp_path, tiny_model_dir):
    # A notebook run again, not yet at its load_data cell: train() was refused, but the
    # earlier Session's paused run had been stopped already.
    from workbench.errors import NoDataError

    first = session_with_data(tmp_path / "s", tiny_model_dir)
    left = first.train(max_steps=1000, batch_size=4, wait=False)
    left.pause()
    again = wb.Session(tmp_path / "s", verbose=False)
    again.load_model(str(tiny_model_dir))
    with pytest.raises(NoDataError):
        again.train(max_steps=1)
    assert left.status.state is RunState.PAUSED
    left.stop()
    left.wait()
