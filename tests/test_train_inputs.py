"""Bad input gives a clear WorkbenchError and writes nothing; the fast loss equals the full one."""

from __future__ import annotations

import pytest
import torch
from train_fixtures import toy_dataset, toy_rows
from train_helpers import fresh, toy_run

from workbench.errors import DataError, SpecError, WorkbenchError
from workbench.events import EventHub
from workbench.models.loading import load_model
from workbench.models.tiny import build_tiny_model
from workbench.train import LoRA, OutOfMemoryError, TrainSpec, start_run
from workbench.train.batches import Examples, collate
from workbench.train.guards import is_out_of_memory, out_of_memory_error
from workbench.train.loss import token_loss_sum


def _start(loaded, run_dir, spec, train=None, validation=None, probes=None):
    train = toy_dataset(loaded.tokenizer, 16) if train is None else train
    return start_run(
        loaded.model,
        loaded.tokenizer,
        train,
        validation,
        spec,
        run_dir,
        EventHub(),
        {"spec": "x"},
        wait=True,
        probes=probes,
    )


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        (
            TrainSpec(lora=LoRA(target=["q_proj", "attn_out"])),
            SpecError,
            r"LoRA target \['attn_out'\] not found in this model. Its linear layers are "
            r"\['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj'\]",
        ),
        (
            TrainSpec(method="qlora"),
            SpecError,
            r"method='qlora' trains LoRA on a 4-bit base, but this model is not 4-bit: load it "
            r"with load_model\(..., quantization='4bit'\)",
        ),
        (TrainSpec(early_stopping=3), SpecError, r"early_stopping=3 watches the eval loss"),
    ],
)
def test_bad_settings_write_nothing(tiny_model_dir, tmp_path, spec, error, message):
    with pytest.raises(error, match=message):
        _start(fresh(tiny_model_dir), tmp_path / "run", spec)
    assert not (tmp_path / "run").exists()


def test_full_fine_tuning_of_a_quantized_model_is_refused(tiny_model_dir, tmp_path):
    loaded = fresh(tiny_model_dir, quantization="4bit")
    with pytest.raises(SpecError, match=r"method='full' cannot train quantized weights"):
        _start(loaded, tmp_path / "run", TrainSpec(method="full"))
    assert not (tmp_path / "run").exists()


def test_data_problems(tiny_model_dir, tmp_path):
    loaded = fresh(tiny_model_dir)
    with pytest.raises(DataError, match=r"train data has no column \['labels'\]"):
        _start(loaded, tmp_path / "run", TrainSpec(), train={"input_ids": [[1, 2]]})
    all_masked = toy_rows(loaded.tokenizer, 4, prompt_only_rows=4)
    with pytest.raises(DataError, match="no training example has a trained token"):
        _start(loaded, tmp_path / "run", TrainSpec(), train=all_masked)
    with pytest.raises(SpecError, match=r"probes=\[''\] must be a list of non-empty prompt"):
        _start(loaded, tmp_path / "run", TrainSpec(), probes=[""])
    # a validation split whose answers were all cut has no eval loss to stop on: early
    # stopping used to be accepted and then never acted
    with pytest.raises(SpecError, match="no validation example has a trained token"):
        _start(loaded, tmp_path / "run", TrainSpec(early_stopping=1), validation=all_masked)
    assert not (tmp_path / "run").exists()


def test_a_folder_already_holding_a_run_is_refused(tiny_model_dir, tmp_path):
    toy_run(tiny_model_dir, tmp_path / "run", TrainSpec(max_steps=1, batch_size=8))
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    with pytest.raises(
        SpecError,
        match=r"already holds a training run: continue it with "
        r"Session\.resume\(folder\)",
    ):
        toy_run(tiny_model_dir, tmp_path / "run", TrainSpec(max_steps=1))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before


def test_a_model_with_an_adapter_already_is_refused(tiny_model_dir, tmp_path):
    run = toy_run(tiny_model_dir, tmp_path / "a", TrainSpec(max_steps=1, batch_size=8))
    with pytest.raises(SpecError, match="already carries a peft adapter"):
        start_run(
            run.model,
            run.tokenizer,
            toy_dataset(run.tokenizer, 8),
            None,
            TrainSpec(),
            tmp_path / "b",
            EventHub(),
            {},
            wait=True,
        )


def test_out_of_memory_becomes_advice_on_batch_size():
    with pytest.raises(RuntimeError) as caught:
        torch.empty(2**62, dtype=torch.uint8)  # a real allocation failure
    assert is_out_of_memory(caught.value)
    err = out_of_memory_error(caught.value, batch_size=8, grad_accum=2, tokens=4096)
    assert isinstance(err, OutOfMemoryError) and isinstance(err, WorkbenchError)
    assert str(err).startswith(
        "a batch of 8 examples (4096 tokens) did not fit in memory. Try batch_size=4 with "
        "grad_accum=4 (same effective batch), or gradient_checkpointing=True."
    )
    assert "batch_size is already 1" in str(out_of_memory_error(caught.value, 1, 1, 10))


@pytest.mark.parametrize("architecture", ["llama", "gpt2", "gemma3", "qwen2"])
def test_fast_loss_equals_the_full_logits_loss(tmp_path, architecture):
    folder = build_tiny_model(tmp_path / architecture, architecture=architecture)
    loaded = load_model(str(folder), on_event=lambda _m: None)
    rows = toy_rows(loaded.tokenizer, 6, seed=2)
    examples = Examples.from_rows(rows["input_ids"], rows["labels"])
    batch = collate(examples, range(6), pad_id=loaded.tokenizer.pad_token_id)
    fast, n_fast = token_loss_sum(loaded.model, batch, fast=True)
    full, n_full = token_loss_sum(loaded.model, batch, fast=False)
    assert n_fast == n_full == int((batch["labels"][:, 1:] != -100).sum())
    assert float(fast) == pytest.approx(float(full), rel=1e-5)
    # And both equal transformers' own loss on the same padded batch with a mask.
    mask = (torch.arange(batch["input_ids"].shape[1]) < batch["lengths"][:, None]).long()
    reference = loaded.model(
        input_ids=batch["input_ids"], attention_mask=mask, labels=batch["labels"]
    ).loss
    assert float(fast) / n_fast == pytest.approx(float(reference), rel=1e-5)


def test_a_target_given_by_its_full_module_name_adapts_that_layer_alone(tmp_path, tiny_model_dir):
    # peft takes full names; the check refused one as "not found in this model"
    import workbench as wb

    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
    one = "model.layers.0.self_attn.q_proj"
    run = s.train(max_steps=1, batch_size=4, lora={"target": (one,)}, wait=True)
    adapted = sorted({n.split(".lora_")[0] for n, _ in s.model.named_parameters() if "lora_" in n})
    assert run.state.value == "finished" and adapted == [f"base_model.model.{one}"]
    with pytest.raises(wb.SpecError, match=r"LoRA target \['model.layers.9.q_proj'\] not found"):
        s.load_model(str(tiny_model_dir))
        s.train(max_steps=1, lora={"target": ("model.layers.9.q_proj",)}, wait=True)
