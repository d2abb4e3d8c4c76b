"""What to train and how: :class:`LoRA` (the adapter) and :class:`TrainSpec` (the run).

Both are frozen dataclasses validated at construction, so a bad setting fails before anything
is loaded or written. Field names follow peft and transformers (``r``, ``alpha`` map to
``LoraConfig(r, lora_alpha)``; ``scheduler`` is a ``transformers.get_scheduler`` name).

Examples:
    >>> spec = TrainSpec(epochs=2, lr=2e-4, lora=LoRA(r=8))
    >>> spec.method, spec.lora.target
    ('lora', 'all-linear')
    >>> TrainSpec(lr=0)
    Traceback (most recent call last):
    ...
    workbench.errors.SpecError: lr=0 must be a number > 0 (LoRA usually trains well at 2e-4).
    >>> TrainSpec(lr=...)  # a workshop exercise's gap, not filled in yet
    Traceback (most recent call last):
    ...
    workbench.errors.SpecError: lr=... is a placeholder: fill in your answer.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from workbench._numbers import plain_fields
from workbench.errors import (
    OTHER_TOOLS_WORDS,
    SpecError,
    WorkbenchWarning,
    refuse_unknown,
    refuses_unknown_keywords,
)
from workbench.train.core import warmup_steps
from workbench.types import Method

__all__ = [
    "KEEP_ALL",
    "LoRA",
    "Method",
    "SchedulerName",
    "TrainSpec",
    "respec",
    "train_spec_from_settings",
]

POLYNOMIAL_END_LR = 1e-7  # transformers' get_polynomial_decay_schedule_with_warmup lr_end
SchedulerName = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"
]


# Learning rates above these are warned about: LoRA's usual range is 1e-4..5e-4 (the LoRA and
# QLoRA papers; peft's examples), full fine-tuning 1e-5..5e-5. The tiny test models train at
# 5e-3 with LoRA; lr=1000 collapses them to a uniform output (measured, tests/test_integrity_run).
_LR_WARN_ABOVE = {"lora": 1e-2, "full": 1e-3}

# ``keep_checkpoints=None`` or ``"all"``: keep every checkpoint (to fork from any of them, see
# workbench.train.fork). Stored as this count, which no run reaches, so the spec, run.json and
# the pruning in workbench.train.checkpoint keep dealing in plain integers.
KEEP_ALL = 1_000_000_000


def _placeholders(spec: Any) -> list[str | None]:
    """A field still holding an exercise's ``...``: said before any other check of it."""
    return [
        f"{f.name}=... is a placeholder: fill in your answer"
        for f in dataclasses.fields(spec)
        if getattr(spec, f.name) is Ellipsis
    ]


def _positive(name: str, value: Any, kind: type = int, zero: bool = False) -> str | None:
    if value is Ellipsis:
        return f"{name}=... is a placeholder: fill in your answer"
    ok = (isinstance(value, kind) and not isinstance(value, bool)) or (
        kind is float and isinstance(value, int) and not isinstance(value, bool)
    )
    if ok and math.isfinite(value) and (value >= 0 if zero else value > 0):
        return None
    bound = ">= 0" if zero else "> 0"
    noun = "an integer" if kind is int else "a number"
    return f"{name}={value!r} must be {noun} {bound}"


# torch.manual_seed takes 64-bit seeds; a larger one failed after the run folder was made.
_SEED_LIMIT = 2**63


def _seed_range(seed: int) -> str | None:
    return None if seed < _SEED_LIMIT else f"seed={seed!r} must be below 2**63"


def _choice(name: str, value: Any, literal: Any) -> str | None:
    options = get_args(literal)
    return None if value in options else f"{name}={value!r} is not one of {options}"


def _raise(problems: list[str | None], hint: str = "") -> None:
    found = [p for p in problems if p]
    if found:
        raise SpecError("; ".join(found) + (f" {hint}" if hint else "") + ".")


