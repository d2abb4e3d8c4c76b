"""One process of a launched run: ``accelerate launch -m workbench.train.launch.rank RUN``.

Every rank loads the base model named in ``run.json`` and the run folder's tokenized data,
restores the newest valid checkpoint if there is one, and trains with the workbench's own
:class:`~workbench.train.run.Run` and :class:`~workbench.train.worker.Worker` around a
:class:`~workbench.train.launch.loop.RankLoop`. So a launched run logs, evaluates, probes,
guards, stops early and checkpoints exactly like a run in one process, and its checkpoints
are the same files: either kind resumes the other.

With ``fsdp=True`` the ranks shard the model between them
(:mod:`~workbench.train.launch.sharded`): each forward pass then gathers weights from every
rank, so every rank also generates the probes and joins in the collapse check, and every
rank joins in gathering the whole weights and optimizer state for each checkpoint.

Rank 0 alone writes the run folder (``status.json``, ``history.jsonl``, ``probes.jsonl``,
checkpoints) and holds its lock; it reads the notebook's ``control.json`` and, at every step
boundary, tells the other ranks what to do (go, pause, evaluate, save, stop) with one
broadcast, so all ranks act at the same step. While paused, that broadcast repeats every few
tenths of a second ("hold"), so no rank waits long enough for the process group to time out.
If the notebook that launched the run dies, rank 0 stops the run at the next step boundary
(with a checkpoint): nothing trains on unwatched, and a new kernel can resume it.

Each rank's output goes to ``<run>/ranks/rank-<k>.log`` and its pid to ``rank-<k>.json``.

Examples:
    >>> RankWorker.hold_seconds
    0.3
"""

from __future__ import annotations

import functools
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from workbench._io import process_alive
from workbench._quiet import no_transformers_bars, quiet_third_party
from workbench.errors import SpecError
from workbench.train import store
from workbench.train.checkpoint import (
    newest_valid_checkpoint,
    remove_partial_checkpoints,
)
from workbench.train.launch.control import Control, apply_control, read_control
from workbench.train.launch.loop import RankLoop
from workbench.train.launch.sharded import full_optimizer_state, full_trained_weights
from workbench.train.launch.spec import TRUST_VARIABLE, LaunchSpec
from workbench.train.lock import RunLock
from workbench.train.spec import TrainSpec
from workbench.train.status import RunState
from workbench.train.worker import Worker

__all__ = ["RANKS", "RankWorker", "main"]

RANKS = "ranks"  # <run>/ranks/rank-<k>.log and rank-<k>.json


class RankWorker(Worker):
    """The worker of one rank: rank 0 decides each step boundary and tells the others.

    Examples:
        See :func:`main`; ``tests/test_launch.py`` runs it on two processes.
    """

    hold_seconds = 0.3

    def __init__(self, run: Any) -> None:
        super().__init__(run)
        self.accelerator = run.loop.accelerator
        self.sharded = run.loop.sharded
        self.hold_timeout = self.hold_seconds
        if self.sharded:
            # Every rank generates the probes (each forward pass gathers from all of them),
            # kept in step by ``synced_gpus``: a rank whose answers ended early goes on
            # joining forward passes until every rank's have ended.
            self.generate_options = {"synced_gpus": True}

    def _next_action(self) -> str:
        from accelerate.utils import broadcast_object_list

        action = [super()._next_action() if self.accelerator.is_main_process else None]
        broadcast_object_list(action, from_process=0)
        if action[0] == "stop" and not self.accelerator.is_main_process:
            with self.run._cond:  # so that this rank ends "stopped", like rank 0
                self.run._stop = True
        return action[0]

    def save(self) -> Path | None:
        """Rank 0 writes the checkpoint: with DDP from its own copy of the weights; sharded,
        every rank first joins in gathering the whole weights and optimizer state."""
        main = self.accelerator.is_main_process
        if self.sharded:
            weights = full_trained_weights(self.run.model, keep=main)
            optimizer_state = full_optimizer_state(self.loop.optimizer, keep=main)
            if main:
                return self._write_checkpoint(weights=weights, optimizer_state=optimizer_state)
        elif main:
            return super().save()
        self.run._saved_step = self.loop.step
        return None


