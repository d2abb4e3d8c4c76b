"""Memory estimates against real measured training steps, the catalog and the fit table."""

from __future__ import annotations

import pytest
import torch
from memory_checks import RUNS_FOR_A_15_PERCENT_BAR, estimate_error, saved_bytes_per_token

from workbench.errors import SpecError
from workbench.models.catalog import CATALOG, facts_from_config, get_facts, matched_to_model
from workbench.models.memory import FitTable, MemoryEstimate, estimate_memory, fit_table

GiB = 2**30


@pytest.mark.parametrize("quantization", [None, "4bit", "8bit"])
def test_tiny_estimate_within_25_percent_of_measured_peak(tiny_model_dir, quantization):
    settings = dict(quantization=quantization, lora_r=8, seq_len=512, batch_size=4)
    assert abs(estimate_error(tiny_model_dir, **settings)) < 0.25


def test_estimate_parts_add_up_and_display(tiny_model_dir):
    est = estimate_memory(tiny_model_dir, device="cpu", seq_len=64, batch_size=2)
    assert isinstance(est, MemoryEstimate)
    parts = est.weights + est.adapter + est.gradients + est.optimizer + est.activations
    assert est.total == parts + est.overhead
    assert est.dtype == "float32" and est.method == "lora" and est.quantization is None
    assert 0 < est.logits < est.activations
    assert "total" in str(est) and "<table" in est._repr_html_()
    assert est.fits(est.total) and not est.fits(est.total - 1)


def test_html_escapes_model_name():
    facts = get_facts("smollm2-135m")
    evil = type(facts)(**{**facts.__dict__, "name": "<script>alert(1)</script>"})
    html = estimate_memory(evil, device="cpu")._repr_html_()
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_config_folder_and_catalog_agree(tiny_model_dir):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_model_dir)
    from_config = estimate_memory(config, device="cpu")
    from_folder = estimate_memory(tiny_model_dir, device="cpu")
    assert from_config.total == from_folder.total
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    counted = sum(p.numel() for p in model.parameters())
    assert abs(facts_from_config(config).params - counted) / counted < 0.01


def test_gpt2_config_is_read(tiny_gpt2_dir):
    from transformers import GPT2Config

    facts = facts_from_config(GPT2Config())
    assert (facts.layers, facts.hidden, facts.heads, facts.intermediate) == (12, 768, 12, 3072)
    assert not facts.gated_mlp and facts.tied_embeddings
    assert estimate_memory(tiny_gpt2_dir, device="cpu").total > 0


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("gemma-3-270m", 268_098_176),  # counted from the model built from its config
        ("gemma-3-1b", 999_885_952),  # published parameter count
        ("smollm2-135m", 134_515_008),
        ("mistral-7b", 7_241_732_096),
        ("llama-3-8b", 8_030_261_248),
        ("qwen-7b", 7_615_616_512),
    ],
)
def test_catalog_parameter_counts(name, params):
    # Within 0.5%: the count leaves out biases (Qwen's q/k/v) and Gemma's extra norms.
    assert abs(get_facts(name).params - params) / params < 0.005


def test_catalog_sanity():
    required = {
        "gemma-3-270m", "gemma-3-1b", "smollm2-135m", "smollm2-360m", "smollm2-1.7b",
        "qwen2.5-0.5b", "qwen2.5-1.5b", "llama-3.2-1b", "llama-3.2-3b", "phi-3-mini",
        "mistral-7b", "llama-3-8b", "qwen-7b",
    }  # fmt: skip
    assert required <= set(CATALOG)
    for name, facts in CATALOG.items():
        assert facts.name == name and facts.hub_id and facts.license
        assert facts.heads % facts.kv_heads == 0
        assert facts.lora_params(8) < 0.05 * facts.params
    mistral = get_facts("mistral-7b")
    assert (mistral.layers, mistral.hidden, mistral.kv_heads, mistral.vocab) == (32, 4096, 8, 32000)
    assert not mistral.tied_embeddings


