"""Scale a run out: a standalone ``accelerate`` training script that reproduces it.

:func:`write_training_script` writes a folder that trains the same adapter on several
processes or GPUs without the workbench installed (only torch, transformers, peft, accelerate
and datasets)::

    train.py                 the training script (fixed code; reads train_config.json)
    train_core.py            the training pieces it shares with the workbench
    train_config.json        the run's settings: data, base model, TrainSpec, planned steps
    accelerate_config.yaml   multi-GPU data parallel (DDP) on one machine
    fsdp_config.yaml         FSDP v2, one shard unit per decoder layer (only with fsdp=True)
    README.md                how to launch it

The script follows the run exactly: the tokenized data the run saved, its length-grouped
data order, the same LoRA, AdamW groups, scheduler, warm-up, clipping and seed, and the same
global batch per optimizer step however many processes share it. Its loss is transformers' own
``model(..., labels=...).loss``, normalised by the trained tokens of the whole global step
(``num_items_in_batch``, as transformers' Trainer does), so it equals the workbench's loss:
the workbench's fast loss differs only in speed (:mod:`workbench.train.loss`).

Nothing is kept equal by hand: ``train.py`` is a copy of the linted module
``workbench/deploy/_script_train.py``, and ``train_core.py`` a copy of
:mod:`workbench.train.core`, the very module the workbench's own loop trains with.

Examples:
    >>> try:
    ...     write_training_script("/nonexistent-run", "/tmp/wb-script-doc")
    ... except SpecError as err:
    ...     print(str(err)[:50])
    /nonexistent-run holds no training run (no run.jso
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Any

from workbench._io import staging_folder, translated_write_errors
from workbench.errors import SpecError
from workbench.train.store import read_meta

__all__ = ["CONFIG_FILE", "write_training_script"]

CONFIG_FILE = "train_config.json"
_MARKER = ("train.py", CONFIG_FILE)  # a folder holding these was written here: safe to replace
# Each written file and the package module it copies.
_SOURCES = {
    "train.py": ("workbench.deploy", "_script_train.py"),
    "train_core.py": ("workbench.train", "core.py"),
}


def write_training_script(
    run_dir: str | Path, path: str | Path, fsdp: bool = False, trust_remote_code: bool = False
) -> Path:
    """Write a standalone ``accelerate`` script and configs that reproduce a run.

    The folder is written under a temporary name and renamed, so it is complete or absent.

    Args:
        run_dir: The run folder (``run.json``, ``data/train``) that ``start_run`` wrote.
        path: Folder to create: absent, empty, or written earlier by this function.
        fsdp: Also write ``fsdp_config.yaml`` for models too large for one GPU. It names the
            model's decoder layer class, read from the base model's ``config.json``.
        trust_remote_code: Let the script (and ``fsdp``'s read of the config) run the code
            shipped with the base model: the caller's word, never ``run.json``'s.

    Returns:
        The folder.

    Raises:
        SpecError: ``run_dir`` holds no run, the run cannot be scaled out (``qlora``, a
            quantized base, a fork of another run at a later step), ``path`` holds other
            files, or with ``fsdp`` the decoder layer class cannot be found. Nothing is
            written.
        ModelLoadError: the run's base model can no longer be found.
        WriteError: the disk is full or read-only (naming ``path``); nothing is left there.

    Examples:
        A one-step run of the tiny model, and its script with the FSDP config:

        >>> import tempfile
        >>> from workbench import Session
        >>> from workbench.models.tiny import build_tiny_model
        >>> s = Session(tempfile.mkdtemp(prefix="wb-doc-deploy-script-"), verbose=False)
        >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-deploy-script-tiny")))
        >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(4)])
        >>> run = s.train(max_steps=1, wait=False)
        >>> run.wait().state.value
        'finished'
        >>> folder = write_training_script(run.run_dir, s.run_dir / "scale-out", fsdp=True)
        >>> for name in sorted(p.name for p in folder.iterdir()):
        ...     print(name)
        README.md
        accelerate_config.yaml
        fsdp_config.yaml
        train.py
        train_config.json
        train_core.py

        Then, on the cluster, from the folder above ``scale-out``::

            accelerate launch --config_file scale-out/fsdp_config.yaml scale-out/train.py --out out
    """
    from workbench.train import check_remote_code_allowed

    run_dir, target = Path(run_dir).resolve(), Path(path)
    meta = read_meta(run_dir)
    check_remote_code_allowed(meta, run_dir, trust_remote_code)
    config = {**_script_config(run_dir, meta), "trust_remote_code": trust_remote_code}
    layers = _decoder_layers(config["model"], config["trust_remote_code"]) if fsdp else None
    _check_target(target)
    with translated_write_errors(target), staging_folder(target, replace=target.exists()) as tmp:
        for name, (package, source) in _SOURCES.items():
            (tmp / name).write_text(files(package).joinpath(source).read_text(encoding="utf-8"))
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")
        (tmp / "accelerate_config.yaml").write_text(_yaml(DDP_CONFIG))
        if layers:
            (tmp / "fsdp_config.yaml").write_text(_yaml(_fsdp_config(layers)))
        (tmp / "README.md").write_text(_readme(run_dir, layers))
    return target


def _check_target(target: Path) -> None:
    if not target.exists():
        return
    if target.is_dir() and (
        not any(target.iterdir()) or all((target / name).is_file() for name in _MARKER)
    ):
        return
    msg = (
        f"{target} exists and holds other files; give a new folder for the training "
        "script (a folder written earlier by write_training_script is replaced)."
    )
    raise SpecError(msg)


def _script_config(run_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    from workbench.train.start import merged_base

    spec, model_spec = meta["spec"], meta.get("model_spec") or {}
    problems = []
    if spec.get("method") == "qlora":
        problems.append(
            "method='qlora' cannot be scaled out with this script (it loads the "
            "base unquantized); train with method='lora' to scale out"
        )
    if model_spec.get("quantization"):
        problems.append(
            f"the base was loaded with quantization={model_spec['quantization']!r}"
            "; the script trains an unquantized base, so use a run without it"
        )
    merged = merged_base(model_spec)
    if merged:
        problems.append(
            f"its base is {merged}; the script loads its base by name: export that merged "
            "model (s.export('export/merged')), load it (s.load_model(...)), train there, and "
            "write that run's script"
        )
    if not (run_dir / "data" / "train").is_dir():
        problems.append(f"{run_dir} has no data/train folder, so it is not a complete run")
    forked = meta.get("forked_from")
    if isinstance(forked, dict):
        changes = ", ".join(f"{k}={v!r}" for k, v in (meta.get("fork_changes") or {}).items())
        problems.append(
            f"{run_dir.name} was forked from {forked.get('run')} at step {forked.get('step')}"
            f"{f' with {changes}' if changes else ''}; the script trains one run from step 0 "
            "with one set of settings, which is not this run. Write the script of a run "
            "trained from the start (train again with these settings)"
        )
    if problems:
        raise SpecError("; ".join(problems) + ".")
    return {
        "run_dir": str(run_dir),
        "data": str(run_dir / "data" / "train"),
        "model": _model_location(model_spec.get("spec")),
        "dtype": model_spec.get("dtype") or "auto",
        "spec": spec,
        "total_steps": meta["total_steps"],
        "batch_order": meta.get("batch_order"),  # how the run drew its rows (core.BatchPlan)
    }


def _model_location(spec: str | None) -> str | None:
    """The folder or hub id ``from_pretrained`` reads (built-in names: the cached copy)."""
    from workbench.models.loading import resolve_source

    if not spec:
        return None  # the run named no model: train.py then asks for --model
    source = resolve_source(spec, on_event=lambda _message: None)
    return source.location if source.kind == "hub" else str(Path(source.location).resolve())


def _decoder_layers(location: str | None, trust_remote_code: bool = False) -> list[str]:
    """Class names of the model's decoder layers (``_no_split_modules``), for FSDP wrapping."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if location is None:
        raise SpecError("the run names no base model, so fsdp=True cannot find its layers.")
    try:
        config = transformers.AutoConfig.from_pretrained(
            location, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as err:
        msg = f"fsdp=True needs the base model's config.json, which {location} lacks: {err}"
        raise SpecError(msg) from err
    names = list(config.architectures or [])
    names.append(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type, ""))
    for name in names:
        layers = getattr(getattr(transformers, name, None), "_no_split_modules", None)
        if layers:
            return list(layers)
    msg = (
        f"cannot tell the decoder layer class of {location} (architectures {names}); "
        "write fsdp_config.yaml by hand with fsdp_transformer_layer_cls_to_wrap."
    )
    raise SpecError(msg)


