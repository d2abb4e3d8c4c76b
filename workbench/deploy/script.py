"""Scale a run out: a standalone ``accelerate`` training script that reproduces it.

:func:`write_training_script` writes a folder that trains the same adapter on several
processes or GPUs without the workbench installed (only torch, transformers, peft, accelerate
and datasets)::

    train.py                 the training script (fixed code; reads train_config.json)
    train_config.json        the run's settings: data, base model, TrainSpec, planned steps
    accelerate_config.yaml   multi-GPU data parallel (DDP) on one machine
    fsdp_config.yaml         FSDP v2, one shard unit per decoder layer (only with fsdp=True)
    README.md                how to launch it

The script follows the run exactly: the tokenized data the run saved, its length-grouped
data order (the same function of ``(seed, epoch)`` as :mod:`workbench.train.batches`), the same
LoRA, AdamW groups, scheduler, warm-up, clipping and seed, and the same global batch per
optimizer step however many processes share it. Its loss is transformers' own
``model(..., labels=...).loss``, normalised by the trained tokens of the whole global step
(``num_items_in_batch``, as transformers' Trainer does), so it equals the workbench's loss:
the workbench's fast loss differs only in speed (:mod:`workbench.train.loss`).

Examples:
    >>> try:
    ...     write_training_script("/nonexistent-run", "/tmp/wb-script-doc")
    ... except SpecError as err:
    ...     print(str(err)[:50])
    /nonexistent-run holds no training run (no run.jso
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from workbench._io import staging_folder
from workbench.errors import SpecError
from workbench.train.store import read_meta

__all__ = ["CONFIG_FILE", "write_training_script"]

CONFIG_FILE = "train_config.json"
_MARKER = ("train.py", CONFIG_FILE)  # a folder holding these was written here: safe to replace


def write_training_script(run_dir: str | Path, path: str | Path, fsdp: bool = False) -> Path:
    """Write a standalone ``accelerate`` script and configs that reproduce a run.

    The folder is written under a temporary name and renamed, so it is complete or absent.

    Args:
        run_dir: The run folder (``run.json``, ``data/train``) that ``start_run`` wrote.
        path: Folder to create: absent, empty, or written earlier by this function.
        fsdp: Also write ``fsdp_config.yaml`` for models too large for one GPU. It names the
            model's decoder layer class, read from the base model's ``config.json``.

    Returns:
        The folder.

    Raises:
        SpecError: ``run_dir`` holds no run, the run cannot be scaled out (``qlora``, a
            quantized base), ``path`` holds other files, or with ``fsdp`` the decoder layer
            class cannot be found. Nothing is written.
        ModelLoadError: the run's base model can no longer be found.

    Examples:
        >>> # folder = write_training_script("runs/run-001", "scale-out", fsdp=True)
        >>> # then, on the cluster: accelerate launch --config_file
        >>> #     scale-out/accelerate_config.yaml scale-out/train.py --out out
    """
    run_dir, target = Path(run_dir).resolve(), Path(path)
    config = _script_config(run_dir, read_meta(run_dir))
    layers = _decoder_layers(config["model"]) if fsdp else None
    _check_target(target)
    with staging_folder(target, replace=target.exists()) as tmp:
        (tmp / "train.py").write_text(TRAIN_PY)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")
        (tmp / "accelerate_config.yaml").write_text(_yaml(DDP_CONFIG))
        if layers:
            (tmp / "fsdp_config.yaml").write_text(_yaml(_fsdp_config(layers)))
        (tmp / "README.md").write_text(_readme(run_dir, layers))
    return target


def _check_target(target: Path) -> None:
    if not target.exists():
        return
    if target.is_dir() and (not any(target.iterdir())
                            or all((target / name).is_file() for name in _MARKER)):
        return
    msg = (f"{target} exists and holds other files; give a new folder for the training "
           "script (a folder written earlier by to_script is replaced).")
    raise SpecError(msg)


def _script_config(run_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    spec, model_spec = meta["spec"], meta.get("model_spec") or {}
    problems = []
    if spec.get("method") == "qlora":
        problems.append("method='qlora' cannot be scaled out with this script (it loads the "
                        "base unquantized); train with method='lora' to scale out")
    if model_spec.get("quantization"):
        problems.append(f"the base was loaded with quantization={model_spec['quantization']!r}"
                        "; the script trains an unquantized base, so use a run without it")
    if not (run_dir / "data" / "train").is_dir():
        problems.append(f"{run_dir} has no data/train folder, so it is not a complete run")
    if problems:
        raise SpecError("; ".join(problems) + ".")
    return {"run_dir": str(run_dir), "data": str(run_dir / "data" / "train"),
            "model": _model_location(model_spec.get("spec")),
            "dtype": model_spec.get("dtype") or "auto",
            "spec": spec, "total_steps": meta["total_steps"]}


def _model_location(spec: str | None) -> str | None:
    """The folder or hub id ``from_pretrained`` reads (built-in names: the cached copy)."""
    from workbench.models.loading import resolve_source

    if not spec:
        return None  # the run named no model: train.py then asks for --model
    source = resolve_source(spec, on_event=lambda _message: None)
    return source.location if source.kind == "hub" else str(Path(source.location).resolve())


def _decoder_layers(location: str | None) -> list[str]:
    """Class names of the model's decoder layers (``_no_split_modules``), for FSDP wrapping."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if location is None:
        raise SpecError("the run names no base model, so fsdp=True cannot find its layers.")
    try:
        config = transformers.AutoConfig.from_pretrained(location)
    except (OSError, ValueError) as err:
        msg = f"fsdp=True needs the base model's config.json, which {location} lacks: {err}"
        raise SpecError(msg) from err
    names = list(config.architectures or [])
    names.append(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type, ""))
    for name in names:
        layers = getattr(getattr(transformers, name, None), "_no_split_modules", None)
        if layers:
            return list(layers)
    msg = (f"cannot tell the decoder layer class of {location} (architectures {names}); "
           "write fsdp_config.yaml by hand with fsdp_transformer_layer_cls_to_wrap.")
    raise SpecError(msg)


