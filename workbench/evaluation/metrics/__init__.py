"""Metric registry: names resolve to scorers built on local evaluate modules (offline).

Each built-in metric is an evaluate module folder shipped inside this package (``rouge/``,
``bleu/``, ``chrf/``, ``exact_match/``), loaded with ``evaluate.load(<folder>)`` so nothing
is fetched from the hub. ``perplexity`` is computed from the loaded model itself.

=============  ===============================================================  ============
name           scores (keys of ``Evaluation.scores``)                            scale
=============  ===============================================================  ============
rouge          rouge1, rouge2, rougeL, rougeLsum: mean per-example F-measure     0-1
               (words of any script: :class:`~._scorers.RougeWords`)
bleu           bleu: sacrebleu corpus BLEU (evaluate's ``sacrebleu`` ``score``)  0-100
chrf           chrf: sacrebleu corpus chrF                                       0-100
exact_match    exact_match (``strip=True`` by default; published options work)  0-1
perplexity     perplexity: mean of exp(mean token NLL of the reference)         lower better
tool_calls     tool_calls: share of rows whose calls match the reference's      0-1
               (names and arguments, in any order; no call where none is due)
=============  ===============================================================  ============

Examples:
    >>> sorted(METRICS)
    ['bleu', 'chrf', 'exact_match', 'perplexity', 'rouge', 'tool_calls']
    >>> m = register_metric("starts_same", lambda p, r: p[:1] == r[:1])  # bools: pass/fail
    >>> resolve_metrics(["starts_same"])[0].name
    'starts_same'
    >>> _ = METRICS.pop("starts_same")  # the registry is process-wide: leave it as it was
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from workbench.errors import EvaluationError
from workbench.evaluation.metrics._scorers import (
    MODULES_DIR,
    ROUGE_TYPES,
    Column,
    FunctionScorer,
    ModuleScorer,
    PerplexityScorer,
    RougeScorer,
    SacreScorer,
    Scored,
    load_module,
)

__all__ = [
    "METRICS",
    "MODULES_DIR",
    "Column",
    "Metric",
    "Scored",
    "load_module",
    "module_path",
    "register_metric",
    "resolve_metrics",
    "same_tool_calls",
    "score_name_clash",
]


@dataclass(frozen=True)
class Metric:
    """A named metric: how to score a column, and which direction is better.

    Attributes:
        name: Registry name (``"rouge"``); its scores may have other names (``"rouge1"``).
        scorer: Object with ``score(column, indices) -> {score_name: Scored}``.
        higher_is_better: ``False`` for losses and perplexity (the gain sign flips).
        needs_model: Computed from the model's losses rather than from the generated text.
        options: Keyword options given to the evaluate module (see :meth:`with_options`).

    Examples:
        >>> METRICS["perplexity"].higher_is_better
        False
    """

    name: str
    scorer: Any
    higher_is_better: bool = True
    needs_model: bool = False
    options: dict = field(default_factory=dict)

    def with_options(self, **options: Any) -> Metric:
        """A copy whose evaluate module gets ``options`` (e.g. ``ignore_case=True``).

        Examples:
            >>> METRICS["exact_match"].with_options(ignore_case=True).options["ignore_case"]
            True
        """
        if not hasattr(self.scorer, "options"):
            msg = f"metric {self.name!r} takes no options (got {sorted(options)})"
            raise EvaluationError(msg)
        merged = {**self.scorer.options, **options}
        return replace(self, scorer=replace(self.scorer, options=merged), options=merged)

    def score_names(self) -> tuple[str, ...]:
        """The names of the scores this metric gives, as far as known before scoring (a
        custom ``score`` object may give others).

        Examples:
            >>> METRICS["rouge"].score_names(), METRICS["bleu"].score_names()
            (('rouge1', 'rouge2', 'rougeL', 'rougeLsum'), ('bleu',))
        """
        if isinstance(self.scorer, RougeScorer):
            return tuple(self.scorer.options.get("rouge_types", ROUGE_TYPES))
        return (self.name,)

    def score(self, column: Column, indices: Any) -> dict[str, Scored]:
        """Score one column (see :class:`~workbench.evaluation.metrics.Column`).

        Examples:
            >>> import numpy as np
            >>> METRICS["exact_match"].score(Column((" a\\n",), ("a",)), np.zeros((1, 1), int))[
            ...     "exact_match"].value
            1.0
        """
        return self.scorer.score(column, indices)


def module_path(name: str) -> str:
    """Folder of a shipped evaluate module, for ``evaluate.load(module_path("rouge"))``.

    Examples:
        >>> module_path("bleu").endswith("bleu")
        True
    """
    return str(MODULES_DIR / name)


METRICS: dict[str, Metric] = {}
"""Every metric name :func:`run_evaluation` accepts, mapped to its :class:`Metric`."""


def _from_object(name: str, metric: Any, higher_is_better: bool) -> Metric:
    import evaluate

    if isinstance(metric, Metric):
        return replace(metric, name=name)
    if isinstance(metric, evaluate.EvaluationModule):
        return Metric(name, ModuleScorer(metric, name), higher_is_better)
    if isinstance(metric, str):
        load_module(metric)  # fail now, naming the folder, not during an evaluation
        return Metric(name, ModuleScorer(metric, name), higher_is_better)
    if hasattr(metric, "score"):
        return Metric(name, metric, higher_is_better)
    if callable(metric):
        return Metric(name, FunctionScorer(metric, name), higher_is_better)
    msg = (
        f"metric {name!r}: cannot use {type(metric).__name__}; give a function "
        "f(prediction, reference) -> float, an evaluate.EvaluationModule or a module folder"
    )
    raise EvaluationError(msg)


def register_metric(
    name: str,
    metric: Callable[[str, str], float] | Any,
    higher_is_better: bool = True,
) -> Metric:
    """Register ``metric`` under ``name`` so ``run_evaluation(metrics=[name])`` finds it.

    Args:
        name: The name to use in ``metrics=[...]`` (replaces an existing one).
        metric: A function ``f(prediction, reference) -> float`` (averaged over rows; one
            returning bools is pass/fail and its score gets a Wilson interval), an
            ``evaluate.EvaluationModule``, a local evaluate module folder, a :class:`Metric`,
            or any object with ``score(column, indices)``.
        higher_is_better: ``False`` for error-like metrics.

    Returns:
        The registered :class:`Metric`.

    Examples:
        >>> register_metric("length_ratio", lambda p, r: len(p) / max(len(r), 1)).name
        'length_ratio'
        >>> _ = METRICS.pop("length_ratio")  # process-wide: other examples list METRICS
    """
    entry = _from_object(name, metric, higher_is_better)
    METRICS[name] = entry
    return entry


def _lookup(name: str) -> Metric:
    if name not in METRICS:
        msg = f"unknown metric {name!r}; known metrics: {', '.join(sorted(METRICS))}"
        raise EvaluationError(msg)
    return METRICS[name]


def _resolve_one(item: Any) -> Metric:
    if isinstance(item, str):
        return _lookup(item)
    name = getattr(item, "name", None) or getattr(item, "__name__", None) or type(item).__name__
    return _from_object(str(name), item, True)


def resolve_metrics(metrics: Sequence[Any] | Mapping[str, dict] | None) -> list[Metric]:
    """Turn names, functions, modules or ``{name: options}`` into :class:`Metric` entries.

    Raises:
        EvaluationError: An unknown name (the message lists the known ones), an unusable
            object, or two metrics with the same name.

    Examples:
        >>> [m.name for m in resolve_metrics({"exact_match": {"ignore_case": True}})]
        ['exact_match']
        >>> def short(prediction, reference):
        ...     return len(prediction) < 80
        >>> [m.name for m in resolve_metrics(short)]  # one function, as one name
        ['short']
        >>> resolve_metrics(["blue"])
        Traceback (most recent call last):
        workbench.errors.EvaluationError: unknown metric 'blue'; known metrics: ...
    """
    if metrics is None:
        metrics = ["rouge", "bleu", "exact_match"]
    if isinstance(metrics, str) or not isinstance(metrics, (Iterable, Mapping)):
        metrics = [metrics]  # one name, function or module
    if isinstance(metrics, Mapping):
        resolved = [_lookup(k).with_options(**(v or {})) for k, v in metrics.items()]
    else:
        resolved = [_resolve_one(item) for item in metrics]
    names = [m.name for m in resolved]
    if len(set(names)) != len(names):
        raise EvaluationError(f"metrics {names} name the same metric twice")
    given: dict[str, str] = {}
    for metric in resolved:
        for score in metric.score_names():
            if score in given:
                raise EvaluationError(score_name_clash(score, given[score], metric.name))
            if score in RESERVED_SCORE_NAMES:
                msg = (
                    f"metric {metric.name!r} gives a score named {score!r}, which the panel "
                    "and sorted_rows() use for the row order or the reference loss: give the "
                    "function another name (def my_loss(prediction, reference): ...)."
                )
                raise EvaluationError(msg)
            given[score] = metric.name
    return resolved


RESERVED_SCORE_NAMES = frozenset({"index", "loss"})
"""Names :meth:`~workbench.evaluation.Evaluation.sorted_rows` reads as the row's position and
its reference loss: a score of that name would be hidden behind them."""


def score_name_clash(score: str, first: str, second: str) -> str:
    """The refusal of two metrics that give a score of the same name (one would hide the
    other's).

    Examples:
        >>> score_name_clash("rougeL", "rouge", "rougeL")  # doctest: +ELLIPSIS
        "metrics 'rouge' and 'rougeL' both give a score named 'rougeL', so one would replace..."
    """
    return (
        f"metrics {first!r} and {second!r} both give a score named {score!r}, so one would "
        "replace the other; rename the function (or its name attribute)"
    )


def _register_builtins() -> None:
    em = ModuleScorer(
        module_path("exact_match"), "exact_match", options={"strip": True}, proportion=True
    )
    METRICS["exact_match"] = Metric("exact_match", replace(em, per_example=True))
    METRICS["rouge"] = Metric("rouge", RougeScorer())
    METRICS["bleu"] = Metric("bleu", SacreScorer("bleu"))
    METRICS["chrf"] = Metric("chrf", SacreScorer("chrf"))
    METRICS["perplexity"] = Metric("perplexity", PerplexityScorer(), False, needs_model=True)
    calls = FunctionScorer(same_tool_calls, "tool_calls", proportion=True)
    METRICS["tool_calls"] = Metric("tool_calls", calls)


def same_tool_calls(prediction: str, reference: str) -> float:
    """1.0 when the answer makes the reference's tool calls, else 0.0 (metric ``tool_calls``).

    Calls are read as :func:`~workbench.data.tool_calls.parse_tool_calls` reads them (the
    JSON forms of Hermes ``<tool_call>`` blocks, Mistral's ``[TOOL_CALLS]``, Llama 3's
    objects, pythonic ``[f(a=1)]`` lists and Gemma 3's ``tool_code`` fences, FunctionGemma's
    and Gemma 4's calls, Qwen3-Coder's
    ``<function=f>`` tags) and compared by name and arguments, in any order: a different
    JSON spacing or key order is the same call. A reference without calls wants none.

    Examples:
        >>> ref = '<tool_call>\\n{"name": "add", "arguments": {"a": 1, "b": 2}}\\n</tool_call>'
        >>> same_tool_calls('<tool_call>{"arguments": {"b": 2, "a": 1}, "name": "add"}', ref)
        1.0
        >>> same_tool_calls('<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>', ref)
        0.0
        >>> same_tool_calls("It is 3.", "It is three.")
        1.0
    """
    from workbench.data.tool_calls import parse_tool_calls

    def calls(text: str) -> list[str]:
        found = parse_tool_calls(text)
        return sorted(json.dumps(c["function"], sort_keys=True) for c in found)

    return float(calls(prediction) == calls(reference))


_register_builtins()
