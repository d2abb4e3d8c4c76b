"""DataInspector: rows, one example's tokens, a length histogram with a cutoff, and problems.

A view of one :class:`~workbench.data.PreparedData`: the one it was built with, or the one its
own Apply switched it to. Every number comes from that data's report or its methods
(``search``, ``preview``, ``example``, ``stats``, ``truncation_at``); each widget callback calls
one method of this class, and those methods are what tests drive headless. All data text is
escaped (see :mod:`workbench.widgets._html`); problem labels live in a ``Select``, which shows
plain text.

The row list labels each row by the part of its prompt that varies between rows (the alpaca
``input`` when most rows share the ``instruction``; the first user message of a chat), without
template markers; the token view below it still shows every token.

The cutoff is a full-width slider linked to a number box, with a preview line of what that
``max_length`` would cut. Apply is off when every answer would lose all its trained tokens,
and asks once more ("Cut 12 answers? Apply anyway") when some answers would be cut. A panel
made by ``s.inspect_data()`` knows the session's current data: once ``load_data`` or
``set_max_length`` replaces it, the panel shows a stale banner and its Apply is off.

In a notebook a bare ``inspector`` shows the panel. Headless, on data tokenized by the tiny
model's tokenizer:

Examples:
    >>> from transformers import AutoTokenizer
    >>> from workbench.data import PreparedData
    >>> from workbench.models.tiny import build_tiny_model
    >>> tok = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-data-inspector"))
    >>> rows = [{"question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(45)]
    >>> rows.append(rows[3])  # a duplicate: a problem the panel lists
    >>> cache = "/tmp/wb-doc-data-inspector-cache"
    >>> inspector = DataInspector(PreparedData.load(rows, tok, validation=None, cache_dir=cache))
    >>> inspector.page_label.value
    'page 1 of 3 (46 rows)'
    >>> inspector.search("plus 7?")
    >>> inspector.matches
    1
    >>> inspector.filter_problems("duplicate")
    >>> inspector.show_problem(inspector.problems_select.options[0][1])
    >>> inspector.example.index, inspector.example.split
    (45, 'train')
"""

from __future__ import annotations

import itertools
import re
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import ipywidgets as w
import numpy as np

from workbench._display import continues_grapheme, format_bytes, is_unspaced
from workbench.data.special_text import TextGuard, special_strings
from workbench.errors import SessionStateError, WorkbenchError
from workbench.events import DATA_LOADED
from workbench.widgets._closing import close_panel
from workbench.widgets._html import escape, pre, shorten, table, text_dir, token_span

__all__ = ["LABEL_CHARS", "MAX_PROBLEMS_LISTED", "PAGE_SIZE", "DataInspector"]

PAGE_SIZE = 20
MAX_PROBLEMS_LISTED = 500
LABEL_CHARS = 80
"""Characters of a row's varying text shown in the row list."""
APPLY = "Apply max_length"
_HEADERS = ["#", "source row", "prompt (what varies)", "answer", "tokens", "trained", "problems"]
_TEXT_HEADERS = ["#", "source row", "text (what varies)", "tokens", "trained", "problems"]
_BOX = "font-family:monospace;white-space:pre-wrap;line-height:1.6;"
_STALE = (
    "background:#fff3cd;color:#664d03;border:1px solid #e0c36a;border-radius:4px;"
    "padding:6px 10px;font-weight:bold;"
)
_NOTE = "color:#8a4b00;"
_SAMPLE_ROWS = 200  # rows read to learn which prompt text most rows share
_PARAGRAPHS = re.compile(r"\n\s*\n")
_ROLES = r"(?:(?:system|user|assistant|model|developer)\b)?"


