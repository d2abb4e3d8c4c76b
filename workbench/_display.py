"""Plain-text and escaped-HTML tables shared by the objects a notebook displays.

Every cell goes through :func:`escape_html`: model names, dataset text and outputs are
untrusted and must never run as markup. Text in any script shows as written: a cell of
Hebrew or Arabic gets its own direction (:func:`text_dir`), wide characters count two
columns in plain-text tables (:func:`display_width`), and :data:`UNSPACED_RANGES` names the
scripts written without spaces between words (shared by the data checks and label cutting).

Examples:
    >>> print(text_table([("a", "1"), ("bb", "22")], header=("k", "v")))
    k   v
    a   1
    bb  22
"""

from __future__ import annotations

import html
import os
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "EMPTY_ANSWER",
    "HAN_RANGES",
    "INVISIBLE_CHARS",
    "INVISIBLE_RANGES",
    "OTHER_UNSPACED_RANGES",
    "UNSPACED_CHARS",
    "UNSPACED_RANGES",
    "MarkedUp",
    "answer_html",
    "answer_text",
    "continues_grapheme",
    "display_width",
    "escape_html",
    "format_bytes",
    "html_table",
    "in_notebook",
    "invisible_characters",
    "is_unspaced",
    "isolate",
    "notebook_kernel",
    "plotly_text",
    "print_line",
    "printable",
    "text_dir",
    "text_table",
]

HAN_RANGES = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2FA1F))
"""Code point ranges of the Han ideographs (Chinese, Japanese kanji)."""
OTHER_UNSPACED_RANGES = (
    (0x0E00, 0x0EFF), (0x1000, 0x109F), (0x1780, 0x17FF), (0x3040, 0x30FF), (0xFF66, 0xFF9F),
)  # fmt: skip
"""The other scripts written without spaces: Thai and Lao, Myanmar, Khmer, kana, half-width
katakana (sacrebleu has a tokenizer for Chinese, and only ``char`` for these)."""
UNSPACED_RANGES = HAN_RANGES + OTHER_UNSPACED_RANGES
"""Code point ranges of scripts written without spaces between words, where each character
counts as a word (ROUGE, BLEU's tokenizer, the word diff, near-duplicates, row labels)."""
UNSPACED_CHARS = "[" + "".join(f"{chr(low)}-{chr(high)}" for low, high in UNSPACED_RANGES) + "]"
"""A regex character class of :data:`UNSPACED_RANGES` (Python ``re`` and Arrow's RE2 both read
it)."""

INVISIBLE_RANGES = (
    (0x00, 0x08), (0x0B, 0x0C), (0x0E, 0x1F), (0x7F, 0x9F), (0xAD, 0xAD), (0x034F, 0x034F),
    (0x115F, 0x1160), (0x200B, 0x200B), (0x2028, 0x202E), (0x2060, 0x2064), (0x2066, 0x206F),
    (0x3164, 0x3164), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF9, 0xFFFB), (0xE0000, 0xE007F),
)  # fmt: skip
"""Characters a reader of the text does not see: controls (not tab, newline and carriage
return), the soft hyphen, the combining grapheme joiner, the Hangul fillers (blank letters),
the zero-width space, word joiner and no-break space (a byte order mark inside text), line
and paragraph separators, the bidirectional embeddings, overrides and isolates, and the tag
characters (invisible ASCII, used to hide instructions in text a model reads) outside the
emoji flags they spell (🏴 + tags: Scotland's). Not the joiners (ZWJ, ZWNJ), direction marks
(LRM, RLM) and variation selectors that Persian, Indic scripts, Hebrew, Japanese names and
emoji sequences need."""
INVISIBLE_CHARS = "[" + "".join(f"{chr(low)}-{chr(high)}" for low, high in INVISIBLE_RANGES) + "]"
"""A Python ``re`` character class of :data:`INVISIBLE_RANGES`."""
_TAG_FLAG = "\U0001f3f4[\U000e0020-\U000e007e]+\U000e007f"  # an emoji flag's tag spelling
_INVISIBLE = re.compile(f"({_TAG_FLAG})|{INVISIBLE_CHARS}")

# Hebrew, Arabic, Syriac, Thaana, NKo and the other right-to-left blocks, their presentation
# forms, and the marks and controls that start right-to-left text.
_RTL = re.compile(
    "[\u0590-\u08ff\u200f\u202b\u202e\u2067\ufb1d-\ufdff\ufe70-\ufefe"
    "\U00010800-\U00010fff\U0001e800-\U0001efff]"
)


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


