"""Word-level differences between two answers, as segments a view can highlight.

Examples:
    >>> word_diff("the cat sat", "the dog sat")
    [('equal', 'the '), ('delete', 'cat '), ('insert', 'dog '), ('equal', 'sat')]
"""

from __future__ import annotations

import difflib
import re
from typing import Literal

__all__ = ["Segment", "word_diff"]

Segment = tuple[Literal["equal", "delete", "insert"], str]
_WORDS = re.compile(r"\S+\s*|\s+")


def word_diff(old: str, new: str) -> list[Segment]:
    """Split ``old`` -> ``new`` into equal, deleted and inserted runs of words.

    Whitespace stays attached to the word before it, so joining the ``equal`` and ``delete``
    runs gives ``old`` back, and joining ``equal`` and ``insert`` gives ``new``.

    Examples:
        >>> "".join(t for k, t in word_diff("a b", "a c") if k != "delete")
        'a c'
    """
    a, b = _WORDS.findall(old), _WORDS.findall(new)
    segments: list[Segment] = []
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            segments.append(("equal", "".join(a[i1:i2])))
            continue
        if i2 > i1:
            segments.append(("delete", "".join(a[i1:i2])))
        if j2 > j1:
            segments.append(("insert", "".join(b[j1:j2])))
    return segments
