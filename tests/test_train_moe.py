"""Mixture-of-experts models train with the default LoRA (``target="all-linear"``).

Two shapes of transformers 5 MoE broke peft's "all-linear" at the first forward or at
wrapping: Llama 4's router subclasses ``torch.nn.Linear`` but returns a tuple (``'tuple'
object has no attribute 'dtype'``), and the fused 3D expert weights of Qwen3-MoE, OLMoE and
Mixtral, which peft adapts through a ``ParamWrapper`` that refuses the default dropout
(``lora.ParamWrapper does not work with lora_dropout != 0``). The workbench leaves such
routers out and trains fused experts without dropout, saying so; the notebook's run and the
standalone script share this (``train/core.py``).
"""

from __future__ import annotations

import contextlib
import json
import math

import peft
import pytest
import torch
from packaging.version import Version

from workbench import Session
from workbench.errors import SpecError, WorkbenchWarning
from workbench.models.tiny import build_tiny_model
from workbench.train.checkpoint import latest_checkpoint
from workbench.train.core import linear_routers

ROUTERS = ["model.layers.0.feed_forward.router", "model.layers.1.feed_forward.router"]
# peft 0.18-0.20 leave the fused 3D expert weights frozen under "all-linear"; 0.21 adapts them
PEFT_ADAPTS_FUSED_EXPERTS = Version(peft.__version__) >= Version("0.21")
ROWS = [{"question": f"What is {i} plus {i}?", "answer": f"{2 * i}"} for i in range(16)]


@pytest.fixture(scope="module")
def moe_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {a: build_tiny_model(root / a, a) for a in ("llama4", "qwen3_moe")}


def _trained(folder, tmp_path, steps=4):
    s = Session(tmp_path / "session", verbose=False)
    s.load_model(str(folder))
    s.load_data(ROWS)
    run = s.train(max_steps=steps, lr=5e-3, batch_size=4, wait=True)
    assert run.state.value == "finished", run.status.error
    return s, run


def _saved_adapter_config(run):
    return json.loads(
        (latest_checkpoint(run.run_dir) / "adapter" / "adapter_config.json").read_text()
    )


def _learned(run):
    losses = [r.loss for r in run.history if r.kind == "train"]
    return len(losses) == 4 and all(map(math.isfinite, losses)) and losses[-1] < losses[0]


def test_a_router_that_returns_a_tuple_is_left_out_of_the_adapter(moe_dirs, tmp_path):
    s = Session(tmp_path / "info", verbose=False)
    info = s.load_model(str(moe_dirs["llama4"]))
    assert linear_routers(s.model) == ROUTERS
    assert "router" not in info.lora_targets and "q_proj" in info.lora_targets
    assert info.experts == (
        "4 in every block, all compute every token, one shared; LoRA leaves the experts frozen"
    )
    assert ("experts", info.experts) in info.rows()

    s, run = _trained(moe_dirs["llama4"], tmp_path)
    assert _learned(run)
    names = [name for name, _ in s.model.named_modules()]
    assert not [n for n in names if ".router.lora_" in n]  # the router was not wrapped
    assert [n for n in names if n.endswith("self_attn.q_proj.lora_A")]  # the rest was
    saved = _saved_adapter_config(run)
    assert any(name.endswith("q_proj") for name in saved["target_modules"])
    assert sorted(saved["exclude_modules"]) == ROUTERS  # so plain peft loads it the same way


@pytest.mark.skipif(not PEFT_ADAPTS_FUSED_EXPERTS, reason="this peft leaves the experts frozen")
def test_fused_experts_train_without_dropout_and_the_run_says_so(moe_dirs, tmp_path):
    with pytest.warns(WorkbenchWarning, match=r"LoRA dropout 0.05 -> 0: .*qwen3_moe.*gate_up_proj"):
        s, run = _trained(moe_dirs["qwen3_moe"], tmp_path)
    assert _learned(run)
    assert s.model_info().experts == "4 in every block, 2 per token; LoRA adapts each expert"
    notes = [r.message for r in run.history if r.kind == "warning"]
    assert len(notes) == 1 and "fused expert weights" in notes[0]
    meta = json.loads((run.run_dir / "run.json").read_text())
    assert meta["spec"]["lora"]["dropout"] == 0.0  # what it trained with, for resume and fork
    saved = _saved_adapter_config(run)
    assert saved["lora_dropout"] == 0.0
    assert {"gate_up_proj", "down_proj"} <= set(saved["target_parameters"])
    experts = s.model.base_model.model.model.layers[0].mlp.experts
    assert type(experts).__name__ == "ParamWrapper"  # the experts themselves are adapted


