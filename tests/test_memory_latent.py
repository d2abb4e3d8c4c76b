"""Memory estimates of models with latent attention (DeepSeek's MLA: DeepSeek-V2/V3,
MiniCPM3, GLM-4.7-Flash, Youtu-LLM) and of expert layouts named by per-block lists.

Their attention was read as q, k, v and o projections of ``heads x head_dim``: DeepSeek-V2
without a query latent and MiniCPM3 were refused (blocks off by 20-25%), GLM-4.7-Flash's
``mlp_layer_types`` was not read (every block counted with experts: 1.4x), ERNIE 4.5's
first dense block, shared experts and six experts per token neither (1.36x the weights,
a sixth of the experts' activations).
"""

from __future__ import annotations

import pytest
import torch
from memory_checks import estimate_error, saved_growth
from peft import LoraConfig
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import workbench as wb
from workbench.models.catalog import LatentAttention, facts_from_config, matched_to_model
from workbench.models.tiny import build_model_from_config
from workbench.train.core import make_trainable

LATENT = dict(
    hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4,
    kv_lora_rank=32, q_lora_rank=48, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
    max_position_embeddings=512, vocab_size=512,
)  # fmt: skip
EXPERTS = dict(moe_intermediate_size=32, n_routed_experts=4, num_experts_per_tok=2,
               n_shared_experts=1)  # fmt: skip
CONFIGS = {
    # queries straight from the hidden state
    "deepseek_v2": dict(LATENT, **EXPERTS, q_lora_rank=None, first_k_dense_replace=1),
    "deepseek_v3": dict(LATENT, **EXPERTS, first_k_dense_replace=1, n_group=1, topk_group=1),
    "minicpm3": LATENT,
    "glm4_moe_lite": dict(LATENT, **EXPERTS, first_k_dense_replace=1),  # as mlp_layer_types
    "youtu": LATENT,
}


def _config(model_type: str, layers: int = 2, **changes):
    return AutoConfig.for_model(
        model_type, num_hidden_layers=layers, **{**CONFIGS[model_type], **changes}
    )


@pytest.mark.parametrize("model_type", list(CONFIGS))
def test_latent_attention_is_read_as_the_model_builds_it(model_type):
    """Weights, LoRA adapter and Linear layers per block: exactly the model's, whichever peft
    is installed. peft 0.21 adapts no MLP Linear layer where it adapts the experts (it maps
    "all-linear" onto them by the names gate_proj, up_proj, down_proj); 0.22 adapts the
    shared experts and the dense first block's MLP too."""
    config = _config(model_type)
    facts = facts_from_config(config)
    assert isinstance(facts.latent_attention, LatentAttention)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    assert facts.params == sum(p.numel() for p in model.parameters())
    assert matched_to_model(facts, config).other_params == 0
    block = model.model.layers[0].self_attn
    linear = [m for m in block.modules() if isinstance(m, torch.nn.Linear)]
    shapes = facts.latent_attention.linear_shapes(facts.hidden, facts.heads)
    assert sorted(shapes) == sorted((m.in_features, m.out_features) for m in linear)
    lora = make_trainable(model, LoraConfig(r=8, target_modules="all-linear", lora_dropout=0.0))
    assert facts.lora_params(8) == sum(p.numel() for p in lora.parameters() if p.requires_grad)


def test_glm_s_dense_first_block_is_read_from_its_mlp_layer_types():
    facts = facts_from_config(_config("glm4_moe_lite", layers=3))
    assert facts.experts.layers == 2


