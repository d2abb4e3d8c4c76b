"""Per-example and per-token loss of each reference answer given its prompt.

One forward pass per batch on the already loaded model (no second model): sequences are
``prompt ids + reference ids``, left-padded so every reference ends at the right edge, and
only the logits over the reference are computed (``logits_to_keep``), which keeps memory
small even with a 262k vocabulary.

:func:`reference_losses` has an example on the tiny model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["TokenLosses", "encode_pair", "reference_losses"]


@dataclass(frozen=True)
class TokenLosses:
    """Loss of one reference: its mean token NLL and the NLL of every token.

    Attributes:
        loss: Mean negative log-likelihood per reference token (``nan`` if it has none).
        tokens: The reference tokens, each decoded to text.
        token_losses: NLL of each token given the prompt and the tokens before it.

    Examples:
        >>> TokenLosses(0.5, ("a",), (0.5,)).perplexity
        1.6487212707001282
    """

    loss: float
    tokens: tuple[str, ...]
    token_losses: tuple[float, ...]

    @property
    def perplexity(self) -> float:
        """``exp(loss)``.

        Examples:
            >>> TokenLosses(0.0, (), ()).perplexity
            1.0
        """
        return math.exp(self.loss)


def encode_pair(
    tokenizer: Any, prompt: str | Sequence[int], reference: str | Sequence[int]
) -> tuple[list[int], list[int]]:
    """The token ids of a prompt and its reference, as :func:`reference_losses` reads them.

    A text prompt is tokenized exactly as generation tokenizes it, then the reference
    follows; token ids are taken as they are.

    Examples:
        >>> encode_pair(None, [1, 2], [3])
        ([1, 2], [3])
    """
    from workbench.models.generation import encode_prompts

    if isinstance(prompt, str):
        prompt = encode_prompts(tokenizer, [prompt])["input_ids"][0]
    if isinstance(reference, str):
        reference = tokenizer(reference, add_special_tokens=False)["input_ids"]
    return list(prompt), list(reference)


def _batch_tensors(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[Any, Any]:
    import torch

    length = max(len(p) + len(r) for p, r in pairs)
    ids = torch.full((len(pairs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(pairs), length), dtype=torch.long)
    for row, (prompt, ref) in enumerate(pairs):
        seq = prompt + ref
        ids[row, length - len(seq) :] = torch.tensor(seq, dtype=torch.long)
        mask[row, length - len(seq) :] = 1
    return ids, mask


def _batch_losses(model: Any, tokenizer: Any, pairs: list[tuple[list[int], list[int]]]) -> list:
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids, mask = _batch_tensors(pairs, pad_id)
    keep = max(len(r) for _, r in pairs) + 1
    device = next(model.parameters()).device
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            logits_to_keep=keep,
            use_cache=False,  # one pass: a cache is memory spent (and recurrent-only
        )  # models such as RecurrentGemma without attention fail to build one)
    logprobs = torch.log_softmax(out.logits[:, -keep:-1].float(), dim=-1).cpu()
    results = []
    for row, (_, ref) in enumerate(pairs):
        if not ref:
            results.append([])
            continue
        steps = logprobs[row, keep - 1 - len(ref) :]
        nll = -steps.gather(-1, torch.tensor(ref).unsqueeze(-1)).squeeze(-1)
        results.append(nll.tolist())
    return results


def reference_losses(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str | Sequence[int]],
    references: Sequence[str | Sequence[int]],
    batch_size: int = 8,
) -> list[TokenLosses]:
    """Loss of each reference given its prompt, per example and per token.

    A reference running past the model's context is scored as far as it fits (training cut
    such a row there too); the tokens of :class:`TokenLosses` are those scored.

    Args:
        model: A causal LM (a peft model as it is: adapter on unless disabled by the caller).
        tokenizer: Its tokenizer.
        prompts: Prompts rendered for inference (texts, or their token ids).
        references: Expected answers (texts, or their token ids).
        batch_size: Examples per forward pass.

    Returns:
        One :class:`TokenLosses` per example.

    Examples:
        >>> from workbench.models.loading import load_model
        >>> from workbench.models.tiny import build_tiny_model
        >>> folder = build_tiny_model("/tmp/wb-doc-perplexity-model")
        >>> loaded = load_model(str(folder), on_event=len)
        >>> prompts = ["Q: 2+2? A:", "Q: colour of a cherry? A:"]
        >>> losses = reference_losses(loaded.model, loaded.tokenizer, prompts, [" four", " red"])
        >>> [(t.tokens, len(t.token_losses)) for t in losses]
        [((' four',), 1), ((' red',), 1)]
        >>> all(t.loss > 0 and t.perplexity > 1 for t in losses)
        True

        A character split over byte tokens shows on its first token:

        >>> emoji = reference_losses(loaded.model, loaded.tokenizer, prompts[:1], ["🙂"])[0]
        >>> emoji.tokens, len(emoji.token_losses)
        (('🙂', '', '', ''), 4)
    """
    from workbench.data.context import model_context
    from workbench.data.example import token_texts

    context = model_context(getattr(model, "config", None))
    pairs = [encode_pair(tokenizer, p, r) for p, r in zip(prompts, references, strict=True)]
    if context is not None:  # the part of a reference that fits, as training cut it
        pairs = [(p, r[: max(context - len(p), 0)]) for p, r in pairs]
    out: list[TokenLosses] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        for (_, ref), nll in zip(chunk, _batch_losses(model, tokenizer, chunk), strict=True):
            tokens = tuple(token_texts(tokenizer, list(ref)))
            loss = sum(nll) / len(nll) if nll else float("nan")
            out.append(TokenLosses(loss, tokens, tuple(round(x, 5) for x in nll)))
    return out
