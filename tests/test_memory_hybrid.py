"""Memory estimates of hybrid models, against the models themselves.

LFM2's blocks are mostly gated short convolutions, Granite 4.0-H's and Bamba's mostly Mamba-2
layers, beside a few attention blocks. Counted as attention + MLP in every block, the
estimate came out at 0.69x a tiny Granite 4.0-H's measured training step (its Mamba-2 blocks
save 3.7x what an attention block saves on transformers' torch path), and at 81% of Granite
4.0-H-350M's weights.
"""

from __future__ import annotations

import pytest
import torch
from memory_checks import RUNS_FOR_A_15_PERCENT_BAR, estimate_error, saved_growth
from peft import LoraConfig
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from workbench.errors import SpecError
from workbench.models.catalog import facts_from_config
from workbench.models.info import model_info
from workbench.models.loading import load_model
from workbench.models.tiny import build_tiny_model
from workbench.train.core import make_trainable

SHAPE = dict(hidden_size=384, num_hidden_layers=4, num_attention_heads=6, num_key_value_heads=2)
MAMBA = dict(mamba_n_heads=12, mamba_d_head=64, mamba_expand=2, mamba_d_state=64)
DELTANET = dict(
    linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=64,
    linear_value_head_dim=64,
    layer_types=["linear_attention", "linear_attention", "full_attention", "linear_attention"],
)  # fmt: skip
CONFIGS = {
    "lfm2": ("lfm2", dict(
        SHAPE, intermediate_size=1536, layer_types=["conv", "conv", "full_attention", "conv"],
    )),
    "lfm2_moe": ("lfm2_moe", dict(
        SHAPE, num_hidden_layers=6, intermediate_size=768, moe_intermediate_size=128, num_experts=8,
        num_experts_per_tok=2, num_dense_layers=2,
        layer_types=["conv", "full_attention", "conv", "conv", "full_attention", "conv"],
    )),
    "granite_4_h": ("granitemoehybrid", dict(
        **SHAPE, **MAMBA, num_local_experts=0, shared_intermediate_size=1024, mamba_chunk_size=64,
        layer_types=["mamba", "mamba", "attention", "mamba"],
    )),
    "granite_4_h_experts": ("granitemoehybrid", dict(
        **SHAPE, **MAMBA, num_local_experts=8, num_experts_per_tok=2, intermediate_size=128,
        shared_intermediate_size=512, layer_types=["mamba", "attention", "mamba", "mamba"],
    )),
    "bamba": ("bamba", dict(**SHAPE, **MAMBA, intermediate_size=1024, attn_layer_indices=[1])),
    "qwen3_5": ("qwen3_5_text", dict(**SHAPE, **DELTANET, head_dim=64, intermediate_size=1024)),
    # Mamba-2 beside attention in every block, untied output
    "falcon_h1": ("falcon_h1", dict(
        **SHAPE, **MAMBA, head_dim=64, mamba_d_ssm=768, intermediate_size=1024,
        mamba_chunk_size=64, tie_word_embeddings=False,
    )),
    "falcon_h1_norm": ("falcon_h1", dict(
        **SHAPE, **MAMBA, head_dim=64, mamba_d_ssm=768, intermediate_size=1024,
        mamba_chunk_size=64, mamba_rms_norm=True, mamba_n_groups=2,
    )),
}  # fmt: skip
# Blocks by (experts, attention): LFM2-MoE's first two blocks are dense
BLOCK_KINDS = {
    "lfm2": {(False, False): 3, (False, True): 1},
    "lfm2_moe": {(False, False): 1, (False, True): 1, (True, False): 3, (True, True): 1},
    "granite_4_h": {(False, False): 3, (False, True): 1},
    "granite_4_h_experts": {(True, False): 3, (True, True): 1},
    "bamba": {(False, False): 3, (False, True): 1},
    "qwen3_5": {(False, False): 3, (False, True): 1},
    "falcon_h1": {(False, True): 4},
    "falcon_h1_norm": {(False, True): 4},
}


def _config(name: str, vocab_size: int = 512, **changes):
    model_type, settings = CONFIGS[name]
    return AutoConfig.for_model(model_type, vocab_size=vocab_size, **{**settings, **changes})


@pytest.mark.parametrize("name", list(CONFIGS))
def test_weights_and_adapter_are_counted_as_the_model_has_them(name):
    config = _config(name)
    facts = facts_from_config(config)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    # LFM2's query/key norms (head_dim weights each) are the only weights left uncounted
    assert facts.params == pytest.approx(sum(p.numel() for p in model.parameters()), rel=1e-3)
    lora = make_trainable(model, LoraConfig(r=8, target_modules="all-linear", lora_dropout=0.0))
    assert facts.lora_params(8) == sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert facts.block_kinds() == BLOCK_KINDS[name]


