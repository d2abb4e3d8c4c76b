"""Atomic checkpoints: trained weights, optimizer, scheduler, RNG and data position.

A checkpoint is written into a hidden temporary folder beside its final name and renamed
when complete, so a kill at any moment leaves every earlier checkpoint intact and never a
half-written one under a real name. Weights are safetensors; optimizer, scheduler and RNG
states are plain tensors and numbers, read back with ``torch.load(weights_only=True)``.

Layout of ``<run>/checkpoints/step-00000040/``::

    trainable.safetensors   the weights that train (the adapter, or all of them for "full")
    adapter/                the adapter in peft's format (adapter_config.json + safetensors)
    optimizer.pt  scheduler.pt  rng.pt
    state.json              step, data position, guard state (written last)

Examples:
    >>> # path = save_checkpoint(run_dir, model, optimizer, scheduler, {"step": 10}, keep=2)
    >>> # latest_checkpoint(run_dir) == path
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from workbench._io import staging_folder
from workbench.train.guards import TrainingError

__all__ = ["checkpoint_step", "latest_checkpoint", "load_checkpoint", "save_checkpoint"]

CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"^step-(\d+)$")


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


def _complete(folder: Path) -> list[Path]:
    root = folder / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and (p / "state.json").is_file()]
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or ``None``.

    Examples:
        >>> latest_checkpoint("/nonexistent-run") is None
        True
    """
    found = _complete(Path(run_dir))
    return found[-1] if found else None


def _rng_state() -> dict[str, Any]:
    import torch

    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_checkpoint(run_dir: Path, model: Any, optimizer: Any, scheduler: Any,
                    state: dict[str, Any], keep: int = 2) -> Path:
    """Write a checkpoint atomically and delete all but the ``keep`` newest.

    Examples:
        >>> # save_checkpoint(Path("runs/x"), model, opt, sched, {"step": 10, "micro": 10})
    """
    import torch
    from safetensors.torch import save_file

    target = Path(run_dir) / CHECKPOINTS / f"step-{state['step']:08d}"
    with staging_folder(target, replace=True) as tmp:
        weights = {n: p.detach().contiguous().cpu()
                   for n, p in model.named_parameters() if p.requires_grad}
        save_file(weights, str(tmp / "trainable.safetensors"))
        if hasattr(model, "peft_config"):
            model.save_pretrained(str(tmp / "adapter"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(_rng_state(), tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
    for old in _complete(Path(run_dir))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(path: Path, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Load weights, optimizer, scheduler and RNG from ``path``; return its ``state.json``.

    Raises:
        TrainingError: the checkpoint's weights do not match the model's trainable ones.

    Examples:
        >>> # state = load_checkpoint(latest_checkpoint(run_dir), model, opt, sched)
    """
    import torch
    from safetensors.torch import load_file

    weights = load_file(str(path / "trainable.safetensors"))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(weights) != set(params):
        extra = sorted(set(weights) ^ set(params))[:5]
        msg = (f"checkpoint {path} does not match the model's trainable weights (e.g. {extra}); "
               "was it written for another model or adapter?")
        raise TrainingError(msg)
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(weights[name])
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((path / "state.json").read_text())
