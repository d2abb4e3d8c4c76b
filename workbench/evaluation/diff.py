"""Word-level differences between two answers, as segments a view can highlight.

Examples:
    >>> word_diff("the cat sat", "the dog sat")
    [('equal', 'the '), ('delete', 'cat '), ('insert', 'dog '), ('equal', 'sat')]
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from typing import Literal

from workbench._display import UNSPACED_CHARS
from workbench.evaluation.metrics._scorers import nfc

__all__ = ["Segment", "word_diff"]

Segment = tuple[Literal["equal", "delete", "insert"], str]
# A character of a script written without spaces (Chinese, Japanese, Thai...) is a word.
_WORDS = re.compile(rf"(?:{UNSPACED_CHARS}|[^\s{UNSPACED_CHARS[1:-1]}]+)\s*|\s+")


def word_diff(old: str, new: str) -> list[Segment]:
    """Split ``old`` -> ``new`` into equal, deleted and inserted runs of words.

    Whitespace stays attached to the word before it, so joining the ``equal`` and ``delete``
    runs gives ``old`` back, and joining ``equal`` and ``insert`` gives ``new`` (up to
    Unicode normalisation: words equal in NFC are equal, shown as ``old`` writes them). A
    character of a script written without spaces is a word of its own.

    Examples:
        >>> "".join(t for k, t in word_diff("a b", "a c") if k != "delete")
        'a c'
        >>> word_diff("我喜欢猫", "我喜欢狗")
        [('equal', '我喜欢'), ('delete', '猫'), ('insert', '狗')]
    """
    a, b = _words(old), _words(new)
    segments: list[Segment] = []
    matcher = difflib.SequenceMatcher(a=nfc(a), b=nfc(b), autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            segments.append(("equal", "".join(a[i1:i2])))
            continue
        if i2 > i1:
            segments.append(("delete", "".join(a[i1:i2])))
        if j2 > j1:
            segments.append(("insert", "".join(b[j1:j2])))
    return segments


def _words(text: str) -> list[str]:
    """The words of ``text``, a combining mark kept with the character before it (a Thai
    vowel sign, a kana voicing mark stored apart), so no mark is shown alone."""
    words: list[str] = []
    for word in _WORDS.findall(text):
        if words and unicodedata.category(word[0])[0] == "M" and not words[-1][-1].isspace():
            words[-1] += word
        else:
            words.append(word)
    return words
