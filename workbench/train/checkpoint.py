"""Atomic, verified checkpoints: trained weights, optimizer, scheduler, RNG and data position.

A checkpoint is written into a hidden staging folder beside its final name
(``.step-00000040.partial-XXXX``) and renamed when complete, so a kill at any moment leaves
every earlier checkpoint intact and never a half-written one under a real name. Its last file,
``manifest.json``, lists every other file with its size and SHA-256: a checkpoint damaged later
(a truncated copy, a flipped bit, a file emptied by a full disk) no longer matches it, and
:func:`newest_valid_checkpoint` skips it for the one before. Before writing, the free space is
checked against an estimate (weights + optimizer state), and a disk that fills anyway gives a
:class:`~workbench.errors.WriteError` naming the folder and the MB needed.

Weights are safetensors; optimizer, scheduler and RNG states are plain tensors and numbers,
read back with ``torch.load(weights_only=True)``.

Layout of ``<run>/checkpoints/step-00000040/``::

    trainable.safetensors   the weights that train (the adapter, or all of them for "full")
    adapter/                the adapter in peft's format (adapter_config.json + safetensors)
    optimizer.pt  scheduler.pt  rng.pt
    state.json              step, data position, guard state, "format": 2
    manifest.json           size and SHA-256 of each file above (written last)

Checkpoints of the previous version have no manifest and no ``"format"`` in ``state.json``.
They are still accepted when every file loads (checked by reading them, as there is nothing to
compare against), so runs started before this version can be resumed. A checkpoint whose
``state.json`` says ``"format": 2`` but lacks its manifest is damaged.

Examples:
    >>> import tempfile
    >>> run_dir = Path(tempfile.mkdtemp())
    >>> (run_dir / CHECKPOINTS / "step-00000005").mkdir(parents=True)
    >>> path, skipped = newest_valid_checkpoint(run_dir)
    >>> path, [(p.name, why) for p, why in skipped]
    (None, [('step-00000005', 'no state.json (its write never finished)')])
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

from workbench._io import (
    check_free_space,
    staging_folder,
    translated_write_errors,
    verify_manifest,
    write_manifest,
)
from workbench._quiet import no_transformers_bars
from workbench.train.guards import TrainingError

__all__ = [
    "CHECKPOINTS",
    "MANIFEST",
    "best_checkpoint",
    "checkpoint_bytes",
    "checkpoint_problem",
    "checkpoint_step",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_trained_weights",
    "load_weights_into",
    "newest_valid_checkpoint",
    "prune_checkpoints",
    "remove_partial_checkpoints",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
FORMAT = 2  # state.json "format": written with a manifest (absent: the previous version)
_NAME = re.compile(r"^step-(\d+)$")
_TENSOR_FILES = ("optimizer.pt", "scheduler.pt", "rng.pt")
# Scheduler, RNG, state.json, the adapter config and peft's README: a few KB each.
_SMALL_FILES_BYTES = 64 * 1024


def checkpoint_step(path: Path) -> int:
    """The step number in a checkpoint folder's name.

    Examples:
        >>> checkpoint_step(Path("runs/x/checkpoints/step-00000040"))
        40
    """
    match = _NAME.match(Path(path).name)
    if not match:
        raise TrainingError(f"{path} is not a checkpoint folder (step-NNNNNNNN).")
    return int(match.group(1))


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Every ``step-*`` folder of a run, oldest first, whether complete or not.

    Examples:
        >>> list_checkpoints("/nonexistent-run")
        []
    """
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and p.is_dir()]
    return sorted(found, key=checkpoint_step)


