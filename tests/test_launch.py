"""Launched runs: the same run on several processes under accelerate, followed by the notebook.

Real processes on CPU (gloo) with the tiny model: ``accelerate launch`` starts the ranks,
the Session follows them from the run folder. Each launch costs a few seconds of start-up
(every rank imports torch and transformers), so the tests share runs where they can.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from launch_helpers import ROWS, trained
from launch_helpers import assert_same_curve as _assert_same_curve
from launch_helpers import curve as _curve
from launch_helpers import session as _session
from test_notebooks import kernel_name  # noqa: F401  (the notebooks' kernelspec fixture)

import workbench as wb
from workbench.errors import SpecError
from workbench.train.checkpoint import (
    list_checkpoints,
    load_trained_weights,
    newest_valid_checkpoint,
)
from workbench.train.launch.spec import rank_environment
from workbench.train.status import RunState

# dropout 0: dropout masks are drawn per process, so with dropout the curves agree only
# statistically; everything else (data order, init, optimizer) is the same on any count.
SETTINGS = {"batch_size": 4, "lr": 1e-3, "lora": wb.LoRA(r=8, dropout=0.0)}


def _rank_pids(run_dir: Path) -> list[int]:
    return [
        json.loads(p.read_text())["pid"] for p in sorted((run_dir / "ranks").glob("rank-*.json"))
    ]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def _until(predicate, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def one_process(tiny_model_dir, tmp_path_factory):
    """The reference: 12 steps in this process."""
    s = _session(tmp_path_factory.mktemp("one") / "s", tiny_model_dir)
    run = s.train(max_steps=12, wait=True, **SETTINGS)
    return s, run


@pytest.mark.parametrize(
    "architecture, quantization, processes, batch_size",
    [
        ("llama", None, 2, 4),
        # three ranks share micro-batches of two rows: one rank of each trains on a stand-in
        # row of weight 0 and still joins every gradient reduce
        ("llama", None, 3, 2),
        ("qwen2", None, 2, 4),
        ("gemma3", None, 2, 4),
        ("llama", "4bit", 2, 4),  # QLoRA
    ],
)
def test_processes_follow_the_one_process_loss_curve(
    architecture, quantization, processes, batch_size, tmp_path
):
    from workbench.models.tiny import build_tiny_model

    model = build_tiny_model(tmp_path / "model", architecture)
    settings = {**SETTINGS, "batch_size": batch_size}
    load = {"quantization": quantization} if quantization else {}

    def session(name):
        s = wb.Session(tmp_path / name, verbose=False)
        s.load_model(str(model), **load)
        s.load_data(ROWS)
        return s

    ref_session = session("ref")
    ref = ref_session.train(max_steps=12, wait=True, **settings)
    s = session("launched")
    run = s.train(max_steps=12, wait=True, processes=processes, **settings)

    assert run.state is RunState.FINISHED, run.status.error
    _assert_same_curve(_curve(run), _curve(ref))
    # The notebook's model holds the ranks' final weights: the Session goes on as usual.
    mine, theirs = trained(s.model), trained(ref_session.model)
    assert mine.keys() == theirs.keys() and mine
    for name in mine:
        assert torch.allclose(mine[name], theirs[name], atol=1e-5), name
    prompt = "What is 3 plus 3?"
    assert s.generate(prompt, max_new_tokens=6) == ref_session.generate(prompt, max_new_tokens=6)
    status = json.loads((run.run_dir / "status.json").read_text())
    assert (status["state"], status["step"]) == ("finished", 12)
    assert newest_valid_checkpoint(run.run_dir)[0].name == "step-00000012"
    logs = sorted(p.name for p in (run.run_dir / "ranks").glob("rank-*.log"))
    assert logs == [f"rank-{k}.log" for k in range(processes)]
    monitor = run.monitor()
    assert monitor.status_text().split(" · ")[:2] == ["finished", "step 12/12"]
    monitor.close()
    if architecture == "llama" and processes == 2:
        # The adapter exports like any run's: peft loads it onto a fresh base.
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        folder = s.export(tmp_path / "adapter", format="adapter")
        loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model), folder)
        exported = {n: p for n, p in loaded.named_parameters() if "lora_" in n}
        assert len(exported) == len(theirs)
        for name, tensor in exported.items():
            assert torch.allclose(tensor, theirs[name], atol=1e-5), name


def test_controls_reach_every_rank(tiny_model_dir, tmp_path):
    s = _session(tmp_path / "s", tiny_model_dir)
    run = s.train(max_steps=2000, processes=2, wait=False, probes=["What is 2 plus 2?"], **SETTINGS)
    try:
        run.wait(step=3, timeout=120)
        paused = run.pause(timeout=60)
        assert paused.state is RunState.PAUSED
        time.sleep(1.0)
        assert run.status.step == paused.step  # paused means no step is taken
        # As in one process, the Session's model is the run's model at the pause.
        saved = load_trained_weights(run.run_dir / "checkpoints" / f"step-{paused.step:08d}")
        mine = {n: p for n, p in s.model.named_parameters() if p.requires_grad}
        assert saved.keys() == mine.keys()
        assert all(torch.equal(saved[n], mine[n].detach()) for n in saved)
        assert isinstance(s.generate("What is 2 plus 2?", max_new_tokens=4), str)
        stepped = run.step_once(timeout=60)
        assert (stepped.state, stepped.step) == (RunState.PAUSED, paused.step + 1)
        evals = [r for r in run.history if r.kind == "eval"]
        run.evaluate_now()
        _until(lambda: len([r for r in run.history if r.kind == "eval"]) == len(evals) + 1)
        assert [r for r in run.history if r.kind == "eval"][-1].step == stepped.step
        # The probes come from their own file, read once rank 0 has written it: on a busy
        # machine they may land a moment after the eval record.
        _until(lambda: bool(run.probe_history) and run.probe_history[-1]["step"] == stepped.step)
        run.save_now()
        name = f"step-{stepped.step:08d}"
        _until(lambda: name in [p.name for p in list_checkpoints(run.run_dir)])
        run.resume()
        run.wait(step=stepped.step + 5, timeout=60)
        assert run.state is RunState.RUNNING
    finally:
        monitor = run.monitor()
        monitor.stop_button.click()  # Stop as the monitor's button does it
        status = run.wait(timeout=120)
    assert status.state is RunState.STOPPED and status.step < 2000
    assert monitor.status_text().split(" · ")[:2] == ["stopped", f"step {status.step}/2000"]
    monitor.close()
    # Every rank stopped at the same step boundary, and rank 0 saved that step.
    for k in (0, 1):
        last = (run.run_dir / "ranks" / f"rank-{k}.log").read_text().strip().splitlines()[-1]
        assert last == f"rank {k}: stopped at step {status.step}", last
    assert newest_valid_checkpoint(run.run_dir)[0].name == f"step-{status.step:08d}"
    # A stopped launched run resumes on its processes from there, in the same Run.
    run.resume()
    run.wait(step=status.step + 2, timeout=120)
    run.stop()
    again = run.wait(timeout=120)
    assert again.state is RunState.STOPPED and again.step > status.step
    # Once the ranks are gone, Evaluate now is served here, and written to the run folder.
    history = run.run_dir / "history.jsonl"
    before = history.read_text().count('"eval"')
    run.evaluate_now()
    assert history.read_text().count('"eval"') == before + 1


@pytest.mark.parametrize("killed", [1, 0])
def test_a_killed_rank_fails_the_run_and_leaves_a_resumable_checkpoint(
    killed, tiny_model_dir, tmp_path
):
    s = _session(tmp_path / "s", tiny_model_dir)
    run = s.train(max_steps=3000, save_every=20, processes=2, wait=False, **SETTINGS)
    _until(lambda: len(list_checkpoints(run.run_dir)) >= 1 and len(_rank_pids(run.run_dir)) == 2)
    pids = _rank_pids(run.run_dir)
    os.kill(pids[killed], signal.SIGKILL)
    status = run.wait(timeout=120)

    assert status.state is RunState.FAILED
    assert f"rank {killed} of 2 died (killed by SIGKILL)" in status.error, status.error
    assert "the other ranks were stopped" in status.error
    assert "Session.resume(...) goes on from it" in status.error
    _until(lambda: not any(_alive(pid) for pid in pids), timeout=30)
    saved = json.loads((run.run_dir / "status.json").read_text())
    assert saved["state"] == "failed" and f"rank {killed} of 2 died" in saved["error"]
    checkpoint, skipped = newest_valid_checkpoint(run.run_dir)
    assert checkpoint is not None and not skipped
    # Resumable in one process, from that checkpoint.
    later = wb.Session(tmp_path / "s", verbose=False)
    resumed = later.resume(run.run_dir, wait=False)
    assert resumed.status.step == int(checkpoint.name.split("-")[1])
    resumed.stop()
    assert resumed.wait(timeout=120).state is RunState.STOPPED


def test_a_run_moves_between_one_and_several_processes(tiny_model_dir, tmp_path):
    # Long enough that each stop lands before the end (a tiny step takes milliseconds).
    ref = _session(tmp_path / "ref", tiny_model_dir).train(max_steps=300, wait=True, **SETTINGS)
    s = _session(tmp_path / "s", tiny_model_dir)
    run = s.train(max_steps=300, save_every=4, wait=False, **SETTINGS)
    run.wait(step=4)
    run.stop()
    first = run.wait()
    assert first.state is RunState.STOPPED and first.step < 12
    # One process -> two: Session.resume with processes=2 goes on from the checkpoint.
    launched = s.resume(run.run_dir, processes=2, wait=False)
    launched.wait(step=first.step + 3, timeout=120)
    launched.stop()
    second = launched.wait(timeout=120)
    assert second.state is RunState.STOPPED
    # Two -> one: a plain resume finishes it.
    later = wb.Session(tmp_path / "s", verbose=False)
    last = later.resume(run.run_dir, wait=True)
    assert last.state is RunState.FINISHED
    _assert_same_curve(_curve(last), _curve(ref))


def test_bad_launch_settings_are_refused_before_anything_starts(tiny_model_dir, tmp_path):
    s = _session(tmp_path / "s", tiny_model_dir)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SpecError, match=f"main_port={port} on 127.0.0.1 is in use"):
            s.train(max_steps=4, processes=2, main_port=port, **SETTINGS)
    with pytest.raises(SpecError, match="processes=0 must be a positive int"):
        s.train(max_steps=4, processes=0)
    with pytest.raises(SpecError, match="no such file"):
        s.train(max_steps=4, processes=2, accelerate_config=str(tmp_path / "missing.yaml"))
    q = wb.Session(tmp_path / "q", verbose=False)
    q.load_model(str(tiny_model_dir), quantization="4bit")
    q.load_data(ROWS)
    with pytest.raises(SpecError, match="fsdp=True cannot shard a 4bit"):
        q.train(max_steps=4, processes=2, fsdp=True)
    if not torch.cuda.is_available():
        spec = wb.LaunchSpec(processes=2, cpu=False)
        with pytest.raises(SpecError, match=r"processes=2 but this machine has 0 GPU\(s\)"):
            spec.checked()
    for folder in ("s", "q"):
        runs = tmp_path / folder / "runs"
        assert not runs.exists() or not any(runs.iterdir())


def test_two_machines_on_the_loopback_reach_the_one_process_loss(
    one_process, tiny_model_dir, tmp_path
):
    _, ref = one_process
    s = _session(tmp_path / "s", tiny_model_dir)
    messages = []
    s.on("progress", messages.append)
    run = s.train(max_steps=12, machines=2, main_address="127.0.0.1", wait=False, **SETTINGS)
    said = next(m for m in messages if "waits for 1 more machine" in m)
    command = said.split("machine 1: ", 1)[1].strip()
    assert "machine-1.yaml" in command
    other = subprocess.Popen(
        shlex.split(command),
        env=rank_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        status = run.wait(timeout=300)
        output = other.communicate(timeout=60)[0]
    finally:
        if other.poll() is None:
            other.kill()
    assert status.state is RunState.FINISHED, status.error
    assert other.returncode == 0, output[-2000:]
    _assert_same_curve(_curve(run), _curve(ref))


NOTEBOOK_DIES = """
import sys, time
import workbench as wb
s = wb.Session(sys.argv[1], verbose=False)
s.load_model(sys.argv[2])
s.load_data([{"question": f"q{i}", "answer": f"a{i} b{i}"} for i in range(20)])
run = s.train(max_steps=5000, batch_size=4, processes=2, wait=False)
print(run.run_dir, flush=True)
time.sleep(600)
"""


def test_ranks_stop_with_a_checkpoint_when_the_notebook_dies(tiny_model_dir, tmp_path):
    script = tmp_path / "notebook.py"
    script.write_text(NOTEBOOK_DIES)
    kernel = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "s"), str(tiny_model_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    run_dir = Path(kernel.stdout.readline().strip())
    history = run_dir / "history.jsonl"
    _until(lambda: history.exists() and history.read_text().count('"train"') >= 3)
    pids = _rank_pids(run_dir)
    kernel.kill()  # as a kernel restart does
    kernel.wait()
    _until(lambda: not any(_alive(pid) for pid in pids), timeout=120)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "stopped", status
    assert newest_valid_checkpoint(run_dir)[0].name == f"step-{status['step']:08d}"
    later = wb.Session(tmp_path / "s", verbose=False)
    resumed = later.resume(run_dir, wait=False)
    assert resumed.status.step == status["step"]
    resumed.stop()
    assert resumed.wait(timeout=120).state is RunState.STOPPED


NOTEBOOK = [
    "import workbench as wb\n"
    "s = wb.Session('nb', verbose=False)\n"
    "s.load_model(MODEL)\n"
    "s.load_data([{'question': f'What is {i} plus {i}?', 'answer': f'{i} plus {i} is {2 * i}.'}\n"
    "             for i in range(40)])",
    "run = s.train(max_steps=150, batch_size=4, lr=1e-3, processes=2)\nrun",
    "status = run.wait()\nprint(status.state.value, status.step, len(run.history))",
    "print(run.monitor().status_text())",
]


def test_a_notebook_follows_a_two_process_run_in_its_monitor(
    kernel_name,  # noqa: F811  (the fixture imported above)
    tiny_model_dir,
    tmp_path,
):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"MODEL = {str(tiny_model_dir)!r}")]
    nb.cells += [nbformat.v4.new_code_cell(source) for source in NOTEBOOK]
    client = NotebookClient(
        nb, kernel_name=kernel_name, timeout=300, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()

    def text(cell) -> str:
        return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")

    state, step, records = text(nb.cells[3]).split()
    assert (state, step) == ("finished", "150") and int(records) >= 150
    assert text(nb.cells[4]).split(" · ")[:2] == ["finished", "step 150/150"]
    # The run's cell showed the live monitor; when the run ended, wait() replaced it with
    # the final static panel: the status and the loss curve drawn from the ranks' records.
    html = "".join(o["data"].get("text/html", "") for o in nb.cells[2].outputs if "data" in o)
    assert "finished · step 150/150" in html
    assert "data:image/svg+xml" in html


def test_a_guard_fails_a_launched_run_with_the_one_process_message(tiny_model_dir, tmp_path):
    # Every rank takes the same decision from the reduced loss, and rank 0's reason is told.
    settings = {**SETTINGS, "lr": 1e4, "max_grad_norm": None}
    ref = _session(tmp_path / "ref", tiny_model_dir).train(max_steps=300, wait=True, **settings)
    s = _session(tmp_path / "s", tiny_model_dir)
    run = s.train(max_steps=300, processes=2, wait=True, **settings)
    assert ref.state is run.state is RunState.FAILED
    assert run.status.error == ref.status.error
    assert run.status.error.startswith("the run collapsed at step")


def test_a_launched_run_ends_on_its_best_weights_like_one_process(tiny_model_dir, tmp_path):
    # Early stopping keeps the best evaluation's checkpoint on rank 0 and the notebook's model
    # takes its weights at the end, as a run in this process does.
    from test_early_stopping import TRAIN, VALIDATION

    settings = {**SETTINGS, "lr": 1e-2, "eval_every": 1, "early_stopping": 2, "max_steps": 60}

    def session(name):
        s = wb.Session(tmp_path / name, verbose=False)
        s.load_model(str(tiny_model_dir))
        s.load_data(TRAIN, validation=VALIDATION)
        return s

    ref = session("ref").train(wait=True, **settings)
    s = session("launched")
    run = s.train(processes=2, wait=True, **settings)
    assert run.state is ref.state is RunState.STOPPED, run.status.error
    assert ref.weights_step < ref.status.step  # the eval loss rose before the run stopped
    assert (run.status.step, run.weights_step) == (ref.status.step, ref.weights_step)
    assert run.status.message == ref.status.message
    best = run.run_dir / "checkpoints" / f"step-{run.weights_step:08d}"
    saved = load_trained_weights(best)
    mine = {n: p.detach() for n, p in s.model.named_parameters() if p.requires_grad}
    assert mine.keys() == saved.keys()
    for name, tensor in mine.items():
        assert torch.allclose(tensor, saved[name], atol=1e-6), name
        assert torch.allclose(tensor, ref.model.get_parameter(name), atol=1e-5), name
