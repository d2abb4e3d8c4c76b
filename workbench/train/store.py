"""The run folder on disk: settings, tokenized data, history, probes and status.

Layout of a run folder::

    run.json          spec, model spec, planned steps, probe prompts, the reasons of the
                      settings chosen at the start (``<setting>_choice``); later the first
                      step's packing decision and a resume's processes (replaced atomically)
    data/train/       tokenized training data (datasets.save_to_disk)
    data/validation/  tokenized validation data, if any
    history.jsonl     one LogRecord per line
    probes.jsonl      probe answers per evaluation (the base model's first)
    status.json       the latest RunStatus
    checkpoints/      see workbench.train.checkpoint

The folder is created complete (written under a temporary name, then renamed), so a folder
either holds a run or nothing.

Examples:
    >>> try:
    ...     read_meta("/nonexistent-run")
    ... except SpecError as err:
    ...     print(str(err)[:52])
    /nonexistent-run holds no training run (no run.json)
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

from workbench._io import (
    append_jsonl,
    atomic_write_text,
    read_jsonl,
    rewrite_jsonl,
    staging_folder,
    temporaries,
    translated_write_errors,
    verify_manifest,
    write_manifest,
)
from workbench.errors import SpecError, WorkbenchWarning
from workbench.train.batches import Examples
from workbench.train.records import history_rows
from workbench.train.status import RunState

_STATES = {state.value for state in RunState}

__all__ = [
    "HISTORY",
    "PROBES",
    "RUN_FILE",
    "STARTING_CHOICES",
    "STATUS",
    "append_jsonl",
    "check_data",
    "check_new_folder",
    "chosen_at_start",
    "create_run_folder",
    "load_examples",
    "read_jsonl",
    "read_meta",
    "read_status",
    "remove_partial_runs",
    "rewrite_jsonl",
    "write_meta",
    "write_status",
]

RUN_FILE, HISTORY, PROBES, STATUS = "run.json", "history.jsonl", "probes.jsonl", "status.json"
DATA_MANIFEST = "manifest.json"  # in data/: sizes and SHA-256 of the tokenized data
# Settings given as "auto" that a run decides when it starts; run.json keeps each reason
# under "<setting>_choice" next to the decided value in its spec.
STARTING_CHOICES = ("batch_size", "gradient_checkpointing")


def chosen_at_start(meta: dict[str, Any]) -> dict[str, str]:
    """The reasons ``run.json`` keeps for the settings its run chose when it started.

    Examples:
        >>> chosen_at_start({"spec": {}, "batch_size_choice": "batch_size='auto' chose 8"})
        {'batch_size': "batch_size='auto' chose 8"}
    """
    return {name: meta[f"{name}_choice"] for name in STARTING_CHOICES if meta.get(f"{name}_choice")}


def check_new_folder(run_dir: Path) -> None:
    """Raise :class:`SpecError` unless ``run_dir`` is absent or an empty folder.

    Examples:
        >>> check_new_folder(Path("/nonexistent-new-run"))
    """
    if (run_dir / RUN_FILE).exists():
        msg = (
            f"{run_dir} already holds a training run: continue it with "
            "Session.resume(folder), or start a new run in another folder."
        )
        raise SpecError(msg)
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise SpecError(f"{run_dir} exists and is not an empty folder; give a new run folder.")


def _save_examples(examples: Examples, folder: Path) -> None:
    from datasets import Dataset
    from datasets.utils import logging as ds_logging

    data = Dataset.from_dict(
        {
            "input_ids": [a.tolist() for a in examples.input_ids],
            "labels": [a.tolist() for a in examples.labels],
        }
    )
    was_enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()  # nothing may print into the user's current cell
    try:
        data.save_to_disk(str(folder))
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()


def create_run_folder(
    run_dir: Path, meta: dict[str, Any], train: Examples, validation: Examples | None
) -> Path:
    """Write ``run.json`` and the tokenized data, all at once (temporary folder + rename).

    Examples:
        >>> from workbench.train.batches import Examples
        >>> train = Examples.from_rows([[1, 2, 3], [4, 5]], [[-100, 2, 3], [-100, 5]])
        >>> run_dir = Path("/tmp/wb-doc-store-create")
        >>> run_dir = create_run_folder(run_dir, {"total_steps": 60}, train, None)
        >>> sorted(p.name for p in run_dir.iterdir())
        ['data', 'run.json']
    """
    # A full disk met by datasets' save_to_disk was a bare "[Errno 28]" naming no folder.
    with translated_write_errors(run_dir), staging_folder(run_dir, replace=run_dir.exists()) as tmp:
        _save_examples(train, tmp / "data" / "train")
        if validation is not None:
            _save_examples(validation, tmp / "data" / "validation")
        write_manifest(tmp / "data", DATA_MANIFEST)
        (tmp / RUN_FILE).write_text(json.dumps(meta, indent=1))
    return run_dir


def check_data(run_dir: str | Path) -> None:
    """Refuse a run whose tokenized data changed since it was written (its manifest's
    sizes and SHA-256): resuming would train on other tokens, or crash inside torch.

    Runs written before the manifest existed are not checked.

    Examples:
        >>> from workbench.train.batches import Examples
        >>> train = Examples.from_rows([[1, 2, 3]], [[-100, 2, 3]])
        >>> run_dir = create_run_folder(Path("/tmp/wb-doc-store-check"), {}, train, None)
        >>> check_data(run_dir)  # intact
    """
    folder = Path(run_dir) / "data"
    if not (folder / DATA_MANIFEST).is_file():
        return
    problem = verify_manifest(folder, DATA_MANIFEST)
    if problem is not None:
        msg = (
            f"{folder} is damaged ({problem}): the run's tokenized data is not what it "
            "trained on, so it cannot be resumed; train a new run from the data"
        )
        raise SpecError(msg)


def remove_partial_runs(run_dir: Path) -> list[Path]:
    """Remove the staging folders (``.NAME.partial-XXXXXXXX``) a killed start left beside
    ``run_dir`` (:func:`~workbench._io.temporaries`).

    Only this run's name is matched: staging folders of other runs may belong to a start in
    progress in another process. Call it while holding the run's lock.

    Examples:
        >>> remove_partial_runs(Path("/nonexistent-parent/run"))
        []
    """
    found = temporaries(run_dir, "staging")
    for path in found:
        shutil.rmtree(path, ignore_errors=True)
    return found


def read_meta(run_dir: str | Path) -> dict[str, Any]:
    """Read ``run.json``.

    Raises:
        SpecError: the folder holds no run, or its ``run.json`` is unreadable.

    Examples:
        >>> from workbench.train.batches import Examples
        >>> train = Examples.from_rows([[1, 2, 3], [4, 5]], [[-100, 2, 3], [-100, 5]])
        >>> run_dir = Path("/tmp/wb-doc-store-meta")
        >>> run_dir = create_run_folder(run_dir, {"total_steps": 60}, train, None)
        >>> read_meta(run_dir)["total_steps"]
        60
    """
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        msg = (
            f"{run_dir} holds no training run (no run.json). Give the folder that "
            "a training run wrote (it holds run.json, data/ and checkpoints/)."
        )
        raise SpecError(msg)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # JSON and UTF-8 errors are ValueErrors
        raise SpecError(f"{path} is not a readable run file: {err}.") from err
    if not isinstance(meta, dict):
        raise SpecError(f"{path} is not a readable run file: it holds no JSON object.")
    return meta


def write_meta(run_dir: str | Path, meta: dict[str, Any]) -> None:
    """Replace ``run.json`` atomically (e.g. a resume on other processes records them).

    Examples:
        >>> run_dir = Path("/tmp/wb-doc-store-write-meta")
        >>> run_dir.mkdir(exist_ok=True)
        >>> write_meta(run_dir, {"total_steps": 8})
        >>> read_meta(run_dir)["total_steps"]
        8
    """
    atomic_write_text(Path(run_dir) / RUN_FILE, json.dumps(meta, indent=1), parents=False)


def load_examples(run_dir: Path, split: str) -> Examples | None:
    """Tokenized data saved in the run folder (``None`` if that split was not given).

    Examples:
        >>> from workbench.train.batches import Examples
        >>> train = Examples.from_rows([[1, 2, 3], [4, 5]], [[-100, 2, 3], [-100, 5]])
        >>> run_dir = Path("/tmp/wb-doc-store-examples")
        >>> run_dir = create_run_folder(run_dir, {"total_steps": 60}, train, None)
        >>> load_examples(run_dir, "train").lengths.tolist()
        [3, 2]
        >>> load_examples(run_dir, "validation") is None
        True
    """
    from datasets import load_from_disk

    folder = run_dir / "data" / split
    if not folder.is_dir():
        return None
    return Examples.from_dataset(load_from_disk(str(folder)), split)


def write_status(run_dir: Path, status: dict[str, Any]) -> None:
    """Write ``status.json`` atomically.

    Examples:
        >>> run_dir = Path("/tmp/wb-doc-store-status")
        >>> run_dir.mkdir(exist_ok=True)
        >>> write_status(run_dir, {"state": "running", "step": 3})
        >>> json.loads((run_dir / STATUS).read_text())
        {'state': 'running', 'step': 3}
    """
    atomic_write_text(run_dir / STATUS, json.dumps(status, indent=1), parents=False)


_LIVE_STATES = ("created", "running", "paused", "stopping")


def read_status(run_dir: str | Path) -> dict[str, Any]:
    """The run's status as its folder tells it, honest about a trainer that is gone.

    ``status.json`` is written when the state changes, so a process killed while training
    (SIGKILL, a kernel restart, a machine going down) leaves it saying "running" at the
    step it started from. When no live process holds the folder's lock, such a run is
    reported as failed at the last step its history records, with the way on; a damaged
    ``status.json`` is named in a warning and the status is read from the history.

    Examples:
        >>> run_dir = Path("/tmp/wb-doc-store-read-status")
        >>> run_dir.mkdir(exist_ok=True)
        >>> write_status(run_dir, {"state": "finished", "step": 8, "total_steps": 8})
        >>> read_status(run_dir)["state"]
        'finished'
    """
    from workbench.train.lock import is_held

    run_dir = Path(run_dir)
    status = _status_file(run_dir)
    if status.get("state", "created") in _LIVE_STATES:
        if is_held(run_dir):  # training elsewhere: the history has the steps since
            status.update(_progress(history_rows(run_dir / HISTORY), status))
        else:
            status.update(_interrupted(run_dir, status))
    return status


def _progress(history: list[dict[str, Any]], status: dict[str, Any]) -> dict[str, Any]:
    """The step, loss and eval loss a run's history holds past what its status file says
    (written at state changes only): a run another process trains is not at step 0."""
    steps = [r for r in history if r.get("kind") == "train"]
    evals = [r for r in history if r.get("kind") == "eval" and r.get("eval_loss") is not None]
    last = steps[-1] if steps else {}
    if not last or last.get("step", 0) <= status.get("step", 0):
        return {}
    update = {"step": last["step"], "loss": last.get("loss"), "epoch": last.get("epoch", 0.0)}
    for name in ("elapsed", "tokens_per_s", "memory"):
        if last.get(name) is not None:
            update[name] = last[name]
    if evals:
        update["eval_loss"] = evals[-1]["eval_loss"]
    return update


def _status_file(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATUS
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
        state = status.get("state", "created") if isinstance(status, dict) else "created"
        if not isinstance(state, str) or state not in _STATES:
            raise ValueError(f"unknown state {state!r}")
    except FileNotFoundError:
        status = None
    except (OSError, ValueError) as err:
        warnings.warn(f"{path} is damaged ({err}); the run's status is read from its history",
                      WorkbenchWarning, stacklevel=3)  # fmt: skip
        status = None
    if not isinstance(status, dict):
        status = {"run_dir": str(run_dir)}
        if (run_dir / RUN_FILE).is_file():
            status["total_steps"] = read_meta(run_dir).get("total_steps", 0)
    return status


def _interrupted(run_dir: Path, status: dict[str, Any]) -> dict[str, Any]:
    """The status of a run whose trainer ended without finishing: its last recorded step."""
    from workbench.train.checkpoint import checkpoint_step, newest_valid_checkpoint

    # what the history knows of the steps the status file never saw
    progress = _progress(history_rows(run_dir / HISTORY), {})
    checkpoint, _skipped = newest_valid_checkpoint(run_dir)
    since = f"step {checkpoint_step(checkpoint)}" if checkpoint is not None else "step 0"
    error = (
        f"interrupted at step {progress.get('step', status.get('step', 0))}: the process "
        "training it ended without finishing (killed, or its kernel restarted); "
        f"Session.resume({str(run_dir)!r}) goes on from {since}"
    )
    return {"state": "failed", "error": error, "message": error, **progress}
