"""Batch-wise tokenization with completion-only labels: the same columns as the row-by-row way.

:class:`~workbench.data.tokenize.Labeller` renders, for every row, the whole conversation
and each answer's prompt with Jinja, tokenizes both, and compares the ids (the agreement
check). :class:`BatchLabeller` gets the same ``input_ids``, ``labels``, statistics and
``template_ok`` with far less work per row:

1. **Templating by layout.** Rows are grouped by their sequence of roles (and which of their
   contents are empty: an empty system prompt, say); for each group the
   template is rendered once with markers (:func:`~workbench.data.layouts.learn_layout`), and
   every *plain* row of the group is rendered by joining strings. The mask boundaries (end of
   the inference prompt, end of each answer's own rendering) come with it as character
   offsets.
2. **One tokenization.** Only the whole text is tokenized, by the fast tokenizer's Rust
   backend for the whole batch; each boundary becomes the first token that starts at or after
   it (``Encoding.char_to_token``). A prompt agrees with the training text at token level
   exactly when a token starts at its end; a boundary inside a token is a mismatch. The
   boundaries of a row's ``untrained_turns`` (weight 0) are dropped, as the row way skips them.
3. **The row-by-row check where it matters.** Rows that are not plain (an empty answer, a
   content that holds a control token's text, a marker character, or a string the template tests
   content against), rows whose roles have no layout (a template that rejects them, or whose
   prompt is not a prefix of the training text), rows with a content that starts or ends
   with whitespace where the template neither keeps nor strips it whole (``Layout.strips``),
   and boundaries that fall in a gap between tokens go through :class:`Labeller` itself. So
   does a sample: the first :data:`SAMPLE_PER_BATCH` plain rows of each group in each batch
   (rows edged with whitespace are a group apart; one a batch once :data:`TRUSTED_AFTER`
   agreed), whose results must equal the batch results; if one differs, the group is
   labelled row by row from then on.
4. **Rows with tools** (a ``tool_calling`` cell): the template writes their tools and calls,
   which no layout can place. Rows are grouped by *shape* (roles, calls per turn, tools or
   not, empty contents). The first :data:`LEARN_PER_BATCH` rows of a new shape are rendered
   by Jinja as the row way renders them (whole text, each answer's prompt, each inner
   answer's end); they teach the shape's *anchors*, the template's text around each answer
   boundary (:mod:`~workbench.data.anchors`). Every other row of the shape is rendered once
   and its boundaries found by anchor; a row whose text holds an anchor more or less often
   than the learned rows (or has untrained turns, or content the template tests) is rendered
   the row way. Each rendering is checked to write its calls and tools, then tokenized with
   the batch, boundaries by character offset. A sample of each shape's rows placed by
   anchor, and one of all rows rendered the row way, goes through :class:`Labeller` too;
   if one differs, those rows are labelled row by row from then on.
5. **Vectorised columns.** Labels, truncation and length statistics are computed with numpy
   on the flat token array of the batch and handed to ``datasets`` as an Arrow table.

Examples:
    >>> from transformers import AutoTokenizer
    >>> from workbench.models.tiny import build_tiny_model
    >>> from workbench.data.templates import resolve_template
    >>> from workbench.data.tokenize import Labeller
    >>> import pyarrow as pa
    >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-batched"))
    >>> template = resolve_template(None, tokenizer)
    >>> chats = [[{"role": "user", "content": f"{i} plus {i}?"},
    ...           {"role": "assistant", "content": str(2 * i)}] for i in range(20)]
    >>> batch = BatchLabeller(template, tokenizer, 20, False)(pa.table({"messages": chats}))
    >>> rows = Labeller(template, tokenizer, 20, False)({"messages": chats})
    >>> all(batch.column(c).to_pylist() == rows[c] for c in rows)
    True
"""

from __future__ import annotations

import gc
import itertools
import re
from typing import Any, NamedTuple

import numpy as np

from workbench.data.anchors import Anchors, Boundaries, glue_lengths, mark_contents
from workbench.data.layouts import MARKERS, Layout, learn_layout, sensitive_literals
from workbench.data.special_text import SPECIAL_TEXT_COLUMN, SpecialTokensInText
from workbench.data.templates import Template, render_many
from workbench.data.tokenize import (
    IGNORE_INDEX,
    STAT_COLUMNS,
    TOKEN_COLUMNS,
    UNTRAINED_TURNS,
    Labeller,
)
from workbench.data.tool_calls import TOOL_CALLING, refuse_dropped_tools, with_tool_calling