def test_a_moe_models_lr_sweep_runs_with_the_default_lora(moe_dirs, tmp_path):
    s = Session(tmp_path / "session", verbose=False)
    s.load_model(str(moe_dirs["qwen3_moe"]))
    s.load_data(ROWS)
    result = s.find_lr(num_steps=6, batch_size=4)
    assert len(result.lrs) == len(result.losses) > 0 and math.isfinite(result.suggested_lr)
    assert not hasattr(s.model, "peft_config")  # the sweep's temporary adapter is gone


@pytest.mark.parametrize("architecture", ["llama4", "qwen3_moe"])
def test_the_exported_adapter_loads_in_plain_peft(moe_dirs, tmp_path, architecture):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    s, _ = _trained(moe_dirs[architecture], tmp_path, steps=2)
    folder = s.export("export/adapter", format="adapter")
    base = AutoModelForCausalLM.from_pretrained(moe_dirs[architecture]).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        untrained = base(input_ids=ids).logits
        plain = PeftModel.from_pretrained(base, folder).eval()
        ours = s.model.eval()(input_ids=ids).logits
        theirs = plain(input_ids=ids).logits
    assert float((ours - untrained).abs().max()) > 1e-4  # training moved it
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)


def test_a_router_named_as_a_target_is_refused_with_the_layers_there_are(moe_dirs, tmp_path):
    s = Session(tmp_path / "session", verbose=False)
    s.load_model(str(moe_dirs["llama4"]))
    s.load_data(ROWS)
    with pytest.raises(SpecError, match=r"LoRA target \['router'\] not found.*'q_proj'"):
        s.train(max_steps=1, lora={"target": ("router",)}, wait=True)


def test_a_qlora_moe_exports_what_it_computes_and_keeps_its_own_weights(moe_dirs, tmp_path):
    # A 4-bit base whose adapter also covers float weights (the fused experts, the router's
    # weight): those merge with peft's arithmetic, the 4-bit layers are dequantized.
    from transformers import AutoModelForCausalLM

    s = Session(tmp_path / "session", verbose=False)
    s.load_model(str(moe_dirs["qwen3_moe"]), quantization="4bit")
    s.load_data(ROWS)
    said = pytest.warns(WorkbenchWarning, match="fused expert weights")
    with said if PEFT_ADAPTS_FUSED_EXPERTS else contextlib.nullcontext():
        run = s.train(method="qlora", max_steps=3, lr=5e-3, batch_size=4, wait=True)
    assert run.state.value == "finished", run.status.error
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        before = s.model.eval()(input_ids=ids).logits
        folder = s.export("export/merged")
        after = s.model(input_ids=ids).logits
        exported = AutoModelForCausalLM.from_pretrained(folder).eval()(input_ids=ids).logits
    assert torch.equal(before, after)  # the session's model is as it was, bit for bit
    torch.testing.assert_close(exported, before, rtol=1e-4, atol=1e-5)
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())


def test_dora_on_fused_experts_is_refused_before_anything_starts(moe_dirs, tmp_path):
    # it warned it was setting dropout to 0 to go ahead, then died in peft with
    # "lora.ParamWrapper does not work with use_dora=True"
    s = Session(tmp_path / "session", verbose=False)
    s.load_model(str(moe_dirs["qwen3_moe"]))
    s.load_data(ROWS)
    if not PEFT_ADAPTS_FUSED_EXPERTS:  # the experts stay frozen: DoRA goes on the rest
        assert s.train(max_steps=1, lora={"use_dora": True}, wait=True).state.value == "finished"
        return
    with pytest.raises(SpecError, match=r"use_dora=True: peft cannot put DoRA on qwen3_moe"):
        s.train(max_steps=1, lora={"use_dora": True}, wait=True)
    assert not list((tmp_path / "session").glob("runs/run-*"))
    attention = {"use_dora": True, "target": ("q_proj", "v_proj")}  # the way out it names
    assert s.train(max_steps=1, lora=attention, wait=True).state.value == "finished"


