"""Chat prompts: a message, or a conversation, rendered the way the model was tuned.

A chat message becomes one user turn rendered with the template the data was loaded with
(``Session.load_data`` keeps it as ``data.template``), by the same function training used
(:func:`workbench.data.templates.render_many`), with the header that opens the model's turn.
The answer ends at the template's stop string (``<|im_end|>`` for ChatML). Without loaded
data the tokenizer's own ``chat_template`` is used, and its end-of-turn token (when the
template writes a known one that is a single token) is the stop; with neither, a
:class:`~workbench.errors.SpecError` says what to do.

Examples:
    >>> from workbench.data.templates import TEMPLATES
    >>> inputs = chat_inputs("Hi", None, TEMPLATES["chatml"])
    >>> inputs.prompts, inputs.stop_strings, inputs.single
    (['<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'], ['<|im_end|>'], True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jinja2.exceptions import TemplateError

from workbench.data.prompts import chat_prompt_ids
from workbench.data.special_text import SpecialTokensInText
from workbench.data.templates import Template, render_many, resolve_template
from workbench.data.tool_calls import check_template_writes_tools, tool_calls_of, tools_of
from workbench.errors import SpecError
from workbench.models.generation import stop_token_ids

__all__ = [
    "END_OF_TURN_TOKENS",
    "ChatInputs",
    "chat_inputs",
    "chat_stop_strings",
    "chat_template",
    "conversation",
    "describe_chat",
]

END_OF_TURN_TOKENS: tuple[str, ...] = (
    "<|im_end|>",
    "<end_of_turn>",
    "<|eot_id|>",
    "<|end|>",
    "<turn|>",
)
"""End-of-turn tokens looked for in a tokenizer's own chat template, which names no stop:
ChatML's, Gemma's, Llama 3's, Phi-3's and Gemma 4's, the ones llama.cpp also knows by text."""

_ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class ChatInputs:
    """What :func:`chat_inputs` gives generation.

    Attributes:
        prompts: One rendered prompt per conversation, ending with the model's turn header.
        stop_strings: Where an answer ends (the template's end of turn); may be empty.
        single: The input was one message or one conversation (so one answer, not a list).
        template: The template used.
        prompt_ids: Each prompt's token ids as training tokenized its prompts (control
            tokens written in a message stay plain text: :mod:`workbench.data.prompts`);
            ``None`` without a tokenizer.

    Examples:
        >>> ChatInputs(["p"], [], True, None).single
        True
    """

    prompts: list[str]
    stop_strings: list[str]
    single: bool
    template: Template | None
    prompt_ids: list[list[int]] | None = None


def chat_template(template: Template | str | None, tokenizer: Any) -> Template:
    """The template to chat with: ``template`` (the data's) if given, else the tokenizer's.

    Raises:
        SpecError: no template given and the tokenizer has no ``chat_template``.

    Examples:
        >>> chat_template("chatml", None).name
        'chatml'
        >>> chat_template(None, None)
        Traceback (most recent call last):
        workbench.errors.SpecError: no chat template: load_data(...) first (the model chats with \
the template it was tuned with), or load a model whose tokenizer has a chat_template.
    """
    if template is not None:
        return resolve_template(template, tokenizer)
    if getattr(tokenizer, "chat_template", None):
        return resolve_template("tokenizer", tokenizer)
    raise SpecError(
        "no chat template: load_data(...) first (the model chats with the template it was "
        "tuned with), or load a model whose tokenizer has a chat_template."
    )


def chat_stop_strings(template: Template, tokenizer: Any) -> list[str]:
    """Where a chat answer ends: the template's ``stop``, else the end-of-turn token it writes.

    Examples:
        >>> from workbench.data.templates import TEMPLATES
        >>> chat_stop_strings(TEMPLATES["gemma"], None)
        ['<end_of_turn>']
        >>> chat_stop_strings(TEMPLATES["alpaca"], None)  # ends with the tokenizer's eos
        []
    """
    if template.stop:
        return [template.stop]
    if tokenizer is None:
        return []
    return [
        token
        for token in END_OF_TURN_TOKENS
        if token in template.source and stop_token_ids(tokenizer, [token])
    ][:1]


