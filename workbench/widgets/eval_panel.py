"""EvalPanel: scores base vs tuned, examples side by side, token losses, probes, human eval.

A view of an :class:`~workbench.evaluation.Evaluation` (live or reloaded from disk): every
number comes from it; each widget callback calls one method of this class, and those
methods are what tests drive headless. Every piece of data text is escaped.

In a notebook, ``ev.panel()`` or a bare ``ev`` shows it.

Examples:
    >>> from workbench.evaluation import EvalRow, Evaluation
    >>> rows = (EvalRow(0, "sky?", "blue", {"base": "green", "tuned": "blue"},
    ...                 {"em": {"base": 0.0, "tuned": 1.0}}, {"base": 3.0, "tuned": 0.3},
    ...                 ("bl", "ue"), {"base": (4.0, 2.0), "tuned": (0.5, 0.1)}),
    ...         EvalRow(1, "grass?", "green", {"base": "green", "tuned": "red"},
    ...                 {"em": {"base": 1.0, "tuned": 0.0}}))
    >>> ev = Evaluation({"em": {"base": 0.5, "tuned": 0.5}}, rows, {"columns": ["base", "tuned"]})
    >>> panel = EvalPanel(ev)
    >>> panel.sort_by("em"), [label for label, _ in panel.rows_select.options]
    ([0, 1], ['#0  gain +1  |  sky?', '#1  gain -1  |  grass?'])
    >>> _ = panel.sort_by("index")
    >>> [label for label, _ in panel.rows_select.options]  # the position once, exact
    ['#1  |  grass?', '#0  |  sky?']
    >>> '<span style="background:#c8f0c8;">blue</span>' in panel.open_row(0)
    True
    >>> 'title="loss 4.000"' in panel.show_tokens(0, "base")
    True
"""

from __future__ import annotations

import math
from typing import Any

import ipywidgets as w

from workbench._display import isolate, plotly_text
from workbench.evaluation.compare import SCORE_COLUMNS, format_score, score_scale
from workbench.evaluation.diff import word_diff
from workbench.widgets._closing import close_panel
from workbench.widgets._html import answer_html, escape, pre, shorten, table, text_dir

__all__ = ["EvalPanel", "diff_html", "token_loss_html"]

_BOX = "font-family:monospace;white-space:pre-wrap;line-height:1.6;"
_MARK = {
    "delete": "background:#f8c8c8;text-decoration:line-through;",
    "insert": "background:#c8f0c8;",
}
LOSS_SCALE = 6.0  # a token with NLL >= this is shaded fully (about 1/400 probability)
_COLORS = {"base": "#8c96a0", "tuned": "#1f77b4"}  # the same column, the same colour in every chart


def diff_html(old: str, new: str) -> tuple[str, str]:
    """Escaped HTML of ``old`` with deletions marked and ``new`` with insertions marked.

    Examples:
        >>> diff_html("a <b>", "a c")[0]
        'a <span style="background:#f8c8c8;text-decoration:line-through;">&lt;b&gt;</span>'
    """
    left, right = [], []
    for kind, text in word_diff(old, new):
        span = escape(text)
        if kind != "equal":
            span = f'<span style="{_MARK[kind]}">{span}</span>'
        if kind != "insert":
            left.append(span)
        if kind != "delete":
            right.append(span)
    return "".join(left), "".join(right)


def token_loss_html(tokens: list[str], losses: list[float]) -> str:
    """Tokens as escaped spans shaded red by their loss (hover shows the number).

    Examples:
        >>> token_loss_html(["<x>"], [6.0])
        '<span title="loss 6.000" style="background:rgba(220,40,40,1.00);">&lt;x&gt;</span>'
    """
    spans = []
    for token, loss in zip(tokens, losses, strict=False):
        alpha = 0.0 if math.isnan(loss) else min(max(loss / LOSS_SCALE, 0.0), 1.0)
        shown = escape(token).replace("\n", "↵<br>")
        style = f"background:rgba(220,40,40,{alpha:.2f});"
        spans.append(f'<span title="loss {loss:.3f}" style="{style}">{shown}</span>')
    return "".join(spans)