def escape_html(value: object) -> str:
    """Escape any value for HTML text or a quoted attribute, invisible characters shown.

    Control characters (other than tab, newline and carriage return) are invalid in HTML;
    C0 ones show as their control pictures (U+2400 block), DEL as ``␡``, C1 ones as ``\\xNN``.
    The other :data:`INVISIBLE_RANGES` (a zero-width space, a right-to-left override) show
    as ``\\uNNNN``, so a row or an answer holding one does not look like one without.

    Examples:
        >>> escape_html('<a href="x">\\x03\\x13\\x7f\\x85\\t')
        '&lt;a href=&quot;x&quot;&gt;␃␓␡\\\\x85\\t'
        >>> escape_html("zero\\u200bwidth")
        'zero\\\\u200bwidth'
    """
    return _INVISIBLE.sub(_picture, html.escape(str(value), quote=True))


def printable(text: str) -> str:
    """``text`` safe to print to a terminal: the :data:`INVISIBLE_RANGES` characters shown as
    :func:`escape_html` shows them, and a carriage return not ending a line as ``␍`` (an
    escape sequence in a data row or a model's answer could retitle, recolour or clear the
    terminal; ``"ok\\rEVIL"`` prints as ``EVIL``).

    Examples:
        >>> printable("q5 \\x1b]0;TITLE\\x07\\x1b[31mRED\\tok\\r\\n")
        'q5 ␛]0;TITLE␇␛[31mRED\\tok\\r\\n'
        >>> printable("ok\\rEVIL")
        'ok␍EVIL'
    """
    return _LONE_RETURN.sub("\u240d", _INVISIBLE.sub(_picture, text))


def print_line(text: str) -> None:
    """Print a progress line, :func:`printable`; a reader that went away (``| head -1``
    closed the pipe) leaves the work going on without its output, never stopped by it.

    Examples:
        >>> print_line("step 1/6  loss \\x1b[31m2.5")
        step 1/6  loss ␛[31m2.5
    """
    try:
        print(printable(text), flush=True)
    except BrokenPipeError:
        # What Python's documentation advises: the rest of the output goes nowhere, and the
        # interpreter's own flush at exit does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def plotly_text(value: object) -> str:
    """``value`` as a plotly chart label (a title, a trace's name, a tick label).

    plotly reads a few HTML tags in its labels (``<a href>``, ``<b>``, ``<span style>``), so
    a metric or run name holding markup became a link or styled text on the chart; escaped,
    plotly shows the characters as written.

    Examples:
        >>> plotly_text('<a href="https://x">click</a> & co')
        '&lt;a href="https://x"&gt;click&lt;/a&gt; &amp; co'
    """
    return html.escape(str(value), quote=False)


_LONE_RETURN = re.compile("\r(?!\n)")


def _picture(match: re.Match[str]) -> str:
    if match.group(1):  # an emoji flag spelled in tags: shown as it is
        return match.group()
    code = ord(match.group())
    if code < 0x20:
        return chr(0x2400 + code)
    if code == 0x7F:
        return "\u2421"
    if code <= 0xFF and code != 0xAD:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def invisible_characters(text: str) -> str:
    """The :data:`INVISIBLE_RANGES` characters in ``text``, named and counted (``""``: none).

    Examples:
        >>> invisible_characters("a\\u200bb\\u200bc\\u202e")
        'U+200B ZERO WIDTH SPACE x2, U+202E RIGHT-TO-LEFT OVERRIDE'
        >>> invisible_characters("tab\\tand newline\\n, 👨\\u200d👩 joined")
        ''
        >>> tags = "".join(chr(0xE0000 + ord(c)) for c in "gbsct")
        >>> scotland = "\\U0001f3f4" + tags + "\\U000e007f"
        >>> invisible_characters(scotland), invisible_characters("hi" + chr(0xE0041))
        ('', 'U+E0041 TAG LATIN CAPITAL LETTER A')
    """
    found = Counter(m.group() for m in _INVISIBLE.finditer(text) if not m.group(1))
    return ", ".join(
        f"U+{ord(char):04X} {unicodedata.name(char, 'CONTROL')}" + (f" x{n}" if n > 1 else "")
        for char, n in found.items()
    )


def text_dir(text: object) -> str:
    """`` dir="auto"`` for the element holding ``text`` when it has right-to-left letters.

    The browser then reads the text's direction from its first strong letter, so a Hebrew
    or Arabic row shows right-to-left with its punctuation and numbers in place, while the
    panel around it stays left-to-right. Text without right-to-left characters looks the
    same either way, so it gets ``""`` (and its HTML is unchanged).

    Examples:
        >>> f"<td{text_dir('השעה 14:30.')}>", f"<td{text_dir('14:30.')}>"
        ('<td dir="auto">', '<td>')
    """
    return ' dir="auto"' if _RTL.search(str(text)) else ""