class DataInspector:
    """Notebook panel over prepared data; the ipywidgets tree is ``.widget``.

    Args:
        data: A :class:`~workbench.data.PreparedData`.
        on_apply_max_length: Called with the cutoff when Apply is pressed (and confirmed). If
            it returns a ``PreparedData``, the panel switches to it.
        page_size: Rows per table page.
        current: Returns the data its owner holds now (``s.inspect_data()`` passes the
            session's). While that is not this panel's data, the panel is stale: a banner says
            so and Apply is off.
        events: An :class:`~workbench.events.EventHub` whose ``data_loaded`` events make the
            panel look at ``current`` again (the session's hub).
        memory: ``memory(seq_len)`` returns a memory estimate (an object with ``total`` in
            bytes and ``batch_size``) for the preview line; the session passes its
            ``estimate_memory``.

    Examples:
        >>> from transformers import AutoTokenizer
        >>> from workbench.data import PreparedData
        >>> from workbench.models.tiny import build_tiny_model
        >>> tok = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-data-inspector"))
        >>> rows = [{"question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(45)]
        >>> cache = "/tmp/wb-doc-data-inspector-cache"
        >>> ins = DataInspector(PreparedData.load(rows, tok, validation=None, cache_dir=cache))
        >>> ins.next_page()
        >>> ins.page, ins.page_label.value
        (1, 'page 2 of 3 (45 rows)')
        >>> ins.set_cutoff(23)
        >>> print(*ins.cutoff_label.value.split("; "), sep="\\n")
        at 23 tokens: 24 of 45 answers lose tokens, 0 lose all
        73% of answer tokens kept
        24 of 45 examples cut
    """

    def __init__(
        self,
        data: Any,
        on_apply_max_length: Callable[[int], Any] | None = None,
        page_size: int = PAGE_SIZE,
        *,
        current: Callable[[], Any] | None = None,
        events: Any = None,
        memory: Callable[[int], Any] | None = None,
    ) -> None:
        self.on_apply_max_length = on_apply_max_length
        self.current = current
        self.memory = memory
        self.page_size = page_size
        self._armed: int | None = None
        self._applying = False
        self._markers: tuple[Any, re.Pattern[str] | None] = (None, None)
        self._stop_listening: Callable[[], None] = _nothing
        self._build_widgets()
        self._connect()
        self.set_data(data)
        if events is not None:
            self._stop_listening = _listen_for_new_data(self, events)

    # -- layout -------------------------------------------------------------------------
    def _build_widgets(self) -> None:
        self.stale_html = w.HTML(layout=w.Layout(display="none"))
        self.stale_html.add_class("wb-stale")
        self.summary_html = w.HTML()
        self.split_toggle = w.ToggleButtons(options=["train"], value="train", description="split")
        self.search_box = w.Text(
            placeholder="search rows", continuous_update=False, description="search"
        )
        self.prev_button, self.next_button = (
            w.Button(description="◀ prev"),
            w.Button(description="next ▶"),
        )
        self.page_label = w.Label()
        self.shared_html = w.HTML()
        self.table_html = w.HTML()
        self.example_index = w.BoundedIntText(value=0, min=0, max=0, description="example")
        self.example_html = w.HTML()
        wide = {"description_width": "initial"}
        self.cutoff_slider = w.IntSlider(
            value=1,
            min=1,
            max=1,
            description="cutoff (tokens)",
            readout=False,
            continuous_update=True,
            layout=w.Layout(width="100%"),
            style=wide,
        )
        self.cutoff_slider.add_class("wb-cutoff-slider")
        self.cutoff_box = w.BoundedIntText(
            value=1,
            min=1,
            max=1,
            description="max_length",
            layout=w.Layout(width="220px"),
            style=wide,
        )
        self.cutoff_box.add_class("wb-cutoff-box")
        self._cutoff_link = w.link((self.cutoff_slider, "value"), (self.cutoff_box, "value"))
        self.cutoff_label = w.HTML()
        self.cutoff_label.add_class("wb-cutoff-preview")
        self.applied_label = w.HTML()
        self.apply_button = w.Button(
            description=APPLY, button_style="primary", layout=w.Layout(width="auto")
        )
        self.apply_button.add_class("wb-apply")
        self.apply_note = w.HTML()
        self.problem_kind = w.Dropdown(options=["all"], value="all", description="kind")
        self.problems_select = w.Select(options=[], rows=10, layout=w.Layout(width="100%"))
        self.figure = self._figure()
        full = w.Layout(width="100%")
        rows = w.VBox(
            [
                w.HBox([self.split_toggle, self.search_box]),
                w.HBox([self.prev_button, self.page_label, self.next_button]),
                self.shared_html,
                self.table_html,
            ],
            layout=full,
        )
        lengths = w.VBox(
            [
                self.figure,
                self.cutoff_slider,
                w.HBox([self.cutoff_box, self.apply_button]),
                self.cutoff_label,
                self.applied_label,
                self.apply_note,
            ],
            layout=full,
        )
        problems = w.VBox([self.problem_kind, self.problems_select], layout=full)
        self.tabs = w.Tab(
            children=[rows, lengths, problems], titles=["Rows", "Lengths", "Problems"]
        )
        self.widget = w.VBox(
            [self.stale_html, self.summary_html, self.tabs, self.example_index, self.example_html]
        )
        self.widget.add_class("wb-data-inspector")  # a stable hook for browser tests

    def _figure(self) -> Any:
        import plotly.graph_objects as go

        fig = go.FigureWidget(data=[go.Bar(x=[], y=[], name="examples")])
        fig.update_layout(
            height=260,
            margin=dict(l=40, r=10, t=30, b=40),
            title="tokens per example",
            xaxis_title="tokens (template applied)",
            yaxis_title="examples",
            bargap=0.05,
            shapes=[
                dict(type="line", x0=0, x1=0, y0=0, y1=1, yref="paper", line=dict(color="red"))
            ],
        )
        return fig

    def _connect(self) -> None:
        self.split_toggle.observe(lambda c: self.set_split(c["new"]), names="value")
        self.search_box.observe(lambda c: self.search(c["new"]), names="value")
        self.prev_button.on_click(lambda _: self.go_to_page(self.page - 1))
        self.next_button.on_click(lambda _: self.go_to_page(self.page + 1))
        self.example_index.observe(lambda c: self.show_example(c["new"]), names="value")
        self.cutoff_slider.observe(lambda c: self.set_cutoff(c["new"]), names="value")
        self.apply_button.on_click(lambda _: self.press_apply())
        self.problem_kind.observe(lambda c: self.filter_problems(c["new"]), names="value")
        self.problems_select.observe(lambda c: self.show_problem(c["new"]), names="value")

    # -- state ----------------------------------------------------------------------------
    def set_data(self, data: Any) -> None:
        """Show ``data`` (a new ``PreparedData``), resetting page, search and example.

        Examples:
            >>> from transformers import AutoTokenizer
            >>> from workbench.data import PreparedData
            >>> from workbench.models.tiny import build_tiny_model
            >>> tok = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-data-inspector"))
            >>> rows = [{"question": f"What is {i} plus?", "answer": str(i)} for i in range(45)]
            >>> cache = "/tmp/wb-doc-data-inspector-cache"
            >>> data = PreparedData.load(rows, tok, validation=None, cache_dir=cache)
            >>> inspector = DataInspector(data)
            >>> inspector.go_to_page(2)
            >>> inspector.set_data(data.with_max_length(20))
            >>> inspector.page, inspector.cutoff_slider.value, inspector.data.spec.max_length
            (0, 20, 20)
        """
        self.data, self.report = data, data.report()
        self.split, self.query, self.page, self.example = "train", "", 0, None
        self._armed, self._cuts, self._labels = None, {}, {}
        if self._markers[0] is not data.tokenizer:
            self._markers = (data.tokenizer, _marker_pattern(data.tokenizer))
        self._matches = data.search("", "train")
        self._flags = self._problem_flags()
        self.summary_html.value = pre("\n".join(self.report.lines()[:6]))
        splits = ["train"] + (["validation"] if data.validation is not None else [])
        self.split_toggle.options, self.split_toggle.value = splits, "train"
        self.search_box.value = ""
        self._set_histogram()
        self.problem_kind.options = ["all", *self.report.by_kind]
        self.filter_problems("all")
        self.go_to_page(0)
        self.show_example(0, "train")
        self._show_staleness()
        self._save_snapshot()

    def _problem_flags(self) -> dict[tuple[str, int], list[str]]:
        flags: dict[tuple[str, int], list[str]] = {}
        for p in self.report.problems:
            if p.clickable:
                flags.setdefault((p.split, p.row), []).append(p.kind)
        return flags

    @property
    def pages(self) -> int:
        """Number of table pages for the current search.

        Examples:
            >>> from transformers import AutoTokenizer
            >>> from workbench.data import PreparedData
            >>> from workbench.models.tiny import build_tiny_model
            >>> tok = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-data-inspector"))
            >>> rows = [{"text": f"row {i}"} for i in range(45)]
            >>> cache = "/tmp/wb-doc-data-inspector-cache"
            >>> data = PreparedData.load(rows, tok, validation=None, cache_dir=cache)
            >>> DataInspector(data).pages, DataInspector(data, page_size=10).pages
            (3, 5)
        """
        return max(1, -(-len(self._matches) // self.page_size))

    def set_split(self, split: str) -> None:
        """Show rows of ``"train"`` or ``"validation"`` (keeps the search).

        Examples:
            >>> from transformers import AutoTokenizer
            >>> from workbench.data import PreparedData
            >>> from workbench.models.tiny import build_tiny_model
            >>> tok = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-data-inspector"))
            >>> rows = [{"text": f"row {i}"} for i in range(50)]
            >>> cache = "/tmp/wb-doc-data-inspector-cache"
            >>> data = PreparedData.load(rows, tok, validation=0.2, cache_dir=cache)
            >>> inspector = DataInspector(data)
            >>> inspector.split_toggle.options
            ('train', 'validation')
            >>> inspector.set_split("validation")
            >>> inspector.page_label.value
            'page 1 of 1 (10 rows)'
        """
        self.split = split
        self._matches = self.data.search(self.query, split)
        self.go_to_page(0)

    def search(self, query: str) -> None:
        """Keep only rows containing ``query`` (case-insensitive) and go to the first page.

        Examples:
            >>> from transformers import AutoTokenizer
            >>> from workbench.data import PreparedData
            >>> from workbench.models.tiny import build_tiny_model
            >>> tok = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-data-inspector"))
            >>> rows = [{"question": "Capital of France?", "answer": "Paris"},
            ...         {"question": "Capital of Italy?", "answer": "Rome"},
            ...         {"question": "Where is the Louvre?", "answer": "in paris"}]
            >>> cache = "/tmp/wb-doc-data-inspector-cache"
            >>> inspector = DataInspector(PreparedData.load(rows, tok, validation=None,
            ...                                             cache_dir=cache))
            >>> inspector.search("PARIS")
            >>> inspector.matches, inspector.page_label.value
            (2, 'page 1 of 1 (2 rows)')
        """
        self.query = query
        self._matches = self.data.search(query, self.split)
        self.go_to_page(0)

    @property
    def matches(self) -> int:
        """Rows matching the current search.

        Examples:
            >>> from transformers import AutoTokenizer
            >>> from workbench.data import PreparedData
            >>> from workbench.models.tiny import build_tiny_model
            >>> tok = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-data-inspector"))
            >>> rows = [{"text": f"row {i}"} for i in range(12)]
            >>> cache = "/tmp/wb-doc-data-inspector-cache"
            >>> inspector = DataInspector(PreparedData.load(rows, tok, validation=None,
            ...                                             cache_dir=cache))
            >>> inspector.matches  # every row before a search
            12
            >>> inspector.search("row 1")  # row 1, row 10, row 11
            >>> inspector.matches
            3
        """
        return len(self._matches)

    def go_to_page(self, page: int) -> None:
        """Render page ``page`` (clamped) of the matching rows: only that page is read.

        Examples:
            >>> from transformers import AutoTokenizer
            >>> from workbench.data import PreparedData
            >>> from workbench.models.tiny import build_tiny_model
            >>> tok = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-data-inspector"))
            >>> rows = [{"text": f"row {i}"} for i in range(45)]
            >>> cache = "/tmp/wb-doc-data-inspector-cache"
            >>> inspector = DataInspector(PreparedData.load(rows, tok, validation=None,
            ...                                             cache_dir=cache), page_size=10)
            >>> inspector.go_to_page(3)
            >>> inspector.page, inspector.page_label.value
            (3, 'page 4 of 5 (45 rows)')
            >>> inspector.go_to_page(99)  # clamped to the last page
            >>> inspector.page, inspector.next_button.disabled
            (4, True)
        """
        self.page = min(max(0, page), self.pages - 1)
        start = self.page * self.page_size
        indices = [int(i) for i in self._matches[start : start + self.page_size]]
        rows = self.data.preview(indices, self.split)
        labels = self.row_labels(indices, self.split)
        strip = self._markers[1]
        cells = [
            [
                r["row"],
                r["source_row"],
                label,
                *([] if self.data.is_text else [shorten(_unmarked(r["answer"], strip), 120)]),
                r["tokens"],
                r["trained"],
                ", ".join(self._flags.get((self.split, r["row"]), [])),
            ]
            for r, label in zip(rows, labels, strict=True)
        ]
        headers = _TEXT_HEADERS if self.data.is_text else _HEADERS
        self.table_html.value = table(headers, cells) if cells else "<i>no matching rows</i>"
        self.shared_html.value = self._labeller(self.split).note()
        self.page_label.value = f"page {self.page + 1} of {self.pages} ({len(self._matches)} rows)"
        self.prev_button.disabled = self.page == 0
        self.next_button.disabled = self.page >= self.pages - 1

    def row_labels(self, indices: Sequence[int], split: str | None = None) -> list[str]:
        """The row list's label of each row: the start of the text that varies between rows.

        Prompt paragraphs most rows share (an alpaca ``instruction``, a system-like preamble)
        and template markers are left out; the token view shows them.

        Examples:
            >>> from transformers import AutoTokenizer
            >>> from workbench.data import PreparedData
            >>> from workbench.models.tiny import build_tiny_model
            >>> tok = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-data-inspector"))
            >>> rows = [{"instruction": "Extract the city as JSON.", "input": f"Ann lives in {c}.",
            ...          "output": f'{{"city": "{c}"}}'} for c in ["Oslo", "Rome", "Lima"] * 5]
            >>> cache = "/tmp/wb-doc-data-inspector-cache"
            >>> ins = DataInspector(PreparedData.load(rows, tok, validation=None, cache_dir=cache))
            >>> ins.row_labels([0, 1])
            ['Ann lives in Oslo.', 'Ann lives in Rome.']
            >>> ins.shared_html.value
            '<i>Not in the list: text 15 of 15 rows share (&quot;Extract the city as JSON.&quot;). \
The token view shows every token.</i>'
        """
        split = split or self.split
        indices = [int(i) for i in indices]
        if not indices:
            return []
        return self._labeller(split).labels(_field_values(self.data, split, indices))

    def _labeller(self, split: str) -> _RowLabels:
        if split not in self._labels:
            self._labels[split] = _RowLabels.learn(self.data, split, self._markers[1])
        return self._labels[split]

    def next_page(self) -> None:
        """Go to the next page.

        Examples:
            >>> from transformers import AutoTokenizer
            >>> from workbench.data import PreparedData
            >>> from workbench.models.tiny import build_tiny_model
            >>> tok = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-data-inspector"))
            >>> rows = [{"text": f"row {i}"} for i in range(45)]
            >>> cache = "/tmp/wb-doc-data-inspector-cache"
            >>> inspector = DataInspector(PreparedData.load(rows, tok, validation=None,
            ...                                             cache_dir=cache))
            >>> inspector.next_page()
            >>> inspector.page, inspector.prev_button.disabled
            (1, False)
        """
        self.go_to_page(self.page + 1)

    def show_example(self, index: int, split: str | None = None) -> None:
        """Show example ``index`` of ``split`` (default: the table's split) as tokens.

        Trained tokens are highlighted, masked ones dimmed, special tokens boxed; hovering a
        token shows its id.

        Examples:
            >>> from transformers import AutoTokenizer
            >>> from workbench.data import PreparedData
            >>> from workbench.models.tiny import build_tiny_model
            >>> tok = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-data-inspector"))
            >>> rows = [{"question": f"What is {i}?", "answer": str(i)} for i in range(50)]
            >>> cache = "/tmp/wb-doc-data-inspector-cache"
            >>> data = PreparedData.load(rows, tok, validation=0.2, cache_dir=cache)
            >>> inspector = DataInspector(data)
            >>> inspector.show_example(5, "validation")
            >>> inspector.example.index, inspector.example.split, inspector.example_index.value
            (5, 'validation', 5)
            >>> inspector.example_html.value.startswith("<div>validation example 5 (source row")
            True
        """
        split = split or (self.example.split if self.example is not None else self.split)
        size = len(self.data.split(split))
        same = self.example is not None and (self.example.index, self.example.split) == (
            index,
            split,
        )
        if same or not 0 <= index < size:
            return
        self.example = self.data.example(index, split)
        self.example_index.max = size - 1
        self.example_index.value = index
        self.example_html.value = _example_html(self.example)

    def _set_histogram(self) -> None:
        counts, edges = self.report.histogram
        longest = max(1, self.report.lengths["total"].max)
        with self.figure.batch_update():
            self.figure.data[0].x = [(a + b) / 2 for a, b in itertools.pairwise(edges)]
            self.figure.data[0].y = list(counts)
        for bounded in (self.cutoff_slider, self.cutoff_box):
            bounded.max = max(longest, bounded.min)
        # One source for the cutoff shown: this panel's data (its report says the same).
        self.set_cutoff(min(self.report.max_length or longest, longest))

    @property
    def cutoff(self) -> int:
        """The cutoff the slider and the number box show (not applied until Apply).

        Examples:
            >>> from transformers import AutoTokenizer
            >>> from workbench.data import PreparedData
            >>> from workbench.models.tiny import build_tiny_model
            >>> tok = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-data-inspector"))
            >>> rows = [{"question": f"What is {i}?", "answer": str(i)} for i in range(20)]
            >>> cache = "/tmp/wb-doc-data-inspector-cache"
            >>> data = PreparedData.load(rows, tok, validation=None, cache_dir=cache)
            >>> ins = DataInspector(data.with_max_length(19))
            >>> ins.cutoff, ins.cutoff_box.value, ins.report.max_length
            (19, 19, 19)
        """
        return int(self.cutoff_slider.value)

    def set_cutoff(self, cutoff: int) -> None:
        """Move the cutoff (slider, box, red line) and preview what it would cut.

        ``cutoff`` is clamped to 1..the longest example. The preview counts answers that would
        lose trained tokens and those that would lose all of them, the share of answer tokens
        kept, the examples cut and (given ``memory``) the memory estimate of a training step.

        Examples:
            >>> from transformers import AutoTokenizer
            >>> from workbench.data import PreparedData
            >>> from workbench.models.tiny import build_tiny_model
            >>> tok = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-data-inspector"))
            >>> rows = [{"question": f"What is {i} plus {i}?", "answer": str(2 * i)}
            ...         for i in range(45)]
            >>> cache = "/tmp/wb-doc-data-inspector-cache"
            >>> data = PreparedData.load(rows, tok, validation=None, cache_dir=cache)
            >>> inspector = DataInspector(data)
            >>> inspector.set_cutoff(21)
            >>> print(*inspector.cutoff_label.value.split("; "), sep="\\n")
            at 21 tokens: 45 of 45 answers lose tokens, 24 lose all
            24% of answer tokens kept
            45 of 45 examples cut
            >>> print(inspector.applied_label.value)  # doctest: +NORMALIZE_WHITESPACE
            <span style="color:#555">this panel's data: max_length: none;
            the cutoff above is not applied</span>
            >>> inspector.figure.layout.shapes[0].x0  # the red line on the histogram
            21
        """
        cutoff = min(max(int(cutoff), self.cutoff_slider.min), self.cutoff_slider.max)
        if cutoff != self._armed:
            self._armed = None
        self.cutoff_slider.value = cutoff  # the link moves the number box
        cut = self._cut(cutoff)
        noun = _noun(self.data)
        parts = [
            f"at {cutoff} tokens: {cut['cut']} of {cut['answered']} {noun} lose tokens, "
            f"{cut['lost']} lose all",
            f"{_percent(cut['kept'])} of {'trained' if self.data.is_text else 'answer'} "
            "tokens kept",
            f"{cut['examples']} of {cut['total']} examples cut",
        ]
        memory = self._memory_text(cutoff)
        self.cutoff_label.value = escape("; ".join(parts + ([memory] if memory else [])))
        applied = _max_length_text(self.report.max_length)
        longest = self.cutoff_slider.max
        pending = cutoff != min(self.report.max_length or longest, longest)
        beyond = (self.report.max_length or 0) > longest
        self.applied_label.value = (
            f'<span style="color:#555">this panel\'s data: {escape(applied)}'
            + (f" (cuts nothing: the longest example has {longest} tokens)" if beyond else "")
            + ("; the cutoff above is not applied" if pending else "")
            + "</span>"
        )
        with self.figure.batch_update():
            self.figure.layout.shapes[0].x0 = cutoff
            self.figure.layout.shapes[0].x1 = cutoff
        self._update_apply()

    def _cut(self, cutoff: int) -> dict[str, Any]:
        if cutoff not in self._cuts:
            s = self.data.stats(None)
            answered = s["n_answer"] > 0
            start, end = s["answer_start"][answered], s["answer_end"][answered]
            trained = s["n_answer"][answered]
            # Exact for one answer per row (its trained tokens are contiguous); for several
            # turns an upper bound, since masked user turns sit between the answers.
            kept = np.minimum(trained, np.clip(np.minimum(end, cutoff) - start, 0, None)).sum()
            found = self.data.truncation_at(cutoff)
            self._cuts[cutoff] = {
                "answered": int(answered.sum()),
                "cut": found["answers"],
                "lost": found["answers_lost"],
                "examples": found["examples"],
                "total": found["total"],
                "kept": float(kept / trained.sum()) if trained.sum() else 1.0,
                "all_keep_from": int(start.max()) + 1 if len(start) else 1,
                "none_cut_from": int(end.max()) if len(end) else 1,
            }
        return self._cuts[cutoff]

    def _memory_text(self, seq_len: int) -> str:
        if self.memory is None:
            return ""
        try:
            estimate = self.memory(seq_len)
        except (WorkbenchError, ValueError) as error:
            return f"no memory estimate ({shorten(str(error), 80)})"
        batch = getattr(estimate, "batch_size", None)
        per = f" ({batch} x {seq_len} tokens)" if batch else ""
        return f"memory estimate {format_bytes(estimate.total)} per training step{per}"

    @property
    def apply_state(self) -> str:
        """What pressing Apply does now.

        ``"ready"`` applies; ``"confirm"`` asks first (some answers would lose trained tokens),
        then ``"armed"`` applies on the next press; ``"blocked"``: every answer would lose all
        its trained tokens; ``"stale"``: the owner's data is no longer this panel's;
        ``"unavailable"``: no ``on_apply_max_length``. The last three disable the button.

        Examples:
            >>> from transformers import AutoTokenizer
            >>> from workbench.data import PreparedData
            >>> from workbench.models.tiny import build_tiny_model
            >>> tok = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-data-inspector"))
            >>> rows = [{"question": f"What is {i} plus {i}?", "answer": str(2 * i)}
            ...         for i in range(45)]
            >>> cache = "/tmp/wb-doc-data-inspector-cache"
            >>> data = PreparedData.load(rows, tok, validation=None, cache_dir=cache)
            >>> ins = DataInspector(data, on_apply_max_length=data.with_max_length)
            >>> ins.apply_state
            'ready'
            >>> ins.set_cutoff(16)
            >>> ins.apply_state, ins.apply_button.disabled
            ('blocked', True)
            >>> print(ins.apply_note.value)  # doctest: +NORMALIZE_WHITESPACE
            <span style="color:#8a4b00;">Apply is off: at 16 tokens all 45 answers lose every
            trained token, so nothing would be trained. From 22 tokens every answer keeps some;
            from 25 none is cut.</span>
            >>> DataInspector(data).apply_state
            'unavailable'
        """
        if self.on_apply_max_length is None:
            return "unavailable"
        if self.stale:
            return "stale"
        cut = self._cut(self.cutoff)
        if cut["answered"] and cut["lost"] == cut["answered"]:
            return "blocked"
        if cut["cut"]:
            return "armed" if self._armed == self.cutoff else "confirm"
        return "ready"

    def _update_apply(self) -> None:
        state, cutoff = self.apply_state, self.cutoff
        cut, noun = self._cut(cutoff), _noun(self.data)
        button = self.apply_button
        button.disabled = state in ("blocked", "stale", "unavailable")
        armed = state == "armed"
        cut_noun = noun if cut["cut"] != 1 else noun[:-1]
        button.description = f"Cut {cut['cut']} {cut_noun}? Apply anyway" if armed else APPLY
        button.button_style = "warning" if armed else "" if button.disabled else "primary"
        button.tooltip = {
            "unavailable": "no session to apply to: use s.inspect_data()",
            "stale": "this panel's data is no longer the session's",
            "blocked": f"every {noun[:-1]} would lose all its trained tokens",
            "armed": f"press again to set max_length={cutoff}",
        }.get(state, f"set max_length={cutoff}")
        note = ""
        if state == "blocked":
            note = (
                f"Apply is off: at {cutoff} tokens all {cut['answered']} {noun} lose every "
                f"trained token, so nothing would be trained. From {cut['all_keep_from']} tokens "
                f"every {noun[:-1]} keeps some; from {cut['none_cut_from']} none is cut."
            )
        elif armed:
            note = (
                f"max_length={cutoff} cuts {cut['cut']} of {cut['answered']} {noun} "
                f"({cut['lost']} lose every trained token): press again to apply, or move the "
                "cutoff."
            )
        elif state == "stale":
            note = "Apply is off: this panel's data is no longer the session's (see the top)."
        self.apply_note.value = f'<span style="{_NOTE}">{escape(note)}</span>' if note else ""

    def press_apply(self) -> Any:
        """What a click on Apply does: apply, ask first, or nothing (see :attr:`apply_state`).

        When some answers would lose trained tokens the first press only turns the button
        into "Cut N answers? Apply anyway"; the second applies. Moving the cutoff asks again.

        Returns:
            What ``on_apply_max_length`` returned, or ``None`` when nothing was applied (a
            refusal, such as a run training on the session, is shown under the button).

        Examples:
            >>> from transformers import AutoTokenizer
            >>> from workbench.data import PreparedData
            >>> from workbench.models.tiny import build_tiny_model
            >>> tok = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-data-inspector"))
            >>> rows = [{"question": f"What is {i} plus {i}?", "answer": str(2 * i)}
            ...         for i in range(45)]
            >>> cache = "/tmp/wb-doc-data-inspector-cache"
            >>> data = PreparedData.load(rows, tok, validation=None, cache_dir=cache)
            >>> ins = DataInspector(data, on_apply_max_length=data.with_max_length)
            >>> ins.set_cutoff(22)
            >>> ins.press_apply() is None, ins.apply_button.description
            (True, 'Cut 39 answers? Apply anyway')
            >>> _ = ins.press_apply()
            >>> ins.data.spec.max_length, ins.apply_button.description
            (22, 'Apply max_length')
        """
        self._show_staleness()
        state = self.apply_state
        if state == "confirm":
            self._armed = self.cutoff
            self._update_apply()
            return None
        if state in ("armed", "ready"):
            try:
                return self.apply_cutoff()
            except WorkbenchError as refused:  # e.g. a run trains: a click must say so
                self._armed = None
                self._update_apply()
                self.apply_note.value = f'<span style="{_NOTE}">{escape(str(refused))}</span>'
        return None

    def apply_cutoff(self) -> Any:
        """Call ``on_apply_max_length`` with the cutoff now, without asking; show what it returns.

        The call a program makes (the button asks first, see :meth:`press_apply`).

        Raises:
            SessionStateError: The panel is stale: its owner's data changed since it was made.

        Examples:
            >>> from transformers import AutoTokenizer
            >>> from workbench.data import PreparedData
            >>> from workbench.models.tiny import build_tiny_model
            >>> tok = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-data-inspector"))
            >>> rows = [{"question": f"What is {i} plus {i}?", "answer": str(2 * i)}
            ...         for i in range(45)]
            >>> cache = "/tmp/wb-doc-data-inspector-cache"
            >>> data = PreparedData.load(rows, tok, validation=None, cache_dir=cache)
            >>> asked = []
            >>> def shorten_to(n):
            ...     asked.append(n)
            ...     return data.with_max_length(n)
            >>> inspector = DataInspector(data, on_apply_max_length=shorten_to)
            >>> inspector.set_cutoff(23)
            >>> _ = inspector.apply_cutoff()
            >>> asked, inspector.data.spec.max_length
            ([23], 23)
        """
        if self.on_apply_max_length is None:
            return None
        if self.stale:
            raise SessionStateError(self._stale_message())
        self._applying = True  # its own apply changes the owner's data: not stale meanwhile
        try:
            result = self.on_apply_max_length(self.cutoff)
        finally:
            self._applying = False
        if hasattr(result, "report") and hasattr(result, "truncation_at"):
            self.set_data(result)
        else:
            self._armed = None
            self._show_staleness()
        return result

    @property
    def stale(self) -> bool:
        """True once the owner's data (``current()``) is no longer the data this panel shows.

        Examples:
            >>> from transformers import AutoTokenizer
            >>> from workbench.data import PreparedData
            >>> from workbench.models.tiny import build_tiny_model
            >>> tok = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-data-inspector"))
            >>> rows = [{"question": f"What is {i}?", "answer": str(i)} for i in range(20)]
            >>> cache = "/tmp/wb-doc-data-inspector-cache"
            >>> owner = {"data": PreparedData.load(rows, tok, validation=None, cache_dir=cache)}
            >>> ins = DataInspector(owner["data"], current=lambda: owner["data"])
            >>> ins.stale
            False
            >>> owner["data"] = owner["data"].with_max_length(12)
            >>> ins.stale, ins.stale_html.layout.display  # a listener, or any press, shows it
            (True, 'none')
            >>> ins.press_apply()
            >>> ins.stale_html.layout.display is None, "now max_length=12" in ins.stale_html.value
            (True, True)
        """
        return self.current is not None and self.current() is not self.data

    def _stale_message(self) -> str:
        now = self.current() if self.current is not None else None
        state = "no data is loaded" if now is None else _max_length_text(now.spec.max_length, "=")
        return (
            f"stale: the session's data changed since this panel was made (now {state}); "
            "run s.inspect_data() again. This panel still shows its own data, and Apply is off."
        )

    def _show_staleness(self) -> None:
        if self._applying:
            return
        stale = self.stale
        self.stale_html.value = (
            f'<div style="{_STALE}">{escape(self._stale_message())}</div>' if stale else ""
        )
        self.stale_html.layout.display = None if stale else "none"
        self._update_apply()

    def filter_problems(self, kind: str) -> None:
        """List problems of ``kind`` (``"all"`` for every kind), at most 500.

        Examples:
            >>> from transformers import AutoTokenizer
            >>> from workbench.data import PreparedData
            >>> from workbench.models.tiny import build_tiny_model
            >>> tok = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-data-inspector"))
            >>> rows = [{"text": f"row {i}"} for i in range(45)] + [{"text": "row 3"}]
            >>> cache = "/tmp/wb-doc-data-inspector-cache"
            >>> inspector = DataInspector(PreparedData.load(rows, tok, validation=None,
            ...                                             cache_dir=cache))
            >>> inspector.problem_kind.options
            ('all', 'small_dataset', 'duplicate')
            >>> inspector.filter_problems("duplicate")
            >>> [label[:50] for label, _ in inspector.problems_select.options]
            ['[duplicate] train row 45: same text as train row 3']
        """
        listed = [(i, p) for i, p in enumerate(self.report.problems) if kind in ("all", p.kind)]
        options = [(shorten(str(p), 200), i) for i, p in listed[:MAX_PROBLEMS_LISTED]]
        self.problems_select.options = options
        self.problems_select.value = None

    def show_problem(self, index: int | None) -> None:
        """Show the example problem ``index`` (of ``report.problems``) points at.

        Examples:
            >>> from transformers import AutoTokenizer
            >>> from workbench.data import PreparedData
            >>> from workbench.models.tiny import build_tiny_model
            >>> tok = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-data-inspector"))
            >>> rows = [{"text": f"row {i}"} for i in range(45)] + [{"text": "row 3"}]
            >>> cache = "/tmp/wb-doc-data-inspector-cache"
            >>> inspector = DataInspector(PreparedData.load(rows, tok, validation=None,
            ...                                             cache_dir=cache))
            >>> [p.kind for p in inspector.report.problems]
            ['small_dataset', 'duplicate']
            >>> inspector.show_problem(1)
            >>> inspector.example.index
            45
        """
        if index is None:
            return
        problem = self.report.problems[index]
        if problem.clickable:
            self.show_example(problem.row, problem.split)

    def close(self) -> None:
        """Stop following the session's data and close the panel's widgets, every one of them.

        Examples:
            >>> from transformers import AutoTokenizer
            >>> from workbench.data import PreparedData
            >>> from workbench.models.tiny import build_tiny_model
            >>> tok = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-data-inspector"))
            >>> rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)]
            >>> cache = "/tmp/wb-doc-data-inspector-cache"
            >>> ins = DataInspector(PreparedData.load(rows, tok, validation=None, cache_dir=cache))
            >>> ins.close()
            >>> ins.widget.comm is None and ins.page_label.comm is None
            True
        """
        self._stop_listening()
        self._stop_listening = _nothing
        close_panel(self)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle = self.widget._repr_mimebundle_(**kwargs)
        # Front ends without widget support show text/plain: make it the report's facts.
        bundle["text/plain"] = str(self.report)
        bundle.update(self._snapshot_bundle())  # static HTML (+ the same text): no kernel needed
        return bundle

    def _ipython_display_(self) -> None:
        from workbench.widgets._snapshot import show

        show(self)

    def _snapshot_bundle(self) -> dict[str, str]:
        from workbench.widgets._snapshot import snapshot_bundle

        return snapshot_bundle(self)

    def _save_snapshot(self) -> None:
        from workbench.widgets._snapshot import save_snapshot

        save_snapshot(self)  # a displayed panel's saved form follows new data

    def __str__(self) -> str:
        return str(self.report)


def _example_html(example: Any) -> str:
    spans = []
    for t in example.tokens:
        kinds = ["trained" if t.trained else "masked"] + (["special"] if t.special else [])
        title = f"id {t.id} · {'trained' if t.trained else 'masked'}" + (
            " · special" if t.special else ""
        )
        spans.append(token_span(t.text, title, kinds))
    trained = sum(t.trained for t in example.tokens)
    head = (
        f"{escape(example.split)} example {example.index} (source row {example.source_row}): "
        f"{len(example.tokens)} tokens, {trained} trained"
        + (f", <b>{example.cut} cut by max_length</b>" if example.cut else "")
    )
    legend = (
        token_span("trained", "trained tokens", ["trained"])
        + " "
        + token_span("masked", "masked tokens (label -100)", ["masked"])
        + " "
        + token_span("special", "special tokens", ["masked", "special"])
    )
    direction = text_dir("".join(t.text for t in example.tokens))
    return f'<div>{head} &nbsp; {legend}</div><div{direction} style="{_BOX}">{"".join(spans)}</div>'


def _nothing() -> None:
    """No listener to stop."""


def _listen_for_new_data(panel: DataInspector, events: Any) -> Callable[[], None]:
    """Re-check staleness on each ``data_loaded``; holds the panel weakly. Returns the call
    that stops listening."""
    ref = weakref.ref(panel)
    off: list[Callable[[], None]] = []

    def on_data_loaded(_report: Any) -> None:
        alive = ref()
        if alive is None:
            for unsubscribe in off:
                unsubscribe()
            return
        alive._show_staleness()

    off.append(events.on(DATA_LOADED, on_data_loaded))
    return off[0]


def _max_length_text(value: int | None, sep: str = ": ") -> str:
    """As the data report writes it (``max_length: none`` when there is no cutoff)."""
    return f"max_length{sep}{value if value else 'none'}"


def _noun(data: Any) -> str:
    return "texts" if data.is_text else "answers"


def _percent(share: float) -> str:
    """A share as a percentage that never rounds a loss away (99.6% kept is not 100%)."""
    if share >= 1:
        return "100%"
    if share <= 0:
        return "0%"
    if share < 0.01:
        return "<1%"
    return f"{min(99, round(share * 100))}%"


def _marker_pattern(tokenizer: Any) -> re.Pattern[str] | None:
    """Template markers (the tokenizer's special tokens) with a role name right after one."""
    found = TextGuard.from_strings(special_strings(tokenizer), "keep").pattern
    return None if found is None else re.compile(f"(?:{found.pattern}){_ROLES}")


def _unmarked(text: str, markers: re.Pattern[str] | None) -> str:
    return str(text or "") if markers is None else markers.sub("\n", str(text or ""))


def _field_values(data: Any, split: str, indices: list[int]) -> list[Any]:
    """Each row's ``messages`` (or ``text``), read for ``indices`` only."""
    if not indices:
        return []
    column = "text" if data.is_text else "messages"
    return list(data.split(split).select_columns([column])[indices][column])


def _units(value: Any, is_text: bool, markers: re.Pattern[str] | None) -> list[str]:
    """A row's prompt as paragraphs (whitespace collapsed, markers dropped), in order.

    Chat rows: their user messages (alpaca's ``instruction`` and ``input`` are one message
    split by a blank line); text rows: the text, split at paragraphs and template markers.
    """
    if is_text:
        texts = [value or ""]
    else:
        messages = value or []
        texts = [m["content"] or "" for m in messages if m["role"] == "user"] or [
            m["content"] or "" for m in messages if m["role"] != "assistant"
        ]
    units = []
    for text in texts:
        units += [" ".join(p.split()) for p in _PARAGRAPHS.split(_unmarked(text, markers))]
    return [u for u in units if u]


@dataclass(frozen=True)
class _RowLabels:
    """What most rows of a split share (paragraphs, a common start), learned from a sample."""

    is_text: bool
    markers: re.Pattern[str] | None
    shared: dict[str, int]
    prefix: str
    sampled: int
    size: int

    @classmethod
    def learn(cls, data: Any, split: str, markers: re.Pattern[str] | None) -> _RowLabels:
        size = len(data.split(split))
        picks = (
            np.unique(np.linspace(0, size - 1, num=min(size, _SAMPLE_ROWS)).round()) if size else []
        )
        values = _field_values(data, split, [int(i) for i in picks])
        rows = [_units(v, data.is_text, markers) for v in values]
        counts = Counter(u for units in rows for u in dict.fromkeys(units))
        shared = {u: n for u, n in counts.items() if n >= 2 and n * 2 > len(rows)}
        plain = cls(data.is_text, markers, shared, "", len(rows), size)
        firsts = [plain._varying(units) for units in rows]
        prefix = _common_start(firsts) if len(set(firsts)) >= 2 else ""
        return cls(data.is_text, markers, shared, prefix, len(rows), size)

    def _varying(self, units: list[str]) -> str:
        return next((u for u in units if u not in self.shared), units[0] if units else "")

    def labels(self, values: list[Any]) -> list[str]:
        out = []
        for value in values:
            text = self._varying(_units(value, self.is_text, self.markers))
            if self.prefix and text.startswith(self.prefix) and len(text) > len(self.prefix):
                text = "…" + text[len(self.prefix) :]
            out.append(shorten(text, LABEL_CHARS))
        return out

    def note(self) -> str:
        """A line under the list naming what it leaves out (escaped HTML; ``""`` if nothing)."""
        parts = []
        rows = "rows" if self.sampled == self.size else "sampled rows"
        if self.shared:
            first, n = next(iter(self.shared.items()))
            more = f" and {len(self.shared) - 1} more" if len(self.shared) > 1 else ""
            parts.append(
                f'text {n} of {self.sampled} {rows} share ("{shorten(first, LABEL_CHARS)}"{more})'
            )
        if self.prefix:
            parts.append(
                f'the start all {self.sampled} {rows} share ("{shorten(self.prefix, LABEL_CHARS)}")'
            )
        if not parts:
            return ""
        said = "; ".join(parts)
        return f"<i>{escape(f'Not in the list: {said}. The token view shows every token.')}</i>"


def _common_start(texts: list[str], minimum: int = 16) -> str:
    """The start all ``texts`` share, cut back to a word boundary; ``""`` if short.

    In scripts written without spaces (Chinese, Japanese, Thai...) every character boundary
    is a word boundary, except inside a letter with its combining marks.
    """
    shortest = min(texts, key=len)
    end = next((i for i, c in enumerate(shortest) if any(t[i] != c for t in texts)), len(shortest))
    while end and not all(_word_boundary(t, end) for t in texts):
        end -= 1
    return shortest[:end] if end >= minimum else ""


def _word_boundary(text: str, i: int) -> bool:
    if i >= len(text) or " " in (text[i - 1], text[i]):
        return True
    unspaced = is_unspaced(text[i - 1]) or is_unspaced(text[i])
    return unspaced and not continues_grapheme(text, i)
