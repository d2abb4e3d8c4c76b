"""Guards that stop a run with a clear message instead of training on garbage.

Examples:
    >>> try:
    ...     check_loss(float("nan"), step=3)
    ... except TrainingError as err:
    ...     print(str(err)[:41])
    the training loss became nan at step 3. T
    >>> stopper = EarlyStopping(patience=2)
    >>> [stopper.update(x) for x in (1.0, 0.9, 1.1, 1.2)]
    [False, False, False, True]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from workbench.errors import WorkbenchError

__all__ = [
    "EarlyStopping",
    "OutOfMemoryError",
    "TrainingError",
    "check_grad_norm",
    "check_loss",
    "is_out_of_memory",
    "out_of_memory_error",
]

_OOM_MARKERS = ("out of memory", "defaultcpuallocator: can't allocate", "cannot allocate memory")


class TrainingError(WorkbenchError, RuntimeError):
    """Training cannot go on: a NaN loss, an exploding gradient, or a broken run folder."""


class OutOfMemoryError(TrainingError, MemoryError):
    """A batch did not fit in memory; the message suggests settings that would."""


def check_loss(loss: float, step: int, lr: float | None = None) -> None:
    """Raise :class:`TrainingError` when ``loss`` is NaN or infinite.

    Examples:
        >>> check_loss(2.5, step=1)
    """
    if math.isfinite(loss):
        return
    at_lr = f" (lr {lr:.3g})" if lr is not None else ""
    msg = (f"the training loss became {loss} at step {step}{at_lr}. The step was not applied "
           "and the last good checkpoint is kept. Lower lr, keep max_grad_norm set, or look "
           "for broken examples.")
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
        msg = (f"the gradient norm became {norm} at step {step}; the step was not applied and "
               "the last good checkpoint is kept. Lower lr or check the data.")
        raise TrainingError(msg)
    if limit is not None and norm > limit:
        msg = (f"the gradient norm exploded to {norm:.3g} at step {step} (grad_norm_limit="
               f"{limit:g}); the step was not applied and the last good checkpoint is kept. "
               "Lower lr, or raise grad_norm_limit if such norms are expected.")
        raise TrainingError(msg)


@dataclass
class EarlyStopping:
    """Counts evaluations without a new best eval loss; says when to stop.

    Attributes:
        patience: Evaluations without improvement that stop the run (``None``: never).
        best: Lowest eval loss so far.
        bad: Evaluations since the best.

    Examples:
        >>> EarlyStopping(patience=None).update(9.0)
        False
    """

    patience: int | None
    best: float = math.inf
    bad: int = 0

    def update(self, eval_loss: float) -> bool:
        """Record an eval loss; ``True`` when the run should stop.

        Examples:
            >>> EarlyStopping(patience=1).update(1.0)
            False
        """
        if eval_loss < self.best:
            self.best, self.bad = eval_loss, 0
        else:
            self.bad += 1
        return self.patience is not None and self.bad >= self.patience

    def message(self) -> str:
        """Why the run stopped early.

        Examples:
            >>> EarlyStopping(patience=3, best=1.5, bad=3).message()
            'early stopping: eval loss did not improve for 3 evaluations (best 1.5).'
        """
        return (f"early stopping: eval loss did not improve for {self.bad} evaluations "
                f"(best {self.best:.4g}).")


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
        fix = (f"Try batch_size={smaller} with grad_accum={accum} (same effective batch), "
               "or gradient_checkpointing=True")
    else:
        fix = ("batch_size is already 1: set gradient_checkpointing=True, a shorter max_length, "
               "or load the model with quantization='4bit'")
    msg = (f"a batch of {batch_size} examples ({tokens} tokens) did not fit in memory. {fix}. "
           f"({type(err).__name__}: {str(err)[:200]})")
    return OutOfMemoryError(msg)
