"""Causal LM loss that computes logits only where a label is trained.

A plain ``model(**batch).logits`` builds ``batch x seq x vocab`` logits; with Gemma 3's 262k
vocabulary the output layer is ~63% of the compute and ~1 GB per copy (design.md). Only rows
whose next label is trained matter to the loss, so :func:`token_loss_sum` runs the model's
backbone, gathers the hidden states at those rows, and applies the output layer to them
alone, in chunks. The sum of token losses is the same as the full path's, up to float
rounding.

Examples:
    >>> import torch
    >>> from transformers import AutoModelForCausalLM
    >>> from workbench.models.tiny import build_tiny_model
    >>> from workbench.train.batches import Examples, collate
    >>> model = AutoModelForCausalLM.from_pretrained(build_tiny_model("/tmp/wb-doc-loss-tiny"))
    >>> batch = collate(Examples.from_rows([[1, 5, 6, 7]], [[-100, -100, 6, 7]]), [0], pad_id=0)
    >>> total, count = token_loss_sum(model, batch, fast=True)
    >>> count
    2
    >>> torch.allclose(total, token_loss_sum(model, batch, fast=False)[0])
    True
    >>> (total / count).backward()
"""

from __future__ import annotations

from typing import Any

from workbench.models.memory import LOSS_CHUNK_ELEMENTS
from workbench.train.core import IGNORE_INDEX

__all__ = ["FAST_LOSS_TYPES", "causal_lm", "supports_fast_loss", "token_loss_sum"]

# Model types whose logits are exactly ``lm_head(backbone(x))`` (optionally soft-capped). Others
# (logit scaling, extra heads) take the full path, which is always correct.
FAST_LOSS_TYPES = frozenset(
    {
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "gemma3_text",
        "phi3",
        "smollm3",
        "olmo2",
        "gpt2",
        "gpt_neox",
        "stablelm",
        "starcoder2",
    }
)
CHUNK_ELEMENTS = LOSS_CHUNK_ELEMENTS  # logits per chunk before chunks are recomputed


def causal_lm(model: Any) -> Any:
    """The transformers ``*ForCausalLM`` inside a peft wrapper (or the model itself).

    Examples:
        >>> from transformers import AutoModelForCausalLM
        >>> from workbench.models.tiny import build_tiny_model
        >>> from workbench.train.prepare import wrap_model
        >>> from workbench.train.spec import TrainSpec
        >>> folder = build_tiny_model("/tmp/wb-doc-loss-tiny")
        >>> peft_model = wrap_model(AutoModelForCausalLM.from_pretrained(folder), TrainSpec())
        >>> type(peft_model).__name__, type(causal_lm(peft_model)).__name__
        ('PeftModelForCausalLM', 'LlamaForCausalLM')
    """
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports_fast_loss(model: Any) -> bool:
    """Whether the model's logits are a plain output layer over the backbone's states.

    Examples:
        >>> from transformers import AutoModelForCausalLM
        >>> from workbench.models.tiny import build_tiny_model
        >>> folder = build_tiny_model("/tmp/wb-doc-loss-gemma3", architecture="gemma3")
        >>> supports_fast_loss(AutoModelForCausalLM.from_pretrained(folder))
        True
    """
    lm = causal_lm(model)
    prefix = getattr(lm, "base_model_prefix", "")
    return (
        getattr(lm.config, "model_type", None) in FAST_LOSS_TYPES
        and hasattr(lm, prefix)
        and lm.get_output_embeddings() is not None
    )


def _rows_loss(hidden: Any, head: Any, targets: Any, softcap: float | None) -> Any:
    from torch.nn.functional import cross_entropy

    logits = head(hidden).float()
    if softcap:
        logits = torch_tanh(logits / softcap) * softcap
    return cross_entropy(logits, targets, reduction="sum")