DDP_CONFIG: dict[str, Any] = {
    "compute_environment": "LOCAL_MACHINE", "distributed_type": "MULTI_GPU",
    "num_machines": 1, "machine_rank": 0, "num_processes": 2, "gpu_ids": "all",
    "mixed_precision": "no", "dynamo_config": {"dynamo_backend": "NO"}, "use_cpu": False,
    "same_network": True, "rdzv_backend": "static", "main_training_function": "main",
}


def _fsdp_config(layers: list[str]) -> dict[str, Any]:
    fsdp = {"fsdp_version": 2, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_transformer_layer_cls_to_wrap": ",".join(layers),
            "fsdp_state_dict_type": "FULL_STATE_DICT", "fsdp_offload_params": False,
            "fsdp_reshard_after_forward": True, "fsdp_cpu_ram_efficient_loading": False,
            "fsdp_activation_checkpointing": False}
    return {**DDP_CONFIG, "distributed_type": "FSDP", "fsdp_config": fsdp}


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def _readme(run_dir: Path, layers: list[str] | None) -> str:
    fsdp = (FSDP_README.replace("{layers}", ", ".join(layers)) if layers else
            "For FSDP (models too large for one GPU) write the folder again with "
            "`run.to_script(path, fsdp=True)`.\n")
    return README.replace("{run_dir}", str(run_dir)).replace("{fsdp}", fsdp)


README = """# Scale-out training script

Written by the Tuning Workbench from the run in `{run_dir}`. It needs only torch,
transformers, peft, accelerate and datasets (no workbench).

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

With LoRA dropout > 0 (or NEFTune) the random masks differ between process counts, so runs
then agree statistically, not to the last digit.

## FSDP

{fsdp}"""

FSDP_README = """For a model that does not fit on one GPU, shard it with FSDP v2 (one shard unit per
`{layers}`):

    accelerate launch --config_file fsdp_config.yaml --num_processes 8 train.py --out out
"""

