"""``PreparedData``: a data set read, split, templated and tokenized, ready to train on.

Examples:
    >>> from transformers import AutoTokenizer
    >>> from workbench.models.tiny import build_tiny_model
    >>> from workbench.data.prepared import PreparedData
    >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-prepared"))
    >>> rows = [{"question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(100)]
    >>> data = PreparedData.load(rows, tokenizer, max_length=512)
    >>> data
    PreparedData('list', format='qa', template='tokenizer', train=90, validation=10, max_length=512)
    >>> data.train[0]["labels"][:5]  # the prompt is masked: only the answer is trained
    [-100, -100, -100, -100, -100]
    >>> data.example(0).trained_text
    '166<|im_end|>\\n'
    >>> data.report().by_kind
    {'small_dataset': 1}
"""

from __future__ import annotations

import dataclasses
import functools
import math
import unicodedata
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from workbench._display import INVISIBLE_RANGES, invisible_characters
from workbench._numbers import plain_fields, plain_number
from workbench.data.batched import BatchLabeller
from workbench.data.context import fit_to_context
from workbench.data.duplicates import ScanStoppedError, duplicate_problems
from workbench.data.example import Example, TokenView, token_texts
from workbench.data.fingerprint import labeller_key, labelling_fingerprint
from workbench.data.formats import CANONICAL_FIELDS, FORMATS, Format
from workbench.data.loading import (
    Loaded,
    cache_file_lock,
    cached_arrow_table,
    clear_leftovers,
    read_source,
    refuse_template_rejects,
    write_checksum,
)
from workbench.data.problems import Problem
from workbench.data.report import DataReport, build_report
from workbench.data.scan_thread import BackgroundScan
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
    UNTRAINED_TURNS,
    Labeller,
    message_fields,
    special_ids,
)
from workbench.data.tool_calls import TOOL_CALLING, tool_texts, turn_text, with_tool_calling
from workbench.errors import DataError, SpecError, WorkbenchWarning

__all__ = ["DataSpec", "PreparedData", "load_data"]

# INVISIBLE_RANGES as an RE2 (Arrow) character class
_INVISIBLE_RE2 = "[" + "".join(f"\\x{{{lo:X}}}-\\x{{{hi:X}}}" for lo, hi in INVISIBLE_RANGES) + "]"

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
        batched: ``True`` (default): read, template and tokenize batch by batch (templates
            by layout, one tokenization, the agreement check on a sample of rows plus every
            row that differs; see :mod:`workbench.data.batched`). ``False``: the earlier
            row-by-row way, which renders every prompt prefix and checks every row at token
            level; same result, 2.5 to 3 times slower.

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
        >>> DataSpec(max_length=...)
        Traceback (most recent call last):
        ...
        workbench.errors.SpecError: max_length=... is a placeholder: fill in your answer
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
    batched: bool = True

    def __post_init__(self) -> None:
        gaps = [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is Ellipsis]
        if gaps:  # a workshop exercise's `...`, not filled in yet
            raise SpecError(
                "; ".join(f"{n}=... is a placeholder: fill in your answer" for n in gaps)
            )
        plain_fields(self)  # seed=np.int64(7) from a sweep: an int, as the manifest needs
        errors = []
        if self.format != "auto" and self.format not in FORMATS:
            errors.append(f"format={self.format!r} must be 'auto' or one of {list(FORMATS)}")
        if self.validation is not None and not 0 <= self.validation < 1:
            errors.append(
                f"validation={self.validation!r} must be a fraction in [0, 1), a source, or None"
            )
        if self.max_length is not None and not _count(self.max_length):
            errors.append(f"max_length={self.max_length!r} must be a positive int or None")
        if self.on_error not in ("raise", "skip"):
            errors.append(f"on_error={self.on_error!r} must be 'raise' or 'skip'")
        errors += _columns_problems(self.columns or {})
        if self.context is not None and not _count(self.context):
            errors.append(f"context={self.context!r} must be a positive int or None")
        if self.special_tokens_in_text not in SPECIAL_TOKENS_IN_TEXT:
            errors.append(
                f"special_tokens_in_text={self.special_tokens_in_text!r} must be 'split' or 'keep'"
            )
        if not isinstance(self.batched, bool):
            errors.append(f"batched={self.batched!r} must be True or False")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            errors.append(f"seed={self.seed!r} must be an integer >= 0")
        if errors:
            raise SpecError("; ".join(errors))


