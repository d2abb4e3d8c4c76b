"""Prompt templates: the tokenizer's chat template, or a built-in one chosen by name.

A :class:`Template` is a Jinja chat template (the same language as ``tokenizer.chat_template``),
rendered by transformers' own renderer with the tokenizer's special tokens. The *same*
function, :func:`render_prompt`, renders a conversation for training and a prompt for
inference, and :func:`encode` tokenizes both the same way (``add_special_tokens=False``:
the template already writes ``bos``). :func:`check_template` verifies at token level that the
training rendering of prompt + answer starts with exactly the inference prompt's tokens;
when it does not (a trailing space in the generation prompt, say), the model trains on
tokens it will never see at inference.

Built-ins: ``alpaca``, ``chatml`` and ``gemma`` (Gemma's ``<start_of_turn>`` format; the
Gemma 3 270M GGUF tokenizer ships without a chat template, so Gemma-family tokenizers that
lack one get it automatically).

Examples:
    >>> t = TEMPLATES["gemma"]
    >>> t.render([{"role": "user", "content": "Hi"}], True, bos_token="<bos>", eos_token="<eos>")
    '<bos><start_of_turn>user\\nHi<end_of_turn>\\n<start_of_turn>model\\n'
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from workbench.errors import SpecError

__all__ = [
    "RENDERER_ARGUMENTS",
    "SAMPLE_CONVERSATION",
    "TEMPLATES",
    "Template",
    "TemplateCheck",
    "check_template",
    "encode",
    "encode_prompt",
    "render_many",
    "render_prompt",
    "resolve_template",
    "text_only_stop",
]

Messages = Sequence[dict[str, Any]]
Origin = Literal["tokenizer", "builtin", "custom"]

_ALPACA = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\n\n' }}"
    "{% else %}{{ 'Below is an instruction that describes a task. '"
    " + 'Write a response that appropriately completes the request.\n\n' }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '### Response:\n' + message['content'] + eos_token }}"
    "{% if not loop.last %}{{ '\n\n' }}{% endif %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}"
)
# Tool calling in the built-ins, in the Hermes convention Qwen 2.5 and many tuned models use:
# the tools are listed as JSON in a <tools> block of the system text, and each call is written
# as <tool_call>{"name": ..., "arguments": {...}}</tool_call> after the turn's text.
_TOOLS_TEXT = (
    "{% set listed = namespace(text='') %}{% if tools %}{% set listed.text = 'You may call one "
    'or more of these tools. Write each call as <tool_call>{"name": ..., "arguments": '
    "{...}}</tool_call>.\n<tools>' %}{% for tool in tools %}"
    "{% set listed.text = listed.text + '\n' + (tool | tojson) %}{% endfor %}"
    "{% set listed.text = listed.text + '\n</tools>' %}{% endif %}"
    "{% set tools_text = listed.text %}"
)
_CALLS = (
    "{% for call in message.tool_calls or [] %}"
    "{{ ('\n' if content or not loop.first else '') + '<tool_call>\n' }}"
    "{{ ({'name': call.function.name, 'arguments': call.function.arguments} | tojson) }}"
    "{{ '\n</tool_call>' }}{% endfor %}"
)
_CHATML = (
    _TOOLS_TEXT + "{% set skip_system = false %}"
    "{% if tools %}{% set system = messages[0]['content'] + '\n\n' "
    "if messages[0]['role'] == 'system' else '' %}"
    "{% set skip_system = messages[0]['role'] == 'system' %}"
    "{{ '<|im_start|>system\n' + system + tools_text + '<|im_end|>\n' }}{% endif %}"
    "{% for message in messages %}{% if not (loop.first and skip_system) %}"
    "{% set content = message['content'] %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + content }}" + _CALLS + "{{ '<|im_end|>' + '\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Follows Gemma 3's own chat template: the system text is prepended to the first user turn.
# Gemma has no tool role: a tool's result is a user turn inside <tool_response> tags.
_GEMMA = (
    _TOOLS_TEXT + "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% if messages[0]['role'] == 'system' %}{% set prefix = messages[0]['content'] %}"
    "{% set loop_messages = messages[1:] %}"
    "{% else %}{% set prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% if tools_text %}{% set prefix = prefix + ('\n\n' if prefix else '') + tools_text %}"
    "{% endif %}{% if prefix %}{% set prefix = prefix + '\n\n' %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{% set content = message['content'] | trim %}"
    "{% if role == 'tool' %}{% set role = 'user' %}"
    "{% set content = '<tool_response>\n' + content + '\n</tool_response>' %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') }}"
    "{{ content }}" + _CALLS + "{{ '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

SAMPLE_CONVERSATION: tuple[dict[str, str], ...] = (
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "the capital is Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "the capital is Rome."},
)
"""The conversation :func:`check_template` renders when given no other."""


@dataclass(frozen=True)
class Template:
    """A Jinja chat template with a name.

    Attributes:
        name: ``"alpaca"``, ``"chatml"``, ``"gemma"``, ``"tokenizer"`` or a custom name.
        source: The Jinja text, as in ``tokenizer.chat_template``.
        origin: ``"builtin"``, ``"tokenizer"`` (the tokenizer's own) or ``"custom"``.
        stop: Text that ends an answer at inference (``None``: the tokenizer's eos).
        description: One line for people.

    Examples:
        >>> print(str(TEMPLATES["chatml"]).splitlines()[0])
        Template 'chatml' (builtin): ChatML turns <|im_start|>role ... <|im_end|>
    """

    name: str
    source: str
    origin: Origin = "custom"
    stop: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.origin not in ("tokenizer", "builtin", "custom"):
            msg = f"Template origin={self.origin!r} must be 'tokenizer', 'builtin' or 'custom'"
            raise SpecError(msg)

    def render(self, messages: Messages, add_generation_prompt: bool = False, **tokens: Any) -> str:
        """Render ``messages`` with explicit special tokens (``bos_token=``, ``eos_token=``).

        Examples:
            >>> TEMPLATES["chatml"].render([{"role": "user", "content": "Hi"}])
            '<|im_start|>user\\nHi<|im_end|>\\n'
        """
        return _render([list(messages)], self.source, add_generation_prompt, tokens)[0]

    def __str__(self) -> str:
        sample = self.render(SAMPLE_CONVERSATION[:3], bos_token="<bos>", eos_token="<eos>")
        head = f"Template {self.name!r} ({self.origin}): {self.description}".rstrip(": ")
        return f"{head}\nrendered sample (bos/eos shown as <bos>/<eos>):\n{sample}"

    def _repr_html_(self) -> str:
        import html

        return f"<pre>{html.escape(str(self))}</pre>"


TEMPLATES: dict[str, Template] = {
    "alpaca": Template(
        "alpaca", _ALPACA, "builtin", None, "### Instruction / ### Response, answer ends with eos"
    ),
    "chatml": Template(
        "chatml", _CHATML, "builtin", "<|im_end|>", "ChatML turns <|im_start|>role ... <|im_end|>"
    ),
    "gemma": Template(
        "gemma",
        _GEMMA,
        "builtin",
        "<end_of_turn>",
        "Gemma turns <start_of_turn>user/model ... <end_of_turn>",
    ),
}
"""Built-in templates by name."""


def _render(
    conversations: list[list[dict[str, Any]]],
    source: str,
    generation: bool,
    tokens: dict,
    tools: Sequence[list[dict[str, Any]] | None] | None = None,
) -> list[str]:
    """Render conversations, each with its own tools (``None``: none offered)."""
    if tools is None or not any(tools):
        return _render_batch(conversations, source, generation, tokens, None)
    rendered: list[str] = [""] * len(conversations)
    groups: dict[str, list[int]] = {}
    for k, offered in enumerate(tools):
        groups.setdefault(json.dumps(offered, sort_keys=True), []).append(k)
    for members in groups.values():
        offered = tools[members[0]] or None
        texts = _render_batch(
            [conversations[k] for k in members], source, generation, tokens, offered
        )
        for k, text in zip(members, texts, strict=True):
            rendered[k] = text
    return rendered


def _render_batch(
    conversations: list[list[dict[str, Any]]],
    source: str,
    generation: bool,
    tokens: dict,
    tools: list[dict[str, Any]] | None,
) -> list[str]:
    from jinja2.exceptions import UndefinedError
    from transformers.utils.chat_template_utils import render_jinja_template

    # The renderer behind tokenizer.apply_chat_template, called once for a whole batch.
    try:
        rendered, _ = render_jinja_template(
            conversations,
            tools=tools,
            chat_template=source,
            add_generation_prompt=generation,
            **tokens,
        )
    except UndefinedError as err:
        missing = (
            f"{err.message}: the tokenizer has no such special token"
            if "_token" in (err.message or "")
            else err.message
        )
        msg = (
            f"the chat template cannot be rendered ({missing}); give the tokenizer that "
            "token, or pick a template that does without it (template='chatml' marks turns "
            "with text)"
        )
        raise SpecError(msg) from None
    return list(rendered)


def _has_token(tokenizer: Any, token: str) -> bool:
    return token in tokenizer.get_vocab()


def resolve_template(template: Template | str | None, tokenizer: Any) -> Template:
    """Pick the template: the one named, else the tokenizer's, else a built-in that fits.

    With ``template=None``: the tokenizer's chat template if it has one; otherwise ``gemma``
    for tokenizers that know ``<start_of_turn>``, ``chatml`` for those that know
    ``<|im_start|>`` or have no end-of-sequence token (alpaca ends answers with it), else
    ``alpaca``.

    Args:
        template: ``None``, a :class:`Template`, a name in :data:`TEMPLATES`, ``"tokenizer"``,
            or Jinja text (anything containing ``{%`` or ``{{``).
        tokenizer: A transformers tokenizer.

    Raises:
        SpecError: Unknown name, or ``"tokenizer"`` for a tokenizer without a chat template.

    Examples:
        >>> resolve_template("alpaca", None).name
        'alpaca'
    """
    if isinstance(template, Template):
        return template
    if template is None:
        return _default_template(tokenizer)
    if "{%" in template or "{{" in template:
        return Template("custom", template, "custom")
    if template == "tokenizer":
        if not getattr(tokenizer, "chat_template", None):
            msg = "template='tokenizer' but the tokenizer has no chat template; pick one of " + str(
                list(TEMPLATES)
            )
            raise SpecError(msg)
        return Template(
            "tokenizer",
            tokenizer.get_chat_template(),
            "tokenizer",
            None,
            "the tokenizer's chat template",
        )
    if template not in TEMPLATES:
        msg = f"template={template!r} is not one of {['tokenizer', *TEMPLATES]} (or Jinja text)"
        raise SpecError(msg)
    return TEMPLATES[template]


def _default_template(tokenizer: Any) -> Template:
    if getattr(tokenizer, "chat_template", None):
        return resolve_template("tokenizer", tokenizer)
    if _has_token(tokenizer, "<start_of_turn>"):
        return TEMPLATES["gemma"]
    if _has_token(tokenizer, "<|im_start|>") or not getattr(tokenizer, "eos_token", None):
        return TEMPLATES["chatml"]  # alpaca ends answers with eos: without one, it never stops
    return TEMPLATES["alpaca"]


# The renderer's own arguments: as template options they failed with a TypeError, or changed
# the rendering (continue_final_message).
RENDERER_ARGUMENTS = frozenset(
    {
        "add_generation_prompt",
        "chat_template",
        "continue_final_message",
        "conversations",
        "documents",
        "messages",
        "return_assistant_tokens_mask",
        "tools",
    }
)


def render_many(
    template: Template,
    tokenizer: Any,
    conversations: list[list[dict[str, Any]]],
    add_generation_prompt: bool,
    tools: Sequence[list[dict[str, Any]] | None] | None = None,
    options: dict[str, Any] | None = None,
) -> list[str]:
    """Render many conversations at once (what training uses; same output as :func:`render_prompt`).

    ``tools[k]`` lists the tools offered in conversation ``k`` (``None``: none anywhere);
    ``options`` are the template's own variables (Qwen3's ``enable_thinking``), as a served
    request's ``chat_template_kwargs`` give them.

    Raises:
        SpecError: ``options`` name one of the renderer's own arguments
            (:data:`RENDERER_ARGUMENTS`).

    Examples:
        >>> render_many(TEMPLATES["chatml"], None, [[{"role": "user", "content": "a"}]], True)
        ['<|im_start|>user\\na<|im_end|>\\n<|im_start|>assistant\\n']
        >>> render_many(TEMPLATES["chatml"], None, [[]], True, options={"tools": []})
        Traceback (most recent call last):
        ...
        workbench.errors.SpecError: template options cannot set tools: the renderer sets it
    """
    taken = sorted(RENDERER_ARGUMENTS.intersection(options or {}))
    if taken:
        msg = f"template options cannot set {', '.join(taken)}: the renderer sets it"
        raise SpecError(msg)
    tokens = dict(tokenizer.special_tokens_map) if tokenizer is not None else {}
    variables = {**tokens, **(options or {})}
    return _render(conversations, template.source, add_generation_prompt, variables, tools)


def render_prompt(
    template: Template | str | None,
    tokenizer: Any,
    messages: Messages,
    add_generation_prompt: bool = True,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """Render ``messages`` to text: THE function used for training and inference alike.

    Tokenize its output with :func:`encode` (``add_special_tokens=False``): the template
    already writes the ``bos`` token where the model expects one.

    Args:
        template: A :class:`Template`, a name, ``None`` (see :func:`resolve_template`).
        tokenizer: Supplies ``bos_token``/``eos_token`` and, for ``None``, its chat template.
        messages: ``[{"role": ..., "content": ...}, ...]``.
        add_generation_prompt: Append the header that opens an assistant turn (inference).
        tools: The tools offered (OpenAI's function schemas), for templates that write them.

    Examples:
        >>> render_prompt("chatml", None, [{"role": "user", "content": "Hi"}])
        '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
    """
    resolved = resolve_template(template, tokenizer)
    offered = [tools] if tools else None
    return render_many(resolved, tokenizer, [list(messages)], add_generation_prompt, offered)[0]


def encode(tokenizer: Any, texts: list[str], offsets: bool = False) -> Any:
    """Tokenize rendered texts the one way training and inference share.

    Special tokens are never added: the rendered text already carries the ones it needs.

    Examples:
        >>> from transformers import AutoTokenizer
        >>> from workbench.models.tiny import build_tiny_model
        >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-templates"))
        >>> encode(tokenizer, ["<s>Hello", "Hi"])["input_ids"]
        [[1, 45, 494], [45, 78]]
        >>> encode(tokenizer, ["Hi"], offsets=True)["offset_mapping"]
        [[(0, 1), (1, 2)]]
    """
    return tokenizer(texts, add_special_tokens=False, return_offsets_mapping=offsets)


def text_only_stop(template: Template, tokenizer: Any) -> str | None:
    """The template's end of turn when this tokenizer has no single token for it (a built-in
    template on another family's tokenizer), else ``None``: the session's generate stops
    there by searching the text, but an export stops only at an end token, and writes on.

    Examples:
        >>> from transformers import AutoTokenizer
        >>> from workbench.models.tiny import build_tiny_model
        >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-templates"))
        >>> [text_only_stop(TEMPLATES[name], tokenizer) for name in ("gemma", "chatml")]
        ['<end_of_turn>', None]
    """
    stop = template.stop
    if not stop:
        return None
    return stop if len(encode(tokenizer, [stop])["input_ids"][0]) != 1 else None


def encode_prompt(template: Template | str | None, tokenizer: Any, messages: Messages) -> list[int]:
    """Token ids of the inference prompt for ``messages`` (generation prompt appended).

    Examples:
        >>> import torch
        >>> from workbench.models.loading import load_model
        >>> from workbench.models.tiny import build_tiny_model
        >>> loaded = load_model(str(build_tiny_model("/tmp/wb-doc-templates")), on_event=len)
        >>> ids = encode_prompt("chatml", loaded.tokenizer, [{"role": "user", "content": "Hi"}])
        >>> loaded.tokenizer.decode(ids)
        '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
        >>> loaded.model.generate(torch.tensor([ids]), max_new_tokens=3, do_sample=False).shape
        torch.Size([1, 16])
    """
    return encode(tokenizer, [render_prompt(template, tokenizer, messages)])["input_ids"][0]


@dataclass(frozen=True)
class TemplateCheck:
    """Result of :func:`check_template`.

    Attributes:
        ok: The training ids start with exactly the inference prompt ids.
        prompt_ids: Inference-time prompt ids.
        train_ids: Training-time ids of prompt + answer.
        position: First position where they differ (``None`` when ``ok``).
        message: What differs, for people.

    Examples:
        >>> TemplateCheck(True, [1], [1, 2], None, "ok").ok
        True
    """

    ok: bool
    prompt_ids: list[int]
    train_ids: list[int]
    position: int | None
    message: str


def check_template(
    template: Template, tokenizer: Any, messages: Messages = SAMPLE_CONVERSATION
) -> TemplateCheck:
    """Compare training and inference renderings of ``messages`` token by token.

    The prompt is ``messages`` up to the last assistant turn, rendered with the generation
    prompt; the training text is the whole conversation. Their ids must agree on the
    prompt's length.

    Examples:
        >>> from transformers import AutoTokenizer
        >>> from workbench.models.tiny import build_tiny_model
        >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-templates"))
        >>> check = check_template(TEMPLATES["chatml"], tokenizer)
        >>> check.ok, check.position, check.message
        (True, None, 'training and inference prompts agree')
    """
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    prompt = render_prompt(template, tokenizer, messages[:last], add_generation_prompt=True)
    full = render_prompt(template, tokenizer, messages[: last + 1], add_generation_prompt=False)
    prompt_ids, train_ids = encode(tokenizer, [prompt, full])["input_ids"]
    if train_ids[: len(prompt_ids)] == prompt_ids:
        return TemplateCheck(
            True, prompt_ids, train_ids, None, "training and inference prompts agree"
        )
    pos = next(
        (i for i, (a, b) in enumerate(zip(prompt_ids, train_ids, strict=False)) if a != b),
        len(train_ids),
    )
    shown = (
        tokenizer.convert_ids_to_tokens(prompt_ids[pos : pos + 3]),
        tokenizer.convert_ids_to_tokens(train_ids[pos : pos + 3]),
    )
    msg = (
        f"template {template.name!r}: the inference prompt tokenizes differently from the "
        f"training text at token {pos} (inference {shown[0]} vs training {shown[1]}); the model "
        "would train on tokens it never sees at inference (often a trailing space or newline "
        "in the generation prompt)"
    )
    return TemplateCheck(False, prompt_ids, train_ids, pos, msg)
