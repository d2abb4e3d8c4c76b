"""Literal control tokens in data text: find them, and keep them from becoming structure.

A fast tokenizer turns the *text* ``<|im_end|>`` into the real control token wherever it
appears, also inside a user's message or an answer. A row whose answer contains
``<|im_end|>\\n<|im_start|>user`` then teaches the model to end its turn and write the
user's next one. :class:`TextGuard` finds such text (one compiled regex per tokenizer) and,
in ``"split"`` mode, tokenizes it as plain text while the template's own markers stay real
control tokens:

1. before rendering, each literal in a message is swapped for a placeholder character from
   Unicode's Supplementary Private Use Area-B (nothing people type), so the rendered text
   tells content from template;
2. after rendering, the placeholders are swapped back and their character spans remembered;
3. the text is tokenized as usual (identical to an unguarded row outside the spans), and
   every special token that overlaps a span is replaced by the ids of its text tokenized
   with ``split_special_tokens=True``.

Rows without such text (nearly all) take none of these steps.

Examples:
    >>> guard = TextGuard.from_strings(["<|im_end|>", "<eos>"], "split")
    >>> guard.describe([("messages[1] (user)", "hi <eos> <eos> and <|im_end|>")])
    "'<eos>' x2, '<|im_end|>' in messages[1] (user)"
    >>> text, spans = guard.unescape("A" + guard.escape("say <eos>") + "B")
    >>> text, spans
    ('Asay <eos>B', [(5, 10)])
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from workbench.errors import SpecError

__all__ = [
    "SPECIAL_TEXT_COLUMN",
    "SPECIAL_TOKENS_IN_TEXT",
    "SpecialTokensInText",
    "TextGuard",
    "special_ids",
    "special_strings",
]

SpecialTokensInText = Literal["split", "keep"]
SPECIAL_TOKENS_IN_TEXT: tuple[str, ...] = ("split", "keep")
SPECIAL_TEXT_COLUMN = "special_text"
"""Per-row description of literal control tokens found (``""`` when none)."""

_FIRST = 0x100000  # Supplementary Private Use Area-B: U+100000..U+10FFFD
_PLACEHOLDERS = re.compile("[\U00100000-\U0010fffd]")
Span = tuple[int, int]


def special_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of the tokenizer's special tokens (bos, eos, pad, chat markers...).

    Examples:
        >>> from transformers import AutoTokenizer
        >>> from workbench.models.tiny import build_tiny_model
        >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-special"))
        >>> sorted(special_ids(tokenizer))
        [0, 1, 2, 3, 4, 5]
        >>> tokenizer.convert_ids_to_tokens([1, 5])
        ['<s>', '<|im_end|>']
    """
    ids = set(tokenizer.all_special_ids)
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    ids.update(i for i, tok in decoder.items() if getattr(tok, "special", False))
    return frozenset(ids)


def special_strings(tokenizer: Any) -> tuple[str, ...]:
    """The texts of the tokenizer's special tokens, longest first.

    Examples:
        >>> from transformers import AutoTokenizer
        >>> from workbench.models.tiny import build_tiny_model
        >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-special"))
        >>> special_strings(tokenizer)
        ('<|im_start|>', '<|im_end|>', '<pad>', '<unk>', '</s>', '<s>')
    """
    texts = set(getattr(tokenizer, "all_special_tokens", ()) or ())
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    texts.update(str(tok) for tok in decoder.values() if getattr(tok, "special", False))
    return tuple(sorted((t for t in texts if t), key=lambda t: (-len(t), t)))