def test_granite_4_h_350m_counts_its_weights():
    """Its shape as its config.json gives it (LFM2-350M's is in test_memory.py): its Mamba-2
    blocks (28 of 32) are bigger than attention ones, so the estimate came 19% short before."""
    config = AutoConfig.for_model(
        "granitemoehybrid", vocab_size=100352, hidden_size=768, num_hidden_layers=32,
        num_attention_heads=12, num_key_value_heads=4, num_local_experts=0,
        shared_intermediate_size=2048, mamba_n_heads=48, mamba_d_head=32, mamba_expand=2,
        mamba_d_state=128, mamba_chunk_size=256,
        layer_types=(["mamba"] * 3 + ["attention"] + ["mamba"] * 4) * 4,
    )  # fmt: skip
    with torch.device("meta"):  # no memory taken
        counted = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    assert facts_from_config(config).params == pytest.approx(counted, rel=1e-4)


@pytest.mark.parametrize(
    ("name", "kind", "other", "changes"),
    [
        ("lfm2", "conv", "full_attention", {}),
        ("lfm2", "full_attention", "conv", {}),
        ("granite_4_h", "mamba", "attention", {}),
        ("granite_4_h", "attention", "mamba", {}),
        # more heads, a bigger state, two groups, longer chunks
        ("granite_4_h", "mamba", "attention", dict(
            mamba_n_heads=24, mamba_d_head=32, mamba_d_state=128, mamba_n_groups=2,
            mamba_chunk_size=128,
        )),
        ("qwen3_5", "linear_attention", "full_attention", {}),
        ("qwen3_5", "full_attention", "linear_attention", {}),
        # more value heads than key heads, narrower heads
        ("qwen3_5", "linear_attention", "full_attention", dict(
            linear_num_value_heads=8, linear_key_head_dim=32, linear_value_head_dim=48,
        )),
    ],
)  # fmt: skip
def test_each_block_kind_saves_what_the_estimate_counts(name, kind, other, changes):
    """Two blocks of ``kind`` added to two of ``other``: the estimate's activations grow as
    much as the tensors autograd saves (counted by its hooks: exact, unlike a process's RSS)."""
    two = _config(name, num_hidden_layers=2, layer_types=[other] * 2, **changes)
    four = _config(name, num_hidden_layers=4, layer_types=[other] * 2 + [kind] * 2, **changes)
    measured, estimated = saved_growth(two, four)
    assert estimated == pytest.approx(measured, rel=0.05)


@pytest.mark.parametrize(
    ("name", "changes"),
    [
        ("falcon_h1", {}),
        ("falcon_h1_norm", {}),
        ("falcon_h1", dict(
            mamba_n_heads=24, mamba_d_head=32, mamba_d_state=128, mamba_n_groups=2,
            mamba_chunk_size=128,
        )),
    ],
)  # fmt: skip
def test_falcon_h1_s_blocks_save_attention_and_mamba_2_together(name, changes):
    """Falcon-H1 runs a Mamba-2 layer beside attention in every block: two more blocks save
    what both save (counted as attention alone, the estimate was 0.16-0.30x of it)."""
    two = _config(name, num_hidden_layers=2, **changes)
    four = _config(name, num_hidden_layers=4, **changes)
    measured, estimated = saved_growth(two, four)
    assert estimated == pytest.approx(measured, rel=0.05)


