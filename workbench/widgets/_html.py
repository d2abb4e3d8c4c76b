"""HTML helpers for widgets: every piece of data text goes through :func:`escape`.

``ipywidgets.HTML`` runs the scripts and event handlers it is given, and data rows and model
outputs are untrusted, so widgets build HTML only from these helpers: text is escaped (quotes
included, so it is safe inside attributes too; control characters shown as pictures) and
nothing else is interpolated. An element holding data text gets ``text_dir(text)`` among its
attributes, so right-to-left text keeps its own direction inside a left-to-right panel.

Examples:
    >>> escape('<img src=x onerror="alert(1)">')
    '&lt;img src=x onerror=&quot;alert(1)&quot;&gt;'
    >>> table(["a"], [["<b>"]])[-50:]
    '<tbody><tr><td>&lt;b&gt;</td></tr></tbody></table>'
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any

from workbench._display import (
    EMPTY_ANSWER,
    MarkedUp,
    answer_html,
    continues_grapheme,
    escape_html,
    html_table,
    text_dir,
)

__all__ = [
    "EMPTY_ANSWER",
    "answer_html",
    "escape",
    "pre",
    "shorten",
    "table",
    "text_dir",
    "token_span",
]


def escape(value: Any) -> str:
    """Escape any value for HTML text or a quoted attribute, control characters shown
    (:func:`~workbench._display.escape_html`).

    Examples:
        >>> escape("a & b\\x03")
        'a &amp; b␃'
    """
    return escape_html(value)


def shorten(text: str, limit: int = 120) -> str:
    """Cut ``text`` to ``limit`` characters (with an ellipsis, never inside a letter with its
    combining marks); escape separately.

    Examples:
        >>> shorten("abcdef", 4), shorten("abce\\u0301f", 5)
        ('abc…', 'abc…')
    """
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    end = limit - 1
    while end > 0 and continues_grapheme(text, end):
        end -= 1
    return text[:end] + "…"


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    row_titles: Sequence[str] | None = None,
    answers: Collection[int] = (),
) -> str:
    """A panel's table: :func:`workbench._display.html_table` with the panels' ``wb-table`` style.

    Args:
        headers: Column names.
        rows: The cells, row by row (each escaped).
        row_titles: A hover text per row.
        answers: Positions of the columns holding model answers: each shown by
            :func:`answer_html` (an empty one marked), a ``None`` cell (no answer) blank.

    Examples:
        >>> "<td>1</td>" in table(["n"], [[1]])
        True
        >>> html = table(["#", "answer"], [[0, "<b>"], [1, " "], [2, None]], answers=[1])
        >>> html.count(EMPTY_ANSWER), "<td>&lt;b&gt;</td>" in html, "<td></td>" in html
        (1, True, True)
    """
    if answers:
        rows = [[_answer_cell(c) if j in answers else c for j, c in enumerate(r)] for r in rows]
    return html_table(rows, headers, row_titles=row_titles, css_class="wb-table")


def _answer_cell(value: Any) -> Any:
    return "" if value is None else MarkedUp(answer_html(value))


_STYLES = {
    "trained": "background:#c8f0c8;color:#000;",
    "masked": "color:#999;",
    "special": "border:1px solid #888;border-radius:3px;font-weight:bold;",
}


def token_span(text: str, title: str, kinds: Sequence[str]) -> str:
    """One token as a span: escaped text, hover title, and styles for its kinds.

    Newlines show as ``↵`` followed by a line break, so line structure stays visible.

    Examples:
        >>> token_span("<s>", "id 1", ["masked", "special"])
        '<span class="wb-tok masked special" title="id 1" style="color:#999;border:1px solid #888;\
border-radius:3px;font-weight:bold;">&lt;s&gt;</span>'
    """
    style = "".join(_STYLES.get(k, "") for k in kinds)
    shown = escape(text).replace("\n", "↵<br>")
    classes = " ".join(["wb-tok", *kinds])
    return f'<span class="{escape(classes)}" title="{escape(title)}" style="{style}">{shown}</span>'


def pre(text: str) -> str:
    """Preformatted, escaped text.

    Examples:
        >>> pre("<x>"), pre("שלום")
        ('<pre>&lt;x&gt;</pre>', '<pre dir="auto">שלום</pre>')
    """
    return f"<pre{text_dir(text)}>{escape(text)}</pre>"
