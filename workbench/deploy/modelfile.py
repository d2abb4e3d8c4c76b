"""An Ollama ``Modelfile`` for an exported ``model.gguf``: its prompt format and stop words.

Ollama formats chats with a Go template, not with the Jinja ``tokenizer.chat_template`` the
GGUF carries, so the Modelfile spells the training format out again. The chat formats the
workbench trains with have one each (:data:`OLLAMA_TEMPLATES`): ChatML (``<|im_start|>``,
the tiny model and Qwen), Gemma (``<start_of_turn>``; a system message goes before the first
user message, as in Gemma's own template). A chat template of another form gets
no ``TEMPLATE`` line and a comment saying so: Ollama then guesses from the file.

Tools: the Go templates write none. Ollama 0.30 and later compare the two templates and,
when the GGUF's chat template (the one the model was tuned with) handles tools and the
``TEMPLATE`` does not, render chats with the GGUF's template (llama.cpp's Jinja engine), so
a model tuned on tool calls gets its tools and calls as trained; the Modelfile says so in a
comment. A Go copy would lose that: Ollama would then prefer it, and Go's JSON spells the
tools and arguments differently from the training text.

Beginning-of-text is not in the templates: llama.cpp adds it itself when the GGUF says
``tokenizer.ggml.add_bos_token``. Gemma's Jinja template trims each message; Go templates
have no trim, so Ollama sends messages as given.

Examples:
    >>> from workbench.data.templates import TEMPLATES
    >>> print(render_modelfile(TEMPLATES["chatml"].source).splitlines()[0])
    FROM ./model.gguf
"""

from __future__ import annotations

from pathlib import Path

from workbench.deploy.gguf_vocab import end_of_turn

__all__ = ["OLLAMA_TEMPLATES", "render_modelfile", "write_modelfile"]

_CHATML = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n"
    "{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
)
_GEMMA = (
    '{{- $system := "" }}{{- $first := true }}'
    "{{- range .Messages }}"
    '{{- if eq .Role "system" }}{{ $system = printf "%s\\n\\n" .Content }}'
    "{{- else }}<start_of_turn>"
    '{{ if eq .Role "assistant" }}model{{ else }}{{ .Role }}{{ end }}\n'
    "{{ if $first }}{{ $system }}{{ $first = false }}{{ end }}{{ .Content }}<end_of_turn>\n"
    "{{ end }}"
    "{{- end }}<start_of_turn>model\n"
)
# Text that identifies each chat format in a Jinja chat template -> (Go template, stop words).
OLLAMA_TEMPLATES: dict[str, tuple[str, tuple[str, ...]]] = {
    "<|im_start|>": (_CHATML, ("<|im_end|>",)),
    "<start_of_turn>": (_GEMMA, ("<end_of_turn>",)),
}


_TOOLS_NOTE = (
    "# Tools: the chat template in the GGUF writes tools and tool calls and the TEMPLATE\n"
    "# below does not, so Ollama 0.30 and later render chats with the GGUF's template (the\n"
    "# one the model was tuned with); older Ollama versions use the TEMPLATE, without tools."
)


def _writes_tools(chat_template: str) -> bool:
    """Whether a Jinja chat template handles tools, by Ollama's own test of the text."""
    return "tools" in chat_template or "tool_call" in chat_template


def render_modelfile(chat_template: str | None, gguf_name: str = "model.gguf") -> str:
    """The Modelfile text for a GGUF whose tokenizer has ``chat_template``.

    Examples:
        >>> from workbench.data.templates import TEMPLATES
        >>> text = render_modelfile(TEMPLATES["gemma"].source)
        >>> [line for line in text.splitlines() if line.startswith("PARAMETER")]
        ['PARAMETER stop "<end_of_turn>"']
        >>> render_modelfile(TEMPLATES["chatml"].source).count("# Tools:")  # it writes tools
        1
        >>> print(render_modelfile(None))
        FROM ./model.gguf
        # No TEMPLATE: the model has no chat template, so Ollama sends prompts as they are.
        <BLANKLINE>
    """
    lines = [f"FROM ./{gguf_name}"]
    known = next((v for k, v in OLLAMA_TEMPLATES.items() if k in (chat_template or "")), None)
    if known is None:
        reason = "has no chat template" if not chat_template else "uses a chat format"
        lines.append(
            f"# No TEMPLATE: the model {reason}"
            + (
                " this writer has no Go template for; Ollama guesses one from the GGUF."
                if chat_template
                else ", so Ollama sends prompts as they are."
            )
        )
        stops: tuple[str, ...] = tuple(filter(None, [end_of_turn(chat_template)]))
    else:
        template, stops = known
        if _writes_tools(chat_template or ""):
            lines.append(_TOOLS_NOTE)
        lines.append(f'TEMPLATE """{template}"""')
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    return "\n".join(lines) + "\n"


def write_modelfile(folder: Path, tokenizer, gguf_name: str = "model.gguf") -> Path:
    """Write ``folder / "Modelfile"`` for ``folder / gguf_name``; returns its path.

    Examples:
        >>> from transformers import AutoTokenizer
        >>> from workbench.models.tiny import build_tiny_model
        >>> folder = build_tiny_model("/tmp/wb-doc-deploy-modelfile-tiny")
        >>> path = write_modelfile(folder, AutoTokenizer.from_pretrained(folder))
        >>> path.name, path.read_text().splitlines()[0]
        ('Modelfile', 'FROM ./model.gguf')
        >>> [line for line in path.read_text().splitlines() if line.startswith("PARAMETER")]
        ['PARAMETER stop "<|im_end|>"']
    """
    path = folder / "Modelfile"
    path.write_text(render_modelfile(tokenizer.chat_template, gguf_name), encoding="utf-8")
    return path