DDP_CONFIG: dict[str, Any] = {
    "compute_environment": "LOCAL_MACHINE",
    "distributed_type": "MULTI_GPU",
    "num_machines": 1,
    "machine_rank": 0,
    "num_processes": 2,
    "gpu_ids": "all",
    "mixed_precision": "no",
    "dynamo_config": {"dynamo_backend": "NO"},
    "use_cpu": False,
    "same_network": True,
    "rdzv_backend": "static",
    "main_training_function": "main",
}


def _fsdp_config(layers: list[str]) -> dict[str, Any]:
    fsdp = {
        "fsdp_version": 2,
        "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "fsdp_transformer_layer_cls_to_wrap": ",".join(layers),
        "fsdp_state_dict_type": "FULL_STATE_DICT",
        "fsdp_offload_params": False,
        "fsdp_reshard_after_forward": True,
        "fsdp_cpu_ram_efficient_loading": False,
        "fsdp_activation_checkpointing": False,
    }
    return {**DDP_CONFIG, "distributed_type": "FSDP", "fsdp_config": fsdp}


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def _readme(run_dir: Path, layers: list[str] | None) -> str:
    fsdp = (
        FSDP_README.replace("{layers}", ", ".join(layers))
        if layers
        else "For FSDP (models too large for one GPU) write the folder again with "
        "`s.to_script(path, fsdp=True)` (or, without a session, "
        "`workbench.deploy.script.write_training_script(run_dir, path, fsdp=True)`).\n"
    )
    return README.replace("{run_dir}", str(run_dir)).replace("{fsdp}", fsdp)