@pytest.fixture(scope="module")
def hybrid_folders(tmp_path_factory, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = {k: getattr(tokenizer, k) for k in ("pad_token_id", "bos_token_id", "eos_token_id")}
    folders = {}
    for name in ("lfm2", "granite_4_h", "qwen3_5", "falcon_h1"):
        torch.manual_seed(0)
        folder = tmp_path_factory.mktemp("hybrid") / name
        model = AutoModelForCausalLM.from_config(_config(name, len(tokenizer), **ids))
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[name] = folder
    return folders


@pytest.mark.parametrize(
    ("name", "quantization"),
    [
        ("lfm2", None), ("granite_4_h", None), ("granite_4_h", "4bit"), ("qwen3_5", None),
        ("falcon_h1", None), ("falcon_h1", "4bit"),
    ],
)  # fmt: skip
def test_estimate_within_15_percent_of_measured_peak(hybrid_folders, name, quantization):
    settings = dict(quantization=quantization, lora_r=8, seq_len=256, batch_size=4)
    error = estimate_error(hybrid_folders[name], runs=RUNS_FOR_A_15_PERCENT_BAR, **settings)
    assert abs(error) < 0.15


@pytest.mark.parametrize(
    ("architecture", "blocks"),
    [
        ("lfm2", "2 short-convolution, 1 attention"),
        ("granitemoehybrid", "2 Mamba-2, 1 attention"),
        ("falcon_h1", "3 attention + Mamba-2 side by side"),
    ],
)
def test_model_facts_say_which_blocks_attend(tmp_path, architecture, blocks):
    folder = build_tiny_model(tmp_path / architecture, architecture, layers=3)
    info = model_info(load_model(str(folder), on_event=len))
    assert info.blocks == blocks
    assert ("blocks", blocks) in info.rows()
    plain = model_info(load_model(str(build_tiny_model(tmp_path / "llama")), on_event=len))
    assert plain.blocks is None and "blocks" not in dict(plain.rows())


def test_model_facts_name_qwen3_5_s_linear_attention_blocks(hybrid_folders):
    info = model_info(load_model(str(hybrid_folders["qwen3_5"]), on_event=len))
    assert info.blocks == "3 Gated DeltaNet, 1 attention"


@pytest.mark.parametrize(
    ("model_type", "settings", "why", "blocks", "experts"),
    [
        ("nemotron_h", dict(layers_block_type=["mamba", "mlp", "attention", "mlp"]),
         "each of its blocks is a Mamba-2, attention, MLP or experts layer alone",
         "1 linear_attention, 2 mlp, 1 full_attention", None),  # in transformers' words
        ("mamba", {}, "Mamba layers without attention", None, None),
        # Mamba-2 blocks sharing one attention block: counted as attention, 30% under
        ("zamba2", dict(
            num_attention_heads=4, num_key_value_heads=4, n_mamba_heads=8, mamba_headdim=16,
            mamba_d_state=16, intermediate_size=128, chunk_size=16, num_mem_blocks=1,
            layers_block_type=["mamba", "hybrid", "mamba", "hybrid"],
        ), "their 'hybrid', 'linear_attention' blocks would be counted as attention",
         "2 linear_attention, 2 hybrid", None),
        # Mamba (v1) blocks and experts in every other block, which peft does not adapt: the
        # facts table said neither (no experts line: nothing said LoRA leaves them frozen)
        ("jamba", dict(
            num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
            attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
            expert_layer_offset=1, num_experts=4, mamba_d_state=8, mamba_dt_rank=8,
        ), "their 'mamba' blocks would be counted as attention", "2 mamba, 2 attention",
         "4 in 2 of 4 blocks, 2 per token; LoRA leaves the experts frozen"),
    ],
)  # fmt: skip
def test_a_block_layout_the_estimate_does_not_model_is_refused_not_guessed(
    tmp_path, tiny_model_dir, model_type, settings, why, blocks, experts
):
    """Counted as attention + MLP blocks, a tiny Nemotron-H came out at 53M weights with
    experts in every block (it has 139k, and no experts): better no number than that one.
    The model's facts table still says what the config lists: its blocks and experts."""
    import workbench as wb

    config = AutoConfig.for_model(model_type, hidden_size=64, num_hidden_layers=4, **settings)
    with pytest.raises(wb.SpecError, match=f"does not model {model_type} models yet: .*{why}"):
        facts_from_config(config)
    folder = tmp_path / model_type
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config.vocab_size = len(tokenizer)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    with pytest.raises(wb.SpecError, match="does not model"):
        wb.estimate_memory(str(folder), seq_len=64, batch_size=2)
    info = model_info(load_model(str(folder), on_event=len))
    assert (info.blocks, info.experts) == (blocks, experts)


@pytest.mark.parametrize(
    ("model_type", "blocks"),
    [
        ("jamba", "'mamba'"),
        ("qwen3_next", "'linear_attention'"),
        ("recurrent_gemma", "'recurrent'"),
    ],
)
def test_blocks_that_do_not_attend_in_a_family_without_a_mixer_are_refused(model_type, blocks):
    """Their layer types say which blocks do not attend; a family whose mixer the estimate
    does not know is refused rather than counted as attention everywhere."""
    with pytest.raises(SpecError, match=f"does not model {model_type} models yet: .*{blocks}"):
        facts_from_config(AutoConfig.for_model(model_type))
