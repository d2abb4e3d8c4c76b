"""The diagnostic rules: one small pure function per rule, each returning a Finding or None.

Run rules read a run's history (a list of :class:`~workbench.train.records.LogRecord`); data
rules read :class:`~workbench.diagnostics.facts.DataFacts`; the evaluation rule reads an
evaluation's ``scores`` (and its rows, for a paired interval). Thresholds, and why:

===========================  =================================================================
rule (``kind``)              fires when
===========================  =================================================================
``run_failed``               the run failed (a collapse, a divergence, an error): its error,
                             which names what to change and what to go on from, comes first.
``overfitting``              the eval loss rose at ``patience`` (2) or more consecutive
                             evaluations, by at least ``min_rise`` (0.5%) in all, while the
                             smoothed training loss fell over the same span (smoothed: the
                             mean of the training losses logged since the previous
                             evaluation), and the latest eval loss is still above the rise's
                             start. Two rises in a row on a fixed validation set (no dropout
                             at evaluation) is the usual early-stopping patience; the 0.5%
                             ignores numerical wiggles of a plateau.
``flat_loss``                after at least 20% of the planned steps and at least 5 steps, a
                             least-squares line through the batch losses is not 95% sure of a
                             fall of 2% of the start or more (slope + 2 standard errors).
                             Batch losses are noisy, so comparing two windows is not enough
                             (Gemma at lr 1e-7 "fell" 13% between halves by chance). Any working
                             learning rate moves a fine-tune's loss clearly within a fifth of
                             the run; warm-up (3% by default) is over.
``grad_spikes``              a step's gradient norm (before clipping) is over 5x the median
                             of the 25 steps before it (at least 5 of them). A warning from
                             two such steps on, info for one: clipping (``max_grad_norm``)
                             absorbs an isolated spike.
``end_of_turn_untrained``    no training row has an end-of-turn token (the template's stop,
                             eos, or a special token the template writes after an answer)
                             among its trained labels: the model never learns to stop.
``answers_cut``              examples lose trained answer tokens at the cutoff (max_length,
                             or the model's context). A warning when a whole answer is lost
                             or at least 1% of a split's answers are cut, else info.
``validation_leak``          validation rows repeat training rows (the data report's ``leak``
                             problems: exact copies after normalising case and whitespace, or
                             near copies): any one inflates eval scores.
``worse_than_base``          a tuned score is below the base's. "significantly" when the 95%
                             paired bootstrap interval of the difference excludes 0 (or, for
                             corpus scores without per-row values, the two intervals do not
                             overlap): a warning; otherwise "may be": info.
===========================  =================================================================

Examples:
    >>> from workbench.train.records import LogRecord
    >>> history = [LogRecord("train", s, s / 10, loss=2.0, lr=1e-9) for s in range(1, 11)]
    >>> print(flat_loss(history, total_steps=40).text())  # doctest: +NORMALIZE_WHITESPACE
    [warning] The training loss is flat (step 10)
      evidence: after 10 of 40 steps the training loss is 2 (mean of the last 2 steps)
      against 2 at the start (mean of the first 2); a line fitted to all 10 losses is not
      surely falling by 2% or more (95% interval); the learning rate was at most 1e-09
      try: raise lr if it is tiny (LoRA usually trains at 1e-4 to 5e-4, full fine-tuning at
      1e-5 to 5e-5); otherwise check that anything trains: data.example(0) should show the
      answer tokens as trained (not masked)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import fmean
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.diagnostics.facts import DataFacts, data_facts
from workbench.diagnostics.findings import Finding
from workbench.evaluation.bootstrap import MIN_ROWS_FOR_AN_INTERVAL

if TYPE_CHECKING:
    from workbench.data import PreparedData
    from workbench.evaluation.results import Evaluation
    from workbench.train.records import LogRecord

__all__ = [
    "answers_cut",
    "diagnose",
    "diagnose_data",
    "diagnose_evaluation",
    "diagnose_run",
    "end_of_turn_untrained",
    "flat_loss",
    "grad_spikes",
    "overfitting",
    "run_failed",
    "validation_leak",
    "worse_than_base",
]

_LISTED = 3  # rows or steps named in an evidence line before "and N more"
_QUOTE = 60  # characters of a data row quoted in evidence


def _num(value: float) -> str:
    return f"{value:.4g}"


def _quote(text: str) -> str:
    text = " ".join(str(text).split())
    return "“" + (text if len(text) <= _QUOTE else text[: _QUOTE - 1] + "…") + "”"


def _listed(items: Sequence[str], total: int) -> str:
    more = f" and {total - len(items)} more" if total > len(items) else ""
    return ", ".join(items) + more


def _train_points(history: Sequence[LogRecord], field: str) -> list[tuple[int, float]]:
    return [
        (r.step, float(getattr(r, field)))
        for r in history
        if r.kind == "train" and getattr(r, field) is not None and math.isfinite(getattr(r, field))
    ]


# -- run rules ------------------------------------------------------------------------------
def overfitting(
    history: Sequence[LogRecord],
    patience: int = 2,
    min_rise: float = 0.005,
    early_stopping: int | None = None,
    weights_step: int | None = None,
) -> Finding | None:
    """Eval loss rising for ``patience`` evaluations in a row while the training loss falls.

    Of the qualifying rises the largest is reported (the latest on a tie), with the
    evaluation where the eval loss was lowest, which is where to stop.

    Args:
        history: A run's records, oldest first.
        patience: Consecutive rises needed.
        min_rise: Smallest total rise, as a fraction of the eval loss where it starts.

    Examples:
        >>> from workbench.train.records import LogRecord
        >>> evals = [3.0, 2.5, 2.6, 2.8, 2.9]
        >>> history = []
        >>> for step, (train, ev) in enumerate(zip([3.0, 2.0, 1.5, 1.0, 0.5], evals), 1):
        ...     history += [LogRecord("train", step, step / 5, loss=train),
        ...                 LogRecord("eval", step, step / 5, eval_loss=ev)]
        >>> finding = overfitting(history)
        >>> finding.kind, finding.step
        ('overfitting', 2)
        >>> print(finding.evidence)
        the eval loss rose at 3 consecutive evaluations, from 2.5 at step 2 to 2.9 at step 5 \