TRAIN_PY = r'''#!/usr/bin/env python
"""Standalone training script written by the Tuning Workbench (see README.md).

Reproduces a workbench run on any number of processes: the same tokenized data and data
order, LoRA, AdamW groups, scheduler, warm-up, clipping, seed and global batch. Needs only
torch, transformers, peft, accelerate and datasets.

    accelerate launch --config_file accelerate_config.yaml train.py --out out
"""

import argparse
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration, PartialState
from accelerate.utils import set_seed
from datasets import load_from_disk
from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

CONFIG = json.loads((Path(__file__).resolve().parent / "train_config.json").read_text())
IGNORE = -100
MEGABATCH = 16  # as workbench.train.batches: batches per length-sorted group
LAYER = re.compile(r"\.(?:layers|h|blocks|layer)\.(\d+)\.")


def parse_args():
    parser = argparse.ArgumentParser(description="Train the workbench run's adapter.")
    parser.add_argument("--model", default=CONFIG["model"], help="base model folder or hub id")
    parser.add_argument("--data", default=CONFIG["data"], help="tokenized data folder")
    parser.add_argument("--out", default="out", help="folder for the adapter and log.jsonl")
    parser.add_argument("--max-steps", type=int, help="optimizer steps (default: the run's)")
    parser.add_argument("--per-device-batch", type=int,
                        help="examples per process and forward pass (default: batch // procs)")
    parser.add_argument("--dtype", default=CONFIG["dtype"],
                        choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--cpu", action="store_true", help="train on CPU (gloo), to test")
    args = parser.parse_args()
    if not args.model:
        parser.error("the run names no base model: pass --model")
    return args


def epoch_batches(lengths, batch_size, seed, epoch):
    """One epoch's batches, exactly as workbench.train.batches.epoch_batches."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    group, batches = batch_size * MEGABATCH, []
    for start in range(0, len(order), group):
        chunk = order[start:start + group]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size].tolist() for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def plan_steps(lengths, spec, steps, by_steps):
    """Example indices of each optimizer step, in the workbench run's order."""
    size, accum = spec["batch_size"], spec["grad_accum"]
    per_epoch = math.ceil(len(lengths) / size)
    micro = steps * accum if by_steps else math.ceil(spec["epochs"] * per_epoch)
    cache, batches = {}, []
    for m in range(micro):
        epoch, index = divmod(m, per_epoch)
        if epoch not in cache:
            cache = {epoch: epoch_batches(lengths, size, spec["seed"], epoch)}
        batches.append(cache[epoch][index])
    return [[i for batch in batches[s * accum:(s + 1) * accum] for i in batch]
            for s in range(steps)]


class StepBatches:
    """Global micro-batches of `batch_size` rows; each step gets `accum` of them, and -1
    (a row without trained tokens) fills the last. accelerate splits each across processes."""

    drop_last = False

    def __init__(self, steps, batch_size, accum):
        self.batch_size, self.batches = batch_size, []
        for step in steps:
            rows = step + [-1] * (accum * batch_size - len(step))
            self.batches += [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


class Rows(torch.utils.data.Dataset):
    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        return None if index < 0 else self.data[int(index)]


def collate(rows, pad_id):
    """Right-pad to the longest row; labels -100 and attention 0 on padding."""
    rows = [row or {"input_ids": [pad_id], "labels": [IGNORE]} for row in rows]
    width = max(len(row["input_ids"]) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        ids[i, :n], labels[i, :n] = torch.tensor(row["input_ids"]), torch.tensor(row["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def load_data(path, spec, steps, by_steps):
    """The data, each step's row indices and each step's trained-token count."""
    data = load_from_disk(path)
    lengths = np.array([len(ids) for ids in data["input_ids"]])
    trained = np.array([sum(t != IGNORE for t in labels[1:]) for labels in data["labels"]])
    kept = np.flatnonzero(trained > 0)  # the workbench skips rows with no trained token
    plan = plan_steps(lengths[kept], spec, steps, by_steps)
    rows = [[int(kept[i]) for i in step] for step in plan]
    return data, rows, [int(trained[step].sum()) for step in rows]


def load_model(args, spec, cpu):
    dtype = args.dtype
    if dtype == "auto":
        gpu = torch.cuda.is_available() and not cpu
        dtype = "bfloat16" if gpu and torch.cuda.is_bf16_supported() else "float32"
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, dtype))
    if spec["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    torch.manual_seed(spec["seed"])  # as the workbench: the adapter's initial weights
    if spec["method"] == "full":
        model.requires_grad_(True)
    else:
        from peft import LoraConfig, get_peft_model

        lora = spec["lora"]
        model = get_peft_model(model, LoraConfig(
            r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
            target_modules=lora["target"], use_dora=lora["use_dora"], task_type="CAUSAL_LM"))
    if spec["neftune_alpha"]:
        add_neftune(model, spec["neftune_alpha"])
    pad = [t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if t is not None]
    return model.train(), tokenizer, int(pad[0])


def add_neftune(model, alpha):
    """NEFTune noise on the input embeddings (arXiv:2310.05914), as the workbench adds it."""
    def hook(module, inputs, output):
        if not module.training:
            return output
        scale = alpha / (output.size(1) * output.size(2)) ** 0.5
        return output + torch.zeros_like(output).uniform_(-scale, scale)

    model.get_input_embeddings().register_forward_hook(hook)


def optimizer_groups(model, spec):
    """AdamW groups as the workbench's: layer-wise lr decay, no decay on 1-d params."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") \
        else model.config
    layers, decay, groups = int(getattr(config, "num_hidden_layers", 1)), \
        spec["layer_lr_decay"], {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        scale = 1.0
        if decay and decay != 1:
            match = LAYER.search(name)
            depth = int(match.group(1)) if match else (layers if "norm" in name else -1)
            scale = float(decay ** max(0, layers - 1 - depth))
        wd = spec["weight_decay"] if param.ndim >= 2 else 0.0
        groups.setdefault((scale, wd), []).append(param)
    return [{"params": p, "lr": spec["lr"] * s, "weight_decay": wd}
            for (s, wd), p in groups.items()]


def warmup_steps(spec, total):
    warmup = spec["warmup"]
    return warmup if isinstance(warmup, int) else math.ceil(warmup * total)


def check_step(step, loss, norm, limit):
    if not math.isfinite(loss):
        raise RuntimeError(f"the training loss became {loss} at step {step}; lower the lr.")
    if not math.isfinite(norm) or (limit is not None and norm > limit):
        raise RuntimeError(f"the gradient norm exploded to {norm:.3g} at step {step}.")


def train(accelerator, model, optimizer, scheduler, loader, step_tokens, spec, log):
    """The loop: each process's loss is sum(token losses) / (trained tokens of the global
    step); scaling by processes * accumulation undoes DDP's and accelerate's averaging."""
    accum = accelerator.gradient_accumulation_steps
    scale, clip = accelerator.num_processes * accum, spec["max_grad_norm"] or math.inf
    params = [p for p in model.parameters() if p.requires_grad]
    total = torch.zeros((), device=accelerator.device)
    for micro, batch in enumerate(loader):
        step = micro // accum
        with accelerator.accumulate(model):
            out = model(**batch, use_cache=False, num_items_in_batch=step_tokens[step])
            accelerator.backward(out.loss * scale)
            total += out.loss.detach().float()
            if accelerator.sync_gradients:
                norm = float(accelerator.clip_grad_norm_(params, clip))
                lr = max(group["lr"] for group in optimizer.param_groups)
                loss = float(accelerator.reduce(total, "sum"))
                check_step(step + 1, loss, norm, spec["grad_norm_limit"])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        if accelerator.sync_gradients:
            write_log(accelerator, log, {"step": step + 1, "loss": loss, "lr": lr,
                                         "grad_norm": norm, "tokens": step_tokens[step],
                                         "processes": accelerator.num_processes})
            total = torch.zeros((), device=accelerator.device)


def write_log(accelerator, path, row):
    if accelerator.is_main_process:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")


def save(accelerator, model, tokenizer, out, spec):
    """Rank 0 saves the adapter (the whole model for full fine-tuning) once."""
    state = accelerator.get_state_dict(model)  # every rank joins (FSDP gathers shards)
    if accelerator.is_main_process:
        folder = out / ("model" if spec["method"] == "full" else "adapter")
        accelerator.unwrap_model(model).save_pretrained(folder, state_dict=state)
        tokenizer.save_pretrained(folder)
    accelerator.wait_for_everyone()


def check_launch(accelerator):
    """Stop if the launcher started processes that are not one training job (each would
    train alone and write the same files), e.g. several processes without GPUs or --cpu."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != launched:
        raise SystemExit(f"{launched} processes were launched but accelerate set up "
                         f"{accelerator.num_processes}: no GPU per process? Pass --cpu to test.")


def main():
    args, spec = parse_args(), CONFIG["spec"]
    steps = args.max_steps or CONFIG["total_steps"]
    by_steps = args.max_steps is not None or spec["max_steps"] is not None
    procs = PartialState(cpu=args.cpu).num_processes
    per_device = args.per_device_batch or max(1, spec["batch_size"] // procs)
    accum = math.ceil(spec["batch_size"] * spec["grad_accum"] / (per_device * procs))
    # split_batches: each global micro-batch is cut across processes, so the data order and
    # the scheduler (stepped once per optimizer step) do not depend on the process count.
    accelerator = Accelerator(cpu=args.cpu, gradient_accumulation_steps=accum,
                              dataloader_config=DataLoaderConfiguration(split_batches=True))
    check_launch(accelerator)
    set_seed(spec["seed"])
    data, rows, step_tokens = load_data(args.data, spec, steps, by_steps)
    model, tokenizer, pad_id = load_model(args, spec, args.cpu)
    optimizer = torch.optim.AdamW(optimizer_groups(model, spec), lr=spec["lr"])
    scheduler = get_scheduler(spec["scheduler"], optimizer, num_warmup_steps=warmup_steps(
        spec, steps), num_training_steps=steps)
    loader = torch.utils.data.DataLoader(
        Rows(data), batch_sampler=StepBatches(rows, per_device * procs, accum),
        collate_fn=lambda batch: collate(batch, pad_id))
    model, optimizer, scheduler, loader = accelerator.prepare(model, optimizer, scheduler, loader)
    out = Path(args.out)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "log.jsonl").write_text("")
    accelerator.wait_for_everyone()
    train(accelerator, model, optimizer, scheduler, loader, step_tokens, spec, out / "log.jsonl")
    save(accelerator, model, tokenizer, out, spec)
    accelerator.end_training()


if __name__ == "__main__":
    main()
'''
