"""Scorers: turn one column of outputs into scores, per-example values and intervals.

Each scorer reads a :class:`Column` (predictions, references, per-example losses) and returns
``{score_name: Scored}``. The shipped evaluate modules do the scoring; bootstrap intervals
come from :mod:`workbench.evaluation.bootstrap` with the evaluation's shared resamples.

Examples:
    >>> col = Column(("a", "b"), ("a", "c"), (0.1, 0.2))
    >>> same = FunctionScorer(lambda p, r: float(p == r), "same")
    >>> same.score(col, np.zeros((2, 2), int))["same"].value
    0.5
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from workbench._display import HAN_RANGES, OTHER_UNSPACED_RANGES, UNSPACED_RANGES
from workbench.errors import EvaluationError
from workbench.evaluation.bootstrap import mean_ci, nan_mean, percentile_ci

__all__ = [
    "MODULES_DIR",
    "Column",
    "FunctionScorer",
    "ModuleScorer",
    "PerplexityScorer",
    "RougeScorer",
    "SacreScorer",
    "Scored",
    "Scorer",
    "bleu_tokenize",
    "load_module",
    "nfc",
]

MODULES_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Column:
    """One model's outputs over the evaluation rows.

    Attributes:
        predictions: Generated texts, one per row.
        references: Reference texts, one per row.
        losses: Mean token NLL of each reference given its prompt (``nan`` if not computed).

    Examples:
        >>> Column(("x",), ("y",), (1.0,)).references
        ('y',)
    """

    predictions: tuple[str, ...]
    references: tuple[str, ...]
    losses: tuple[float, ...] = ()


@dataclass(frozen=True)
class Scored:
    """One score of one column.

    Attributes:
        value: The corpus score (what the published module reports).
        per_example: The score of each row alone.
        ci: Bootstrap confidence interval of ``value``.
        settings: Options the scorer chose from the text (BLEU's ``tokenize``), to report
            with the options the caller gave.

    Examples:
        >>> Scored(1.0, (1.0,), (1.0, 1.0)).value
        1.0
    """

    value: float
    per_example: tuple[float, ...]
    ci: tuple[float, float]
    settings: dict = field(default_factory=dict)


class Scorer(Protocol):
    """Anything with ``score(column, indices) -> {name: Scored}``."""

    def score(self, column: Column, indices: np.ndarray) -> dict[str, Scored]:
        """Score ``column``; ``indices`` are the shared bootstrap resamples."""
        ...  # pragma: no cover


@functools.lru_cache(maxsize=32)
def load_module(path: str) -> Any:
    """Load a local evaluate module folder once (offline: no hub access).

    The shipped modules are imported as part of the package and kept in memory, so scoring
    writes nothing under ``HF_HOME`` (``evaluate.load`` copies a module into
    ``HF_HOME/modules`` and keeps its inputs in ``HF_HOME/metrics``: a read-only or shared
    cache made every evaluation fail). Other folders go through ``evaluate.load``, in memory.

    Examples:
        >>> load_module(str(MODULES_DIR / "exact_match")).name
        'exact_match'
    """
    folder = Path(path)
    if folder.parent == MODULES_DIR and (folder / f"{folder.name}.py").is_file():
        return _shipped_module(folder.name)
    import evaluate

    return evaluate.load(path, keep_in_memory=True)


def _shipped_module(name: str) -> Any:
    """An instance of the ``evaluate.Metric`` that the shipped module ``name`` defines."""
    import importlib
    import inspect
    import tempfile

    import evaluate

    code = importlib.import_module(f"{__package__}.{name}.{name}")
    metric = next(
        item
        for item in vars(code).values()
        if isinstance(item, type)
        and issubclass(item, evaluate.Metric)
        and item.__module__ == code.__name__
        and not inspect.isabstract(item)
    )
    # Metric() makes an (unused, when kept in memory) data folder: a throwaway one.
    with tempfile.TemporaryDirectory(prefix="workbench-metric-") as scratch:
        return metric(keep_in_memory=True, cache_dir=scratch)


def _mean_scored(values: list[float], indices: np.ndarray, proportion: bool = False) -> Scored:
    """The mean over the examples that have a value (NaN: none, e.g. no reference token);
    a ``proportion`` (pass/fail per row) gets a Wilson interval."""
    interval = mean_ci(values, indices, proportion=proportion)
    return Scored(nan_mean(values), tuple(float(v) for v in values), interval)


def _number(name: str, index: int, value: Any) -> float:
    """``value`` as a finite float, or a refusal naming the metric and the example (NaN,
    infinity and numbers too large for a float included, numpy's as Python's)."""
    number = math.nan
    if isinstance(value, (Real, np.bool_)):  # np.bool_ is no numbers.Real
        with contextlib.suppress(OverflowError):
            number = float(value)
    if math.isfinite(number):
        return number
    shown = repr(value)
    shown = shown if len(shown) <= 60 else f"{shown[:40]}... ({len(shown)} characters)"
    msg = f"metric {name!r} returned {shown} for example {index}: it must return a finite number"
    raise EvaluationError(msg)


@dataclass(frozen=True)
class FunctionScorer:
    """A user function ``f(prediction, reference) -> float``; the score is the mean.

    A function that returns bools, or one registered as a ``proportion``, is pass/fail per
    row: its interval is a Wilson one.

    Examples:
        >>> s = FunctionScorer(lambda p, r: len(p), "length")
        >>> s.score(Column(("ab",), ("",)), np.zeros((3, 1), int))["length"].value
        2.0
    """

    fn: Any
    name: str
    proportion: bool = False

    def score(self, column: Column, indices: np.ndarray) -> dict[str, Scored]:
        """Call the function on every row and average.

        Examples:
            >>> FunctionScorer(min, "m").score(Column(("a",), ("b",)), np.zeros((1, 1), int))
            ... # doctest: +ELLIPSIS
            Traceback (most recent call last):
            workbench.errors.EvaluationError: metric 'm' returned 'a' for example 0...
        """
        values, passed = [], []
        for i, (pred, ref) in enumerate(zip(column.predictions, column.references, strict=True)):
            try:
                result = self.fn(pred, ref)
            except Exception as err:  # any user code error becomes one clear message
                msg = f"metric {self.name!r} raised on example {i}: {type(err).__name__}: {err}"
                raise EvaluationError(msg) from err
            values.append(_number(self.name, i, result))
            passed.append(isinstance(result, (bool, np.bool_)))
        proportion = self.proportion or (bool(passed) and all(passed))
        return {self.name: _mean_scored(values, indices, proportion)}


def _compute(module: Any, name: str, column: Column, options: dict, where: str) -> dict:
    try:
        return module.compute(
            predictions=list(column.predictions), references=list(column.references), **options
        )
    except Exception as err:  # an evaluate module's own error, re-raised with context
        msg = f"metric {name!r} raised on {where}: {type(err).__name__}: {err}"
        raise EvaluationError(msg) from err


def _headline(name: str, key: str | None, result: dict, where: str) -> float:
    if key is None:
        key = (
            name
            if name in result
            else next((k for k, v in result.items() if isinstance(v, Real)), None)
        )
    if key not in result:
        msg = f"metric {name!r} returned no number on {where} (got keys {sorted(result)})"
        raise EvaluationError(msg)
    return _number(name, -1, result[key]) if where == "all rows" else float(result[key])


@dataclass(frozen=True)
class ModuleScorer:
    """Any evaluate module: a shipped folder (by path) or an ``EvaluationModule`` instance.

    Shipped modules that take ``per_example=True`` score every row in one call; other modules
    are called once per row for the per-example values. The interval is a bootstrap of the
    per-example mean (exact for averages such as exact match).

    Examples:
        >>> s = ModuleScorer(str(MODULES_DIR / "exact_match"), "exact_match", per_example=True)
        >>> s.score(Column(("a", "b"), ("a", "a")), np.zeros((2, 2), int))["exact_match"].value
        0.5
    """

    source: Any
    name: str
    key: str | None = None
    options: dict = field(default_factory=dict)
    per_example: bool = False
    proportion: bool = False  # pass/fail per row (exact match): a Wilson interval

    def _module(self) -> Any:
        return load_module(self.source) if isinstance(self.source, str) else self.source

    def score(self, column: Column, indices: np.ndarray) -> dict[str, Scored]:
        """Corpus value from one call over all rows; per-example values per row.

        Examples:
            An ``evaluate.load(...)`` instance works the same; without ``per_example`` the
            module is also called once per row:

            >>> s = ModuleScorer(str(MODULES_DIR / "exact_match"), "exact_match")
            >>> scored = s.score(Column(("a", "b"), ("a", "a")), np.zeros((2, 2), int))
            >>> scored["exact_match"].value, scored["exact_match"].per_example
            (0.5, (1.0, 0.0))
        """
        module = self._module()
        options = {**self.options, **({"per_example": True} if self.per_example else {})}
        result = _compute(module, self.name, column, options, "all rows")
        value = _headline(self.name, self.key, result, "all rows")
        if self.per_example:
            values = [float(v) for v in result["per_example"]]
        else:
            values = [self._one(module, column, i) for i in range(len(column.predictions))]
        interval = mean_ci(values, indices, proportion=self.proportion)
        return {self.name: Scored(value, tuple(values), interval)}

    def _one(self, module: Any, column: Column, i: int) -> float:
        one = Column((column.predictions[i],), (column.references[i],))
        result = _compute(module, self.name, one, self.options, f"example {i}")
        return _number(self.name, i, _headline(self.name, self.key, result, f"example {i}"))


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")

# Scripts written without spaces between words: each character is a word for ROUGE (as
# multilingual ROUGE setups split Chinese and Japanese); Han apart for BLEU's "zh" tokenizer.
_HAN, _OTHER_UNSPACED, _UNSPACED = HAN_RANGES, OTHER_UNSPACED_RANGES, UNSPACED_RANGES


def _in(ranges: tuple[tuple[int, int], ...], char: str) -> bool:
    return any(low <= ord(char) <= high for low, high in ranges)


def nfc(texts: Any) -> Any:
    """A text, or a list of texts or of lists of them, in Unicode NFC.

    The same letters can be stored precomposed (``é``) or as a letter and a combining mark
    (``e`` + U+0301); every text metric compares them after this, so both read alike.

    Examples:
        >>> nfc(["cafe\\u0301", ["e\\u0301"]]) == ["caf\\u00e9", ["\\u00e9"]]
        True
    """
    import unicodedata

    if isinstance(texts, str):
        return unicodedata.normalize("NFC", texts)
    return [nfc(text) for text in texts]


def bleu_tokenize(references: Any) -> str:
    """The sacrebleu tokenizer for these references, as sacrebleu advises for their script.

    ``"13a"`` (sacrebleu's default) splits at spaces, so an unspaced sentence is one word and
    a perfect Chinese or Thai answer scores 0. Chinese characters get ``"zh"``; when most
    words are of another script written without spaces (Japanese kana, Thai, Lao, Khmer,
    Myanmar: ``"ja-mecab"`` needs MeCab) ``"char"``; anything else ``"13a"``. Only the
    references decide, so every model's answers are scored alike.

    Examples:
        >>> bleu_tokenize(["the cat"]), bleu_tokenize(["猫在睡觉"]), bleu_tokenize(["猫が寝る"])
        ('13a', 'zh', 'char')
        >>> bleu_tokenize([["แมวนอน", "the cat"]])
        'char'
    """
    texts = [references] if isinstance(references, str) else nfc(list(references))
    texts = [t for text in texts for t in ([text] if isinstance(text, str) else text)]
    chars = [c for text in texts for c in text if _in(_UNSPACED, c)]
    words = sum(len(_words(text)) for text in texts)
    if 2 * len(chars) >= words and any(_in(_OTHER_UNSPACED, c) for c in chars):
        return "char"
    return "zh" if any(_in(_HAN, c) for c in chars) else "13a"


@dataclass(frozen=True)
class RougeWords:
    """rouge-score's tokenizer, for every script (ROUGE's default ``tokenizer``).

    rouge-score keeps only ``[a-z0-9]``, so identical Chinese, Russian or Arabic answers
    score 0. Here letters, digits and marks of any script make words, and a character of a
    script written without spaces is a word of its own. ASCII text gets rouge-score's own
    tokens (stemmed alike with ``use_stemmer=True``), so English scores are the published
    ones.

    Examples:
        >>> RougeWords()("The cat's hat!"), RougeWords()("Кошка спит."), RougeWords()("猫が寝る")
        (['the', 'cat', 's', 'hat'], ['кошка', 'спит'], ['猫', 'が', '寝', 'る'])
        >>> RougeWords(stem=True)("running dogs")
        ['run', 'dog']
    """

    stem: bool = False

    def __call__(self, text: str) -> list[str]:
        from rouge_score import tokenize

        stemmer = _porter() if self.stem else None
        if text.isascii():
            return tokenize.tokenize(text, stemmer)
        words = _words(text.lower())
        if stemmer is not None:
            words = [stemmer.stem(w) if len(w) > 3 and w.isascii() else w for w in words]
        return words


def _words(text: str) -> list[str]:
    import unicodedata

    words: list[str] = []
    word: list[str] = []
    for char in text:
        if _in(_UNSPACED, char):
            words += ["".join(word), char] if word else [char]
            word = []
        elif unicodedata.category(char)[0] in "LNM":
            word.append(char)
        elif word:
            words.append("".join(word))
            word = []
    return words + (["".join(word)] if word else [])


@functools.cache
def _porter() -> Any:
    from nltk.stem import porter

    return porter.PorterStemmer()


@dataclass(frozen=True)
class RougeScorer:
    """ROUGE through the shipped module: mean per-example F-measure per rouge type.

    The published module's default (``use_aggregator=True``) reports rouge-score's bootstrap
    median of this same mean, which differs from it only by resampling noise; the mean is
    deterministic, so the workbench reports it.

    Examples:
        >>> s = RougeScorer().score(Column(("a b",), ("a b",)), np.zeros((2, 1), int))
        >>> sorted(s), s["rouge1"].value
        (['rouge1', 'rouge2', 'rougeL', 'rougeLsum'], 1.0)
    """

    options: dict = field(default_factory=dict)

    def score(self, column: Column, indices: np.ndarray) -> dict[str, Scored]:
        """Score every rouge type.

        Examples:
            >>> RougeScorer({"rouge_types": ["rouge1"]}).score(
            ...     Column(("a",), ("b",)), np.zeros((1, 1), int))["rouge1"].value
            0.0
        """
        module = load_module(str(MODULES_DIR / "rouge"))
        options = {**self.options, "use_aggregator": False}
        if options.get("tokenizer") is None:
            options["tokenizer"] = RougeWords(bool(options.get("use_stemmer", False)))
        result = _compute(module, "rouge", column, options, "all rows")
        return {key: _mean_scored(list(result[key]), indices) for key in result}


@dataclass(frozen=True)
class SacreScorer:
    """Corpus BLEU or chrF through the shipped module, with a corpus-level bootstrap.

    The interval recomputes the corpus score on each resample from sacrebleu's sufficient
    statistics (as sacrebleu's own paired bootstrap does), so it is fast and exact. BLEU
    without a ``tokenize`` option gets :func:`bleu_tokenize`'s choice, reported in the
    score's ``settings``.

    Examples:
        >>> column = Column(("the cat",) * 10, ("the cat",) * 10)
        >>> s = SacreScorer("chrf").score(column, np.zeros((5, 10), int))
        >>> s["chrf"].value, s["chrf"].ci
        (100.0, (100.0, 100.0))
    """

    kind: Literal["bleu", "chrf"]
    options: dict = field(default_factory=dict)

    def score(self, column: Column, indices: np.ndarray) -> dict[str, Scored]:
        """Corpus score, sentence scores and interval.

        Examples:
            >>> s = SacreScorer("bleu").score(Column(("",), ("x",)), np.zeros((1, 1), int))
            >>> s["bleu"].value
            0.0
            >>> column = Column(("猫在睡觉",), ("猫在睡觉",))
            >>> s = SacreScorer("bleu").score(column, np.zeros((1, 1), int))
            >>> round(s["bleu"].value, 6), s["bleu"].settings
            (100.0, {'tokenize': 'zh'})
        """
        options = dict(self.options)
        if self.kind == "bleu" and options.get("tokenize") is None:
            options["tokenize"] = bleu_tokenize(column.references)
        module = load_module(str(MODULES_DIR / self.kind))
        result = _compute(module, self.kind, column, {**options, "per_example": True}, "all")
        statistic = self._statistic(column, options)
        values = tuple(float(v) for v in result["per_example"])
        interval = percentile_ci(statistic, indices)
        settings = {"tokenize": options["tokenize"]} if self.kind == "bleu" else {}
        return {self.kind: Scored(float(result["score"]), values, interval, settings)}

    def _statistic(self, column: Column, options: dict) -> Any:
        metric = self._sacrebleu(options)
        texts = nfc(list(column.predictions)), [nfc(list(column.references))]
        stats = np.asarray(metric._extract_corpus_statistics(*texts))

        def statistic(rows: np.ndarray) -> float:
            return float(metric._compute_score_from_stats(stats[rows].sum(axis=0).tolist()).score)

        return statistic

    def _sacrebleu(self, o: dict) -> Any:
        from sacrebleu import BLEU, CHRF

        if self.kind == "chrf":
            keys = ("char_order", "word_order", "beta", "lowercase", "whitespace", "eps_smoothing")
            return CHRF(**{k: o[k] for k in keys if k in o})
        return BLEU(
            lowercase=o.get("lowercase", False),
            force=o.get("force", False),
            tokenize=o.get("tokenize"),
            smooth_method=o.get("smooth_method", "exp"),
            smooth_value=o.get("smooth_value"),
            effective_order=o.get("use_effective_order", False),
        )


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


@dataclass(frozen=True)
class PerplexityScorer:
    """Perplexity of the reference given the prompt, from the losses the run computed.

    Per example ``exp(mean token NLL)``; the corpus value is their mean, as the published
    ``perplexity`` module's ``mean_perplexity`` (without loading a second model).

    Examples:
        >>> s = PerplexityScorer().score(Column(("",), ("",), (0.0,)), np.zeros((1, 1), int))
        >>> s["perplexity"].value
        1.0
    """

    def score(self, column: Column, indices: np.ndarray) -> dict[str, Scored]:
        """Exponentiate each loss and average; a loss past a float's range (a diverged
        model) gives an infinite perplexity, not an OverflowError that lost the answers.

        Examples:
            >>> col = Column(("", ""), ("", ""), (math.log(4), 800.0))
            >>> PerplexityScorer().score(col, np.zeros((1, 2), int))["perplexity"].per_example
            (4.0, inf)
        """
        return {"perplexity": _mean_scored([_exp(x) for x in column.losses], indices)}