def _redirect_output(run_dir: Path, rank: int) -> None:
    folder = run_dir / RANKS
    folder.mkdir(exist_ok=True)
    log = os.open(folder / f"rank-{rank}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    (folder / f"rank-{rank}.json").write_text(
        json.dumps({"rank": rank, "pid": os.getpid(), "host": socket.gethostname()})
    )


def _load_model(
    meta: dict[str, Any], run_dir: Path, device: str, sharded: bool = False
) -> tuple[Any, Any]:
    from workbench.models.loading import load_model
    from workbench.train.start import check_remote_code_allowed

    model_spec = meta.get("model_spec") or {}
    if not model_spec.get("spec"):
        raise SpecError(f"{run_dir}/run.json names no model (model_spec.spec is empty).")
    options = {k: model_spec[k] for k in ("quantization", "dtype") if model_spec.get(k)}
    options["trust_remote_code"] = os.environ.get(TRUST_VARIABLE) == "1"  # never run.json's
    check_remote_code_allowed(meta, run_dir, options["trust_remote_code"])
    if sharded:
        return _load_on_cpu(model_spec["spec"], device, options)
    loaded = load_model(model_spec["spec"], on_event=lambda _m: None, device=device, **options)
    return loaded.model, loaded.tokenizer


def _load_on_cpu(spec: str, device: str, options: dict[str, Any]) -> tuple[Any, Any]:
    """The model as ``load_model`` gives it on ``device`` (the same dtype), but in CPU memory.

    For a sharded run: ``fully_shard`` then moves each rank's shards to ``device``, unit by
    unit, so the device never holds the whole model (the point of ``fsdp=True``).
    """
    from workbench.models.loading import _from_pretrained, _resolve_device_dtype, resolve_source

    if options.get("quantization"):
        raise SpecError(
            f"fsdp=True cannot shard a model loaded with quantization={options['quantization']!r}"
            ": train it with fsdp=False, or load it unquantized to shard it."
        )
    quiet_third_party()
    _, dtype = _resolve_device_dtype(device, options.get("dtype", "auto"))
    trust = bool(options.get("trust_remote_code"))
    with no_transformers_bars():  # one "Loading weights" bar per rank in the run's log
        source = resolve_source(spec, lambda _m: None)  # a GGUF's conversion writes weights
        model, tokenizer = _from_pretrained(source, None, dtype, "cpu", trust)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


def _follow_control(run: Any, run_dir: Path) -> None:
    """Rank 0's thread: apply the notebook's control file; stop if the notebook is gone."""
    follower = int(os.environ.get("WORKBENCH_FOLLOWER_PID") or 0)
    seen = Control()
    while not run._ended():
        try:
            seen = apply_control(run, seen, read_control(run_dir))
        except SpecError as err:  # e.g. step_once before the pause took effect: ask again
            print(f"control: {err}", flush=True)
        if follower and not process_alive(follower):
            print(f"the notebook (pid {follower}) is gone: stopping the run", flush=True)
            run.stop()
            return
        time.sleep(0.2)


