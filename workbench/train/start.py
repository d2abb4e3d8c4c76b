"""Start a training run, or resume one from its folder in a new process.

Examples:
    A run of 40 steps on the tiny model, stopped early, then resumed from its folder the way
    a fresh process would (the model is reloaded from the spec stored in ``run.json``):

    >>> import shutil
    >>> from workbench.models.loading import load_model
    >>> from workbench.models.tiny import build_tiny_model
    >>> folder = str(build_tiny_model("/tmp/wb-doc-start-tiny"))
    >>> loaded = load_model(folder, on_event=lambda message: None)
    >>> tok = loaded.tokenizer
    >>> ids = [tok(text).input_ids + [tok.eos_token_id] for text in ("cat => red", "dog => blue")]
    >>> shutil.rmtree("/tmp/wb-doc-start-run", ignore_errors=True)
    >>> run = start_run(loaded.model, tok, {"input_ids": ids, "labels": ids}, None,
    ...                 TrainSpec(max_steps=40, batch_size=2), "/tmp/wb-doc-start-run",
    ...                 EventHub(), {"spec": folder, "quantization": None}, wait=False)
    >>> run.stop().state, run.wait().state
    (<RunState.STOPPING: 'stopping'>, <RunState.STOPPED: 'stopped'>)
    >>> stopped_at = run.status.step
    >>> run = resume_run("/tmp/wb-doc-start-run", EventHub())
    >>> status = run.wait()
    >>> status.state, status.step, stopped_at < 40
    (<RunState.FINISHED: 'finished'>, 40, True)
"""

from __future__ import annotations

import contextlib
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from workbench._io import interrupts_deferred
from workbench._quiet import quiet_third_party
from workbench.errors import DataError, SpecError, WorkbenchWarning, warn_user
from workbench.events import PROGRESS, EventHub
from workbench.train import store
from workbench.train.batches import Examples
from workbench.train.checkpoint import (
    load_checkpoint,
    newest_valid_checkpoint,
    remove_partial_checkpoints,
)
from workbench.train.launch.spec import TRUST_VARIABLE
from workbench.train.lock import RunLock
from workbench.train.loop import TrainLoop
from workbench.train.prepare import (
    base_fingerprint,
    check_model,
    choose_checkpointing,
    fit_spec_to_model,
    rank_note,
    wrap_model,
)
from workbench.train.records import LogRecord, history_rows
from workbench.train.run import Run, stopped_if_interrupted
from workbench.train.spec import LoRA, TrainSpec, respec
from workbench.train.worker import runs_training

__all__ = ["check_remote_code_allowed", "merged_base", "resume_run", "start_run"]

# How a run draws its rows (run.json's "batch_order"): "step", an optimizer step's rows at a
# time, so grad_accum changes memory, not the run. Runs started before have none and keep
# drawing each micro-batch on its own (see core.epoch_batches), so they resume on their rows.
BATCH_ORDER = "step"
MODEL_SPEC_KEYS = ("spec", "quantization", "dtype", "device", "trust_remote_code", "merged_from")
_LOAD_OPTIONS = ("quantization", "dtype", "device", "trust_remote_code")  # load_model's own


def _drop_untrained(train: Examples) -> tuple[Examples, list[LogRecord]]:
    counts = train.trained_tokens()
    empty = np.flatnonzero(counts == 0)
    if len(empty) == len(train):
        msg = (
            "no training example has a trained token (every label is -100 after the "
            "shift): check the template's answer masking and max_length truncation."
        )
        raise DataError(msg)
    if not len(empty):
        return train, []
    shown = ", ".join(map(str, empty[:10].tolist())) + (" ..." if len(empty) > 10 else "")
    text = (
        f"skipped {len(empty)} training example(s) with no trained token (rows {shown}): "
        "their loss would be a silent 0.0. Often truncation cut the whole answer."
    )
    return train.subset(np.flatnonzero(counts > 0)), [_warned(text)]


def _warmup_notes(spec: TrainSpec, total: int) -> list[str]:
    """A warm-up the schedule ignores, or one as long as the run (the rate never reaches
    ``lr``): both said, neither refused."""
    default = TrainSpec.__dataclass_fields__["warmup"].default
    if spec.scheduler == "constant" and spec.warmup not in (0, default):
        return [
            f"warmup={spec.warmup!r} is ignored by scheduler='constant', which trains at lr "
            "from the first step: use scheduler='constant_with_warmup' to warm up."
        ]
    steps = spec.warmup_steps(total)
    if spec.scheduler != "constant" and steps >= total:
        only = " (its first step, at lr 0, trains nothing)" if total == 1 else ""
        return [
            f"warmup={spec.warmup!r} is {steps} step{'s' if steps != 1 else ''}, as long as "
            f"the whole run ({total} "
            f"step{'s' if total != 1 else ''}{only}): the rate never reaches lr={spec.lr:g}."
        ]
    return []


