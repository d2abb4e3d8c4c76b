"""The data report: counts, token lengths, trained-token share and problems.

:func:`build_report` reads only the per-row statistics stored at tokenization (no second
tokenization) and runs the problem finders; :class:`DataReport` shows itself as text
(``print(report)``, for front ends without widgets) and as escaped HTML.

Examples:
    >>> from transformers import AutoTokenizer
    >>> from workbench.models.tiny import build_tiny_model
    >>> from workbench.data import PreparedData
    >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-report"))
    >>> rows = [{"question": f"{i} plus {i}?", "answer": str(2 * i)} for i in range(100)]
    >>> report = PreparedData.load(rows + rows[:1], tokenizer, validation=None).report()
    >>> print(report)
    Data report for list: format 'qa', template 'tokenizer'
    rows: 101 read, 0 skipped; train 101, validation 0
    max_length: none (longest example 23 tokens)
    trained tokens: 19.7% of all tokens
    tokens      min   median     mean      p95    max
    prompt       16     18.0     17.7     18.0     18
    answer        3      4.0      4.3      5.0      5
    total        19     22.0     22.0     23.0     23
    problems (1): 1 duplicate
      [duplicate] train row 100: same text as train row 0 (after normalising whitespace and case)
    >>> report.count("duplicate")
    1
"""

from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from workbench._display import printable
from workbench.data.loading import role_sequences
from workbench.data.problems import SMALL_DATASET_ROWS, Problem
from workbench.data.templates import SAMPLE_CONVERSATION, check_template
from workbench.data.tokenize import UNTRAINED_TURNS
from workbench.data.tool_calls import TOOL_CALLING, with_tool_calling

__all__ = ["MAX_LISTED", "DataReport", "LengthStats", "build_report", "length_problems"]

MAX_LISTED = 25
"""How many problems ``str(report)`` lists before summarising the rest."""
_SANE_CONTEXT = 1_000_000  # tokenizers without a known context report ~1e30
_PARTS = {"prompt": "n_prompt", "answer": "n_answer", "total": "n_tokens"}
LimitSource = Literal["max_length", "context", "tokenizer"]
_INVISIBLE_EFFECT = (
    "most editors show nothing there, but they change how the row tokenizes and the model "
    "learns to write them; remove them if they are an accident (scraped or pasted text)"
)
_SPECIAL_TEXT_EFFECT = {
    "split": (
        "tokenized as plain text (special_tokens_in_text='split'), so the data cannot end "
        "a turn or open one; remove it if it is an accident"
    ),
    "keep": (
        "it becomes the real control token (special_tokens_in_text='keep'): the model reads "
        "a turn boundary there, and learns to write one where it is in an answer; load with "
        "special_tokens_in_text='split' to train it as plain text"
    ),
}


@dataclass(frozen=True)
class LengthStats:
    """Token-length statistics of one part (prompt, answer or total) over all examples.

    Examples:
        >>> LengthStats.of(np.array([1, 2, 3, 10]))
        LengthStats(min=1, median=2.5, mean=4.0, p95=8.9, max=10)
    """

    min: int
    median: float
    mean: float
    p95: float
    max: int

    @classmethod
    def of(cls, values: np.ndarray) -> LengthStats:
        """Statistics of ``values`` (all zeros when empty).

        Examples:
            >>> LengthStats.of(np.array([], dtype=int)).max
            0
        """
        if len(values) == 0:
            return cls(0, 0.0, 0.0, 0.0, 0)
        p50, p95 = (round(float(v), 1) for v in np.percentile(values, [50, 95]))
        mean = round(float(values.mean()), 1)
        return cls(int(values.min()), p50, mean, p95, int(values.max()))


