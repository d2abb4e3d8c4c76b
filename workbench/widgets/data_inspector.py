"""DataInspector: rows, one example's tokens, a length histogram with a cutoff, and problems.

A view of a :class:`~workbench.data.PreparedData`: every number comes from its report or its
methods (``search``, ``preview``, ``example``, ``truncation_at``); each widget callback calls
one method of this class, and those methods are what tests drive headless. All data text is
escaped (see :mod:`workbench.widgets._html`); problem labels live in a ``Select``, which shows
plain text.

In a notebook a bare ``inspector`` shows the panel; a session passes its ``set_max_length``
as ``on_apply_max_length``. Headless, on data tokenized by the tiny model's tokenizer:

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
from collections.abc import Callable
from typing import Any

import ipywidgets as w

from workbench.widgets._html import escape, pre, shorten, table, token_span

__all__ = ["MAX_PROBLEMS_LISTED", "PAGE_SIZE", "DataInspector"]

PAGE_SIZE = 20
MAX_PROBLEMS_LISTED = 500
_HEADERS = ["#", "source row", "prompt", "answer", "tokens", "trained", "problems"]
_BOX = "font-family:monospace;white-space:pre-wrap;line-height:1.6;"


class DataInspector:
    """Notebook panel over prepared data; the ipywidgets tree is ``.widget``.

    Args:
        data: A :class:`~workbench.data.PreparedData`.
        on_apply_max_length: Called with the slider's cutoff when Apply is clicked. If it
            returns a ``PreparedData``, the panel switches to it.
        page_size: Rows per table page.

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
        >>> ins.cutoff_label.value
        'cutoff 23: 24 of 45 examples cut, 24 answers cut (0 lose every trained token)'
    """

    def __init__(
        self,
        data: Any,
        on_apply_max_length: Callable[[int], Any] | None = None,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self.on_apply_max_length = on_apply_max_length
        self.page_size = page_size
        self._build_widgets()
        self._connect()
        self.set_data(data)

    # -- layout -------------------------------------------------------------------------
    def _build_widgets(self) -> None:
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
        self.table_html = w.HTML()
        self.example_index = w.BoundedIntText(value=0, min=0, max=0, description="example")
        self.example_html = w.HTML()
        self.cutoff_slider = w.IntSlider(
            value=1, min=1, max=1, description="cutoff", continuous_update=False
        )
        self.cutoff_label = w.Label()
        self.apply_button = w.Button(description="Apply max_length", button_style="primary")
        self.problem_kind = w.Dropdown(options=["all"], value="all", description="kind")
        self.problems_select = w.Select(options=[], rows=10, layout=w.Layout(width="100%"))
        self.figure = self._figure()
        rows = w.VBox(
            [
                w.HBox([self.split_toggle, self.search_box]),
                w.HBox([self.prev_button, self.page_label, self.next_button]),
                self.table_html,
            ]
        )
        lengths = w.VBox(
            [self.figure, self.cutoff_slider, w.HBox([self.cutoff_label, self.apply_button])]
        )
        problems = w.VBox([self.problem_kind, self.problems_select])
        self.tabs = w.Tab(
            children=[rows, lengths, problems], titles=["Rows", "Lengths", "Problems"]
        )
        self.widget = w.VBox([self.summary_html, self.tabs, self.example_index, self.example_html])
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
        self.apply_button.on_click(lambda _: self.apply_cutoff())
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
        rows = self.data.preview(self._matches[start : start + self.page_size], self.split)
        cells = [
            [
                r["row"],
                r["source_row"],
                shorten(r["prompt"]),
                shorten(r["answer"]),
                r["tokens"],
                r["trained"],
                ", ".join(self._flags.get((self.split, r["row"]), [])),
            ]
            for r in rows
        ]
        self.table_html.value = table(_HEADERS, cells) if cells else "<i>no matching rows</i>"
        self.page_label.value = f"page {self.page + 1} of {self.pages} ({len(self._matches)} rows)"
        self.prev_button.disabled = self.page == 0
        self.next_button.disabled = self.page >= self.pages - 1

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
        self.cutoff_slider.max = max(longest, self.cutoff_slider.min)
        self.cutoff_slider.value = self.data.spec.max_length or longest
        self.set_cutoff(self.cutoff_slider.value)

    def set_cutoff(self, cutoff: int) -> None:
        """Move the cutoff line and say what a ``max_length`` of ``cutoff`` would cut.

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
            >>> inspector.cutoff_label.value
            'cutoff 21: 45 of 45 examples cut, 45 answers cut (24 lose every trained token)'
            >>> inspector.figure.layout.shapes[0].x0  # the red line on the histogram
            21
        """
        cut = self.data.truncation_at(cutoff)
        self.cutoff_slider.value = cutoff
        self.cutoff_label.value = (
            f"cutoff {cutoff}: {cut['examples']} of {cut['total']} examples cut, "
            f"{cut['answers']} answers cut ({cut['answers_lost']} lose every trained token)"
        )
        with self.figure.batch_update():
            self.figure.layout.shapes[0].x0 = cutoff
            self.figure.layout.shapes[0].x1 = cutoff

    def apply_cutoff(self) -> Any:
        """Call ``on_apply_max_length`` with the current cutoff; show the data it returns.

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
        result = self.on_apply_max_length(self.cutoff_slider.value)
        if hasattr(result, "report") and hasattr(result, "truncation_at"):
            self.set_data(result)
        return result

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

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle = self.widget._repr_mimebundle_(**kwargs)
        # Front ends without widget support show text/plain: make it the report's facts.
        bundle["text/plain"] = str(self.report)
        return bundle

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
    return f'<div>{head} &nbsp; {legend}</div><div style="{_BOX}">{"".join(spans)}</div>'
