"""Answer boundaries of rows with tools, found in their one rendering by the text around them.

The template itself renders a row with tools (it writes the tools and each call, which no
layout can place). The row way renders, besides the whole text, each answer's prompt and
each inner answer's own rendering, only to learn where they end in the whole text: four
renderings for a call, its result and the answer. Rows of one *shape* (the same roles, calls
per turn, tools or not) share the template's text on both sides of each of those boundaries
(``<|im_end|>\\n<|im_start|>assistant\\n`` before an answer, say). :class:`Anchors` learns it
from rows labelled the row way: per boundary, what all of them have in common just before
and just after it (the *anchor*), how often the anchor occurs in each, and which occurrence
the boundary is. An anchor never reaches into a message's content: how far the template's
own text reaches around each boundary (its *glue*) comes from a rendering of the row whose
contents are markers (:func:`mark_contents`, :func:`glue_lengths`). So a content that holds
an anchor's text adds an occurrence, and a text the rows' contents happen to share (answers
that all start with "The") never becomes part of an anchor. Another row of the shape is then
rendered once, and each boundary is that same occurrence of its anchor, provided the anchor
occurs as often as in every learned row (a content holding the anchor's text breaks the
count: that row goes the row way).

The batch way (:mod:`workbench.data.batched`) still checks a sample of each shape row by row,
and labels the whole shape row by row once a sample disagrees.

Examples:
    >>> anchors = Anchors([(7, 0)])  # the template's own text: 7 characters before the answer
    >>> anchors.learn("<u>Hi</u><a>Hello</a>", [(12, None)])
    >>> anchors.learn("<u>2+2?</u><a>4</a>", [(14, None)])
    >>> anchors.marks  # before, after, occurrence, count
    [('</u><a>', '', 0, 1)]
    >>> anchors.place("<u>Why?</u><a>Because</a>")
    [(14, None)]
    >>> anchors.place("<u>Say </u><a></u><a>x</a>") is None  # the anchor twice: ambiguous
    True
"""

from __future__ import annotations

import re
from typing import Any

from workbench.data.layouts import MARKERS, marker

__all__ = ["MAX_LEARNED", "REACH", "Anchors", "Boundaries", "glue_lengths", "mark_contents"]

REACH = 256
"""Characters compared on each side of a boundary when learning its anchor."""

MAX_LEARNED = 8
"""Rows an :class:`Anchors` learns from at most (enough to wash out shared content)."""

Boundaries = list[tuple[int, int | None]]
"""Per trained answer, ``(end of its prompt, end of its own rendering)`` in characters of the
whole text; ``None``: the answer runs to the end of the text."""

_Mark = tuple[str, str, int, int]  # before, after, occurrence, count


class Anchors:
    """The anchors of one shape of rows, learned from rows whose boundaries are known.

    Args:
        glue: Per boundary (in order, each answer's prompt end then its own end), how many
            characters before and after it the template writes itself (:func:`glue_lengths`):
            an anchor reaches no further (nor past :data:`REACH`). ``None``: not known (yet);
            set :attr:`glue` before learning, or no row is learned.

    Attributes:
        marks: Per boundary ``(before, after, occurrence, count)``, ``None`` until two rows
            agree. A row that disagrees with the rows learned (its content holds an
            anchor's text, say) is not learned.
        broken: No two rows agreed after :data:`MAX_LEARNED` tries: rows of this shape
            cannot be placed.

    Examples:
        >>> anchors = Anchors([(4, 0)])  # '\\nA: ' is the template's before each answer
        >>> anchors.learn("Q: a\\nA: b\\n", [(8, None)])
        >>> anchors.place("Q: c\\nA: d\\n") is None  # one row learned: not yet
        True
        >>> anchors.learn("Q: e\\nA: f\\n", [(8, None)])
        >>> anchors.place("Q: c\\nA: d\\n")
        [(8, None)]
    """

    def __init__(self, glue: list[tuple[int, int]] | None) -> None:
        self.glue = glue
        self._learned: list[tuple[str, Boundaries]] = []
        self.marks: list[_Mark] | None = None
        self.broken = False
        self._rejected = 0

    def learn(self, text: str, boundaries: Boundaries) -> None:
        """Learn from one more row of the shape (its whole text and its known boundaries):
        the anchors become what it shares with the rows learned before, unless they would
        then disagree (other counts, no common text), when the row is left out.

        Examples:
            >>> anchors = Anchors([(3, 0)])
            >>> anchors.learn("[x]ab", [(3, None)]); anchors.learn("[x]cd", [(3, None)])
            >>> anchors.marks, anchors.broken
            ([('[x]', '', 0, 1)], False)
        """
        if self.broken or len(self._learned) >= MAX_LEARNED:
            return
        learned = [*self._learned, (text, boundaries)]
        marks = _marks(learned, self.glue) if len(learned) >= 2 and self.glue else None
        if self.glue is None or (len(learned) >= 2 and marks is None):
            self._rejected += 1  # this row disagrees (or no glue is known): learn without it
            self.broken = self.marks is None and self._rejected >= MAX_LEARNED
            return
        self._learned, self.marks = learned, marks

    def place(self, text: str) -> Boundaries | None:
        """The boundaries of another row of the shape, or ``None`` when its text does not hold
        every anchor as often as the learned rows do (or nothing is learned yet).

        Examples:
            >>> anchors = Anchors([(4, 0)])
            >>> anchors.learn("<q>a<r>b", [(7, None)]); anchors.learn("<q>cc<r>d", [(8, None)])
            >>> anchors.place("<q>why<r>so")
            [(9, None)]
        """
        if self.marks is None:
            return None
        found: dict[str, list[int]] = {}
        positions = []
        for before, after, occurrence, count in self.marks:
            anchor = before + after
            if anchor not in found:
                found[anchor] = _occurrences(text, anchor)
            at = found[anchor]
            if len(at) != count:
                return None
            positions.append(at[occurrence] + len(before))
        if positions != sorted(positions):
            return None
        return _boundaries(positions, self._learned[0][1])


