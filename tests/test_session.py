"""The Session facade: run folder, events, model state, info and generation."""

from __future__ import annotations

import json

import pytest

import workbench as wb
from workbench.events import EventHub


def test_session_owns_a_run_folder_and_records_the_model(tmp_path, tiny_model_dir):
    session = wb.Session(tmp_path / "run", verbose=False)
    assert session.run_dir.is_dir()
    session.load_model(str(tiny_model_dir), quantization="8bit")
    state = json.loads((tmp_path / "run" / "session.json").read_text())
    assert state["model"] == {
        "spec": str(tiny_model_dir),
        "quantization": "8bit",
        "dtype": "float32",
        "device": "cpu",
        "trust_remote_code": False,
    }
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]


def test_events_reach_subscribers_until_they_unsubscribe(tmp_path, tiny_model_dir):
    session = wb.Session(tmp_path, verbose=False)
    progress, loaded = [], []
    off_progress = session.on("progress", progress.append)
    session.on("model_loaded", loaded.append)
    session.load_model(str(tiny_model_dir))
    assert progress[0] == f"loading {tiny_model_dir}"
    assert progress[-1].startswith("loaded LlamaForCausalLM in ")
    assert len(loaded) == 1 and isinstance(loaded[0], wb.ModelInfo)
    off_progress()
    session.load_model(str(tiny_model_dir))
    assert len(loaded) == 2 and progress[-1].startswith("loaded LlamaForCausalLM")
    count = len(progress)
    session.load_model(str(tiny_model_dir))
    assert len(progress) == count


def test_verbose_session_prints_progress(tmp_path, tiny_model_dir, capsys):
    wb.Session(tmp_path).load_model(str(tiny_model_dir))
    assert f"loading {tiny_model_dir}" in capsys.readouterr().out


def test_a_quiet_sessions_blocking_run_prints_nothing(tmp_path, tiny_model_dir, capsys):
    # verbose=False still printed "step 1/2 ... loss ..." and "finished" for each run
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)]
    for verbose, printed in ((False, []), (True, ["step 1/2", "step 2/2", "finished"])):
        s = wb.Session(tmp_path / str(verbose), verbose=verbose)
        s.load_model(str(tiny_model_dir))
        s.load_data(rows, validation=None)
        capsys.readouterr()
        run = s.train(max_steps=2, batch_size=4, save_every=1, wait=True)
        out = capsys.readouterr().out
        assert [p for p in ("step 1/2", "step 2/2", "finished") if p in out] == printed
        run.fork(step=1, max_steps=3, wait=True)  # a blocking fork too
        out = capsys.readouterr().out
        assert ("step 3/3" in out) is verbose
        s.close()


def test_model_and_tokenizer_are_the_transformers_objects(tmp_path, tiny_model_dir):
    from transformers import PreTrainedModel

    session = wb.Session(tmp_path, verbose=False)
    session.load_model(str(tiny_model_dir))
    assert isinstance(session.model, PreTrainedModel)
    assert session.tokenizer("hi").input_ids


def test_calls_that_need_a_model_say_so(tmp_path):
    session = wb.Session(tmp_path, verbose=False)
    for call in (
        lambda: session.model,
        lambda: session.model_info(),
        lambda: session.generate("x"),
    ):
        with pytest.raises(wb.NoModelError, match="call session.load_model"):
            call()


def test_generate_is_greedy_and_deterministic(tmp_path, tiny_model_dir):
    session = wb.Session(tmp_path, verbose=False)
    session.load_model(str(tiny_model_dir))
    first = session.generate("The quick brown", max_new_tokens=6)
    assert first == session.generate("The quick brown", max_new_tokens=6)
    batch = session.generate(["The quick brown", "Question:"], max_new_tokens=6)
    assert batch[0] == first  # left padding keeps a batched prompt's completion unchanged
    longer = session.generate("The quick brown", max_new_tokens=12)
    assert longer[:8] == first[:8]  # greedy: more tokens extend, never change, the start


def test_listener_errors_do_not_break_the_publisher(caplog):
    hub = EventHub()
    seen = []
    hub.on("progress", lambda payload: 1 / 0)
    hub.on("progress", seen.append)
    hub.emit("progress", 5)
    assert seen == [5]
    assert "listener" in caplog.text


def test_catch_all_listener_gets_event_names():
    hub = EventHub()
    seen = []
    off = hub.on("*", lambda name, payload: seen.append((name, payload)))
    hub.emit("a", 1)
    hub.emit("b", 2)
    off()
    hub.emit("c", 3)
    assert seen == [("a", 1), ("b", 2)]


def test_repr_names_run_and_model(tmp_path, tiny_model_dir):
    session = wb.Session(tmp_path, verbose=False)
    assert repr(session) == f"Session(run_dir='{tmp_path}', model=None)"
    session.load_model(str(tiny_model_dir))
    assert f"model='{tiny_model_dir}'" in repr(session)


def test_unknown_event_names_are_refused_and_payloads_are_typed(tmp_path, tiny_model_dir):
    from workbench.events import TrainLog, TrainState

    hub = EventHub()
    with pytest.raises(wb.SpecError, match=r"unknown event 'train_logs': one of data_loaded"):
        hub.on("train_logs", print)
    session = wb.Session(tmp_path, verbose=False)
    session.load_model(str(tiny_model_dir))
    session.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)], validation=0)
    seen = []
    session.on("*", lambda name, payload: seen.append((name, type(payload).__name__)))
    run = session.train(max_steps=1, wait=True)
    assert ("train_log", TrainLog.__name__) in seen
    assert ("train_state", TrainState.__name__) in seen
    assert {name for name, _ in seen} <= set(__import__("workbench.events").events.EVENTS)
    assert run.state.value == "finished"