def test_fit_table_records():
    table = fit_table(seq_len=256, batch_size=4, available=16 * GiB, device="cuda")
    assert isinstance(table, FitTable)
    assert len(table.records) == 3 * len(CATALOG)
    for record in table.records:
        assert record["fits"] == (record["peak"] <= 16 * GiB)
        assert record["quantization"] == ("4bit" if record["method"] == "qlora" else None)
    by_key = {(r["model"], r["method"]): r for r in table.records}
    for seven_b in ("mistral-7b", "llama-3-8b", "qwen-7b"):
        assert by_key[seven_b, "lora"]["peak"] >= 16 * GiB  # "7B needs 16 GB+"
        assert by_key[seven_b, "full"]["peak"] > by_key[seven_b, "lora"]["peak"]
        assert by_key[seven_b, "lora"]["peak"] > by_key[seven_b, "qlora"]["peak"]
    assert by_key["smollm2-135m", "lora"]["fits"]
    assert "mistral-7b" in str(table) and "<table" in table._repr_html_()


def test_fit_table_defaults_to_this_machines_memory():
    table = fit_table(seq_len=32, batch_size=1, device="cpu")
    assert table.available > 0 and table.device == "cpu"


def test_settings_move_the_estimate_the_right_way():
    def total(**settings):
        return estimate_memory("qwen2.5-0.5b", device="cpu", **settings).total

    assert total(seq_len=1024) > total(seq_len=512)
    assert total(gradient_checkpointing=True) == total()  # on CPU counted as saving nothing
    assert total(method="qlora") == total(method="qlora", gradient_checkpointing=False)
    assert total(method="full") > total(method="lora")
    assert total(optimizer="sgd", method="full") < total(method="full")
    cuda = estimate_memory("qwen2.5-0.5b", device="cuda", method="qlora")
    assert (cuda.quantization, cuda.dtype) == ("4bit", "bfloat16")
    # on CUDA a quantized base checkpoints by default, as training's "auto" does
    unchecked = estimate_memory("qwen2.5-0.5b", device="cuda", method="qlora",
                                gradient_checkpointing=False)  # fmt: skip
    assert cuda.activations - cuda.logits < (unchecked.activations - unchecked.logits) / 3
    lora = estimate_memory("qwen2.5-0.5b", device="cuda")
    assert lora == estimate_memory("qwen2.5-0.5b", device="cuda", gradient_checkpointing=False)


