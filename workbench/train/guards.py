"""Guards that stop a run with a clear message instead of training on garbage.

Examples:
    >>> try:
    ...     check_loss(float("nan"), step=3)
    ... except TrainingError as err:
    ...     print(str(err)[:41])
    the training loss became nan at step 3; t
    >>> stopper = EarlyStopping(patience=2)
    >>> [stopper.update(x) for x in (1.0, 0.9, 1.1, 1.2)]
    [False, False, False, True]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from workbench.errors import OutOfMemoryError, TrainingError

__all__ = [
    "CollapseCheck",
    "EarlyStopping",
    "OutOfMemoryError",
    "TrainingError",
    "check_grad_norm",
    "check_loss",
    "is_out_of_memory",
    "out_of_memory_error",
]

_OOM_MARKERS = ("out of memory", "defaultcpuallocator: can't allocate", "cannot allocate memory")


def check_loss(loss: float, step: int, lr: float | None = None) -> None:
    """Raise :class:`TrainingError` when ``loss`` is NaN or infinite.

    Examples:
        >>> check_loss(2.5, step=1)
    """
    if math.isfinite(loss):
        return
    at_lr = f" (lr {lr:.3g})" if lr is not None else ""
    msg = (
        f"the training loss became {loss} at step {step}{at_lr}; the step was not applied. "
        "Lower lr, keep max_grad_norm set, or look for broken examples."
    )
    raise TrainingError(msg)


def check_grad_norm(norm: float, step: int, limit: float | None) -> None:
    """Raise :class:`TrainingError` for a non-finite or exploding gradient norm.

    Examples:
        >>> check_grad_norm(5.0, step=1, limit=1e4)
        >>> try:
        ...     check_grad_norm(1e6, step=2, limit=1e4)
        ... except TrainingError as err:
        ...     print(str(err)[:45])
        the gradient norm exploded to 1e+06 at step 2
    """
    if not math.isfinite(norm):
        msg = (
            f"the gradient norm became {norm} at step {step}; the step was not applied. "
            "Lower lr or check the data."
        )
        raise TrainingError(msg)
    if limit is not None and norm > limit:
        msg = (
            f"the gradient norm exploded to {norm:.3g} at step {step} (grad_norm_limit="
            f"{limit:g}); the step was not applied. "
            "Lower lr, or raise grad_norm_limit if such norms are expected."
        )
        raise TrainingError(msg)


@dataclass
class EarlyStopping:
    """Counts evaluations without a new best eval loss; says when to stop.

    Attributes:
        patience: Evaluations without improvement that stop the run (``None``: never).
        best: Lowest eval loss so far.
        bad: Evaluations since the best.
        best_step: The step of the lowest eval loss (``-1`` before the first evaluation).

    Examples:
        >>> EarlyStopping(patience=None).update(9.0)
        False
    """

    patience: int | None
    best: float = math.inf
    bad: int = 0
    best_step: int = -1

    def update(self, eval_loss: float, step: int = -1) -> bool:
        """Record the eval loss of ``step``; ``True`` when the run should stop.

        Examples:
            >>> early = EarlyStopping(patience=1)
            >>> early.update(1.0, step=4), early.update(1.2, step=8), early.best_step
            (False, True, 4)
        """
        if eval_loss < self.best:
            self.best, self.bad, self.best_step = eval_loss, 0, step
        else:
            self.bad += 1
        return self.patience is not None and self.bad >= self.patience

    def message(self) -> str:
        """Why the run stopped early.

        Examples:
            >>> EarlyStopping(patience=3, best=1.5, bad=3, best_step=40).message()
            'early stopping: eval loss did not improve for 3 evaluations (best 1.5 at step 40).'
        """
        at = f" at step {self.best_step}" if self.best_step >= 0 else ""
        return (
            f"early stopping: eval loss did not improve for {self.bad} evaluations "
            f"(best {self.best:.4g}{at})."
        )


@dataclass
class CollapseCheck:
    """Notices a run whose model has collapsed to one output for every input.

    A model that predicts every token as equally likely has a loss of exactly ln(vocabulary);
    a too-high learning rate drives LoRA there (tiny Llama at lr=1000: 7.8, 7.4, 7.7, then
    6.238 = ln 512 at every step, and ``generate`` returns ''). When the last ``window`` losses
    all sit within 1% of ln(vocabulary), one forward pass decides: if every position predicts
    the same distribution, the run has collapsed; otherwise (a model that never learned, such
    as a tiny one with a small init) it earns a warning once. The forward pass runs at most
    once per ``window`` steps. A run whose last ``window`` losses all sit 20% above both its
    starting loss and ln(vocabulary) has diverged: it is confidently wrong, worse than guessing
    (tiny Gemma 3 at lr=1000: 8.5, 8.7, 7.5, then 12-13 to the end, ln 512 = 6.2).

    Attributes:
        vocab_size: Size of the output layer.
        window: Consecutive steps near ln(vocabulary) before checking.
        warning: The warning text, once given.

    Examples:
        >>> check = CollapseCheck(vocab_size=512, window=2)
        >>> [check.update(x, lambda: True) for x in (7.8, 6.238, 6.2383)]
        ['ok', 'ok', 'collapsed']
        >>> check = CollapseCheck(vocab_size=512, window=2)
        >>> [check.update(x, lambda: False) for x in (6.24, 6.23, 6.24, 6.23)]
        ['ok', 'warn', 'ok', 'ok']
        >>> check = CollapseCheck(vocab_size=512, window=2)
        >>> [check.update(x, lambda: False) for x in (8.5, 8.7, 7.5, 12.1, 11.7)]
        ['ok', 'ok', 'ok', 'ok', 'diverged']
    """

    vocab_size: int
    window: int = 5
    warning: str = ""
    start_loss: float | None = None
    _start: list[float] = field(default_factory=list, repr=False)
    _recent: list[float] = field(default_factory=list, repr=False)

    @property
    def uniform_loss(self) -> float:
        """The loss of a uniform prediction, ln(vocabulary).

        Examples:
            >>> round(CollapseCheck(vocab_size=512).uniform_loss, 3)
            6.238
        """
        return math.log(self.vocab_size)

    def update(
        self,
        loss: float | None,
        output_is_constant: Callable[[], bool],
    ) -> Literal["ok", "warn", "collapsed", "diverged"]:
        """Record a step's loss; say whether the run collapsed or diverged (or earns a warning).

        Examples:
            >>> CollapseCheck(vocab_size=512).update(2.0, lambda: True)
            'ok'
        """
        uniform = self.uniform_loss
        value = float(loss if loss is not None else math.nan)
        if len(self._start) < 3:  # the loss at the start: the mean of the first three steps
            self._start.append(value)
            self.start_loss = sum(self._start) / len(self._start)
        self._recent = [*self._recent, value][-self.window :]
        if self._diverged():
            return "diverged"
        if len(self._recent) < self.window or not all(
            abs(x - uniform) <= 0.01 * uniform for x in self._recent
        ):
            return "ok"
        self._recent = []  # check again only after another full window
        if output_is_constant():
            return "collapsed"
        if self.warning:
            return "ok"
        self.warning = (
            f"the loss has stayed at ln(vocabulary) = {uniform:.3f} for {self.window} "
            "steps: the model predicts every token as about equally likely. Check "
            "lr (too low or far too high) and that the data has trained tokens."
        )
        return "warn"

    def _diverged(self) -> bool:
        if len(self._recent) < self.window or len(self._start) < 3:
            return False
        floor = 1.2 * max(self.uniform_loss, self.start_loss or 0.0)
        return all(x > floor for x in self._recent)


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is torch running out of (GPU or CPU) memory.

    Examples:
        >>> is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory"))
        True
    """
    import torch

    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(err, RuntimeError) and any(m in str(err).lower() for m in _OOM_MARKERS)


def out_of_memory_error(err: BaseException, batch_size: int, grad_accum: int, tokens: int) -> Any:
    """An :class:`OutOfMemoryError` that suggests a batch size that would fit.

    Memory for activations grows with the tokens in a batch, so halving the batch (and doubling
    ``grad_accum`` to keep the same effective batch) roughly halves it.

    Examples:
        >>> str(out_of_memory_error(MemoryError(), 8, 1, 2048)).split(".")[0]
        'a batch of 8 examples (2048 tokens) did not fit in memory'
    """
    if batch_size > 1:
        smaller = max(1, batch_size // 2)
        accum = grad_accum * batch_size // smaller
        fix = (
            f"Try batch_size={smaller} with grad_accum={accum} (same effective batch), "
            "or gradient_checkpointing=True"
        )
    else:
        fix = (
            "batch_size is already 1: set gradient_checkpointing=True, a shorter max_length, "
            "or load the model with quantization='4bit'"
        )
    msg = (
        f"a batch of {batch_size} examples ({tokens} tokens) did not fit in memory. {fix}. "
        f"({type(err).__name__}: {str(err)[:200]})"
    )
    return OutOfMemoryError(msg)