@pytest.mark.parametrize(
    ("model_type", "changes"),
    [
        ("deepseek_v3", {}),  # query/key 24 wide, values 16: SDPA's math path
        ("deepseek_v3", dict(qk_nope_head_dim=8, v_head_dim=16)),  # equal: its fused kernel
        ("deepseek_v2", dict(num_attention_heads=8, num_key_value_heads=8)),
        ("minicpm3", {}),
    ],
)
def test_saved_activations_per_block_as_the_model_saves(model_type, changes):
    """A block added grows the estimate as much as the tensors autograd saves, within 5%
    (measured within 0.3%), at two sequence lengths: where the query/key and value widths
    differ, SDPA's math path keeps the attention weights, which grow with it."""
    for seq_len in (128, 256):
        one, two = _config(model_type, 1, **changes), _config(model_type, 2, **changes)
        for config in (one, two):
            config.first_k_dense_replace = 2  # dense blocks: the attention is what is tested
        measured, estimated = saved_growth(one, two, seq_len=seq_len)
        assert estimated == pytest.approx(measured, rel=0.05)


@pytest.fixture(scope="module")
def latent_folder(tmp_path_factory, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = {k: getattr(tokenizer, k) for k in ("pad_token_id", "bos_token_id", "eos_token_id")}
    shape = dict(
        hidden_size=384, intermediate_size=768, num_attention_heads=6, num_key_value_heads=6,
        q_lora_rank=192, kv_lora_rank=128, qk_nope_head_dim=32, qk_rope_head_dim=16,
        v_head_dim=32, moe_intermediate_size=192, n_routed_experts=8, vocab_size=len(tokenizer),
    )  # fmt: skip
    config = _config("deepseek_v3", 4, **ids, **shape)
    return build_model_from_config(tmp_path_factory.mktemp("latent") / "deepseek", config)


@pytest.mark.parametrize("quantization", [None, "4bit"])
def test_estimate_within_25_percent_of_measured_peak(latent_folder, quantization):
    settings = dict(quantization=quantization, lora_r=8, seq_len=256, batch_size=4)
    assert abs(estimate_error(latent_folder, **settings)) < 0.25


def test_model_info_names_the_latents_and_the_estimate_is_given(tmp_path, latent_folder):
    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(latent_folder))
    info = s.model_info()
    assert info.attention == (
        "latent (MLA): keys and values from a 128-wide latent, queries from a 192-wide one"
    )
    assert ("attention", info.attention) in info.rows()
    s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)], validation=None)
    s.train(max_steps=1, batch_size=2, wait=True)
    adapted = {n for n, p in s.model.named_parameters() if p.requires_grad}
    beside = [n for n in adapted if ".shared_experts." in n or ".layers.0.mlp." in n]
    if not any(".mlp.experts." in n for n in adapted):  # peft 0.18-0.20: experts frozen
        assert info.experts.endswith("LoRA leaves the experts frozen")
    elif beside:  # peft >= 0.22 adapts the linear MLPs beside the experts
        assert info.experts.endswith("LoRA adapts each expert")
        assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in beside} == {
            "gate_proj", "up_proj", "down_proj"
        }  # fmt: skip
    else:  # peft 0.21 leaves them frozen
        assert info.experts.endswith(
            "LoRA adapts each expert "
            "(peft leaves the shared expert and dense blocks' MLP without LoRA)"
        )
    assert s.estimate_memory().weights > 4 * info.parameters  # + the fused experts' pages


def test_ernie_s_expert_blocks_shared_experts_and_routing_are_read():
    """ERNIE 4.5 names its expert blocks by start, end and interval, its shared experts by
    count, its experts per token ``moe_k``."""
    config = AutoConfig.for_model(
        "ernie4_5_moe", num_hidden_layers=6, hidden_size=64, intermediate_size=128,
        moe_intermediate_size=32, num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
        moe_num_experts=4, moe_k=3, moe_num_shared_experts=2, moe_layer_start_index=1,
        moe_layer_end_index=4, moe_layer_interval=2,
    )  # fmt: skip
    facts = facts_from_config(config)
    model = AutoModelForCausalLM.from_config(config)
    with_experts = [
        i for i, block in enumerate(model.model.layers) if hasattr(block.mlp, "experts")
    ]
    assert with_experts == [1, 3]
    assert facts.experts.layers == 2
    assert (facts.experts.per_token, facts.experts.shared_intermediate) == (3, 64)
    assert facts.params == pytest.approx(sum(p.numel() for p in model.parameters()), rel=0.01)
