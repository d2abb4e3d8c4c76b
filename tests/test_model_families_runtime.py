"""Families whose config changes what a forward computes or how long a row may be: RWKV's
in-place rescaling on eval forwards, MPT's context named ``max_seq_len``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import transformers
from safetensors.torch import load_file

import workbench as wb
from workbench.data.context import model_context
from workbench.errors import SpecError
from workbench.models.loading import load_model
from workbench.models.tiny import build_model_from_config

PROMPT = "What is 3 plus 3?"
# transformers divides these weights of block b by 2 ** (b // rescale_every) on eval forwards
RESCALED = ("attention.output.weight", "feed_forward.value.weight")


@pytest.fixture(scope="module")
def rwkv_dir(tmp_path_factory):
    """A 2-block RWKV that rescales after every block (real RWKV-4 configs: every 6th)."""
    config = transformers.RwkvConfig(
        hidden_size=64,
        num_hidden_layers=2,
        attention_hidden_size=64,
        intermediate_size=128,
        context_length=512,
        rescale_every=1,
    )
    return build_model_from_config(tmp_path_factory.mktemp("models") / "rwkv", config)


@pytest.fixture(scope="module")
def mpt_dir(tmp_path_factory):
    """A 2-block MPT (ALiBi positions) whose context is ``max_seq_len=128``."""
    config = transformers.MptConfig(d_model=64, n_layers=2, n_heads=4, max_seq_len=128)
    return build_model_from_config(tmp_path_factory.mktemp("models") / "mpt", config)


def _logits(model, tokenizer, text=PROMPT, training=False):
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    model.train(training)
    with torch.no_grad():
        logits = model(input_ids=ids.to(model.device)).logits[0].float().cpu()
    model.eval()
    return logits


def _rescaled_weights(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.endswith(RESCALED)}


def test_rwkv_eval_forwards_leave_the_weights_as_loaded(rwkv_dir):
    events = []
    loaded = load_model(str(rwkv_dir), on_event=events.append)
    model, tokenizer = loaded.model, loaded.tokenizer
    first = _logits(model, tokenizer)
    assert torch.equal(_logits(model, tokenizer), first)
    assert torch.equal(_logits(model, tokenizer, training=True), first)
    source = _rescaled_weights(load_file(rwkv_dir / "model.safetensors"))
    now = _rescaled_weights(model.state_dict())
    assert source.keys() == now.keys() and len(source) == 4
    assert all(torch.equal(now[k].cpu(), source[k]) for k in source)
    assert [e for e in events if "rescale_every" in e] == [
        "set rescale_every=1 to 0: transformers would divide weights in place on each "
        "evaluation (same outputs without it)"
    ]


def test_rwkv_without_rescaling_computes_what_transformers_rescaled_eval_does(rwkv_dir):
    loaded = load_model(str(rwkv_dir), on_event=len)
    reference = transformers.AutoModelForCausalLM.from_pretrained(rwkv_dir)
    ours = _logits(loaded.model, loaded.tokenizer)
    rescaled = _logits(reference, loaded.tokenizer)
    assert torch.equal(ours, _logits(reference, loaded.tokenizer, training=True))
    # The halved residual meets ln_out's fixed epsilon (1e-5): 2e-4 apart on this tiny model.
    assert torch.allclose(ours, rescaled, atol=1e-3)


def test_rwkv_merged_export_gives_the_sessions_logits(rwkv_dir, tmp_path):
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(rwkv_dir))
    s.generate(PROMPT, max_new_tokens=4)  # an eval forward before the export
    folder = s.export("export/merged")
    source = _rescaled_weights(load_file(rwkv_dir / "model.safetensors"))
    exported = _rescaled_weights(load_file(folder / "model.safetensors"))
    assert all(torch.equal(exported[k], source[k]) for k in source)
    ids = s.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    code = (
        "import json, sys, torch; from transformers import AutoModelForCausalLM as A; "
        "m = A.from_pretrained(sys.argv[1]).eval(); "
        "print(json.dumps(m(input_ids=torch.tensor([json.loads(sys.argv[2])])).logits[0].tolist()))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(folder), json.dumps(ids)],
        capture_output=True,
        text=True,
        check=True,
    )
    theirs = torch.tensor(json.loads(done.stdout))
    assert (theirs - _logits(s.model, s.tokenizer)).abs().max() < 1e-4


def test_rwkv_with_lora_evaluates_the_model_it_trains(rwkv_dir, tmp_path):
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(rwkv_dir))
    assert {"output", "value"} <= set(s.model_info().lora_targets)
    s.load_data([{"question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(12)])
    run = s.train(max_steps=3, wait=True, lr=1e-2, batch_size=4, lora=wb.LoRA(dropout=0.0))
    assert run.state == "finished"
    text = f"{PROMPT} 6"
    training = _logits(s.model, s.tokenizer, text, training=True)
    assert torch.equal(_logits(s.model, s.tokenizer, text), training)
    s.merge()
    assert (_logits(s.model, s.tokenizer, text) - training).abs().max() < 1e-5


def test_rwkv_in_4bit_generates_after_training(rwkv_dir, tmp_path):
    # transformers re-quantized the divided 4-bit weights by assigning a parameter that
    # exists: a KeyError at the first eval forward after LoRA was attached.
    s = wb.Session(tmp_path / "s", verbose=False)
    assert s.load_model(str(rwkv_dir), quantization="4bit").quantization == "4bit"
    s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
    assert s.train(max_steps=1, wait=True).state == "finished"
    assert isinstance(s.generate("Hello", max_new_tokens=4), str)


@pytest.mark.parametrize(
    ("config", "context"),
    [
        (transformers.MptConfig(max_seq_len=128), 128),
        (transformers.DbrxConfig(max_seq_len=256), 256),  # max_position_embeddings maps to it
        (transformers.GPT2Config(n_positions=64), 64),
    ],
)
def test_model_context_reads_max_seq_len(config, context):
    assert model_context(config) == context


def test_model_info_shows_the_context_the_data_checks_use(mpt_dir, tmp_path):
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(mpt_dir))
    assert s.model_info().context_length == 128 == model_context(s.model.config)


def test_mpt_refuses_a_prompt_past_its_context_as_gpt2_does(mpt_dir, tmp_path):
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(mpt_dir))
    with pytest.raises(SpecError, match="past the model's context of 128 tokens"):
        s.generate("the quick brown fox " * 40, max_new_tokens=16)


def test_mpt_caps_training_rows_to_its_context_and_trains(mpt_dir, tmp_path):
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(mpt_dir))
    rows = [{"question": f"q{i}", "answer": "jumps over the lazy dog " * 40} for i in range(8)]
    report = s.load_data(rows, validation=0)
    assert report.max_length == 128 and report.context == 128
    assert max(len(ids) for ids in s.data.train["input_ids"]) == 128
    assert s.train(max_steps=1, wait=True, batch_size=4).state == "finished"