@refuses_unknown_keywords
@dataclass(frozen=True)
class LoRA:
    """A LoRA adapter (Hu et al. 2021, arXiv:2106.09685), optionally DoRA (arXiv:2402.09353).

    Attributes:
        r: Rank of the update matrices.
        alpha: Scaling numerator; the update is scaled by ``alpha / r``.
        dropout: Dropout on the adapter's input during training.
        target: ``"all-linear"`` (every linear layer but the output layer, the QLoRA recipe)
            or a list of module names such as ``["q_proj", "v_proj"]``.
        use_dora: Decompose into magnitude and direction (DoRA).

    Examples:
        >>> LoRA(r=8).alpha
        16
        >>> LoRA(r=8, target=["q_proj", "v_proj"]).target
        ('q_proj', 'v_proj')
    """

    r: int = 16
    alpha: float | None = None
    dropout: float = 0.05
    target: str | tuple[str, ...] = "all-linear"
    use_dora: bool = False

    def __post_init__(self) -> None:
        _raise(_placeholders(self))
        plain_fields(self)  # r=np.int64(8) from a sweep: an int, as run.json needs
        # alpha defaults to 2 * r, the common choice, so LoRA(r=8) scales updates by 2.
        if self.alpha is None and isinstance(self.r, int) and self.r > 0:
            object.__setattr__(self, "alpha", 2 * self.r)
        if isinstance(self.target, list):
            object.__setattr__(self, "target", tuple(self.target))
        target_ok = self.target == "all-linear" or (
            isinstance(self.target, tuple)
            and self.target
            and all(isinstance(t, str) and t for t in self.target)
        )
        _raise(
            [
                _positive("r", self.r),
                None if self.alpha is None else _positive("alpha", self.alpha, float),
                None
                if isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1
                else f"dropout={self.dropout!r} must be in [0, 1)",
                None
                if target_ok
                else f"target={self.target!r} must be 'all-linear' or a non-empty list of "
                "module names",
                None
                if isinstance(self.use_dora, bool)
                else f"use_dora={self.use_dora!r} must be a bool",
            ]
        )

    def to_peft(self) -> Any:
        """The equivalent ``peft.LoraConfig`` for a causal language model.

        Examples:
            >>> LoRA(r=4).to_peft().lora_alpha
            8
        """
        from workbench.train.core import lora_config

        return lora_config(self.r, self.alpha, self.dropout, self.target, self.use_dora)


