"""Helpers shared by the deployment tests: a real, non-trivial LoRA adapter saved by peft."""

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
