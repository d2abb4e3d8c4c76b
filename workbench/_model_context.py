"""The context length a transformers model config gives, read one way by every part.

data/ caps training rows and refuses prompts past it, models/ shows it in the model's facts,
the server refuses requests past it: they must agree, and neither may import the other.

Examples:
    >>> from types import SimpleNamespace
    >>> model_context(SimpleNamespace(max_seq_len=128))  # MPT's name for it
    128
"""

from __future__ import annotations

from typing import Any

__all__ = ["CONTEXT_FIELDS", "model_context"]

CONTEXT_FIELDS = (
    "max_position_embeddings",
    "n_positions",
    "n_ctx",
    "max_sequence_length",
    "max_seq_len",  # MPT (DBRX maps max_position_embeddings to it); no config uses it otherwise
)
"""Config attributes that hold the context length, in the order they are tried."""


def model_context(config: Any) -> int | None:
    """The context length (in tokens) of a transformers model config, or ``None``.

    Multimodal configs (Gemma 3) are read through their text config.

    Examples:
        >>> from types import SimpleNamespace
        >>> model_context(SimpleNamespace(max_position_embeddings=2048)), model_context(None)
        (2048, None)
    """
    if config is None:
        return None
    text_config = getattr(config, "get_text_config", None)
    config = text_config() if callable(text_config) else config
    for name in CONTEXT_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