def test_checkpointing_on_cpu_is_estimated_as_an_unchecked_step(tmp_path):
    """glibc's malloc keeps much of what a checkpointed forward frees, so a checkpointed
    step on CPU peaked at 0.4-1x the activations of an unchecked one; the estimate counts it
    as saving nothing. That is as close as the unchecked estimate, not safer: on this 6-layer
    Llama shape the unchecked estimate is 10-12% under its measured peak, and checkpointed
    peaks ranged from 6% above the estimate (a busy machine) to 19% below it. The highest of
    three still crossed 15% once under CI's load (16%): the bar is the 25% the README states
    for the tests, which counting checkpointing's saving on CPU (40-60% off) would fail."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from workbench.models.tiny import build_tiny_model

    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path / "tiny"))
    config = AutoConfig.for_model(
        "llama", vocab_size=len(tokenizer), hidden_size=512, intermediate_size=1536,
        num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4,
    )  # fmt: skip
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    settings = dict(lora_r=8, seq_len=512, batch_size=4, gradient_checkpointing=True)
    error = estimate_error(tmp_path / "llama", runs=RUNS_FOR_A_15_PERCENT_BAR, **settings)
    assert abs(error) < 0.25


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        (dict(spec="no-such-model"), "no-such-model"),
        (dict(quantization="3bit"), "quantization='3bit'"),
        (dict(seq_len=0), "seq_len=0"),
        (dict(seq_len=-5), "seq_len=-5"),
        (dict(batch_size=0), "batch_size=0"),
        (dict(method="prefix"), "method='prefix'"),
        (dict(method="full", quantization="4bit"), "method='full'"),
        (dict(device="tpu"), "device='tpu'"),
        (dict(lora_dropout=1.0), "lora_dropout=1.0"),
        (dict(lora_dropout="0.1"), "lora_dropout='0.1'"),
        (dict(spec=42), "spec=42"),
    ],
)
def test_bad_inputs_raise_spec_error(settings, field):
    settings = {"spec": "gemma-3-270m", **settings}
    with pytest.raises(SpecError) as err:
        estimate_memory(**settings)
    assert field in str(err.value)


@pytest.mark.parametrize("architecture", ["llama", "gpt2", "gemma3", "phi3", "lfm2"])
def test_dropout_masks_kept_on_cpu_are_what_the_estimate_adds(tmp_path, architecture):
    # the adapters keep one byte per input element of each adapted layer (counted with
    # autograd's saved-tensor hooks), and nothing else for the dropout
    from transformers import AutoConfig

    from workbench.models.memory import _ALLOCATOR_FACTOR
    from workbench.models.tiny import build_tiny_model

    config = AutoConfig.from_pretrained(build_tiny_model(tmp_path / "m", architecture))
    seq_len, rows = 32, 2
    with_masks = saved_bytes_per_token(config, seq_len * rows, seq_len, lora_dropout=0.05)
    without = saved_bytes_per_token(config, seq_len * rows, seq_len, lora_dropout=0.0)

    def activations(dropout: float) -> int:
        settings = dict(seq_len=seq_len, batch_size=rows, lora_r=8, dtype="float32")
        return estimate_memory(config, lora_dropout=dropout, device="cpu", **settings).activations

    estimated = (activations(0.05) - activations(0.0)) / _ALLOCATOR_FACTOR["cpu"] / (seq_len * rows)
    assert with_masks - without == pytest.approx(estimated, abs=1), architecture
    assert with_masks > without
    # on CUDA the masks are drawn again in backward: the estimate adds nothing there
    cuda = {
        d: estimate_memory(config, lora_dropout=d, device="cuda").activations for d in (0, 0.05)
    }
    assert cuda[0] == cuda[0.05]


def test_a_bad_dropout_is_named_before_a_step_is_measured():
    from workbench.models._measure import measure_training_step

    with pytest.raises(SpecError, match=r"lora_dropout=-0.1: use a number from 0") as err:
        measure_training_step("/no/such/folder", lora_dropout=-0.1, batch_size=0)
    assert "batch_size=0" in str(err.value)  # every problem in one message


def test_unknown_name_lists_known_names():
    with pytest.raises(SpecError, match=r"gemma-3-270m.*mistral-7b"):
        get_facts("gpt-5")


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(SpecError, match=r"config\.json"):
        estimate_memory(tmp_path, device="cpu")


def test_logit_tokens_count_only_the_logits_the_workbench_computes():
    plain = estimate_memory("gemma-3-270m", seq_len=256, batch_size=4, device="cpu")
    trained = estimate_memory(
        "gemma-3-270m", seq_len=256, batch_size=4, device="cpu", logit_tokens=256
    )
    assert trained.total < plain.total and trained.weights == plain.weights
    # Past 2**26 logits the loss works in recomputed chunks: the logits part stops growing.
    huge = [
        estimate_memory("gemma-3-270m", seq_len=2048, batch_size=8, device="cpu", logit_tokens=n)
        for n in (2**6, 2**9, 2**12)
    ]
    assert huge[0].activations < huge[1].activations == huge[2].activations
    with pytest.raises(SpecError, match="logit_tokens=0: use a positive integer"):
        estimate_memory("gemma-3-270m", logit_tokens=0)


def test_lfm2_s_derived_mlp_width_is_counted():
    """LFM2 builds its MLP two thirds as wide as intermediate_size says (rounded up to 256):
    read as written, the 350M model counted 25% more weights than it has."""
    import torch
    from transformers import AutoModelForCausalLM, Lfm2Config

    kinds = ["conv", "conv", "full_attention"] * 5 + ["conv"]
    config = Lfm2Config(
        vocab_size=65536, hidden_size=1024, num_hidden_layers=16, num_attention_heads=16,
        num_key_value_heads=8, intermediate_size=6656, layer_types=kinds,
    )  # fmt: skip
    with torch.device("meta"):  # LFM2-350M's shape, no memory taken
        counted = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    facts = facts_from_config(config)
    assert facts.intermediate == 4608
    assert facts.params == pytest.approx(counted, rel=1e-4)  # its convolution blocks too


@pytest.mark.parametrize(
    ("model_type", "settings"),
    [
        ("phi3", dict(intermediate_size=512, pad_token_id=0)),  # qkv_proj and gate_up_proj
        ("granitemoeshared", dict(  # its shared MLP's input_linear is gate and up in one
            intermediate_size=128, num_local_experts=4, num_experts_per_tok=2,
            shared_intermediate_size=256,
        )),
    ],
)  # fmt: skip
def test_fused_projections_take_one_lora_pair(model_type, settings):
    """peft adapts a fused layer with one A/B pair: counted as separate layers, Phi-3's
    adapter came out 23% too big. GraniteMoE-shared's shared MLP was not counted at all (21%
    of this shape's weights)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        model_type, vocab_size=512, hidden_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, **settings,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    facts = facts_from_config(config)
    assert facts.params == sum(p.numel() for p in model.parameters())
    lora = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", lora_dropout=0.0))
    assert facts.lora_params(8) == sum(p.numel() for p in lora.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    ("model_type", "settings"),
    [
        ("gpt2", dict(n_embd=128, n_layer=2, n_head=8)),  # c_attn
        ("gpt_neox", dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=8,
                          intermediate_size=512)),  # query_key_value
        ("gpt_bigcode", dict(n_embd=128, n_layer=2, n_head=8, multi_query=True)),
        ("falcon", dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=8,
                        multi_query=True, parallel_attn=True)),
        ("bloom", dict(hidden_size=128, n_layer=2, n_head=8)),
        ("mpt", dict(d_model=128, n_layers=2, n_heads=8)),  # Wqkv
    ],
)  # fmt: skip
def test_fused_query_key_value_layers_take_one_lora_pair(model_type, settings):
    """These families build q, k and v as one layer, which peft adapts with one A/B pair (and
    on CPU one dropout mask): read as three layers, the adapter and the masks came out too big."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, vocab_size=512, **settings)
    facts = matched_to_model(facts_from_config(config), config)
    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_config(config), LoraConfig(r=8, target_modules="all-linear")
    )
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert facts.lora_params(8) == trained
    assert len(facts.linear_shapes(adapted=True)) == 4  # qkv, its output, the MLP's two


def _built_counts(config):
    """(all weights, weights of the list of blocks) of the model built from ``config``."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    blocks = next(m for m in model.modules() if isinstance(m, torch.nn.ModuleList))
    return sum(p.numel() for p in model.parameters()), sum(p.numel() for p in blocks.parameters())


