"""Training: LoRA / QLoRA / full fine-tuning on a background thread, with atomic checkpoints.

Examples:
    >>> from workbench.train import LoRA, TrainSpec
    >>> TrainSpec(epochs=2, lr=2e-4, lora=LoRA(r=8)).lora.alpha
    16
    >>> # run = start_run(model, tok, train, val, spec, Path("runs/a"), hub, model_spec, wait=False)
    >>> # run.pause(); run.resume(); run.stop(); run.wait()
    >>> # run = resume_run("runs/a", hub, wait=True)
"""

from __future__ import annotations

from workbench.train.guards import OutOfMemoryError, TrainingError
from workbench.train.records import LogRecord
from workbench.train.run import (
    EVENT_CHECKPOINT,
    EVENT_LAYER_NORMS,
    EVENT_LOG,
    EVENT_PROBES,
    EVENT_STATE,
    Run,
)
from workbench.train.spec import LoRA, Method, SchedulerName, TrainSpec
from workbench.train.start import resume_run, start_run
from workbench.train.status import RunState, RunStatus

__all__ = [
    "EVENT_CHECKPOINT",
    "EVENT_LAYER_NORMS",
    "EVENT_LOG",
    "EVENT_PROBES",
    "EVENT_STATE",
    "LoRA",
    "LogRecord",
    "Method",
    "OutOfMemoryError",
    "Run",
    "RunState",
    "RunStatus",
    "SchedulerName",
    "TrainSpec",
    "TrainingError",
    "resume_run",
    "start_run",
]
