"""Scale-out scripts: ``write_training_script`` on the tiny model, launched with accelerate on CPU.

The toy examples have different lengths, so the two processes of a step see different token
counts: the losses only match because train.py averages over the trained tokens of the whole
global batch (``num_items_in_batch``), not per process. LoRA dropout is 0 so the runs are
deterministic (with dropout, each process draws its own masks). The launches run where
``import workbench`` fails, as on a cluster without it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from train_fixtures import toy_dataset
from train_helpers import fresh, toy_run, train_losses

from workbench.deploy.script import CONFIG_FILE, write_training_script
from workbench.errors import SpecError
from workbench.train import LoRA, TrainSpec, core
from workbench.train.batches import Examples, collate
from workbench.train.loss import token_loss_sum

STEPS = 4
SPEC = TrainSpec(
    max_steps=STEPS,
    batch_size=4,
    grad_accum=2,
    lr=5e-3,
    seed=3,
    lora=LoRA(r=4, dropout=0.0),
    save_every=STEPS,
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _without_workbench(root):
    """A PYTHONPATH folder whose ``workbench`` package refuses to import (it shadows ours)."""
    (root / "no-workbench" / "workbench").mkdir(parents=True, exist_ok=True)
    (root / "no-workbench" / "workbench" / "__init__.py").write_text(
        "raise ImportError('the scale-out script must not import the workbench')\n"
    )
    return root / "no-workbench"


def _launch(script_dir, out, processes: int) -> list[dict]:
    """Launch the script; once more on a new port if the first launch hangs.

    A clean-clone CI run (2026-12-04) saw the 2-process launch hang for its whole 300 s once,
    on a port picked free a moment before while the other test worker ran its own launches;
    it passed in 20 s alone. The port can be taken between the pick and the bind, so a hang
    gets one retry on another port; a second hang fails the test.
    """
    try:
        return _launch_once(script_dir, out, processes)
    except subprocess.TimeoutExpired:
        shutil.rmtree(out, ignore_errors=True)
        return _launch_once(script_dir, out, processes)


def _launch_once(script_dir, out, processes: int) -> list[dict]:
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(script_dir / "accelerate_config.yaml"),
        "--num_processes",
        str(processes),
        "--main_process_port",
        str(_free_port()),
        str(script_dir / "train.py"),
        "--cpu",
        "--max-steps",
        str(STEPS),
        "--out",
        str(out),
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(_without_workbench(out.parent)),
    }
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, cwd=script_dir
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def scaled(tiny_model_dir, tmp_path_factory):
    """A workbench run, its script, and the script launched on 2 processes and on 1."""
    root = tmp_path_factory.mktemp("to-script")
    run = toy_run(tiny_model_dir, root / "run", SPEC, validation=False)
    script = write_training_script(run.run_dir, root / "script")
    logs = {n: _launch(script, root / f"out-{n}", n) for n in (2, 1)}
    return run, script, root, logs


def test_two_processes_train_one_adapter_like_one_process(scaled):
    run, script, root, logs = scaled
    # Standalone: the launches ran with a PYTHONPATH where ``import workbench`` fails, and the
    # training pieces are the workbench's own module, copied.
    assert (script / "train_core.py").read_text() == Path(core.__file__).read_text()
    assert not re.search(
        r"^\s*(from|import) workbench", (script / "train_core.py").read_text(), re.MULTILINE
    )
    for n, rows in logs.items():
        assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # rank 0 logs, once
        assert {r["processes"] for r in rows} == {n}
        adapters = list((root / f"out-{n}").rglob("adapter_model.safetensors"))
        assert adapters == [root / f"out-{n}" / "adapter" / "adapter_model.safetensors"]
    two, one = ([r["loss"] for r in logs[n]] for n in (2, 1))
    assert two == pytest.approx(one, rel=1e-3)
    assert [r["grad_norm"] for r in logs[2]] == pytest.approx(
        [r["grad_norm"] for r in logs[1]], rel=1e-3
    )
    # Same data order, init and schedule as the workbench's own run (its fast loss included).
    assert one == pytest.approx(train_losses(run), rel=1e-3)
    assert [r["lr"] for r in logs[2]] == pytest.approx(
        [r.lr for r in run.history if r.kind == "train"]
    )


def test_fast_loss_equals_the_transformers_loss_the_script_uses(tiny_model_dir):
    loaded = fresh(tiny_model_dir)
    examples = Examples.from_dataset(toy_dataset(loaded.tokenizer, 6, seed=2))
    batch = collate(examples, list(range(6)), pad_id=loaded.tokenizer.pad_token_id)
    with torch.no_grad():
        total, count = token_loss_sum(loaded.model, batch, fast=True)
        width = batch["input_ids"].shape[1]
        mask = (torch.arange(width) < batch["lengths"][:, None]).long()  # as train.py pads
        plain = loaded.model(
            input_ids=batch["input_ids"],
            attention_mask=mask,
            labels=batch["labels"],
            num_items_in_batch=count,
        ).loss
    assert float(total) / count == pytest.approx(float(plain), rel=1e-5)


def test_fsdp_config_wraps_the_decoder_layer(scaled):
    from accelerate.commands.config.config_args import load_config_from_file

    run, script, root, _ = scaled
    assert not (script / "fsdp_config.yaml").exists()
    folder = write_training_script(run.run_dir, root / "fsdp", fsdp=True)
    fsdp = yaml.safe_load((folder / "fsdp_config.yaml").read_text())
    assert fsdp["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"
    assert load_config_from_file(str(folder / "fsdp_config.yaml")).distributed_type == "FSDP"
    ddp = load_config_from_file(str(folder / "accelerate_config.yaml"))
    assert ddp.distributed_type == "MULTI_GPU"
    assert "fsdp_config.yaml" in (folder / "README.md").read_text()
    # A folder it wrote may be written again.
    assert write_training_script(run.run_dir, root / "fsdp") == folder


def _qlora_run(run_dir, tmp_path):
    meta = json.loads((run_dir / "run.json").read_text())
    meta["spec"]["method"] = "qlora"
    (tmp_path / "bad" / "data" / "train").mkdir(parents=True)
    (tmp_path / "bad" / "run.json").write_text(json.dumps(meta))
    return tmp_path / "bad"


@pytest.mark.parametrize("case", ["no run", "qlora", "folder in use"])
def test_bad_input_raises_and_writes_nothing(scaled, tmp_path, case):
    run = scaled[0]
    source = {
        "no run": lambda: tmp_path,
        "qlora": lambda: _qlora_run(run.run_dir, tmp_path),
        "folder in use": lambda: run.run_dir,
    }[case]()
    target = run.run_dir if case == "folder in use" else tmp_path / "script"
    before = sorted(p.name for p in target.parent.iterdir())
    with pytest.raises(SpecError, match="run|qlora|holds other files"):
        write_training_script(source, target)
    assert sorted(p.name for p in target.parent.iterdir()) == before
    assert not (target / CONFIG_FILE).exists()


def _model_with_its_own_code(folder: Path, tiny_model_dir: Path) -> Path:
    """The tiny llama under a model type of its own, whose classes ship as code in the folder
    (``auto_map``), as remote-code checkpoints on the hub do."""
    shutil.copytree(tiny_model_dir, folder)
    (folder / "configuration_own.py").write_text(
        "from transformers import LlamaConfig\n\n\n"
        "class OwnConfig(LlamaConfig):\n    model_type = 'own_llama'\n"
    )
    (folder / "modeling_own.py").write_text(
        "from transformers import LlamaForCausalLM\n\n"
        "from .configuration_own import OwnConfig\n\n\n"
        "class OwnForCausalLM(LlamaForCausalLM):\n    config_class = OwnConfig\n"
    )
    config = json.loads((folder / "config.json").read_text())
    config.update(
        model_type="own_llama",
        architectures=["OwnForCausalLM"],
        auto_map={
            "AutoConfig": "configuration_own.OwnConfig",
            "AutoModelForCausalLM": "modeling_own.OwnForCausalLM",
        },
    )
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_the_script_trains_the_model_the_session_loaded_from_any_working_folder(
    tmp_path, tiny_model_dir, monkeypatch
):
    """A relative model folder is kept as the folder it named when loaded (another working
    folder may hold another model of that name), and trust_remote_code goes with it."""
    import workbench as wb
    from workbench.models.tiny import build_tiny_model
    from workbench.train.store import read_meta

    own = _model_with_its_own_code(tmp_path / "models" / "tiny", tiny_model_dir)
    monkeypatch.chdir(tmp_path / "models")
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model("tiny", trust_remote_code=True)
    s.load_data([{"question": f"q{i}?", "answer": f"a{i}"} for i in range(8)], validation=None)
    run = s.train(max_steps=1, batch_size=4, lora=wb.LoRA(r=4, dropout=0.0))
    assert read_meta(run.run_dir)["model_spec"]["spec"] == str(own)
    build_tiny_model(tmp_path / "elsewhere" / "tiny", "gpt2")  # same name, another model
    monkeypatch.chdir(tmp_path / "elsewhere")
    script = s.to_script(tmp_path / "script")
    config = json.loads((script / CONFIG_FILE).read_text())
    assert (config["model"], config["trust_remote_code"]) == (str(own), True)
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(_without_workbench(tmp_path))}
    command = [sys.executable, str(script / "train.py"), "--cpu", "--max-steps", "1"]
    done = subprocess.run(
        [*command, "--out", str(out)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [
        1
    ]


def test_a_forked_run_is_refused_not_trained_from_scratch(tiny_model_dir, tmp_path):
    # The script trains one run from step 0 with one set of settings; a fork changed them
    # at a later step, so its script would train something else without a word.
    from workbench import Session

    s = Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
    parent = s.train(max_steps=4, save_every=2, keep_checkpoints="all", wait=False)
    assert parent.wait().state.value == "finished"
    fork = parent.fork(step=2, lr=1e-3, wait=True)
    assert s.run is fork
    with pytest.raises(SpecError, match=r"was forked from run-001 at step 2 with lr=0.001"):
        s.to_script("script")
    assert not (s.run_dir / "script").exists()
    parent_script = write_training_script(parent.run_dir, tmp_path / "parent-script")
    assert (parent_script / CONFIG_FILE).is_file()  # a run trained from the start still is


def test_a_handed_runs_script_runs_its_models_code_only_when_the_caller_says_so(
    tmp_path, tiny_model_dir
):
    # write_training_script copied run.json's trust_remote_code into the script's config, and
    # with fsdp=True read the base's config with it in the user's own kernel.
    import workbench as wb
    from workbench.deploy.script import write_training_script
    from workbench.errors import SpecError

    own = _model_with_its_own_code(tmp_path / "models" / "tiny", tiny_model_dir)
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(own), trust_remote_code=True)
    s.load_data([{"question": f"q{i}?", "answer": f"a{i}"} for i in range(8)], validation=None)
    run = s.train(max_steps=1, batch_size=4)
    with pytest.raises(SpecError, match=r"trust_remote_code=True"):
        write_training_script(run.run_dir, tmp_path / "refused", fsdp=True)
    assert not (tmp_path / "refused").exists()
    folder = write_training_script(run.run_dir, tmp_path / "script", trust_remote_code=True)
    assert json.loads((folder / CONFIG_FILE).read_text())["trust_remote_code"] is True


def test_one_process_reproduces_a_run_with_dropout_step_for_step(tmp_path):
    """GPT-2's config has dropout 0.1 and the LoRA has its own: the script's masks must come
    from the run's RNG state at each step. The 11 rows leave a short step whose filler row
    changed the batch's shape (and so every later mask), and the DataLoader drew its worker
    seed from torch's RNG before the first step."""
    import workbench as wb
    from workbench.models.tiny import build_tiny_model

    model = build_tiny_model(tmp_path / "gpt2", "gpt2")
    assert json.loads((model / "config.json").read_text())["resid_pdrop"] > 0
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(model))
    rows = [{"question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(11)]
    s.load_data(rows, validation=None)
    run = s.train(
        max_steps=4, batch_size=4, grad_accum=2, lr=1e-2, lora=wb.LoRA(dropout=0.1), seed=3
    )
    script, out = s.to_script(tmp_path / "script"), tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(_without_workbench(tmp_path))}
    done = subprocess.run(
        [sys.executable, str(script / "train.py"), "--cpu", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3, 4]
    assert [r["loss"] for r in logged] == pytest.approx(train_losses(run), rel=1e-5)
