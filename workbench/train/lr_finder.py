"""The learning-rate range test: a short sweep that suggests the ``lr`` for ``s.train``.

Leslie Smith's range test ("Cyclical Learning Rates for Training Neural Networks", WACV 2017,
arXiv:1506.01186), as fast.ai's ``lr_find`` runs it: one optimizer step per learning rate,
the rates growing exponentially from ``start_lr`` to ``end_lr``; the loss of each step is
smoothed (a debiased exponential moving average) and the sweep stops early once the smoothed
loss passes ``diverge_factor`` (4) times its minimum.

The suggestion is the rate where the smoothed loss falls fastest (fast.ai's "steep"): the
most negative slope ``(s[i+1] - s[i]) / (ln lr[i+1] - ln lr[i])``, reported at its left point
``lr[i]``, searched from point ``skip = min(round(smoothing / (1 - smoothing)), n // 4)`` on
(``LRFinderResult.skipped``): the average's first points rest on one or two noisy batches,
and their chance dips would otherwise win (fast.ai v1 skipped the first 10 of 100 for this).
Two other classic readings are kept in ``alternatives``: ``"minimum/10"`` (a tenth of the
rate at the lowest smoothed loss) and fast.ai's ``"valley"``.

The moving average's weight is 0.8, not fast.ai's 0.98: 0.98 averages over ~50 steps, most of
a 60-step sweep, so its curve lags and early noise decides the suggestion (on the tiny test
model it suggested the first rate, 1e-7). On simulated 60-step sweeps (a noisy logistic fall
of 1.5-4 nats centred between 1e-5.5 and 1e-3, batch noise 0.1, 0.3, 0.6) the suggestion fell
within half a decade of the true steepest rate in 92%, 82% and 65% of sweeps with 0.8 and the
skip, 71%, 70% and 61% with 0.98 and the skip, 61%, 30% and 10% with fast.ai's 0.98 and no
skip; it sat a median 0.2 decade above the true point (the average's lag).

The sweep trains with the pieces a run uses (:mod:`~workbench.train.batches`,
:mod:`~workbench.train.loss`, AdamW groups of :func:`~workbench.train.prepare.optimizer_groups`,
gradient clipping, the spec's adapter) and leaves the model exactly as it found it:

* a model without an adapter (before training) gets a temporary one built from the settings,
  removed afterwards with peft's ``unload()``: every weight, module, hook, flag and config
  value is the base model's again;
* a model that already carries an adapter (after ``s.train`` or ``s.load_adapter``) trains
  that adapter, starting from its current values (the sweep then says how fast it can go on
  learning); its tensors are copied first and written back bit for bit;
* ``method="full"`` copies every weight first and writes them back.

In all three, ``requires_grad`` flags, gradients, train/eval modes and the torch, numpy and
Python random states are restored too.

Examples:
    >>> from workbench.models.loading import load_model
    >>> from workbench.models.tiny import build_tiny_model
    >>> loaded = load_model(str(build_tiny_model("/tmp/wb-doc-lr-finder-tiny")),
    ...                     on_event=lambda message: None)
    >>> tok = loaded.tokenizer
    >>> ids = [tok(f"{n} => {c}").input_ids for n, c in (("cat", "red"), ("dog", "blue"))]
    >>> before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    >>> result = find_lr(loaded.model, tok, {"input_ids": ids, "labels": ids},
    ...                  {"batch_size": 2}, num_steps=12)
    >>> result.lrs[0], len(result.lrs) <= 12, result.lrs[0] <= result.suggested_lr <= 1.0
    (1e-07, True, True)
    >>> after = loaded.model.state_dict()
    >>> sorted(after) == sorted(before) and all(after[k].equal(v) for k, v in before.items())
    True
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workbench._numbers import plain_number
from workbench._quiet import quiet_third_party
from workbench.errors import DataError, SpecError, TrainingError, WorkbenchWarning
from workbench.train.batches import Examples, collate
from workbench.train.core import IGNORE_INDEX, BatchPlan, pad_id
from workbench.train.guards import is_out_of_memory, out_of_memory_error
from workbench.train.loss import token_loss_sum
from workbench.train.precision import training_precision
from workbench.train.prepare import (
    add_neftune,
    check_model,
    fit_spec_to_model,
    optimizer_groups,
    wrap_model,
)
from workbench.train.spec import TrainSpec, train_spec_from_settings

__all__ = [
    "SWEEP_OPTIONS",
    "LRFinderResult",
    "exponential_lrs",
    "find_lr",
    "format_lr",
    "skipped_points",
    "smooth_losses",
    "steepest_index",
    "valley_index",
]

# The sweep's own keywords; every other keyword of ``Session.find_lr`` is a TrainSpec field.
SWEEP_OPTIONS = ("start_lr", "end_lr", "num_steps", "smoothing", "diverge_factor")
MIN_FALL = 0.02  # the smoothed loss must fall this share below its start for a suggestion
# TrainSpec fields a sweep has no use for: it sets the rate itself, one step per rate.
SWEEP_IGNORES = ("lr", "scheduler", "warmup", "epochs", "max_steps", "eval_every", "save_every")
MIN_STEPS = 5  # fewer points leave no slope to read


def format_lr(lr: float) -> str:
    """A learning rate in two significant digits, as users write it (``3.2e-4``).

    Examples:
        >>> format_lr(0.00031622), format_lr(1.0), format_lr(2e-10)
        ('3.2e-4', '1.0e0', '2.0e-10')
    """
    mantissa, exponent = f"{lr:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def exponential_lrs(start_lr: float, end_lr: float, num_steps: int) -> np.ndarray:
    """``num_steps`` learning rates from ``start_lr`` to ``end_lr``, a constant ratio apart.

    Examples:
        >>> exponential_lrs(1e-4, 1e-1, 4).round(6).tolist()
        [0.0001, 0.001, 0.01, 0.1]
    """
    return start_lr * (end_lr / start_lr) ** (np.arange(num_steps) / (num_steps - 1))


def smooth_losses(losses: Sequence[float], smoothing: float = 0.8) -> np.ndarray:
    """The debiased exponential moving average of ``losses`` (fast.ai's, Adam's bias fix).

    ``avg = smoothing * avg + (1 - smoothing) * loss``, divided by ``1 - smoothing ** (i + 1)``
    so the first points are not pulled toward 0.

    Examples:
        >>> smooth_losses([4.0, 2.0], smoothing=0.5).tolist()  # (0.5*2 + 0.25*4) / 0.75
        [4.0, 2.6666666666666665]
    """
    out, avg = [], 0.0
    for i, loss in enumerate(losses):
        avg = smoothing * avg + (1 - smoothing) * float(loss)
        out.append(avg / (1 - smoothing ** (i + 1)))
    return np.array(out, dtype=np.float64)


def skipped_points(count: int, smoothing: float) -> int:
    """How many first points the suggestion skips: the moving average's lag, at most a quarter.

    Examples:
        >>> skipped_points(60, 0.8), skipped_points(60, 0.0), skipped_points(8, 0.98)
        (4, 0, 2)
    """
    lag = round(smoothing / (1 - smoothing)) if smoothing < 1 else count
    return max(0, min(lag, count // 4))


def steepest_index(lrs: Sequence[float], smoothed: Sequence[float], skip: int = 0) -> int:
    """Index ``i >= skip`` of the most negative slope of ``smoothed`` over ``ln(lr)`` (i to i+1).

    Examples:
        >>> steepest_index([1e-3, 1e-2, 1e-1, 1.0], [5.0, 4.5, 2.0, 9.0])
        1
        >>> steepest_index([1e-3, 1e-2, 1e-1, 1.0, 10.0], [5.0, 1.0, 2.0, 1.5, 9.0], skip=1)
        2
    """
    lrs, smoothed = np.asarray(lrs, dtype=np.float64), np.asarray(smoothed, dtype=np.float64)
    skip = max(0, min(skip, len(lrs) - 2))
    if len(lrs) < 2:
        return 0
    slopes = np.diff(smoothed[skip:]) / np.diff(np.log(lrs[skip:]))
    return skip + int(np.argmin(slopes))


def valley_index(losses: Sequence[float]) -> int:
    """fast.ai's "valley": about halfway along the longest run of falling losses.

    The longest decreasing subsequence of the curve marks its valley; a point about halfway
    along it learns fast and stays well below the rate of the minimum (fast.ai's rule, its
    indexing kept as it is).

    Examples:
        >>> valley_index([6.0, 6.2, 5.0, 4.0, 3.0, 2.0, 1.0, 1.5, 8.0])
        3
    """
    n = len(losses)
    longest = [1] * n
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
            if longest[end] < longest[i]:
                end, start = i, i - longest[i]
    sections = (end - start) / 3
    return min(n - 1, max(0, start + int(sections) + int(sections / 2)))


@dataclass(frozen=True, repr=False)
class LRFinderResult:
    """The curve of a learning-rate sweep and the rate it suggests.

    Attributes:
        lrs: The learning rate of each recorded step (the top layer's, as a run logs it).
        losses: The training loss of each step, before its update.
        smoothed: ``losses`` smoothed (:func:`smooth_losses`).
        suggested_lr: Where the smoothed loss falls fastest (:func:`steepest_index`, from
            point ``skipped`` on).
        reason: One sentence on why this rate (or why the curve gives no good one).
        diverged_at: The rate at which the sweep stopped because the loss blew up (the
            smoothed loss passed ``diverge_factor`` times its minimum, or was not finite);
            ``None`` when the sweep reached ``end_lr``.
        alternatives: Other readings of the curve: ``"minimum/10"`` and ``"valley"``.
        start_lr: The sweep's first rate.
        end_lr: The rate it would have reached without diverging.
        num_steps: The steps it planned.
        adapter: What trained: ``"temporary"`` (an adapter attached for the sweep and
            removed), ``"existing"`` (the model's own adapter, restored) or ``"full"``.
        skipped: The first points left out of the search for the suggestion
            (:func:`skipped_points`).

    Examples:
        >>> lrs = exponential_lrs(1e-5, 1.0, 6)
        >>> result = LRFinderResult.from_curve(lrs, [5.0, 4.9, 4.0, 2.5, 2.4, 30.0], 0.0)
        >>> format_lr(result.suggested_lr), result.diverged_at
        ('1.0e-3', None)
        >>> result
        LRFinderResult(suggested_lr=1.0e-3, steps=6/6, diverged_at=None)
    """

    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    smoothed: tuple[float, ...]
    suggested_lr: float
    reason: str
    diverged_at: float | None = None
    alternatives: Mapping[str, float] = field(default_factory=dict, hash=False)
    start_lr: float = 1e-7
    end_lr: float = 1.0
    num_steps: int = 0
    adapter: str = "temporary"
    skipped: int = 0

    @classmethod
    def from_curve(
        cls,
        lrs: Sequence[float],
        losses: Sequence[float],
        smoothing: float = 0.8,
        diverged_at: float | None = None,
        end_lr: float | None = None,
        num_steps: int | None = None,
        adapter: str = "temporary",
    ) -> LRFinderResult:
        """Smooth a recorded curve and read the suggestion off it.

        Examples:
            >>> result = LRFinderResult.from_curve([1e-4, 1e-3, 1e-2], [3.0, 1.0, 0.9], 0.0)
            >>> result.suggested_lr, result.alternatives["minimum/10"]
            (0.0001, 0.001)
        """
        if not len(lrs) or len(lrs) != len(losses):
            raise SpecError(f"a curve needs as many losses as rates, at least one: {len(lrs)}.")
        lrs = [float(lr) for lr in lrs]
        smoothed = smooth_losses(losses, smoothing)
        skipped = skipped_points(len(lrs), smoothing)
        index = steepest_index(lrs, smoothed, skipped)
        suggested = lrs[index]
        first = float(smoothed[min(skipped, len(lrs) - 1)])
        fell = first - float(np.min(smoothed[skipped:])) if skipped < len(lrs) else 0.0
        # A drop of a rounding error on a flat or noisy curve is not a loss that falls.
        falls = (
            len(lrs) > 1 and smoothed[index + 1] < smoothed[index] and fell >= MIN_FALL * abs(first)
        )
        if falls:
            reason = "the loss falls fastest here"
        elif len(lrs) > 1:
            reason = (
                f"the loss did not fall by {MIN_FALL:.0%} anywhere in the sweep, so no rate "
                "here trains well: check the data, or sweep lower with start_lr="
            )
        else:
            reason = "the loss blew up at the first step: sweep lower with start_lr="
        return cls(
            lrs=tuple(lrs),
            losses=tuple(float(x) for x in losses),
            smoothed=tuple(float(x) for x in smoothed),
            suggested_lr=suggested,
            reason=reason,
            diverged_at=diverged_at,
            alternatives={
                "minimum/10": lrs[int(np.argmin(smoothed))] / 10,
                "valley": lrs[valley_index(smoothed.tolist())],
            },
            start_lr=lrs[0],
            end_lr=float(end_lr if end_lr is not None else lrs[-1]),
            num_steps=int(num_steps if num_steps is not None else len(lrs)),
            adapter=adapter,
            skipped=skipped,
        )

    @property
    def advice(self) -> str:
        """One line: the suggested rate, why, and what to do with it.

        Examples:
            >>> LRFinderResult.from_curve([1e-4, 1e-3, 1e-2], [3.0, 1.0, 0.9], 0.0).advice
            'suggested lr 1.0e-4: the loss falls fastest here; use it as lr= in s.train'
        """
        lr = format_lr(self.suggested_lr)
        if self.reason.startswith("the loss falls fastest"):
            return f"suggested lr {lr}: {self.reason}; use it as lr= in s.train"
        return f"suggested lr {lr} (unreliable): {self.reason}"

    def panel(self) -> Any:
        """The sweep's notebook panel, a :class:`~workbench.widgets.lr_finder_panel.LRFinderPanel`.

        Examples:
            >>> result = LRFinderResult.from_curve([1e-4, 1e-3, 1e-2], [3.0, 1.0, 0.9], 0.0)
            >>> panel = result.panel()
            >>> "<svg" in panel.svg(), 'src="data:image/svg+xml;base64,' in panel.html()
            (True, True)
        """
        from workbench.widgets.lr_finder_panel import LRFinderPanel

        return LRFinderPanel(self)

    def to_dict(self) -> dict[str, Any]:
        """The sweep as JSON-ready values.

        Examples:
            >>> LRFinderResult.from_curve([1e-4, 1e-3], [3.0, 1.0], 0.0).to_dict()["lrs"]
            [0.0001, 0.001]
        """
        return {
            "lrs": list(self.lrs),
            "losses": list(self.losses),
            "smoothed": list(self.smoothed),
            "suggested_lr": self.suggested_lr,
            "reason": self.reason,
            "diverged_at": self.diverged_at,
            "alternatives": dict(self.alternatives),
            "start_lr": self.start_lr,
            "end_lr": self.end_lr,
            "num_steps": self.num_steps,
            "adapter": self.adapter,
            "skipped": self.skipped,
        }

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.panel()._repr_mimebundle_(**kwargs)

    def __str__(self) -> str:
        return self.panel().text()

    def __repr__(self) -> str:
        diverged = None if self.diverged_at is None else format_lr(self.diverged_at)
        return (
            f"LRFinderResult(suggested_lr={format_lr(self.suggested_lr)}, "
            f"steps={len(self.lrs)}/{self.num_steps}, diverged_at={diverged})"
        )


# -- keeping the model as it was ------------------------------------------------------------
_MUTABLE = (dict, list, set)


class _Snapshot:
    """Everything a sweep may change on a model besides trained weights, to put back after.

    Per module: its attribute dictionary (training flag, hooks, child modules, parameters,
    gradient checkpointing flags...), with dictionaries and lists copied since they change in
    place; per parameter: its dtype, ``requires_grad`` and gradient; the configs; the RNGs.
    """

    def __init__(self, model: Any) -> None:
        import torch

        self.modules = [(m, self._copy_attrs(m)) for m in model.modules()]
        self.params = [(p, p.dtype, p.requires_grad, p.grad) for p in model.parameters()]
        configs = {id(c): c for m in model.modules() if _is_config(c := getattr(m, "config", 0))}
        self.configs = [(c, dict(vars(c))) for c in configs.values()]
        self.structure = _structure(model)
        self.rng = (
            torch.get_rng_state(),
            torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
            np.random.get_state(),
            random.getstate(),
        )

    @staticmethod
    def _copy_attrs(module: Any) -> dict[str, tuple[Any, Any]]:
        return {
            k: (v, v.copy() if isinstance(v, _MUTABLE) else None) for k, v in vars(module).items()
        }

    def restore(self, model: Any) -> None:
        import torch

        for module, attrs in self.modules:
            current = vars(module)
            for key in [k for k in current if k not in attrs]:
                del current[key]
            for key, (value, copy) in attrs.items():
                if copy is not None:
                    _refill(value, copy)
                current[key] = value
        with torch.no_grad():
            for param, dtype, requires_grad, grad in self.params:
                if param.dtype != dtype:
                    param.data = param.data.to(dtype)
                param.requires_grad_(requires_grad)
                param.grad = grad
        for config, values in self.configs:
            for key in [k for k in vars(config) if k not in values]:
                del vars(config)[key]
            for key, value in values.items():
                if vars(config).get(key, _MISSING) is not value:
                    vars(config)[key] = value
        cpu, cuda, numpy_state, python_state = self.rng
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        np.random.set_state(numpy_state)
        random.setstate(python_state)
        if _structure(model) != self.structure:  # pragma: no cover - a peft change would show
            msg = (
                "the learning-rate sweep could not restore the model's modules exactly; load "
                "it again with load_model(...) before training (and report this as a bug)."
            )
            raise TrainingError(msg)


_MISSING = object()


def _refill(value: Any, copy: Any) -> None:
    """Put ``copy``'s items back into the container ``value`` in place (hook handles see it)."""
    if isinstance(value, list):
        value[:] = copy
    else:
        value.clear()
        value.update(copy)


def _is_config(value: Any) -> bool:
    return hasattr(value, "to_json_string") and hasattr(value, "__dict__")


def _structure(model: Any) -> list[tuple[str, str]]:
    """Module names and class names, parameter names, dtypes and shapes."""
    modules = [(name, type(m).__name__) for name, m in model.named_modules()]
    params = [(name, f"{p.dtype}{tuple(p.shape)}") for name, p in model.named_parameters()]
    return modules + params


def _adapter_parameters(model: Any) -> list[Any]:
    """The tensors of the model's active adapter(s), each once."""
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    found: dict[int, Any] = {}
    for module in model.modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        for layer_name in module.adapter_layer_names:
            layer = getattr(module, layer_name, None)
            for adapter in module.active_adapters:
                if layer is None or adapter not in layer:
                    continue
                item = layer[adapter]
                params = [item] if isinstance(item, torch.nn.Parameter) else item.parameters()
                found.update((id(p), p) for p in params)
    return list(found.values())


def _prepare(model: Any, spec: TrainSpec, settings: Mapping[str, Any]) -> tuple[Any, str]:
    """Make ``model`` trainable for the sweep; returns the model to train and what trains."""
    import torch

    if not hasattr(model, "peft_config"):
        check_model(model, spec)
        spec, _ = fit_spec_to_model(model, spec)  # a sweep of a few steps: no need to warn
        quiet_third_party()  # peft reads a deprecated transformers property as it wraps
        return wrap_model(model, spec), "full" if spec.method == "full" else "temporary"
    if spec.method == "full" or "lora" in settings:
        given = "method='full'" if spec.method == "full" else "lora="
        msg = (
            f"{given} cannot apply: the model already carries an adapter, and the sweep trains "
            "a copy of that adapter. For a fresh adapter with other settings, load the base "
            "model again (load_model(...)) and call find_lr(...) before training."
        )
        raise SpecError(msg)
    adapter = _adapter_parameters(model)
    if not adapter:
        raise SpecError("the model's adapter has no LoRA tensors to train; find_lr needs LoRA.")
    torch.manual_seed(spec.seed)
    for param in model.parameters():
        param.requires_grad_(False)
    for param in adapter:
        param.requires_grad_(True)
    return model.train(), "existing"


def _as_spec(spec: Any, settings: dict[str, Any]) -> TrainSpec:
    if isinstance(spec, TrainSpec):
        return spec
    if spec is not None and not isinstance(spec, Mapping):
        raise SpecError(f"spec={spec!r} must be a TrainSpec(...) or a dict of its fields.")
    return train_spec_from_settings("find_lr()", settings, tuple(SWEEP_OPTIONS))


def _check_sweep(start_lr: Any, end_lr: Any, num_steps: Any, smoothing: Any, factor: Any) -> None:
    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    problems = [
        None
        if number(start_lr) and 0 < start_lr < math.inf
        else f"start_lr={start_lr!r} must be a number > 0",
        None
        if number(end_lr) and number(start_lr) and start_lr < end_lr < math.inf
        else f"end_lr={end_lr!r} must be a number above start_lr={start_lr!r}",
        None
        if isinstance(num_steps, int) and not isinstance(num_steps, bool) and num_steps >= MIN_STEPS
        else f"num_steps={num_steps!r} must be an integer >= {MIN_STEPS}",
        None
        if number(smoothing) and 0 <= smoothing < 1
        else f"smoothing={smoothing!r} must be in [0, 1)",
        None if number(factor) and factor > 1 else f"diverge_factor={factor!r} must be above 1",
    ]
    found = [p for p in problems if p]
    if found:
        raise SpecError("; ".join(found) + ".")


def _examples(train_dataset: Any) -> Examples:
    if train_dataset is None:
        msg = (
            "find_lr needs training data (tokenized input_ids and labels): load data first "
            "(Session.load_data(...))."
        )
        raise SpecError(msg)
    examples = Examples.from_dataset(train_dataset, "train")
    trained = np.flatnonzero(examples.trained_tokens() > 0)
    if not len(trained):
        msg = (
            "no training example has a trained token (every label is -100 after the shift): "
            "the sweep has no loss to follow. Check the template's answer masking."
        )
        raise DataError(msg)
    return examples.subset(trained)


def find_lr(
    model: Any,
    tokenizer: Any,
    train_dataset: Any,
    spec: TrainSpec | Mapping[str, Any] | None = None,
    start_lr: float = 1e-7,
    end_lr: float = 1.0,
    num_steps: int = 60,
    smoothing: float = 0.8,
    diverge_factor: float = 4.0,
    on_event: Callable[[str], Any] | None = None,
) -> LRFinderResult:
    """Sweep the learning rate exponentially, one optimizer step each, and suggest one.

    The model is left exactly as it was (see the module doc). Each step is a training step of
    the spec (``batch_size`` x ``grad_accum`` examples), so the sweep costs about as much as
    ``num_steps`` steps of ``s.train``; 60 steps (fast.ai takes 100) keep it short on a CPU
    and still put about 7 points in each tenfold of the rate from 1e-7 to 1. Fewer rows than
    the sweep needs are cycled (in the run's shuffled, length-grouped order).

    Args:
        model: A causal LM: the base (a temporary adapter is attached from ``spec``), or one
            that carries an adapter (that adapter's copy trains).
        tokenizer: Its tokenizer (for the padding id).
        train_dataset: Tokenized data, as for a run: ``input_ids``, ``labels`` (-100 = not
            trained), optionally ``attention_mask``; raw text with ``labels = input_ids`` works.
        spec: A :class:`TrainSpec`, or a dict of its fields (the keywords of ``s.train``);
            its method, adapter, batch size, accumulation, weight decay, clipping, layer-wise
            decay, seed, NEFTune and gradient checkpointing apply. Its ``lr``, schedule and
            length do not: the sweep sets the rate itself.
        start_lr: The first rate.
        end_lr: The last rate, reached unless the loss diverges first.
        num_steps: Steps (rates) in the sweep.
        smoothing: Weight of the debiased moving average of the loss (0: none).
        diverge_factor: Stop once the smoothed loss passes this multiple of its minimum.
        on_event: Called with a progress message now and then.

    Raises:
        SpecError: a bad setting, no training data, or (with an adapter already on the model)
            ``lora=`` or ``method="full"``, which cannot change that adapter.
        DataError: no example has a trained token.
        TrainingError: the first loss is not finite.
        OutOfMemoryError: one step of the spec's batch did not fit.

    Examples:
        >>> from workbench.models.loading import load_model
        >>> from workbench.models.tiny import build_tiny_model
        >>> loaded = load_model(str(build_tiny_model("/tmp/wb-doc-lr-finder-tiny")),
        ...                     on_event=lambda message: None)
        >>> tok = loaded.tokenizer
        >>> ids = [tok("cat => red").input_ids, tok("dog => blue").input_ids]
        >>> messages = []
        >>> result = find_lr(loaded.model, tok, {"input_ids": ids, "labels": ids},
        ...                  TrainSpec(batch_size=2), num_steps=10, end_lr=10.0,
        ...                  on_event=messages.append)
        >>> result.adapter, hasattr(loaded.model, "peft_config")
        ('temporary', False)
        >>> messages[-1].startswith("lr finder: suggested lr ")
        True
        >>> find_lr(loaded.model, tok, None)
        Traceback (most recent call last):
        workbench.errors.SpecError: find_lr needs training data (tokenized input_ids and \
labels): load data first (Session.load_data(...)).
    """
    settings = dict(spec) if isinstance(spec, Mapping) else {}
    ignored = [name for name in SWEEP_IGNORES if name in settings]
    if ignored:
        msg = (
            f"find_lr ignores {', '.join(f'{n}=' for n in ignored)}: the sweep sets the rate "
            "itself, one step per rate (start_lr=, end_lr=, num_steps= shape it)."
        )
        warnings.warn(msg, WorkbenchWarning, stacklevel=2)
    spec = _as_spec(spec, settings)
    sweep = (start_lr, end_lr, num_steps, smoothing, diverge_factor)
    start_lr, end_lr, num_steps, smoothing, diverge_factor = map(plain_number, sweep)
    _check_sweep(start_lr, end_lr, num_steps, smoothing, diverge_factor)
    examples = _examples(train_dataset)
    lrs = exponential_lrs(float(start_lr), float(end_lr), num_steps)
    say = on_event or (lambda message: None)
    snapshot = _Snapshot(model)
    trained: Any = None
    neftune = None
    kept: list[tuple[Any, Any]] = []
    try:
        trained, adapter = _prepare(model, spec, settings)
        known = {id(p) for p, *_ in snapshot.params}
        kept = [
            (p, p.detach().to("cpu", copy=True))
            for p in trained.parameters()
            if p.requires_grad and id(p) in known
        ]
        if spec.neftune_alpha:
            neftune = add_neftune(trained, spec.neftune_alpha)
        points, diverged = _sweep(
            trained, pad_id(tokenizer), examples, spec, lrs, smoothing, diverge_factor, say
        )
    finally:
        _put_back(model, trained, snapshot, kept, neftune)
    result = LRFinderResult.from_curve(
        lrs[: len(points)],
        points,
        smoothing,
        diverged,
        float(end_lr),
        num_steps,
        adapter,
    )
    say(f"lr finder: {result.advice}")
    return result


def _put_back(model: Any, trained: Any, snapshot: _Snapshot, kept: list, neftune: Any) -> None:
    import torch

    if neftune is not None:
        neftune.remove()
    if trained is not None and trained is not model and hasattr(trained, "unload"):
        trained.unload()  # the temporary adapter: peft puts the base layers back
    with torch.no_grad():
        for param, saved in kept:
            param.copy_(saved)
    snapshot.restore(model)


def _sweep(
    model: Any,
    pad: int,
    examples: Examples,
    spec: TrainSpec,
    lrs: np.ndarray,
    smoothing: float,
    factor: float,
    say: Callable[[str], Any],
) -> tuple[list[float], float | None]:
    """Run the steps; returns the losses recorded and the rate it diverged at (or ``None``)."""
    import torch

    optimizer = torch.optim.AdamW(optimizer_groups(model, spec), lr=spec.lr)
    scales = [group["lr"] / spec.lr for group in optimizer.param_groups]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    plan = BatchPlan(examples.lengths, spec.batch_size, spec.seed, spec.grad_accum)
    device = next(model.parameters()).device
    clip = spec.max_grad_norm or math.inf
    every = max(1, len(lrs) // 6)
    losses: list[float] = []
    avg, best = 0.0, math.inf
    model.train()
    for step, lr in enumerate(lrs.tolist()):
        for group, scale in zip(optimizer.param_groups, scales, strict=True):
            group["lr"] = lr * scale
        optimizer.zero_grad(set_to_none=True)
        batches = [
            collate(examples, plan.at(step * spec.grad_accum + k), pad)
            for k in range(spec.grad_accum)
        ]
        loss = _forward_backward(model, batches, device, spec)
        if not math.isfinite(loss):
            if not losses:
                msg = f"the loss is {loss} at the sweep's first step (lr {lr:g}), before updates."
                raise TrainingError(msg)
            return losses, lr
        losses.append(loss)
        avg = smoothing * avg + (1 - smoothing) * loss
        smoothed = avg / (1 - smoothing ** (step + 1))
        best = min(best, smoothed)
        if (step + 1) % every == 0:
            say(f"lr finder: step {step + 1}/{len(lrs)}, lr {format_lr(lr)}, loss {loss:.4f}")
        if smoothed > factor * best:
            return losses, lr
        norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        if not math.isfinite(norm):
            return losses, lr
        optimizer.step()
    return losses, None


def _forward_backward(model: Any, batches: list[dict[str, Any]], device: Any, spec: TrainSpec):
    trained = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
    total = 0.0
    try:
        for batch in batches:
            inputs = {key: batch[key].to(device) for key in ("input_ids", "labels")}
            with training_precision(model):
                loss_sum, _ = token_loss_sum(model, inputs, spec.fast_loss)
            (loss_sum / trained).backward()
            total += float(loss_sum.detach())
    except (RuntimeError, MemoryError) as err:
        if not is_out_of_memory(err):
            raise
        width = max(b["input_ids"].numel() for b in batches)
        raise out_of_memory_error(err, spec.batch_size, spec.grad_accum, width) from err
    return total / trained