(+16%), while the training loss fell from 2 to 0.5; the lowest eval loss was 2.5 at step 2 \
(epoch 0.40)
        >>> overfitting(history[:6]) is None  # one rise is not a trend
        True
    """
    evals = [r for r in history if r.kind == "eval" and r.eval_loss is not None]
    evals = [r for r in evals if math.isfinite(r.eval_loss)]
    train = _train_points(history, "loss")
    if len(evals) <= patience or not train:
        return None
    smoothed = _smoothed_at_evals(train, [r.step for r in evals])
    latest = evals[-1].eval_loss
    best: tuple[float, int, int] | None = None  # (rise, start, end) of the chosen streak
    start = 0
    for end in range(1, len(evals) + 1):
        if end < len(evals) and evals[end].eval_loss > evals[end - 1].eval_loss:
            continue
        last = end - 1  # the streak evals[start..last] rises at every step
        first = evals[start].eval_loss
        rise = evals[last].eval_loss - first
        if (
            last - start >= patience
            and rise >= min_rise * abs(first)
            and latest > first
            and smoothed[last] is not None
            and smoothed[start] is not None
            and smoothed[last] < smoothed[start]
            and (best is None or rise >= best[0])
        ):
            best = (rise, start, last)
        start = end
    if best is None:
        return None
    rise, a, b = best
    lowest = min(evals, key=lambda r: r.eval_loss)
    first, last = evals[a], evals[b]
    now = (
        f"; it is {_num(latest)} at the latest evaluation (step {evals[-1].step})"
        if b < len(evals) - 1
        else ""
    )
    evidence = (
        f"the eval loss rose at {b - a} consecutive evaluations, from {_num(first.eval_loss)} "
        f"at step {first.step} to {_num(last.eval_loss)} at step {last.step} "
        f"(+{rise / abs(first.eval_loss):.0%}), while the training loss fell from "
        f"{_num(smoothed[a])} to {_num(smoothed[b])}{now}; the lowest eval loss was "
        f"{_num(lowest.eval_loss)} at step {lowest.step} (epoch {lowest.epoch:.2f})"
    )
    if early_stopping and weights_step == lowest.step:  # it ended on the best weights
        suggestion = (
            f"early_stopping={early_stopping} stopped the run and put back the weights of "
            f"step {lowest.step}, where the eval loss was lowest (run.weights_step); a lower "
            "lr, fewer epochs or more data also help"
        )
    elif early_stopping:  # still training, failed, or its best checkpoint is gone
        held = "its last step's" if weights_step is None else f"step {weights_step}'s"
        suggestion = (
            f"early_stopping={early_stopping} is set, but the model holds {held} weights, not "
            f"those of step {lowest.step}, where the eval loss was lowest: "
            "export(checkpoint=...) or evaluate(checkpoints=...) the checkpoint nearest it; "
            "a lower lr, fewer epochs or more data also help"
        )
    else:
        suggestion = (
            f"stop earlier: train for about {lowest.step} steps (max_steps={lowest.step}, or "
            f"epochs={max(lowest.epoch, 0.01):.2g}), or set early_stopping={patience} to stop "
            "when the eval loss stops improving; a lower lr, fewer epochs or more data also "
            "help"
        )
    return Finding(
        "overfitting",
        "warning",
        "Overfitting: the eval loss rises while the training loss falls",
        evidence,
        suggestion,
        step=first.step,
    )


def _smoothed_at_evals(train: list[tuple[int, float]], steps: list[int]) -> list[float | None]:
    """Mean training loss since the previous evaluation, at each evaluation step."""
    order = sorted(range(len(train)), key=lambda i: train[i][0])  # stable: the latest last
    at = np.array([train[i][0] for i in order], dtype=float)
    losses = [train[i][1] for i in order]
    out: list[float | None] = []
    previous = -math.inf
    for step in steps:
        start, end = np.searchsorted(at, [previous, step], side="right")
        if end > start:
            out.append(fmean(losses[start:end]))
        else:  # two evaluations at one step: the latest loss logged before it
            out.append(losses[end - 1] if end else None)
        previous = max(previous, step)
    return out


def flat_loss(
    history: Sequence[LogRecord],
    total_steps: int | None = None,
    min_fraction: float = 0.2,
    min_steps: int = 5,
    tolerance: float = 0.02,
) -> Finding | None:
    """The training loss is not clearly falling: lr too low, or nothing trains.

    Batch losses are noisy (each batch holds other rows), so two windows can differ by
    chance. The rule fits a straight line to the losses and reads its 95% interval: the run
    is flat when the fall the line is sure of (its slope's interval bound nearest to a
    rise) takes off less than ``tolerance`` of the starting loss over the steps done.

    Args:
        history: A run's records, oldest first.
        total_steps: Steps planned (``None``: unknown; only ``min_steps`` applies).
        min_fraction: Share of ``total_steps`` done before judging.
        min_steps: Steps done before judging.
        tolerance: Smallest fall, relative to the start, that counts as learning.

    Examples:
        >>> from workbench.train.records import LogRecord
        >>> falling = [LogRecord("train", s, 0.1, loss=3.0 - 0.1 * s) for s in range(1, 11)]
        >>> flat_loss(falling, total_steps=20) is None
        True
        >>> still = [LogRecord("train", s, 0.1, loss=3.0) for s in range(1, 4)]
        >>> flat_loss(still, total_steps=10) is None  # 3 steps: too early to say
        True
        >>> noisy = [1.89, 1.22, 1.01, 1.99, 1.77, 1.65, 1.29, 1.30, 1.42, 1.44, 0.90, 1.92]
        >>> flat_loss([LogRecord("train", s + 1, 0.1, loss=v) for s, v in enumerate(noisy)],
        ...           total_steps=12).kind  # up and down by batch, no trend: flat
        'flat_loss'
    """
    points = _train_points(history, "loss")
    if not points:
        return None
    done = points[-1][0]
    if done < min_steps or (total_steps and done < min_fraction * total_steps):
        return None
    w = min(10, max(1, len(points) // 4))
    start = fmean(v for _, v in points[:w])
    now = fmean(v for _, v in points[-w:])
    fall = _sure_fall(points)
    if start <= 0 or fall is None or fall > tolerance * start:
        return None
    lrs = [r.lr for r in history if r.kind == "train" and r.lr is not None]
    lr = f"; the learning rate was at most {max(lrs):.3g}" if lrs else ""
    of = f" of {total_steps}" if total_steps else ""
    evidence = (
        f"after {done}{of} steps the training loss is {_num(now)} (mean of the last {w} "
        f"steps) against {_num(start)} at the start (mean of the first {w}); a line "
        f"fitted to all {len(points)} losses is not surely falling by {tolerance:.0%} or more "
        f"(95% interval){lr}"
    )
    suggestion = (
        "raise lr if it is tiny (LoRA usually trains at 1e-4 to 5e-4, full fine-tuning at "
        "1e-5 to 5e-5); otherwise check that anything trains: data.example(0) should show "
        "the answer tokens as trained (not masked)"
    )
    return Finding(
        "flat_loss", "warning", "The training loss is flat", evidence, suggestion, step=done
    )


def _sure_fall(points: Sequence[tuple[int, float]]) -> float | None:
    """The fall over the steps done that a least-squares line is 95% sure of (may be < 0)."""
    n = len(points)
    if n < 3:
        return None
    xs = [float(x) for x, _ in points]
    ys = [float(y) for _, y in points]
    mx, my = fmean(xs), fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    residual = sum((y - my - slope * (x - mx)) ** 2 for x, y in zip(xs, ys, strict=True))
    se = math.sqrt(residual / (n - 2) / sxx)
    return (-slope - 2 * se) * (xs[-1] - xs[0])


def _running_medians(values: np.ndarray, window: int, first: int) -> np.ndarray:
    """The median of the ``window`` values before each value (fewer at the start), NaN
    before index ``first``: all at once, as the live monitor asks at every render."""
    from numpy.lib.stride_tricks import sliding_window_view

    medians = np.full(len(values), np.nan)
    for i in range(first, min(window, len(values))):
        medians[i] = np.median(values[:i])
    if len(values) > window:
        medians[window:] = np.median(sliding_window_view(values[:-1], window), axis=1)
    medians[:first] = np.nan
    return medians


def grad_spikes(
    history: Sequence[LogRecord], factor: float = 5.0, window: int = 25, min_history: int = 5
) -> Finding | None:
    """Steps whose gradient norm jumps over ``factor`` times the running median.

    Args:
        history: A run's records, oldest first.
        factor: How many times the median makes a spike.
        window: Steps before each step that the median is taken over.
        min_history: Steps needed before a step can be judged.

    Examples:
        >>> from workbench.train.records import LogRecord
        >>> norms = [1.0, 1.2, 0.9, 1.1, 1.0, 1.0, 9.0, 1.1, 1.0, 12.0]
        >>> history = [LogRecord("train", s, 0.1, loss=1.0, grad_norm=g)
        ...            for s, g in enumerate(norms, 1)]
        >>> finding = grad_spikes(history)
        >>> finding.severity, finding.step
        ('warning', 10)
        >>> print(finding.evidence)
        2 steps had a gradient norm over 5x the median of the steps before: step 7: 9 \