README = """# Scale-out training script

Written by the Tuning Workbench from the run in `{run_dir}`. It needs only torch,
transformers, peft, accelerate and datasets (no workbench): `train_core.py` holds the
training pieces it shares with the workbench.

    accelerate launch --config_file accelerate_config.yaml --num_processes 8 train.py --out out

The adapter is saved once, by rank 0, to `out/adapter/` (`out/model/` for full fine-tuning)
and the training loss of every optimizer step to `out/log.jsonl` (rank 0 only).

The global batch (examples per optimizer step: `batch_size * grad_accum` of the run) stays
the same for any `--num_processes`: each process takes `batch_size // num_processes` examples
per forward pass (`--per-device-batch` to change it) and accumulates gradients until the
step's examples are used up. The loss of a step is averaged over the trained tokens of the
whole global batch, so the losses match a single-process run of this script and the
workbench's own run (the workbench's fast loss computes the same value, faster).

`train_config.json` holds the run's settings and absolute paths to its base model and
tokenized data on the machine that wrote it; on another machine copy them over and pass
`--model` and `--data`.

Options: `--model` (another copy of the base model), `--data` (the tokenized data,
`datasets.load_from_disk` folder with `input_ids` and `labels`), `--max-steps`, `--dtype`,
`--cpu` (train on CPU over gloo, to test: `accelerate launch --config_file
accelerate_config.yaml --num_processes 2 train.py --cpu`; note that `accelerate launch --cpu`
itself starts one process unless mpirun is set up).

One process at the run's batch size draws the same dropout masks (the model's, the LoRA's)
and NEFTune noise as the workbench's own run, so its losses agree to float rounding. Across
processes each draws its own, so runs then agree statistically, not to the last digit; with
no dropout (`LoRA(dropout=0)` and a model without any) they agree to float rounding.

## FSDP

{fsdp}"""

FSDP_README = """For a model that does not fit on one GPU, shard it with FSDP v2 (one shard unit per
`{layers}`):

    accelerate launch --config_file fsdp_config.yaml --num_processes 8 train.py --out out
"""
