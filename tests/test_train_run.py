"""Training runs on the tiny model: learning, pause/resume, stop, guards, checkpoints."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from train_fixtures import toy_dataset
from train_helpers import Recorder, fresh, toy_run, train_losses

from workbench.events import EventHub
from workbench.models.generation import generate_text
from workbench.train import LoRA, RunState, TrainSpec
from workbench.train.checkpoint import latest_checkpoint

SPEC = TrainSpec(max_steps=30, lr=5e-3, batch_size=8, eval_every=10, save_every=10, seed=3)


def test_loss_falls_on_a_learnable_toy_task(tiny_model_dir, tmp_path):
    spec = TrainSpec(max_steps=60, lr=5e-3, batch_size=8, eval_every=20, save_every=20)
    run = toy_run(tiny_model_dir, tmp_path / "run", spec, probes=["4 2 cat =>"])
    losses = train_losses(run)
    assert run.state is RunState.FINISHED
    assert [r.step for r in run.history if r.kind == "train"] == list(range(1, 61))
    assert losses[0] > 4.0 and sum(losses[-5:]) / 5 < 0.1
    evals = [r.eval_loss for r in run.history if r.kind == "eval"]
    assert len(evals) == 3 and evals[-1] < 0.2
    assert run.probe_history[-1]["outputs"] == [" red"]
    assert latest_checkpoint(run.run_dir).name == "step-00000060"
    assert (latest_checkpoint(run.run_dir) / "adapter" / "adapter_model.safetensors").is_file()
    lines = (run.run_dir / "history.jsonl").read_text().splitlines()
    assert len(lines) == len(run.history) == 63


def test_pause_generate_resume_equals_an_uninterrupted_run(tiny_model_dir, tmp_path):
    straight = toy_run(tiny_model_dir, tmp_path / "a", SPEC)
    events, reached, gate = EventHub(), threading.Event(), threading.Event()
    recorder = Recorder(events)

    def hold(payload):
        if payload.record.kind == "train" and payload.record.step == 12:
            reached.set()
            gate.wait(30)

    events.on("train_log", hold)
    run = toy_run(tiny_model_dir, tmp_path / "b", SPEC, events=events, wait=False)
    assert reached.wait(30)
    run.pause(wait=False)
    gate.set()
    assert run.pause(timeout=30).state is RunState.PAUSED
    tokenizer = run.tokenizer
    generate_text(run.model, tokenizer, ["3 cat =>"], max_new_tokens=4, do_sample=True)
    run.evaluate_now()
    run.save_now()
    run.resume()
    assert run.wait(60).state is RunState.FINISHED
    assert recorder.states == ["running", "paused", "running", "finished"]
    assert train_losses(run) == pytest.approx(train_losses(straight), rel=1e-5, abs=1e-7)
    paused_evals = [r.step for r in run.history if r.kind == "eval"]
    assert paused_evals == [10, 12, 20, 30]
    assert (run.run_dir / "checkpoints" / "step-00000030").is_dir()


def test_stop_finishes_the_step_saves_and_can_continue(tiny_model_dir, tmp_path):
    events, reached, gate = EventHub(), threading.Event(), threading.Event()
    recorder = Recorder(events)

    def hold(payload):
        if payload.record.step == 5 and not gate.is_set():
            reached.set()
            gate.wait(30)

    events.on("train_log", hold)
    run = toy_run(tiny_model_dir, tmp_path / "run", SPEC, events=events, wait=False)
    assert reached.wait(30)
    assert run.stop().state is RunState.STOPPING
    gate.set()
    status = run.wait(60)
    assert (status.state, status.step, status.message) == (
        RunState.STOPPED,
        5,
        "stopped by the user",
    )
    assert latest_checkpoint(run.run_dir).name == "step-00000005"
    run.resume()
    assert run.wait(60).state is RunState.FINISHED
    assert recorder.states == ["running", "stopping", "stopped", "running", "finished"]
    assert [r.step for r in run.history if r.kind == "train"] == list(range(1, 31))


def test_nan_loss_fails_the_run_and_keeps_the_last_good_checkpoint(tiny_model_dir, tmp_path):
    loaded = fresh(tiny_model_dir)
    calls = {"n": 0}

    def poison(module, inputs, output):
        # Real data, real model: the 7th training forward pass produces NaN activations.
        if module.training:
            calls["n"] += 1
            if calls["n"] == 7:
                return output * float("nan")
        return output

    loaded.model.model.norm.register_forward_hook(poison)
    spec = TrainSpec(max_steps=20, lr=5e-3, batch_size=8, save_every=3, eval_every=100)
    run = toy_run(tiny_model_dir, tmp_path / "run", spec, loaded=loaded)
    assert run.state is RunState.FAILED
    assert run.status.error.startswith("the training loss became nan at step 7")
    assert run.status.step == 6
    assert latest_checkpoint(run.run_dir).name == "step-00000006"
    assert all(torch.isfinite(p).all() for p in run.model.parameters())
    assert json.loads((run.run_dir / "status.json").read_text())["state"] == "failed"


def test_exploding_gradient_fails_before_the_update(tiny_model_dir, tmp_path):
    # A limit far below the toy task's real gradient norms (~5) makes step 3 "explode".
    spec = TrainSpec(max_steps=20, lr=5e-3, batch_size=8, save_every=2, grad_norm_limit=1e-3)
    loaded = fresh(tiny_model_dir)
    run = toy_run(tiny_model_dir, tmp_path / "run", spec, validation=False, loaded=loaded)
    assert run.state is RunState.FAILED
    assert run.status.error.startswith("the gradient norm exploded to ")
    assert "at step 1 (grad_norm_limit=0.001); the step was not applied" in run.status.error
    assert latest_checkpoint(run.run_dir) is None
    assert all(float(p.abs().max()) == 0 for n, p in run.model.named_parameters() if "lora_B" in n)


def test_early_stopping_when_eval_loss_rises(tiny_model_dir, tmp_path):
    loaded = fresh(tiny_model_dir)
    train = toy_dataset(loaded.tokenizer, 64, seed=0)
    # Validation answers pair each key with another colour: learning the task raises its loss.
    val = toy_dataset(loaded.tokenizer, 16, seed=1)
    swapped = {" red": " green", " green": " blue", " blue": " apple", " apple": " red"}
    tok = loaded.tokenizer

    def swap(row):
        prompt_len = sum(1 for x in row["labels"] if x == -100)
        answer = tok.decode(row["input_ids"][prompt_len:-1])
        ids = [*row["input_ids"][:prompt_len], *tok(swapped[answer]).input_ids, tok.eos_token_id]
        return {
            "input_ids": ids,
            "labels": [-100] * prompt_len + ids[prompt_len:],
            "attention_mask": [1] * len(ids),
        }

    val = val.map(swap)
    spec = TrainSpec(max_steps=60, lr=5e-3, batch_size=8, eval_every=5, early_stopping=2)
    from workbench.train import start_run

    run = start_run(
        loaded.model,
        tok,
        train,
        val,
        spec,
        tmp_path / "run",
        EventHub(),
        {"spec": str(tiny_model_dir)},
        wait=True,
    )
    evals = [r.eval_loss for r in run.history if r.kind == "eval"]
    best = min(evals)
    assert run.state is RunState.STOPPED
    assert run.status.message.startswith("early stopping: eval loss did not improve for 2")
    assert run.status.step < 60 and evals[-3] == best and evals[-1] > best and evals[-2] > best
    assert latest_checkpoint(run.run_dir).name == f"step-{run.status.step:08d}"


def test_examples_without_trained_tokens_are_skipped_with_a_warning(tiny_model_dir, tmp_path):
    loaded = fresh(tiny_model_dir)
    train = toy_dataset(loaded.tokenizer, 20, seed=0, prompt_only_rows=3)
    from workbench.errors import WorkbenchWarning
    from workbench.events import EventHub as Hub
    from workbench.train import start_run

    with pytest.warns(WorkbenchWarning, match=r"skipped 3 training example\(s\) with no trained"):
        run = start_run(
            loaded.model,
            loaded.tokenizer,
            train,
            None,
            TrainSpec(max_steps=3, batch_size=4),
            tmp_path / "run",
            Hub(),
            {"spec": str(tiny_model_dir)},
            wait=True,
        )
    warning = run.history[0]
    assert (warning.kind, warning.step) == ("warning", 0)
    assert "rows 17, 18, 19" in warning.message
    assert all(r.loss > 0 for r in run.history if r.kind == "train")


@pytest.mark.parametrize(
    "options",
    [
        {"lora": LoRA(r=4, use_dora=True)},
        {"gradient_checkpointing": True, "neftune_alpha": 5.0},
        {"layer_lr_decay": 0.5, "weight_decay": 0.01, "grad_accum": 2, "scheduler": "cosine"},
        {"method": "full", "lr": 1e-4},
        {"lora": LoRA(r=4, target=["q_proj", "v_proj"])},
    ],
)
def test_variants_train_a_few_steps(tiny_model_dir, tmp_path, options):
    spec = TrainSpec(max_steps=4, batch_size=8, eval_every=2, **options)
    run = toy_run(tiny_model_dir, tmp_path / "run", spec)
    assert run.state is RunState.FINISHED, run.status.error
    assert len(train_losses(run)) == 4
    assert all(0 < loss < 20 for loss in train_losses(run))


def test_layer_lr_decay_gives_lower_layers_lower_rates(tiny_model_dir, tmp_path):
    run = toy_run(
        tiny_model_dir,
        tmp_path / "run",
        TrainSpec(max_steps=1, lr=1e-3, layer_lr_decay=0.5, warmup=0, eval_every=5),
    )
    rates = sorted({g["initial_lr"] for g in run.loop.optimizer.param_groups})
    assert rates == pytest.approx([5e-4, 1e-3])


def test_qlora_trains_on_a_4bit_tiny_model(tiny_model_dir, tmp_path):
    loaded = fresh(tiny_model_dir, quantization="4bit")
    spec = TrainSpec(method="qlora", max_steps=4, lr=5e-3, batch_size=8, eval_every=2)
    run = toy_run(tiny_model_dir, tmp_path / "run", spec, loaded=loaded)
    assert run.state is RunState.FINISHED, run.status.error
    assert train_losses(run)[-1] < train_losses(run)[0]
    trained = [n for n, p in run.model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)
    import bitsandbytes as bnb

    assert any(isinstance(m, bnb.nn.Linear4bit) for m in run.model.modules())


@pytest.mark.parametrize("architecture", ["gpt2", "gpt_neox", "llama"])
def test_full_training_decays_only_below_the_top_block(architecture, tmp_path):
    # The final norm and an untied head sit above the top block, at the full rate; the
    # embeddings below block 0. GPT-2's ln_f ("ln_" has no "norm") and any untied lm_head
    # used to get the lowest rate of all, decay ** layers.
    from workbench.models.tiny import build_tiny_model
    from workbench.train.core import optimizer_groups

    loaded = fresh(build_tiny_model(tmp_path / architecture, architecture))
    groups = optimizer_groups(loaded.model, 1e-3, 0.0, 0.5)
    rate = {id(p): g["lr"] for g in groups for p in g["params"]}
    named = dict(loaded.model.named_parameters())
    layers = loaded.model.config.num_hidden_layers
    embedding = loaded.model.get_input_embeddings().weight
    assert rate[id(embedding)] == pytest.approx(1e-3 * 0.5**layers)
    above = [n for n in named if n.startswith(("transformer.ln_f", "model.norm", "gpt_neox.final"))]
    assert above and all(rate[id(named[n])] == pytest.approx(1e-3) for n in above)
    top = [n for n in named if f".{layers - 1}." in n]
    assert top and all(rate[id(named[n])] == pytest.approx(1e-3) for n in top)
    head = loaded.model.get_output_embeddings().weight
    assert (head is embedding) == (architecture != "gpt_neox")  # NeoX's head is its own
    if head is not embedding:
        assert rate[id(head)] == pytest.approx(1e-3)


def test_a_large_validation_split_is_said_and_eval_rows_scores_a_fixed_part(
    tmp_path, tiny_model_dir
):
    # Each evaluation scored every validation row: with 10% of a million rows held out, the
    # evaluations cost many times the steps between them.
    import workbench as wb
    from workbench.errors import WorkbenchWarning

    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(2_540)]
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.load_data(rows[:40], validation=rows[40:])
    with pytest.warns(WorkbenchWarning, match=r"each of the 2 evaluations scores all 2,500 "
                      r"validation rows.*eval_rows=2000"):  # fmt: skip
        s.train(max_steps=2, eval_every=1, batch_size=4, wait=True)
    s.load_model(str(tiny_model_dir))  # a fresh adapter for each run
    part = s.train(max_steps=2, eval_every=1, batch_size=4, eval_rows=10, wait=True)
    s.load_model(str(tiny_model_dir))
    s.load_data(rows[:40], validation=rows[40:50])  # those ten rows alone
    alone = s.train(max_steps=2, eval_every=1, batch_size=4, wait=True)
    evals = [[r.eval_loss for r in run.history if r.kind == "eval"] for run in (part, alone)]
    assert len(evals[0]) == 2 and evals[0] == pytest.approx(evals[1], rel=1e-6)
    assert store_spec(part)["eval_rows"] == 10


def store_spec(run):
    import json

    return json.loads((run.run_dir / "run.json").read_text())["spec"]


def test_grad_accum_trains_the_rows_and_losses_of_the_larger_batch(tiny_model_dir, tmp_path):
    # The out-of-memory hint says batch_size=4 with grad_accum=2 is "the same effective
    # batch": each micro-batch was drawn on its own, so every step trained other rows and
    # the losses differed by up to 0.76.
    lora = LoRA(r=4, dropout=0.0)
    settings = dict(max_steps=6, lr=5e-3, eval_every=100, save_every=100, seed=4, lora=lora)
    big = toy_run(tiny_model_dir, tmp_path / "big", TrainSpec(batch_size=8, **settings), n=48)
    small = TrainSpec(batch_size=4, grad_accum=2, **settings)
    accumulated = toy_run(tiny_model_dir, tmp_path / "small", small, n=48)

    def step_rows(plan, grad_accum, total_micro):
        steps = plan.steps(6, grad_accum, total_micro)
        return [sorted(row for micro in step for row in micro) for step in steps]

    steps = step_rows(big.loop.plan, 1, 6)
    assert step_rows(accumulated.loop.plan, 2, 12) == steps
    assert train_losses(accumulated) == pytest.approx(train_losses(big), abs=2e-5)
    grads = [[r.grad_norm for r in run.history if r.kind == "train"] for run in (big, accumulated)]
    assert grads[1] == pytest.approx(grads[0], rel=1e-4)


def test_a_run_started_before_step_order_resumes_on_its_own_rows(tiny_model_dir, tmp_path):
    from workbench.train.core import epoch_batches
    from workbench.train.store import read_meta, write_meta

    spec = TrainSpec(max_steps=6, lr=5e-3, batch_size=4, grad_accum=2, save_every=3)
    run = toy_run(tiny_model_dir, tmp_path / "run", spec, n=44, wait=False)
    run.wait()
    meta = read_meta(run.run_dir)
    assert meta["batch_order"] == "step" and run.loop.plan.by_step
    del meta["batch_order"]  # as an earlier version wrote it
    write_meta(run.run_dir, meta)
    from workbench.train import resume_run

    resumed = resume_run(
        run.run_dir, model=fresh(tiny_model_dir).model, tokenizer=fresh(tiny_model_dir).tokenizer
    )
    lengths = resumed.loop.train.lengths
    assert resumed.loop.batch_at(0) == epoch_batches(lengths, 4, spec.seed, 0, 2, by_step=False)[0]
    resumed.stop()
    resumed.wait()
