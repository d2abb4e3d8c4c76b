"""``PreparedData``: a data set read, split, templated and tokenized, ready to train on.

Examples:
    >>> # data = PreparedData.load("data.jsonl", tokenizer, max_length=512)
    >>> # data.train[0]["labels"][:5]; print(data.report()); data.example(0)
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from workbench.data.context import fit_to_context
from workbench.data.example import Example, TokenView
from workbench.data.formats import CANONICAL_FIELDS, FORMATS, Format
from workbench.data.loading import Loaded, read_source
from workbench.data.problems import Problem
from workbench.data.report import DataReport, build_report
from workbench.data.sources import open_source
from workbench.data.special_text import (
    SPECIAL_TEXT_COLUMN,
    SPECIAL_TOKENS_IN_TEXT,
    SpecialTokensInText,
)
from workbench.data.templates import Template, render_prompt, resolve_template
from workbench.data.tokenize import (
    IGNORE_INDEX,
    PRODUCED_COLUMNS,
    STAT_COLUMNS,
    Labeller,
    special_ids,
)
from workbench.errors import DataError, SpecError, WorkbenchWarning

__all__ = ["DataSpec", "PreparedData", "load_data"]

FormatChoice = Literal["auto", "alpaca", "qa", "chat", "sharegpt", "text"]
OnError = Literal["raise", "skip"]
SplitName = Literal["train", "validation"]


@dataclass(frozen=True)
class DataSpec:
    """How to read and prepare a data set (everything but the source and tokenizer).

    Attributes:
        format: ``"auto"`` (detect from the columns) or a format name.
        validation: Fraction of rows split off for validation (fixed ``seed``), or ``None``/0.
        max_length: Keep at most this many tokens per example (``None``: keep all, or
            the model's ``context`` when known). Never more than ``context``.
        template: Template name, Jinja text or ``None`` (the tokenizer's, else a built-in).
        on_error: ``"raise"`` a :class:`DataError` at the first malformed row, or ``"skip"`` it.
        columns: ``{canonical field: your column}``, e.g. ``{"prompt": "q", "answer": "a"}``.
        seed: Seed of the validation split.
        cache_dir: Where datasets keeps the Arrow files (``None``: its default cache).
        context: The model's context length in tokens (from its config), or ``None`` when
            unknown. Rows longer than it are reported as ``too_long`` and cut to it.
        special_tokens_in_text: What a control token written as text in the data
            (``<|im_end|>``, ``<start_of_turn>``, ``<eos>``...) becomes: ``"split"`` (default)
            tokenizes it as plain text, so data cannot end a turn or start a new one;
            ``"keep"`` lets it become the real control token (the old behaviour, for data
            that writes its own turn structure on purpose). Either way each such row is
            reported as a ``special_token_text`` problem.

    Examples:
        >>> DataSpec(max_length=256).validation
        0.1
        >>> DataSpec(on_error="ignore")
        Traceback (most recent call last):
        ...
        workbench.errors.SpecError: on_error='ignore' must be 'raise' or 'skip'
        >>> DataSpec(special_tokens_in_text="drop")
        Traceback (most recent call last):
        ...
        workbench.errors.SpecError: special_tokens_in_text='drop' must be 'split' or 'keep'
    """

    format: FormatChoice = "auto"
    validation: float | None = 0.1
    max_length: int | None = None
    template: str | None = None
    on_error: OnError = "raise"
    columns: Mapping[str, str] | None = None
    seed: int = 0
    cache_dir: str | None = None
    context: int | None = None
    special_tokens_in_text: SpecialTokensInText = "split"

    def __post_init__(self) -> None:
        errors = []
        if self.format != "auto" and self.format not in FORMATS:
            errors.append(f"format={self.format!r} must be 'auto' or one of {list(FORMATS)}")
        if self.validation is not None and not 0 <= self.validation < 1:
            errors.append(
                f"validation={self.validation!r} must be a fraction in [0, 1), a source, or None"
            )
        if self.max_length is not None and (
            not isinstance(self.max_length, int) or self.max_length < 1
        ):
            errors.append(f"max_length={self.max_length!r} must be a positive int or None")
        if self.on_error not in ("raise", "skip"):
            errors.append(f"on_error={self.on_error!r} must be 'raise' or 'skip'")
        for key, value in (self.columns or {}).items():
            if key not in CANONICAL_FIELDS or not isinstance(value, str):
                errors.append(
                    f"columns[{key!r}]={value!r}: keys must be in {CANONICAL_FIELDS}, "
                    "values column names"
                )
        if self.context is not None and (not isinstance(self.context, int) or self.context < 1):
            errors.append(f"context={self.context!r} must be a positive int or None")
        if self.special_tokens_in_text not in SPECIAL_TOKENS_IN_TEXT:
            errors.append(
                f"special_tokens_in_text={self.special_tokens_in_text!r} must be 'split' or 'keep'"
            )
        if errors:
            raise SpecError("; ".join(errors))


def _build_spec(
    validation: Any, template: Any, **kwargs: Any
) -> tuple[DataSpec, Any, Template | None]:
    """Split the notebook-friendly arguments into a spec plus non-serialisable parts."""
    second = None if validation is None or isinstance(validation, (int, float)) else validation
    fraction = None if second is not None else validation
    given = template if isinstance(template, Template) else None
    name = None if given is not None else template
    return DataSpec(validation=fraction, template=name, **kwargs), second, given


class PreparedData:
    """Tokenized train/validation datasets with completion-only labels, plus their report.

    Build one with :meth:`load`. ``train`` and ``validation`` are ``datasets.Dataset``s with
    ``input_ids``, ``labels`` (-100 on masked tokens), ``attention_mask``, the normalised
    ``messages`` (or ``text``), the source's own columns, and per-row length statistics.

    Examples:
        >>> # data = PreparedData.load([{"question": "2+2?", "answer": "4"}] * 20, tokenizer)
        >>> # data.format, data.template.name, len(data.train)
    """

    def __init__(
        self,
        train: Any,
        validation: Any,
        *,
        fmt: Format,
        template: Template,
        tokenizer: Any,
        spec: DataSpec,
        source: str,
        skipped: tuple[Problem, ...],
        originals: tuple[str, ...],
    ) -> None:
        self.train = train
        self.validation = validation
        self.format: str = fmt.name
        self.template = template
        self.tokenizer = tokenizer
        self.spec = spec
        self.source = source
        self.skipped = skipped
        self._fmt = fmt
        self._originals = originals
        self._report: DataReport | None = None
        self._cache: dict[tuple[str, str | None], Any] = {}

    @classmethod
    def load(
        cls,
        source: Any,
        tokenizer: Any,
        *,
        format: FormatChoice = "auto",
        validation: Any = 0.1,
        max_length: int | None = None,
        template: Template | str | None = None,
        on_error: OnError = "raise",
        columns: Mapping[str, str] | None = None,
        seed: int = 0,
        cache_dir: str | None = None,
        context: int | None = None,
        special_tokens_in_text: SpecialTokensInText = "split",
    ) -> PreparedData:
        """Read ``source``, split off validation, apply the template and tokenize.

        Args:
            source: ``.jsonl``/``.json``/``.csv``/``.parquet`` path, a ``save_to_disk`` folder,
                ``datasets.Dataset``/``DatasetDict``, pandas ``DataFrame`` or list of dicts.
            tokenizer: A fast transformers tokenizer.
            format: ``"auto"``, ``"alpaca"``, ``"qa"``, ``"chat"``, ``"sharegpt"`` or ``"text"``.
            validation: Fraction to split off (seeded), a second source, or ``None``/0.
                A ``DatasetDict`` with a validation/test split uses that split.
            max_length: Token cutoff; the start is kept. ``None``: the model's ``context``
                when given (else no cutoff); a longer one is capped to ``context`` with a
                :class:`~workbench.errors.WorkbenchWarning`.
            template: ``None``, a :class:`Template`, a name in ``TEMPLATES``, ``"tokenizer"``
                or Jinja text.
            on_error: ``"raise"`` or ``"skip"`` malformed rows (skipped ones become
                ``malformed`` problems).
            columns: Column mapping, e.g. ``{"prompt": "q", "answer": "a"}``.
            seed: Seed of the validation split.
            cache_dir: Arrow cache folder (``None``: datasets' default).
            context: The model's context length (:func:`~workbench.data.context.model_context`
                of its config; the Session passes it). Rows longer than it are reported as
                ``too_long`` and cut to it, so training never runs past the model's positions.
            special_tokens_in_text: ``"split"`` (default): a control token written as text
                in the data (``<|im_end|>``, ``<start_of_turn>``, ``<eos>``, any special token
                of the tokenizer) is tokenized as plain text, so data cannot inject turn
                structure; the template's own markers stay control tokens. ``"keep"``: it
                becomes the real control token. Rows with such text are reported as
                ``special_token_text`` problems in both modes.

        Raises:
            DataError: Unreadable source or (``on_error="raise"``) a malformed row, naming
                file, line and field.
            SpecError: An argument has a value that cannot work.

        Examples:
            >>> # data = PreparedData.load("data.jsonl", tokenizer, validation=0.1, max_length=512)
            >>> # data = PreparedData.load(df, tokenizer, columns={"prompt": "q", "answer": "a"})
            >>> # data = PreparedData.load(rows, tokenizer, context=model.config.n_positions)
            >>> # data = PreparedData.load(rows, tokenizer, special_tokens_in_text="keep")
        """
        spec, second, given = _build_spec(
            validation,
            template,
            format=format,
            max_length=max_length,
            on_error=on_error,
            columns=columns,
            seed=seed,
            cache_dir=cache_dir,
            context=context,
            special_tokens_in_text=special_tokens_in_text,
        )
        cutoff, capped = fit_to_context(spec.max_length, spec.context)
        if capped:
            warnings.warn(capped, WorkbenchWarning, stacklevel=2)
        resolved = given or resolve_template(spec.template, tokenizer)
        main_source, dict_validation = open_source(source)
        main = read_source(main_source, spec)
        val_source = (
            open_source(second)[0]
            if second is not None
            else dict_validation
            if spec.validation
            else None
        )
        val = read_source(val_source, spec, main.format.name) if val_source is not None else None
        train, validation = _split(main, val, spec)
        skipped = main.skipped + (val.skipped if val else ())
        raw = cls(
            train,
            validation,
            fmt=main.format,
            template=resolved,
            tokenizer=tokenizer,
            spec=spec,
            source=main_source.label,
            skipped=skipped,
            originals=main.originals,
        )
        return raw._retokenized(cutoff)

    def with_max_length(self, max_length: int | None) -> PreparedData:
        """A copy tokenized again with another cutoff (``None``: the model's context, if known).

        A cutoff past the model's context is capped to it, with a
        :class:`~workbench.errors.WorkbenchWarning`.

        Examples:
            >>> # shorter = data.with_max_length(256); shorter.truncation_at(256)
        """
        cutoff, capped = fit_to_context(max_length, self.spec.context)
        if capped:
            warnings.warn(capped, WorkbenchWarning, stacklevel=2)
        return self._retokenized(cutoff)

    def _retokenized(self, max_length: int | None) -> PreparedData:
        spec = dataclasses.replace(self.spec, max_length=max_length)
        labeller = Labeller(
            self.template,
            self.tokenizer,
            max_length,
            self._fmt.is_text,
            spec.special_tokens_in_text,
        )
        tokenized = [
            self._tokenize(ds, labeller) if ds is not None else None
            for ds in (self.train, self.validation)
        ]
        return PreparedData(
            *tokenized,
            fmt=self._fmt,
            template=self.template,
            tokenizer=self.tokenizer,
            spec=spec,
            source=self.source,
            skipped=self.skipped,
            originals=self._originals,
        )

    @staticmethod
    def _tokenize(dataset: Any, labeller: Labeller) -> Any:
        stale = [c for c in PRODUCED_COLUMNS if c in dataset.column_names]
        return dataset.remove_columns(stale).map(labeller, batched=True, desc="Tokenizing")

    @property
    def is_text(self) -> bool:
        """True for raw text (continued pretraining).

        Examples:
            >>> # data.is_text  -> False
        """
        return self._fmt.is_text

    def split(self, name: SplitName) -> Any:
        """The dataset of split ``name``.

        Raises:
            DataError: No such split (e.g. ``"validation"`` when there is none).

        Examples:
            >>> # data.split("validation") is data.validation  -> True
        """
        dataset = {"train": self.train, "validation": self.validation}.get(name)
        if dataset is None:
            msg = f"split {name!r}: there is no such split (have 'train'" + (
                ", 'validation')" if self.validation is not None else ")"
            )
            raise DataError(msg)
        return dataset

    def example(self, i: int, split: SplitName = "train") -> Example:
        """Example ``i`` of ``split`` as the model sees it.

        Examples:
            >>> # ex = data.example(0); [(t.text, t.trained) for t in ex.tokens][:4]
        """
        dataset = self.split(split)
        if not 0 <= i < len(dataset):
            msg = f"example {i}: {split} has {len(dataset)} rows"
            raise DataError(msg)
        row = dataset[int(i)]
        specials = special_ids(self.tokenizer)
        pieces = self.tokenizer.batch_decode([[t] for t in row["input_ids"]])
        tokens = tuple(
            TokenView(text, tid, label != IGNORE_INDEX, tid in specials)
            for text, tid, label in zip(pieces, row["input_ids"], row["labels"], strict=True)
        )
        prompt, answer, text = self._texts_of(row)
        return Example(
            i,
            split,
            tokens,
            prompt,
            answer,
            text,
            {k: row[k] for k in self._originals},
            row["source_row"],
            row["n_tokens"] - len(row["input_ids"]),
        )

    def _texts_of(self, row: dict[str, Any]) -> tuple[str, str, str]:
        if self.is_text:
            return "", row["text"], row["text"]
        messages = row["messages"]
        answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        last = answers[-1] if answers else len(messages)
        prompt = render_prompt(
            self.template, self.tokenizer, messages[:last], add_generation_prompt=True
        )
        text = render_prompt(self.template, self.tokenizer, messages, add_generation_prompt=False)
        return prompt, messages[last]["content"] if answers else "", text

    def report(self) -> DataReport:
        """Counts, token lengths, trained share and problems (computed once, then cached).

        Examples:
            >>> # print(data.report())
        """
        if self._report is None:
            self._report = build_report(self)
        return self._report

    def stats(self, split: SplitName | None) -> dict[str, np.ndarray]:
        """Per-row length statistics (before the cutoff) of a split, or of both for ``None``.

        Examples:
            >>> # data.stats("train")["n_tokens"].max()
        """
        key = ("stats", split)
        if key not in self._cache:
            if split is None:
                parts = [self.stats("train")] + (
                    [self.stats("validation")] if self.validation is not None else []
                )
                self._cache[key] = {c: np.concatenate([p[c] for p in parts]) for c in STAT_COLUMNS}
            else:
                table = self.split(split).select_columns(list(STAT_COLUMNS)).with_format("arrow")[:]
                self._cache[key] = {c: table.column(c).to_numpy() for c in STAT_COLUMNS}
        return self._cache[key]

    def truncation_at(self, cutoff: int, split: SplitName | None = None) -> dict[str, int]:
        """How many examples and answers a cutoff would cut, from stored full lengths.

        Args:
            cutoff: Candidate ``max_length``.
            split: ``"train"``, ``"validation"`` or ``None`` for both.

        Returns:
            ``examples`` (longer than ``cutoff``), ``answers`` (lose trained tokens),
            ``answers_lost`` (lose every trained token) and ``total`` examples.

        Examples:
            >>> # data.truncation_at(128)
            >>> # {'examples': 12, 'answers': 11, 'answers_lost': 2, 'total': 900}
        """
        s = self.stats(split)
        answered = s["n_answer"] > 0
        return {
            "examples": int((s["n_tokens"] > cutoff).sum()),
            "answers": int((answered & (s["answer_end"] > cutoff)).sum()),
            "answers_lost": int((answered & (s["answer_start"] >= cutoff)).sum()),
            "total": len(s["n_tokens"]),
        }

    def trained_share(self) -> float:
        """Share of kept tokens that are trained, over both splits.

        Examples:
            >>> # f"{data.trained_share():.0%}"  -> '31%'
        """
        import pyarrow.compute as pc

        trained = total = 0
        for dataset in (self.train, self.validation):
            if dataset is not None:
                labels = dataset.select_columns(["labels"]).with_format("arrow")[:].column("labels")
                flat = pc.list_flatten(labels)
                trained += pc.sum(pc.not_equal(flat, IGNORE_INDEX)).as_py() or 0
                total += len(flat)
        return trained / total if total else 0.0

    def texts(self, split: SplitName) -> Any:
        """One string per row (all contents joined by newlines), as a pyarrow array.

        Examples:
            >>> # data.texts("train")[0].as_py()
        """
        key = ("texts", split)
        if key not in self._cache:
            self._cache[key] = _joined_texts(self.split(split), self.is_text)
        return self._cache[key]

    def search(self, query: str, split: SplitName = "train") -> np.ndarray:
        """Indices of rows whose text contains ``query`` (case-insensitive; all rows if empty).

        Examples:
            >>> # data.search("paris")  -> array([3, 17])
        """
        import pyarrow.compute as pc

        texts = self.texts(split)
        if not query:
            return np.arange(len(texts))
        found = pc.match_substring(texts, query, ignore_case=True)
        return np.flatnonzero(found.to_numpy(zero_copy_only=False))

    def preview(self, indices: Any, split: SplitName = "train") -> list[dict[str, Any]]:
        """Short rows for a table page: index, source row, prompt, answer, token counts.

        Examples:
            >>> # data.preview([0, 1])[0]["answer"]
        """
        indices = [int(i) for i in indices]
        if not indices:
            return []
        columns = ["source_row", "n_tokens", "n_answer", "text" if self.is_text else "messages"]
        rows = self.split(split).select_columns(columns)[indices]
        out = []
        for k, i in enumerate(indices):
            prompt, answer = _preview_texts(rows, k, self.is_text)
            out.append(
                {
                    "row": i,
                    "source_row": rows["source_row"][k],
                    "prompt": prompt,
                    "answer": answer,
                    "tokens": rows["n_tokens"][k],
                    "trained": rows["n_answer"][k],
                }
            )
        return out

    def empty_fields(self, split: SplitName) -> list[tuple[int, str]]:
        """``(row, "field, field")`` for rows with empty fields.

        Examples:
            >>> # data.empty_fields("train")  -> [(4, 'output')]
        """
        return self._flagged(split, "empty_fields")

    def special_text(self, split: SplitName) -> list[tuple[int, str]]:
        """``(row, what)`` for rows whose text holds literal control tokens.

        ``what`` names each token and field, e.g. ``"'<|im_end|>' x2 in messages[2]
        (assistant)"``.

        Examples:
            >>> # data.special_text("train")  -> [(7, "'<eos>' in messages[1] (user)")]
        """
        return self._flagged(split, SPECIAL_TEXT_COLUMN)

    def _flagged(self, split: SplitName, name: str) -> list[tuple[int, str]]:
        """Rows of a string column that are neither null nor empty, with their value."""
        import pyarrow.compute as pc

        column = self.split(split).select_columns([name]).with_format("arrow")[:].column(name)
        flagged = pc.and_kleene(pc.is_valid(column), pc.not_equal(column, ""))
        rows = np.flatnonzero(flagged.to_numpy(zero_copy_only=False))
        return [(int(i), column[int(i)].as_py()) for i in rows]

    def __repr__(self) -> str:
        n_val = len(self.validation) if self.validation is not None else 0
        return (
            f"PreparedData({self.source!r}, format={self.format!r}, "
            f"template={self.template.name!r}, "
            f"train={len(self.train)}, validation={n_val}, max_length={self.spec.max_length})"
        )


def _preview_texts(rows: dict[str, list[Any]], k: int, is_text: bool) -> tuple[str, str]:
    if is_text:
        return "", rows["text"][k]
    messages = rows["messages"][k]
    answer = next((m["content"] for m in reversed(messages) if m["role"] == "assistant"), "")
    prompt = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    return prompt, answer


def _joined_texts(dataset: Any, is_text: bool) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    column = "text" if is_text else "messages"
    values = (
        dataset.select_columns([column]).with_format("arrow")[:].column(column).combine_chunks()
    )
    if is_text:
        return values
    contents = pc.struct_field(pc.list_flatten(values), "content")
    offsets = pc.subtract(values.offsets, values.offsets[0])
    return pc.binary_join(pa.ListArray.from_arrays(offsets, contents), "\n")


def _split(main: Loaded, val: Loaded | None, spec: DataSpec) -> tuple[Any, Any]:
    if val is not None:
        return main.dataset, val.dataset
    if not spec.validation or len(main.dataset) < 2:
        return main.dataset, None
    parts = main.dataset.train_test_split(test_size=spec.validation, seed=spec.seed)
    return parts["train"], parts["test"]


def load_data(source: Any, tokenizer: Any, **options: Any) -> PreparedData:
    """Same as :meth:`PreparedData.load` (the name used in the issue and the Session).

    Examples:
        >>> # data = load_data("data.jsonl", tokenizer, format="alpaca", max_length=512)
    """
    return PreparedData.load(source, tokenizer, **options)