def torch_tanh(x: Any) -> Any:
    """``torch.tanh`` (kept separate so the loss module imports torch lazily).

    Examples:
        >>> import torch
        >>> torch_tanh(torch.zeros(1)).item()
        0.0
    """
    import torch

    return torch.tanh(x)


def _chunked_loss(hidden: Any, head: Any, targets: Any, softcap: float | None) -> Any:
    from torch.utils.checkpoint import checkpoint

    vocab = head.weight.shape[0]
    if hidden.shape[0] * vocab <= CHUNK_ELEMENTS:
        return _rows_loss(hidden, head, targets, softcap)
    rows = max(1, CHUNK_ELEMENTS // vocab)
    total = 0.0
    for start in range(0, hidden.shape[0], rows):
        part = slice(start, start + rows)
        # Recompute each chunk's logits in backward instead of keeping them all alive.
        total = total + checkpoint(
            _rows_loss, hidden[part], head, targets[part], softcap, use_reentrant=False
        )
    return total


def token_loss_sum(model: Any, batch: dict[str, Any], fast: bool = True) -> tuple[Any, int]:
    """Sum of next-token cross-entropy over trained labels, and how many there were.

    Batches are right-padded (:func:`~workbench.train.batches.collate`), so no attention mask
    is passed: under causal attention, trailing padding cannot change earlier positions, and
    padded rows are never read. A packed batch (:func:`~workbench.train.packing.pack`) brings
    ``position_ids``, which both paths pass on: transformers builds the block-causal mask that
    keeps its examples apart from them.

    Args:
        model: A causal LM, plain or peft-wrapped.
        batch: ``input_ids`` and ``labels`` (``-100`` = not trained), same shape; optionally
            ``position_ids``, and ``trained_index``/``trained`` from
            :func:`~workbench.train.batches.index_trained` (then the trained rows are gathered
            without a host sync; the result is the same).
        fast: Apply the output layer only to trained rows (if the model type allows it).

    Returns:
        ``(loss_sum, count)``: a scalar tensor and the number of trained tokens.

    Examples:
        >>> from transformers import AutoModelForCausalLM
        >>> from workbench.models.tiny import build_tiny_model
        >>> from workbench.train.batches import Examples, collate, index_trained
        >>> model = AutoModelForCausalLM.from_pretrained(build_tiny_model("/tmp/wb-doc-loss-tiny"))
        >>> examples = Examples.from_rows([[1, 5, 6], [1, 7]], [[-100, 5, 6], [-100, 7]])
        >>> total, n = token_loss_sum(model, collate(examples, [0, 1], pad_id=0))
        >>> n, total.dim()
        (3, 0)
        >>> indexed = index_trained(collate(examples, [0, 1], pad_id=0))
        >>> bool(token_loss_sum(model, indexed)[0] == total)
        True
    """
    from torch.nn.functional import cross_entropy

    input_ids, labels = batch["input_ids"], batch["labels"]
    extra = {"position_ids": batch["position_ids"]} if "position_ids" in batch else {}
    index = batch.get("trained_index")
    if index is None:
        mask = labels[:, 1:] != IGNORE_INDEX
        count = int(mask.sum())
        targets = labels[:, 1:][mask]
    else:  # flat positions row * width + t: their targets sit one column to the right
        count = int(batch["trained"])
        targets = labels.reshape(-1).index_select(0, index + 1)

    def gather(states: Any) -> Any:
        if index is None:
            return states[:, :-1][mask]
        return states.reshape(-1, states.shape[-1]).index_select(0, index)

    if fast and supports_fast_loss(model):
        lm = causal_lm(model)
        backbone = getattr(lm, lm.base_model_prefix)
        out = backbone(input_ids=input_ids, use_cache=False, **extra)
        softcap = getattr(lm.config, "final_logit_softcapping", None)
        return _chunked_loss(gather(out[0]), lm.get_output_embeddings(), targets, softcap), count
    logits = model(input_ids=input_ids, use_cache=False, **extra).logits
    return cross_entropy(gather(logits).float(), targets, reduction="sum"), count
