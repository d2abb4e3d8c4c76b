"""Fork a run from a checkpoint with changed settings: "what if I had lowered the lr here?"

``run.fork(step=20, lr=1e-4)`` starts a new run from the checkpoint the run wrote at step 20,
with the settings changed, in a new run folder beside the parent's (``run-003`` when
``run-001`` and ``run-002`` exist; numbered by :class:`~workbench.session_folder.SessionFolder`).
Its ``run.json`` records ``forked_from: {"run": "run-001", "step": 20}`` and the changes
(``fork_changes``); the parent lists its forks (:func:`forks_of`, ``run.forks``), and the
monitor of either overlays the parent and every fork on one chart with the fork point marked.

What the fork takes from the checkpoint at ``step``, and what it builds anew:

- **Weights and optimizer state** (the adapter, AdamW's moments and step counts) come from the
  checkpoint, so a fork with unchanged settings continues exactly as the parent did (same
  losses to 1e-5).
- **Learning rate and schedule.** The new ``lr`` becomes the schedule's peak, and the
  scheduler (``scheduler``, ``warmup``) is rebuilt for the fork's total steps, placed at the
  fork step: the step after the fork trains at what the new schedule gives there. A longer
  fork (``max_steps``/``epochs``) stretches a decaying schedule; there is no second warm-up
  unless the warm-up reaches past the fork step.
- **RNG and data order** come from the checkpoint (same seed, same position in the data), so
  the fork sees the batches the parent saw after that step, unless ``max_length`` re-cuts the
  rows (then the length-grouped order is rebuilt from the new lengths with the same seed).
- **History and probes**: the fork's history starts with the parent's records up to the fork
  step, so its curve reads from step 1; its own steps follow.

The fork trains the parent's model in memory (the session's live model), so the parent must
be finished, stopped or failed, or paused: a paused parent is stopped first (its checkpoint
at the paused step is saved, so the fork may start there too, and ``Session.resume(folder)``
continues the parent later). A running parent is refused (pause or stop it first). Once
forked, the parent hands its model to the fork (``run.superseded_by``): ``run.resume()`` of
the parent is refused from then on (``Session.resume(parent_folder)`` reloads the model).

The fork writes a checkpoint at its first step (the fork step, with the new schedule), so its
folder is a complete run of its own: ``Session.resume(fork_folder)`` works like any other.

Examples:
    A run that keeps every checkpoint, forked at step 4 with a lower learning rate:

    >>> import shutil
    >>> from workbench import Session
    >>> from workbench.models.tiny import build_tiny_model
    >>> shutil.rmtree("/tmp/wb-doc-fork", ignore_errors=True)
    >>> s = Session("/tmp/wb-doc-fork", verbose=False)
    >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-fork-tiny")))
    >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
    >>> run = s.train(max_steps=6, save_every=2, keep_checkpoints="all", wait=False)
    >>> run.wait().state.value
    'finished'
    >>> fork = run.fork(step=4, lr=1e-4, wait=False)
    >>> fork.wait().state.value, fork.run_dir.name, s.run is fork
    ('finished', 'run-002', True)
    >>> forked_from(fork.run_dir), fork_label(fork.run_dir)
    ({'run': 'run-001', 'step': 4}, 'run-002 fork @4, lr 1e-4')
    >>> [p.name for p in forks_of(run.run_dir)]
    ['run-002']
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from workbench._display import in_notebook
from workbench._io import interrupts_deferred
from workbench._numbers import plain_number
from workbench.errors import SessionStateError, SpecError
from workbench.train import store
from workbench.train.batches import Examples
from workbench.train.checkpoint import (
    CHECKPOINTS,
    checkpoint_problem,
    checkpoint_step,
    list_checkpoints,
    load_checkpoint,
    load_weights_into,
    save_checkpoint,
)
from workbench.train.guards import EarlyStopping
from workbench.train.records import LogRecord, history_rows
from workbench.train.spec import KEEP_ALL, TrainSpec
from workbench.train.status import RunState

if TYPE_CHECKING:
    from workbench.train.run import Run

__all__ = [
    "FIXED",
    "FORKABLE",
    "ForkHooks",
    "Relative",
    "fork_label",
    "fork_run",
    "fork_steps",
    "forked_from",
    "forks_of",
    "refuse_unstarted_fork",
    "relatives",
]

# Settings a fork may change (TrainSpec fields), and the data cutoff.
FORKABLE = (
    "lr",
    "epochs",
    "max_steps",
    "scheduler",
    "warmup",
    "early_stopping",
    "eval_every",
    "save_every",
    "keep_checkpoints",
    "max_grad_norm",
    "grad_norm_limit",
    "probe_max_new_tokens",
    "track_layer_norms",
    "fast_loss",
    "packing",
    "compile",
    "max_length",
)
_SHAPE = "it defines the adapter's shape, and the checkpoint's weights only fit that shape"
_ORDER = (
    "the checkpoint's data position counts the parent's batches, so the fork continues the "
    "same pass over the data"
)
_MODEL = "it was set up on the model when the parent started, and the fork trains that model"
_GROUPS = "it built the optimizer's parameter groups, which the fork keeps from the checkpoint"
# Settings a fork keeps from its parent, with the reason a change is refused.
FIXED = {
    "method": _SHAPE,
    "lora": _SHAPE,
    "quantization": "the base model's weights (and so the adapter's) were loaded that way",
    "batch_size": _ORDER,
    "grad_accum": _ORDER,
    "seed": "the data order and the RNG come from the checkpoint",
    "weight_decay": _GROUPS,
    "layer_lr_decay": _GROUPS,
    "neftune_alpha": _MODEL,
    "gradient_checkpointing": _MODEL,
}
_FOLDER = re.compile(r"^run-\d+$")


@dataclass
class ForkHooks:
    """What a fork needs from the object that owns the run (the :class:`~workbench.Session`).

    ``Session.train`` and ``Session.resume`` set ``run.fork_hooks``; a fork inherits its
    parent's. A run started with :func:`~workbench.train.start_run` alone has none and forks
    all the same, without the data cutoff.

    Attributes:
        check: Called with the parent before anything changes; raises to refuse (the
            session refuses when its live model is no longer the parent's, or when another
            run of it is active).
        data: ``data(max_length)`` returns ``(train, validation)`` tokenized again with that
            cutoff (``max_length=`` in a fork needs it).
        adopt: Called with the started fork (the session makes it its current run).
        progress: Whether a fork that blocks prints a line per step.

    Examples:
        >>> hooks = ForkHooks(adopt=print)
        >>> hooks.check is None, hooks.data is None
        (True, True)
    """

    check: Callable[[Run], None] | None = None
    data: Callable[[int | None], tuple[Any, Any]] | None = None
    adopt: Callable[[Run], None] | None = None
    progress: bool = True  # a blocking fork prints a line per step (a quiet session: not)


@dataclass(frozen=True)
class Relative:
    """A run related to another by a fork: its parent, one of its forks, or a sibling fork.

    Attributes:
        run_dir: The relative's run folder.
        role: ``"parent"``, ``"fork"`` (forked from the run) or ``"sibling"`` (another fork
            of the run's parent).
        label: How a chart names it, e.g. ``"run-001 (parent)"`` or
            ``"run-003 fork @20, lr 1e-4"``.
        fork_step: Where a fork's curve leaves its parent's (``None`` for the parent).

    Examples:
        >>> Relative(Path("runs/run-001"), "parent", "run-001 (parent)", None).role
        'parent'
    """

    run_dir: Path
    role: Literal["parent", "fork", "sibling"]
    label: str
    fork_step: int | None


# -- reading the family from the run folders -----------------------------------------------
def _meta(run_dir: Path) -> dict[str, Any]:
    try:
        return store.read_meta(run_dir)
    except SpecError:
        return {}


def forked_from(run_dir: str | Path) -> dict[str, Any] | None:
    """``{"run": parent folder name, "step": N}`` of a fork's ``run.json``; ``None`` otherwise.

    Examples:
        >>> forked_from("/nonexistent-run") is None
        True
    """
    origin = _meta(Path(run_dir)).get("forked_from")
    return {"run": origin["run"], "step": int(origin["step"])} if origin else None


def refuse_unstarted_fork(run_dir: Path, meta: dict[str, Any]) -> None:
    """Refuse to resume a fork that has no valid checkpoint of its own.

    A fork's folder is placed before its starting checkpoint (the parent's weights and
    optimizer at the fork's step, its schedule rebuilt) is written: a process killed in
    between left a fork that resume trained from step 0, at the fork's settings, still
    labelled as forked from the parent's step. Its start is in the parent's folder.

    Raises:
        SpecError: ``meta`` (the folder's ``run.json``) says it is a fork.

    Examples:
        >>> refuse_unstarted_fork(Path("runs/run-002"), {"forked_from": {"run": "run-001",
        ...                                                               "step": 4}})
        Traceback (most recent call last):
        workbench.errors.SpecError: runs/run-002 is a fork of run-001 at step 4 that ...
    """
    origin = meta.get("forked_from")
    if not isinstance(origin, dict):
        return
    parent, step = origin.get("run"), origin.get("step")
    msg = (
        f"{run_dir} is a fork of {parent} at step {step} that has no valid checkpoint of its "
        "own (stopped before its first one was written): it cannot start again from step 0. "
        f"Fork {parent} again (run = session.resume({str(run_dir.parent / str(parent))!r}); "
        f"run.fork(step={step}, ...)) and delete {run_dir}."
    )
    raise SpecError(msg)


def _natural(path: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def forks_of(run_dir: str | Path) -> list[Path]:
    """The run folders beside ``run_dir`` that were forked from it, in numbered order.

    Examples:
        >>> forks_of("/nonexistent-run")
        []
    """
    run_dir = Path(run_dir)
    parent = run_dir.parent
    if not parent.is_dir():
        return []
    found = [
        p
        for p in parent.iterdir()
        if not p.name.startswith(".")
        and p != run_dir
        and (origin := forked_from(p)) is not None
        and origin["run"] == run_dir.name
    ]
    return sorted(found, key=_natural)


def _number(value: Any) -> str:
    if isinstance(value, float) and value and not 1e-2 <= abs(value) < 1e4:
        mantissa, exponent = f"{value:.3e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def fork_label(run_dir: str | Path) -> str:
    """How a chart names a run: ``"run-002 fork @20, lr 1e-4"`` for a fork, else its name.

    Examples:
        >>> fork_label("/nonexistent-parent/run-001")
        'run-001'
    """
    run_dir = Path(run_dir)
    meta = _meta(run_dir)
    origin = meta.get("forked_from")
    if not origin:
        return run_dir.name
    changes = meta.get("fork_changes") or {}
    said = ", ".join(f"{k} {_number(v)}" for k, v in changes.items()) or "same settings"
    return f"{run_dir.name} fork @{origin['step']}, {said}"


def relatives(run_dir: str | Path) -> list[Relative]:
    """The run's parent, the parent's other forks, and the run's own forks, from disk.

    Examples:
        >>> relatives("/nonexistent-parent/run-001")
        []
    """
    run_dir = Path(run_dir)
    found: list[Relative] = []
    origin = forked_from(run_dir)
    if origin is not None:
        parent = run_dir.parent / origin["run"]
        found.append(Relative(parent, "parent", f"{parent.name} (parent)", None))
        found += [
            Relative(p, "sibling", fork_label(p), forked_from(p)["step"])
            for p in forks_of(parent)
            if p != run_dir
        ]
    found += [Relative(p, "fork", fork_label(p), forked_from(p)["step"]) for p in forks_of(run_dir)]
    return found


def fork_steps(run: Run) -> list[int]:
    """The steps ``run.fork(step=...)`` can start from: its valid checkpoints (and, while it is
    paused, the step it is paused at, which forking saves).

    Examples:
        >>> import shutil
        >>> from workbench import Session
        >>> from workbench.models.tiny import build_tiny_model
        >>> shutil.rmtree("/tmp/wb-doc-fork-steps", ignore_errors=True)
        >>> s = Session("/tmp/wb-doc-fork-steps", verbose=False)
        >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-fork-tiny")))
        >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
        >>> run = s.train(max_steps=6, save_every=2, wait=False)
        >>> _ = run.wait()
        >>> fork_steps(run)  # keep_checkpoints=2 pruned step 2
        [4, 6]
    """
    steps = [
        checkpoint_step(p)
        for p in list_checkpoints(run.run_dir)
        if checkpoint_problem(p, full=False) is None
    ]
    if run.state is RunState.PAUSED and run.status.step not in steps:
        steps.append(run.status.step)
    return sorted(steps)


# -- the settings ---------------------------------------------------------------------------
def _forked_spec(
    parent: Run, changes: dict[str, Any]
) -> tuple[TrainSpec, dict[str, Any], bool, int | None]:
    """The fork's spec, the changes that differ from the parent (JSON-ready), and the cutoff.

    Raises :class:`SpecError` for an unknown setting, one a fork cannot change, or a bad
    value, before anything is written.
    """
    known = set(FORKABLE) | set(FIXED)
    unknown = sorted(set(changes) - known)
    if unknown:
        msg = f"fork() does not know the setting(s) {unknown}; a fork may change {list(FORKABLE)}."
        raise SpecError(msg)
    current = (_meta(parent.run_dir).get("model_spec") or {}).get("quantization")
    quantization = changes.pop("quantization", current)
    if quantization != current:
        raise SpecError(
            f"a fork cannot change quantization: {FIXED['quantization']} (the parent's base "
            f"is {current!r}). Start a new run with Session.train(...) for that."
        )
    has_cutoff = "max_length" in changes
    max_length = plain_number(changes.pop("max_length", None))
    if max_length is not None and (
        not isinstance(max_length, int) or isinstance(max_length, bool) or max_length <= 0
    ):
        raise SpecError(f"max_length={max_length!r} must be an integer > 0, or None.")
    spec = dataclasses.replace(parent.spec, **changes)
    for name, why in FIXED.items():
        if name in changes and getattr(spec, name) != getattr(parent.spec, name):
            msg = (
                f"a fork cannot change {name}: {why} (the parent's {name} is "
                f"{getattr(parent.spec, name)!r}). Start a new run with Session.train(...) "
                "for that."
            )
            raise SpecError(msg)
    before, after = parent.spec.to_dict(), spec.to_dict()
    differ = {k: after[k] for k in changes if after[k] != before[k]}
    if has_cutoff:
        differ["max_length"] = max_length
    return spec, differ, has_cutoff, max_length


# -- the parent's state ---------------------------------------------------------------------
def _check_state(parent: Run) -> None:
    status, name = parent.status, parent.run_dir.name
    where = f"{name} is {status.state.value} (step {status.step}/{status.total_steps})"
    if status.state is RunState.RUNNING:
        msg = (
            f"fork() is refused while {where}: call run.pause() first (forking then stops it, "
            "saving a checkpoint), or run.stop() and run.wait()."
        )
        raise SessionStateError(msg)
    if status.state is RunState.STOPPING:
        raise SessionStateError(f"fork() is refused while {where}: call run.wait() first.")
    owner = parent
    while owner.superseded_by is not None:
        owner = owner.superseded_by
    if owner is not parent and owner.status.active:
        msg = (
            f"fork() of {name} is refused: its model now trains {owner.run_dir.name}, which "
            f"is {owner.state.value}: call run.stop() and run.wait() on it first."
        )
        raise SessionStateError(msg)


def _no_checkpoint(parent: Run, step: int) -> SpecError:
    if not parent.run_dir.is_dir():
        msg = (
            f"{parent.run_dir} was deleted, with its checkpoints: there is nothing to fork "
            "from. The model in memory still holds the run's last weights (export it, or "
            "train a new run)."
        )
        return SpecError(msg)
    path = parent.run_dir / "checkpoints" / f"step-{step:08d}"
    problem = checkpoint_problem(path) if path.is_dir() else None
    if problem is not None:
        usable = [s for s in fork_steps(parent) if _checkpoint_at(parent.run_dir, s)]
        msg = (
            f"{parent.run_dir.name}'s checkpoint at step {step} is damaged ({problem}), so "
            f"it cannot be forked from; intact checkpoints: steps {usable}."
        )
        return SpecError(msg)
    steps = fork_steps(parent)
    have = f"checkpoints exist at steps {steps}" if steps else "it has no checkpoint yet"
    keep = parent.spec.keep_checkpoints
    kept = "keeps all of them" if keep >= KEEP_ALL else f"keeps only the newest {keep}"
    msg = (
        f"{parent.run_dir.name} has no checkpoint at step {step} to fork from: {have}. It "
        f"saves one every {parent.save_every} steps and {kept}; to fork from other steps, "
        "train with save_every= a divisor of that step (e.g. save_every=1) and "
        "keep_checkpoints='all'."
    )
    return SpecError(msg)


def _checkpoint_at(run_dir: Path, step: int) -> Path | None:
    path = run_dir / "checkpoints" / f"step-{step:08d}"
    return path if path.is_dir() and checkpoint_problem(path) is None else None


def _check_step(parent: Run, step: int) -> Path | None:
    """The valid checkpoint at ``step`` (``None``: the paused step, which stopping saves)."""
    if not isinstance(step, int) or isinstance(step, bool) or step <= 0:
        raise SpecError(f"step={step!r} must be the step of a checkpoint (an integer > 0).")
    found = _checkpoint_at(parent.run_dir, step)
    paused_here = parent.state is RunState.PAUSED and step == parent.status.step
    if found is None and not paused_here:
        raise _no_checkpoint(parent, step)
    return found


@contextlib.contextmanager
def _source(parent: Run, step: int, found: Path | None) -> Iterator[Path]:
    """The checkpoint to fork from, with a paused parent stopped first.

    Stopping saves a checkpoint at the paused step and may prune older ones, so a checkpoint
    from before it is copied aside first and read from the copy.
    """
    if parent.state is not RunState.PAUSED:
        yield found
        return
    with tempfile.TemporaryDirectory(prefix="wb-fork-") as tmp:
        if found is not None:
            found = Path(shutil.copytree(found, Path(tmp) / found.name))
        parent.stop()
        parent.wait()
        found = found or _checkpoint_at(parent.run_dir, step)
        if found is None:
            raise _no_checkpoint(parent, step)
        yield found


# -- the fork's folder, data and start -------------------------------------------------------
@contextlib.contextmanager
def _fork_folder(parent_dir: Path) -> Iterator[Path]:
    """A new, empty, numbered run folder beside the parent's (removed on failure if empty)."""
    if parent_dir.parent.name == "runs" and _FOLDER.match(parent_dir.name):
        from workbench.session_folder import SessionFolder

        with SessionFolder(parent_dir.parent.parent).reserved("runs") as folder:
            yield folder
        return
    number = 1
    while True:
        folder = parent_dir.with_name(f"{parent_dir.name}-fork-{number}")
        try:
            folder.mkdir()
            break
        except FileExistsError:
            number += 1
    try:
        yield folder
    except BaseException:
        with contextlib.suppress(OSError):
            folder.rmdir()
        raise


def _fork_data(
    parent: Run, has_cutoff: bool, max_length: int | None
) -> tuple[Examples, Examples | None, list[LogRecord]]:
    from workbench.train.start import _drop_untrained

    if not has_cutoff:
        return parent.loop.train, parent.loop.validation, []
    hooks = parent.fork_hooks
    if hooks is None or hooks.data is None:
        msg = (
            "max_length= re-cuts the data, which needs the session's rows: fork a run that "
            "Session.train or Session.resume started (run.fork(...) of s.run)."
        )
        raise SpecError(msg)
    train_ds, validation_ds = hooks.data(max_length)
    train = Examples.from_dataset(train_ds, "train")
    expected = (_meta(parent.run_dir).get("examples") or {}).get("train")
    if expected is not None and len(train) != expected:
        msg = (
            f"the session's data has {len(train)} training rows, but {parent.run_dir.name} "
            f"trained on {expected}: load that data again before forking with max_length=."
        )
        raise SpecError(msg)
    validation = (
        None if validation_ds is None else Examples.from_dataset(validation_ds, "validation")
    )
    kept, notes = _drop_untrained(train)
    return kept, validation, notes


def _reschedule(loop: Any, path: Path) -> dict[str, Any]:
    """Load the checkpoint into ``loop``, then put the fork's lr and schedule in place.

    The optimizer state (AdamW moments, step counts) stays the checkpoint's; each parameter
    group's peak lr becomes the fork's, and the scheduler ``loop`` built for the fork's total
    steps is moved to the checkpoint's step.
    """
    peaks = [group["initial_lr"] for group in loop.optimizer.param_groups]
    fresh = copy.deepcopy(loop.scheduler.state_dict())
    state = load_checkpoint(path, loop.model, loop.optimizer, loop.scheduler)
    for group, peak in zip(loop.optimizer.param_groups, peaks, strict=True):
        group["initial_lr"] = group["lr"] = peak
    loop.scheduler.load_state_dict(fresh)
    loop.scheduler.last_epoch = int(state["step"]) - 1
    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": on purpose
        warnings.simplefilter("ignore", UserWarning)
        loop.scheduler.step()
    return state


def _parent_rows(parent: Run, step: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    history = [r for r in history_rows(parent.run_dir / store.HISTORY) if r["step"] <= step]
    probes = [
        r
        for r in store.read_jsonl(parent.run_dir / store.PROBES)
        if r.get("base") or r.get("step", 0) <= step
    ]
    return history, probes


def _plan(
    parent: Run,
    step: int,
    spec: TrainSpec,
    data: tuple[Examples, Examples | None, list[LogRecord]],
    changes: dict[str, Any],
) -> dict[str, Any]:
    """The fork's ``run.json``; raises :class:`SpecError` when the fork cannot train."""
    from workbench.train.start import _check_inputs

    train, validation, _ = data
    _check_inputs(spec, validation, parent.probes or None)
    total = spec.total_steps(len(train))
    if total <= step:
        msg = (
            f"the fork would train {total} steps in all, none past its start at step {step}: "
            "give max_steps= or epochs= that reach beyond it."
        )
        raise SpecError(msg)
    return {
        "version": 1,
        "spec": spec.to_dict(),
        # Neither is forkable: the parent's batch size and checkpointing (and why) hold for it.
        **{f"{name}_choice": why for name, why in parent.start_choices.items()},
        "total_steps": total,
        # the parent's rows up to the fork: drawn its way
        **{k: v for k, v in _meta(parent.run_dir).items() if k == "batch_order"},
        "model_spec": _meta(parent.run_dir).get("model_spec") or {},
        # the same base as its parent's: a resume checks it (train/start.py)
        **{k: v for k, v in _meta(parent.run_dir).items() if k == "base_fingerprint"},
        "probes": list(parent.probes),
        "probe_stops": list(parent.probe_stops),
        **({"probe_ids": parent.probe_ids} if parent.probe_ids else {}),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "examples": {"train": len(train), "validation": len(validation or [])},
        "forked_from": {"run": parent.run_dir.name, "step": step},
        "fork_changes": changes,
    }


def _start(
    parent: Run,
    run_dir: Path,
    checkpoint: Path,
    meta: dict[str, Any],
    data: tuple[Examples, Examples | None, list[LogRecord]],
) -> Run:
    from workbench.train.lock import RunLock
    from workbench.train.loop import TrainLoop
    from workbench.train.run import Run, stopped_if_interrupted
    from workbench.train.start import _pad_id, _released_on_error, by_step

    train, validation, notes = data
    spec = TrainSpec.from_dict(meta["spec"])
    history, probe_rows = _parent_rows(parent, meta["forked_from"]["step"])
    history += [n.to_dict() for n in notes]
    store.check_new_folder(run_dir)
    with (
        stopped_if_interrupted() as started,
        _parent_kept_unless_started(parent, run_dir, started),
    ):
        store.create_run_folder(run_dir, meta, train, validation)
        with _released_on_error(RunLock(run_dir), started) as lock:
            store.remove_partial_runs(run_dir)
            store.rewrite_jsonl(run_dir / store.HISTORY, history)
            store.rewrite_jsonl(run_dir / store.PROBES, probe_rows)
            model = parent.model
            pad_id, total = _pad_id(parent.tokenizer), meta["total_steps"]
            loop = TrainLoop(model, pad_id, train, validation, spec, total, by_step(meta))
            run = Run(
                run_dir,
                parent.events,
                model,
                parent.tokenizer,
                loop,
                spec,
                meta["probes"],
                [LogRecord.from_dict(r) for r in history],
                probe_rows,
                lock=lock,
            )
            run.probe_stops = list(meta.get("probe_stops") or [])
            run.probe_ids = meta.get("probe_ids")
            run.start_choices = store.chosen_at_start(meta)
            run.restore_state(_reschedule(loop, checkpoint))
            # A fork's early stopping judges the fork's own evaluations: the parent's best lives
            # in the parent's folder, out of reach of the fork's end (which ends on its best).
            run.early = EarlyStopping(spec.early_stopping)
            state = run.checkpoint_state()
            save_checkpoint(
                run_dir, model, loop.optimizer, loop.scheduler, state, spec.keep_checkpoints
            )
            parent._superseded_by = run  # before the fork's first event: views see the handover
            run.start()
    return run


@contextlib.contextmanager
def _parent_kept_unless_started(parent: Run, run_dir: Path, started: list[Run]) -> Iterator[None]:
    """A fork that fails or is interrupted before it starts leaves the parent as it was: the
    checkpoint it loaded into their shared model is taken out again (the parent's weights go
    back), the handover to it is undone, and its folder is removed. Before, ``s.run`` still
    said the parent's last step while the model held the fork's checkpoint."""
    put_back, successor = _weights_of(parent), parent._superseded_by
    try:
        yield
    except BaseException:
        if started:
            raise  # the fork trains: stopped_if_interrupted stops it
        with interrupts_deferred(drop=True):
            put_back()
            parent._superseded_by = successor
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _weights_of(parent: Run) -> Callable[[], None]:
    """A function that puts ``parent``'s trained weights back into its model: from its
    checkpoint of the step they are, for a full fine-tune (a copy in memory would double
    the model), else from a copy of the trainable weights taken now (an adapter's: small;
    a failed run's have no checkpoint)."""
    import torch

    model = parent.model
    saved = parent.run_dir / CHECKPOINTS / f"step-{parent.weights_step:08d}"
    if parent.spec.method == "full" and saved.is_dir():
        return lambda: load_weights_into(saved, model)
    kept = {
        name: param.detach().to("cpu", copy=True)
        for name, param in model.named_parameters()
        if param.requires_grad
    }

    def put_back() -> None:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in kept:
                    param.copy_(kept[name])

    return put_back


def fork_run(parent: Run, step: int, wait: bool | None = None, **changes: Any) -> Run:
    """Start a new run from ``parent``'s checkpoint at ``step``, with ``changes`` applied.

    See the module text for what the fork keeps (weights, optimizer state, RNG, data order)
    and what it rebuilds (the lr schedule, for the new lr and total).

    Args:
        parent: The run to fork: finished, stopped, failed, or paused (then stopped first).
        step: The step of one of its checkpoints (:func:`fork_steps` lists them).
        wait: Block until the fork ends, printing progress. By default, like
            ``Session.train``: block in a script, return at once in a notebook.
        **changes: Settings to change: ``lr``, ``epochs``, ``max_steps``, ``scheduler``,
            ``warmup``, ``early_stopping``, ``eval_every``, ``save_every``,
            ``keep_checkpoints``, ``max_grad_norm``, ``grad_norm_limit``,
            ``probe_max_new_tokens``, ``track_layer_norms``, ``fast_loss``, ``packing``,
            ``compile``, and the data cutoff ``max_length`` (re-cuts the session's rows;
            needs a run the session started). Settings in :data:`FIXED` (the adapter's
            shape, the data order, the optimizer's groups) may only be given unchanged.

    Returns:
        The fork, running (or ended, with ``wait``). The parent's ``fork_hooks`` pass on to
        it, and their ``adopt`` makes it the session's current run.

    Raises:
        SpecError: no checkpoint at ``step`` (the message lists the steps that have one and
            how to keep more), a setting a fork cannot change (named, with why), an unknown
            setting or a bad value; nothing is written.
        SessionStateError: the parent is running or stopping, or the model it trained now
            trains another run that is active.

    Examples:
        >>> import shutil
        >>> from workbench import Session, LoRA
        >>> from workbench.models.tiny import build_tiny_model
        >>> shutil.rmtree("/tmp/wb-doc-fork-run", ignore_errors=True)
        >>> s = Session("/tmp/wb-doc-fork-run", verbose=False)
        >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-fork-tiny")))
        >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
        >>> run = s.train(max_steps=4, save_every=2, keep_checkpoints="all", wait=False)
        >>> _ = run.wait()
        >>> try:
        ...     fork_run(run, 3, lr=1e-4)
        ... except SpecError as err:
        ...     print(str(err)[:84])
        run-001 has no checkpoint at step 3 to fork from: checkpoints exist at steps [2, 4].
        >>> try:
        ...     fork_run(run, 2, lora=LoRA(r=4))
        ... except SpecError as err:
        ...     print(str(err)[:79])
        a fork cannot change lora: it defines the adapter's shape, and the checkpoint's
        >>> fork = fork_run(run, 2, max_steps=6, wait=False)
        >>> fork.wait().step, [r.step for r in fork.history if r.kind == "train"]
        (6, [1, 2, 3, 4, 5, 6])
        >>> run.resume()  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        workbench.errors.SessionStateError: resume() is refused: run-001 handed its model to ...
    """
    changes = dict(changes)
    step = plain_number(step)  # run.fork(step=steps[-1]) of a numpy array of steps
    spec, differ, has_cutoff, max_length = _forked_spec(parent, changes)
    _check_state(parent)
    hooks = parent.fork_hooks
    if hooks is not None and hooks.check is not None:
        hooks.check(parent)
    found = _check_step(parent, step)
    data = _fork_data(parent, has_cutoff, max_length)
    meta = _plan(parent, step, spec, data, differ)
    from workbench.train.run import block_until_ended, stopped_if_interrupted

    def adopt(run: Run) -> None:
        run.fork_hooks = hooks
        if hooks is not None and hooks.adopt is not None:
            hooks.adopt(run)

    with stopped_if_interrupted(adopt):  # a Ctrl-C once the fork started stops it
        with _source(parent, step, found) as checkpoint, _fork_folder(parent.run_dir) as run_dir:
            run = _start(parent, run_dir, checkpoint, meta, data)
        adopt(run)
        if wait if wait is not None else not in_notebook():
            # an interrupt stops the fork as it stops a blocking train (it went on training unseen)
            block_until_ended(run, progress=hooks is None or hooks.progress)
    return run