def _columns_problems(columns: Mapping[str, Any]) -> list[str]:
    """What is wrong with a ``columns`` mapping: a key that is no field, a value that is no
    column name, one column mapped to two fields.

    Examples:
        >>> _columns_problems({"prompt": "q", "answer": "q"})
        ["columns: 'q' is mapped to 'prompt' and 'answer'; each field needs its own column \
(the model would learn to repeat its prompt)"]
    """
    problems = [
        f"columns[{key!r}]={value!r}: keys must be in {CANONICAL_FIELDS}, values column names"
        for key, value in columns.items()
        if key not in CANONICAL_FIELDS or not isinstance(value, str)
    ]
    named = [value for value in columns.values() if isinstance(value, str)]
    for column in sorted({c for c in named if named.count(c) > 1}):
        fields = " and ".join(repr(key) for key, value in columns.items() if value == column)
        problems.append(
            f"columns: {column!r} is mapped to {fields}; each field needs its own column (the "
            "model would learn to repeat its prompt)"
        )
    return problems


def _count(value: Any) -> bool:
    """Whether ``value`` is an integer of 1 or more (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _build_spec(
    validation: Any, template: Any, **kwargs: Any
) -> tuple[DataSpec, Any, Template | None]:
    """Split the notebook-friendly arguments into a spec plus non-serialisable parts."""
    validation = plain_number(validation)  # np.float32(0.2) is a fraction, not a source
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
        >>> from transformers import AutoTokenizer
        >>> from workbench.models.tiny import build_tiny_model
        >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-prepared"))
        >>> data = PreparedData.load([{"question": "2+2?", "answer": "4"}] * 20, tokenizer)
        >>> data.format, data.template.name, len(data.train), len(data.validation)
        ('qa', 'tokenizer', 18, 2)
        >>> {"input_ids", "labels", "attention_mask", "messages"} <= set(data.train.column_names)
        True
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
        # the duplicate scan: running, done (its problems) or not started (None)
        self._duplicates: BackgroundScan | list[Problem] | None = None

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
        batched: bool = True,
        sheet: str | None = None,
        encoding: str | None = None,
    ) -> PreparedData:
        """Read ``source``, split off validation, apply the template and tokenize.

        Args:
            source: ``.jsonl``/``.json``/``.csv``/``.tsv``/``.parquet`` path, a
                ``save_to_disk`` folder, ``datasets.Dataset``/``DatasetDict``, pandas
                ``DataFrame`` or list of dicts.
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
            batched: ``True`` (default): batch-wise preparation. ``False``: the earlier
                row-by-row way (every row's prompt rendered and checked at token level);
                the same data and report, slower; kept for comparing the two.
            sheet: For an Excel workbook, the sheet to train on (default: the one named
                ``train``, else the first); a ``validation``/``eval``/``test`` sheet is still
                its validation split.
            encoding: A text file's encoding when it is not UTF-8 (``"cp1252"`` for a CSV
                Excel saved on Windows; a validation file is read in it too). ``None``
                (default): UTF-8, or UTF-16/32 when the file starts with their byte order mark.

        Raises:
            DataError: Unreadable source or (``on_error="raise"``) a malformed row, naming
                file, line and field.
            SpecError: An argument has a value that cannot work.

        Examples:
            >>> from transformers import AutoTokenizer
            >>> from workbench.models.tiny import build_tiny_model
            >>> folder = build_tiny_model("/tmp/wb-doc-prepared")
            >>> tokenizer = AutoTokenizer.from_pretrained(folder)
            >>> rows = [{"q": "Say hi", "a": "hi"}, {"q": "Say <|im_end|>", "a": "ok"}]
            >>> data = PreparedData.load(
            ...     rows, tokenizer, validation=None, columns={"prompt": "q", "answer": "a"}
            ... )
            >>> data.format, len(data.train), data.report().by_kind
            ('qa', 2, {'small_dataset': 1, 'special_token_text': 1})

            By default the ``<|im_end|>`` written in row 2 is plain text (it cannot end the
            turn); ``"keep"`` makes it the control token:

            >>> [t.text for t in data.example(1).tokens][6:9]
            [' ', '<', '|']
            >>> kept = PreparedData.load(
            ...     rows, tokenizer, validation=None, columns={"prompt": "q", "answer": "a"},
            ...     special_tokens_in_text="keep",
            ... )
            >>> [t.text for t in kept.example(1).tokens][6:9]  # its own, then the template's
            [' ', '<|im_end|>', '<|im_end|>']

            ``context`` (the Session passes ``model_context(model.config)``) cuts longer rows
            to the model's positions and reports them:

            >>> short = PreparedData.load(
            ...     rows, tokenizer, validation=None, columns={"prompt": "q", "answer": "a"},
            ...     context=8,
            ... )
            >>> short.spec.max_length, short.report().count("too_long")
            (8, 2)
            >>> PreparedData.load(rows, tokenizer, validation=None, max_length=0)
            Traceback (most recent call last):
            workbench.errors.SpecError: max_length=0 must be a positive int or None
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
            batched=batched,
        )
        cutoff, capped = fit_to_context(spec.max_length, spec.context)
        if capped:
            warnings.warn(capped, WorkbenchWarning, stacklevel=2)
        resolved = given or resolve_template(spec.template, tokenizer)
        main_source, dict_validation = open_source(source, sheet, encoding)
        val_source = (
            open_source(second, encoding=encoding if isinstance(second, (str, Path)) else None)[0]
            if second is not None
            else dict_validation
            if spec.validation
            else None
        )
        read = [(main_source, read_source(main_source, spec))]
        if val_source is not None:
            read.append((val_source, read_source(val_source, spec, read[0][1].format.name)))

        def prepared(every_row: bool) -> PreparedData:
            on_error = spec.on_error
            checked = [
                refuse_template_rejects(loaded, source, resolved, tokenizer, on_error, every_row)
                for source, loaded in read
            ]
            main, val = checked[0], (checked[1] if len(checked) == 2 else None)
            train, validation = _split(main, val, spec)
            raw = cls(
                train,
                validation,
                fmt=main.format,
                template=resolved,
                tokenizer=tokenizer,
                spec=spec,
                source=main_source.label,
                skipped=main.skipped + (val.skipped if val else ()),
                originals=tuple(dict.fromkeys(main.originals + (val.originals if val else ()))),
            )
            return raw._retokenized(cutoff)

        from jinja2.exceptions import TemplateError

        try:
            return prepared(every_row=False)
        except TemplateError:  # refused by what a turn says, not by roles: find each such row
            pass
        try:
            return prepared(every_row=True)
        except TemplateError as err:
            msg = (
                f"{main_source.label}: the chat template ({resolved.name!r}) failed while "
                f"tokenizing: {err.message or err}"
            )
            raise DataError(msg) from err

    def with_max_length(self, max_length: int | None) -> PreparedData:
        """A copy tokenized again with another cutoff (``None``: the model's context, if known).

        A cutoff past the model's context is capped to it, with a
        :class:`~workbench.errors.WorkbenchWarning`.

        Examples:
            >>> from transformers import AutoTokenizer
            >>> from workbench.models.tiny import build_tiny_model
            >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-prepared"))
            >>> rows = [{"question": f"{i} plus {i}?", "answer": str(2 * i)} for i in range(100)]
            >>> data = PreparedData.load(rows, tokenizer)
            >>> shorter = data.with_max_length(16)
            >>> shorter.spec.max_length, max(len(ids) for ids in shorter.train["input_ids"])
            (16, 16)
            >>> data.spec.max_length is None  # the original is unchanged
            True
        """
        # a wrong value: SpecError first; a numpy integer: a plain int (json writes the key)
        max_length = dataclasses.replace(self.spec, max_length=max_length).max_length
        cutoff, capped = fit_to_context(max_length, self.spec.context)
        if capped:
            warnings.warn(capped, WorkbenchWarning, stacklevel=2)
        return self._retokenized(cutoff)

    def _retokenized(self, max_length: int | None) -> PreparedData:
        spec = dataclasses.replace(self.spec, max_length=max_length)
        make = BatchLabeller if spec.batched else Labeller
        labeller = make(
            self.template,
            self.tokenizer,
            max_length,
            self._fmt.is_text,
            spec.special_tokens_in_text,
        )
        key = labeller_key(labeller)
        duplicates = self._duplicate_scan()  # the same rows and texts at any cutoff
        tokenized = [
            self._tokenize(ds, labeller, key) if ds is not None else None
            for ds in (self.train, self.validation)
        ]
        data = PreparedData(
            *tokenized,
            fmt=self._fmt,
            template=self.template,
            tokenizer=self.tokenizer,
            spec=spec,
            source=self.source,
            skipped=self.skipped,
            originals=self._originals,
        )
        data._duplicates = duplicates
        if isinstance(duplicates, BackgroundScan):
            duplicates.hold(data)
        return data

    def _duplicate_scan(self) -> BackgroundScan | list[Problem]:
        """The duplicate and near-duplicate scan of these rows, started once in a thread.

        It reads only the rows' texts, so it runs while the rows are tokenized: Arrow and
        numpy do its work without holding the GIL, on the CPU tokenizing leaves idle (see
        :mod:`~workbench.data.scan_thread`).
        """
        if self._duplicates is None:
            # the scan holds the rows, not this object: dropped data stops its scan
            scan = functools.partial(_scan_duplicates, self.train, self.validation, self.is_text)
            self._duplicates = BackgroundScan(scan, holder=self)
        return self._duplicates

    def duplicate_problems(self) -> list[Problem]:
        """Duplicate, near-duplicate and leaked rows (see
        :func:`~workbench.data.duplicates.duplicate_problems`), scanned once per loaded data.

        Examples:
            >>> from transformers import AutoTokenizer
            >>> from workbench.models.tiny import build_tiny_model
            >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-prepared"))
            >>> rows = [{"question": "2 plus 2?", "answer": "4"}] * 2
            >>> data = PreparedData.load(rows, tokenizer, validation=None)
            >>> [(p.kind, p.row) for p in data.duplicate_problems()]
            [('duplicate', 1)]
        """
        scan = self._duplicate_scan()
        if isinstance(scan, BackgroundScan):
            self._duplicates = scan = scan.result()
        return list(scan)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (or deep-copied) with the scan's problems, not the thread running it."""
        state = self.__dict__.copy()
        state["_duplicates"] = self.duplicate_problems()
        return state

    @staticmethod
    def _tokenize(dataset: Any, labeller: Labeller | BatchLabeller, settings_key: str) -> Any:
        stale = [c for c in PRODUCED_COLUMNS if c in dataset.column_names]
        dataset = dataset.remove_columns(stale)
        # Our own cache key: datasets would pickle the whole tokenizer to hash the labeller.
        key = labelling_fingerprint(dataset._fingerprint, settings_key)
        options = {"batched": True, "desc": "Tokenizing", "new_fingerprint": key}
        if not dataset.cache_files:  # in memory: nothing cached
            return PreparedData._map(dataset, labeller, options)
        # next to its input, as datasets would put it
        cache_file = Path(dataset.cache_files[0]["filename"]).parent / f"cache-{key}.arrow"
        with cache_file_lock(cache_file):  # another process writing it: wait, then reuse it
            cached_arrow_table(cache_file)  # a damaged copy is deleted, so it is made again
            clear_leftovers(cache_file.parent)
            options["cache_file_name"] = str(cache_file)
            mapped = PreparedData._map(dataset, labeller, options)
            if cache_file.exists():  # datasets wrote it whole
                write_checksum(cache_file, keep_existing=True)  # what later loads check
        return mapped

    @staticmethod
    def _map(dataset: Any, labeller: Labeller | BatchLabeller, options: dict) -> Any:
        if isinstance(labeller, Labeller):  # the row-by-row way: Python rows in and out
            return dataset.map(labeller, **options)
        return dataset.with_format("arrow").map(labeller, **options).with_format(None)

    @property
    def is_text(self) -> bool:
        """True for raw text (continued pretraining).

        Examples:
            >>> from transformers import AutoTokenizer
            >>> from workbench.models.tiny import build_tiny_model
            >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-prepared"))
            >>> PreparedData.load([{"question": "q", "answer": "a"}] * 4, tokenizer).is_text
            False
            >>> PreparedData.load([{"text": "The quick brown fox."}] * 4, tokenizer).is_text
            True
        """
        return self._fmt.is_text

    @property
    def text_only_stop(self) -> str | None:
        """The template's end of turn where no token of the tokenizer writes it (see
        :func:`~workbench.data.templates.text_only_stop`); ``None`` for raw text.

        Examples:
            >>> from transformers import AutoTokenizer
            >>> from workbench.models.tiny import build_tiny_model
            >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-prepared"))
            >>> rows = [{"question": "q", "answer": "a"}] * 4
            >>> PreparedData.load(rows, tokenizer, template="gemma").text_only_stop
            '<end_of_turn>'
            >>> PreparedData.load(rows, tokenizer, template="chatml").text_only_stop is None
            True
        """
        from workbench.data.templates import text_only_stop

        return None if self.is_text else text_only_stop(self.template, self.tokenizer)

    def split(self, name: SplitName) -> Any:
        """The dataset of split ``name``.

        Raises:
            DataError: No such split (e.g. ``"validation"`` when there is none).

        Examples:
            >>> from transformers import AutoTokenizer
            >>> from workbench.models.tiny import build_tiny_model
            >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-prepared"))
            >>> rows = [{"question": f"{i} plus {i}?", "answer": str(2 * i)} for i in range(100)]
            >>> data = PreparedData.load(rows, tokenizer)
            >>> data.split("validation") is data.validation
            True
            >>> PreparedData.load(rows, tokenizer, validation=None).split("validation")
            Traceback (most recent call last):
            workbench.errors.DataError: split 'validation': there is no such split (have 'train')
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
            >>> from transformers import AutoTokenizer
            >>> from workbench.models.tiny import build_tiny_model
            >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-prepared"))
            >>> rows = [{"question": f"{i} plus {i}?", "answer": str(2 * i)} for i in range(100)]
            >>> ex = PreparedData.load(rows, tokenizer).example(0)
            >>> [(t.text, t.trained) for t in ex.tokens][-5:]
            [('1', True), ('6', True), ('6', True), ('<|im_end|>', True), ('\\n', True)]
            >>> print(ex)
            train example 0 (source row 84): 23 tokens, 5 trained
            <|im_start|>user
            83 plus 83?<|im_end|>
            <|im_start|>assistant
            [1][6][6][<|im_end|>][
            ]
        """
        dataset = self.split(split)
        if not 0 <= i < len(dataset):
            msg = f"example {i}: {split} has {len(dataset)} rows"
            raise DataError(msg)
        row = dataset[int(i)]
        specials = special_ids(self.tokenizer)
        pieces = token_texts(self.tokenizer, row["input_ids"])
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
            {k: row[k] for k in self._originals if k in row},  # a validation file's own
            row["source_row"],
            row["n_tokens"] - len(row["input_ids"]),
        )

    def inference_ids(self, i: int, split: SplitName = "train") -> tuple[list[int], list[int]]:
        """Token ids of example ``i``'s inference prompt and of its expected answer, as
        training tokenized them (:mod:`workbench.data.prompts`): control tokens written as
        text in the row stay what ``special_tokens_in_text`` made them, and no ``bos`` is
        added to what the template writes. Evaluation generates from these ids.

        Raises:
            DataError: raw-text data (it has no prompts), or no example ``i``.

        Examples:
            >>> from transformers import AutoTokenizer
            >>> from workbench.models.tiny import build_tiny_model
            >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-prepared"))
            >>> rows = [{"question": "Say <|im_end|>", "answer": "<|im_end|>"}]
            >>> data = PreparedData.load(rows, tokenizer, validation=None)
            >>> prompt, answer = data.inference_ids(0)
            >>> tokenizer.convert_ids_to_tokens(prompt).count("<|im_end|>")  # the template's
            1
            >>> trained = [t.id for t in data.example(0).tokens]
            >>> trained[: len(prompt)] == prompt, trained[len(prompt) :][: len(answer)] == answer
            (True, True)
        """
        row = self.inference_row(i, split)
        return row["prompt_ids"], row["reference_ids"]

    def inference_row(self, i: int, split: SplitName = "train") -> dict[str, Any]:
        """Example ``i`` as an evaluation row: its rendered ``prompt`` and ``reference``
        answer (the texts of :meth:`example`) and their :meth:`inference_ids`
        (``prompt_ids``, ``reference_ids``), the row rendered once, and the data's ``id``
        where it has one. It raises as :meth:`inference_ids` does.

        Examples:
            >>> from transformers import AutoTokenizer
            >>> from workbench.models.tiny import build_tiny_model
            >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-prepared"))
            >>> data = PreparedData.load([{"question": "Hi", "answer": "Yo"}], tokenizer,
            ...                          validation=None)
            >>> sorted(data.inference_row(0)), data.inference_row(0)["reference"]
            (['prompt', 'prompt_ids', 'reference', 'reference_ids'], 'Yo')
        """
        from workbench.data.prompts import answer_ids, chat_prompt_ids

        if self.is_text:
            raise DataError("raw-text data has no prompts: inference_ids needs prompt/answer rows")
        dataset = self.split(split)
        if not 0 <= i < len(dataset):
            raise DataError(f"example {i}: {split} has {len(dataset)} rows")
        row = dataset[int(i)]
        prompt, answer, _ = self._texts_of(row)
        messages, tools = with_tool_calling(row["messages"], row.get(TOOL_CALLING))
        turns = messages[: _answer_turn(messages, row.get(UNTRAINED_TURNS))]
        mode = self.spec.special_tokens_in_text
        offered = [tools] if tools else None
        [prompt_ids] = chat_prompt_ids(self.template, self.tokenizer, [turns], offered, mode)
        kept_id = row.get("id")  # the data's own id column, to find the row again
        return {
            "prompt": prompt,
            "reference": answer,
            "prompt_ids": prompt_ids,
            "reference_ids": answer_ids(self.tokenizer, answer, mode),
            **({"id": kept_id} if kept_id is not None else {}),
        }

    def _texts_of(self, row: dict[str, Any]) -> tuple[str, str, str]:
        if self.is_text:
            return "", row["text"], row["text"]
        messages, tools = with_tool_calling(row["messages"], row.get(TOOL_CALLING))
        last = _answer_turn(messages, row.get(UNTRAINED_TURNS))
        prompt = render_prompt(self.template, self.tokenizer, messages[:last], True, tools)
        text = render_prompt(self.template, self.tokenizer, messages, False, tools)
        if last is None:
            return prompt, "", text
        if not messages[last].get("tool_calls"):
            return prompt, messages[last]["content"], text
        # A calling turn's answer is what the template writes for it (the model's output).
        upto = render_prompt(self.template, self.tokenizer, messages[: last + 1], False, tools)
        return prompt, self._written_answer(prompt, upto), text

    def _written_answer(self, prompt: str, upto: str) -> str:
        from workbench.chat import chat_stop_strings

        # data/ may not import models/ (tests/test_architecture.py), so not cut_at_stop
        written = upto[len(prompt) :] if upto.startswith(prompt) else upto
        ends = [*chat_stop_strings(self.template, self.tokenizer), self.tokenizer.eos_token]
        written = written.rstrip()
        for end in filter(None, ends):
            if end in written:
                written = written[: written.index(end)]
        return written.strip()

    def report(self) -> DataReport:
        """Counts, token lengths, trained share and problems (computed once, then cached).

        Examples:
            >>> from transformers import AutoTokenizer
            >>> from workbench.models.tiny import build_tiny_model
            >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-prepared"))
            >>> rows = [{"question": f"{i} plus {i}?", "answer": str(2 * i)} for i in range(100)]
            >>> data = PreparedData.load(rows, tokenizer, validation=None)
            >>> print(data.report())
            Data report for list: format 'qa', template 'tokenizer'
            rows: 100 read, 0 skipped; train 100, validation 0
            max_length: none (longest example 23 tokens)
            trained tokens: 19.8% of all tokens
            tokens      min   median     mean      p95    max
            prompt       16     18.0     17.7     18.0     18
            answer        3      4.0      4.4      5.0      5
            total        19     22.0     22.0     23.0     23
            problems (0): none
            >>> data.report() is data.report()
            True
        """
        if self._report is None:
            self._report = build_report(self)
        return self._report

    def stats(self, split: SplitName | None) -> dict[str, np.ndarray]:
        """Per-row length statistics (before the cutoff) of a split, or of both for ``None``.

        Examples:
            >>> from transformers import AutoTokenizer
            >>> from workbench.models.tiny import build_tiny_model
            >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-prepared"))
            >>> rows = [{"question": f"{i} plus {i}?", "answer": str(2 * i)} for i in range(100)]
            >>> data = PreparedData.load(rows, tokenizer)
            >>> int(data.stats("train")["n_tokens"].max()), len(data.stats(None)["n_tokens"])
            (23, 100)
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
            >>> from transformers import AutoTokenizer
            >>> from workbench.models.tiny import build_tiny_model
            >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-prepared"))
            >>> rows = [{"question": f"{i} plus {i}?", "answer": str(2 * i)} for i in range(100)]
            >>> data = PreparedData.load(rows, tokenizer)
            >>> data.truncation_at(20)  # cuts into 88 answers, but leaves each a token
            {'examples': 88, 'answers': 88, 'answers_lost': 0, 'total': 100}
            >>> data.truncation_at(16)["answers_lost"]
            100
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
            >>> from transformers import AutoTokenizer
            >>> from workbench.models.tiny import build_tiny_model
            >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-prepared"))
            >>> rows = [{"question": f"{i} plus {i}?", "answer": str(2 * i)} for i in range(100)]
            >>> f"{PreparedData.load(rows, tokenizer).trained_share():.0%}"
            '20%'
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
            >>> from transformers import AutoTokenizer
            >>> from workbench.models.tiny import build_tiny_model
            >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-prepared"))
            >>> rows = [{"question": f"{i} plus {i}?", "answer": str(2 * i)} for i in range(100)]
            >>> PreparedData.load(rows, tokenizer).texts("train")[0].as_py()
            '83 plus 83?\\n166'
        """
        key = ("texts", split)
        if key not in self._cache:
            self._cache[key] = _joined_texts(self.split(split), self.is_text)
        return self._cache[key]

    def search(self, query: str, split: SplitName = "train") -> np.ndarray:
        """Indices of rows whose text contains ``query`` (case-insensitive; all rows if empty).

        Text and query are compared in Unicode NFKC: an accent typed as a separate mark, and
        full-width letters (``ＦＵＬＬ``), find the same rows as their usual forms.

        Examples:
            >>> from transformers import AutoTokenizer
            >>> from workbench.models.tiny import build_tiny_model
            >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-prepared"))
            >>> rows = [{"question": f"{i} plus {i}?", "answer": str(2 * i)} for i in range(100)]
            >>> data = PreparedData.load(rows, tokenizer)
            >>> data.search("7 PLUS 7")  # "7 plus 7?" and "77 plus 77?"
            array([76, 78])
            >>> len(data.search(""))
            90
        """
        import pyarrow.compute as pc

        texts = self.texts(split)
        if not query:
            return np.arange(len(texts))
        query = unicodedata.normalize("NFKC", query)
        found = pc.match_substring(self._search_texts(split), query, ignore_case=True)
        return np.flatnonzero(found.to_numpy(zero_copy_only=False))

    def _search_texts(self, split: SplitName) -> Any:
        """The rows' texts in NFKC, kept once made (ASCII text is its own NFKC: no copy)."""
        import pyarrow.compute as pc

        key = ("search_texts", split)
        if key not in self._cache:
            texts = self.texts(split)
            ascii_only = pc.all(pc.string_is_ascii(texts)).as_py() in (True, None)
            self._cache[key] = texts if ascii_only else pc.utf8_normalize(texts, form="NFKC")
        return self._cache[key]

    def preview(self, indices: Any, split: SplitName = "train") -> list[dict[str, Any]]:
        """Short rows for a table page: index, source row, prompt, answer, token counts.

        Examples:
            >>> from transformers import AutoTokenizer
            >>> from workbench.models.tiny import build_tiny_model
            >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-prepared"))
            >>> rows = [{"question": f"{i} plus {i}?", "answer": str(2 * i)} for i in range(100)]
            >>> from pprint import pprint
            >>> pprint(PreparedData.load(rows, tokenizer).preview([0, 1])[0], sort_dicts=False)
            {'row': 0,
             'source_row': 84,
             'prompt': '83 plus 83?',
             'answer': '166',
             'tokens': 23,
             'trained': 5}
        """
        indices = [int(i) for i in indices]
        if not indices:
            return []
        columns = ["source_row", "n_tokens", "n_answer", "text" if self.is_text else "messages"]
        dataset = self.split(split)
        columns += [c for c in (UNTRAINED_TURNS, TOOL_CALLING) if c in dataset.column_names]
        rows = dataset.select_columns(columns)[indices]
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
            >>> from transformers import AutoTokenizer
            >>> from workbench.models.tiny import build_tiny_model
            >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-prepared"))
            >>> rows = [{"question": "Hi", "answer": "Hello"}, {"question": "Empty?", "answer": ""}]
            >>> PreparedData.load(rows, tokenizer, validation=None).empty_fields("train")
            [(1, 'answer')]
        """
        return self._flagged(split, "empty_fields")

    def special_text(self, split: SplitName) -> list[tuple[int, str]]:
        """``(row, what)`` for rows whose text holds literal control tokens.

        ``what`` names each token and field, e.g. ``"'<|im_end|>' x2 in messages[2]
        (assistant)"``.

        Examples:
            >>> from transformers import AutoTokenizer
            >>> from workbench.models.tiny import build_tiny_model
            >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-prepared"))
            >>> rows = [{"question": "Hi", "answer": "Hi"},
            ...         {"question": "<|im_end|>", "answer": "x"}]
            >>> PreparedData.load(rows, tokenizer, validation=None).special_text("train")
            [(1, "'<|im_end|>' in messages[0] (user)")]
        """
        return self._flagged(split, SPECIAL_TEXT_COLUMN)

    def invisible_text(self, split: SplitName) -> list[tuple[int, str]]:
        """``(row, what)`` for rows holding characters a reader does not see (a zero-width
        space, a right-to-left override, a control character: ``_display.INVISIBLE_RANGES``).

        The model learns to write them and they change how the text tokenizes, while every
        view of the row looks clean; ``what`` names each character and field.

        Examples:
            >>> from transformers import AutoTokenizer
            >>> from workbench.models.tiny import build_tiny_model
            >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-prepared"))
            >>> rows = [{"question": "Hi", "answer": "Hi"},
            ...         {"question": "x", "answer": "zero\u200bwidth\u200bspace"}]
            >>> PreparedData.load(rows, tokenizer, validation=None).invisible_text("train")
            [(1, 'U+200B ZERO WIDTH SPACE x2 in messages[1] (assistant)')]
        """
        import pyarrow.compute as pc

        found = pc.match_substring_regex(self.texts(split), _INVISIBLE_RE2)
        rows = np.flatnonzero(found.to_numpy(zero_copy_only=False)).tolist()
        picked = self.split(split).select(rows)
        if self.is_text:
            fields = [[("text", text)] for text in picked["text"]]
        else:
            tools = picked[TOOL_CALLING] if TOOL_CALLING in picked.column_names else None
            cells = tools or [None] * len(rows)
            fields = [
                message_fields(messages) + tool_texts(cell)
                for messages, cell in zip(picked["messages"], cells, strict=True)
            ]
        found = [(i, _invisible_in(named)) for i, named in zip(rows, fields, strict=True)]
        return [(i, what) for i, what in found if what]  # not an emoji flag's tags alone

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
    stored = rows[TOOL_CALLING][k] if TOOL_CALLING in rows else None
    messages, _ = with_tool_calling(rows["messages"][k], stored)
    untrained = rows[UNTRAINED_TURNS][k] if UNTRAINED_TURNS in rows else None
    last = _answer_turn(messages, untrained)
    before = messages[:last]
    prompt = next((m["content"] for m in reversed(before) if m["role"] == "user"), "")
    return prompt, turn_text(messages[last]) if last is not None else ""


def _answer_turn(messages: list[dict[str, str]], untrained: list[int] | None) -> int | None:
    """The answer a row is shown and judged by: its last trained assistant turn (weight-0
    turns are context), else its last assistant turn; ``None`` when it has none."""
    answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    trained = [i for i in answers if i not in (untrained or ())]
    return (trained or answers or [None])[-1]


def _columns(dataset: Any, names: list[str]) -> Any:
    """``names`` of every row of ``dataset`` as one Arrow table.

    A split picks its rows through an index, which ``datasets`` gathers row by row (1.3 s
    for 90k rows of messages); Arrow's ``take`` gathers them at once (0.1 s).
    """
    indices = getattr(dataset, "_indices", None)  # datasets' own field: checked, not assumed
    backing = getattr(getattr(dataset, "data", None), "table", None)
    if indices is None or backing is None or indices.num_columns != 1:
        return dataset.select_columns(names).with_format("arrow")[:]
    return backing.select(names).take(indices.column(0))


def _scan_duplicates(
    train: Any, validation: Any, is_text: bool, stop: Callable[[], bool]
) -> list[Problem]:
    if stop():  # dropped before the thread got a turn: the rows are not read at all
        raise ScanStoppedError
    # joined here, not through texts(): its cache is the caller's thread's
    train_texts = _joined_texts(train, is_text)
    validation_texts = None if validation is None else _joined_texts(validation, is_text)
    return duplicate_problems(train_texts, validation_texts, stop)


def _invisible_in(fields: list[tuple[str, str]]) -> str:
    named = ((name, invisible_characters(text or "")) for name, text in fields)
    return "; ".join(f"{what} in {name}" for name, what in named if what)


def _joined_texts(dataset: Any, is_text: bool) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    column = "text" if is_text else "messages"
    wanted = [column] + [TOOL_CALLING] * (not is_text and TOOL_CALLING in dataset.column_names)
    table = _columns(dataset, wanted)
    values = table.column(column).combine_chunks()
    if is_text:
        return values
    contents = pc.struct_field(pc.list_flatten(values), "content")
    offsets = pc.subtract(values.offsets, values.offsets[0])
    joined = pc.binary_join(pa.ListArray.from_arrays(offsets, contents), "\n")
    if TOOL_CALLING not in table.column_names:
        return joined
    # Tools and calls are part of a row: two rows asking the same but calling differently
    # are not duplicates, and a search for a function's name finds the rows that call it.
    calling = table.column(TOOL_CALLING).combine_chunks()
    with_calls = pc.binary_join_element_wise(joined, calling, "\n")
    return pc.if_else(pc.is_valid(calling), with_calls, joined)


def _split(main: Loaded, val: Loaded | None, spec: DataSpec) -> tuple[Any, Any]:
    if val is not None:
        return main.dataset, val.dataset
    if not spec.validation or len(main.dataset) < 2:
        return main.dataset, None
    # The rows datasets' train_test_split(test_size, seed) picks, but with the indices kept in
    # memory (it cannot, next to cache files): no cache file of its own to be found damaged.
    rows = len(main.dataset)
    n_validation = min(math.ceil(spec.validation * rows), rows - 1)
    order = np.random.default_rng(spec.seed).permutation(rows)
    return main.dataset.select(order[n_validation:]), main.dataset.select(order[:n_validation])


def load_data(source: Any, tokenizer: Any, **options: Any) -> PreparedData:
    """Same as :meth:`PreparedData.load` (the name used in the issue and the Session).

    Examples:
        >>> import json
        >>> from pathlib import Path
        >>> from transformers import AutoTokenizer
        >>> from workbench.models.tiny import build_tiny_model
        >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-prepared"))
        >>> row = {"instruction": "Add", "input": "2 2", "output": "4"}
        >>> path = Path("/tmp/wb-doc-prepared-data.jsonl")
        >>> _ = path.write_text("\\n".join(json.dumps(row) for _ in range(5)))
        >>> data = load_data(path, tokenizer, format="alpaca", max_length=512, validation=None)
        >>> data.source, data.format, len(data.train), data.spec.max_length
        ('wb-doc-prepared-data.jsonl', 'alpaca', 5, 512)
    """
    return PreparedData.load(source, tokenizer, **options)
