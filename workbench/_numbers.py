"""Numbers of other types (numpy's, pandas', a ``Fraction``) as Python's own ``int`` and ``float``.

A sweep script's settings come from ``np.arange``, ``np.linspace`` or a DataFrame's column:
``np.int64(2)`` is no ``int`` and ``np.float32(1e-4)`` no ``float``, so a check written with
``isinstance(value, int)`` refused them ("max_steps=np.int64(2) must be an integer"), and
``json`` cannot write a ``np.int64`` into run.json. The workbench's checks take them through
:func:`plain_number` (or a dataclass's fields through :func:`plain_fields`) first. A bool stays
a bool, so a check refuses ``max_steps=True`` as before; so does ``np.True_`` (no
``numbers.Real``).

Examples:
    >>> import numpy as np
    >>> plain_number(np.int64(2)), plain_number(np.float32(1e-4)), plain_number(True)
    (2, 0.0001, True)
"""

from __future__ import annotations

import contextlib
import dataclasses
import numbers
from typing import Any

__all__ = ["plain_fields", "plain_number"]


def plain_number(value: Any) -> Any:
    """``value`` as a built-in ``int`` (any integral number) or ``float`` (any other real
    number); anything else, bools included, unchanged.

    Examples:
        >>> import numpy as np
        >>> from fractions import Fraction
        >>> type(plain_number(np.uint8(7))).__name__, plain_number(Fraction(1, 4))
        ('int', 0.25)
        >>> plain_number("8"), plain_number(None), plain_number(np.bool_(True))
        ('8', None, np.True_)
    """
    if type(value) in (int, float) or isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    return _float(value) if isinstance(value, numbers.Real) else value


def _float(value: numbers.Real) -> float:
    """The float a number prints as, where it prints as one: ``np.float32(1e-4)`` is stored
    as the ``1e-4`` that was written, not as ``9.999999747378752e-05``. A whole number keeps
    its exact value: ``np.float32(2**34)`` prints as ``1.7179869e+10`` but holds 17179869184.

    Examples:
        >>> import numpy as np
        >>> _float(np.float32(1e-4)), _float(np.float32(16 * 2**30)), _float(np.float16(0.1))
        (0.0001, 17179869184.0, 0.1)
    """
    exact = float(value)
    if exact.is_integer():
        return exact
    with contextlib.suppress(ValueError):
        return float(str(value))
    return exact


def plain_fields(instance: Any) -> None:
    """Put every number field of a dataclass (a frozen one too) as a built-in number.

    Examples:
        >>> import numpy as np
        >>> from dataclasses import dataclass
        >>> @dataclass(frozen=True)
        ... class Settings:
        ...     steps: int
        ...     name: str = "run"
        >>> settings = Settings(np.int64(3))
        >>> plain_fields(settings)
        >>> type(settings.steps).__name__, settings.name
        ('int', 'run')
    """
    for field in dataclasses.fields(instance):
        value = getattr(instance, field.name)
        plain = plain_number(value)
        if plain is not value:
            object.__setattr__(instance, field.name, plain)
