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
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from workbench._io import json_lines, read_jsonl
from workbench.errors import WorkbenchWarning

__all__ = [
    "LogRecord",
    "RecordKind",
    "format_record",
    "history_rows",
    "memory_bytes",
    "record_problem",
]

RecordKind = Literal["train", "eval", "warning"]
_REQUIRED = ("kind", "step", "epoch")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# Each field a history line may hold: whether a value fits it, and what it should be.
_SHAPES = {
    "kind": (lambda v: isinstance(v, str), "a text"),
    "step": (lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number"),
    "epoch": (_is_number, "a number"),
    "message": (lambda v: v is None or isinstance(v, str), "a text"),
    **{
        name: (lambda v: v is None or _is_number(v), "a number")
        for name in ("loss", "lr", "grad_norm", "tokens_per_s", "eval_loss", "memory", "elapsed")
    },
}


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


def record_problem(row: Any) -> str | None:
    """Why ``row`` (a parsed line of ``history.jsonl``) is no :class:`LogRecord`, or ``None``.

    Valid JSON of the wrong shape (a key damaged by one flipped bit, a step written as text)
    must read as damage, not fail every reader of the history with a bare TypeError.

    Examples:
        >>> record_problem({"kind": "train", "step": 1, "epoch": 0.5, "loss": 2.0}) is None
        True
        >>> record_problem({"kind": "train", "stup": 1, "epoch": 0.5})
        "'step' is missing"
        >>> record_problem({"kind": "train", "step": "1", "epoch": 0.5})
        "'step' is '1', not a whole number"
    """
    if not isinstance(row, dict):
        return f"a {type(row).__name__}, not an object"
    missing = next((name for name in _REQUIRED if name not in row), None)
    if missing is not None:
        return f"{missing!r} is missing"
    wrong = next((name for name, (fits, _) in _SHAPES.items() if not fits(row.get(name))), None)
    return None if wrong is None else f"{wrong!r} is {row[wrong]!r}, not {_SHAPES[wrong][1]}"[:120]


def history_rows(
    path: str | Path, rows: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """The rows of the history file ``path`` that are records (``rows``: as already read).

    A line that is JSON but no record is skipped with a :class:`WorkbenchWarning` naming the
    file, the line and what is wrong, as :func:`~workbench._io.read_jsonl` skips a line that
    is not JSON.

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "history.jsonl"
        >>> _ = path.write_text('{"kind": "train", "stup": 1, "epoch": 0.5}\\n'
        ...                     '{"kind": "train", "step": 2, "epoch": 1.0}\\n')
        >>> with warnings.catch_warnings(record=True) as said:
        ...     warnings.simplefilter("always")
        ...     [row["step"] for row in history_rows(path)]
        [2]
        >>> print(str(said[0].message).split(": ", 1)[1][:57])
        skipped line(s) 1, which are JSON but no history record (
        >>> "line 1: 'step' is missing" in str(said[0].message)
        True
    """
    target = Path(path)
    rows = read_jsonl(target) if rows is None else rows
    kept = [row for row in rows if record_problem(row) is None]
    if len(kept) < len(rows):
        warnings.warn(_damage_note(target), WorkbenchWarning, stacklevel=2)
    return kept


def _damage_note(path: Path) -> str:
    damaged = _damaged_lines(path)
    numbers = ", ".join(str(number) for number, _ in damaged)
    why = "; ".join(f"line {number}: {problem}" for number, problem in damaged[:3])
    return (
        f"{path}: skipped line(s) {numbers}, which are JSON but no history record "
        f"({why}{'; ...' if len(damaged) > 3 else ''}): damage from an edit or the disk."
    )


def _damaged_lines(path: Path) -> list[tuple[int, str]]:
    """The numbers of the lines of ``path`` that are JSON objects but no record, and why."""
    try:
        lines = json_lines(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return []
    found = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # not JSON: read_jsonl says so
        problem = record_problem(row) if isinstance(row, dict) else None
        if problem is not None:
            found.append((number, problem))
    return found


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
