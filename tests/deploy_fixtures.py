"""Helpers shared by the deployment tests: a real, non-trivial LoRA adapter saved by peft,
Llama 3's rope scaling sized for a tiny model, and a session on a tiny model of another config."""

from __future__ import annotations

import json

import torch

import workbench as wb


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


def tiny_variant(tmp_path, architecture, **changes):
    """A session on a tiny model whose config.json has ``changes`` (weights refit to it)."""
    from transformers import AutoModelForCausalLM

    folder = wb.build_tiny_model(tmp_path / architecture, architecture)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    # weights for what the change adds (biases, norms): load_model refuses missing ones
    AutoModelForCausalLM.from_pretrained(folder).save_pretrained(folder)
    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(folder))
    return s
