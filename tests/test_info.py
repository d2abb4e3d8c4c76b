"""model_info: facts found from the model itself, shown as text and escaped HTML."""

from __future__ import annotations

import pytest

import workbench as wb


def test_tiny_llama_info(tmp_path, tiny_model_dir):
    session = wb.Session(tmp_path, verbose=False)
    info = session.load_model(str(tiny_model_dir))
    assert info == session.model_info()
    assert info.architecture == "LlamaForCausalLM"
    assert info.parameters == sum(p.numel() for p in session.model.parameters())
    assert (info.layers, info.hidden_size, info.vocab_size) == (2, 64, 512)
    assert info.lora_targets == (
        "down_proj",
        "gate_proj",
        "k_proj",
        "o_proj",
        "q_proj",
        "up_proj",
        "v_proj",
    )
    assert info.memory_bytes == session.model.get_memory_footprint()
    assert (info.dtype, info.device, info.quantization) == ("float32", "cpu", None)
    text = str(info)
    assert "LlamaForCausalLM" in text and "q_proj" in text and "none" in text


def test_gpt2_conv1d_layers_are_targets(tmp_path, tiny_gpt2_dir):
    info = wb.Session(tmp_path, verbose=False).load_model(str(tiny_gpt2_dir))
    assert info.lora_targets == ("c_attn", "c_fc", "c_proj")
    assert "lm_head" not in info.lora_targets


def test_4bit_info_counts_unpacked_parameters(tmp_path, tiny_model_dir):
    session = wb.Session(tmp_path, verbose=False)
    full = session.load_model(str(tiny_model_dir))
    quantized = session.load_model(str(tiny_model_dir), quantization="4bit")
    assert quantized.parameters == full.parameters
    assert quantized.memory_bytes < full.memory_bytes / 2
    assert quantized.quantization == "4bit"
    assert quantized.lora_targets == full.lora_targets


def test_html_escapes_untrusted_names(tmp_path, tiny_model_dir):
    import shutil

    odd = tmp_path / "<img src=x onerror=alert(1)>"
    shutil.copytree(tiny_model_dir, odd)
    info = wb.Session(tmp_path / "run", verbose=False).load_model(str(odd))
    html = info._repr_html_()
    assert "<img" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html


@pytest.mark.slow
def test_gemma_info(tmp_path, gemma_folder):
    info = wb.Session(tmp_path, verbose=False).load_model("gemma-3-270m")
    assert info.source == "builtin" and info.architecture == "Gemma3ForCausalLM"
    assert (info.layers, info.hidden_size, info.vocab_size) == (18, 640, 262144)
    assert 260e6 < info.parameters < 275e6
    assert "Gemma Terms of Use" in info.terms
    assert "q_proj" in info.lora_targets and "lm_head" not in info.lora_targets


@pytest.mark.slow
def test_gemma_generates_a_sensible_completion(tmp_path, gemma_folder):
    session = wb.Session(tmp_path, verbose=False)
    session.load_model("gemma-3-270m")
    text = session.generate("The capital of France is", max_new_tokens=8)
    assert "Paris" in text or "France" in text or "capital" in text, text


@pytest.mark.slow
def test_gemma_loads_in_4bit(tmp_path, gemma_folder):
    info = wb.Session(tmp_path, verbose=False).load_model("gemma-3-270m", quantization="4bit")
    assert info.quantization == "4bit"
    assert info.memory_bytes < 0.75 * 1024**3  # embeddings stay float32; linears shrink 8x


def test_lora_targets_look_through_an_adapter(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    from workbench.models.info import lora_target_names
    from workbench.models.loading import load_model

    loaded = load_model(str(tiny_model_dir), on_event=len)
    plain = lora_target_names(loaded.model)
    adapted = get_peft_model(loaded.model, LoraConfig(r=4, target_modules="all-linear"))
    assert lora_target_names(adapted) == plain
    assert "base_layer" not in plain and "q_proj" in plain


def test_layers_kept_in_lists_are_named_from_their_list(tmp_path):
    """Zamba2's shared block keeps per-layer adapters in lists of Linear layers: they showed as
    targets "0" and "1", a name that peft matches against the first item of every list."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from workbench.errors import SpecError
    from workbench.models.info import lora_target_names
    from workbench.train.prepare import check_model
    from workbench.train.spec import LoRA, TrainSpec

    config = AutoConfig.for_model(
        "zamba2", vocab_size=512, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, n_mamba_heads=8, mamba_headdim=16, mamba_d_state=16,
        intermediate_size=128, chunk_size=16, num_mem_blocks=1, adapter_rank=8,
        layers_block_type=["mamba", "hybrid", "mamba", "hybrid"],
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    targets = lora_target_names(model)
    assert not [t for t in targets if t.split(".")[0].isdigit()]
    assert "gate_up_proj_adapter_list.0.1" in targets and "q_proj" in targets
    check_model(model, TrainSpec(lora=LoRA(target=("gate_up_proj_adapter_list.0.1",))))
    with pytest.raises(SpecError, match=r"LoRA target \['0'\] not found.*adapter_list\.0\.0"):
        check_model(model, TrainSpec(lora=LoRA(target=("0",))))


def test_the_shapes_built_to_count_weights_are_kept_per_shape_and_few(tmp_path, tiny_model_dir):
    # Keyed by the config with its folder in it, every folder loaded added a model built on
    # the meta device for good (40 copies of one tiny model: 40 entries).
    import shutil

    from transformers import AutoConfig

    from workbench.models import catalog

    catalog._META_MODELS.clear()
    for i in range(3):
        copy = shutil.copytree(tiny_model_dir, tmp_path / f"copy-{i}")
        config = AutoConfig.from_pretrained(copy)
        catalog.matched_to_model(catalog.facts_from_config(config), config)
    assert len(catalog._META_MODELS) == 1  # one shape, three folders
    for width in range(catalog._META_MODELS_KEPT + 3):
        config = AutoConfig.from_pretrained(tiny_model_dir)
        config.intermediate_size += 8 * (width + 1)
        catalog.matched_to_model(catalog.facts_from_config(config), config)
    assert len(catalog._META_MODELS) == catalog._META_MODELS_KEPT
