"""One example as the model sees it: tokens, which are trained, and the text around them.

Examples:
    >>> t = TokenView("Paris", 412, trained=True, special=False)
    >>> ex = Example(0, "train", (t,), prompt="Q: capital? A:", answer="Paris",
    ...              text="Q: capital? A:Paris", row={"q": "capital?"}, source_row=1, cut=0)
    >>> str(ex)
    'train example 0 (source row 1): 1 tokens, 1 trained\\n[Paris]'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workbench._display import printable

__all__ = ["Example", "TokenView", "token_texts"]

_REPLACEMENT = "\ufffd"
_LONGEST_CHARACTER = 4  # byte tokens: UTF-8 writes a character in at most 4 bytes


def token_texts(tokenizer: Any, ids: list[int]) -> list[str]:
    """Each token's text, for showing tokens one by one.

    A character that byte-level tokenizers split over several tokens (an emoji, Arabic,
    most of Chinese) decodes to "\ufffd" token by token; those tokens are decoded together and
    the character is shown on the first of them, the others showing nothing, so the row
    reads as written and every token keeps its place.

    Examples:
        >>> from transformers import AutoTokenizer
        >>> from workbench.models.tiny import build_tiny_model
        >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-example"))
        >>> ids = tokenizer("ok 🙂", add_special_tokens=False)["input_ids"]
        >>> [tokenizer.decode([i]) for i in ids][-4:]
        ['�', '�', '�', '�']
        >>> token_texts(tokenizer, ids)[-4:]
        ['🙂', '', '', '']
    """
    pieces = tokenizer.batch_decode([[i] for i in ids])
    i = 0
    while i < len(pieces):
        if _REPLACEMENT in pieces[i]:
            for end in range(i + 2, min(i + _LONGEST_CHARACTER, len(ids)) + 1):
                joined = tokenizer.decode(ids[i:end])
                if _REPLACEMENT not in joined:
                    pieces[i:end] = [joined] + [""] * (end - i - 1)
                    i = end - 1
                    break
        i += 1
    return pieces


@dataclass(frozen=True)
class TokenView:
    """One token of an example.

    Attributes:
        text: The token decoded on its own (special tokens as written, e.g. ``<|im_end|>``);
            a character split over several tokens is the first one's text, the others are
            empty (:func:`token_texts`).
        id: Token id.
        trained: True when it carries a label (the loss is computed on it).
        special: True for the tokenizer's special tokens.

    Examples:
        >>> TokenView("<s>", 1, trained=False, special=True).special
        True
    """

    text: str
    id: int
    trained: bool
    special: bool


@dataclass(frozen=True)
class Example:
    """An example after templating, tokenization, masking and truncation.

    Attributes:
        index: Index in its split.
        split: ``"train"`` or ``"validation"``.
        tokens: The tokens the model gets (after the cutoff).
        prompt: The inference prompt for the last answer (generation prompt included);
            empty for raw text.
        answer: The expected last answer (the whole text for raw text).
        text: The full training text before tokenization.
        row: The source row's own columns (as stored: strings).
        source_row: 1-based line/row number in the source.
        cut: Tokens cut by ``max_length`` (0 when none).

    Examples:
        >>> from transformers import AutoTokenizer
        >>> from workbench.models.tiny import build_tiny_model
        >>> from workbench.data import PreparedData
        >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-example"))
        >>> rows = [{"question": "Capital of France?", "answer": "Paris"}]
        >>> ex = PreparedData.load(rows, tokenizer, validation=None).example(0)
        >>> [t.text for t in ex.tokens if t.trained]
        ['Par', 'is', '<|im_end|>', '\\n']
        >>> ex.answer, ex.source_row, ex.cut
        ('Paris', 1, 0)
    """

    index: int
    split: str
    tokens: tuple[TokenView, ...]
    prompt: str
    answer: str
    text: str
    row: dict[str, Any]
    source_row: int
    cut: int

    @property
    def trained_text(self) -> str:
        """The trained tokens joined (what the loss is computed on).

        Examples:
            >>> answer = TokenView("Paris", 412, trained=True, special=False)
            >>> end = TokenView("<|im_end|>", 5, trained=True, special=True)
            >>> prompt = TokenView("A:", 30, trained=False, special=False)
            >>> ex = Example(0, "train", (prompt, answer, end), prompt="A:", answer="Paris",
            ...              text="A:Paris<|im_end|>", row={}, source_row=1, cut=0)
            >>> ex.trained_text
            'Paris<|im_end|>'
        """
        return "".join(t.text for t in self.tokens if t.trained)

    def __str__(self) -> str:
        trained = sum(t.trained for t in self.tokens)
        head = f"{self.split} example {self.index} (source row {self.source_row}): "
        head += f"{len(self.tokens)} tokens, {trained} trained" + (
            f", {self.cut} cut" if self.cut else ""
        )
        body = "".join(f"[{t.text}]" if t.trained else t.text for t in self.tokens)
        return printable(f"{head}\n{body}")
