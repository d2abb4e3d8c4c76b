"""What the Session hands to deploy: a tokenizer ready to ship and the model card's facts.

``Session.export`` calls :func:`ship_tokenizer` on its tokenizer, then :func:`card_for` for
the README.md it writes beside the export; each function's docstring shows it on the tiny model.
"""

from __future__ import annotations

import re
from typing import Any

from workbench.deploy.model_card import ModelCard

__all__ = ["card_for", "raw_text_tokenizer", "ship_tokenizer"]


def ship_tokenizer(tokenizer: Any, model: Any, template: Any | None) -> None:
    """Give the tokenizer the training template and make generation stop at its end of turn.

    A base model such as the built-in Gemma has no chat template of its own; the exported model
    must carry the one it was trained with (also in place of its own, when the data was
    loaded with another), or a server would format prompts differently. With a built-in
    template, the tokenizer also gets the ``response_template`` that reads its tool calls
    back (see :func:`~workbench.data.tool_calls.response_template`).

    Examples:
        A tiny model built without a chat template gets the ChatML one it was trained with,
        and ``<|im_end|>`` joins ``</s>`` as a token that ends generation:

        >>> from workbench.data.templates import TEMPLATES
        >>> from workbench.models.loading import load_model
        >>> from workbench.models.tiny import build_tiny_model
        >>> folder = build_tiny_model("/tmp/wb-doc-deploy-session_glue-bare", chat_template=False)
        >>> loaded = load_model(str(folder), on_event=len)
        >>> tokenizer, model = loaded.tokenizer, loaded.model
        >>> tokenizer.chat_template is None
        True
        >>> ship_tokenizer(tokenizer, model, TEMPLATES["chatml"])
        >>> tokenizer.chat_template == TEMPLATES["chatml"].source
        True
        >>> tokenizer.convert_ids_to_tokens(model.generation_config.eos_token_id)
        ['</s>', '<|im_end|>']

        A tokenizer's own template that ends turns with ``<|im_end|>`` while its eos is
        ``</s>`` (a base model's ChatML) gets the same, with or without a template given:

        >>> own = load_model(str(build_tiny_model("/tmp/wb-doc-deploy-session_glue-own")),
        ...                  on_event=len)
        >>> ship_tokenizer(own.tokenizer, own.model, None)
        >>> own.tokenizer.convert_ids_to_tokens(own.model.generation_config.eos_token_id)
        ['</s>', '<|im_end|>']
    """
    from workbench.chat import chat_stop_strings
    from workbench.data.templates import resolve_template
    from workbench.data.tool_calls import answer_template, response_template

    if template is None and not getattr(tokenizer, "chat_template", None):
        return
    if template is None:  # no data loaded: the tokenizer's own template ends turns
        template = resolve_template("tokenizer", tokenizer)
    if template.origin != "tokenizer" or not tokenizer.chat_template:
        tokenizer.chat_template = template.source  # the one it was tuned with
    # the template's stop, else the end-of-turn token it writes (a base model's own ChatML
    # template, as Qwen2.5's base models have, with only <|endoftext|> as eos)
    stops = chat_stop_strings(template, tokenizer)
    ends = [*stops, *filter(None, [tokenizer.eos_token])]
    reader = response_template(template, ends)
    if reader is None and ends and not _server_reads(tokenizer, model, template, ends):
        reader = answer_template(template, ends)
    if reader is not None:
        tokenizer.response_template = reader
    stop_id = tokenizer.convert_tokens_to_ids(stops[0]) if stops else None
    if stop_id is None or stop_id == tokenizer.unk_token_id:
        return
    config = model.generation_config
    eos = config.eos_token_id
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    if stop_id not in ids:
        config.eos_token_id = [*ids, stop_id]


def raw_text_tokenizer(tokenizer: Any) -> Any:
    """The tokenizer to ship with a model tuned on raw text: one that puts ``bos`` in front,
    as raw-text training wrote it, where the tokenizer would not by itself (a plain
    ``tokenizer(prompt)``, the server's included, then gives the model what training gave).
    The session's own tokenizer is not changed.

    Examples:
        >>> from transformers import AutoTokenizer
        >>> from workbench.models.tiny import build_tiny_model
        >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-glue-bos"))
        >>> shipped = raw_text_tokenizer(tokenizer)
        >>> shipped("Hi").input_ids[0] == tokenizer.bos_token_id != tokenizer("Hi").input_ids[0]
        True
    """
    import copy

    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None or tokenizer("x").input_ids[:1] == [bos]:
        return tokenizer
    shipped = copy.deepcopy(tokenizer)
    try:
        shipped.add_bos_token = True
    except (AttributeError, ValueError):
        return tokenizer
    return shipped if shipped("x").input_ids[:1] == [bos] else tokenizer


def _server_reads(tokenizer: Any, model: Any, template: Any, ends: list[str]) -> bool:
    """Whether ``transformers serve`` reads this template's answers right without a
    ``response_template``: it has none for the family (raw text passes through), or its
    fallback (Qwen's, Gemma 4's) finds the template's turn header and ends where it ends.
    A Qwen tuned with ``template="alpaca"`` was answered with its whole prompt echoed."""
    try:
        from transformers.cli.serving.utils import get_response_template
    except ImportError:
        return True
    if getattr(tokenizer, "response_template", None) is not None:
        return True  # the tokenizer ships its own
    fallback = get_response_template(tokenizer, model.config)
    if fallback is None:
        return True
    turn = [{"role": "user", "content": "x"}]
    anchors = fallback.get("start_anchor") or []
    anchors = [anchors] if isinstance(anchors, str) else list(anchors)
    prompt = template.render(turn, True)
    if not any(anchor in prompt for anchor in anchors):
        return False
    content = fallback.get("fields", {}).get("content", {})
    closes = content.get("close") or []
    closes = [closes] if isinstance(closes, str) else list(closes)
    pattern = content.get("close_pattern")
    return all(end in closes or (pattern is not None and re.search(pattern, end)) for end in ends)


def card_for(session: Any, export_format: str) -> ModelCard:
    """Collect the model card's facts from a session's state.

    Examples:
        >>> from workbench.models.tiny import build_tiny_model
        >>> from workbench.session import Session
        >>> folder = str(build_tiny_model("/tmp/wb-doc-deploy-session_glue-tiny"))
        >>> session = Session("/tmp/wb-doc-deploy-session_glue-run", verbose=False)
        >>> _ = session.load_model(folder)
        >>> card = card_for(session, "safetensors")
        >>> card.base_model, card.export_format, card.training, card.terms
        ('/tmp/wb-doc-deploy-session_glue-tiny', 'safetensors', {}, '')
    """
    from workbench.models.builtin import BUILTIN_MODELS

    spec = session.loaded.source.spec
    builtin = BUILTIN_MODELS.get(spec)
    return ModelCard(
        base_model=spec,
        export_format=export_format,
        data_summary=session.trained_data_summary(),
        training=session.training_summary(),
        scores=session.scores_summary(),
        terms=builtin.terms if builtin else "",
        quantization=session.loaded.quantization,
        dtype=session.loaded.dtype,
        adapter_strength=session.adapter_strength,
        tuned=session.holds_tuned_weights,
    )
