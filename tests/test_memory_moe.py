"""Memory estimates of mixture-of-experts models, against real measured training steps.

A dense model's formula counted a MoE as one MLP of ``intermediate_size`` and came out at
0.3-0.55x the measured peak. The experts now count as weights (in float even when the rest
is 4-bit: they are 3D weights, not Linear layers), as LoRA where peft adapts them, as
activations for the experts each token goes through, and, on CPU, as the checkpoint pages a
load that fuses per-expert weights keeps resident.
"""

from __future__ import annotations

import pytest
import torch
from memory_checks import estimate_error
from peft import LoraConfig
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from workbench.models.catalog import facts_from_config
from workbench.models.memory import estimate_memory
from workbench.train.core import make_trainable

SHAPE = dict(hidden_size=384, num_hidden_layers=4, num_attention_heads=6, num_key_value_heads=2)
# Shapes of three kinds: fused at load and adapted by peft (Qwen3-MoE, with a dense first
# block), stored fused and left frozen (GraniteMoE), every expert computing every token
# beside a shared expert (Llama 4).
CONFIGS = {
    "qwen3_moe": dict(
        SHAPE, head_dim=64, intermediate_size=768, num_experts=16, num_experts_per_tok=4,
        moe_intermediate_size=384, mlp_only_layers=[0],
    ),
    "granitemoe": dict(SHAPE, intermediate_size=384, num_local_experts=12, num_experts_per_tok=2),
    "llama4_text": dict(
        SHAPE, head_dim=64, intermediate_size=256, intermediate_size_mlp=512,
        num_local_experts=8, num_experts_per_tok=1,
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def moe_folders(tmp_path_factory, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = {k: getattr(tokenizer, k) for k in ("pad_token_id", "bos_token_id", "eos_token_id")}
    folders = {}
    for model_type, settings in CONFIGS.items():
        config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), **ids, **settings)
        torch.manual_seed(0)
        folder = tmp_path_factory.mktemp("moe") / model_type
        AutoModelForCausalLM.from_config(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[model_type] = folder
    return folders


@pytest.mark.parametrize("model_type", list(CONFIGS))
def test_weights_and_adapter_are_counted_as_the_model_has_them(moe_folders, model_type):
    config = AutoConfig.from_pretrained(moe_folders[model_type])
    facts = facts_from_config(config)
    model = AutoModelForCausalLM.from_config(config)
    assert facts.params == pytest.approx(sum(p.numel() for p in model.parameters()), rel=1e-3)
    lora = make_trainable(model, LoraConfig(r=8, target_modules="all-linear", lora_dropout=0.0))
    trained = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert facts.lora_params(8) == trained
    experts = facts.experts
    assert (experts.adapted, experts.fused_at_load, experts.all_computed) == {
        "qwen3_moe": (True, True, False),
        "granitemoe": (False, False, False),
        "llama4_text": (False, False, True),
    }[model_type]
    assert experts.layers == (3 if model_type == "qwen3_moe" else 4)


@pytest.mark.parametrize(
    ("model_type", "quantization"),
    [("qwen3_moe", None), ("qwen3_moe", "4bit"), ("granitemoe", None), ("llama4_text", None)],
)
def test_estimate_within_25_percent_of_measured_peak(moe_folders, model_type, quantization):
    settings = dict(quantization=quantization, lora_r=8, seq_len=256, batch_size=4)
    assert abs(estimate_error(moe_folders[model_type], **settings)) < 0.25


def test_a_4bit_base_keeps_its_experts_in_float(moe_folders):
    folder = moe_folders["qwen3_moe"]
    plain = estimate_memory(folder, device="cpu", seq_len=64)
    quantized = estimate_memory(folder, device="cpu", seq_len=64, quantization="4bit")
    facts = facts_from_config(AutoConfig.from_pretrained(folder))
    assert facts.expert_params > 4 * facts.block_linear_params  # most weights are experts
    # Only the Linear layers shrink: the experts stay float32, and on CPU the checkpoint
    # pages read to fuse them stay resident beside them.
    assert quantized.weights > 2 * facts.expert_params * 4
    assert plain.weights - quantized.weights < facts.block_linear_params * 4


def test_fsdp_gathers_a_whole_expert_block(moe_folders):
    folder = moe_folders["qwen3_moe"]
    facts = facts_from_config(AutoConfig.from_pretrained(folder))
    one = estimate_memory(folder, device="cuda", method="full")
    sharded = estimate_memory(folder, device="cuda", method="full", processes=4, fsdp=True)
    gathered = sharded.weights - -(-one.weights // 4)
    per_expert_block = facts.expert_params // facts.experts.layers
    assert gathered >= per_expert_block * 2  # bf16: the block's experts come whole
    assert gathered < 1.2 * facts.largest_block_params * 2


def test_a_moe_config_transformers_does_not_know_still_counts_its_experts(tmp_path):
    import json

    config = {
        "model_type": "someones_moe", "num_hidden_layers": 4, "hidden_size": 256,
        "num_attention_heads": 4, "vocab_size": 1000, "intermediate_size": 512,
        "num_local_experts": 8, "num_experts_per_tok": 2,
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    est = estimate_memory(tmp_path, device="cuda")
    experts = 4 * 8 * 3 * 256 * 512  # layers x experts x (gate, up, down)
    assert est.weights >= experts * 2  # bf16, and frozen: peft cannot be asked of this model


@pytest.mark.parametrize(
    "model_type, changes",
    [
        # a shared expert scaled by its own hidden -> 1 linear gate, which LoRA adapts too
        (
            "qwen2_moe",
            dict(mlp_only_layers=[0], shared_expert_intermediate_size=96, moe_intermediate_size=32),
        ),
        # a dense-width MLP beside the experts of every block, named by no config key
        ("hunyuan_v1_moe", dict(num_experts=4, moe_topk=2)),
    ],
)
def test_the_adapter_counts_what_sits_beside_the_experts(model_type, changes):
    # Found by QA with peft 0.22: qwen2_moe's estimate missed the shared expert's gate
    # (2,080 weights at r=16), HunYuan's the whole shared MLP (27,648), and its facts said
    # it had no shared expert.
    from workbench.train.core import lora_config

    config = AutoConfig.for_model(
        model_type, vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, **changes,
    )  # fmt: skip
    facts = facts_from_config(config)
    torch.manual_seed(0)
    model = make_trainable(
        AutoModelForCausalLM.from_config(config), lora_config(16, 32, 0.0, "all-linear", False)
    )
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert facts.lora_params(16) == trained
    assert "one shared" in facts.experts.describe(facts.layers)


@pytest.mark.parametrize(
    "model_type, stray",
    [
        ("olmoe", dict(num_experts=4, moe_intermediate_size=999)),  # OLMoE sizes by intermediate
        ("llama", dict(num_experts=8, num_experts_per_tok=2)),  # a dense model
        ("mixtral", dict(num_local_experts=4, n_shared_experts=2)),  # no shared expert
    ],
)
def test_keys_a_config_class_does_not_declare_are_not_read_as_experts(model_type, stray):
    # Found by QA: a config.json carrying a key its class does not declare (left over from a
    # conversion script) keeps it as an attribute the model never reads. The facts read it:
    # OLMoE's experts were sized 999 wide, a Llama was counted with 8 experts.
    config = AutoConfig.for_model(
        model_type, vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, **stray,
    )  # fmt: skip
    assert all(getattr(config, key) == value for key, value in stray.items())  # kept
    facts = facts_from_config(config)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    assert facts.params == pytest.approx(sum(p.numel() for p in model.parameters()), rel=2e-2)
    lora = make_trainable(model, LoraConfig(r=8, target_modules="all-linear", lora_dropout=0.0))
    assert facts.lora_params(8) == sum(p.numel() for p in lora.parameters() if p.requires_grad)
    if model_type == "llama":
        assert facts.experts is None
    else:
        assert (facts.experts.intermediate, facts.experts.shared_intermediate) == (128, 0)