__all__ = [
    "LEARN_PER_BATCH",
    "SAMPLE_PER_BATCH",
    "SAMPLE_WHEN_TRUSTED",
    "TRUSTED_AFTER",
    "BatchLabeller",
]

SAMPLE_PER_BATCH = 4
"""Plain rows per role sequence and batch that are also labelled row by row, as a check."""
TRUSTED_AFTER = 16
"""Agreeing sample rows after which a group is sampled :data:`SAMPLE_WHEN_TRUSTED` a batch."""
SAMPLE_WHEN_TRUSTED = 1

_GAP = 16  # characters scanned past a boundary that no token covers
_Spans = list[tuple[int, int]]  # trained token ranges of a row, from the batch way
_RENDERED = ("<rows with tools>",)  # the start of a shape of rows with tools
_EMPTY = "<empty contents at>"  # in a layout's key, before the positions of empty contents
_EDGED = "<edged with whitespace>"  # ends the sample group of a layout's edged rows
_BY_ANCHORS = "<placed by anchors>"  # ends the sample group of a shape's rows rendered once
# The sample group of all rows with tools rendered as the row way renders them.
_BY_RENDERINGS = (*_RENDERED, "<placed by renderings>")

LEARN_PER_BATCH = 2
"""Rows with tools per new shape and batch rendered the row way to learn its anchors from."""


