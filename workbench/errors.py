"""One error hierarchy for the workbench.

Every error the workbench raises on purpose is a :class:`WorkbenchError`. Each subclass
also inherits the builtin it stands in for, so ``except ValueError`` keeps working.

Examples:
    >>> import workbench as wb
    >>> try:
    ...     wb.Session("/tmp/wb-doc-errors", verbose=False).load_model("no-such-model-anywhere")
    ... except wb.ModelLoadError as err:
    ...     print(type(err).__name__)
    ModelLoadError
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "OTHER_TOOLS_WORDS",
    "CacheError",
    "DataError",
    "DependencyError",
    "EvaluationError",
    "ModelLoadError",
    "NoDataError",
    "NoModelError",
    "OutOfMemoryError",
    "ServeError",
    "SessionStateError",
    "SpecError",
    "TrainingError",
    "UnknownSettingError",
    "WorkbenchError",
    "WorkbenchWarning",
    "WriteError",
    "warn_user",
]

_PACKAGE = str(Path(__file__).resolve().parent)  # the real path: links resolved


class WorkbenchError(Exception):
    """Base class of every error the workbench raises on purpose."""


class SpecError(WorkbenchError, ValueError):
    """A setting or argument has a value the workbench cannot use."""


class UnknownSettingError(SpecError, TypeError):
    """A keyword the call does not take: the message names it and the nearest known ones.

    It is a :class:`TypeError` too, as Python's own unexpected keyword error is.
    """


def refuse_unknown(
    call: str,
    given: Iterable[str],
    known: Iterable[str],
    hint: str = "",
    elsewhere: dict[str, str] | None = None,
) -> None:
    """Raise :class:`UnknownSettingError` for names in ``given`` that ``call`` does not take.

    Each unknown name is told with its closest known names (a typo, or another tool's word
    for the same setting: :data:`OTHER_TOOLS_WORDS`), or, when ``elsewhere`` has it, with
    where it belongs instead; ``hint`` is added to the message.

    Examples:
        >>> refuse_unknown("train()", ["lr"], ["lr", "epochs"])  # all known: no error
        >>> refuse_unknown("train()", ["step", "lr"], ["lr", "max_steps", "epochs"])
        Traceback (most recent call last):
        workbench.errors.UnknownSettingError: train() takes no step= (did you mean max_steps?)...
        >>> refuse_unknown("train()", ["learning_rate"], ["lr", "epochs"])
        Traceback (most recent call last):
        workbench.errors.UnknownSettingError: train() takes no learning_rate= (did you mean lr?)...
    """
    known = sorted(set(known))
    unknown = [name for name in given if name not in known]
    if not unknown:
        return
    told = []
    for name in unknown:
        if elsewhere and name in elsewhere:
            told.append(f"{name}= ({elsewhere[name]})")
            continue
        close = _close_names(name, known)
        told.append(f"{name}=" + (f" (did you mean {' or '.join(close)}?)" if close else ""))
    msg = f"{call} takes no {', '.join(told)}. It takes: {', '.join(known)}."
    raise UnknownSettingError(f"{msg} {hint}".strip())


# Other tools' words (transformers' TrainingArguments, peft's LoraConfig, TRL, Axolotl) for
# the workbench's settings, told first when a call takes the workbench's word.
OTHER_TOOLS_WORDS = {
    "learning_rate": "lr",
    "num_train_epochs": "epochs",
    "num_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",
    "train_batch_size": "batch_size",
    "micro_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "warmup_ratio": "warmup",
    "warmup_steps": "warmup",
    "lr_scheduler_type": "scheduler",
    "lr_scheduler": "scheduler",
    "max_seq_length": "max_length",
    "max_seq_len": "max_length",
    "sequence_len": "max_length",
    "cutoff_len": "max_length",
    "eval_steps": "eval_every",
    "save_steps": "save_every",
    "save_total_limit": "keep_checkpoints",
    "neftune_noise_alpha": "neftune_alpha",
    "torch_compile": "compile",
    "early_stopping_patience": "early_stopping",
    "lora_r": "r",
    "rank": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "target_modules": "target",
    "lora_target_modules": "target",
}


def refuses_unknown_keywords(cls: type) -> type:
    """Make a dataclass's constructor refuse a keyword it does not take with
    :class:`UnknownSettingError`, told with the nearest names (``LoRA(rank=8)``: did you mean
    ``r``?), where Python said only "unexpected keyword argument".

    Examples:
        >>> from dataclasses import dataclass
        >>> @refuses_unknown_keywords
        ... @dataclass(frozen=True)
        ... class Adapter:
        ...     r: int = 8
        >>> Adapter(r=4).r
        4
        >>> Adapter(lora_r=4)
        Traceback (most recent call last):
        workbench.errors.UnknownSettingError: Adapter() takes no lora_r= (did you mean r?)...
    """
    import dataclasses

    build = cls.__init__
    names = [f.name for f in dataclasses.fields(cls) if f.init]

    @functools.wraps(build)
    def checked(self: Any, *args: Any, **settings: Any) -> None:
        refuse_unknown(f"{cls.__name__}()", settings, names)
        build(self, *args, **settings)

    cls.__init__ = checked
    return cls


def _close_names(name: str, known: list[str]) -> list[str]:
    """Known names a typo or a synonym of ``name`` most likely meant."""
    import difflib

    word = OTHER_TOOLS_WORDS.get(name)
    if word in known:
        return [word]
    close = difflib.get_close_matches(name, known, n=2, cutoff=0.6)
    lowered = name.lower().strip("_")
    for other in known:  # "steps" -> "max_steps", "length" -> "max_length"
        if other not in close and lowered and lowered in other.split("_"):
            close.append(other)
    return close[:3]


class ModelLoadError(WorkbenchError, ValueError):
    """A model spec could not be resolved or loaded."""


class CacheError(WorkbenchError, OSError):
    """The model cache could not be written or read."""


class DependencyError(WorkbenchError, ImportError):
    """An optional package needed for the requested feature is missing."""


class WriteError(WorkbenchError, OSError):
    """A file or folder could not be written: no space left, read-only, no permission.

    The message names the path, and for a full disk how many MB were needed and free.
    """


class SessionStateError(WorkbenchError, RuntimeError):
    """A call is refused in the session's current state (e.g. while a run trains).

    The message names what is in the way and the calls that clear it.
    """


class DataError(WorkbenchError, ValueError):
    """A data set could not be read: the message names the file, row and field."""


class NoModelError(WorkbenchError, RuntimeError):
    """A call needs a model, and none is loaded yet."""


class NoDataError(WorkbenchError, RuntimeError):
    """A call needs data, and none is loaded yet."""


class TrainingError(WorkbenchError, RuntimeError):
    """Training cannot go on: a NaN loss, an exploding gradient, or a broken run folder."""


class OutOfMemoryError(TrainingError, MemoryError):
    """A batch did not fit in memory; the message suggests settings that would."""


class EvaluationError(WorkbenchError, ValueError):
    """Evaluation input or a metric is unusable; the message names the metric, row and field.

    A bad setting of an evaluation (``EvalSpec``) is a :class:`SpecError`, as for training.
    """


class ServeError(WorkbenchError, RuntimeError):
    """The model server could not start or stopped answering."""


class WorkbenchWarning(UserWarning):
    """A warning about a setting that works but is probably not what was meant."""


def warn_user(text: str, category: type[Warning] = WorkbenchWarning) -> None:
    """Warn at the first caller outside the workbench: the user's line (a notebook cell, a
    script), however deep in the package the warning is found.

    Examples:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as said:
        ...     warnings.simplefilter("always")
        ...     warn_user("lr is high")
        >>> said[0].filename.startswith("<doctest")  # this example's line, not errors.py
        True
    """
    level, frame = 1, sys._getframe(1)
    while frame is not None and _in_package(frame.f_code.co_filename):
        frame, level = frame.f_back, level + 1
    # (a thread of the package's own, a run's worker, has no user frame: its direct caller)
    warnings.warn(text, category, stacklevel=level + 1 if frame is not None else 2)


@functools.lru_cache(maxsize=1024)
def _in_package(filename: str) -> bool:
    """Whether ``filename`` is one of the package's files (also when imported through a
    symbolic link; ``workbench_notes/x.py`` beside it is not)."""
    return any(
        path.startswith(_PACKAGE + os.sep) for path in (filename, os.path.realpath(filename))
    )