@dataclass(frozen=True)
class DataReport:
    """What the prepared data looks like, and what is wrong with it.

    Attributes:
        source: The source's name, e.g. ``"data.jsonl"``.
        format: Detected (or chosen) format.
        template: Template name (``"tokenizer"`` when the tokenizer's own).
        rows: Rows read from the source(s), skipped ones included.
        skipped: Rows skipped as ``malformed`` (``on_error="skip"``).
        train: Training examples.
        validation: Validation examples.
        max_length: The cutoff applied (the model's context unless a shorter one was
            chosen), or ``None``.
        lengths: ``{"prompt"|"answer"|"total": LengthStats}`` over all examples, counted in
            tokens of the real tokenizer with the template applied, before any cutoff.
        trained_share: Share of tokens (after the cutoff) that carry a training label.
        problems: Every problem found.
        histogram: ``(counts, edges)`` of total lengths, for plotting.
        context: The model's context length, when the data was prepared for a model.
        tool_rows: Examples with tools offered or tool calls (both splits).

    Examples:
        >>> from transformers import AutoTokenizer
        >>> from workbench.models.tiny import build_tiny_model
        >>> from workbench.data import PreparedData
        >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-report"))
        >>> rows = [{"question": f"{i} plus {i}?", "answer": str(2 * i)} for i in range(100)]
        >>> report = PreparedData.load(rows, tokenizer, context=21).report()
        >>> report.rows, report.train, report.validation, report.max_length, report.context
        (100, 90, 10, 21, 21)
        >>> report.lengths["total"].max, report.by_kind
        (23, {'too_long': 77, 'small_dataset': 1})
    """

    source: str
    format: str
    template: str
    rows: int
    skipped: int
    train: int
    validation: int
    max_length: int | None
    lengths: dict[str, LengthStats]
    trained_share: float
    problems: tuple[Problem, ...]
    histogram: tuple[tuple[int, ...], tuple[float, ...]] = field(repr=False, default=((), ()))
    context: int | None = None
    tool_rows: int = 0

    def count(self, kind: str) -> int:
        """Number of problems of ``kind``.

        Examples:
            >>> from workbench.data.problems import Problem
            >>> report = DataReport("d", "qa", "chatml", 3, 0, 3, 0, None, {}, 1.0, problems=(
            ...     Problem(1, "duplicate", "same text as train row 0", "train"),
            ...     Problem(2, "duplicate", "same text as train row 0", "train"),
            ... ))
            >>> report.count("duplicate"), report.count("too_long")
            (2, 0)
        """
        return sum(1 for p in self.problems if p.kind == kind)

    @property
    def by_kind(self) -> dict[str, int]:
        """Problem counts by kind, most frequent first.

        Examples:
            >>> from workbench.data.problems import Problem
            >>> report = DataReport("d", "qa", "chatml", 3, 0, 3, 0, 8, {}, 1.0, problems=(
            ...     Problem(0, "too_long", "9 tokens", "train"),
            ...     Problem(1, "duplicate", "same text as train row 0", "train"),
            ...     Problem(2, "duplicate", "same text as train row 0", "train"),
            ... ))
            >>> report.by_kind
            {'duplicate': 2, 'too_long': 1}
        """
        return dict(Counter(p.kind for p in self.problems).most_common())

    def lines(self) -> list[str]:
        """The report as lines of plain text (what ``str`` joins).

        Examples:
            >>> lengths = {part: LengthStats.of(np.array([4, 6])) for part in ("prompt", "total")}
            >>> report = DataReport("data.jsonl", "qa", "chatml", 2, 0, 2, 0, None, lengths, 0.5,
            ...                     problems=())
            >>> print(*report.lines()[:2], sep="\\n")
            Data report for data.jsonl: format 'qa', template 'chatml'
            rows: 2 read, 0 skipped; train 2, validation 0
        """
        out = [
            f"Data report for {self.source}: format {self.format!r}, template {self.template!r}",
            f"rows: {self.rows} read, {self.skipped} skipped; "
            f"train {self.train}, validation {self.validation}",
            f"max_length: {self.max_length if self.max_length else 'none'} "
            f"(longest example {self.lengths['total'].max} tokens"
            + (f"; model context {self.context})" if self.context else ")"),
            f"trained tokens: {self.trained_share:.1%} of all tokens",
            f"{'tokens':<8}{'min':>7}{'median':>9}{'mean':>9}{'p95':>9}{'max':>7}",
        ]
        if self.tool_rows:
            calls = f"tool calling: {self.tool_rows} examples with tools or calls"
            out.insert(2, calls + " (calls trained, tool results context)")
        for part, s in self.lengths.items():
            out.append(f"{part:<8}{s.min:>7}{s.median:>9.1f}{s.mean:>9.1f}{s.p95:>9.1f}{s.max:>7}")
        summary = ", ".join(f"{n} {kind}" for kind, n in self.by_kind.items()) or "none"
        out.append(f"problems ({len(self.problems)}): {summary}")
        out += [f"  {p}" for p in self.problems[:MAX_LISTED]]
        if len(self.problems) > MAX_LISTED:
            out.append(f"  ... and {len(self.problems) - MAX_LISTED} more (see report.problems)")
        return out

    def __str__(self) -> str:
        return printable("\n".join(self.lines()))

    def _repr_html_(self) -> str:
        return "<pre>" + html.escape(str(self)) + "</pre>"