@pytest.mark.parametrize(
    ("model_type", "settings"),
    [
        ("falcon", dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=8,
                        multi_query=True, parallel_attn=True)),  # Falcon-7B: one key/value head
        ("mpt", dict(d_model=128, n_layers=2, n_heads=8, expansion_ratio=3)),  # 4x, as built
        # an intermediate_size their classes do not declare: kept, never read by the model
        ("bloom", dict(hidden_size=128, n_layer=2, n_head=8, intermediate_size=100)),
        ("gpt_bigcode", dict(n_embd=128, n_layer=2, n_head=8, multi_query=True,
                             intermediate_size=100)),
        ("xglm", dict(d_model=128, num_layers=2, attention_heads=8, ffn_dim=512)),
        ("biogpt", dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=8,
                        intermediate_size=512)),
        ("nemotron", dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=8,
                          num_key_value_heads=2, intermediate_size=384, head_dim=16)),
        ("arcee", dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=8,
                       num_key_value_heads=2, intermediate_size=384)),
        ("apertus", dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=8,
                         num_key_value_heads=2, intermediate_size=384)),
        ("persimmon", dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=8,
                           intermediate_size=512)),
    ],
)  # fmt: skip
def test_plain_mlp_and_multi_query_families_are_read_as_the_model_builds_them(model_type, settings):
    """These families' MLPs are two matrices, not gate/up/down: read as gated, their blocks
    counted 18-37% more weights than the model has (Falcon-7B's one key/value head too). A
    width under a key the family does not declare was read as the MLP's (BLOOM's is always
    four times the hidden size)."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type, vocab_size=512, **settings)
    total, in_blocks = _built_counts(config)
    facts = matched_to_model(facts_from_config(config), config)
    assert facts.params_in_blocks == pytest.approx(in_blocks, rel=0.05)  # biases left out
    assert facts.params == total  # the rest (biases, learned positions) as other_params
    estimate = estimate_memory(config, device="cpu", dtype="float32")
    assert estimate.weights == 4 * total


def test_weights_are_the_models_own_count_learned_positions_and_biases_included(
    tmp_path, tiny_gpt2_dir
):
    """Tiny GPT-2's 1024 learned positions are a third of its weights: the estimate left them
    out before (and every bias)."""
    import workbench as wb

    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(tiny_gpt2_dir))
    counted = sum(p.numel() for p in s.model.parameters())
    assert s.estimate_memory().weights == 4 * counted
    assert estimate_memory(tiny_gpt2_dir, device="cpu").weights == 4 * counted


@pytest.mark.parametrize(
    ("model_type", "settings"),
    [
        ("doge", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=128)),  # dynamic mask attention
        ("jetmoe", dict(hidden_size=64, num_hidden_layers=2, num_key_value_heads=4,
                        kv_channels=16, intermediate_size=128, num_local_experts=4)),
    ],
)  # fmt: skip
def test_a_block_layout_the_estimate_does_not_know_is_refused_not_guessed(
    tmp_path, model_type, settings
):
    """Doge's blocks were counted at thousands of times their weights, JetMoE's attention
    experts at 86%: the count read from the config is checked against the model built from it
    (on the meta device) and a layout off by more than 10% is refused, naming both counts."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type, vocab_size=512, **settings)
    _, in_blocks = _built_counts(config)
    with pytest.raises(SpecError, match=rf"does not model {model_type} models yet: their blocks "
                       rf"hold {in_blocks:,} weights and it reads"):  # fmt: skip
        estimate_memory(config, device="cpu")
    config.save_pretrained(tmp_path)
    with pytest.raises(SpecError, match=f"does not model {model_type} models yet"):
        estimate_memory(tmp_path, device="cpu")