def _trie_pattern(strings: tuple[str, ...]) -> str:
    """One regex matching any of ``strings``, longest first, as a prefix trie.

    A plain alternation of the ~6,000 special tokens of Gemma's tokenizer would try each
    one at every ``<``; the trie shares prefixes, so a position costs one path.
    """
    trie: dict[str, Any] = {}
    for text in strings:
        node = trie
        for char in text:
            node = node.setdefault(char, {})
        node[""] = {}

    def emit(node: dict[str, Any]) -> str:
        branches = [re.escape(char) + emit(child) for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        body = "(?:" + "|".join(branches) + ")" if len(branches) > 1 or "" in node else branches[0]
        return body + ("?" if "" in node else "")

    return emit(trie)


@dataclass(frozen=True)
class TextGuard:
    """Finds literal special tokens in text and, in ``"split"`` mode, keeps them plain.

    Attributes:
        tokenizer: The tokenizer (``None`` for a guard that only finds text).
        mode: ``"split"`` (literal tokens become plain text) or ``"keep"`` (they stay
            real control tokens, as the tokenizer parses them).
        pattern: One compiled regex of every special token's text (``None``: none).
        ids: Ids of the special tokens.

    Examples:
        >>> TextGuard.from_strings(["<eos>"], "keep").protects
        False
    """

    tokenizer: Any
    mode: SpecialTokensInText
    pattern: re.Pattern[str] | None
    ids: frozenset[int] = frozenset()
    _to_char: dict[str, str] = field(default_factory=dict, repr=False)
    _to_text: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in SPECIAL_TOKENS_IN_TEXT:
            msg = f"special_tokens_in_text={self.mode!r} must be 'split' or 'keep'"
            raise SpecError(msg)

    @classmethod
    def of(cls, tokenizer: Any, mode: SpecialTokensInText) -> TextGuard:
        """The guard for ``tokenizer``'s special tokens.

        Examples:
            >>> from transformers import AutoTokenizer
            >>> from workbench.models.tiny import build_tiny_model
            >>> folder = build_tiny_model("/tmp/wb-doc-special")
            >>> guard = TextGuard.of(AutoTokenizer.from_pretrained(folder), "split")
            >>> guard.protects, guard.pattern.pattern
            (True, '<(?:/s>|pad>|s>|unk>|\\\\|im_(?:end\\\\|>|start\\\\|>))')
            >>> guard.describe([("text", "hi <|im_end|> <|im_end|>")])
            "'<|im_end|>' x2 in text"
        """
        guard = cls.from_strings(special_strings(tokenizer), mode)
        return cls(
            tokenizer, mode, guard.pattern, special_ids(tokenizer), guard._to_char, guard._to_text
        )

    @classmethod
    def from_strings(cls, strings: Any, mode: SpecialTokensInText) -> TextGuard:
        """A guard for the given token texts, without a tokenizer (finding and escaping only).

        Examples:
            >>> TextGuard.from_strings([], "split").pattern is None
            True
        """
        texts = tuple(sorted(set(strings), key=lambda t: (-len(t), t)))
        pattern = re.compile(_trie_pattern(texts)) if texts else None
        to_char = {t: chr(_FIRST + k) for k, t in enumerate(texts)}
        return cls(None, mode, pattern, frozenset(), to_char, {c: t for t, c in to_char.items()})

    @property
    def protects(self) -> bool:
        """True when literal tokens are tokenized as plain text (``"split"``).

        Examples:
            >>> TextGuard.from_strings(["<eos>"], "split").protects
            True
        """
        return self.mode == "split" and self.pattern is not None

    def describe(self, fields: list[tuple[str, str]]) -> str:
        """Which tokens appear in which ``(field, text)``; ``""`` when none.

        Examples:
            >>> TextGuard.from_strings(["<eos>"], "split").describe([("text", "no tokens")])
            ''
        """
        if self.pattern is None:
            return ""
        parts = []
        for name, text in fields:
            found = self.pattern.findall(text)
            if found:
                counts = Counter(found).items()
                tokens = ", ".join(f"{t!r}" + (f" x{n}" if n > 1 else "") for t, n in counts)
                parts.append(f"{tokens} in {name}")
        return "; ".join(parts)

    def can_escape(self, texts: list[str]) -> bool:
        """False when a text already holds placeholder characters (then it is left as is).

        Examples:
            >>> TextGuard.from_strings(["<eos>"], "split").can_escape(["\\U00100000<eos>"])
            False
        """
        return not any(_PLACEHOLDERS.search(t) for t in texts)

    def escape(self, text: str) -> str:
        """``text`` with each literal token swapped for its placeholder character.

        Examples:
            >>> TextGuard.from_strings(["<eos>"], "split").escape("a<eos>") == "a\\U00100000"
            True
        """
        assert self.pattern is not None
        return self.pattern.sub(lambda m: self._to_char[m.group()], text)

    def unescape(self, text: str) -> tuple[str, list[Span]]:
        """Placeholders swapped back, with the character spans of the restored tokens.

        Examples:
            >>> TextGuard.from_strings(["<eos>"], "split").unescape("x\\U00100000")
            ('x<eos>', [(1, 6)])
        """
        out, spans, last, shift = [], [], 0, 0
        for match in _PLACEHOLDERS.finditer(text):
            token = self._to_text.get(match.group())
            if token is None:
                continue
            start = match.start() + shift
            out += [text[last : match.start()], token]
            spans.append((start, start + len(token)))
            shift += len(token) - 1
            last = match.end()
        out.append(text[last:])
        return "".join(out), spans

    def spans(self, text: str, offset: int = 0) -> list[Span]:
        """Character spans of the literal tokens in ``text``, shifted by ``offset``.

        Examples:
            >>> TextGuard.from_strings(["<eos>"], "split").spans("a<eos>", 3)
            [(4, 9)]
        """
        assert self.pattern is not None
        return [(m.start() + offset, m.end() + offset) for m in self.pattern.finditer(text)]

    def encode(
        self, texts: list[str], spans: list[list[Span]], starts_for: frozenset[int] = frozenset()
    ) -> list[tuple[list[int], list[int] | None]]:
        """Token ids of ``texts``, with the special tokens inside ``spans`` made plain text.

        Args:
            texts: Rendered texts.
            spans: Per text, the spans of literal tokens that came from the data.
            starts_for: Indices of texts that need token start offsets even without spans.

        Returns:
            Per text ``(ids, starts)``; ``starts`` (character start of each token) is given
            for texts with spans or in ``starts_for``, else ``None``.

        Examples:
            The first ``<|im_end|>`` (characters 20 to 30) came from the data, the second
            from the template:

            >>> from transformers import AutoTokenizer
            >>> from workbench.models.tiny import build_tiny_model
            >>> folder = build_tiny_model("/tmp/wb-doc-special")
            >>> tokenizer = AutoTokenizer.from_pretrained(folder)
            >>> guard = TextGuard.of(tokenizer, "split")
            >>> text = "<|im_start|>user\\nhi <|im_end|><|im_end|>"
            >>> [(ids, starts)] = guard.encode([text], [[(20, 30)]])
            >>> tokenizer.convert_ids_to_tokens(ids)[5:8], tokenizer.convert_ids_to_tokens(ids)[-1]
            (['Ġ', '<', '|'], '<|im_end|>')
            >>> starts[:4]
            [0, 12, 16, 17]
        """
        from workbench.data.templates import encode

        out: list[tuple[list[int], list[int] | None]] = [([], None)] * len(texts)
        need = [k for k in range(len(texts)) if spans[k] or k in starts_for]
        rest = [k for k in range(len(texts)) if not (spans[k] or k in starts_for)]
        if rest:
            for k, ids in zip(
                rest, encode(self.tokenizer, [texts[k] for k in rest])["input_ids"], strict=True
            ):
                out[k] = (ids, None)
        if need:
            enc = encode(self.tokenizer, [texts[k] for k in need], offsets=True)
            for k, ids, offsets in zip(need, enc["input_ids"], enc["offset_mapping"], strict=True):
                out[k] = self._plain(ids, offsets, texts[k], spans[k])
        return out

    def _plain(
        self, ids: list[int], offsets: list[Span], text: str, spans: list[Span]
    ) -> tuple[list[int], list[int]]:
        new_ids: list[int] = []
        starts: list[int] = []
        for tid, (start, end) in zip(ids, offsets, strict=True):
            if tid in self.ids and any(start < b and a < end for a, b in spans):
                piece = self.tokenizer(
                    text[start:end],
                    add_special_tokens=False,
                    split_special_tokens=True,
                    return_offsets_mapping=True,
                )
                new_ids += piece["input_ids"]
                starts += [start + s for s, _ in piece["offset_mapping"]]
            else:
                new_ids.append(tid)
                starts.append(start)
        return new_ids, starts
