"""Helpers shared by the training tests: a fresh tiny model and a run on the toy task."""

from __future__ import annotations

from pathlib import Path

from train_fixtures import toy_dataset

from workbench.events import EventHub
from workbench.models.loading import load_model
from workbench.train import TrainSpec, start_run


def fresh(model_dir: Path, **options):
    """A freshly loaded tiny model (start_run wraps the model in place, so one per run)."""
    return load_model(str(model_dir), on_event=lambda _m: None, **options)


def toy_run(
    model_dir: Path,
    run_dir: Path,
    spec: TrainSpec,
    events: EventHub | None = None,
    wait: bool = True,
    validation: bool = True,
    probes=None,
    loaded=None,
    n: int = 64,
):
    """Start a run of ``spec`` on the toy task (64 training and 16 validation examples)."""
    loaded = loaded or fresh(model_dir)
    train = toy_dataset(loaded.tokenizer, n, seed=0)
    val = toy_dataset(loaded.tokenizer, 16, seed=1) if validation else None
    return start_run(
        loaded.model,
        loaded.tokenizer,
        train,
        val,
        spec,
        run_dir,
        events or EventHub(),
        {"spec": str(model_dir)},
        wait=wait,
        probes=probes,
    )


def train_losses(run) -> list[float]:
    """Training loss of every step, in order."""
    return [r.loss for r in run.history if r.kind == "train"]


class Recorder:
    """Collects the state sequence a run publishes (``train_state`` events)."""

    def __init__(self, events: EventHub) -> None:
        self.states: list[str] = []
        self.off = events.on("train_state", lambda p: self.states.append(p.status.state.value))


def delete_under_a_writer(folder: Path) -> None:
    """Delete ``folder`` while a run's worker may still be writing into it (a file it renames
    into place between two removals made ``shutil.rmtree`` fail with "Directory not empty")."""
    import shutil

    while folder.exists():
        shutil.rmtree(folder, ignore_errors=True)