def _fmt(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:+.3g}"


class EvalPanel:
    """Notebook panel over an evaluation; the ipywidgets tree is ``.widget``.

    Tabs: Scores (table, and one bar chart per score, each on its own scale, with interval
    error bars and which way is better), Examples (rows sorted by
    gain or loss; selecting one opens prompt, reference and both answers with word
    differences), Tokens (per-token loss of the reference), Probes (training timeline),
    Human eval (blind A/B and its summary).

    Args:
        evaluation: An :class:`~workbench.evaluation.Evaluation`.
        seed: Seed of the blind A/B order.

    Examples:
        >>> from workbench.evaluation import EvalRow, Evaluation
        >>> rows = tuple(EvalRow(i, f"Q{i}", "A", {"base": "B", "tuned": "A"},
        ...                      losses={"base": 2.0, "tuned": drop}) for i, drop in
        ...              enumerate([1.5, 0.5, 1.0]))
        >>> p = EvalPanel(Evaluation({}, rows, {"columns": ["base", "tuned"]}))
        >>> p.sort_by("loss"), p.selected  # largest loss drop first; the top row is open
        ([1, 2, 0], 1)
        >>> p.detail_html.value.startswith("<b>prompt</b><pre>Q1</pre>")
        True
    """

    def __init__(self, evaluation: Any, seed: int = 0) -> None:
        self.evaluation, self.seed = evaluation, seed
        self.order: list[int] = []
        self.selected: int | None = None
        self._build_widgets()
        self._connect()
        self._show_scores()
        self._show_probes()
        self.show_tokens()  # the Tokens tab shows its first example before any control moves
        self.sort_by(self._default_key(), True)
        self.refresh_ratings()

    def _default_key(self) -> str:
        keys = [k for k in self.evaluation.sort_keys() if k not in ("index", "loss")]
        return keys[0] if keys else "index"

    def _build_widgets(self) -> None:
        ev = self.evaluation
        self.scores_html, self.figure = w.HTML(), self._figure()
        self.findings_html = w.HTML()  # plain-language diagnostics of this evaluation
        self.sort_key = w.Dropdown(
            options=ev.sort_keys(), value=self._default_key(), description="sort by"
        )
        self.descending = w.Checkbox(value=True, description="largest first")
        self.rows_select = w.Select(options=[], rows=12, layout=w.Layout(width="100%"))
        self.detail_html = w.HTML()
        self.token_column = w.ToggleButtons(options=list(ev.columns), value=ev.columns[-1])
        self.token_row = w.BoundedIntText(
            value=0, min=0, max=max(len(ev.rows) - 1, 0), description="example"
        )
        self.tokens_html, self.probes_html, self.ratings_html = w.HTML(), w.HTML(), w.HTML()
        self.ab_box = w.VBox()
        examples = w.VBox(
            [w.HBox([self.sort_key, self.descending]), self.rows_select, self.detail_html]
        )
        tokens = w.VBox([w.HBox([self.token_row, self.token_column]), self.tokens_html])
        self.tabs = w.Tab(
            children=[
                w.VBox([self.findings_html, self.scores_html, self.figure]),
                examples,
                tokens,
                self.probes_html,
                w.VBox([self.ratings_html, self.ab_box]),
            ],
            titles=["Scores", "Examples", "Tokens", "Probes", "Human eval"],
        )
        self.widget = w.VBox([self.tabs])
        self.widget.add_class("wb-eval-panel")  # a stable hook for browser tests

    def _figure(self) -> Any:
        """One subplot per score, each with its own y axis (perplexity ~1500 beside 0-1 scores)."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        ev = self.evaluation
        names = list(ev.scores)
        cols = max(1, min(len(names), SCORE_COLUMNS))
        rows = max(1, math.ceil(len(names) / cols))
        titles = [plotly_text(score_scale(n, [], ev.higher_is_better(n))[0]) for n in names]
        fig = make_subplots(
            rows=rows,
            cols=cols,
            subplot_titles=titles or None,
            vertical_spacing=min(0.3, 70 / (230 * rows)),  # about 70px for the titles
            horizontal_spacing=0.1,
        )
        fig.update_annotations(font_size=12)
        fig.update_layout(
            height=90 + 230 * rows,
            barmode="relative",  # one bar per column and category: no empty group slots
            showlegend=False,  # each bar is labelled under it: base, tuned
            margin=dict(l=40, r=10, t=70, b=30),
            title="base vs tuned (95% bootstrap interval), each score on its own scale",
        )
        return go.FigureWidget(fig)

    def _connect(self) -> None:
        self.sort_key.observe(lambda c: self.sort_by(c["new"]), names="value")
        self.descending.observe(lambda c: self.sort_by(descending=c["new"]), names="value")
        self.rows_select.observe(lambda c: self.open_row(c["new"]), names="value")
        self.token_row.observe(lambda c: self.show_tokens(c["new"]), names="value")
        self.token_column.observe(lambda c: self.show_tokens(column=c["new"]), names="value")

    # -- scores ---------------------------------------------------------------------------
    def _show_scores(self) -> None:
        ev = self.evaluation
        header = ["score", "base", "base 95% CI", "tuned", "tuned 95% CI", "gain"]
        measured = f"<p>Measured {escape(ev.measured())}.</p>" if ev.measured() else ""
        self.scores_html.value = measured + table(header, ev.score_table())
        self.findings_html.value = self._findings_html()
        with self.figure.batch_update():
            self.figure.data = ()
            for k, name in enumerate(ev.scores):
                axis = "" if k == 0 else str(k + 1)  # subplot k: axes x/y, x2/y2, ...
                bars = [self._bar(name, column) for column in ev.columns]
                for bar in bars:
                    self.figure.add_bar(**bar, xaxis=f"x{axis}", yaxis=f"y{axis}")
                bounds = [v for b in bars for v in (b["y"][0], *b["customdata"][0])]
                _title, y_range = score_scale(name, bounds, ev.higher_is_better(name))
                self.figure.layout[f"yaxis{axis}"].range = y_range
                self.figure.layout[f"xaxis{axis}"].update(  # "tuned: 0.5" under each bar
                    tickvals=[plotly_text(column) for column in ev.columns],
                    ticktext=[f"{b['name']}: {format_score(b['y'][0])}" for b in bars],
                )

    def _findings_html(self) -> str:
        from workbench.diagnostics import diagnose_evaluation
        from workbench.widgets._findings import findings_html

        return findings_html(diagnose_evaluation(self.evaluation))

    def _bar(self, name: str, column: str) -> dict[str, Any]:
        """One column's bar of one score, its interval as error bars (value in the hover)."""
        # NaN is not JSON: a missing value or interval (under 10 rows) is None, no error bar
        entry = self.evaluation.scores[name]
        value = _finite(entry.get(column))
        lo, hi = (_finite(x) for x in entry.get(f"{column}_ci") or (None, None))
        interval = value is not None and lo is not None and hi is not None
        error = (
            dict(type="data", array=[hi - value], arrayminus=[value - lo], visible=True)
            if interval
            else dict(visible=False)
        )
        hover = (
            "<br>95% interval %{customdata[0]:.4g} to %{customdata[1]:.4g}"
            if interval
            else "<br>no 95% interval"
        )
        return dict(
            x=[plotly_text(column)],
            y=[value],
            name=plotly_text(column),
            marker_color=_COLORS.get(column, "#ff7f0e"),
            error_y=error,
            customdata=[[lo, hi]],
            hovertemplate="%{x}: %{y:.4g}" + hover + "<extra></extra>",
        )

    # -- examples -------------------------------------------------------------------------
    def sort_by(self, key: str | None = None, descending: bool | None = None) -> list[int]:
        """Sort the example list by ``key`` (a score's gain, ``"loss"`` or ``"index"``).

        Returns:
            The row indices in the new order (also kept in ``.order``).

        Examples:
            >>> from workbench.evaluation import EvalRow, Evaluation
            >>> rows = tuple(EvalRow(i, "Q", "A", {"base": "B", "tuned": "A"},
            ...                      {"em": {"base": 0.0, "tuned": gain}})
            ...              for i, gain in enumerate([0.0, 1.0, 0.5]))
            >>> panel = EvalPanel(Evaluation({"em": {}}, rows, {"columns": ["base", "tuned"]}))
            >>> panel.sort_by("em"), panel.sort_by("em", descending=False)
            ([1, 2, 0], [0, 2, 1])
        """
        key = key if key is not None else self.sort_key.value
        descending = self.descending.value if descending is None else descending
        rows = self.evaluation.sorted_rows(key, descending)
        self.order = [r.index for r in rows]
        labels = [(self._label(r, key), r.index) for r in rows]
        self.rows_select.options = labels
        if self.order and self.selected not in self.order:
            self.rows_select.value = self.order[0]
        return self.order

    def _label(self, row: Any, key: str) -> str:
        if key == "index":  # "#4999  index +5e+03" said the position twice, rounded
            return f"#{row.index}  |  {isolate(shorten(row.prompt, 80))}"
        value = self.evaluation.row_key(row, key)
        tag = "gain" if len(self.evaluation.columns) == 2 and key != "index" else key
        return f"#{row.index}  {tag} {_fmt(value)}  |  {isolate(shorten(row.prompt, 80))}"

    def open_row(self, index: int | None) -> str:
        """Show row ``index``: prompt, reference, and the answers side by side with diffs.

        Returns:
            The HTML shown (every piece of text escaped).

        Examples:
            >>> from workbench.evaluation import EvalRow, Evaluation
            >>> row = EvalRow(0, "<b>Q</b>", "A", {"base": "x", "tuned": "A"})
            >>> panel = EvalPanel(Evaluation({}, (row,), {"columns": ["base", "tuned"]}))
            >>> html = panel.open_row(0)
            >>> "&lt;b&gt;Q&lt;/b&gt;" in html, "line-through" in html  # escaped; x struck
            (True, True)
        """
        if index is None:
            return self.detail_html.value
        self.selected = index
        row = self.evaluation.rows[index]
        self.detail_html.value = self._detail(row)
        if self.rows_select.value != index:
            self.rows_select.value = index
        return self.detail_html.value

    def _detail(self, row: Any) -> str:
        cols = self.evaluation.columns
        head = f"<b>prompt</b>{pre(row.prompt)}<b>reference</b>{pre(row.reference)}"
        if len(cols) == 2:
            texts, cells = (row.base, row.tuned), diff_html(row.base, row.tuned)
        else:
            texts = (row.outputs[cols[0]],)
            cells = (escape(texts[0]),)
        cells = tuple(answer_html(t, c) for t, c in zip(texts, cells, strict=True))
        scores = {n: ", ".join(f"{c} {v:.3g}" for c, v in s.items()) for n, s in row.scores.items()}
        parts = "".join(
            f"<td{text_dir(t)} style='{_BOX}vertical-align:top;width:50%'>{c}</td>"
            for t, c in zip(texts, cells, strict=True)
        )
        heads = "".join(f"<th>{escape(c)}</th>" for c in cols)
        facts = table(["score", "per column"], [[n, s] for n, s in scores.items()])
        return f"{head}<table style='width:100%'><tr>{heads}</tr><tr>{parts}</tr></table>{facts}"

    # -- tokens ---------------------------------------------------------------------------
    def show_tokens(self, index: int | None = None, column: str | None = None) -> str:
        """Shade the reference of row ``index`` by each token's loss under ``column``'s model.

        Examples:
            >>> from workbench.evaluation import EvalRow, Evaluation
            >>> row = EvalRow(0, "Q", "red", {"base": "x", "tuned": "red"}, losses={"base": 6.0},
            ...               tokens=("red",), token_losses={"base": (6.0,)})
            >>> panel = EvalPanel(Evaluation({}, (row,), {"columns": ["base", "tuned"]}))
            >>> print(panel.show_tokens(0, "base").split("<div style")[0])
            <div>loss 6.000 (mean NLL per token)</div>
            >>> "rgba(220,40,40,1.00)" in panel.tokens_html.value  # fully shaded at loss 6
            True
        """
        index = self.token_row.value if index is None else index
        column = self.token_column.value if column is None else column
        if not self.evaluation.rows:
            self.tokens_html.value = "<i>no examples were evaluated</i>"
            return self.tokens_html.value
        row = self.evaluation.rows[index]
        losses = list(row.token_losses.get(column, ()))
        note = f"loss {row.losses.get(column, float('nan')):.3f} (mean NLL per token)"
        shaded = token_loss_html(list(row.tokens), losses) if losses else "no token losses stored"
        box = f"<div{text_dir(''.join(row.tokens))} style='{_BOX}'>{shaded}</div>"
        self.tokens_html.value = f"<div>{escape(note)}</div>{box}"
        return self.tokens_html.value

    # -- probes and human eval --------------------------------------------------------------
    def _show_probes(self) -> None:
        probes = self.evaluation.probes
        if not probes:
            self.probes_html.value = "<i>no probe prompts were recorded in training</i>"
            return
        rows = [  # a base answer not recorded stays blank; an empty one is marked
            [p.get("step"), p.get("prompt", ""), p.get("output"), p.get("base")]
            for p in sorted(probes, key=lambda p: (str(p.get("prompt")), p.get("step") or 0))
        ]
        self.probes_html.value = table(["step", "prompt", "output", "base"], rows, answers=(2, 3))

    def refresh_ratings(self, _rating: Any = None) -> str:
        """Re-read ``ratings.jsonl`` and show the summary; build the A/B view when possible.

        Examples:
            >>> from workbench.evaluation import EvalRow, Evaluation
            >>> row = EvalRow(0, "Q", "A", {"base": "B", "tuned": "A"})
            >>> panel = EvalPanel(Evaluation({}, (row,), {"columns": ["base", "tuned"]}))
            >>> panel.refresh_ratings()  # not saved yet: no rating file to write to
            '<i>blind A/B needs base and tuned answers and a saved evaluation</i>'
        """
        ev = self.evaluation
        if ev.ratings_path is None or len(ev.columns) != 2:
            self.ratings_html.value = (
                "<i>blind A/B needs base and tuned answers and a saved evaluation</i>"
            )
            return self.ratings_html.value
        # the evaluation's own count: a rating of a row it does not hold is not one of its
        self.ratings_html.value = pre(str(ev.ratings_summary()))
        if not self.ab_box.children:
            from workbench.widgets.ab_rating import ABRating

            self.ab = ABRating(ev, self.seed, on_rated=self.refresh_ratings)
            self.ab_box.children = (self.ab.widget,)
        return self.ratings_html.value

    def _ipython_display_(self) -> None:
        from workbench.widgets._snapshot import show

        show(self)  # the widget view plus a static snapshot (scores, bars, examples)

    def close(self) -> None:
        """Close the panel's widgets, every one of them (a closed panel can be collected).

        Examples:
            >>> from workbench.evaluation import EvalRow, Evaluation
            >>> rows = (EvalRow(0, "Q", "A", {"base": "B", "tuned": "A"}),)
            >>> panel = EvalPanel(Evaluation({}, rows, {"columns": ["base", "tuned"]}))
            >>> panel.close()
            >>> panel.widget.comm is None and panel.detail_html.comm is None
            True
        """
        close_panel(self)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        from workbench.widgets._snapshot import snapshot_bundle

        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle.update(snapshot_bundle(self))
        return bundle


def _finite(value: Any) -> float | None:
    """``value`` as a float, or ``None`` where it is missing or not finite (NaN)."""
    if value is None or isinstance(value, bool):
        return None
    number = float(value)
    return number if math.isfinite(number) else None
