"""HTML helpers for widgets: every piece of data text goes through :func:`escape`.

``ipywidgets.HTML`` runs the scripts and event handlers it is given, and data rows and model
outputs are untrusted, so widgets build HTML only from these helpers: text is escaped (quotes
included, so it is safe inside attributes too) and nothing else is interpolated.

Examples:
    >>> escape('<img src=x onerror="alert(1)">')
    '&lt;img src=x onerror=&quot;alert(1)&quot;&gt;'
    >>> table(["a"], [["<b>"]])[-50:]
    '<tbody><tr><td>&lt;b&gt;</td></tr></tbody></table>'
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

from workbench._display import html_table

__all__ = ["escape", "pre", "shorten", "table", "token_span"]


def escape(value: Any) -> str:
    """Escape any value for HTML text or a quoted attribute.

    Examples:
        >>> escape("a & b")
        'a &amp; b'
    """
    return html.escape(str(value), quote=True)


def shorten(text: str, limit: int = 120) -> str:
    """Cut ``text`` to ``limit`` characters (with an ellipsis); escape separately.

    Examples:
        >>> shorten("abcdef", 4)
        'abc…'
    """
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], row_titles: Sequence[str] | None = None
) -> str:
    """A panel's table: :func:`workbench._display.html_table` with the panels' ``wb-table`` style.

    Examples:
        >>> "<td>1</td>" in table(["n"], [[1]])
        True
    """
    return html_table(rows, headers, row_titles=row_titles, css_class="wb-table")


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
        >>> pre("<x>")
        '<pre>&lt;x&gt;</pre>'
    """
    return f"<pre>{escape(text)}</pre>"