class BatchLabeller:
    """A ``datasets.map(batched=True)`` function on Arrow tables; same output as ``Labeller``.

    Args:
        template: Template used to render conversations.
        tokenizer: A transformers tokenizer (fast ones take the batch way; others go row by
            row through :class:`~workbench.data.tokenize.Labeller`).
        max_length: Keep at most this many tokens (``None``: keep all).
        text: Raw-text format (train on every token).
        special_tokens_in_text: ``"split"`` or ``"keep"`` (see ``Labeller``).

    Attributes:
        rows: The row-by-row :class:`~workbench.data.tokenize.Labeller` (checks, odd rows).
        checked: Rows labelled row by row so far (the sample plus rows that are not plain).
        anchored: Rows with tools rendered once, their answers placed by anchor
            (:mod:`~workbench.data.anchors`), so far.
        distrusted: Role sequences (or shapes of rows with tools, with the way they were
            placed) whose sample disagreed (labelled row by row since).

    Examples:
        >>> from datasets import Dataset
        >>> from transformers import AutoTokenizer
        >>> from workbench.models.tiny import build_tiny_model
        >>> from workbench.data.templates import resolve_template
        >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-batched"))
        >>> chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
        >>> dataset = Dataset.from_list([{"messages": chat}] * 3).with_format("arrow")
        >>> labeller = BatchLabeller(resolve_template(None, tokenizer), tokenizer, 8, False)
        >>> data = dataset.map(labeller, batched=True).with_format(None)
        >>> len(data[0]["input_ids"]), data[0]["n_tokens"], data[0]["template_ok"]
        (8, 17, True)
    """

    def __init__(
        self,
        template: Template,
        tokenizer: Any,
        max_length: int | None,
        text: bool,
        special_tokens_in_text: SpecialTokensInText = "split",
    ) -> None:
        self.rows = Labeller(template, tokenizer, max_length, text, special_tokens_in_text)
        self.template = template
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.text = text
        self.fast = bool(getattr(tokenizer, "is_fast", False))
        literals = None if text else sensitive_literals(template)
        self.unsafe = _unsafe_pattern(self.rows.guard.pattern, literals)
        self.plain_possible = literals is not None and self.fast
        self._reset()

    def _reset(self) -> None:
        self._layouts: dict[tuple[str, ...], Layout | None] = {}
        self._anchors: dict[tuple[str, ...], Anchors] = {}
        self._agreed: dict[tuple[str, ...], int] = {}
        self.distrusted: set[tuple[str, ...]] = set()
        self.checked = 0
        self.anchored = 0

    def __getstate__(self) -> dict[str, Any]:
        # What datasets hashes for the cache fingerprint: the settings, not what was learned.
        state = dict(self.__dict__)
        for name in ("_layouts", "_anchors", "_agreed", "distrusted", "checked", "anchored"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def __call__(self, table: Any) -> Any:
        """Label one batch (an Arrow table); returns it with the produced columns added.

        Examples:
            Raw text trains on every token but the leading ``<s>``:

            >>> import pyarrow as pa
            >>> from transformers import AutoTokenizer
            >>> from workbench.models.tiny import build_tiny_model
            >>> from workbench.data.templates import resolve_template
            >>> tok = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-batched"))
            >>> labeller = BatchLabeller(resolve_template(None, tok), tok, None, True)
            >>> out = labeller(pa.table({"text": ["hi"]}))
            >>> out.column("labels").to_pylist(), out.column("n_answer").to_pylist()
            ([[-100, 77, 78, 2]], [3])
        """
        # A batch makes ~10 small lists per row and no reference cycles; the cyclic garbage
        # collector would walk every live object many times per batch (~15% of the time).
        collecting = gc.isenabled()
        gc.disable()
        try:
            if self.text:
                texts = table.column("text").to_pylist()
                ids, masks, oks, found = self._label_texts(texts)
            else:
                ids, masks, oks, found = self._label_chats(
                    _conversations(table), _untrained(table), _tool_calling(table)
                )
            return _with_columns(table, ids, masks, oks, found, self.max_length)
        finally:
            if collecting:
                gc.enable()

    # --- raw text ---------------------------------------------------------------------

    def _label_texts(
        self, texts: list[str]
    ) -> tuple[list[list[int]], list[Any], list[bool], list[str]]:
        search = self.unsafe.search
        found = [self.rows.guard.describe([("text", t)]) if search(t) else "" for t in texts]
        guarded = self.rows.guard.protects
        # literal control tokens to keep plain (split mode) need the row way's spans
        slow = [k for k, f in enumerate(found) if (guarded and f) or not self.fast]
        quick = sorted(set(range(len(texts))) - set(slow))
        bos = self.tokenizer.bos_token or ""
        eos = self.tokenizer.eos_token or ""
        ids: list[list[int]] = [[]] * len(texts)
        encodings = self._encode([f"{bos}{texts[k]}{eos}" for k in quick])
        for k, enc in zip(quick, encodings, strict=True):
            ids[k] = enc.ids
        if slow:
            encoded = self.rows._encode_text([texts[k] for k in slow], [found[k] for k in slow])
            for k, row_ids in zip(slow, encoded, strict=True):
                ids[k] = row_ids
        self.checked += len(slow)
        bos_id = self.tokenizer.bos_token_id
        masks: list[Any] = [[(1 if row and row[0] == bos_id else 0, len(row))] for row in ids]
        return ids, masks, [True] * len(texts), found

    # --- conversations ------------------------------------------------------------------

    def _label_chats(
        self,
        conversations: list[tuple[tuple[str, ...], list[str]]],
        untrained: list[list[int]] | None = None,
        tool_calling: list[str | None] | None = None,
    ) -> tuple[list[list[int]], list[Any], list[bool], list[str]]:
        n = len(conversations)
        ids: list[list[int]] = [[]] * n
        masks: list[Any] = [None] * n
        oks = [True] * n
        found = [""] * n
        plain, edged = self._plain(conversations, found)
        tool_rows = self._tool_rows(conversations, untrained, tool_calling, found)
        if tool_calling:
            plain = {k: key for k, key in plain.items() if tool_calling[k] is None}
        groups: dict[tuple[str, ...], list[int]] = {}
        for k, key in plain.items():
            groups.setdefault(key, []).append(k)
        quick: list[int] = []
        slow = set(range(n)) - set(plain) - set(tool_rows)
        for key, members in groups.items():
            layout = self._layout(key)
            if layout is None:
                slow.update(members)
                continue
            if layout.strips is None or (*key, _EDGED) in self.distrusted:
                slow.update(k for k in members if k in edged)
                quick += [k for k in members if k not in edged]
            else:
                quick += members
        undecided = self._label_quick(conversations, untrained, quick, plain, ids, masks, oks)
        rendered, unplaced = self._label_rendered(tool_rows, untrained, ids, masks, oks)
        undecided += unplaced
        slow.update(undecided)
        group = {k: _sample_group(plain[k], k in edged) for k in quick} | rendered
        samples = self._samples(group, quick + list(rendered), undecided)
        rows = sorted(slow | set(samples))
        row_way = self._label_slow(conversations, untrained, rows, found, tool_calling)
        for key in {group[k] for k in samples}:
            members = [k for k in samples if group[k] == key]
            if any(not _same(ids[k], masks[k], oks[k], *row_way[k]) for k in members):
                self.distrusted.add(key)
            else:
                self._agreed[key] = self._agreed.get(key, 0) + len(members)
        late = [k for k in group if group[k] in self.distrusted and k not in row_way]
        row_way.update(self._label_slow(conversations, untrained, late, found, tool_calling))
        for k, (row_ids, labels, ok) in row_way.items():
            if k in slow or group.get(k) in self.distrusted:
                ids[k], masks[k], oks[k] = row_ids, labels, ok
        return ids, masks, oks, found

    def _plain(
        self, conversations: list[tuple[tuple[str, ...], list[str]]], found: list[str]
    ) -> tuple[dict[int, tuple[str, ...]], set[int]]:
        """Plain rows with their layout's key (:func:`_layout_key`), and those of them with
        a content edged with whitespace (plain where the layout keeps or strips edges); fills
        ``found`` for the others."""
        search = self.unsafe.search
        plain = {}
        edged = set()
        for k, (roles, contents) in enumerate(conversations):
            odd = edges = False
            empty: list[int] = []
            for i, c in enumerate(contents):
                if not c:
                    if roles[i] == "assistant":  # an empty answer: nothing to place
                        odd = True
                        break
                    empty.append(i)
                elif search(c):
                    odd = True
                    break
                else:
                    edges = edges or c[0].isspace() or c[-1].isspace()
            if odd:
                found[k] = self.rows.describe(_messages((roles, contents)))
            elif self.plain_possible:
                plain[k] = _layout_key(roles, empty)
                if edges:
                    edged.add(k)
        return plain, edged

    def _layout(self, key: tuple[str, ...]) -> Layout | None:
        if key in self.distrusted:
            return None
        if key not in self._layouts:
            roles, empty = _roles_and_empty(key)
            self._layouts[key] = learn_layout(self.template, self.tokenizer, roles, empty)
        return self._layouts[key]

    def _samples(
        self, group: dict[int, tuple[str, ...]], fast: list[int], undecided: list[int]
    ) -> list[int]:
        """The first :data:`SAMPLE_PER_BATCH` rows of each group labelled the fast way
        (:data:`SAMPLE_WHEN_TRUSTED` once :data:`TRUSTED_AFTER` of its samples agreed: what a
        sample catches is the template's, and shows in the first batches)."""
        skip = set(undecided)
        taken: dict[tuple[str, ...], int] = {}
        samples = []
        for k in fast:
            key = group[k]
            wanted = SAMPLE_PER_BATCH
            if self._agreed.get(key, 0) >= TRUSTED_AFTER:
                wanted = SAMPLE_WHEN_TRUSTED
            if k not in skip and taken.get(key, 0) < wanted:
                taken[key] = taken.get(key, 0) + 1
                samples.append(k)
        return samples

    def _label_quick(
        self,
        conversations: list[tuple[tuple[str, ...], list[str]]],
        untrained: list[list[int]] | None,
        quick: list[int],
        keys: dict[int, tuple[str, ...]],
        ids: list[list[int]],
        masks: list[Any],
        oks: list[bool],
    ) -> list[int]:
        """Label rows by layout; returns the rows a boundary could not place (row way)."""
        composed = []
        for k in quick:
            layout = self._layouts[keys[k]]
            assert layout is not None
            composed.append(layout.compose(conversations[k][1]))
        encodings = self._encode([text for text, _ in composed])
        undecided = []
        for k, (text, composed_turns), enc in zip(quick, composed, encodings, strict=True):
            turns = composed_turns
            if untrained and untrained[k]:  # weight-0 turns are context: no span, no check
                turns = _trained_turns(turns, self._layouts[keys[k]], untrained[k])
            placed = _place(enc, len(text), turns)
            if placed is None:
                undecided.append(k)
            else:
                ids[k], masks[k], oks[k] = enc.ids, *placed
        return undecided

    def _tool_rows(
        self,
        conversations: list[tuple[tuple[str, ...], list[str]]],
        untrained: list[list[int]] | None,
        tool_calling: list[str | None] | None,
        found: list[str],
    ) -> dict[int, _ToolRow]:
        """The rows with tools to label from renderings; fills ``found`` for each row with
        tools (its tool fields count too)."""
        rows: dict[int, _ToolRow] = {}
        for k, cell in enumerate(tool_calling or ()):
            if cell is not None:
                found[k] = self.rows.describe(_messages(conversations[k]), cell)
                if not found[k] and self.fast and _BY_RENDERINGS not in self.distrusted:
                    rows[k] = self._tool_row(conversations[k], cell, untrained, k)
        return rows

    def _tool_row(
        self,
        conversation: tuple[tuple[str, ...], list[str]],
        cell: str,
        untrained: list[list[int]] | None,
        k: int,
    ) -> _ToolRow:
        messages, tools = with_tool_calling(_messages(conversation), cell)
        skip = (untrained[k] or []) if untrained else []
        shape = (
            *_RENDERED,
            "tools" if tools else "no tools",
            *(_turn_shape(message, i in skip) for i, message in enumerate(messages)),
        )
        # Untrained calling turns need their own prompts for the check that calls are
        # written; content the template tests may change the text around a boundary.
        anchorable = not skip and not any(c and self.unsafe.search(c) for c in conversation[1])
        return _ToolRow(messages, tools, shape, anchorable)

    def _label_rendered(
        self,
        tool_rows: dict[int, _ToolRow],
        untrained: list[list[int]] | None,
        ids: list[list[int]],
        masks: list[Any],
        oks: list[bool],
    ) -> tuple[dict[int, tuple[str, ...]], list[int]]:
        """Label rows with tools from the template's renderings, with one batch tokenization
        and boundaries by character offset (the layout way's).

        A row of a shape whose anchors are known is rendered once and its boundaries found
        by anchor (:mod:`~workbench.data.anchors`); the others are rendered as the row way
        renders them (whole text, each answer's prompt, each inner answer's end) and teach
        their shape's anchors. Returns each labelled row's sample group (rows placed by
        anchor: their shape's, first; the others: one group) and the rows to label row by
        row (a prompt that is not a prefix of the text, a boundary in a gap).
        """
        if not tool_rows:
            return {}, []
        planned, learning, candidates = self._route(tool_rows)
        texts: dict[int, tuple[str, Boundaries | None]] = {}
        self._render_planned(tool_rows, planned, learning, untrained, texts)
        unplaced = self._render_anchored(tool_rows, candidates, texts)
        self._render_planned(tool_rows, unplaced, unplaced, untrained, texts)
        left = set(unplaced)
        anchored = [k for k in candidates if k not in left]
        groups = {k: (*tool_rows[k].shape, _BY_ANCHORS) for k in anchored}
        groups.update((k, _BY_RENDERINGS) for k in planned + unplaced)
        rows = list(groups)
        encodings = self._encode([texts[k][0] for k in rows])
        undecided = []
        for k, enc in zip(rows, encodings, strict=True):
            text, turns = texts[k]
            placed = _place(enc, len(text), turns) if turns is not None else None
            if placed is None:
                undecided.append(k)
            else:
                ids[k], masks[k], oks[k] = enc.ids, *placed
        return groups, undecided

    def _route(self, tool_rows: dict[int, _ToolRow]) -> tuple[list[int], list[int], list[int]]:
        """``(rows rendered the row way, those of them to learn anchors from, rows to place
        by anchor)``."""
        by_shape: dict[tuple[str, ...], list[int]] = {}
        for k, row in tool_rows.items():
            by_shape.setdefault(row.shape, []).append(k)
        planned: list[int] = []
        learning: list[int] = []
        candidates: list[int] = []
        for shape, members in by_shape.items():
            anchors = self._anchors.setdefault(shape, Anchors(None))
            eligible = [k for k in members if tool_rows[k].anchorable]
            if anchors.broken or (*shape, _BY_ANCHORS) in self.distrusted:
                eligible = []
            chosen = set(eligible)
            planned += [k for k in members if k not in chosen]
            if eligible and anchors.marks is None:
                first = eligible[:LEARN_PER_BATCH]
                planned += first
                learning += first
                eligible = eligible[len(first) :]
            candidates += eligible
        return planned, learning, candidates

    def _render_planned(
        self,
        tool_rows: dict[int, _ToolRow],
        rows: list[int],
        learning: list[int],
        untrained: list[list[int]] | None,
        texts: dict[int, tuple[str, Boundaries | None]],
    ) -> None:
        """Render ``rows`` the row way into ``texts``; ``learning`` rows teach anchors."""
        if not rows:
            return
        chats = [tool_rows[k].messages for k in rows]
        skip = [untrained[k] for k in rows] if untrained else None
        offered = [tool_rows[k].tools for k in rows]
        plans = self.rows._plans(chats, [False] * len(rows), skip, offered)
        learn = set(learning)
        for k, plan in zip(rows, plans, strict=True):
            turns: Boundaries | None = None
            if plan.ok:
                turns = _boundaries(plan)
                if k in learn:
                    self._learn(tool_rows[k], plan.full, turns)
            texts[k] = (plan.full, turns)

    def _learn(self, row: _ToolRow, text: str, turns: Boundaries) -> None:
        """Teach ``row``'s shape its anchors; the first time, how far the template's own
        text reaches around each boundary (from a rendering whose contents are markers)."""
        anchors = self._anchors[row.shape]
        if anchors.glue is None:
            marked = self.rows._plans([mark_contents(row.messages)], [False], None, [row.tools])
            if marked[0].ok:
                anchors.glue = glue_lengths(marked[0].full, _boundaries(marked[0]))
        anchors.learn(text, turns)

    def _render_anchored(
        self,
        tool_rows: dict[int, _ToolRow],
        rows: list[int],
        texts: dict[int, tuple[str, Boundaries | None]],
    ) -> list[int]:
        """Render ``rows`` once each and place their boundaries by anchor into ``texts``;
        returns the rows that could not be placed. Refuses a rendering that drops calls or
        tools, as the row way does (:class:`~workbench.data.tool_calls.ToolsNotWrittenError`)."""
        unplaced = [k for k in rows if self._anchors[tool_rows[k].shape].marks is None]
        rows = [k for k in rows if self._anchors[tool_rows[k].shape].marks is not None]
        fulls = render_many(
            self.template,
            self.tokenizer,
            [tool_rows[k].messages for k in rows],
            False,
            [tool_rows[k].tools for k in rows],
        )
        placed: list[tuple[_ToolRow, str, Boundaries]] = []
        for k, full in zip(rows, fulls, strict=True):
            turns = self._anchors[tool_rows[k].shape].place(full)
            if turns is None:
                unplaced.append(k)
            else:
                texts[k] = (full, turns)
                placed.append((tool_rows[k], full, turns))
        self.anchored += len(placed)
        answered = [
            (j, i, full[:start])
            for j, (row, full, turns) in enumerate(placed)
            for i, (start, _) in zip(_answers(row.messages), turns, strict=True)
        ]
        refuse_dropped_tools(
            [row.messages for row, _, _ in placed],
            [row.tools for row, _, _ in placed],
            [full for _, full, _ in placed],
            answered,
        )
        return unplaced

    def _label_slow(
        self,
        conversations: list[tuple[tuple[str, ...], list[str]]],
        untrained: list[list[int]] | None,
        rows: list[int],
        found: list[str],
        tool_calling: list[str | None] | None = None,
    ) -> dict[int, tuple[list[int], list[int], bool]]:
        if not rows:
            return {}
        chats = [_messages(conversations[k]) for k in rows]
        self.checked += len(rows)
        skip = [untrained[k] for k in rows] if untrained else None
        tools = [tool_calling[k] for k in rows] if tool_calling else None
        labelled = self.rows._label_chats(chats, [found[k] for k in rows], skip, tools)
        return dict(zip(rows, labelled, strict=True))

    def _encode(self, texts: list[str]) -> list[Any]:
        """``tokenizers.Encoding`` of each text: ``tokenizer(texts, add_special_tokens=False)``
        without building its Python lists (the backend is set up by a one-text call first)."""
        if not texts:
            return []
        tokenizer = self.tokenizer
        first = tokenizer(texts[:1], add_special_tokens=False)  # sets the backend as a call does
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if (
            backend is None
            or backend.truncation is not None
            or backend.padding is not None
            or first.encodings is None
        ):
            return tokenizer(texts, add_special_tokens=False).encodings
        return backend.encode_batch(texts, add_special_tokens=False)


def _unsafe_pattern(
    guard: re.Pattern[str] | None, literals: frozenset[str] | None
) -> re.Pattern[str]:
    parts = [MARKERS] + ([guard.pattern] if guard is not None else [])
    parts += [re.escape(s) for s in sorted(literals or (), key=lambda s: (-len(s), s))]
    return re.compile("|".join(f"(?:{p})" for p in parts))


def _messages(conversation: tuple[tuple[str, ...], list[str]]) -> list[dict[str, str]]:
    roles, contents = conversation
    return [{"role": r, "content": c} for r, c in zip(roles, contents, strict=True)]


def _conversations(table: Any) -> list[tuple[tuple[str, ...], list[str]]]:
    """``(roles, contents)`` of each row of the ``messages`` column."""
    import pyarrow.compute as pc

    column = table.column("messages").combine_chunks()
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(column)
    roles = pc.struct_field(flat, "role").to_pylist()
    contents = pc.struct_field(flat, "content").to_pylist()
    out = []
    start = 0
    for length in lengths.tolist():
        end = start + length
        out.append((tuple(roles[start:end]), contents[start:end]))
        start = end
    return out


def _untrained(table: Any) -> list[list[int]] | None:
    """Per row, the message indices of its untrained assistant turns (``None``: no column)."""
    if UNTRAINED_TURNS not in table.column_names:
        return None
    return [turns or [] for turns in table.column(UNTRAINED_TURNS).to_pylist()]


def _tool_calling(table: Any) -> list[str | None] | None:
    """Per row, its :data:`TOOL_CALLING` cell (``None``: no column, or no row uses tools)."""
    if TOOL_CALLING not in table.column_names:
        return None
    column = table.column(TOOL_CALLING)
    return None if column.null_count == len(column) else column.to_pylist()


class _ToolRow(NamedTuple):
    """A row with tools as the template renders it, and its shape (roles, calls, tools)."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    shape: tuple[str, ...]
    anchorable: bool  # its boundaries may be placed by its shape's anchors


def _turn_shape(message: dict[str, Any], untrained: bool) -> str:
    calls = len(message.get("tool_calls") or ())
    empty = " empty" if not message["content"] else ""
    return f"{message['role']} {calls} calls{' untrained' if untrained else ''}{empty}"


def _layout_key(roles: tuple[str, ...], empty: list[int]) -> tuple[str, ...]:
    """A layout's key: the roles, and the positions of empty contents if any (an empty
    system prompt may be written otherwise than a full one)."""
    return (*roles, _EMPTY, *map(str, empty)) if empty else roles


def _roles_and_empty(key: tuple[str, ...]) -> tuple[tuple[str, ...], frozenset[int]]:
    if _EMPTY not in key:
        return key, frozenset()
    at = key.index(_EMPTY)
    return key[:at], frozenset(int(i) for i in key[at + 1 :])


def _sample_group(roles: tuple[str, ...], edged: bool) -> tuple[str, ...]:
    """Rows with contents edged with whitespace are checked apart from the others."""
    return (*roles, _EDGED) if edged else roles


def _boundaries(plan: Any) -> Boundaries:
    """Each answer's ``(prompt end, own end)`` in a row way's plan (``None``: the text's end)."""
    return [(len(p), None if u is plan.full else len(u)) for p, u in plan.turns]


def _answers(messages: list[dict[str, Any]]) -> list[int]:
    return [i for i, m in enumerate(messages) if m["role"] == "assistant"]


def _trained_turns(
    turns: list[tuple[int, int | None]], layout: Layout | None, untrained: list[int]
) -> list[tuple[int, int | None]]:
    """The composed answer boundaries of the turns not in ``untrained`` (message indices)."""
    assert layout is not None
    return [
        turn
        for turn, (message, _, _) in zip(turns, layout.turns, strict=True)
        if message not in untrained
    ]


def _place(
    enc: Any, length: int, turns: list[tuple[int, int | None]]
) -> tuple[_Spans, bool] | None:
    """Trained token spans of a text from each answer's ``(prompt end, own end)`` character
    offsets (``None``: to the end), and whether every prompt ends on a token boundary;
    ``None`` when a boundary cannot be placed."""
    n = len(enc.ids)
    spans: _Spans = []
    ok = True
    for prompt_end, own_end in turns:
        begin = _first_token_at(enc, prompt_end, n, length)
        end = (n, True) if own_end is None else _first_token_at(enc, own_end, n, length)
        if begin is None or end is None:
            return None
        ok &= begin[1]
        spans.append((begin[0], max(begin[0], end[0])))
    return spans, ok


def _first_token_at(enc: Any, pos: int, n: int, length: int) -> tuple[int, bool] | None:
    """``(first token starting at or after pos, whether the text splits into tokens at pos)``.

    The first value is ``bisect_left`` of the token starts, as the row way computes it. A
    boundary inside a token is a mismatch; one on a token's start, or in characters the
    tokenizer drops (whitespace for WordPiece), agrees. ``None`` when the offsets around
    ``pos`` are out of order or the gap is long: the row is then labelled row by row.
    """
    if pos >= length:
        return n, True
    for at in range(pos, min(length, pos + _GAP)):
        t = enc.char_to_token(at)
        if t is not None:
            break
    else:
        return (n, True) if pos + _GAP >= length else None
    start = enc.token_to_chars(t)[0]
    if start >= pos:
        return (t, True) if start == at else None
    if at > pos or (t + 1 < n and enc.token_to_chars(t + 1)[0] < pos):
        return None
    return t + 1, False


def _same(
    ids: list[int], spans: Any, ok: bool, row_ids: list[int], labels: list[int], row_ok: bool
) -> bool:
    if ids != row_ids or ok != row_ok or spans is None:
        return False
    expected = [IGNORE_INDEX] * len(ids)
    for begin, end in spans:
        expected[begin:end] = ids[begin:end]
    return expected == labels


def _with_columns(
    table: Any,
    ids: list[list[int]],
    masks: list[Any],
    oks: list[bool],
    found: list[str],
    max_length: int | None,
) -> Any:
    """``table`` plus the produced columns, computed on the flat token array."""
    import pyarrow as pa

    n = len(ids)
    lengths = np.fromiter((len(r) for r in ids), dtype=np.int64, count=n)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=total)
    delta = np.zeros(total + 1, dtype=np.int64)
    begins, ends = [], []
    for k, mask in enumerate(masks):
        base = int(offsets[k])
        if mask and isinstance(mask[0], tuple):
            for begin, end in mask:
                begins.append(base + begin)
                ends.append(base + end)
        elif mask:  # labels from the row way
            trained = np.flatnonzero(np.asarray(mask, dtype=np.int64) != IGNORE_INDEX)
            begins.extend((base + trained).tolist())
            ends.extend((base + trained + 1).tolist())
    np.add.at(delta, np.asarray(begins, dtype=np.int64), 1)
    np.add.at(delta, np.asarray(ends, dtype=np.int64), -1)
    trained = np.cumsum(delta[:-1]) > 0
    position = np.arange(total, dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    counts = np.concatenate([[0], np.cumsum(trained, dtype=np.int64)])
    n_answer = counts[offsets[1:]] - counts[offsets[:-1]]
    where = np.flatnonzero(trained)
    row_of = np.repeat(np.arange(n, dtype=np.int64), lengths)[where]
    rows = np.arange(n, dtype=np.int64)
    first = np.searchsorted(row_of, rows, "left")
    last = np.searchsorted(row_of, rows, "right") - 1
    has = n_answer > 0
    answer_start = np.full(n, -1, dtype=np.int64)
    answer_end = np.zeros(n, dtype=np.int64)
    answer_start[has] = position[where[first[has]]]
    answer_end[has] = position[where[last[has]]] + 1
    labels = np.where(trained, flat, IGNORE_INDEX)
    if max_length is not None:
        keep = position < max_length
        flat, labels = flat[keep], labels[keep]
        kept = np.minimum(lengths, max_length)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(kept, out=offsets[1:])
    list_offsets = pa.array(offsets.astype(np.int32))
    columns = {
        # The types datasets gives these columns when a map returns Python lists.
        "input_ids": pa.ListArray.from_arrays(list_offsets, pa.array(flat.astype(np.int32))),
        "labels": pa.ListArray.from_arrays(list_offsets, pa.array(labels)),
        "attention_mask": pa.ListArray.from_arrays(
            list_offsets, pa.array(np.ones(len(flat), dtype=np.int8))
        ),
        "n_tokens": pa.array(lengths),
        "n_prompt": pa.array(lengths - n_answer),
        "n_answer": pa.array(n_answer),
        "answer_start": pa.array(answer_start),
        "answer_end": pa.array(answer_end),
        "template_ok": pa.array(oks, type=pa.bool_()),
        SPECIAL_TEXT_COLUMN: pa.array(found, type=pa.string()),
    }
    assert tuple(columns)[:-1] == TOKEN_COLUMNS + STAT_COLUMNS
    for name, values in columns.items():
        table = table.append_column(name, values)
    return table