def length_problems(
    stats: dict[str, np.ndarray],
    split: str,
    limit: int | None,
    text: bool,
    limit_from: LimitSource = "max_length",
) -> list[Problem]:
    """Examples that lose tokens (or every trained token) at the cutoff ``limit``.

    ``limit_from`` says what ``limit`` is: the user's ``"max_length"``, the model's
    ``"context"`` (the data is cut there because the model has no positions past it), or
    the ``"tokenizer"``'s ``model_max_length`` (only a hint: nothing is cut). Against a
    ``max_length`` each row gets at most one of ``no_trained_tokens`` > ``truncated_answer``
    > ``too_long``; against the context every longer row is ``too_long``, and the message
    says where the cut falls (prompt, answer or text) and what it costs. Raw text reports
    ``too_long``.

    Examples:
        >>> s = {k: np.array(v) for k, v in dict(n_tokens=[10, 50], answer_start=[5, 45],
        ...      answer_end=[10, 50], n_answer=[5, 5]).items()}
        >>> [p.kind for p in length_problems(s, "train", 40, False)]
        ['no_trained_tokens']
        >>> print(length_problems(s, "train", 40, False, "context")[0].message)
        50 tokens, longer than the model's context of 40 tokens: cut to its first 40 tokens; \
the cut falls in the prompt, so every trained answer token is lost
    """
    problems = [
        Problem(
            int(i),
            "no_trained_tokens",
            "no assistant answer to train on (none, or all of weight 0)",
            split,
        )
        for i in np.flatnonzero(stats["n_answer"] == 0)
    ]
    if limit is None:
        return problems
    if limit_from == "context":
        return problems + _context_problems(stats, split, limit, text)
    what = (
        f"max_length={limit}"
        if limit_from == "max_length"
        else f"the tokenizer's model_max_length of {limit} tokens (set max_length)"
    )
    n, start, end = stats["n_tokens"], stats["answer_start"], stats["answer_end"]
    answered = (stats["n_answer"] > 0) & (not text)  # raw text: every cut is `too_long`
    lost = answered & (start >= limit)
    for i in np.flatnonzero(lost):
        msg = f"the answer starts at token {start[i]}, past {what}: every trained token is cut"
        problems.append(Problem(int(i), "no_trained_tokens", msg, split))
    cut = answered & (start < limit) & (end > limit)
    for i in np.flatnonzero(cut):
        msg = (
            f"{n[i]} tokens, cut at {what}: {end[i] - limit} trained answer tokens lost "
            "(the start is kept)"
        )
        problems.append(Problem(int(i), "truncated_answer", msg, split))
    for i in np.flatnonzero((n > limit) & ~lost & ~cut):
        msg = (
            f"{n[i]} tokens, longer than {what}: the last {n[i] - limit} tokens are cut "
            "(the start is kept)"
        )
        problems.append(Problem(int(i), "too_long", msg, split))
    return problems


def _context_problems(
    stats: dict[str, np.ndarray], split: str, context: int, text: bool
) -> list[Problem]:
    """``too_long`` for every row past the model's context, naming where the cut falls."""
    n, start, end = stats["n_tokens"], stats["answer_start"], stats["answer_end"]
    problems = []
    for i in np.flatnonzero(n > context):
        if text:
            where = f"the cut falls in the text: its last {n[i] - context} tokens are lost"
        elif stats["n_answer"][i] == 0:
            where = "the row has no answer to train on"
        elif start[i] >= context:
            where = "the cut falls in the prompt, so every trained answer token is lost"
        elif end[i] > context:
            where = f"the cut falls in the answer: {end[i] - context} trained answer tokens lost"
        else:
            where = "the cut falls after the answer: no trained token is lost"
        msg = (
            f"{n[i]} tokens, longer than the model's context of {context} tokens: "
            f"cut to its first {context} tokens; {where}"
        )
        problems.append(Problem(int(i), "too_long", msg, split))
    return problems


def _limit(data: Any) -> tuple[int | None, LimitSource]:
    """The cutoff the length problems are measured against, and where it comes from."""
    spec = data.spec
    if spec.context is not None and (spec.max_length is None or spec.max_length >= spec.context):
        return spec.context, "context"
    if spec.max_length is not None:
        return spec.max_length, "max_length"
    model_max = getattr(data.tokenizer, "model_max_length", None)
    if model_max and model_max < _SANE_CONTEXT:
        return int(model_max), "tokenizer"
    return None, "max_length"


