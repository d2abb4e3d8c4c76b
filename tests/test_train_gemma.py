"""Gemma 3 270M (the built-in model) trains a few LoRA steps on CPU."""

from __future__ import annotations

import pytest

from workbench.events import EventHub
from workbench.train import LoRA, RunState, TrainSpec, start_run
from workbench.train.checkpoint import latest_checkpoint


@pytest.mark.slow
def test_gemma_trains_a_few_steps_and_checkpoints(gemma_folder, tmp_path):
    from workbench.models.loading import load_model

    loaded = load_model("gemma-3-270m", dtype="float32", device="cpu", on_event=lambda m: None)
    tok = loaded.tokenizer
    rows = {"input_ids": [], "labels": []}
    for i in range(8):
        prompt = tok(f"Question: what is {i} plus {i}?\nAnswer:").input_ids
        answer = [*tok(f" {2 * i}", add_special_tokens=False).input_ids, tok.eos_token_id]
        rows["input_ids"].append(prompt + answer)
        rows["labels"].append([-100] * len(prompt) + answer)
    spec = TrainSpec(max_steps=3, batch_size=4, lr=2e-4, lora=LoRA(r=8), eval_every=3)
    run = start_run(
        loaded.model,
        tok,
        rows,
        rows,
        spec,
        tmp_path / "run",
        EventHub(),
        {"spec": "gemma-3-270m", "quantization": None, "dtype": "float32", "device": "cpu"},
        wait=True,
        probes=["Question: what is 2 plus 2?\nAnswer:"],
    )
    assert run.state is RunState.FINISHED, run.status.error
    losses = [r.loss for r in run.history if r.kind == "train"]
    assert len(losses) == 3 and all(0 < x < 20 for x in losses)
    assert [r.step for r in run.history if r.kind == "eval"] == [3]
    assert latest_checkpoint(run.run_dir).name == "step-00000003"
    assert len(run.probe_history[-1]["outputs"]) == 1
