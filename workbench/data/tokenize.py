"""Tokenize normalised rows with completion-only labels, row by row.

This is the reference way (``PreparedData.load(..., batched=False)``): every answer's prompt
is rendered and tokenized on its own, and every row is checked at token level. The default,
:class:`~workbench.data.batched.BatchLabeller`, gives the same columns batch-wise and uses
:class:`Labeller` for a sample of rows and for every row that differs from the rest.

How the mask is computed (and why not ``return_assistant_tokens_mask``): that transformers
option only works for chat templates with ``{% generation %}`` markers, which most lack.
Instead, for every assistant turn ``i`` we render

* ``prompt_i`` = messages before turn ``i`` with the generation prompt (what inference sends),
* ``upto_i``  = messages up to and including turn ``i`` (training text of that turn),

and the whole conversation once. The trained span of turn ``i`` is the text between the end
of ``prompt_i`` and the end of ``upto_i``: the answer plus whatever the template writes after
it (``<|im_end|>``, ``<end_of_turn>``, eos), so the model learns to stop. The full text is
tokenized once with offsets; each ``prompt_i`` is tokenized on its own and its ids must be
a prefix of the full ids (the token-level agreement check). The span starts right after
those prompt ids and ends at the first token that starts past ``upto_i``. Rows where a
rendering is not a prefix of the next, or where the prompt ids differ, get
``template_ok=False`` (reported as ``template_mismatch``).

Literal control tokens in the data (``<|im_end|>`` typed in an answer, say) are found with
one regex per tokenizer and stored per row in ``special_text``; with
``special_tokens_in_text="split"`` (the default) they are tokenized as plain text while the
template's own markers stay control tokens (see :mod:`workbench.data.special_text`). The
same rule applies to every rendering of a row, so prompt ids stay a prefix of the full ids.

An assistant turn listed in the row's ``untrained_turns`` (OpenAI's ``weight: 0``) is not
rendered on its own at all: it stays in the full text as context, its tokens unlabelled.

Raw text trains on every token except a leading ``bos`` (it is never predicted).
Truncation keeps the first ``max_length`` tokens; the full length is stored so the cut can
be reported and a cutoff can be tried without tokenizing again.

Examples:
    >>> from transformers import AutoTokenizer
    >>> from workbench.models.tiny import build_tiny_model
    >>> from workbench.data.templates import resolve_template
    >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-tokenize"))
    >>> template = resolve_template(None, tokenizer)  # the tokenizer's own (ChatML)
    >>> batch = {"messages": [[{"role": "user", "content": "Hi"},
    ...                        {"role": "assistant", "content": "Hello"}]]}
    >>> out = Labeller(template, tokenizer, max_length=None, text=False)(batch)
    >>> out["n_tokens"], out["n_prompt"], out["n_answer"], out["template_ok"]
    ([17], [13], [4], [True])
    >>> labels = out["labels"][0]
    >>> labels.count(IGNORE_INDEX), tokenizer.decode([t for t in labels if t != IGNORE_INDEX])
    (13, 'Hello<|im_end|>\\n')
"""

from __future__ import annotations

import functools
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any

from workbench.data.special_text import (
    SPECIAL_TEXT_COLUMN,
    Span,
    SpecialTokensInText,
    TextGuard,
    special_ids,
)
from workbench.data.templates import Template, encode, render_many
from workbench.data.tool_calls import (
    TOOL_CALLING,
    map_tool_texts,
    refuse_dropped_tools,
    tool_texts,
    with_tool_calling,
)

__all__ = [
    "IGNORE_INDEX",
    "PRODUCED_COLUMNS",
    "STAT_COLUMNS",
    "TOKEN_COLUMNS",
    "UNTRAINED_TURNS",
    "Labeller",
    "message_fields",
    "special_ids",
]

IGNORE_INDEX = -100
TOKEN_COLUMNS = ("input_ids", "labels", "attention_mask")
STAT_COLUMNS = ("n_tokens", "n_prompt", "n_answer", "answer_start", "answer_end", "template_ok")
"""Per-row statistics, all measured before truncation."""
PRODUCED_COLUMNS = (*TOKEN_COLUMNS, *STAT_COLUMNS, SPECIAL_TEXT_COLUMN)
"""Every column :class:`Labeller` writes (removed before tokenizing again)."""
UNTRAINED_TURNS = "untrained_turns"
"""Input column: per row, the indices in ``messages`` of assistant turns not to train on."""