def _split_problems(data: Any, split: str) -> list[Problem]:
    stats = data.stats(split)
    limit, limit_from = _limit(data)
    problems = length_problems(stats, split, limit, data.is_text, limit_from)
    for i in np.flatnonzero(~stats["template_ok"]):
        msg = "training and inference renderings of this conversation disagree at token level"
        problems.append(Problem(int(i), "template_mismatch", msg, split))
    for i, fields in data.empty_fields(split):
        problems.append(Problem(i, "empty_field", f"empty: {fields}", split))
    if not data.is_text:
        dataset = data.split(split)
        # read in Arrow: iterating the datasets column took 3.7 s for 30,000 rows
        table = dataset.select_columns([UNTRAINED_TURNS]).with_format("arrow")[:]
        untrained = table.column(UNTRAINED_TURNS).to_pylist()
        problems += unanswered_turns(role_sequences(dataset), stats, split, untrained)
        problems += tool_mismatches(data.split(split), split)
    effect = _SPECIAL_TEXT_EFFECT[data.spec.special_tokens_in_text]
    for i, what in data.special_text(split):
        msg = f"control token written as text: {what}; {effect}"
        problems.append(Problem(i, "special_token_text", msg, split))
    for i, what in data.invisible_text(split):
        msg = f"invisible characters: {what}; {_INVISIBLE_EFFECT}"
        problems.append(Problem(i, "invisible_text", msg, split))
    return problems


def unanswered_turns(
    roles: list[tuple[str, ...]],
    stats: dict[str, np.ndarray],
    split: str,
    untrained: list[list[int] | None] | None = None,
) -> list[Problem]:
    """Conversations that go on past their last answer (a user turn, a tool result).

    Those turns train nothing: no trained token comes after them, so they only cost tokens.
    Often the answer they asked for was lost (a scrape or an export cut short). Rows with no
    trained token at all are ``no_trained_tokens`` instead; a conversation that ends on an
    answer of weight 0 ends as its author chose. The turns named, and their tokens, are all
    those after the last trained answer (``untrained``: each row's weight-0 turns).

    Examples:
        >>> stats = {"n_answer": np.array([3, 3]), "n_tokens": np.array([20, 30]),
        ...          "answer_end": np.array([20, 21])}
        >>> [str(p) for p in unanswered_turns(
        ...     [("user", "assistant"), ("user", "assistant", "user")], stats, "train")]
        ['[unanswered_turn] train row 1: the conversation goes on after its last answer \
with a user turn (9 tokens) that trains nothing; drop it, or add the answer that should follow']
    """
    problems = []
    for i, sequence in enumerate(roles):
        if not sequence or sequence[-1] == "assistant" or stats["n_answer"][i] == 0:
            continue
        skipped = set((untrained or [None] * len(roles))[i] or ())
        trained = [k for k, role in enumerate(sequence) if role == "assistant" and k not in skipped]
        if not trained:
            continue
        tail = sequence[trained[-1] + 1 :]
        after = len(tail)
        turns = f"a {tail[0]} turn" if after == 1 else f"{after} turns ({', '.join(tail)})"
        n_tokens = int(stats["n_tokens"][i] - stats["answer_end"][i])
        msg = (
            f"the conversation goes on after its last answer with {turns} ({n_tokens} tokens) "
            f"that train{'s' if after == 1 else ''} nothing; drop "
            f"{'it' if after == 1 else 'them'}, or add the answer that should follow"
        )
        problems.append(Problem(i, "unanswered_turn", msg, split))
    return problems


def tool_mismatches(dataset: Any, split: str) -> list[Problem]:
    """Rows whose tool calls do not fit their tools: a call to a tool the row does not offer
    (the model learns to call what it was not given), and a tool result that answers no call.

    Examples:
        >>> import datasets, json
        >>> add = {"type": "function", "function": {"name": "add", "parameters": {}}}
        >>> call = {"type": "function", "function": {"name": "mul", "arguments": {}}}
        >>> stored = json.dumps({"tools": [add], "turns": {"1": {"tool_calls": [call]}}})
        >>> turns = [{"role": "user", "content": "2*3?"}, {"role": "assistant", "content": ""},
        ...          {"role": "tool", "content": "6"}, {"role": "assistant", "content": "6"}]
        >>> rows = datasets.Dataset.from_dict({"messages": [turns], TOOL_CALLING: [stored]})
        >>> print(tool_mismatches(rows, "train")[0].message)
        messages[1] calls 'mul', which the row's tools do not offer (add)
    """
    if TOOL_CALLING not in dataset.column_names:
        return []
    table = dataset.select_columns(["messages", TOOL_CALLING]).with_format("arrow")[:]
    stored = table.column(TOOL_CALLING)
    problems = []
    for i in np.flatnonzero(stored.is_valid().to_numpy(zero_copy_only=False)):
        messages, tools = with_tool_calling(
            table.column("messages")[int(i)].as_py(), stored[int(i)].as_py()
        )
        for message in _tool_misfits(messages, tools):
            problems.append(Problem(int(i), "tool_mismatch", message, split))
    return problems