def _evaluation_cost_notes(spec: TrainSpec, total: int, validation: Any) -> list[str]:
    """Evaluations that cost more than the training between them (a forward pass over a
    row is about a third of a training step's work on it): said, with the setting to use.

    Examples:
        >>> from types import SimpleNamespace
        >>> big = SimpleNamespace(lengths=[9] * 100_000)
        >>> print(_evaluation_cost_notes(TrainSpec(max_steps=100), 100, big)[0])
        ... # doctest: +NORMALIZE_WHITESPACE
        each of the 10 evaluations scores all 100,000 validation rows, more work than the 10
        steps between them train (40 rows): eval_rows=2000 scores the same 2,000 rows each
        time (s.evaluate() still scores every row)
    """
    if validation is None or spec.eval_rows is not None:
        return []
    rows = len(validation.lengths)
    every, _ = spec.every(total)
    trained = every * spec.batch_size * spec.grad_accum if isinstance(spec.batch_size, int) else 0
    if not trained or rows <= max(2_000, 3 * trained):
        return []
    return [
        f"each of the {max(1, total // every)} evaluations scores all {rows:,} validation rows, "
        f"more work than the {every} steps between them train ({trained:,} rows): "
        "eval_rows=2000 scores the same 2,000 rows each time (s.evaluate() still scores "
        "every row)"
    ]


def _unused_settings(spec: TrainSpec) -> list[str]:
    """Settings the run cannot use as given: said, not refused.

    Examples:
        >>> _unused_settings(TrainSpec(method="full", lora=LoRA(r=4)))
        ["lora=LoRA(r=4, ...) is not used by method='full', which trains every weight"]
    """
    if spec.method == "full" and spec.lora != LoRA():
        return [
            f"lora=LoRA(r={spec.lora.r}, ...) is not used by method='full', which trains "
            "every weight"
        ]
    return []


def _batch_within_rows(spec: TrainSpec, rows: int) -> tuple[TrainSpec, str | None]:
    """``spec`` with a ``batch_size`` above the training rows brought down to them, and what
    to say: each step takes every row either way, and the run's record (and the memory it is
    planned for) should say so.

    Examples:
        >>> spec, note = _batch_within_rows(TrainSpec(batch_size=64), 10)
        >>> spec.batch_size, note
        (10, 'batch_size=64 is above the 10 training examples: each step takes all 10, so \
the run uses batch_size=10')
        >>> _batch_within_rows(TrainSpec(batch_size=8), 10)[1] is None
        True
    """
    if spec.batch_size == "auto" or spec.batch_size <= rows:
        return spec, None
    note = (
        f"batch_size={spec.batch_size} is above the {rows} training examples: each step takes "
        f"all {rows}, so the run uses batch_size={rows}"
    )
    return respec(spec, batch_size=rows), note


def _side_by_side(other: Any) -> str:
    return (
        f"{other.run_dir.name} is training in this process too: both runs draw their random "
        "numbers (LoRA dropout, NEFTune) from torch's one generator, so neither repeats with "
        "its seed; train one at a time, or each in its own process (a script, or processes=)"
    )


def _warned(text: str) -> LogRecord:
    """Warn at the user's line now (:func:`~workbench.errors.warn_user`); the record keeps it
    in the run's history."""
    warn_user(text)
    return LogRecord(kind="warning", step=0, epoch=0.0, message=text)


def _check_inputs(spec: Any, validation: Examples | None, probes: Any) -> None:
    if not isinstance(spec, TrainSpec):
        raise SpecError(f"spec={spec!r} must be a TrainSpec(...).")
    if spec.early_stopping and validation is None:
        msg = (
            f"early_stopping={spec.early_stopping} watches the eval loss, but no validation "
            "data was given: pass validation data or early_stopping=None."
        )
        raise SpecError(msg)
    if spec.early_stopping and not (validation.trained_tokens() > 0).any():
        msg = (
            f"early_stopping={spec.early_stopping} watches the eval loss, but no validation "
            "example has a trained token (max_length cut every answer, or the template "
            "masks them all), so there is no eval loss: raise max_length, or pass "
            "early_stopping=None."
        )
        raise SpecError(msg)
    check_probes(probes)


def check_probes(probes: Any) -> None:
    """Refuse probes that are not a list of non-empty prompt texts (``None``: none).

    Examples:
        >>> check_probes("hello")
        Traceback (most recent call last):
        workbench.errors.SpecError: probes='hello' must be a list of non-empty prompt strings.
    """
    if probes is not None and not (
        isinstance(probes, (list, tuple)) and all(isinstance(p, str) and p for p in probes)
    ):
        raise SpecError(f"probes={probes!r} must be a list of non-empty prompt strings.")


