"""The control file: how the notebook's buttons reach the processes of a launched run.

The notebook writes ``<run>/control.json`` (atomically) with the state its :class:`Run` wants:
``pause`` and ``stop`` flags, and counters of the one-off requests (``eval``, ``save``,
``step``) that only grow. Rank 0 reads it every few tenths of a second and applies what
changed to its own :class:`Run` through the ordinary controls (``pause()``, ``resume()``,
``stop()``, ``evaluate_now()``, ``save_now()``, ``step_once()``); at each step boundary it
tells the other ranks what to do, so that every rank honours a request at the same step.

Examples:
    >>> import tempfile
    >>> run_dir = Path(tempfile.mkdtemp())
    >>> write_control(run_dir, Control(pause=True, eval=1))
    >>> read_control(run_dir)
    Control(pause=True, stop=False, eval=1, save=0, step=0)
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from workbench._io import atomic_write_text

__all__ = ["CONTROL", "Control", "apply_control", "read_control", "write_control"]

CONTROL = "control.json"


@dataclasses.dataclass(frozen=True)
class Control:
    """What the notebook asks of a launched run (flags, and counters that only grow).

    Examples:
        >>> Control(save=2).save
        2
    """

    pause: bool = False
    stop: bool = False
    eval: int = 0
    save: int = 0
    step: int = 0


def write_control(run_dir: Path, control: Control) -> None:
    """Replace ``<run>/control.json`` in one rename (a reader never sees half of it).

    Examples:
        >>> import tempfile
        >>> run_dir = Path(tempfile.mkdtemp())
        >>> write_control(run_dir, Control(stop=True))
        >>> json.loads((run_dir / CONTROL).read_text())["stop"]
        True
    """
    atomic_write_text(run_dir / CONTROL, json.dumps(dataclasses.asdict(control)), parents=False)


def read_control(run_dir: Path) -> Control:
    """The notebook's wishes; nothing asked when there is no (or no readable) file.

    Examples:
        >>> read_control(Path("/nonexistent-run"))
        Control(pause=False, stop=False, eval=0, save=0, step=0)
    """
    try:
        data = json.loads((run_dir / CONTROL).read_text())
    except (OSError, ValueError):
        return Control()
    fields = {f.name for f in dataclasses.fields(Control)}
    return Control(**{k: v for k, v in data.items() if k in fields})


def apply_control(run: Any, seen: Control, wanted: Control) -> Control:
    """Apply to ``run`` what changed from ``seen`` to ``wanted``; returns what is now seen.

    Examples:
        >>> class Recorder:
        ...     def __getattr__(self, name):
        ...         return lambda *a, **k: calls.append(name)
        >>> calls = []
        >>> seen = apply_control(Recorder(), Control(), Control(pause=True, eval=2))
        >>> calls, seen.eval
        (['pause', 'evaluate_now', 'evaluate_now'], 2)
    """
    if wanted.stop and not seen.stop:
        run.stop()
        return wanted
    if wanted.pause and not seen.pause:
        run.pause(wait=False)
    for _ in range(wanted.eval - seen.eval):
        run.evaluate_now()
    for _ in range(wanted.save - seen.save):
        run.save_now()
    for _ in range(wanted.step - seen.step):
        run.step_once(wait=False)
    if seen.pause and not wanted.pause:
        run.resume()
    return wanted