(9x the median 1), step 10: 12 (12x the median 1)
        >>> grad_spikes(history[:7]).severity  # one spike: clipping absorbs it
        'info'
    """
    points = _train_points(history, "grad_norm")
    if len(points) <= min_history:
        return None
    norms = np.array([g for _, g in points])
    medians = _running_medians(norms, window, min_history)
    spikes = [
        (points[i][0], float(norms[i]), float(medians[i]))
        for i in np.flatnonzero((medians > 0) & (norms > factor * medians))
    ]
    if not spikes:
        return None
    largest = sorted(spikes, key=lambda s: s[1] / s[2], reverse=True)[:_LISTED]
    listed = [f"step {s}: {_num(g)} ({g / m:.2g}x the median {_num(m)})" for s, g, m in spikes]
    listed = [text for spike, text in zip(spikes, listed, strict=True) if spike in largest]
    n = len(spikes)
    evidence = (
        f"{n} step{'s' if n > 1 else ''} had a gradient norm over {factor:g}x the median of "
        f"the steps before{' (the largest jumps)' if n > _LISTED else ''}: "
        f"{_listed(listed, n)}"
    )
    suggestion = (
        "lower lr (halve it) and keep max_grad_norm on (it clips each update); if the spikes "
        "come from a few rows, look at the batches of those steps for rows much longer than "
        "the rest or answers that contradict other rows"
    )
    return Finding(
        "grad_spikes",
        "warning" if n > 1 else "info",
        "Gradient-norm spikes",
        evidence,
        suggestion,
        step=largest[0][0],
    )


# -- data rules -----------------------------------------------------------------------------
def end_of_turn_untrained(facts: DataFacts) -> Finding | None:
    """No training row trains an end-of-turn token, so the model never learns to stop.

    Examples:
        >>> facts = DataFacts(train_rows=8, stop_tokens=("</s>",), stop_trained_rows=0,
        ...                   after_answer="\\n\\n")
        >>> print(end_of_turn_untrained(facts).evidence)
        none of the 8 training rows has '</s>' among its trained tokens; the template \