def _pad_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0  # pragma: no cover - the loop always returns


def start_run(
    model: Any,
    tokenizer: Any,
    train_dataset: Any,
    validation_dataset: Any,
    spec: TrainSpec,
    run_dir: str | Path,
    events: EventHub | None,
    model_spec: dict[str, Any] | None,
    wait: bool,
    probes: list[str] | None = None,
    launch: Any = None,
    probe_stops: list[str] | None = None,
    probe_ids: list[list[int]] | None = None,
) -> Run:
    """Check everything, write the run folder, and start training on a background thread.

    Right after the folder is created, its :class:`~workbench.train.lock.RunLock` is taken
    and handed to the :class:`Run`, whose worker gives it back when it ends; staging folders
    that an earlier, killed start of the same folder left beside it are removed.

    Args:
        model: A loaded transformers causal LM (plain, or 4/8-bit from bitsandbytes). It is
            wrapped in place with the adapter (``method="full"``: every weight trains).
        tokenizer: Its tokenizer (for padding and the probes).
        train_dataset: Tokenized data: ``input_ids``, ``labels`` (-100 = not trained),
            optionally ``attention_mask`` (a ``datasets.Dataset`` or a dict of columns).
        validation_dataset: The same for validation, or ``None``.
        spec: The run's :class:`TrainSpec`.
        run_dir: A new (absent or empty) folder for the run.
        events: Hub the run publishes to (``None``: a new one).
        model_spec: ``{"spec", "quantization", "dtype", "device"}`` as given to
            :func:`workbench.models.loading.load_model`, stored so :func:`resume_run` can
            reload the model in a new process.
        wait: Block until the run ends, printing one line per step (for scripts).
        probes: Prompts to regenerate at each evaluation, next to the base model's answer.
        launch: A :class:`~workbench.train.launch.LaunchSpec`: train on its processes (under
            ``accelerate launch``) instead of this one's background thread.
        probe_stops: Strings that end a probe's answer (the template's end of turn), as
            they end an evaluation's.
        probe_ids: The probes' token ids, one list per probe, as the data's prompts were
            tokenized (:func:`workbench.data.prompts.text_prompt_ids`); ``None``: the texts
            are tokenized by :func:`~workbench.models.generation.encode_prompts`.

    Returns:
        The :class:`Run` (running, or ended when ``wait``).

    Raises:
        SpecError: a bad setting, an adapter already attached, an unknown LoRA target, or a
            run folder already in use; nothing is written.
        DependencyError: qlora without bitsandbytes.
        DataError: missing columns, or no example with a trained token.

    Examples:
        Training needs a model (see ``tests/train_helpers.py``); a bad spec is refused first:

        >>> data = {"input_ids": [[1, 2, 3]], "labels": [[1, 2, 3]]}
        >>> try:
        ...     start_run(None, None, data, None, {"lr": 1}, "/tmp/wb-doc-run", None, None, False)
        ... except SpecError as err:
        ...     print(err)
        spec={'lr': 1} must be a TrainSpec(...).
    """
    run_dir = Path(run_dir)
    train = Examples.from_dataset(train_dataset, "train")
    validation = (
        None
        if validation_dataset is None
        else Examples.from_dataset(validation_dataset, "validation")
    )
    _check_inputs(spec, validation, probes)
    check_model(model, spec)
    fingerprint = base_fingerprint(model)  # before the adapter goes on
    launch = None if launch is None else _checked_launch(launch, model_spec)
    store.check_new_folder(run_dir)
    spec, fitted = fit_spec_to_model(model, spec)
    spec, checkpointing = choose_checkpointing(model, spec, _launch_device(launch))
    kept, notes = _drop_untrained(train)
    if fitted:
        notes.insert(0, _warned(f"{fitted}; the run's spec says so."))
    if (too_high := rank_note(model, spec)) is not None:
        notes.append(_warned(f"{too_high}."))
    if others := runs_training():
        notes.append(_warned(_side_by_side(others[0])))
    notes += [_warned(text) for text in _unused_settings(spec)]
    spec, batch_choice = _resolved_batch_size(spec, model, kept, launch)
    spec, batch_note = _batch_within_rows(spec, len(kept))
    if batch_note is not None:
        notes.append(_warned(batch_note))
    chosen = {"gradient_checkpointing": checkpointing, "batch_size": batch_choice}
    total = spec.total_steps(len(kept))
    notes += [_warned(text) for text in _warmup_notes(spec, total)]
    notes += [_warned(text) for text in _evaluation_cost_notes(spec, total, validation)]
    meta = {
        "version": 1,
        "spec": spec.to_dict(),
        **{f"{name}_choice": why for name, why in chosen.items() if why},
        "total_steps": total,
        "batch_order": BATCH_ORDER,
        "model_spec": {k: (model_spec or {}).get(k) for k in MODEL_SPEC_KEYS},
        "base_fingerprint": fingerprint,
        "probes": list(probes or []),
        "probe_stops": list(probe_stops or []),
        **({"probe_ids": [list(ids) for ids in probe_ids]} if probe_ids else {}),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "examples": {"train": len(train), "validation": len(validation or [])},
        **({"launch": launch.to_dict()} if launch is not None else {}),
    }
    with stopped_if_interrupted() as started, _undone_on_error(model, run_dir, started):
        store.create_run_folder(run_dir, meta, train, validation)
        with _released_on_error(RunLock(run_dir), started) as lock:
            store.remove_partial_runs(run_dir)
            for note in notes:
                store.append_jsonl(run_dir / store.HISTORY, note.to_dict())
            run = _launch(
                run_dir,
                events,
                model,
                tokenizer,
                kept,
                validation,
                spec,
                meta,
                notes,
                lock,
                start=launch is None,
            )
        run.trust_remote_code = bool((model_spec or {}).get("trust_remote_code"))  # the caller's
        if launch is not None:
            _start_launched(run, launch, lock)
        if wait:  # a script sees how it trains (batch size, checkpointing) before the steps
            for why in filter(None, chosen.values()):
                print(why)
        return _waited(run, wait)


