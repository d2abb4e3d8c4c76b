"""What a run logs: one :class:`LogRecord` per step, evaluation or warning.

Examples:
    >>> rec = LogRecord(kind="train", step=3, epoch=0.5, loss=1.25, lr=2e-4)
    >>> LogRecord.from_dict(rec.to_dict()) == rec
    True
    >>> format_record(rec, total=10)
    'step 3/10  epoch 0.50  loss 1.2500  lr 2.00e-04'
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["LogRecord", "RecordKind", "format_record", "memory_bytes"]

RecordKind = Literal["train", "eval", "warning"]


@dataclass(frozen=True)
class LogRecord:
    """One line of a run's history (also one line of ``history.jsonl``).

    Attributes:
        kind: ``"train"`` (an optimizer step), ``"eval"`` or ``"warning"``.
        step: Optimizer steps done when it was logged.
        epoch: Fractional epochs done.
        loss: Mean training loss over the step's trained tokens.
        lr: Learning rate used for the step (the top layer's, with ``layer_lr_decay``).
        grad_norm: Gradient norm before clipping.
        tokens_per_s: Input tokens processed per second in this step.
        eval_loss: Mean validation loss (``kind="eval"``).
        memory: Bytes in use: CUDA peak on a GPU, process RSS on CPU.
        elapsed: Seconds of training so far.
        message: Text of a warning.

    Examples:
        >>> LogRecord(kind="eval", step=10, epoch=1.0, eval_loss=0.5).loss is None
        True
    """

    kind: RecordKind
    step: int
    epoch: float
    loss: float | None = None
    lr: float | None = None
    grad_norm: float | None = None
    tokens_per_s: float | None = None
    eval_loss: float | None = None
    memory: int | None = None
    elapsed: float | None = None
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict.

        Examples:
            >>> LogRecord(kind="train", step=1, epoch=0.1).to_dict()["step"]
            1
        """
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LogRecord:
        """Read a record back, ignoring keys this version does not know.

        Examples:
            >>> LogRecord.from_dict({"kind": "eval", "step": 2, "epoch": 0.2, "new": 1}).step
            2
        """
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def memory_bytes(device: Any = None) -> int:
    """Bytes in use: peak CUDA memory on the GPU trained on, else the process's RSS.

    Args:
        device: The training device (a ``torch.device`` or its name); ``None`` or a CPU:
            the process's RSS. A CUDA device reads that GPU's own peak, not the current
            one's (a model loaded with ``device="cuda:1"`` trains there).

    Examples:
        >>> memory_bytes() > 0, memory_bytes("cpu") > 0
        (True, True)
    """
    import torch

    if device is not None and torch.device(device).type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import psutil

    return int(psutil.Process(os.getpid()).memory_info().rss)


def format_record(record: LogRecord, total: int | None = None) -> str:
    """One progress line, for scripts and for frontends that can't show widgets.

    Examples:
        >>> format_record(LogRecord(kind="eval", step=5, epoch=1.0, eval_loss=0.75))
        'step 5  epoch 1.00  eval_loss 0.7500'
    """
    head = f"step {record.step}/{total}" if total else f"step {record.step}"
    parts = [head, f"epoch {record.epoch:.2f}"]
    if record.kind == "warning":
        return "  ".join([*parts, f"warning: {record.message}"])
    for name, fmt in (
        ("loss", ".4f"),
        ("eval_loss", ".4f"),
        ("lr", ".2e"),
        ("grad_norm", ".3f"),
        ("tokens_per_s", ".0f"),
    ):
        value = getattr(record, name)
        if value is not None:
            parts.append(f"{name} {value:{fmt}}")
    return "  ".join(parts)