@pytest.mark.parametrize("quantization", [None, "4bit", "8bit"])
def test_linear_layers_peft_leaves_without_an_adapter_are_named(tmp_path, quantization):
    # Qwen3-MoE with a dense first block: peft 0.21 maps "all-linear"'s MLP names onto the
    # fused experts and dropped the dense MLP's three linear layers: untrained, unsaid. In
    # 4 and 8 bits they are bitsandbytes layers, not nn.Linear: the warning went missing.
    # peft 0.22 adapts them: then nothing is said, and the model info says so too.
    import warnings

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    import workbench as wb
    from workbench.models.tiny import build_tiny_model

    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path / "tiny"))
    config = AutoConfig.for_model(
        "qwen3_moe", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, mlp_only_layers=[0],
    )  # fmt: skip
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "moe")
    tokenizer.save_pretrained(tmp_path / "moe")
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tmp_path / "moe"), quantization=quantization)
    s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = s.train(max_steps=2, wait=True)
    said = [str(w.message) for w in caught if "train no adapter" in str(w.message)]
    dense_mlp = [f"model.layers.0.mlp.{name}" for name in ("gate_proj", "up_proj", "down_proj")]
    trained = {n for n, p in s.model.named_parameters() if p.requires_grad}
    adapted = [name for name in dense_mlp if any(f"{name}.lora_" in n for n in trained)]
    experts_said = s.model_info().experts
    experts_adapted = any(".mlp.experts." in n for n in trained)  # peft >= 0.21 adapts them
    assert ("LoRA adapts each expert" in experts_said) == experts_adapted
    frozen_said = "peft leaves the dense blocks' MLP without LoRA" in experts_said
    if adapted == dense_mlp:  # peft >= 0.22
        assert said == [] and not frozen_said
        return
    assert adapted == [] and frozen_said
    assert len(said) == 1 and said[0].startswith(
        "3 linear layers of this qwen3_moe model train no adapter and keep the base's weights: "
        + ", ".join(dense_mlp)
        + "."
    )
    assert [r.message for r in run.history if r.kind == "warning"].count(said[0]) == 1


def test_layers_a_named_target_leaves_out_are_not_warned_about(tmp_path, tiny_model_dir):
    import warnings

    import workbench as wb

    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
    with warnings.catch_warnings():
        warnings.simplefilter("error", wb.WorkbenchWarning)
        s.train(lora=wb.LoRA(r=8, target=["q_proj"]), max_steps=1)


@pytest.mark.parametrize(
    "model_type, changes",
    [
        ("qwen3_moe", dict(mlp_only_layers=[0])),  # a dense first block
        ("deepseek_v3", dict(first_k_dense_replace=1, n_shared_experts=1)),  # and shared
        ("qwen2_moe", {}),  # a shared expert in every block
        ("mixtral", {}),  # experts only
    ],
)
def test_the_linears_peft_moves_to_the_experts_are_foretold_on_the_meta_device(model_type, changes):
    """What the memory facts read from a model built on the meta device is what the real
    peft model leaves without an adapter, whichever peft is installed."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from workbench.models.catalog import _built_on_meta
    from workbench.train.core import linears_moved_to_experts, linears_without_adapter

    config = AutoConfig.for_model(
        model_type, vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, **changes,
    )  # fmt: skip
    lora = LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM")
    foretold = linears_moved_to_experts(_built_on_meta(config), lora)
    left = linears_without_adapter(get_peft_model(AutoModelForCausalLM.from_config(config), lora))
    assert foretold == sorted({name.rsplit(".", 1)[-1] for name in left})