@contextlib.contextmanager
def _undone_on_error(model: Any, run_dir: Path, started: list[Run]) -> Iterator[None]:
    """A start that fails before the run starts leaves nothing: the adapter layers it put
    on ``model`` are taken out again and the new run folder is removed (a setting that
    only the optimizer or the scheduler refuses would otherwise leave the model carrying an
    adapter that every later ``train()`` refuses, and a run folder with no run in it).

    Once the run has ``started`` (an interrupt right after), it is left to
    :func:`stopped_if_interrupted`: its thread trains that adapter in that folder."""
    from workbench.models.adapters import remove_adapter_layers
    from workbench.train.core import remove_training_hooks

    try:
        yield
    except BaseException:
        if started:
            raise
        with interrupts_deferred(drop=True):
            remove_adapter_layers(model)
            remove_training_hooks(model)
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _resolved_batch_size(
    spec: TrainSpec, model: Any, train: Examples, launch: Any
) -> tuple[TrainSpec, str | None]:
    """``spec`` with ``batch_size="auto"`` replaced by the size chosen, and the reason."""
    if spec.batch_size != "auto":
        return spec, None
    from workbench.train.batch_size import choose_batch_size

    options: dict[str, Any] = {}
    if launch is not None:
        device = _launch_device(launch)
        options = {"processes": launch.world_size, "fsdp": launch.fsdp, "device": device}
        if device == "cpu":  # this machine's ranks share its free memory (beside the notebook)
            import psutil

            budget = psutil.virtual_memory().available // launch.processes
            options.update(device="cpu", budget=budget)
    lengths, trained = train.lengths.tolist(), train.trained_tokens().tolist()
    choice = choose_batch_size(model, lengths, spec, trained, **options)
    return respec(spec, batch_size=choice.size), choice.reason


def _launch_device(launch: Any) -> str | None:
    """The device type a launched run's processes train on (``None``: not launched, the run
    trains where the model is)."""
    if launch is None:
        return None
    return "cpu" if launch.on_cpu else "cuda"


def _checked_launch(launch: Any, model_spec: dict[str, Any] | None) -> Any:
    """``launch`` checked, with its port chosen; every rank must be able to load the model."""
    if not (model_spec or {}).get("spec"):
        raise SpecError(
            "a run on several processes needs a model each process can load by name or "
            "folder (Session.load_model(name_or_folder)), not a model object built in memory."
        )
    merged = merged_base(model_spec)
    if merged:
        raise SpecError(
            f"a run on several processes loads its base in each process, and this one is "
            f"{merged}: export it (s.export('export/merged')), load that folder "
            "(s.load_model(...)) and train there."
        )
    if launch.fsdp and (model_spec or {}).get("quantization"):
        raise SpecError(
            f"fsdp=True cannot shard a {model_spec['quantization']} (bitsandbytes) base: "
            "use fsdp=False (DDP: each process holds the quantized copy, which is small), or "
            "load the model without quantization to shard it."
        )
    return launch.checked()