@refuses_unknown_keywords
@dataclass(frozen=True)
class TrainSpec:
    """Every setting of a training run. Defaults follow the fine-tuning checklist.

    Attributes:
        method: ``"lora"``, ``"qlora"`` (LoRA on a base loaded with ``quantization="4bit"``,
            the QLoRA recipe) or ``"full"`` (every weight trains, no adapter).
        lora: The adapter (ignored for ``"full"``).
        epochs: Passes over the training data (used when ``max_steps`` is ``None``).
        max_steps: Optimizer steps to run; overrides ``epochs``.
        lr: Peak learning rate (2e-4 suits LoRA; use ~1e-5 for full fine-tuning).
        scheduler: A ``transformers.get_scheduler`` name.
        warmup: Warm-up: an ``int`` is steps, a ``float`` in [0, 1) a fraction of all steps.
        batch_size: Examples per forward pass, or ``"auto"``: the largest power of two (up
            to 8 on CPU, 64 on CUDA) whose estimated peak memory at the longest example fits
            (:mod:`workbench.train.batch_size`), chosen when the run starts and stored in
            the run's spec as a number; the reason is in ``run.choices``.
        grad_accum: Forward passes accumulated per optimizer step.
        weight_decay: AdamW decoupled weight decay (not applied to biases and norms).
        max_grad_norm: Clip the gradient norm to this (``None``: no clipping).
        grad_norm_limit: Stop the run (failed) when the gradient norm before clipping exceeds
            this: an exploding gradient. ``None`` turns the guard off (NaN/inf still stop).
        eval_every: Evaluate every N steps (``None``: about ten times per run).
        eval_rows: Validation rows each evaluation during training scores: its first N (the
            split is already a random draw), the same rows every time (``None``: all). A
            large validation split (10% of a million rows) made each evaluation cost more
            than the steps between them; the run's start says so.
        save_every: Checkpoint every N steps (``None``: about four times per run); a
            checkpoint is also written at the end.
        keep_checkpoints: How many of the newest checkpoints to keep. ``None`` or ``"all"``
            keeps every one (stored as :data:`KEEP_ALL`), so that ``run.fork(step=...)`` can
            start from any step a checkpoint was written at (with ``save_every``).
        seed: Seeds adapter initialisation, dropout, NEFTune noise and the data order.
        gradient_checkpointing: Keep only each block's input and recompute the rest in
            backward: on a GPU much less memory for about a third more compute. ``"auto"``
            turns it on for a quantized (4- or 8-bit) base on CUDA, as peft's QLoRA recipe
            does (such a run is about memory: on a Qwen2.5-0.5B shape, batch 8, the
            estimate goes from 0.8x to 0.3x Trainer + peft's QLoRA peak), and off
            otherwise; on CPU, where malloc kept most of what the forward freed, a step took
            1.5-2x as long for a peak 15-50% lower (:mod:`workbench.train.core`,
            ``CHECKPOINTS_QUANTIZED_ON``). Chosen when the run starts and stored in its spec
            as ``True`` or ``False``; when ``"auto"`` turned it on, ``run.choices`` says why.
        neftune_alpha: Noise on input embeddings (NEFTune, arXiv:2310.05914), e.g. 5.
        layer_lr_decay: Layer ``i`` of ``n`` trains at ``lr * decay ** (n - 1 - i)``, so lower
            layers learn more slowly; ``None`` or 1.0: one learning rate.
        early_stopping: Stop when the eval loss has not improved for this many evaluations in
            a row (``None``: off). Needs validation data.
        probe_max_new_tokens: Tokens generated per probe prompt at each evaluation.
        fast_loss: Compute logits only where labels are trained (same loss, less compute).
        track_layer_norms: After every step, record each transformer block's adapter weight
            and gradient norms (``run.layer_norms``, event ``train_layer_norms``); the
            monitor's teaching mode shows them as a heatmap.
        packing: Train on padding-free rows: each micro-batch's examples concatenated into
            one row with per-example positions (:mod:`workbench.train.packing`; same loss
            and gradients up to float rounding; with dropout, LoRA's or the model's, the
            random masks differ). ``"auto"`` packs on CUDA only (on CPU it did not pay:
            0.64x-1.02x tokens/s), ``True`` wherever the model keeps packed examples
            apart; a model that does not (ALiBi or
            mask-derived positions, an unknown attention kernel) or NEFTune falls back to
            padded batches with the reason in ``TrainLoop.packing``. A launched run
            (``launch=``) does not pack.
        compile: Run the training forward and backward under ``torch.compile``, with
            dynamic shapes: one graph for every batch width
            (:func:`~workbench.train.loop.compiled_loss_sum`).
            Evaluation, probes and ``generate`` stay eager. The first step pays the
            compilation (25-45 s for a tiny model on CPU, which then ran 1.2x faster); off by
            default until it is measured on a GPU
            (``benchmarks/gpu_throughput.py``, variant ``workbench-compile``).

    Examples:
        >>> TrainSpec(max_steps=60, lr=5e-3, batch_size=8).total_steps(64)
        60
        >>> TrainSpec(epochs=2, batch_size=8, grad_accum=2).total_steps(64)
        8
        >>> TrainSpec(keep_checkpoints="all").keep_checkpoints == KEEP_ALL
        True
        >>> TrainSpec(keep_checkpoints="some")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        workbench.errors.SpecError: keep_checkpoints='some' must be an integer > 0, or None ...
    """

    method: Method = "lora"
    lora: LoRA = field(default_factory=LoRA)
    epochs: float = 2
    max_steps: int | None = None
    lr: float = 2e-4
    scheduler: SchedulerName = "linear"
    warmup: int | float = 0.03
    batch_size: int | Literal["auto"] = 4
    grad_accum: int = 1
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    grad_norm_limit: float | None = 1e4
    eval_every: int | None = None
    eval_rows: int | None = None
    save_every: int | None = None
    keep_checkpoints: int | Literal["all"] | None = 2
    seed: int = 42
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    neftune_alpha: float | None = None
    layer_lr_decay: float | None = None
    early_stopping: int | None = None
    probe_max_new_tokens: int = 32
    fast_loss: bool = True
    track_layer_norms: bool = False
    packing: bool | Literal["auto"] = "auto"
    compile: bool = False

    def __post_init__(self) -> None:
        _raise(_placeholders(self))
        plain_fields(self)  # max_steps=np.int64(2) from a sweep: an int, as run.json needs
        if isinstance(self.lora, dict):
            object.__setattr__(self, "lora", LoRA(**self.lora))
        if self.keep_checkpoints is None or self.keep_checkpoints == "all":
            object.__setattr__(self, "keep_checkpoints", KEEP_ALL)
        _raise(self._problems())
        if (
            not isinstance(self.lr, (int, float))
            or isinstance(self.lr, bool)
            or not (math.isfinite(self.lr) and self.lr > 0)
        ):
            msg = f"lr={self.lr!r} must be a number > 0 (LoRA usually trains well at 2e-4)."
            raise SpecError(msg)
        self._warn_implausible_lr()

    def _warn_implausible_lr(self) -> None:
        """Warn when lr is far above what the method trains at (a run would likely diverge)."""
        limit = _LR_WARN_ABOVE["full" if self.method == "full" else "lora"]
        if self.lr > limit:
            usual = "1e-5 to 5e-5" if self.method == "full" else "1e-4 to 5e-4"
            text = (
                f"lr={self.lr:g} is far above what {self.method} usually trains at "
                f"({usual}); above {limit:g} a run often diverges or collapses to noise."
            )
            warnings.warn(text, WorkbenchWarning, stacklevel=4)

    def _problems(self) -> list[str | None]:
        optional = [
            ("max_steps", self.max_steps, int),
            ("eval_every", self.eval_every, int),
            ("eval_rows", self.eval_rows, int),
            ("save_every", self.save_every, int),
            ("early_stopping", self.early_stopping, int),
            ("neftune_alpha", self.neftune_alpha, float),
            ("grad_norm_limit", self.grad_norm_limit, float),
            ("max_grad_norm", self.max_grad_norm, float),
        ]
        decay = self.layer_lr_decay
        return [
            _choice("method", self.method, Method),
            _choice("scheduler", self.scheduler, SchedulerName),
            self._polynomial_problem(),
            None if isinstance(self.lora, LoRA) else f"lora={self.lora!r} must be a LoRA(...)",
            _positive("epochs", self.epochs, float),
            self._batch_size_problem(),
            _positive("grad_accum", self.grad_accum),
            _positive("weight_decay", self.weight_decay, float, zero=True),
            self._keep_problem(),
            _positive("seed", self.seed, zero=True) or _seed_range(self.seed),
            _positive("probe_max_new_tokens", self.probe_max_new_tokens),
            self._warmup_problem(),
            None
            if decay is None or (isinstance(decay, (int, float)) and 0 < decay <= 1)
            else f"layer_lr_decay={decay!r} must be in (0, 1] or None",
            None
            if isinstance(self.track_layer_norms, bool)
            else f"track_layer_norms={self.track_layer_norms!r} must be a bool",
            None
            if isinstance(self.compile, bool)
            else f"compile={self.compile!r} must be True or False",
            None
            if isinstance(self.packing, bool) or self.packing == "auto"
            else f"packing={self.packing!r} must be 'auto', True or False",
            None
            if isinstance(self.gradient_checkpointing, bool)
            or self.gradient_checkpointing == "auto"
            else (
                f"gradient_checkpointing={self.gradient_checkpointing!r} must be 'auto', "
                "True or False"
            ),
            *[_positive(n, v, k) for n, v, k in optional if v is not None],
        ]

    def _batch_size_problem(self) -> str | None:
        problem = None if self.batch_size == "auto" else _positive("batch_size", self.batch_size)
        return problem and f"{problem}, or 'auto'"

    def _keep_problem(self) -> str | None:
        if _positive("keep_checkpoints", self.keep_checkpoints) is None:
            return None
        return (
            f"keep_checkpoints={self.keep_checkpoints!r} must be an integer > 0, or None / "
            "'all' to keep every checkpoint"
        )

    def _polynomial_problem(self) -> str | None:
        """transformers' polynomial schedule decays to 1e-7: a rate at or below it is refused
        there, after the run folder was made; here it is refused first."""
        low = isinstance(self.lr, (int, float)) and 0 < self.lr <= POLYNOMIAL_END_LR
        if self.scheduler == "polynomial" and low:
            return (
                f"lr={self.lr!r} with scheduler='polynomial' must be above "
                f"{POLYNOMIAL_END_LR:g}, the rate that schedule decays to"
            )
        return None

    def _warmup_problem(self) -> str | None:
        if isinstance(self.warmup, bool):
            return f"warmup={self.warmup!r} must be an int (steps) or a float in [0, 1)"
        if isinstance(self.warmup, int):
            return _positive("warmup", self.warmup, zero=True)
        if isinstance(self.warmup, float) and 0 <= self.warmup < 1:
            return None
        return f"warmup={self.warmup!r} must be an int (steps) or a float fraction in [0, 1)"

    def total_steps(self, num_examples: int) -> int:
        """Optimizer steps the run will take over ``num_examples`` training examples.

        Examples:
            >>> TrainSpec(epochs=1, batch_size=4).total_steps(10)
            3
            >>> TrainSpec(epochs=1.1, batch_size=4).total_steps(200)  # 1.1 * 50 is 55.000...01
            55
        """
        if self.max_steps is not None:
            return self.max_steps
        if self.batch_size == "auto":
            raise SpecError("batch_size='auto' is chosen when the run starts; no steps before.")
        micro = math.ceil(num_examples / self.batch_size)
        # rounded first: a float product just above a whole number took one step more
        return max(1, math.ceil(round(self.epochs * micro / self.grad_accum, 9)))

    def warmup_steps(self, total: int) -> int:
        """Warm-up steps for a run of ``total`` steps (:func:`~workbench.train.core.warmup_steps`).

        Examples:
            >>> TrainSpec(warmup=0.1).warmup_steps(50), TrainSpec(warmup=3).warmup_steps(50)
            (5, 3)
        """
        return warmup_steps(self.warmup, total)

    def every(self, total: int) -> tuple[int, int]:
        """``(eval_every, save_every)`` resolved for a run of ``total`` steps.

        Examples:
            >>> TrainSpec().every(100)
            (10, 25)
        """
        return (self.eval_every or max(1, total // 10), self.save_every or max(1, total // 4))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``TrainSpec.from_dict`` reads it back.

        Examples:
            >>> TrainSpec.from_dict(TrainSpec(lr=1e-3).to_dict()).lr
            0.001
        """
        data = dataclasses.asdict(self)
        target = data["lora"]["target"]
        data["lora"]["target"] = target if isinstance(target, str) else list(target)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainSpec:
        """Rebuild a spec from :meth:`to_dict` output.

        Examples:
            >>> TrainSpec.from_dict({"lr": 1e-3, "lora": {"r": 4}}).lora.r
            4
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"unknown TrainSpec fields {unknown}; known: {sorted(known)}.")
        values = dict(data)
        if isinstance(values.get("lora"), dict):
            values["lora"] = LoRA(**values["lora"])
        return cls(**values)


def respec(spec: TrainSpec, **changes: Any) -> TrainSpec:
    """``spec`` with ``changes``, for choices made on the user's behalf (a batch size, a
    dropout, checkpointing): checked again, but not warned about again (its lr warning was
    given when the user made it).

    Examples:
        >>> respec(TrainSpec(), batch_size=2).batch_size
        2
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"lr=.* is far above", WorkbenchWarning)
        return dataclasses.replace(spec, **changes)


def train_spec_from_settings(
    call: str, settings: dict[str, Any], also: tuple[str, ...] = ()
) -> TrainSpec:
    """A :class:`TrainSpec` from a call's keywords; an unknown one is refused by name.

    ``also`` names the call's own keywords besides the spec's fields (told in the message).
    A keyword of the adapter given to the run (``r=8``, ``lora_alpha=16``) or of the data
    (``max_length``) is told where it belongs.

    Examples:
        >>> train_spec_from_settings("train()", {"lr": 1e-3}).lr
        0.001
        >>> try:
        ...     train_spec_from_settings("train()", {"lora_alpha": 8})
        ... except SpecError as err:
        ...     print(str(err).split(". It takes")[0])
        train() takes no lora_alpha= (a setting of the adapter: lora=wb.LoRA(alpha=...))
    """
    known = [f.name for f in dataclasses.fields(TrainSpec)] + list(also)
    refuse_unknown(call, settings, known, elsewhere=_belongs_elsewhere(settings, known))
    return TrainSpec(**settings)


def _belongs_elsewhere(settings: dict[str, Any], known: list[str]) -> dict[str, str]:
    """Where each of ``settings`` that a run does not take belongs: the adapter, the data."""
    adapter = {f.name for f in dataclasses.fields(LoRA)}
    where = {}
    for name in settings:
        word = OTHER_TOOLS_WORDS.get(name, name)
        if name in known or word in known:
            continue
        if word in adapter:
            where[name] = f"a setting of the adapter: lora=wb.LoRA({word}=...)"
        elif word == "max_length":
            where[name] = (
                "the data's cutoff: load_data(..., max_length=...) or s.set_max_length(...)"
            )
    return where