def _tool_misfits(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[str]:
    offered = [str(t.get("function", t).get("name")) for t in tools or [] if isinstance(t, dict)]
    found, called = [], False
    for k, message in enumerate(messages):
        calls = message.get("tool_calls") or []
        called = called or bool(calls)
        for call in calls:
            name = str((call.get("function") or call).get("name"))
            if offered and name not in offered:
                found.append(
                    f"messages[{k}] calls {name!r}, which the row's tools do not offer "
                    f"({', '.join(offered)})"
                )
        if message["role"] == "tool" and not called:
            found.append(f"messages[{k}] is a tool result, but no call comes before it")
    return found


def _sample_check(data: Any) -> Any:
    """:func:`check_template` on the sample conversation, without its system message for
    templates that reject one (Mistral's, Gemma 2's raise an error on a system turn)."""
    from jinja2.exceptions import TemplateError

    try:
        return check_template(data.template, data.tokenizer)
    except TemplateError:
        return check_template(data.template, data.tokenizer, SAMPLE_CONVERSATION[1:])


def _dataset_problems(data: Any) -> list[Problem]:
    problems = []
    if not data.is_text:
        check = _sample_check(data)
        if not check.ok:
            problems.append(Problem(None, "template_mismatch", check.message, None))
    n = len(data.train)
    if n < SMALL_DATASET_ROWS:
        msg = (
            f"only {n} training examples; rule of thumb: under {SMALL_DATASET_ROWS} examples "
            "a LoRA fine-tune mostly learns the output format and tends to memorise, and a new "
            "skill usually needs 1,000 or more; keep a validation split to see overfitting"
        )
        problems.append(Problem(None, "small_dataset", msg, None))
    return problems


def build_report(data: Any) -> DataReport:
    """Compute the report of a :class:`~workbench.data.PreparedData`.

    Examples:
        ``data.report()`` calls it once and caches the result:

        >>> from transformers import AutoTokenizer
        >>> from workbench.models.tiny import build_tiny_model
        >>> from workbench.data import PreparedData
        >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-report"))
        >>> rows = [{"question": f"{i} plus {i}?", "answer": str(2 * i)} for i in range(100)]
        >>> data = PreparedData.load(rows, tokenizer)
        >>> report = build_report(data)
        >>> report == data.report(), report.train, report.validation
        (True, 90, 10)
    """
    splits = ["train"] + (["validation"] if data.validation is not None else [])
    problems = _dataset_problems(data) + list(data.skipped)
    for split in splits:
        problems += _split_problems(data, split)
    problems += data.duplicate_problems()
    order = {None: 0, "source": 1, "train": 2, "validation": 3}
    problems.sort(key=lambda p: (order[p.split], p.row if p.row is not None else -1))
    stats = data.stats(None)
    n_validation = len(data.validation) if data.validation is not None else 0
    return DataReport(
        source=data.source,
        format=data.format,
        template=data.template.name,
        rows=len(data.train) + n_validation + len(data.skipped),
        skipped=len(data.skipped),
        train=len(data.train),
        validation=n_validation,
        max_length=data.spec.max_length,
        lengths={part: LengthStats.of(stats[column]) for part, column in _PARTS.items()},
        trained_share=data.trained_share(),
        problems=tuple(problems),
        histogram=_histogram(stats["n_tokens"]),
        context=data.spec.context,
        tool_rows=sum(_tool_rows(data.split(split)) for split in splits),
    )


def _tool_rows(dataset: Any) -> int:
    if TOOL_CALLING not in dataset.column_names:
        return 0
    column = dataset.select_columns([TOOL_CALLING]).with_format("arrow")[:].column(TOOL_CALLING)
    return len(column) - column.null_count


def _histogram(lengths: np.ndarray, bins: int = 50) -> tuple[tuple[int, ...], tuple[float, ...]]:
    span = int(lengths.max() - lengths.min()) + 1 if len(lengths) else 1
    counts, edges = np.histogram(lengths, bins=max(1, min(bins, span)))
    return tuple(int(c) for c in counts), tuple(float(e) for e in edges)
