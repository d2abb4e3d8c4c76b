"""Family settings an export cannot carry are refused before anything is merged or written.

Gemma 2 without softcapping and Phi with ``qk_layernorm`` for GGUF (llama.cpp would compute
another model); Falcon for bitsandbytes quantization (its ``FalconLinear`` layers stay float).
"""

from __future__ import annotations

import pytest
from deploy_fixtures import tiny_variant

import workbench as wb
from workbench.deploy.gguf_writer import check_gguf_model
from workbench.deploy.quantize import quantize_export
from workbench.models.tiny import build_model_from_config


@pytest.mark.parametrize(
    ("architecture", "changes", "setting"),
    [
        # llama.cpp's Gemma 2 caps at 30 / 50 when the file has no key, and 0 gives NaN logits
        ("gemma2", {"final_logit_softcapping": None}, "final_logit_softcapping=None"),
        ("gemma2", {"attn_logit_softcapping": None}, "attn_logit_softcapping=None"),
        # llama.cpp's phi2 graph has no query/key norms
        ("phi", {"qk_layernorm": True}, "phi with qk_layernorm=True"),
    ],
    ids=["gemma2-final-softcap-off", "gemma2-attn-softcap-off", "phi-qk-layernorm"],
)
def test_gguf_export_refuses_a_setting_llama_cpp_cannot_carry_before_merging(
    tmp_path, architecture, changes, setting
):
    s = tiny_variant(tmp_path, architecture, **changes)
    with pytest.raises(wb.SpecError, match=f"GGUF export: .*{setting}.*Export as 'safetensors'"):
        check_gguf_model(s.model.config)  # the early check names the setting
    with pytest.raises(wb.SpecError, match=setting):
        s.export("export/gguf", format="gguf")
    assert not (tmp_path / "run" / "export").exists()  # nothing merged, staged or written


@pytest.fixture
def falcon_dir(tmp_path):
    from transformers import FalconConfig

    config = FalconConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    return build_model_from_config(tmp_path / "falcon", config)


QUANTIZE_ADVICE = (
    r"quantize\('4bit'\): bitsandbytes would quantize none of this falcon model's linear "
    r"layers: its 8 FalconLinear layers .* Export it in full precision instead "
    r"\(export\(format='safetensors'\)\)"
)


def test_quantize_export_refuses_falcon_before_writing_with_advice_for_quantize(
    tmp_path, falcon_dir
):
    target = tmp_path / "quantized"
    with pytest.raises(wb.SpecError, match=QUANTIZE_ADVICE) as refused:
        quantize_export(falcon_dir, target, "4bit", probes=["Hello"])
    assert "Load it without quantization" not in str(refused.value)  # load_model's advice
    assert not target.exists()


def test_session_quantize_refuses_falcon_before_exporting_with_advice_for_quantize(
    tmp_path, falcon_dir
):
    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(falcon_dir))
    with pytest.raises(wb.SpecError, match=QUANTIZE_ADVICE):
        s.quantize("4bit")
    assert not (tmp_path / "run" / "export").exists()  # not even the merged export