def _start_launched(run: Run, launch: Any, lock: RunLock) -> None:
    """Hand the run to its ranks: rank 0 takes the folder's lock, this process follows."""
    from workbench.train.launch.follow import LaunchedWorker

    run.launch, run.worker_class, run.writes_files = launch, LaunchedWorker, False
    run._lock = None
    lock.release()
    run.start()
    if launch.machines > 1:
        trusted = f"{TRUST_VARIABLE}=1 " if run.trust_remote_code else ""
        commands = [trusted + command for command in launch.commands(run.run_dir)[1:]]
        text = "\n".join(f"  machine {k}: {line}" for k, line in enumerate(commands, 1))
        run.events.emit(
            PROGRESS,
            f"{run.run_dir.name} waits for {launch.machines - 1} more machine(s). Run on each, "
            f"with this run folder at the same path (a shared disk):\n{text}",
        )


@contextlib.contextmanager
def _released_on_error(lock: RunLock, started: list[Run]) -> Iterator[RunLock]:
    """Hold ``lock`` for the block; give it back if the block fails before a run ``started``.

    Otherwise the lock stays held: the started :class:`Run` owns it from then on and its
    worker releases it when it ends.
    """
    lock.acquire()
    try:
        yield lock
    except BaseException:
        if not started:
            lock.release()
        raise


def _launch(
    run_dir: Path,
    events: EventHub | None,
    model: Any,
    tokenizer: Any,
    train: Examples,
    validation: Examples | None,
    spec: TrainSpec,
    meta: dict[str, Any],
    history: list[LogRecord],
    lock: RunLock,
    probe_rows: list[dict[str, Any]] | None = None,
    checkpoint: Path | None = None,
    make_loop: Callable[..., TrainLoop] = TrainLoop,
    start: bool = True,
) -> Run:
    """Wrap the model, build the loop and the :class:`Run`, restore ``checkpoint`` and start.

    ``make_loop`` builds the loop (a launched run's ranks pass their own); with ``start``
    false the run is returned unstarted, for its caller to set up first.
    """
    quiet_third_party()  # peft's read of a deprecated transformers property warns each run
    model = wrap_model(model, spec)
    left = _left_without_adapter(model, spec)
    if left and all(record.message != left for record in history):
        history.append(_warned(left))
    total = _total_steps_of(meta, run_dir)
    loop = make_loop(model, _pad_id(tokenizer), train, validation, spec, total, by_step(meta))
    run = Run(
        run_dir,
        events or EventHub(),
        model,
        tokenizer,
        loop,
        spec,
        probes_of_run(meta, run_dir),
        history,
        probe_rows or [],
        lock=lock,
    )
    run.probe_stops = list(meta.get("probe_stops") or [])
    run.probe_ids = meta.get("probe_ids")
    run.start_choices = store.chosen_at_start(meta)
    if checkpoint is not None:
        run.restore_state(load_checkpoint(checkpoint, model, loop.optimizer, loop.scheduler))
    if start:
        run.start()
    return run


def _left_without_adapter(model: Any, spec: TrainSpec) -> str | None:
    """Say which linear layers peft left without a LoRA, if any (see
    :func:`~workbench.train.core.linears_without_adapter`)."""
    if spec.method == "full" or spec.lora.target != "all-linear":  # a list leaves out on purpose
        return None
    from workbench.train.core import linears_without_adapter

    left = linears_without_adapter(model)
    if not left:
        return None
    import peft

    kind = getattr(getattr(model, "config", None), "model_type", "this")
    shown = ", ".join(left[:4]) + (f" and {len(left) - 4} more" if len(left) > 4 else "")
    return (
        f"{len(left)} linear layers of this {kind} model train no adapter and keep the base's "
        f"weights: {shown}. peft {peft.__version__} takes their names for the fused experts' "
        "weights and leaves these plain layers out (a dense block's MLP, a shared expert); "
        "every other linear layer is adapted"
    )


def _waited(run: Run, wait: bool) -> Run:
    """Block until ``run`` ends when asked, printing progress (outside the lock's guard)."""
    if wait:
        run.wait(progress=True)
    return run


def by_step(meta: dict[str, Any]) -> bool:
    """Whether the run of ``meta`` (its ``run.json``) draws its rows a step at a time.

    Examples:
        >>> by_step({"batch_order": "step"}), by_step({})  # the second: an older run
        (True, False)
    """
    return meta.get("batch_order") == BATCH_ORDER