def _flat(boundaries: Boundaries) -> list[int]:
    return [p for turn in boundaries for p in turn if p is not None]


def _boundaries(positions: list[int], like: Boundaries) -> Boundaries:
    """``positions`` put back in the shape of ``like`` (the same answers, the same ends)."""
    out: Boundaries = []
    it = iter(positions)
    for _, end in like:
        out.append((next(it), None if end is None else next(it)))
    return out


def mark_contents(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages with each non-empty content replaced by a marker (tool fields kept).

    Examples:
        >>> [m["content"] for m in mark_contents([{"role": "user", "content": "Hi"},
        ...                                       {"role": "assistant", "content": ""}])]
        ['\U000f00000\U000f0001', '']
    """
    return [{**m, "content": marker(i)} if m["content"] else m for i, m in enumerate(messages)]


def glue_lengths(marked: str, boundaries: Boundaries) -> list[tuple[int, int]]:
    """Per boundary of a rendering of :func:`mark_contents`' messages, the characters the
    template wrote between it and the nearest marker (or the text's edge) on each side.

    Examples:
        >>> text = "<u>" + marker(0) + "</u><a>" + marker(1) + "</a>"
        >>> glue_lengths(text, [(text.index(marker(1)), None)])
        [(7, 0)]
    """
    spans = [(m.start(), m.end()) for m in re.finditer(_MARKER, marked)]
    out = []
    for b in _flat(boundaries):
        left = max((end for _, end in spans if end <= b), default=0)
        right = min((start for start, _ in spans if start >= b), default=len(marked))
        out.append((b - left, right - b))
    return out


_MARKER = f"{MARKERS}[0-9]+{MARKERS}"


def _marks(
    learned: list[tuple[str, Boundaries]], glue: list[tuple[int, int]]
) -> list[_Mark] | None:
    """Each boundary's anchor shared by every learned row, or ``None`` when they disagree."""
    shapes = {tuple(end is None for _, end in b) for _, b in learned}
    if len(shapes) != 1:
        return None
    flats = [(text, _flat(b)) for text, b in learned]
    if len(glue) != len(flats[0][1]):
        return None
    marks = []
    for j, (glue_before, glue_after) in enumerate(glue):
        back, ahead = min(glue_before, REACH), min(glue_after, REACH)
        befores = [text[max(0, flat[j] - back) : flat[j]][::-1] for text, flat in flats]
        afters = [text[flat[j] : flat[j] + ahead] for text, flat in flats]
        before = _common_prefix(befores)[::-1]
        after = _common_prefix(afters)
        if not before and not after:
            return None
        seen = set()
        for text, flat in flats:
            at = _occurrences(text, before + after)
            seen.add((at.index(flat[j] - len(before)), len(at)))
        if len(seen) != 1:
            return None
        ((occurrence, count),) = seen
        marks.append((before, after, occurrence, count))
    return marks


def _common_prefix(texts: list[str]) -> str:
    first, last = min(texts), max(texts)  # the others sort between: they share at least this
    n = 0
    while n < len(first) and first[n] == last[n]:
        n += 1
    return first[:n]


def _occurrences(text: str, anchor: str) -> list[int]:
    """Start of every occurrence of ``anchor`` in ``text``, overlapping ones included."""
    out = []
    at = text.find(anchor)
    while at >= 0:
        out.append(at)
        at = text.find(anchor, at + 1)
    return out