def _build_run(run_dir: Path, accelerator: Any, sharded: bool = False) -> Any:
    from workbench.train.start import (
        _drop_untrained_quietly,
        _history_until,
        _launch,
        _probes_until,
        _skipped_notes,
        json_step,
    )

    main = accelerator.is_main_process
    meta = store.read_meta(run_dir)
    spec = TrainSpec.from_dict(meta["spec"])
    lock = RunLock(run_dir) if main else None
    if lock is not None:
        lock.acquire()
        store.remove_partial_runs(run_dir)
        remove_partial_checkpoints(run_dir)
    accelerator.wait_for_everyone()
    device = accelerator.device
    where = "cpu" if device.type == "cpu" else f"{device.type}:{device.index or 0}"
    model, tokenizer = _load_model(meta, run_dir, where, sharded)
    checkpoint, skipped = newest_valid_checkpoint(run_dir)
    train = store.load_examples(run_dir, "train")
    validation = store.load_examples(run_dir, "validation")
    kept, _ = _drop_untrained_quietly(train)
    history, probe_rows = [], []
    if main:
        logged = store.read_jsonl(run_dir / store.HISTORY)
        history = _history_until(run_dir, logged, json_step(checkpoint))
        history += _skipped_notes(run_dir, skipped, checkpoint, history)
        probe_rows = _probes_until(run_dir, json_step(checkpoint))
    if sharded:  # every rank generates the probes: each must know if the base ones are done
        probe_rows = _from_rank_0(probe_rows)
    run = _launch(
        run_dir,
        None,
        model,
        tokenizer,
        kept,
        validation,
        spec,
        # DDP: rank 0 alone generates the probes; sharded: every rank takes part.
        meta if main or sharded else {**meta, "probes": [], "probe_ids": None},
        history,
        lock,
        probe_rows,
        checkpoint,
        make_loop=functools.partial(RankLoop, accelerator=accelerator, sharded=sharded),
        start=False,
    )
    run.worker_class, run.writes_files = RankWorker, main
    if sharded:
        # The ranks' layer norms stay in their memory (no file carries them to the notebook),
        # and norms.group_norms reads whole tensors, not shards: no need to compute them.
        run.track_layer_norms(False)
        print(
            f"rank {accelerator.process_index}: model sharded in {run.loop.units} units "
            f"(FSDP2) over {accelerator.num_processes} ranks on {device.type}",
            flush=True,
        )
    return run


def _from_rank_0(value: Any) -> Any:
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def main(argv: list[str] | None = None) -> int:
    """Train the run folder ``argv[0]`` as one rank; 0 when it finished or was stopped.

    Examples:
        It runs under ``accelerate launch`` (see :class:`~workbench.train.launch.LaunchSpec`
        and :meth:`Session.train`); without a run folder it says what it needs:

        >>> main([])
        usage: accelerate launch -m workbench.train.launch.rank RUN_FOLDER
        2
    """
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: accelerate launch -m workbench.train.launch.rank RUN_FOLDER")
        return 2
    from datetime import timedelta

    from accelerate import Accelerator, InitProcessGroupKwargs
    from accelerate.utils import DistributedType

    quiet_third_party()  # a rank's log is read when it fails: keep it to what matters
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    run_dir = Path(args[0]).resolve()
    launch = LaunchSpec.from_dict(store.read_meta(run_dir).get("launch") or {})
    accelerator = Accelerator(
        cpu=launch.on_cpu,
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(minutes=30))],
    )
    _redirect_output(run_dir, accelerator.process_index)
    # An accelerate config of the user's own that asks for FSDP is sharded the same way.
    sharded = launch.fsdp or accelerator.distributed_type == DistributedType.FSDP
    run = _build_run(run_dir, accelerator, sharded)
    run.start()
    if accelerator.is_main_process:
        threading.Thread(target=_follow_control, args=(run, run_dir), daemon=True).start()
    status = run.wait()
    why = f": {status.error}" if status.error else ""
    print(f"rank {accelerator.process_index}: {status.state.value} at step {status.step}{why}")
    if status.state is RunState.FAILED and not accelerator.is_main_process:
        # A guard fails every rank at once: give rank 0 the time to record why before this
        # exit makes the launcher stop it.
        time.sleep(5)
    accelerator.end_training()
    return 0 if status.state in (RunState.FINISHED, RunState.STOPPED) else 1


if __name__ == "__main__":
    sys.exit(main())