def check_remote_code_allowed(meta: dict[str, Any], run_dir: Path, allowed: bool) -> None:
    """Refuse to load a run's base model with its shipped code unless the caller allows it.

    ``run.json`` records ``trust_remote_code`` as the run was started, but a run folder can
    come from anyone (a course's shared folder, a colleague's archive): resuming it must not
    run the code of whatever model folder it names because a file says so.

    Raises:
        SpecError: ``run.json`` says the base ran its own code and ``allowed`` is false.

    Examples:
        >>> meta = {"model_spec": {"spec": "/models/custom", "trust_remote_code": True}}
        >>> check_remote_code_allowed(meta, Path("runs/run-001"), allowed=True)
        >>> check_remote_code_allowed(meta, Path("runs/run-001"), allowed=False)
        Traceback (most recent call last):
        workbench.errors.SpecError: runs/run-001/run.json: its base model /models/custom was \
loaded with trust_remote_code=True, so resuming it runs Python code shipped with that model \
folder. Nothing is run from a file's say-so: read that code, then pass trust_remote_code=True \
(Session.resume(folder, trust_remote_code=True)).
    """
    model_spec = meta.get("model_spec") or {}
    if model_spec.get("trust_remote_code") and not allowed:  # 1, "true": the loaders' truth
        raise SpecError(
            f"{run_dir / store.RUN_FILE}: its base model {model_spec.get('spec')} was loaded "
            "with trust_remote_code=True, so resuming it runs Python code shipped with that "
            "model folder. Nothing is run from a file's say-so: read that code, then pass "
            "trust_remote_code=True (Session.resume(folder, trust_remote_code=True))."
        )


def merged_base(model_spec: dict[str, Any] | None) -> str | None:
    """What a run's base was when it trained on a model with adapters merged in
    (``merge()``, then ``train()``), which no file holds as such: ``None`` otherwise.

    Examples:
        >>> merged_base({"spec": "gemma-3-270m", "merged_from": ["run-001"]})
        'gemma-3-270m with run-001 merged in (merge()), a model no file holds'
        >>> merged_base({"spec": "gemma-3-270m"}) is None
        True
    """
    merged = (model_spec or {}).get("merged_from")
    if not isinstance(merged, list) or not merged:
        return None
    names = " and ".join(str(name) for name in merged)
    base = (model_spec or {}).get("spec")
    return f"{base} with {names} merged in (merge()), a model no file holds"


def _reload_model(meta: dict[str, Any], run_dir: Path) -> tuple[Any, Any]:
    from workbench.models.loading import load_model

    model_spec = meta.get("model_spec") or {}
    if not model_spec.get("spec"):
        msg = (
            f"{run_dir}/run.json names no model (model_spec.spec is empty): "
            "load the base model with Session.load_model(...), then Session.resume(folder)."
        )
        raise SpecError(msg)
    merged = merged_base(model_spec)
    if merged:
        msg = (
            f"{run_dir.name} started from {merged}: load that model into a Session (or its "
            "export) and resume there: Session.resume(folder, model='<the merged export>')."
        )
        raise SpecError(msg)
    options = {k: model_spec[k] for k in _LOAD_OPTIONS if model_spec.get(k)}
    loaded = load_model(model_spec["spec"], on_event=lambda _msg: None, **options)
    return loaded.model, loaded.tokenizer


def _total_steps_of(meta: dict[str, Any], run_dir: Path) -> int:
    """The run's planned step count from its ``run.json`` (``meta``), refused when damaged."""
    total = meta.get("total_steps")
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        msg = (
            f"{run_dir / store.RUN_FILE} is damaged: 'total_steps' is {total!r}, not a "
            "positive whole number of steps (it is the step count the run was planned with)."
        )
        raise SpecError(msg)
    return total


def probes_of_run(meta: dict[str, Any], run_dir: str | Path) -> list[str]:
    """The probe prompts a run's ``run.json`` (``meta``) keeps: none when it names none.

    Raises:
        SpecError: the field is not a list of prompt texts (the message names the file).

    Examples:
        >>> probes_of_run({"probes": ["2+2?"]}, "runs/run-001"), probes_of_run({}, "runs/a")
        (['2+2?'], [])
        >>> probes_of_run({"probes": "2+2?"}, "runs/run-001")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        workbench.errors.SpecError: runs/run-001/run.json is damaged: 'probes' is '2+2?', ...
    """
    probes = meta.get("probes")
    if probes is None:  # a run.json written without them, or edited: the run has none
        return []
    if not isinstance(probes, list) or not all(isinstance(p, str) and p for p in probes):
        msg = (
            f"{Path(run_dir) / store.RUN_FILE} is damaged: 'probes' is {probes!r:.80}, not a "
            "list of prompt texts; correct the field, or remove it for a run without probes."
        )
        raise SpecError(msg)
    return probes