def test_a_config_whose_block_count_the_model_does_not_build_is_refused():
    """BART's causal LM is its decoder: num_hidden_layers reads the encoder's layers. With no
    list of that many blocks in the model, the check against it was skipped, silently."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(
        "bart", encoder_layers=2, decoder_layers=3, d_model=64, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, vocab_size=512,
    )  # fmt: skip
    with pytest.raises(SpecError, match="reads 2 blocks from the config, and the model holds no"):
        estimate_memory(config, device="cpu")


def test_model_info_shows_no_expert_line_the_model_does_not_have(tmp_path):
    """Doge's config lists 16,384 experts it builds only with is_moe=True: model_info said
    "16384 in every block" of a dense model."""
    from transformers import AutoConfig

    import workbench as wb
    from workbench.models.tiny import build_model_from_config

    config = AutoConfig.for_model(
        "doge", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128,
    )  # fmt: skip
    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(build_model_from_config(tmp_path / "doge", config)))
    info = s.model_info()
    assert info.experts is None and "experts" not in str(info)
    assert "q_proj" in info.lora_targets
    with pytest.raises(SpecError, match="does not model doge models yet"):
        s.estimate_memory()


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("[1]", "holds a list, not a model config"),
        ("{bad", "is not valid JSON"),
        ("", "valid JSON"),
    ],
)
def test_a_damaged_config_json_is_named(tmp_path, text, said):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(SpecError, match=f"{tmp_path / 'config.json'} .*{said}"):
        estimate_memory(str(tmp_path))


@pytest.mark.parametrize("available", ["16GB", -1, 0, True])
def test_fit_table_refuses_a_budget_that_is_not_bytes(available):
    with pytest.raises(SpecError, match="give a positive number of bytes"):
        fit_table(available=available, device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_fit_table_for_a_gpu_this_machine_lacks_asks_for_its_memory():
    with pytest.raises(SpecError, match="no CUDA GPU here .* give available="):
        fit_table(device="cuda")
    assert fit_table(device="cuda", available=24 * 2**30, seq_len=64).device == "cuda"


def _attention_config(tmp_path, family):
    """A tiny config of ``family`` as a folder's config.json reads (no attention chosen)."""
    from transformers import AutoConfig

    from workbench.models.tiny import build_model_from_config, build_tiny_model

    built = {
        "vaultgemma": dict(intermediate_size=128, num_key_value_heads=2, head_dim=16),
        "gpt_oss": dict(
            intermediate_size=64, num_key_value_heads=2, head_dim=16, num_local_experts=4,
            num_experts_per_tok=2, layer_types=["sliding_attention", "full_attention"],
        ),
    }  # fmt: skip
    if family in built:
        config = AutoConfig.for_model(
            family, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, **built[family]
        )
        return AutoConfig.from_pretrained(build_model_from_config(tmp_path / family, config))
    return AutoConfig.from_pretrained(build_tiny_model(tmp_path / family, family))


