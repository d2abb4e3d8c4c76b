"""What the Session hands to deploy: a tokenizer ready to ship and the model card's facts.

Examples:
    >>> from workbench.deploy.session_glue import ship_tokenizer  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from workbench.deploy.model_card import ModelCard

__all__ = ["card_for", "ship_tokenizer"]


def ship_tokenizer(tokenizer: Any, model: Any, template: Any | None) -> None:
    """Give the tokenizer the training template and make generation stop at its end of turn.

    A base model such as the built-in Gemma has no chat template of its own; the exported model
    must carry the one it was trained with, or a server would format prompts differently.

    Examples:
        >>> ship_tokenizer(tokenizer, model, data.template)  # doctest: +SKIP
    """
    if template is None:
        return
    if not tokenizer.chat_template:
        tokenizer.chat_template = template.source
    stop = getattr(template, "stop", None)
    stop_id = tokenizer.convert_tokens_to_ids(stop) if stop else None
    if stop_id is None or stop_id == tokenizer.unk_token_id:
        return
    config = model.generation_config
    eos = config.eos_token_id
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    if stop_id not in ids:
        config.eos_token_id = [*ids, stop_id]


def card_for(session: Any, export_format: str) -> ModelCard:
    """Collect the model card's facts from a session's state.

    Examples:
        >>> card_for(session, "safetensors").base_model  # doctest: +SKIP
        'gemma-3-270m'
    """
    from workbench.models.builtin import BUILTIN_MODELS

    spec = session.loaded.source.spec
    builtin = BUILTIN_MODELS.get(spec)
    return ModelCard(
        base_model=spec,
        export_format=export_format,
        data_summary=str(session.data_report()) if session.has_data else "",
        training=session.training_summary(),
        scores=session.scores_summary(),
        terms=builtin.terms if builtin else "",
    )