def _history_until(run_dir: Path, rows: list[dict[str, Any]], step: int) -> list[LogRecord]:
    """Keep (and rewrite) the history ``rows`` logged up to ``step``; later ones are redone,
    and rows that are no record (damage) are dropped with a warning naming their lines."""
    rows = [r for r in history_rows(run_dir / store.HISTORY, rows) if r["step"] <= step]
    store.rewrite_jsonl(run_dir / store.HISTORY, rows)
    return [LogRecord.from_dict(r) for r in rows]


def _probes_until(run_dir: Path, step: int) -> list[dict[str, Any]]:
    rows = store.read_jsonl(run_dir / store.PROBES)
    rows = [r for r in rows if r.get("base") or r.get("step", 0) <= step]
    store.rewrite_jsonl(run_dir / store.PROBES, rows)
    return rows


def check_resumable(run_dir: str | Path) -> None:
    """Refuse a run that cannot be resumed, before anything is loaded or changed: no run in
    the folder, settings that no longer check, its data missing, or another process (or
    another run object here) training it.

    :meth:`Session.resume` calls it before loading the run's base model, so a refused resume
    leaves the session's own model, adapter and run as they were.

    Examples:
        >>> check_resumable("/nonexistent-run")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        workbench.errors.SpecError: /nonexistent-run holds no training run (no run.json)...
    """
    run_dir = Path(run_dir)
    _run_spec(store.read_meta(run_dir), run_dir)
    with RunLock(run_dir):  # taken and given back: held elsewhere, it refuses saying by whom
        pass


def _run_spec(meta: dict[str, Any], run_dir: Path) -> TrainSpec:
    """The run's settings from its ``run.json`` (``meta``), refused when they are missing or
    no longer check, or when the folder holds no training data."""
    if not isinstance(meta.get("spec"), dict):
        raise SpecError(f"{run_dir / store.RUN_FILE} holds no training settings ('spec').")
    spec = TrainSpec.from_dict(meta["spec"])
    if not (run_dir / "data" / "train").is_dir():
        raise SpecError(f"{run_dir} holds a run.json but no data/train folder; it is not a run.")
    return spec


def resume_run(
    run_dir: str | Path,
    events: EventHub | None = None,
    wait: bool = False,
    model: Any = None,
    tokenizer: Any = None,
    launch: Any = None,
    trust_remote_code: bool = False,
) -> Run:
    """Continue a run from its newest valid checkpoint to its planned step count.

    Works in a new process: the model is reloaded from ``run.json``'s model spec with
    :func:`~workbench.models.loading.load_model`, the data from the run folder. Records logged
    after the checkpoint (lost work) are dropped from the history and redone.

    Before anything is written, the folder's :class:`~workbench.train.lock.RunLock` is taken
    (and handed to the :class:`Run`, whose worker gives it back when it ends), so a folder
    that another process, or another ``Run`` of this one, still trains is refused. Staging
    folders that a killed process left (``checkpoints/.step-*.partial-*``, and
    ``.NAME.partial-*`` beside the run folder) are removed. Checkpoints that fail
    :func:`~workbench.train.checkpoint.checkpoint_problem` (a file truncated, changed or
    missing) are skipped for the newest valid one, each with a :class:`WorkbenchWarning` and a
    ``"warning"`` record in the history; with no valid checkpoint, or none at all, the run
    restarts from step 0 with the same seed.

    Args:
        run_dir: The folder :func:`start_run` wrote.
        events: Hub to publish to (``None``: a new one).
        wait: Block until the run ends, printing progress.
        model: Optionally the base model already loaded (no adapter attached).
        tokenizer: Its tokenizer (needed with ``model``).
        launch: A :class:`~workbench.train.launch.LaunchSpec` to go on with on several
            processes (a run of one process resumes on several, and the other way round).
        trust_remote_code: Let a base model reloaded from ``run.json`` run the code shipped
            with it. Never read from the folder: see :func:`check_remote_code_allowed`.

    Raises:
        SpecError: the folder holds no run (nothing is written), or another process or
            ``Run`` trains it (the message names its pid and what to do), or its base model
            needs its own code to run and ``trust_remote_code`` was not given.
        TrainingError: the newest valid checkpoint was written for another model.

    Examples:
        >>> try:
        ...     resume_run("/nonexistent-run")
        ... except SpecError as err:
        ...     print(str(err)[:52])
        /nonexistent-run holds no training run (no run.json)
    """
    run_dir = Path(run_dir)
    meta = store.read_meta(run_dir)
    launch = None if launch is None else launch.checked()
    if model is None or launch is not None:  # the base is loaded from what run.json says
        check_remote_code_allowed(meta, run_dir, trust_remote_code)
    with stopped_if_interrupted() as started:
        with _released_on_error(RunLock(run_dir), started) as lock:
            if launch is not None:
                meta = {**meta, "launch": launch.to_dict()}
                store.write_meta(run_dir, meta)
            run = _resume_locked(run_dir, meta, lock, events, model, tokenizer, launch is None)
            run.trust_remote_code = trust_remote_code
        if launch is not None:
            _start_launched(run, launch, lock)
        return _waited(run, wait)