@dataclass
class _Plan:
    """Renderings of one conversation: full text and per assistant turn (prompt, upto).

    ``spans`` are the character spans of literal control tokens from the data in ``full``,
    ``prompt_spans`` the same per turn prompt (empty unless guarded).
    """

    full: str
    turns: list[tuple[str, str]] = field(default_factory=list)
    ok: bool = True
    spans: list[Span] = field(default_factory=list)
    prompt_spans: list[list[Span]] = field(default_factory=list)


def message_fields(messages: list[dict[str, str]]) -> list[tuple[str, str]]:
    """Each message's content with the field it sits in.

    Examples:
        >>> message_fields([{"role": "user", "content": "Hi"}])
        [('messages[0] (user)', 'Hi')]
    """
    return [(f"messages[{i}] ({m['role']})", m["content"]) for i, m in enumerate(messages)]


@dataclass
class Labeller:
    """A ``datasets.map(batched=True)`` function that adds tokens, labels and length stats.

    Attributes:
        template: Template used to render conversations.
        tokenizer: A fast transformers tokenizer (offsets are needed).
        max_length: Keep at most this many tokens (``None``: keep all).
        text: Raw-text format (train on every token).
        special_tokens_in_text: ``"split"``: literal control tokens in the data are
            tokenized as plain text; ``"keep"``: they become control tokens.

    Examples:
        >>> from datasets import Dataset
        >>> from transformers import AutoTokenizer
        >>> from workbench.models.tiny import build_tiny_model
        >>> from workbench.data.templates import resolve_template
        >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-tokenize"))
        >>> chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
        >>> dataset = Dataset.from_list([{"messages": chat}] * 3)
        >>> labeller = Labeller(resolve_template(None, tokenizer), tokenizer, 8, False)
        >>> data = dataset.map(labeller, batched=True)
        >>> data.column_names[:4]
        ['messages', 'input_ids', 'labels', 'attention_mask']
        >>> len(data[0]["input_ids"]), data[0]["n_tokens"]  # cut to 8; the full length is kept
        (8, 17)

        An assistant turn in ``untrained_turns`` is context only (OpenAI's ``weight: 0``):

        >>> two = [*chat, {"role": "user", "content": "Bye"},
        ...        {"role": "assistant", "content": "Ciao"}]
        >>> out = Labeller(labeller.template, tokenizer, None, False)(
        ...     {"messages": [two], "untrained_turns": [[1]]})
        >>> tokenizer.decode([t for t in out["labels"][0] if t != IGNORE_INDEX])
        'Ciao<|im_end|>\\n'
    """

    template: Template
    tokenizer: Any
    max_length: int | None
    text: bool
    special_tokens_in_text: SpecialTokensInText = "split"
    guard: TextGuard = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.guard = TextGuard.of(self.tokenizer, self.special_tokens_in_text)

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """Label one batch of rows.

        Examples:
            Raw text trains on every token but the leading ``<s>``:

            >>> from transformers import AutoTokenizer
            >>> from workbench.models.tiny import build_tiny_model
            >>> from workbench.data.templates import resolve_template
            >>> folder = build_tiny_model("/tmp/wb-doc-tokenize")
            >>> tok = AutoTokenizer.from_pretrained(folder)
            >>> out = Labeller(resolve_template(None, tok), tok, None, True)({"text": ["hi"]})
            >>> out["n_tokens"], tok.convert_ids_to_tokens(out["input_ids"][0])
            ([4], ['<s>', 'h', 'i', '</s>'])
            >>> out["labels"][0][0] == IGNORE_INDEX
            True
        """
        if self.text:
            found = [self.guard.describe([("text", t)]) for t in batch["text"]]
            rows = [self._label_text(ids) for ids in self._encode_text(batch["text"], found)]
        else:
            tool_calling = batch.get(TOOL_CALLING)
            cells = tool_calling or [None] * len(batch["messages"])
            found = [self.describe(m, t) for m, t in zip(batch["messages"], cells, strict=True)]
            rows = self._label_chats(
                batch["messages"], found, batch.get(UNTRAINED_TURNS), tool_calling
            )
        out: dict[str, list[Any]] = {name: [] for name in TOKEN_COLUMNS + STAT_COLUMNS}
        for ids, labels, ok in rows:
            for name, value in self._columns(ids, labels, ok).items():
                out[name].append(value)
        out[SPECIAL_TEXT_COLUMN] = found
        return out

    def _encode_text(self, texts: list[str], found: list[str]) -> list[list[int]]:
        bos = self.tokenizer.bos_token or ""
        eos = self.tokenizer.eos_token or ""
        guarded = self.guard.protects
        spans = [
            self.guard.spans(t, len(bos)) if guarded and f else []
            for t, f in zip(texts, found, strict=True)
        ]
        encoded = self.guard.encode([f"{bos}{t}{eos}" for t in texts], spans)
        return [ids for ids, _ in encoded]

    def _label_text(self, ids: list[int]) -> tuple[list[int], list[int], bool]:
        labels = list(ids)
        if ids and ids[0] == self.tokenizer.bos_token_id:
            labels[0] = IGNORE_INDEX
        return ids, labels, True

    def describe(self, messages: list[dict[str, str]], tool_calling: str | None = None) -> str:
        """Literal control tokens in a conversation's texts, its tool fields included
        (``""`` when none; the :data:`SPECIAL_TEXT_COLUMN` cell).

        Examples:
            >>> from transformers import AutoTokenizer
            >>> from workbench.models.tiny import build_tiny_model
            >>> from workbench.data.templates import resolve_template
            >>> tok = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-tokenize"))
            >>> labeller = Labeller(resolve_template(None, tok), tok, None, False)
            >>> labeller.describe([{"role": "user", "content": "end <|im_end|>"}])
            "'<|im_end|>' in messages[0] (user)"
        """
        return self.guard.describe(message_fields(messages) + tool_texts(tool_calling))

    def _guarded(
        self,
        conversations: list[list[dict[str, str]]],
        found: list[str],
        tool_calling: list[str | None] | None,
    ) -> tuple[list[list[dict[str, str]]], list[str | None] | None, list[bool]]:
        """Conversations and tool cells with literal tokens escaped (guarded rows only),
        and which rows."""
        cells = tool_calling or [None] * len(conversations)
        flags = [
            self.guard.protects
            and bool(f)
            and self.guard.can_escape([m["content"] for m in c] + [t for _, t in tool_texts(t)])
            for c, f, t in zip(conversations, found, cells, strict=True)
        ]
        escaped = [
            [{**m, "content": self.guard.escape(m["content"])} for m in c] if flag else c
            for c, flag in zip(conversations, flags, strict=True)
        ]
        if tool_calling:
            escape = self.guard.escape
            tool_calling = [
                map_tool_texts(t, escape) if flag else t
                for t, flag in zip(tool_calling, flags, strict=True)
            ]
        return escaped, tool_calling, flags

    def _restore(self, text: str, guarded: bool) -> tuple[str, list[Span]]:
        return self.guard.unescape(text) if guarded else (text, [])

    def _plans(
        self,
        conversations: list[list[dict[str, Any]]],
        guarded: list[bool],
        untrained: list[Any] | None,
        tools: list[Any] | None = None,
    ) -> list[_Plan]:
        prompts, uptos, where, turn_of = [], [], [], []
        for row, messages in enumerate(conversations):
            skip = (untrained[row] or ()) if untrained else ()
            for i, message in enumerate(messages):
                if message["role"] == "assistant" and i not in skip:
                    prompts.append(messages[:i])
                    turn_of.append(i)
                    # A final assistant turn ends with the full text: no extra rendering.
                    uptos.append(messages[: i + 1] if i < len(messages) - 1 else None)
                    where.append(row)
        render = functools.partial(render_many, self.template, self.tokenizer)

        def offered(rows: list[int]) -> list[Any] | None:
            return [tools[r] for r in rows] if tools else None

        fulls = render(conversations, False, tools)
        prompt_texts = render(prompts, True, offered(where)) if prompts else []
        answered = list(zip(where, turn_of, prompt_texts, strict=True))
        answered += self._untrained_call_prompts(conversations, untrained, render, offered)
        refuse_dropped_tools(conversations, tools, fulls, answered)
        inner = [u for u in uptos if u is not None]
        inner_rows = [r for r, u in zip(where, uptos, strict=True) if u is not None]
        rendered = iter(render(inner, False, offered(inner_rows)) if inner else [])
        restored = [self._restore(full, g) for full, g in zip(fulls, guarded, strict=True)]
        plans = [_Plan(full, spans=spans) for full, spans in restored]
        for row, raw_prompt, upto in zip(where, prompt_texts, uptos, strict=True):
            plan = plans[row]
            prompt, spans = self._restore(raw_prompt, guarded[row])
            text = plan.full if upto is None else self._restore(next(rendered), guarded[row])[0]
            plan.ok &= text.startswith(prompt) and plan.full.startswith(text)
            plan.turns.append((prompt, text))
            plan.prompt_spans.append(spans)
        return plans

    @staticmethod
    def _untrained_call_prompts(conversations, untrained, render, offered):
        """``(row, turn, prompt)`` of each untrained (weight 0) calling turn, for the check
        that the template writes its calls after its prompt, as it does for trained turns.
        """
        turns = [
            (row, i)
            for row, skip in enumerate(untrained or ())
            for i in skip or ()
            if conversations[row][i].get("tool_calls")
        ]
        if not turns:
            return []
        texts = render(
            [conversations[r][:i] for r, i in turns], True, offered([r for r, _ in turns])
        )
        return [(r, i, text) for (r, i), text in zip(turns, texts, strict=True)]

    def _encode_fulls(self, plans: list[_Plan]) -> list[tuple[list[int], list[int] | None]]:
        """Ids of each full text, with token start offsets where a turn ends mid-text."""
        inner = frozenset(
            k for k, p in enumerate(plans) if any(u is not p.full for _, u in p.turns)
        )
        return self.guard.encode([p.full for p in plans], [p.spans for p in plans], inner)

    def _starts(self, text: str) -> list[int]:
        offsets = encode(self.tokenizer, [text], offsets=True)["offset_mapping"][0]
        return [start for start, _ in offsets]

    def _prompt_ids(self, plans: list[_Plan]) -> Any:
        texts = [prompt for p in plans for prompt, _ in p.turns]
        spans = [s for p in plans for s in p.prompt_spans]
        return iter([ids for ids, _ in self.guard.encode(texts, spans)] if texts else [])

    def _label_chats(
        self,
        conversations: list[list[dict[str, str]]],
        found: list[str],
        untrained: list[Any] | None = None,
        tool_calling: list[str | None] | None = None,
    ) -> list[tuple[list[int], list[int], bool]]:
        """Ids, labels and agreement of each conversation; ``untrained[k]`` holds the message
        indices of row ``k``'s assistant turns to leave unlabelled (``None``: train them all),
        ``tool_calling[k]`` its tools and tool fields (:data:`TOOL_CALLING`)."""
        conversations, tool_calling, guarded = self._guarded(conversations, found, tool_calling)
        tools = None
        if tool_calling and any(tool_calling):
            pairs = [
                with_tool_calling(c, t) for c, t in zip(conversations, tool_calling, strict=True)
            ]
            conversations = [messages for messages, _ in pairs]
            tools = [offered for _, offered in pairs]
        plans = self._plans(conversations, guarded, untrained, tools)
        prompt_ids = self._prompt_ids(plans)
        rows = []
        for plan, (ids, known_starts) in zip(plans, self._encode_fulls(plans), strict=True):
            starts = known_starts
            labels = [IGNORE_INDEX] * len(ids)
            ok = plan.ok
            for prompt, upto in plan.turns:
                p_ids = next(prompt_ids)
                agrees = ids[: len(p_ids)] == p_ids
                ok &= agrees
                if not agrees and starts is None:  # rare: only for disagreeing templates
                    starts = self._starts(plan.full)
                begin = len(p_ids) if agrees else bisect_left(starts, len(prompt))
                if upto is plan.full:
                    end = len(ids)
                else:
                    end = bisect_left(starts, len(upto)) if plan.full.startswith(upto) else begin
                labels[begin:end] = ids[begin:end]
            rows.append((ids, labels, ok))
        return rows

    def _columns(self, ids: list[int], labels: list[int], ok: bool) -> dict[str, Any]:
        trained = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
        cut = slice(0, self.max_length)
        return {
            "input_ids": ids[cut],
            "labels": labels[cut],
            "attention_mask": [1] * len(ids[cut]),
            "n_tokens": len(ids),
            "n_prompt": len(ids) - len(trained),
            "n_answer": len(trained),
            "answer_start": trained[0] if trained else -1,
            "answer_end": trained[-1] + 1 if trained else 0,
            "template_ok": ok,
        }