@pytest.mark.parametrize(
    ("family", "copies"),
    [
        ("llama", 0),  # SDPA: no attention weights kept
        ("gpt_neox", 0),  # a plain MLP, SDPA: none either (it was counted as 3)
        ("gpt2", 3),  # attention dropout 0.1: softmax, mask, dropped weights
        ("gemma2", 2),  # no SDPA in transformers: eager, softcapped scores and softmax
        ("vaultgemma", 2),
        ("gpt_oss", 1),  # eager (sinks), no softcap
    ],
)
def test_attention_weights_kept_for_backward_are_counted_as_transformers_runs_them(
    tmp_path, family, copies
):
    """Gemma 2, VaultGemma and GPT-OSS cannot run SDPA: transformers loads them eager, which
    keeps each head's seq x seq weights. Their folders' configs do not say so, and the
    estimate counted SDPA: half the measured peak (-47 to -56% at 8 x 1024 tokens). What
    grows with the sequence at a fixed token count is those weights alone; it is compared
    with autograd's saved-tensor hooks."""
    from workbench.models.memory import _ALLOCATOR_FACTOR

    config = _attention_config(tmp_path, family)
    facts = facts_from_config(config)
    tokens, short, long = 256, 64, 128

    def estimated(seq_len: int) -> float:
        est = estimate_memory(
            config, device="cpu", dtype="float32", lora_r=8, seq_len=seq_len,
            batch_size=tokens // seq_len, lora_dropout=0.05,
        )  # fmt: skip
        return est.activations / _ALLOCATOR_FACTOR["cpu"] / tokens

    measured = saved_bytes_per_token(config, tokens, long) - saved_bytes_per_token(
        config, tokens, short
    )
    per_copy = 4 * facts.heads * facts.layers * (long - short)  # float32 bytes per token
    assert measured / per_copy == pytest.approx(copies, abs=0.05), family
    assert (estimated(long) - estimated(short)) / per_copy == pytest.approx(copies, abs=0.05)


def test_the_readme_s_fsdp_example_figures_are_the_estimate_s():
    # The README's mistral-7b figures (86 / 72 / 12 GiB) were left behind by estimate changes.
    import re
    from pathlib import Path

    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    said = re.search(
        r"mistral-7b full fine-tuning at batch 8 x 512, (\d+) GiB on one GPU, (\d+) GiB per "
        r"GPU with 8-way DDP, (\d+) GiB per GPU with 8-way FSDP",
        readme,
    )
    assert said, "the README's FSDP example is gone: update this test"
    cases = [{}, {"processes": 8}, {"processes": 8, "fsdp": True}]
    estimated = [
        round(
            estimate_memory(
                "mistral-7b", method="full", seq_len=512, batch_size=8, device="cuda", **case
            ).total
            / 2**30
        )
        for case in cases
    ]
    assert [int(x) for x in said.groups()] == estimated
