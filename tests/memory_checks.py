"""Helpers shared by the memory-estimate tests: the estimate against a measured step, and the
bytes autograd saves for backward."""

from __future__ import annotations

import torch

from workbench.models._measure import measure_training_step
from workbench.models.memory import estimate_memory

RUNS_FOR_A_15_PERCENT_BAR = 3


def estimate_error(folder, runs: int = 1, **settings) -> float:
    """(estimated - measured) / measured peak of one training step on CPU, with ``settings``.

    ``runs`` > 1: the highest peak of that many steps, each in its own process. The same
    step's peak RSS varies from process to process, always downwards from one level (what
    glibc hands back to the system mid-step depends on the timing of frees: a tiny Gemma 4
    peaked at 1.21-1.38 GiB, a tiny Granite 4 at 0.83-0.89), so a 15% bar compares the
    estimate, which must cover the worst a user sees, with the highest of three."""
    peaks = []
    for _ in range(runs):
        measured = measure_training_step(folder, **settings)
        assert measured.peak >= measured.after_load >= measured.after_imports > 0
        peaks.append(measured.peak)
    total = estimate_memory(folder, device="cpu", **settings).total
    return (total - max(peaks)) / max(peaks)


def saved_bytes_per_token(config, tokens: int, seq_len: int, lora_dropout=0.05) -> float:
    """Bytes per token autograd saves for backward in one LoRA training forward pass (the
    workbench's adapter, with dropout as ``TrainSpec``'s default), weights left out."""
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    from workbench.train.core import dropout_free_targets, make_trainable

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    lora = LoraConfig(r=8, target_modules="all-linear")
    if not dropout_free_targets(model, lora):  # fused experts train without, as in runs
        lora.lora_dropout = lora_dropout
    model = make_trainable(model, lora)
    ids = torch.randint(0, config.vocab_size, (tokens // seq_len, seq_len))
    saved = kept_for_backward(model, lambda: model(input_ids=ids, labels=ids, use_cache=False))
    return saved / tokens


def kept_for_backward(model, forward) -> int:
    """Bytes autograd keeps for backward while ``forward()`` runs, ``model``'s weights left
    out (each storage once, however many tensors view it)."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward()
    return sum(saved.values())


def saved_growth(smaller, bigger, seq_len: int = 128, rows: int = 2) -> tuple[float, float]:
    """What the blocks ``bigger`` adds to ``smaller`` save per token: (measured with the
    hooks, estimated). The estimate's logits cancel out; its allocator factor is taken off."""
    from workbench.models.memory import _ALLOCATOR_FACTOR

    tokens = seq_len * rows

    def estimated(config) -> float:
        est = estimate_memory(
            config, device="cpu", dtype="float32", lora_r=8, seq_len=seq_len, batch_size=rows
        )
        return est.activations / _ALLOCATOR_FACTOR["cpu"] / tokens

    measured = saved_bytes_per_token(bigger, tokens, seq_len)
    measured -= saved_bytes_per_token(smaller, tokens, seq_len)
    return measured, estimated(bigger) - estimated(smaller)