writes '\\n\\n' after an answer
        >>> end_of_turn_untrained(DataFacts(train_rows=8, stop_tokens=("</s>",),
        ...                                 stop_trained_rows=8)) is None
        True

        When no row trains anything (every turn weight 0), the template is not to blame:

        >>> end_of_turn_untrained(DataFacts(train_rows=8, stop_tokens=("</s>",),
        ...                                 stop_trained_rows=0, answered={"train": 0})) is None
        True
    """
    if not facts.train_rows or not facts.stop_tokens or facts.stop_trained_rows != 0:
        return None
    if facts.answered is not None and facts.answered.get("train") == 0:
        return None  # nothing trains at all (no_trained_tokens): the template is not why
    tokens = " or ".join(repr(t) for t in facts.stop_tokens)
    after = (
        f"; the template writes {facts.after_answer!r} after an answer"
        if facts.after_answer is not None
        else ""
    )
    n_cut = sum(c.split == "train" for c in facts.cut_answers)
    cut = (
        f"; {n_cut} training answers are cut at {facts.cutoff_source}={facts.cutoff}, which "
        "also cuts what ends them"
        if n_cut
        else ""
    )
    text_stop = (
        f"; {facts.stop_text!r} is no token of this tokenizer: the session's own generate "
        "stops at it by searching the text, and so does s.serve(), but an export (plain "
        "transformers, llama.cpp, another server) stops only at an end token, and writes on"
        if facts.stop_text
        else ""
    )
    evidence = (
        f"none of the {facts.train_rows} training rows has {tokens} among its trained "
        f"tokens{after}{cut}{text_stop}"
    )
    writes_stop = facts.after_answer is not None and any(
        t in facts.after_answer for t in facts.stop_tokens
    )
    if facts.stop_text:  # a built-in template on another family's tokenizer
        suggestion = (
            "use the tokenizer's own chat template (template='tokenizer'), or "
            "template='alpaca', which ends each answer with this tokenizer's eos token, so "
            "an export stops where the session does"
        )
    elif n_cut and writes_stop:  # the template is right; the cutoff removes its stop token
        suggestion = (
            "keep whole answers: raise max_length (or shorten the answers) so each example "
            "ends inside it; without a trained end-of-turn token the model never learns to "
            "stop and writes until max_new_tokens"
        )
    else:
        suggestion = (
            "use a template that ends each answer with the end-of-turn token "
            "(template='chatml', or the tokenizer's own), or write eos_token after the "
            "assistant content in a custom template; without it the model never learns to "
            "stop and writes until max_new_tokens"
        )
    return Finding(
        "end_of_turn_untrained",
        "warning",
        "The end-of-turn token is never trained",
        evidence,
        suggestion,
    )


def answers_cut(facts: DataFacts, share: float = 0.01) -> Finding | None:
    """Examples whose answers lose trained tokens at the cutoff.

    Args:
        facts: The data's facts.
        share: Share of a split's answers cut from which it is a warning (a whole answer
            lost is always a warning).

    Examples:
        >>> from workbench.diagnostics.facts import CutAnswer
        >>> facts = DataFacts(train_rows=200, cutoff=30, answered={"train": 200},
        ...                   cut_answers=(CutAnswer("train", 7, 70, 44, 40),))
        >>> finding = answers_cut(facts)
        >>> finding.severity, finding.evidence
        ('info', '1 of 200 training rows lose answer tokens at max_length=30 (train row 7: \
40 of 44 lost); the longest cut example has 70 tokens')
    """
    if not facts.cut_answers or facts.cutoff is None:
        return None
    answered = facts.answered or {}
    parts, serious = [], False
    for split, name in (("train", "training"), ("validation", "validation")):
        cut = [c for c in facts.cut_answers if c.split == split]
        if not cut:
            continue
        total = answered.get(split) or len(cut)
        whole = sum(c.whole for c in cut)
        serious |= whole > 0 or len(cut) >= share * total
        rows = [f"{split} row {c.row}: {c.lost} of {c.answer_tokens} lost" for c in cut]
        lost_all = f", {whole} of them entirely" if whole else ""
        parts.append(
            f"{len(cut)} of {total} {name} rows lose answer tokens at "
            f"{facts.cutoff_source}={facts.cutoff}{lost_all} "
            f"({_listed(rows[:_LISTED], len(cut))})"
        )
    longest = max(c.tokens for c in facts.cut_answers)
    evidence = "; ".join(parts) + f"; the longest cut example has {longest} tokens"
    if facts.cutoff_source == "context":
        suggestion = (
            f"shorten those examples, or choose a model with a longer context than "
            f"{facts.cutoff} tokens; a cut answer teaches the model to stop mid-answer"
        )
        title = "Answers cut by the model's context"
    else:
        room = longest if facts.context is None else min(longest, facts.context)
        beyond = (
            f" (the model reads at most {facts.context}: shorten the longer ones)"
            if room < longest
            else " (the longest cut example)"
        )
        suggestion = (
            f"raise max_length to {room}{beyond}, or shorten those answers; a cut answer "
            "teaches the model to stop mid-answer and never trains its end-of-turn token"
        )
        title = "Answers cut by max_length"
    return Finding("answers_cut", "warning" if serious else "info", title, evidence, suggestion)


def validation_leak(facts: DataFacts) -> Finding | None:
    """Validation rows that repeat training rows: eval loss and scores look too good.

    Examples:
        >>> from workbench.diagnostics.facts import Leak
        >>> leak = Leak(0, "same text as train row 3 (after normalising whitespace and case)",
        ...             "2+2?\\n4")
        >>> print(validation_leak(DataFacts(train_rows=9, validation_rows=2,
        ...                                 leaks=(leak,))).evidence)
        1 of 2 validation rows repeat training rows: validation row 0 (same text as train \
row 3 (after normalising whitespace and case)): “2+2? 4”
    """
    if not facts.leaks:
        return None
    n = len(facts.leaks)
    rows = [f"validation row {k.row} ({k.message}): {_quote(k.text)}" for k in facts.leaks]
    total = facts.validation_rows or n
    evidence = f"{n} of {total} validation rows repeat training rows: {_listed(rows[:_LISTED], n)}"
    suggestion = (
        "drop those rows from the validation split (or remove duplicates before splitting): "
        "eval loss and scores on rows the model trained on overstate how well it generalises"
    )
    return Finding(
        "validation_leak",
        "warning",
        "The validation split leaks training rows",
        evidence,
        suggestion,
    )


# -- evaluation rule ------------------------------------------------------------------------


def worse_than_base(
    scores: Mapping[str, Mapping[str, Any]],
    rows: Sequence[Any] = (),
    seed: int = 0,
    n_resamples: int = 1000,
) -> Finding | None:
    """Scores where the tuned model is below the base model on the held-out rows.

    The interval of the difference is a paired percentile bootstrap over the rows (seeded)
    when each row carries the score of both models and their mean is the score (exact
    match, ROUGE, perplexity, functions); for corpus scores (BLEU, chrF) the two models'
    own intervals stand in: not overlapping means significant.

    Args:
        scores: ``Evaluation.scores``.
        rows: ``Evaluation.rows`` (``EvalRow`` objects), for the paired interval.
        seed: Seed of the resamples.
        n_resamples: Bootstrap resamples.

    Examples:
        >>> scores = {"bleu": {"base": 30.0, "base_ci": (25.0, 35.0), "tuned": 28.0,
        ...                    "tuned_ci": (22.0, 33.0), "higher_is_better": True}}
        >>> finding = worse_than_base(scores)
        >>> finding.severity, finding.evidence
        ('info', 'bleu: tuned 28 vs base 30 (difference -2; the 95% intervals [22, 33] and \
[25, 35] overlap): may be worse')
        >>> worse_than_base({"bleu": {"base": 1.0, "tuned": 2.0}}) is None
        True

        Under :data:`MIN_ROWS_FOR_AN_INTERVAL` rows, no verdict is "significant":

        >>> from workbench.evaluation.results import EvalRow
        >>> rows = [EvalRow(0, "p", "r", {}, scores={"em": {"base": 1.0, "tuned": 0.0}})]
        >>> one = worse_than_base({"em": {"base": 1.0, "tuned": 0.0}}, rows)
        >>> one.severity, one.evidence.split("; ")[1]
        ('info', 'too few rows (1) for an interval): may be worse')
    """
    worse = []
    for name, s in scores.items():
        if s.get("base") is None or s.get("tuned") is None:
            continue
        base, tuned = float(s["base"]), float(s["tuned"])
        sign = 1.0 if s.get("higher_is_better", True) else -1.0
        if math.isnan(base) or math.isnan(tuned) or sign * (tuned - base) >= 0:
            continue
        worse.append((name, base, tuned, sign, s))
    if not worse:
        return None
    parts, significant = [], False
    few = 0 < len(rows) < MIN_ROWS_FOR_AN_INTERVAL
    for name, base, tuned, sign, s in worse:
        interval = _paired_interval(name, base, tuned, rows, seed, n_resamples)
        if few:  # a bootstrap over a handful of rows says nothing it can stand behind
            sure, how = False, f"too few rows ({len(rows)}) for an interval"
        elif interval is not None:
            lo, hi = interval
            sure = hi < 0 if sign > 0 else lo > 0
            how = f"95% CI of the difference [{_num(lo)}, {_num(hi)}]"
        elif s.get("base_ci") is not None and s.get("tuned_ci") is not None:
            (blo, bhi), (tlo, thi) = s["base_ci"], s["tuned_ci"]
            sure = thi < blo if sign > 0 else tlo > bhi
            how = (
                f"the 95% intervals [{_num(tlo)}, {_num(thi)}] and [{_num(blo)}, {_num(bhi)}] "
                + ("do not overlap" if sure else "overlap")
            )
        else:
            sure, how = False, "no interval"
        significant |= sure
        verdict = "significantly worse" if sure else "may be worse"
        parts.append(
            f"{name}: tuned {_num(tuned)} vs base {_num(base)} (difference "
            f"{_num(tuned - base)}; {how}): {verdict}"
        )
    n_rows = f" on {len(rows)} held-out rows" if rows else ""
    first = worse[0][0]
    suggestion = (
        f"read the rows the tuned model lost (evaluation.sorted_rows({first!r}, "
        "descending=False)); if the eval loss rose late in training, stop earlier; check that "
        "training and evaluation use the same template and stop token, and that the training "
        "answers look like the references"
    )
    return Finding(
        "worse_than_base",
        "warning" if significant else "info",
        "The tuned model scores below the base model" + n_rows,
        "; ".join(parts),
        suggestion,
    )


def _paired_interval(
    name: str, base: float, tuned: float, rows: Sequence[Any], seed: int, n_resamples: int
) -> tuple[float, float] | None:
    """95% percentile bootstrap interval of mean(tuned - base) over rows, when it applies."""
    values = [getattr(r, "scores", {}).get(name, {}) for r in rows]
    if not values or any("base" not in v or "tuned" not in v for v in values):
        return None
    b = np.array([float(v["base"]) for v in values])
    t = np.array([float(v["tuned"]) for v in values])
    # Only where the score is the mean of the rows' scores (not corpus BLEU/chrF).
    close_b = math.isclose(float(b.mean()), base, abs_tol=1e-9)
    if not (close_b and math.isclose(float(t.mean()), tuned, abs_tol=1e-9)):
        return None
    diff = t - b
    idx = np.random.default_rng(seed).integers(0, len(diff), size=(n_resamples, len(diff)))
    lo, hi = np.nanpercentile(diff[idx].mean(axis=1), [2.5, 97.5])
    return float(lo), float(hi)


# -- the run's end ----------------------------------------------------------------------------
def run_failed(error: str | None, step: int | None = None) -> Finding | None:
    """The run failed: its other findings describe the steps before, not a usable model.

    Examples:
        >>> run_failed(None) is None
        True
        >>> run_failed("the run collapsed at step 8: ...", 8).title
        'The run failed at step 8'
    """
    if not error:
        return None
    where = f" at step {step}" if step else ""
    return Finding(
        "run_failed",
        "warning",
        f"The run failed{where}",
        error,
        "follow the error's advice (what to change, what to go on from) before using this "
        "model: its weights are the failed run's",
        step=step,
    )


# -- combined -------------------------------------------------------------------------------
def diagnose_run(
    history: Sequence[LogRecord],
    total_steps: int | None = None,
    patience: int = 2,
    early_stopping: int | None = None,
    weights_step: int | None = None,
) -> list[Finding]:
    """Every run rule on a history (live or finished): overfitting, flat loss, spikes.

    Examples:
        >>> from workbench.train.records import LogRecord
        >>> history = [LogRecord("train", s, 0.1, loss=3.0 / s, grad_norm=1.0)
        ...            for s in range(1, 21)]
        >>> diagnose_run(history, total_steps=20)
        []
    """
    found = [
        overfitting(history, patience, early_stopping=early_stopping, weights_step=weights_step),
        flat_loss(history, total_steps),
        grad_spikes(history),
    ]
    return [f for f in found if f is not None]


def diagnose_data(data: PreparedData | DataFacts) -> list[Finding]:
    """Every data rule on prepared data (or on its :class:`DataFacts`).

    Examples:
        >>> diagnose_data(DataFacts(train_rows=8, stop_tokens=("</s>",), stop_trained_rows=8))
        []
    """
    facts = data if isinstance(data, DataFacts) else data_facts(data)
    found = [end_of_turn_untrained(facts), answers_cut(facts), validation_leak(facts)]
    return [f for f in found if f is not None]


def diagnose_evaluation(evaluation: Evaluation) -> list[Finding]:
    """The evaluation rule on an :class:`~workbench.evaluation.Evaluation`.

    Examples:
        >>> from workbench.evaluation.results import EvalRow, Evaluation
        >>> rows = tuple(EvalRow(i, "Q", "A", {"base": "A", "tuned": "B"},
        ...                      {"exact_match": {"base": 1.0, "tuned": 0.0}}) for i in range(12))
        >>> scores = {"exact_match": {"base": 1.0, "base_ci": (1.0, 1.0), "tuned": 0.0,
        ...                           "tuned_ci": (0.0, 0.0), "higher_is_better": True}}
        >>> [f.evidence for f in diagnose_evaluation(Evaluation(scores, rows, {}))]
        ['exact_match: tuned 0 vs base 1 (difference -1; 95% CI of the difference [-1, -1]): \
significantly worse']
    """
    settings = evaluation.settings or {}
    found = worse_than_base(
        evaluation.scores,
        evaluation.rows,
        seed=int(settings.get("seed", 0)),
        n_resamples=int(settings.get("n_resamples", 1000)),
    )
    return [found] if found is not None else []


def diagnose(
    history: Sequence[LogRecord] | None = None,
    data: PreparedData | DataFacts | None = None,
    evaluation: Evaluation | None = None,
    total_steps: int | None = None,
    early_stopping: int | None = None,
    failed: str | None = None,
    weights_step: int | None = None,
) -> list[Finding]:
    """All rules on whatever is given; warnings first, then infos (each in rule order).

    ``early_stopping``: the run's patience, when it had one (its advice differs);
    ``failed``: the run's error, when it failed; ``weights_step``: the step whose weights
    the model holds (``run.weights_step``), which the overfitting advice names.

    Examples:
        >>> diagnose()
        []
        >>> facts = DataFacts(train_rows=8, stop_tokens=("</s>",), stop_trained_rows=0)
        >>> [f.kind for f in diagnose(data=facts)]
        ['end_of_turn_untrained']
    """
    found: list[Finding] = []
    step = max((r.step for r in history or ()), default=None)
    found += [f for f in (run_failed(failed, step),) if f is not None]
    if history:
        found += diagnose_run(
            history, total_steps, early_stopping=early_stopping, weights_step=weights_step
        )
    if data is not None:
        found += diagnose_data(data)
    if evaluation is not None:
        found += diagnose_evaluation(evaluation)
    return sorted(found, key=lambda f: not f.is_warning)
