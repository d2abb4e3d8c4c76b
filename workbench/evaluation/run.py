"""run_evaluation: generate with the tuned model and, adapter off, the base; score both.

:func:`run_evaluation` has an example on the tiny model; ``print(ev)`` then shows the score
table (base, tuned, their 95% intervals and the gain).
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from workbench._numbers import plain_fields
from workbench.errors import EvaluationError, SpecError, WorkbenchWarning, WriteError
from workbench.evaluation.bootstrap import N_RESAMPLES, resample_indices
from workbench.evaluation.metrics import Column, Metric, resolve_metrics, score_name_clash
from workbench.evaluation.perplexity import TokenLosses, encode_pair, reference_losses
from workbench.evaluation.probes import read_probes
from workbench.evaluation.results import EvalRow, Evaluation
from workbench.events import EVAL_DONE, EVAL_PROGRESS, EvalProgress

__all__ = ["EvalSpec", "answer_scorer", "is_peft_model", "run_evaluation", "validate_rows"]

Role = Literal["base", "tuned"]


@dataclass(frozen=True)
class EvalSpec:
    """How to run an evaluation (everything but the model, the rows and the metrics).

    Attributes:
        compare_base: Also generate with the adapter switched off (peft models only).
        max_new_tokens: Tokens generated per answer at most.
        generation: Extra ``generate`` keywords (greedy by default).
        limit: Evaluate only the first ``limit`` rows.
        stop_strings: Texts that end an answer (the template's end of turn).
        batch_size: Prompts per ``generate`` and per loss pass.
        plain_model_role: Column name for a model without an adapter.
        seed: Seed of the bootstrap resamples.
        n_resamples: Bootstrap resamples per interval.

    Examples:
        >>> EvalSpec(batch_size=0)
        Traceback (most recent call last):
        workbench.errors.SpecError: batch_size=0 must be a positive integer
    """

    compare_base: bool = True
    max_new_tokens: int = 64
    generation: dict = field(default_factory=dict)
    limit: int | None = None
    stop_strings: tuple[str, ...] = ()
    batch_size: int = 8
    plain_model_role: Role = "tuned"
    seed: int = 0
    n_resamples: int = N_RESAMPLES

    def __post_init__(self) -> None:
        plain_fields(self)  # limit=np.int64(8) from a sweep: an int
        for name in ("max_new_tokens", "batch_size", "n_resamples"):
            if not _positive_int(getattr(self, name)):
                raise SpecError(f"{name}={getattr(self, name)!r} must be a positive integer")
        if self.limit is not None and not _positive_int(self.limit):
            raise SpecError(f"limit={self.limit!r} must be a positive integer or None")
        if self.plain_model_role not in ("base", "tuned"):
            raise SpecError(f"plain_model_role={self.plain_model_role!r}: 'base' or 'tuned'")
        self._take_own_settings_from_generation()

    def _take_own_settings_from_generation(self) -> None:
        """``generation``'s ``stop_strings`` join the answers' own stops, as ``generate()``
        takes them; its ``max_new_tokens`` is refused, naming the argument that sets it (both
        failed as a TypeError, given twice to ``generate``)."""
        if not isinstance(self.generation, dict):
            raise SpecError(f"generation={self.generation!r} must be a dict of generate keywords")
        if "max_new_tokens" in self.generation:
            msg = (
                f"generation={{'max_new_tokens': {self.generation['max_new_tokens']!r}}}: give "
                "it as max_new_tokens=..., the evaluation's own setting"
            )
            raise SpecError(msg)
        if "stop_strings" not in self.generation:
            return
        generation = dict(self.generation)
        extra = generation.pop("stop_strings")
        extra = [extra] if isinstance(extra, str) else extra
        if not isinstance(extra, (list, tuple)) or not all(isinstance(t, str) and t for t in extra):
            raise SpecError(f"generation's stop_strings={extra!r} must be a list of texts")
        stops = tuple(dict.fromkeys([*self.stop_strings, *extra]))
        object.__setattr__(self, "stop_strings", stops)
        object.__setattr__(self, "generation", generation)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def validate_rows(rows: Sequence[dict] | None, limit: int | None = None) -> list[dict]:
    """Check rows (``prompt`` and ``reference`` strings) and apply ``limit``.

    Raises:
        EvaluationError: No rows, or a row without a string ``prompt``/``reference``.

    Examples:
        >>> validate_rows([{"prompt": "Q", "reference": 1}])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        workbench.errors.EvaluationError: row 0: field 'reference' must be a string...
    """
    if not rows:
        msg = "no rows to evaluate: give rows=[{'prompt': ..., 'reference': ...}, ...]"
        raise EvaluationError(msg)
    rows = list(rows)[:limit] if limit else list(rows)
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise EvaluationError(f"row {i}: expected a dict, got {type(row).__name__}")
        for key in ("prompt", "reference"):
            if key not in row:
                raise EvaluationError(f"row {i}: missing field {key!r} (has {sorted(row)})")
            if not isinstance(row[key], str):
                kind = type(row[key]).__name__
                raise EvaluationError(f"row {i}: field {key!r} must be a string, got {kind}")
        for key in ("prompt_ids", "reference_ids"):
            ids = row.get(key)
            if ids is not None and not (
                isinstance(ids, list) and all(type(t) is int and t >= 0 for t in ids)
            ):
                msg = f"row {i}: field {key!r} must be a list of token ids (ints >= 0)"
                raise EvaluationError(msg)
    return rows


def is_peft_model(model: Any) -> bool:
    """Whether ``model`` carries a peft adapter that can be switched off.

    Examples:
        >>> is_peft_model(object())
        False
    """
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def _columns(model: Any, spec: EvalSpec) -> list[Role]:
    if not is_peft_model(model):
        return [spec.plain_model_role]
    return ["base", "tuned"] if spec.compare_base else ["tuned"]


def _adapter(model: Any, role: Role) -> Any:
    # Base outputs come from the same weights with the adapter off: no second copy in memory.
    if role == "base" and is_peft_model(model):
        return model.disable_adapter()
    return contextlib.nullcontext()


Events = Any  # an EventHub (``emit(name, payload)``) or a callable ``fn(name, payload)``


def _emitter(events: Events) -> Callable[[str, Any], None]:
    if events is None:
        return lambda name, payload: None
    return events.emit if hasattr(events, "emit") else events


Cancelled = Callable[[], bool] | None  # asked between batches: True stops the evaluation


def _check_cancelled(cancelled: Cancelled, where: str) -> None:
    if cancelled is not None and cancelled():
        msg = f"the evaluation was cancelled {where}: nothing was saved; evaluate again for scores"
        raise EvaluationError(msg)


@dataclass(frozen=True)
class _Outputs:
    texts: list[str]
    losses: list[TokenLosses]


def _run_column(
    model: Any,
    tokenizer: Any,
    rows: list[dict],
    spec: EvalSpec,
    role: Role,
    emit: Callable[[str, Any], None],
    cancelled: Cancelled = None,
) -> _Outputs:
    from workbench.models.generation import generate_text

    prompts = [r.get("prompt_ids") or r["prompt"] for r in rows]
    texts: list[str] = []
    with _adapter(model, role):
        for start in range(0, len(prompts), spec.batch_size):
            _check_cancelled(cancelled, f"at {role} {start}/{len(prompts)}")
            batch = prompts[start : start + spec.batch_size]
            new = generate_text(
                model,
                tokenizer,
                batch,
                spec.max_new_tokens,
                stop_strings=list(spec.stop_strings),
                **spec.generation,
            )
            texts += new
            emit(EVAL_PROGRESS, EvalProgress(role, len(texts), len(prompts), tuple(new)))
        _check_cancelled(cancelled, f"after {role} {len(texts)}/{len(prompts)}")
        references = [r.get("reference_ids") or r["reference"] for r in rows]
        losses = reference_losses(model, tokenizer, prompts, references, spec.batch_size)
    return _Outputs(texts, losses)


def _score(
    metrics: list[Metric], outputs: dict[str, _Outputs], references: tuple[str, ...], spec: EvalSpec
) -> tuple[dict, dict]:
    """Scores with intervals, and per-example values ``{score: {role: [...]}}``."""
    indices = resample_indices(len(references), spec.n_resamples, spec.seed)
    scores: dict[str, dict[str, Any]] = {}
    per_example: dict[str, dict[str, tuple[float, ...]]] = {}
    given_by: dict[str, str] = {}
    for metric in metrics:
        for role, out in outputs.items():
            column = Column(tuple(out.texts), references, tuple(o.loss for o in out.losses))
            for name, scored in metric.score(column, indices).items():
                if given_by.setdefault(name, metric.name) != metric.name:
                    raise EvaluationError(score_name_clash(name, given_by[name], metric.name))
                entry = scores.setdefault(name, {"higher_is_better": metric.higher_is_better})
                entry[role], entry[f"{role}_ci"] = scored.value, scored.ci
                entry.update(scored.settings)  # what the metric chose itself (BLEU's tokenize)
                per_example.setdefault(name, {})[role] = scored.per_example
    return scores, per_example


def _rows(rows: list[dict], outputs: dict[str, _Outputs], per_example: dict) -> tuple:
    built = []
    for i, row in enumerate(rows):
        first = next(iter(outputs.values())).losses[i]
        built.append(
            EvalRow(
                index=i,
                prompt=row["prompt"],
                reference=row["reference"],
                outputs={role: out.texts[i] for role, out in outputs.items()},
                scores={
                    name: {role: v[i] for role, v in cols.items()}
                    for name, cols in per_example.items()
                },
                losses={role: out.losses[i].loss for role, out in outputs.items()},
                tokens=first.tokens,
                token_losses={role: out.losses[i].token_losses for role, out in outputs.items()},
                id=None if row.get("id") is None else str(row["id"]),
            )
        )
    return tuple(built)


def rows_fingerprint(rows: Sequence[dict]) -> str:
    """A short hash of the rows' prompts and references: two evaluations on the same rows
    share it, whatever their data was called (``data= (list)``, a file since changed).

    Examples:
        >>> rows_fingerprint([{"prompt": "Q", "reference": "A"}])
        '822a30b15b9dc9f1'
        >>> rows_fingerprint([{"prompt": "Q", "reference": "B"}]) != rows_fingerprint(
        ...     [{"prompt": "Q", "reference": "A"}])
        True
    """
    import hashlib

    digest = hashlib.sha256()
    for row in rows:
        text = json.dumps([row.get("prompt"), row.get("reference")], ensure_ascii=False)
        digest.update(text.encode("utf-8", "surrogatepass") + b"\n")
    return digest.hexdigest()[:16]


def _settings(
    model: Any, metrics: list[Metric], spec: EvalSpec, columns: list, rows: Sequence[dict]
) -> dict:
    return {
        "model": str(getattr(getattr(model, "config", None), "_name_or_path", "")),
        "metrics": [m.name for m in metrics],
        "metric_options": {m.name: m.options for m in metrics if m.options},
        "columns": list(columns),
        "rows": len(rows),
        "rows_fingerprint": rows_fingerprint(rows),
        "max_new_tokens": spec.max_new_tokens,
        "generation": spec.generation,
        "stop_strings": list(spec.stop_strings),
        "batch_size": spec.batch_size,
        "limit": spec.limit,
        "seed": spec.seed,
        "n_resamples": spec.n_resamples,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def evaluate_with_spec(
    model: Any,
    tokenizer: Any,
    rows: Sequence[dict],
    metrics: list[Metric],
    spec: EvalSpec,
    events: Events = None,
    cancelled: Cancelled = None,
    generated: dict[str, Any] | None = None,
) -> Evaluation:
    """Run an evaluation from a built :class:`EvalSpec` (what :func:`run_evaluation` calls).

    ``cancelled`` is asked before each batch; when it answers True the evaluation stops
    with an :class:`~workbench.errors.EvaluationError` saying so, before anything is saved.

    A metric that fails once the answers are generated (a user's function raising on one
    row) raises an :class:`~workbench.errors.EvaluationError` whose ``generated`` attribute
    holds the answers; given back as ``generated=``, for the same model, rows and spec, they
    are scored without generating them again.

    Examples:
        Rows are checked before the model is touched:

        >>> evaluate_with_spec(None, None, [], resolve_metrics(["rouge"]), EvalSpec())
        ... # doctest: +ELLIPSIS
        Traceback (most recent call last):
        workbench.errors.EvaluationError: no rows to evaluate: give rows=[{'prompt': ...
    """
    rows = validate_rows(rows, spec.limit)
    _try_the_metrics(metrics, rows)
    _check_the_context(model, tokenizer, rows, spec)
    columns = _columns(model, spec)
    emit = _emitter(events)
    if generated is not None and list(generated) == list(columns):
        outputs = generated
        for role, out in outputs.items():  # a progress panel shows them as if generated
            emit(EVAL_PROGRESS, EvalProgress(role, len(rows), len(rows), tuple(out.texts)))
    else:
        outputs = _generated(model, tokenizer, rows, spec, columns, emit, cancelled)
    references = tuple(r["reference"] for r in rows)
    try:
        scores, per_example = _score(metrics, outputs, references, spec)
    except EvaluationError as err:
        err.generated = outputs  # for the caller to keep: scoring again needs no generating
        raise
    settings = _settings(model, metrics, spec, columns, rows)
    return Evaluation(scores, _rows(rows, outputs, per_example), settings)


def _generated(
    model: Any,
    tokenizer: Any,
    rows: list[dict],
    spec: EvalSpec,
    columns: list[Role],
    emit: Callable[[str, Any], None],
    cancelled: Cancelled,
) -> dict[str, _Outputs]:
    """Each column's answers and reference losses, the model in eval mode meanwhile."""
    was_training = getattr(model, "training", False)
    model.eval()  # adapter dropout off: evaluation is deterministic
    try:
        return {
            role: _run_column(model, tokenizer, rows, spec, role, emit, cancelled)
            for role in columns
        }
    finally:
        model.train(was_training)


def _try_the_metrics(metrics: list[Metric], rows: list[dict]) -> None:
    """Score the first row's reference against itself with each built-in metric before
    anything is generated: one given options it does not take fails in a moment, not after
    every answer of both columns was generated. A user's own metric is not tried: it may
    need several rows, or answers in a form the reference does not have."""
    from workbench.evaluation.metrics import METRICS

    reference = rows[0]["reference"]
    column = Column((reference,), (reference,), (0.0,))
    indices = resample_indices(1, 2)
    for metric in metrics:
        if metric.name not in METRICS:
            continue
        try:
            metric.score(column, indices)
        except EvaluationError as err:
            msg = f"{err} (found before generating, on row 0's reference as the answer)"
            raise EvaluationError(msg) from err


def _ids(tokenizer: Any, row: dict) -> tuple[list[int], list[int]]:
    prompt, reference = row.get("prompt_ids") or row["prompt"], row.get("reference_ids")
    return encode_pair(tokenizer, prompt, reference or row["reference"])


def _check_the_context(model: Any, tokenizer: Any, rows: list[dict], spec: EvalSpec) -> None:
    """Before anything is generated: refuse rows whose prompt leaves no room to answer in the
    model's context; warn of references scored only as far as they fit."""
    from workbench.data.context import check_room, model_context

    config = getattr(model, "config", None)
    context = model_context(config)
    if context is None:
        return
    pairs = [_ids(tokenizer, row) for row in rows]
    check_room(
        [p for p, _ in pairs],
        spec.max_new_tokens,
        config,
        what="row",
        shorten="leave such rows out of the evaluation (evaluate(data=...) without them)",
    )
    cut = [k for k, (p, r) in enumerate(pairs) if len(p) + len(r) > context]
    if cut:
        listed = ", ".join(str(k) for k in cut[:8]) + (", ..." if len(cut) > 8 else "")
        which = f"row {listed} runs" if len(cut) == 1 else f"{len(cut)} rows ({listed}) run"
        msg = (
            f"{which} past the model's context of {context} tokens: the reference loss and "
            "perplexity cover the part of the reference that fits, as training cut it."
        )
        warnings.warn(msg, WorkbenchWarning, stacklevel=3)


def run_evaluation(
    model: Any,
    tokenizer: Any,
    rows: Sequence[dict] | None,
    metrics: Sequence[Any] | dict[str, dict] | None = ("rouge", "bleu", "exact_match"),
    compare_base: bool = True,
    max_new_tokens: int = 64,
    generation: dict | None = None,
    limit: int | None = None,
    out_dir: str | Path | None = None,
    stop_strings: Sequence[str] | None = None,
    batch_size: int = 8,
    events: Events = None,
    run_dir: str | Path | None = None,
    seed: int = 0,
    cancelled: Cancelled = None,
    about: dict[str, Any] | None = None,
    plain_model_role: Role = "tuned",
    generated: dict[str, Any] | None = None,
) -> Evaluation:
    """Generate answers for ``rows`` with the tuned and the base model and score both.

    With a peft model, the tuned answers come from the model as it is and the base answers
    from the same weights inside ``model.disable_adapter()``: no second copy in memory. A
    plain model gives one column (``"tuned"``). Prompts are batched with left padding and
    stop at ``stop_strings`` (pass the template's end of turn, e.g. ``["<|im_end|>"]``) or
    eos. The loss of each reference given its prompt, per example and per token, is always
    recorded (for sorting, for ``perplexity`` and for the panel's token view).

    Args:
        model: A ``PeftModel`` (tuned) or a plain causal LM.
        tokenizer: Its tokenizer.
        rows: ``[{"prompt": rendered prompt, "reference": answer, "id": optional}, ...]``;
            optional ``"prompt_ids"`` and ``"reference_ids"`` (the tokens training saw:
            :meth:`~workbench.data.PreparedData.inference_ids`) are used instead of
            tokenizing the texts again.
        metrics: Names from :data:`~workbench.evaluation.METRICS`, functions
            ``f(prediction, reference) -> float``, ``evaluate.EvaluationModule`` instances, or
            ``{name: options}`` (e.g. ``{"exact_match": {"ignore_case": True}}``).
        compare_base: Also evaluate the base model (adapter off).
        max_new_tokens: Tokens generated per answer at most.
        generation: Extra ``generate`` keywords; greedy by default.
        limit: Evaluate only the first ``limit`` rows.
        out_dir: Save the evaluation there (atomically) and set ``Evaluation.path``.
        stop_strings: Texts that end an answer; cut from the output.
        batch_size: Prompts per batch.
        events: An ``EventHub`` or ``fn(name, payload)``: ``eval_progress`` (after each batch,
            with the batch's answers) and ``eval_done``.
        run_dir: A training run folder; its ``probes.jsonl`` is kept for the panel's timeline,
            and its name in the settings (``"run"``), where ``compare`` looks for it.
        seed: Seed of the bootstrap intervals.
        cancelled: ``fn() -> bool``, asked before each batch (and before scoring): True stops
            the evaluation with an ``EvaluationError`` and nothing is saved
            (:mod:`workbench.evaluation.background` uses it for ``cancel()``).
        about: More for the settings to record, shown by ``compare`` (the Session's:
            ``data``, what the rows are; ``adapter_strength`` when it is not 1).
        plain_model_role: The column of a model without an adapter: ``"tuned"`` (a merged
            model), or ``"base"`` (one nothing tuned).
        generated: The answers an earlier call generated before its scoring failed (its
            error's ``generated``): scored instead of generating again. Give them only for
            the same model, rows and settings.

    Returns:
        The :class:`~workbench.evaluation.Evaluation`.

    Raises:
        EvaluationError: No rows, a malformed row, an unknown metric (the message lists the
            known ones), a metric that raises or returns a non-number (names the metric
            and the example), or ``cancelled`` answered True.

    Examples:
        On the tiny model, a plain model (one ``"tuned"`` column; a peft model adds
        ``"base"``, its answers with the adapter switched off):

        >>> from workbench.models.loading import load_model
        >>> from workbench.models.tiny import build_tiny_model
        >>> loaded = load_model(str(build_tiny_model("/tmp/wb-doc-run-model")), on_event=len)
        >>> tok = loaded.tokenizer
        >>> prompt = tok.apply_chat_template([{"role": "user", "content": "apple"}],
        ...                                  tokenize=False, add_generation_prompt=True)
        >>> seen = []
        >>> ev = run_evaluation(loaded.model, tok, [{"prompt": prompt, "reference": "red"}],
        ...                     metrics=["exact_match"], max_new_tokens=4,
        ...                     stop_strings=["<|im_end|>"], out_dir="/tmp/wb-doc-run-eval",
        ...                     events=lambda name, payload: seen.append(name))
        >>> ev.columns, list(ev.scores), seen
        (('tuned',), ['exact_match'], ['eval_progress', 'eval_done'])
        >>> ev.rows[0].tokens, sorted(p.name for p in ev.path.iterdir())
        (('re', 'd'), ['rows.jsonl', 'scores.json', 'settings.json'])
    """
    resolved = resolve_metrics(metrics)
    spec = EvalSpec(
        compare_base,
        max_new_tokens,
        dict(generation or {}),
        limit,
        tuple(stop_strings or ()),
        batch_size,
        plain_model_role,
        seed=seed,
    )
    evaluation = evaluate_with_spec(
        model, tokenizer, rows, resolved, spec, events, cancelled, generated
    )
    if run_dir is not None or about:
        probes = read_probes(run_dir) if run_dir is not None else ()
        settings = {**evaluation.settings, **(about or {})}
        if run_dir is not None:  # compare([run_dir]) finds it by this name
            settings["run"] = Path(run_dir).name
        evaluation = Evaluation(evaluation.scores, evaluation.rows, settings, None, probes)
    if out_dir is not None:
        evaluation = _saved(evaluation, out_dir)
    _emitter(events)(EVAL_DONE, evaluation)
    return evaluation


def _saved(evaluation: Evaluation, folder: str | Path) -> Evaluation:
    """The evaluation saved in ``folder``; where it cannot be written (a full disk), the
    finished evaluation unsaved, with a warning, rather than its answers lost."""
    try:
        return evaluation.save(folder)
    except WriteError as err:
        msg = (
            f"the evaluation is done but could not be saved ({err}); it is returned unsaved: "
            "ev.save(folder) writes it where there is room"
        )
        warnings.warn(msg, WorkbenchWarning, stacklevel=4)
        return evaluation


def answer_scorer(
    rows: Sequence[dict],
    stop_strings: Sequence[str] | None = None,
    metrics: Sequence[str] = ("exact_match", "rouge"),
    keep: Sequence[str] = ("exact_match", "rougeL"),
    max_new_tokens: int = 64,
) -> Callable[[Any, Any], dict[str, float]]:
    """A ``score(model, tokenizer) -> {name: value}`` of a model's answers to ``rows``.

    Each call evaluates the model it is given (no base column) and keeps the scores named in
    ``keep``: ``Session.quantize`` scores the model before and after quantizing with it.

    Examples:
        >>> from transformers import AutoModelForCausalLM, AutoTokenizer
        >>> from workbench.models.tiny import build_tiny_model
        >>> path = build_tiny_model("/tmp/wb-doc-answer-scorer")
        >>> model = AutoModelForCausalLM.from_pretrained(path)
        >>> score = answer_scorer([{"prompt": "Say red.", "reference": "red"}])
        >>> score(model, AutoTokenizer.from_pretrained(path))  # the tiny model knows nothing
        {'exact_match': 0.0, 'rougeL': 0.0}
    """

    def score(model: Any, tokenizer: Any) -> dict[str, float]:
        evaluation = run_evaluation(
            model,
            tokenizer,
            rows,
            metrics=list(metrics),
            compare_base=False,
            max_new_tokens=max_new_tokens,
            stop_strings=stop_strings,
        )
        return {name: s["tuned"] for name, s in evaluation.scores.items() if name in keep}

    return score
