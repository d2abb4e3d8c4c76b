"""The facts about prepared data that the data rules read, measured once.

:func:`data_facts` reads a :class:`~workbench.data.PreparedData` (its stored per-row length
statistics, its labels and its report's ``leak`` problems) into a plain :class:`DataFacts`,
so every rule in :mod:`workbench.diagnostics.rules` is a pure function of plain values and
can be tested with facts written by hand.

Examples:
    >>> from transformers import AutoTokenizer
    >>> from workbench.models.tiny import build_tiny_model
    >>> from workbench.data import PreparedData
    >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-facts"))
    >>> rows = [{"question": f"q{i}", "answer": f"answer {i}"} for i in range(8)]
    >>> facts = data_facts(PreparedData.load(rows, tokenizer, validation=rows[:1], max_length=15))
    >>> facts.train_rows, facts.stop_tokens, facts.stop_trained_rows, facts.cutoff
    (8, ('</s>', '<|im_end|>'), 0, 15)
    >>> len(facts.cut_answers), facts.leaks[0].row, facts.leaks[0].text
    (9, 0, 'q0\\nanswer 0')
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from workbench.data import PreparedData

__all__ = ["CutAnswer", "DataFacts", "Leak", "data_facts"]

_SENTINEL = "WBDIAGNOSEANSWER"
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class CutAnswer(NamedTuple):
    """One example whose answer loses trained tokens at the cutoff.

    Attributes:
        split: ``"train"`` or ``"validation"``.
        row: Index in the split.
        tokens: The example's full length in tokens (before the cut).
        answer_tokens: Its trained (answer) tokens before the cut.
        lost: Trained tokens past the cutoff.

    Examples:
        >>> CutAnswer("train", 3, 70, 44, 40).whole
        False
    """

    split: str
    row: int
    tokens: int
    answer_tokens: int
    lost: int

    @property
    def whole(self) -> bool:
        """True when every trained token is cut (the answer starts past the cutoff).

        Examples:
            >>> CutAnswer("train", 0, 30, 5, 5).whole
            True
        """
        return self.lost >= self.answer_tokens


class Leak(NamedTuple):
    """A validation row that repeats (or nearly repeats) a training row.

    Attributes:
        row: Index in the validation split.
        message: The data report's words, e.g. ``"same text as train row 4 (...)"``.
        text: The validation row's text (untrusted: escape it for HTML).

    Examples:
        >>> Leak(0, "same text as train row 4", "2+2?\\n4").row
        0
    """

    row: int
    message: str
    text: str


@dataclass(frozen=True)
class DataFacts:
    """What the data rules need to know, as plain values.

    Attributes:
        train_rows: Training examples.
        validation_rows: Validation examples.
        stop_tokens: The end-of-turn tokens a trained model should write to end an answer:
            the template's ``stop``, the tokenizer's eos and any special token the template
            writes right after an answer (single tokens only).
        stop_trained_rows: Training rows whose labels train at least one of ``stop_tokens``
            (``None``: not measured, e.g. a multi-token stop text).
        after_answer: The text the template writes right after an answer (``None``: unknown).
        stop_text: The template's ``stop`` when it is no token of this tokenizer (a built-in
            template on another family's tokenizer): only a text search stops there.
        cutoff: Tokens kept per example (``max_length``, capped by the model context), or
            ``None`` when nothing is cut.
        cutoff_source: ``"max_length"`` or ``"context"``: what sets ``cutoff``.
        context: The model's context length (``None``: unknown).
        cut_answers: Examples whose answer loses trained tokens at ``cutoff``.
        answered: ``{"train": n, "validation": n}``: examples with an answer to train on.
        leaks: Validation rows that repeat training rows (the report's ``leak`` problems).

    Examples:
        >>> DataFacts(train_rows=4).cut_answers
        ()
    """

    train_rows: int = 0
    validation_rows: int = 0
    stop_tokens: tuple[str, ...] = ()
    stop_trained_rows: int | None = None
    after_answer: str | None = None
    stop_text: str | None = None
    cutoff: int | None = None
    cutoff_source: str = "max_length"
    context: int | None = None
    cut_answers: tuple[CutAnswer, ...] = ()
    answered: dict[str, int] | None = None
    leaks: tuple[Leak, ...] = ()


def data_facts(data: PreparedData) -> DataFacts:
    """Measure the :class:`DataFacts` of prepared data (vectorised; no tokenizing again).

    Measured once per ``PreparedData`` object (like its report), then cached.

    Examples:
        A template that writes nothing after the answer never trains an end-of-turn token:

        >>> from transformers import AutoTokenizer
        >>> from workbench.models.tiny import build_tiny_model
        >>> from workbench.data import PreparedData
        >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-facts"))
        >>> plain = ("{% for m in messages %}{{ m['role'] + ':\\n' + m['content'] + '\\n\\n' }}"
        ...          "{% endfor %}{% if add_generation_prompt %}{{ 'assistant:\\n' }}{% endif %}")
        >>> rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(4)]
        >>> facts = data_facts(PreparedData.load(rows, tokenizer, template=plain, validation=None))
        >>> facts.stop_tokens, facts.stop_trained_rows, facts.after_answer
        (('</s>',), 0, '\\n\\n')
    """
    try:
        return _CACHE[data]
    except (KeyError, TypeError):
        pass
    facts = _measure(data)
    with contextlib.suppress(TypeError):  # an object that cannot be weakly referenced
        _CACHE[data] = facts
    return facts


def _measure(data: Any) -> DataFacts:
    from workbench.data.context import fit_to_context

    cutoff, _ = fit_to_context(data.spec.max_length, data.spec.context)
    context = data.spec.context
    # At the context, the context is what cuts, whether max_length was capped to it or set
    # to it: raising max_length cannot help there.
    source = "context" if context is not None and cutoff == context else "max_length"
    after = None if data.is_text else _after_answer(data)
    stops = _stop_ids(data, after)
    n_val = len(data.validation) if data.validation is not None else 0
    cut, answered = _cut_answers(data, cutoff)
    return DataFacts(
        train_rows=len(data.train),
        validation_rows=n_val,
        stop_tokens=tuple(stops.values()),
        stop_trained_rows=_rows_training(data.train, list(stops)) if stops else None,
        after_answer=after,
        stop_text=data.text_only_stop,
        cutoff=cutoff,
        cutoff_source=source,
        context=context,
        cut_answers=cut,
        answered=answered,
        leaks=_leaks(data),
    )


def _after_answer(data: Any) -> str | None:
    """What the template writes right after an assistant answer (``None`` if it fails)."""
    from workbench.data.templates import render_many

    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _SENTINEL}]
    try:
        text = render_many(data.template, data.tokenizer, [chat], False)[0]
    except Exception:  # a template that needs other roles: the tokens are still checked
        return None
    return text.split(_SENTINEL, 1)[1] if _SENTINEL in text else None


def _single_id(tokenizer: Any, text: str) -> int | None:
    from workbench.data.templates import encode

    ids = encode(tokenizer, [text])["input_ids"][0]
    return ids[0] if len(ids) == 1 else None


def _stop_ids(data: Any, after: str | None) -> dict[int, str]:
    """``{id: token}`` of the end-of-turn tokens (see :attr:`DataFacts.stop_tokens`)."""
    from workbench.data.special_text import special_ids
    from workbench.data.templates import encode

    tokenizer = data.tokenizer
    stops: dict[int, str] = {}
    for text in (data.template.stop, tokenizer.eos_token):
        token_id = _single_id(tokenizer, text) if text else None
        if token_id is not None:
            stops.setdefault(token_id, text)
    if after:
        specials = special_ids(tokenizer)
        for token_id in encode(tokenizer, [after])["input_ids"][0]:
            if token_id in specials:
                stops.setdefault(token_id, tokenizer.convert_ids_to_tokens(token_id))
    return stops


def _rows_training(dataset: Any, ids: list[int]) -> int:
    """Rows of ``dataset`` whose labels hold one of ``ids`` (a trained position)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    labels = dataset.select_columns(["labels"]).with_format("arrow")[:].column("labels")
    labels = labels.combine_chunks()
    flat = pc.list_flatten(labels)
    if len(flat) == 0:
        return 0
    hit = pc.is_in(flat, value_set=pa.array(ids, type=flat.type)).to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(labels).to_numpy(zero_copy_only=False)
    return len(np.unique(parents[hit]))


def _cut_answers(data: Any, cutoff: int | None) -> tuple[tuple[CutAnswer, ...], dict[str, int]]:
    import numpy as np

    cut: list[CutAnswer] = []
    answered: dict[str, int] = {}
    for split in ("train", "validation"):
        if split == "validation" and data.validation is None:
            continue
        s = data.stats(split)
        has_answer = s["n_answer"] > 0
        answered[split] = int(has_answer.sum())
        if cutoff is None or data.is_text:
            continue
        for i in np.flatnonzero(has_answer & (s["answer_end"] > cutoff)):
            n_answer = int(s["n_answer"][i])
            whole = s["answer_start"][i] >= cutoff
            lost = n_answer if whole else min(n_answer, int(s["answer_end"][i]) - cutoff)
            cut.append(CutAnswer(split, int(i), int(s["n_tokens"][i]), n_answer, lost))
    return tuple(cut), answered


def _leaks(data: Any) -> tuple[Leak, ...]:
    problems = [p for p in data.report().problems if p.kind == "leak" and p.row is not None]
    if not problems:
        return ()
    texts = data.texts("validation")
    return tuple(Leak(p.row, p.message, str(texts[p.row].as_py() or "")) for p in problems)
