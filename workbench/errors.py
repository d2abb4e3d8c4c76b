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

__all__ = [
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
    "WorkbenchError",
    "WorkbenchWarning",
    "WriteError",
]


class WorkbenchError(Exception):
    """Base class of every error the workbench raises on purpose."""


class SpecError(WorkbenchError, ValueError):
    """A setting or argument has a value the workbench cannot use."""


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
