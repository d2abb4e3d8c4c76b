"""Batched greedy or sampled generation from a loaded model.

Examples:
    >>> from workbench.models.tiny import build_tiny_model
    >>> from workbench.models.loading import load_model
    >>> loaded = load_model(str(build_tiny_model("/tmp/tiny-gen-doc")), on_event=len)
    >>> outputs = generate_text(loaded.model, loaded.tokenizer, ["Hello", "Hi"], max_new_tokens=3)
    >>> len(outputs)
    2
"""

from __future__ import annotations

from typing import Any

from workbench.errors import SpecError

__all__ = ["generate_text"]


def generate_text(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int = 64,
    **generation: Any,
) -> list[str]:
    """Complete each prompt and return only the new text, decoded without special tokens.

    Prompts are batched with left padding, so every completion starts right after its prompt.
    Greedy by default (``do_sample=False``); any ``generate`` keyword passes through.

    Raises:
        SpecError: ``max_new_tokens`` is not a positive integer or ``prompts`` is empty.

    Examples:
        >>> generate_text(loaded.model, loaded.tokenizer, ["Hello"], max_new_tokens=0)
        Traceback (most recent call last):
        workbench.errors.SpecError: max_new_tokens=0 must be a positive integer.
    """
    import torch

    if not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
        raise SpecError(f"max_new_tokens={max_new_tokens!r} must be a positive integer.")
    if not prompts:
        raise SpecError("prompts is empty: give at least one prompt.")
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(list(prompts), return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = padding_side
    batch = batch.to(next(model.parameters()).device)
    generation.setdefault("do_sample", False)
    generation.setdefault("pad_token_id", tokenizer.pad_token_id)
    with torch.no_grad():
        output = model.generate(**batch, max_new_tokens=max_new_tokens, **generation)
    new_tokens = output[:, batch["input_ids"].shape[1] :]
    return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
