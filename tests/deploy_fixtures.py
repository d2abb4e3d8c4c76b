"""Helpers shared by the deployment tests: a real, non-trivial LoRA adapter saved by peft, and
Llama 3's rope scaling sized for a tiny model."""

from __future__ import annotations

import torch


def make_adapter(base_dir, out_dir, seed=0):
    """A real, non-trivial LoRA adapter saved by peft (random B instead of zeros)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out_dir)
    return out_dir


# Llama 3's rope scaling (per-frequency factors) for a tiny model's 64-token context
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
    "rope_theta": 1e6,
}