def _read_state(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``state.json`` of a checkpoint, or why it cannot be read."""
    file = path / "state.json"
    if not file.is_file():
        return None, "no state.json (its write never finished)"
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return None, f"state.json is unreadable ({type(err).__name__}: {err})"
    if not isinstance(state, dict) or "step" not in state:
        return None, "state.json holds no step"
    return state, None


def _legacy_problem(path: Path) -> str | None:
    """Why a checkpoint without a manifest does not load, or ``None`` when all files load."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    name = "trainable.safetensors"
    try:
        load_file(str(path / name))
        for name in _TENSOR_FILES:
            torch.load(path / name, weights_only=True)
    except (
        SafetensorError,
        OSError,
        RuntimeError,
        EOFError,
        ValueError,
        pickle.UnpicklingError,
    ) as err:
        return f"{name} does not load ({type(err).__name__}: {str(err)[:120]})"
    return None


def checkpoint_problem(path: Path, full: bool = True) -> str | None:
    """Why the checkpoint at ``path`` cannot be used, or ``None`` when it can.

    Args:
        path: A ``step-*`` folder.
        full: Compare SHA-256 hashes (and load a manifest-less checkpoint's files);
            ``False`` compares sizes only and reads no weights (quick, used when pruning).

    Examples:
        >>> checkpoint_problem(Path("/nonexistent-run/checkpoints/step-00000001"))
        'no state.json (its write never finished)'
    """
    path = Path(path)
    if (path / MANIFEST).is_file():
        problem = verify_manifest(path, MANIFEST, hashes=full)
        return problem or _read_state(path)[1]
    state, problem = _read_state(path)
    if state is None:
        return problem
    if state.get("format", 1) >= FORMAT:
        return f"{MANIFEST} is missing"
    return _legacy_problem(path) if full else None


def newest_valid_checkpoint(run_dir: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint that passes :func:`checkpoint_problem`, and those skipped for it.

    Returns:
        ``(path or None, [(skipped path, reason), ...])``, the skipped ones newest first.

    Examples:
        >>> newest_valid_checkpoint("/nonexistent-run")
        (None, [])
    """
    skipped: list[tuple[Path, str]] = []
    for path in reversed(list_checkpoints(run_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped


def latest_checkpoint(run_dir: str | Path, before: int | None = None) -> Path | None:
    """The newest checkpoint of a run that passes the quick check (sizes), or ``None``;
    with ``before``, the newest of a step below it.

    Examples:
        >>> latest_checkpoint("/nonexistent-run") is None
        True
    """
    for path in reversed(list_checkpoints(run_dir)):
        if before is not None and checkpoint_step(path) >= before:
            continue
        if checkpoint_problem(path, full=False) is None:
            return path
    return None


def best_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint of a run's lowest eval loss, as early stopping kept it, or ``None``.

    The newest valid checkpoint's state names the step (``early_best_step``, written by runs
    with ``early_stopping``); ``None`` without early stopping, or when that checkpoint is gone
    or damaged.

    Examples:
        >>> best_checkpoint("/nonexistent-run") is None
        True
    """
    newest, _ = newest_valid_checkpoint(run_dir)
    state = _read_state(newest)[0] if newest is not None else None
    step = int((state or {}).get("early_best_step", -1))
    if step < 0:
        return None
    path = Path(run_dir) / CHECKPOINTS / f"step-{step:08d}"
    return path if path.is_dir() and checkpoint_problem(path) is None else None


def remove_partial_checkpoints(run_dir: str | Path) -> list[Path]:
    """Remove the staging folders (``.step-*.partial-*``) that a killed writer left.

    Call it only while holding the run's :class:`~workbench.train.lock.RunLock`, before the
    worker starts: then no write is in progress.

    Examples:
        >>> remove_partial_checkpoints("/nonexistent-run")
        []
    """
    root = Path(run_dir) / CHECKPOINTS
    found = sorted(root.glob(".step-*.partial-*")) if root.is_dir() else []
    for path in found:
        shutil.rmtree(path, ignore_errors=True)
    return found


def rng_state() -> dict[str, Any]:
    """The random generators' states, as a checkpoint stores them (``rng.pt``).

    Examples:
        >>> import torch
        >>> saved = rng_state()
        >>> first = torch.rand(1)
        >>> set_rng_state(saved)
        >>> torch.equal(torch.rand(1), first)
        True
    """
    import torch

    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Put back what :func:`rng_state` returned.

    Examples:
        >>> import torch
        >>> saved = rng_state()
        >>> drawn = torch.randint(0, 1000, (3,))
        >>> set_rng_state(saved)
        >>> torch.equal(torch.randint(0, 1000, (3,)), drawn)
        True
    """
    import torch

    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _trainable(model: Any) -> dict[str, Any]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def checkpoint_bytes(model: Any, optimizer: Any) -> int:
    """Estimated bytes of one checkpoint: trained weights (twice with an adapter) + optimizer.

    Examples:
        >>> import torch
        >>> layer = torch.nn.Linear(4, 4)
        >>> checkpoint_bytes(layer, torch.optim.SGD(layer.parameters())) - 64 * 1024
        80
    """
    import torch

    weights = sum(p.numel() * p.element_size() for p in _trainable(model).values())
    copies = 2 if hasattr(model, "peft_config") else 1  # adapter/ repeats the trained weights
    moments = sum(
        t.numel() * t.element_size()
        for s in optimizer.state.values()
        for t in s.values()
        if isinstance(t, torch.Tensor)
    )
    return weights * copies + moments + _SMALL_FILES_BYTES


def _write_files(
    folder: Path,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    state: dict[str, Any],
    weights: dict[str, Any] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> None:
    import torch
    from safetensors.torch import save_file

    given = weights is not None  # gathered from a sharded model's ranks
    if weights is None:
        weights = {n: p.detach().cpu() for n, p in _trainable(model).items()}
    weights = {n: t.contiguous() for n, t in weights.items()}
    save_file(weights, str(folder / "trainable.safetensors"))
    if hasattr(model, "peft_config"):
        # peft picks the adapter's tensors out of the state dict given, else its model's own.
        extra = {"state_dict": weights} if given else {}
        with no_transformers_bars():  # a bar per checkpoint in the training cell
            model.save_pretrained(str(folder / "adapter"), **extra)
    if optimizer_state is None:
        optimizer_state = optimizer.state_dict()
    torch.save(optimizer_state, folder / "optimizer.pt")
    torch.save(scheduler.state_dict(), folder / "scheduler.pt")
    torch.save(rng_state(), folder / "rng.pt")
    (folder / "state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")


def save_checkpoint(
    run_dir: Path,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    state: dict[str, Any],
    keep: int = 2,
    weights: dict[str, Any] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> Path:
    """Write a verified checkpoint atomically, then prune with :func:`prune_checkpoints`.

    Args:
        run_dir: The run folder.
        model: The model; its trainable parameters are saved.
        optimizer: Its optimizer.
        scheduler: Its learning-rate scheduler.
        state: JSON-ready position and guard state; ``state["step"]`` names the folder.
        keep: How many valid checkpoints to keep, this one included.
        weights: The trained tensors by name, whole and on CPU, to save instead of the
            model's own (``None``: the model's). A sharded model (a launched run with
            ``fsdp=True``) holds only shards: its ranks gather the whole tensors with
            :func:`~workbench.train.launch.sharded.full_trained_weights` and rank 0 passes them.
        optimizer_state: Likewise the optimizer's ``state_dict()``, whole, in the plain layout
            (:func:`~workbench.train.launch.sharded.full_optimizer_state`); ``None``: the
            optimizer's own. Either way the files are those of a one-process run.

    Returns:
        The checkpoint folder, ``run_dir/checkpoints/step-NNNNNNNN``.

    Raises:
        WriteError: not enough free space (checked before writing, from the weights' and
            optimizer state's bytes) or the disk filled during the write; the message names
            the folder and the MB needed, and earlier checkpoints are left as they were.

    Examples:
        >>> import tempfile, torch
        >>> layer = torch.nn.Linear(2, 2)
        >>> opt = torch.optim.SGD(layer.parameters(), lr=0.1)
        >>> sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        >>> run_dir = Path(tempfile.mkdtemp())
        >>> path = save_checkpoint(run_dir, layer, opt, sched, {"step": 10, "micro": 10})
        >>> path.name, checkpoint_problem(path), latest_checkpoint(run_dir) == path
        ('step-00000010', None, True)
    """
    target = Path(run_dir) / CHECKPOINTS / f"step-{state['step']:08d}"
    needed = checkpoint_bytes(model, optimizer)
    check_free_space(target, needed, f"checkpoint {target.name}")
    with (
        translated_write_errors(target.parent, needed),
        staging_folder(target, replace=True) as tmp,
    ):
        gathered = {"weights": weights, "optimizer_state": optimizer_state}
        gathered = {k: v for k, v in gathered.items() if v is not None}
        _write_files(tmp, model, optimizer, scheduler, {**state, "format": FORMAT}, **gathered)
        write_manifest(tmp, MANIFEST, {"format": FORMAT, "step": int(state["step"])})
    prune_checkpoints(run_dir, keep, target, best=state.get("early_best_step"))
    return target


def prune_checkpoints(
    run_dir: str | Path, keep: int, newest: Path, best: int | None = None
) -> list[Path]:
    """Delete checkpoints older than ``newest`` beyond the ``keep`` newest valid ones.

    Only checkpoints that pass the quick check count towards ``keep``, so damaged ones never
    push the last valid checkpoint out. Damaged checkpoints older than ``newest`` are deleted
    (a newer valid one exists). Checkpoints newer than ``newest`` are left alone: they are
    what a killed earlier process wrote past the point this run resumed from (resume found
    them damaged), and the run replaces each when it reaches its step.

    Args:
        run_dir: The run folder.
        keep: Valid checkpoints to keep, ``newest`` included (at least 1).
        newest: The checkpoint just written (it is never deleted).
        best: The step of the lowest eval loss of a run with early stopping: its checkpoint
            is kept besides the ``keep`` newest, as the run ends on its weights.

    Returns:
        The deleted folders.

    Examples:
        >>> prune_checkpoints("/nonexistent-run", 2, Path("step-00000004"))
        []
    """
    step = checkpoint_step(newest)
    older = [p for p in list_checkpoints(run_dir) if checkpoint_step(p) < step]
    valid = [p for p in older if checkpoint_problem(p, full=False) is None]
    kept = set(valid[len(valid) - (keep - 1) :]) if keep > 1 else set()
    kept |= {p for p in valid if checkpoint_step(p) == best}
    deleted = [p for p in older if p not in kept]
    for path in deleted:
        shutil.rmtree(path, ignore_errors=True)
    return deleted


def _damaged(path: Path, err: BaseException) -> TrainingError:
    msg = (
        f"checkpoint {path} is damaged ({type(err).__name__}: {str(err)[:200]}); "
        "Session.resume skips damaged checkpoints, or delete this folder."
    )
    return TrainingError(msg)


def _load_tensors(path: Path) -> tuple[dict[str, Any], list[Any]]:
    """Read a checkpoint's tensors; a damaged file becomes a :class:`TrainingError`."""
    import torch
    from safetensors import SafetensorError

    weights = load_trained_weights(path)
    try:
        states = [torch.load(path / name, weights_only=True) for name in _TENSOR_FILES]
    except (SafetensorError, OSError, EOFError, pickle.UnpicklingError, RuntimeError) as err:
        raise _damaged(path, err) from err
    return weights, states


def load_trained_weights(path: str | Path) -> dict[str, Any]:
    """The trained tensors of checkpoint ``path`` (adapter, or all weights for full tuning).

    Only ``trainable.safetensors`` is read, not the optimizer state. A damaged file is a
    :class:`~workbench.errors.TrainingError` naming the folder.

    Examples:
        >>> load_trained_weights("/nonexistent/checkpoint-00000004")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        workbench.errors.TrainingError: checkpoint /nonexistent/checkpoint-00000004 is damaged ...
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    try:
        return load_file(str(path / "trainable.safetensors"))
    except (SafetensorError, OSError, RuntimeError) as err:
        raise _damaged(path, err) from err


def load_weights_into(path: str | Path, model: Any) -> None:
    """Put the trained weights of checkpoint ``path`` into ``model`` (not the optimizer).

    Raises:
        TrainingError: the checkpoint is damaged or was written for other trainable weights.

    Examples:
        >>> import torch
        >>> layer = torch.nn.Linear(2, 2)
        >>> opt = torch.optim.SGD(layer.parameters(), lr=0.1)
        >>> sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        >>> saved = save_checkpoint("/tmp/wb-doc-checkpoint-into", layer, opt, sched, {"step": 3})
        >>> before = layer.weight.detach().clone()
        >>> with torch.no_grad():
        ...     _ = layer.weight.zero_()
        >>> load_weights_into(saved, layer)
        >>> torch.equal(layer.weight, before)
        True
    """
    _copy_weights(Path(path), load_trained_weights(path), model)


def _copy_weights(path: Path, weights: dict[str, Any], model: Any) -> None:
    import torch

    from workbench.train.launch.sharded import shard_like

    params = _trainable(model)
    if set(weights) != set(params):
        extra = sorted(set(weights) ^ set(params))[:5]
        msg = (
            f"checkpoint {path} does not match the model's trainable weights (e.g. {extra}); "
            "was it written for another model or adapter?"
        )
        raise TrainingError(msg)
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(shard_like(weights[name], param))


_KERNEL_FLAGS = ("fused", "foreach", "capturable", "differentiable")


def _same_kernels(optimizer: Any, state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with the optimizer's own kernel choice in each group.

    ``load_state_dict`` takes every group setting from the file, so a checkpoint written by
    an unfused AdamW (an older run, or another device) would switch the kernel off, or one
    written on CUDA with ``fused`` would ask for it where there is none. The update rule is
    the same either way; only the kernel is the running optimizer's to choose.
    """
    current = optimizer.param_groups
    groups = [
        {**saved, **{k: mine[k] for k in _KERNEL_FLAGS if k in mine}}
        for saved, mine in zip(state["param_groups"], current, strict=False)
    ]
    return {**state, "param_groups": groups}


def load_checkpoint(path: Path, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Load weights, optimizer, scheduler and RNG from ``path``; return its ``state.json``.

    A sharded model and its optimizer (a launched run with ``fsdp=True``) load the same
    files: each rank keeps its shard of every tensor
    (:func:`~workbench.train.launch.sharded.shard_like`), so a checkpoint written by one
    process resumes on several, and the other way round.

    Raises:
        TrainingError: the checkpoint's weights do not match the model's trainable ones, or
            a file of it does not load (check it first with :func:`checkpoint_problem`).

    Examples:
        >>> import torch
        >>> layer = torch.nn.Linear(2, 2)
        >>> opt = torch.optim.SGD(layer.parameters(), lr=0.1)
        >>> sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        >>> run_dir = Path("/tmp/wb-doc-checkpoint-load")
        >>> saved = save_checkpoint(run_dir, layer, opt, sched, {"step": 10, "micro": 10})
        >>> before = layer.weight.detach().clone()
        >>> with torch.no_grad():
        ...     _ = layer.weight.zero_()
        >>> path, skipped = newest_valid_checkpoint(run_dir)
        >>> state = load_checkpoint(path, layer, opt, sched)
        >>> path.name, state["step"], torch.equal(layer.weight, before)
        ('step-00000010', 10, True)
        >>> load_checkpoint(path, torch.nn.Sequential(layer), opt, sched)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        workbench.errors.TrainingError: checkpoint ... does not match the model's trainable ...
    """

    state, problem = _read_state(path)
    if state is None:
        raise TrainingError(f"checkpoint {path} is damaged: {problem}.")
    weights, (optimizer_state, scheduler_state, rng) = _load_tensors(path)
    _copy_weights(path, weights, model)
    from workbench.train.launch.sharded import sharded_optimizer_state

    optimizer.load_state_dict(
        _same_kernels(optimizer, sharded_optimizer_state(optimizer, optimizer_state))
    )
    scheduler.load_state_dict(scheduler_state)
    set_rng_state(rng)
    return state
