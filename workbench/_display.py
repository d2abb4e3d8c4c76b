"""Plain-text and escaped-HTML tables shared by the objects a notebook displays.

Every cell goes through :func:`html.escape`: model names, dataset text and outputs are
untrusted and must never run as markup.

Examples:
    >>> print(text_table([("a", "1"), ("bb", "22")], header=("k", "v")))
    k   v
    a   1
    bb  22
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["format_bytes", "html_table", "in_notebook", "notebook_kernel", "text_table"]


def notebook_kernel() -> Any:
    """The Jupyter kernel this code runs in, or ``None`` (a script, plain IPython, a test).

    Examples:
        >>> notebook_kernel() is None
        True
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        return None
    return getattr(shell, "kernel", None)


def in_notebook() -> bool:
    """True inside a Jupyter kernel: long calls then return at once and show their panel.

    Examples:
        >>> in_notebook()
        False
    """
    return notebook_kernel() is not None


def format_bytes(n: float | None) -> str:
    """Human-readable size with binary units.

    Examples:
        >>> format_bytes(3 * 1024**3)
        '3.00 GiB'
        >>> format_bytes(None)
        '-'
    """
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"  # pragma: no cover - the loop always returns


def text_table(rows: Iterable[Sequence[object]], header: Sequence[str] | None = None) -> str:
    """Align rows into columns separated by two spaces.

    Examples:
        >>> text_table([("x", 1)])
        'x  1'
    """
    table = [list(map(str, header))] if header else []
    table += [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table
    ]
    return "\n".join(lines)


def html_table(
    rows: Iterable[Sequence[object]],
    header: Sequence[str] | None = None,
    title: str | None = None,
    row_titles: Sequence[str] | None = None,
    css_class: str = "workbench",
) -> str:
    """An HTML table whose every cell, header, title and row tooltip is escaped.

    The one table writer of the workbench: reports, result tables and the panels' tables.

    Args:
        rows: The cells, row by row.
        header: Column names (a ``<thead>``).
        title: A caption.
        row_titles: A hover text per row.
        css_class: The table's class (the panels style ``wb-table``).

    Examples:
        >>> html_table([("<b>", 1)])
        '<table class="workbench"><tbody><tr><td>&lt;b&gt;</td><td>1</td></tr></tbody></table>'
        >>> 'title="a &quot;b&quot;"' in html_table([[1]], ["n"], row_titles=['a "b"'])
        True
    """
    parts = [f'<table class="{html.escape(css_class)}">']
    if title:
        parts.append(f"<caption>{html.escape(str(title))}</caption>")
    if header:
        cells = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        parts.append(f"<thead><tr>{cells}</tr></thead>")
    parts.append("<tbody>")
    for k, row in enumerate(rows):
        tip = f' title="{html.escape(str(row_titles[k]), quote=True)}"' if row_titles else ""
        cells = "".join(f"<td>{html.escape(str(c))}</td>" for c in row)
        parts.append(f"<tr{tip}>{cells}</tr>")
    parts.append("</tbody></table>")
    return "".join(parts)
