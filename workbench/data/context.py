"""The model's context length, and how it caps ``max_length``.

A row longer than the model's context breaks training without a word: a model with learned
positions (GPT-2) raises ``IndexError`` in the position embedding, one with rotary positions
(Llama) trains past the length it was built for. The context comes from the model config
(``max_position_embeddings``, ``n_positions``...), never from the tokenizer's
``model_max_length``, which is often a placeholder of about 1e30.

Examples:
    >>> from types import SimpleNamespace
    >>> model_context(SimpleNamespace(n_positions=64))
    64
    >>> fit_to_context(None, 64), fit_to_context(32, 64)
    ((64, None), (32, None))
    >>> fit_to_context(100, 64)[1][:42]
    'max_length=100 is longer than the model co'
"""

from __future__ import annotations

from typing import Any

from workbench._model_context import CONTEXT_FIELDS, model_context
from workbench._numbers import plain_number
from workbench.errors import SpecError

__all__ = ["CONTEXT_FIELDS", "check_room", "fit_to_context", "model_context"]


def fit_to_context(max_length: int | None, context: int | None) -> tuple[int | None, str | None]:
    """The cutoff to apply, and a warning message when ``max_length`` had to be capped.

    ``None`` means the context; a ``max_length`` past the context is capped to it.

    Examples:
        >>> fit_to_context(None, None)
        (None, None)
    """
    if context is None or (max_length is not None and max_length <= context):
        return max_length, None
    if max_length is None:
        return context, None
    msg = (
        f"max_length={max_length} is longer than the model context of {context} tokens "
        f"(max_position_embeddings/n_positions in its config); capped to {context}: longer "
        "examples are cut there, since the model has no positions past it"
    )
    return context, msg


def check_room(
    prompts: list[list[int]],
    max_new_tokens: Any,
    config: Any,
    what: str = "prompt",
    shorten: str = "shorten the prompt (or the conversation)",
) -> None:
    """Refuse prompts the model cannot read whole, or that leave no room to answer: past
    its context, positions are garbage or out of range (an index error, a CUDA assert).

    Args:
        prompts: The prompts' token ids.
        max_new_tokens: Tokens to generate after each.
        config: The model's config (its context, :func:`model_context`).
        what: What a prompt is called in the message (``"prompt"``, ``"row"``).
        shorten: The fix when not even one new token fits.

    Raises:
        SpecError: naming the first such prompt, how many there are, and the fix.

    Examples:
        >>> from types import SimpleNamespace
        >>> check_room([[1] * 10, [1] * 70, [1] * 90], 8, SimpleNamespace(n_positions=64))
        Traceback (most recent call last):
        workbench.errors.SpecError: prompt 1 has 70 tokens; with max_new_tokens=8 that is \
past the model's context of 64 tokens (2 prompts: 1, 2): shorten the prompt (or the conversation).
    """
    context = model_context(config)
    max_new_tokens = plain_number(max_new_tokens)  # np.int64 skipped the check
    if context is None or not isinstance(max_new_tokens, int):
        return
    over = [k for k, prompt in enumerate(prompts) if len(prompt) + max_new_tokens > context]
    if not over:
        return
    room = context - max(len(prompts[k]) for k in over)
    fix = f"lower max_new_tokens to {room} or less" if room > 0 else shorten
    listed = ", ".join(str(k) for k in over[:8]) + (", ..." if len(over) > 8 else "")
    more = f" ({len(over)} {what}s: {listed})" if len(over) > 1 else ""
    first = over[0]
    msg = (
        f"{what} {first} has {len(prompts[first])} tokens; with max_new_tokens="
        f"{max_new_tokens} that is past the model's context of {context} tokens{more}: {fix}."
    )
    raise SpecError(msg)