def _resume_locked(
    run_dir: Path,
    meta: dict[str, Any],
    lock: RunLock,
    events: EventHub | None,
    model: Any,
    tokenizer: Any,
    start: bool = True,
) -> Run:
    spec = _run_spec(meta, run_dir)
    store.check_data(run_dir)
    train = store.load_examples(run_dir, "train")
    validation = store.load_examples(run_dir, "validation")
    store.remove_partial_runs(run_dir)
    remove_partial_checkpoints(run_dir)
    if model is None:
        model, tokenizer = _reload_model(meta, run_dir)
    check_model(model, spec)
    _check_same_base(model, meta, run_dir)
    checkpoint, skipped = newest_valid_checkpoint(run_dir)
    if checkpoint is None:
        from workbench.train.fork import refuse_unstarted_fork

        refuse_unstarted_fork(run_dir, meta)
    kept, _ = _drop_untrained_quietly(train)
    logged = store.read_jsonl(run_dir / store.HISTORY)
    if checkpoint is None and not skipped:
        _warn_of_a_restart(run_dir, logged)
    history = _history_until(run_dir, logged, json_step(checkpoint))
    history += _skipped_notes(run_dir, skipped, checkpoint, history)
    probe_rows = _probes_until(run_dir, json_step(checkpoint))
    return _launch(
        run_dir,
        events,
        model,
        tokenizer,
        kept,
        validation,
        spec,
        meta,
        history,
        lock,
        probe_rows,
        checkpoint,
        start=start,
    )


def _check_same_base(model: Any, meta: dict[str, Any], run_dir: Path) -> None:
    """Refuse a base model other than the one the run started from (another checkpoint of
    the same architecture, or the folder run.json names changed since): its checkpoint's
    adapter would go on from weights it was not trained on, the loss jumping (3.9 to 17.6
    in one step) and run.json naming the wrong base for good. Runs recorded before the
    fingerprint existed are not checked."""
    recorded = meta.get("base_fingerprint")
    if recorded is None or base_fingerprint(model) == recorded:
        return
    msg = (
        f"this base model is not the one {run_dir.name} started from (its weights differ from "
        f"those recorded in {run_dir / store.RUN_FILE} then): resume it on that model, loaded "
        "as it was (same dtype and quantization), or start a new run on this one."
    )
    raise SpecError(msg)


def _warn_of_a_restart(run_dir: Path, logged: list[dict[str, Any]]) -> None:
    """Say so when a run that trained (``logged``: its history) has no checkpoint at all to
    resume from (the checkpoints folder deleted, or none saved yet): it starts again from
    step 0."""
    steps = [r.get("step", 0) for r in logged]
    reached = max([s for s in steps if isinstance(s, int)], default=0)
    if reached > 0:
        msg = (
            f"{run_dir} has no checkpoint (its checkpoints folder is gone, or the run stopped "
            f"before its first save), so the run restarts from step 0; it had reached step "
            f"{reached}"
        )
        warnings.warn(msg, WorkbenchWarning, stacklevel=4)


def _skipped_notes(
    run_dir: Path,
    skipped: list[tuple[Path, str]],
    checkpoint: Path | None,
    history: list[LogRecord],
) -> list[LogRecord]:
    """Warn about each damaged checkpoint skipped, and log it in the run's history."""
    if checkpoint is None:
        then = (
            "no valid checkpoint is left, so the run restarts from step 0 (same seed and "
            "data order)"
        )
    else:
        then = f"resuming from {checkpoint.name}, the newest valid checkpoint"
    notes = []
    for path, reason in skipped:
        text = f"skipped damaged checkpoint {path.name} of {run_dir} ({reason}); {then}."
        warnings.warn(text, WorkbenchWarning, stacklevel=4)  # the caller of resume_run
        note = LogRecord(
            kind="warning",
            step=json_step(checkpoint),
            epoch=history[-1].epoch if history else 0.0,
            message=text,
        )
        store.append_jsonl(run_dir / store.HISTORY, note.to_dict())
        notes.append(note)
    return notes


def json_step(checkpoint: Path | None) -> int:
    """The step of a checkpoint (0 for none).

    Examples:
        >>> json_step(None)
        0
    """
    from workbench.train.checkpoint import checkpoint_step

    return 0 if checkpoint is None else checkpoint_step(checkpoint)


def _drop_untrained_quietly(train: Examples) -> tuple[Examples, list[LogRecord]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WorkbenchWarning)
        return _drop_untrained(train)
