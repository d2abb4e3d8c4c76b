"""Training: LoRA / QLoRA / full fine-tuning on a background thread, with atomic checkpoints.

Examples:
    >>> from workbench.train import LoRA, TrainSpec
    >>> TrainSpec(epochs=2, lr=2e-4, lora=LoRA(r=8)).lora.alpha
    16
    >>> import shutil
    >>> from workbench.models.loading import load_model
    >>> from workbench.models.tiny import build_tiny_model
    >>> folder = str(build_tiny_model("/tmp/wb-doc-train-tiny"))
    >>> loaded = load_model(folder, on_event=lambda message: None)
    >>> tok = loaded.tokenizer
    >>> ids = [tok(text).input_ids + [tok.eos_token_id] for text in ("cat => red", "dog => blue")]
    >>> shutil.rmtree("/tmp/wb-doc-train-run", ignore_errors=True)
    >>> run = start_run(loaded.model, tok, {"input_ids": ids, "labels": ids}, None,
    ...                 TrainSpec(max_steps=100, batch_size=2), "/tmp/wb-doc-train-run", None,
    ...                 {"spec": folder}, wait=False)
    >>> run.pause().state
    <RunState.PAUSED: 'paused'>
    >>> run.resume().done
    False
    >>> run.stop().state, run.wait().state
    (<RunState.STOPPING: 'stopping'>, <RunState.STOPPED: 'stopped'>)
    >>> run = resume_run("/tmp/wb-doc-train-run")  # reloads the model named in run.json
    >>> run.stop().state, run.wait().state
    (<RunState.STOPPING: 'stopping'>, <RunState.STOPPED: 'stopped'>)
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
from workbench.train.start import (
    check_remote_code_allowed,
    check_resumable,
    resume_run,
    start_run,
)
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
    "check_remote_code_allowed",
    "check_resumable",
    "resume_run",
    "start_run",
]