def isolate(text: str) -> str:
    """``text`` in Unicode isolates (FSI ... PDI) when it has right-to-left letters: the plain
    text form of :func:`text_dir`, for text shown where no markup goes (a list's labels).

    Examples:
        >>> isolate("שלום."), isolate("hi.")
        ('\u2068שלום.\u2069', 'hi.')
    """
    return f"\u2068{text}\u2069" if _RTL.search(text) else text


def is_unspaced(char: str) -> bool:
    """True for a character of a script written without spaces (:data:`UNSPACED_RANGES`).

    Examples:
        >>> is_unspaced("语"), is_unspaced("ก"), is_unspaced("a")
        (True, True, False)
    """
    code = ord(char)
    return any(low <= code <= high for low, high in UNSPACED_RANGES)


def continues_grapheme(text: str, i: int) -> bool:
    """True when ``text[i]`` belongs to the character before it (a combining mark, a
    variation selector, a joiner or what follows one): a cut at ``i`` would split it.

    Examples:
        >>> continues_grapheme("e\u0301x", 1), continues_grapheme("e\u0301x", 2)
        (True, False)
    """
    if i <= 0 or i >= len(text):
        return False
    return (
        unicodedata.category(text[i]) in ("Mn", "Mc", "Me")
        or text[i] == "\u200d"
        or text[i - 1] == "\u200d"
    )


def display_width(text: str) -> int:
    """Columns ``text`` takes in a terminal: wide East Asian characters count 2, combining
    marks and invisible format characters 0.

    Examples:
        >>> display_width("abc"), display_width("中文"), display_width("e\u0301")
        (3, 4, 1)
    """
    return sum(_width(char) for char in text)


def _width(char: str) -> int:
    if unicodedata.category(char) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def text_table(rows: Iterable[Sequence[object]], header: Sequence[str] | None = None) -> str:
    """Align rows into columns separated by two spaces, padded by display width.

    Examples:
        >>> text_table([("x", 1)])
        'x  1'
        >>> print(text_table([("中文", 1), ("abcd", 2)]))
        中文  1
        abcd  2
    """
    table = [[printable(str(cell)) for cell in header]] if header else []
    table += [[printable(str(cell)) for cell in row] for row in rows]
    widths = [max(display_width(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [
        "  ".join(
            c + " " * (w - display_width(c)) for c, w in zip(row, widths, strict=True)
        ).rstrip()
        for row in table
    ]
    return "\n".join(lines)


# What an empty answer shows: italic, grey and in the panel's own font, so it reads as the
# panel speaking, never as a model answer that happens to say "(empty answer)". A blank cell
# looked the same as an answer never generated.
EMPTY_ANSWER = (
    '<i class="wb-empty-answer" style="color:#888;font-family:sans-serif;" '
    'title="the model generated no text (or only whitespace)">(empty answer)</i>'
)


def answer_text(text: str) -> str:
    """A model's answer in plain text, an empty or whitespace-only one said as such.

    Examples:
        >>> answer_text(" "), answer_text("4")
        ('(empty answer)', '4')
    """
    return str(text) if str(text).strip() else "(empty answer)"


def answer_html(text: str, shown: str | None = None) -> str:
    """A model's answer as HTML: ``shown`` (escaped HTML of it, such as a word diff) or its
    escaped text; an empty or whitespace-only answer as :data:`EMPTY_ANSWER`.

    Examples:
        >>> answer_html("<b>"), answer_html(" \\n") == EMPTY_ANSWER
        ('&lt;b&gt;', True)
        >>> answer_html("", shown="") == EMPTY_ANSWER  # a diff of nothing is nothing to see
        True
    """
    if not str(text).strip():
        return EMPTY_ANSWER
    return escape_html(text) if shown is None else shown


class MarkedUp(str):
    """HTML already made safe (every piece of untrusted text in it escaped), which
    :func:`html_table` places in a cell as it is.

    Examples:
        >>> html_table([[MarkedUp("<i>none</i>"), "<i>"]]).split("<tr>")[1]
        '<td><i>none</i></td><td>&lt;i&gt;</td></tr></tbody></table>'
    """


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
    parts = [f'<table class="{escape_html(css_class)}">']
    if title:
        parts.append(f"<caption{text_dir(title)}>{escape_html(title)}</caption>")
    if header:
        cells = "".join(f"<th{text_dir(h)}>{escape_html(h)}</th>" for h in header)
        parts.append(f"<thead><tr>{cells}</tr></thead>")
    parts.append("<tbody>")
    for k, row in enumerate(rows):
        tip = f' title="{escape_html(row_titles[k])}"' if row_titles else ""
        cells = "".join(f"<td{text_dir(c)}>{_cell_html(c)}</td>" for c in row)
        parts.append(f"<tr{tip}>{cells}</tr>")
    parts.append("</tbody></table>")
    return "".join(parts)


def _cell_html(value: object) -> str:
    return value if isinstance(value, MarkedUp) else escape_html(value)