def conversation(message: str | Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One message as a user turn, or a checked copy of a list of ``{role, content}`` turns.

    The last turn must be the user's or a tool's result (the model answers it). An assistant
    turn may call tools (OpenAI's ``tool_calls``; its content may then be ``None``).

    Raises:
        SpecError: an empty conversation, an unknown role, a content that is not text, a
            malformed tool call, or a last turn that is neither the user's nor a tool's.

    Examples:
        >>> conversation("Hi")
        [{'role': 'user', 'content': 'Hi'}]
        >>> conversation([{"role": "user", "content": "Hi"},
        ...               {"role": "assistant", "content": "Hello"}])
        Traceback (most recent call last):
        workbench.errors.SpecError: the last turn is the assistant's: a chat ends with the user's \
turn (or a tool's result), which the model answers.
    """
    if isinstance(message, str):
        return [{"role": "user", "content": message}]
    turns = [dict(turn) for turn in message] if isinstance(message, Sequence) else []
    if not turns:
        raise SpecError("a conversation needs at least one {'role': 'user', 'content': ...} turn.")
    for i, turn in enumerate(turns):
        if turn.get("role") == "assistant" and turn.get("tool_calls"):
            turn["tool_calls"] = _checked(tool_calls_of, turn["tool_calls"], f"turn {i}")
            turn["content"] = turn.get("content") or ""
        if turn.get("role") not in _ROLES or not isinstance(turn.get("content"), str):
            raise SpecError(
                f"turn {i} is {turn!r}: each turn needs a role in {list(_ROLES)} and a text "
                "content."
            )
    if turns[-1]["role"] not in ("user", "tool"):
        raise SpecError(
            f"the last turn is the {turns[-1]['role']}'s: a chat ends with the user's turn "
            "(or a tool's result), which the model answers."
        )
    return turns


def _checked(check: Any, value: Any, where: str) -> Any:
    """``check(value, where)`` (a data-row check), its complaint raised as a ``SpecError``."""
    from workbench.data.formats import RowError

    try:
        return check(value, where)
    except RowError as err:
        raise SpecError(f"{err.field}: {err.message}") from None


def chat_inputs(
    prompt: str | Sequence[Any],
    tokenizer: Any,
    template: Template | str | None = None,
    tools: list[dict[str, Any]] | None = None,
    special_tokens_in_text: SpecialTokensInText = "split",
) -> ChatInputs:
    """Render chat prompts for generation, with the stop strings that end their answers.

    Args:
        prompt: A message (one user turn), a list of messages (a batch, one answer each), a
            list of ``{"role", "content"}`` turns (one conversation), or a list of such lists.
        tokenizer: Its special tokens go into the template (and its template is the fallback).
        template: The template the data was loaded with (``data.template``), or ``None``.
        tools: Tools offered to the model (OpenAI's function schemas), as in training data's
            ``tools``; refused when the template does not write them.
        special_tokens_in_text: What a control token written as text in a message becomes
            in ``prompt_ids``: ``"split"`` plain text (the default, as training does), or
            ``"keep"`` a control token (for data loaded with it).

    Examples:
        >>> from workbench.models.loading import load_model
        >>> from workbench.models.tiny import build_tiny_model
        >>> loaded = load_model(str(build_tiny_model("/tmp/wb-doc-chat")), on_event=len)
        >>> inputs = chat_inputs(["Hi", "Bye"], loaded.tokenizer)  # the tokenizer's template
        >>> inputs.template.name, inputs.stop_strings, inputs.single
        ('tokenizer', ['<|im_end|>'], False)
        >>> print(inputs.prompts[1])
        <|im_start|>user
        Bye<|im_end|>
        <|im_start|>assistant
        <BLANKLINE>
    """
    resolved = chat_template(template, tokenizer)
    if isinstance(prompt, Mapping):  # one message: a conversation of one turn
        prompt = [prompt]
    items = [prompt] if isinstance(prompt, str) else list(prompt)
    single = isinstance(prompt, str) or bool(items and isinstance(items[0], Mapping))
    if single and not isinstance(prompt, str):
        items = [items]
    if not items:
        raise SpecError("prompt is empty: give a message or a list of messages.")
    conversations = [conversation(item) for item in items]
    offered = _checked(tools_of, tools, "tools")
    each = [offered] * len(conversations) if offered else None
    try:
        prompts = render_many(resolved, tokenizer, conversations, True, each)
    except TemplateError as err:  # Gemma's, Mistral's: "System role not supported"
        msg = f"the chat template ({resolved.name!r}) refuses these turns: {err.message or err}"
        raise SpecError(msg) from None
    for rendered, turns in zip(prompts, conversations, strict=True):
        dropped = check_template_writes_tools(rendered, turns, offered)
        if dropped:
            msg = (
                f"the chat template ({resolved.name!r}) cannot take these tools: {dropped}; "
                "chat with the template the model was tuned with "
                "(load_data(..., template='chatml') writes tools)"
            )
            raise SpecError(msg)
    ids = None
    if tokenizer is not None:
        ids = chat_prompt_ids(resolved, tokenizer, conversations, each, special_tokens_in_text)
    stops = chat_stop_strings(resolved, tokenizer)
    return ChatInputs(prompts, stops, single, resolved, ids)


def describe_chat(template: Template, tokenizer: Any) -> str:
    """One line for people: which template, and where answers stop.

    Examples:
        >>> from workbench.data.templates import TEMPLATES
        >>> describe_chat(TEMPLATES["chatml"], None)
        "template 'chatml' (builtin), answers stop at '<|im_end|>'"
    """
    stops = chat_stop_strings(template, tokenizer)
    end = f"answers stop at {stops[0]!r}" if stops else "answers stop at the tokenizer's eos"
    return f"template {template.name!r} ({template.origin}), {end}"