def test_an_unknown_keyword_is_refused_with_the_names_it_likely_meant(tmp_path, tiny_model_dir):
    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(tiny_model_dir))
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)]
    with pytest.raises(
        wb.UnknownSettingError,
        match=r"load_data\(\) takes no max_len= \(did you mean max_length\?\)",
    ):
        s.load_data(rows, max_len=64)
    assert not s.has_data  # refused before anything was read or cached
    assert not (tmp_path / "run" / "data-cache").exists()
    s.load_data(rows)
    with pytest.raises(TypeError, match=r"train\(\) takes no steps= \(did you mean max_steps\?\)"):
        s.train(steps=3, wait=True)
    # r= was told "did you mean lr?" first; other tools' words got no hint at all
    with pytest.raises(
        wb.SpecError, match=r"takes no r= \(a setting of the adapter: lora=wb.LoRA\(r=\.\.\.\)\)"
    ):
        s.train(r=8, max_steps=1, wait=True)
    told = {
        "learning_rate": "learning_rate= (did you mean lr?)",
        "num_train_epochs": "num_train_epochs= (did you mean epochs?)",
        "per_device_train_batch_size": "per_device_train_batch_size= (did you mean batch_size?)",
        "gradient_accumulation_steps": "gradient_accumulation_steps= (did you mean grad_accum?)",
        "lora_alpha": "lora_alpha= (a setting of the adapter: lora=wb.LoRA(alpha=...))",
        "max_length": "max_length= (the data's cutoff: load_data(..., max_length=...) or "
        "s.set_max_length(...))",
    }
    for name, says in told.items():
        with pytest.raises(wb.UnknownSettingError) as refused:
            s.train(**{name: 2}, wait=True)
        assert f"train() takes no {says}. It takes: " in str(refused.value)
    for make in (lambda: wb.LoRA(rank=8), lambda: wb.TrainSpec(lora={"rank": 4})):
        with pytest.raises(
            wb.UnknownSettingError, match=r"LoRA\(\) takes no rank= \(did you mean r\?\)"
        ):
            make()
    with pytest.raises(wb.UnknownSettingError, match=r"It takes: .*processes"):
        s.train(proceses=2, wait=True)
    assert s.run is None and not list((tmp_path / "run").glob("runs/*"))  # no run was started
    with pytest.raises(
        wb.UnknownSettingError,
        match=r"chat\(\) takes no max_tokens= \(did you mean max_new_tokens\?\)",
    ):
        s.chat(max_tokens=8)


BROKEN_PIPE_SCRIPT = """
import json, sys
import workbench as wb
s = wb.Session(sys.argv[1])
s.load_model(sys.argv[2])
s.load_data([{{"question": f"q{{i}}?", "answer": f"a{{i}}"}} for i in range(16)], validation=None)
run = s.train(max_steps={steps}, lr=5e-3, batch_size=4)
"""


def test_a_script_piped_into_head_trains_to_the_end(tmp_path, tiny_model_dir):
    # `python train.py | head -1` closed stdout after the first line: the next progress line
    # raised BrokenPipeError out of s.train(), and the run was recorded "stopped by the user".
    import subprocess
    import sys

    script = tmp_path / "train.py"
    script.write_text(BROKEN_PIPE_SCRIPT.format(steps=6))
    folder = tmp_path / "s"
    with subprocess.Popen(
        [sys.executable, str(script), str(folder), str(tiny_model_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        first = proc.stdout.readline()
        proc.stdout.close()  # the reader goes away, as `head -1` does
        _, errors = proc.communicate(timeout=300)
    assert first and proc.returncode == 0, errors.decode()[-2000:]
    status = json.loads((folder / "runs" / "run-001" / "status.json").read_text())
    assert (status["state"], status["step"]) == ("finished", 6)
    assert b"BrokenPipeError" not in errors


def test_a_relative_session_folder_stays_where_it_was_made_after_a_chdir(
    tmp_path, tiny_model_dir, monkeypatch
):
    # Session("runs/a") then os.chdir(...) in a later cell: the evaluation and export went
    # to the new folder's runs/a, and a run training meanwhile failed writing its status.
    work, other = tmp_path / "work", tmp_path / "other"
    work.mkdir()
    other.mkdir()
    monkeypatch.chdir(work)
    s = wb.Session("runs/a", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.load_data([{"question": f"q{i}?", "answer": f"a{i}"} for i in range(12)], validation=0.25)
    run = s.train(max_steps=8, batch_size=4, save_every=4, wait=False)
    monkeypatch.chdir(other)
    assert run.wait(120).state.value == "finished"
    exported = s.export("export/merged")
    evaluation = s.evaluate(metrics=["exact_match"], max_new_tokens=2)
    assert s.run_dir == work / "runs" / "a" and run.run_dir.parent == work / "runs" / "a" / "runs"
    assert exported == work / "runs" / "a" / "export" / "merged"
    assert evaluation.path.parent == work / "runs" / "a" / "evaluations"
    assert not (other / "runs").exists()


def test_one_metric_function_is_taken_alone_as_one_name_is(tmp_path, tiny_model_dir):
    # metrics="exact_match" was taken, metrics=my_fn a bare "'function' object is not iterable".
    def short(prediction: str, reference: str) -> bool:
        return len(prediction) < 1000

    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)]
    s.load_data(rows, validation=rows[:2])
    ev = s.evaluate(metrics=short, max_new_tokens=2)
    assert list(ev.scores) == ["short"] and ev.scores["short"]["base"] == 1.0
