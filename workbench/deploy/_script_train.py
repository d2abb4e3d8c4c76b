#!/usr/bin/env python
"""Standalone training script written by the Tuning Workbench (see README.md).

Reproduces a workbench run on any number of processes: the same tokenized data and data
order, LoRA, AdamW groups, scheduler, warm-up, clipping, seed and global batch. Needs only
torch, transformers, peft, accelerate and datasets. The training pieces it shares with the
workbench (data order, padding, optimizer groups, NEFTune) are in ``train_core.py`` beside it,
a copy of ``workbench/train/core.py``.

    accelerate launch --config_file accelerate_config.yaml train.py --out out

In the workbench package this file is ``workbench/deploy/_script_train.py``, the template
that :func:`workbench.deploy.script.write_training_script` copies as ``train.py``.

Examples:
    >>> collate([{"input_ids": [5, 6], "labels": [5, 6]}, None], pad_id=0)["attention_mask"]
    tensor([[1, 1],
            [1, 0]])
"""

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration, PartialState
from accelerate.utils import set_seed
from datasets import load_from_disk
from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

try:
    import train_core as core  # the copy of workbench/train/core.py beside this script
except ModuleNotFoundError:
    if __name__ == "__main__":
        raise
    from workbench.train import core  # this template, imported inside the workbench package

CONFIG_FILE = "train_config.json"


def parse_args(config):
    """Command-line options; their defaults come from the run (``train_config.json``)."""
    parser = argparse.ArgumentParser(description="Train the workbench run's adapter.")
    parser.add_argument("--model", default=config["model"], help="base model folder or hub id")
    parser.add_argument("--data", default=config["data"], help="tokenized data folder")
    parser.add_argument("--out", default="out", help="folder for the adapter and log.jsonl")
    parser.add_argument("--max-steps", type=int, help="optimizer steps (default: the run's)")
    parser.add_argument(
        "--per-device-batch",
        type=int,
        help="examples per process and forward pass (default: batch // procs)",
    )
    parser.add_argument(
        "--dtype", default=config["dtype"], choices=["auto", "float32", "bfloat16", "float16"]
    )
    parser.add_argument("--cpu", action="store_true", help="train on CPU (gloo), to test")
    parser.add_argument(
        "--trust-remote-code",
        action=argparse.BooleanOptionalAction,
        default=config.get("trust_remote_code", False),
        help="run the code the model folder ships (the run loaded it so)",
    )
    args = parser.parse_args()
    if not args.model:
        parser.error("the run names no base model: pass --model")
    return args


class StepBatches:
    """Global micro-batches of ``batch_size`` rows, ``accum`` per optimizer step.

    At the run's own batch size, the run's micro-batches are kept: one process trains them as
    they are, so their shapes (and so the dropout masks) are the run's; across processes, -1
    (a row without trained tokens) fills each to ``batch_size`` so that accelerate splits it
    evenly. Another size re-cuts each step's rows into ``accum`` micro-batches, filled.

    Examples:
        >>> list(StepBatches([[[4], [7, 9]]], batch_size=2, accum=2, processes=1, run_batch=2))
        [[4], [7, 9]]
        >>> list(StepBatches([[[4], [7, 9]]], batch_size=2, accum=2, processes=2, run_batch=2))
        [[4, -1], [7, 9]]
        >>> list(StepBatches([[[4], [7, 9]]], batch_size=1, accum=4, processes=1, run_batch=2))
        [[4], [7], [9], [-1]]
    """

    drop_last = False

    def __init__(self, steps, batch_size, accum, processes, run_batch):
        self.batch_size, self.batches = batch_size, []
        for micro in steps:
            if batch_size == run_batch:
                fill = batch_size if processes > 1 else 0
                self.batches += [batch + [-1] * (fill - len(batch)) for batch in micro]
                continue
            rows = [row for batch in micro for row in batch]
            rows += [-1] * (accum * batch_size - len(rows))
            self.batches += [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


class Rows(torch.utils.data.Dataset):
    """The tokenized rows by index; -1 gives ``None`` (a filler row)."""

    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        return None if index < 0 else self.data[int(index)]


def collate(rows, pad_id):
    """Right-pad as the workbench does, and mask the padding (``None``: a row with no
    trained token, which fills a step that has fewer rows than the global batch)."""
    rows = [row or {"input_ids": [pad_id], "labels": [core.IGNORE_INDEX]} for row in rows]
    batch = core.pad_rows(
        [row["input_ids"] for row in rows], [row["labels"] for row in rows], pad_id
    )
    lengths = batch.pop("lengths")
    width = batch["input_ids"].shape[1]
    batch["attention_mask"] = (torch.arange(width) < lengths[:, None]).long()
    return batch


def load_data(path, spec, steps, by_steps):
    """The data, each step's micro-batches of row indices and each step's trained tokens."""
    data = load_from_disk(path)
    counts = core.trained_tokens(data["labels"])
    kept = core.trained_rows(counts)  # as the workbench, skip rows with no trained token
    lengths = np.array([len(ids) for ids in data["input_ids"]])
    by_step = spec.get("batch_order") == "step"  # the run's own order (older runs: none)
    plan = core.BatchPlan(
        lengths[kept], spec["batch_size"], spec["seed"], spec["grad_accum"], by_step
    )
    total = plan.total_micro(spec["grad_accum"], spec["epochs"], steps if by_steps else None)
    micro = plan.steps(steps, spec["grad_accum"], total)
    micro = [[[int(kept[i]) for i in batch] for batch in step] for step in micro]
    return data, micro, [int(sum(counts[batch].sum() for batch in step)) for step in micro]


def load_model(args, spec):
    """The base model with the run's adapter (every weight for full fine-tuning)."""
    dtype = args.dtype
    if dtype == "auto":
        gpu = torch.cuda.is_available() and not args.cpu
        dtype = "bfloat16" if gpu and torch.cuda.is_bf16_supported() else "float32"
    trust = args.trust_remote_code
    tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=trust)
    model = AutoModelForCausalLM.from_pretrained(
        args.model, dtype=getattr(torch, dtype), trust_remote_code=trust
    )
    if spec["gradient_checkpointing"]:
        core.enable_checkpointing(model)
    torch.manual_seed(spec["seed"])  # as the workbench: the adapter's initial weights
    lora = None if spec["method"] == "full" else core.lora_config(**spec["lora"])
    model = core.make_trainable(model, lora)
    if spec["neftune_alpha"]:
        core.add_neftune(model, spec["neftune_alpha"])
    return model, tokenizer, core.pad_id(tokenizer)


def check_step(step, loss, norm, limit):
    """Stop on a NaN/inf loss or an exploding gradient, as the workbench does."""
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
            write_log(
                accelerator,
                log,
                {
                    "step": step + 1,
                    "loss": loss,
                    "lr": lr,
                    "grad_norm": norm,
                    "tokens": step_tokens[step],
                    "processes": accelerator.num_processes,
                },
            )
            total = torch.zeros((), device=accelerator.device)


def write_log(accelerator, path, row):
    """Append one JSON line (rank 0 only)."""
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
        raise SystemExit(
            f"{launched} processes were launched but accelerate set up "
            f"{accelerator.num_processes}: no GPU per process? Pass --cpu to test."
        )


def prepare(args, spec, steps, by_steps):
    """The accelerator and the prepared model, optimizer, scheduler and loader."""
    procs = PartialState(cpu=args.cpu).num_processes
    per_device = args.per_device_batch or max(1, spec["batch_size"] // procs)
    accum = math.ceil(spec["batch_size"] * spec["grad_accum"] / (per_device * procs))
    # split_batches: each global micro-batch is cut across processes, so the data order and
    # the scheduler (stepped once per optimizer step) do not depend on the process count.
    accelerator = Accelerator(
        cpu=args.cpu,
        gradient_accumulation_steps=accum,
        dataloader_config=DataLoaderConfiguration(split_batches=True),
    )
    check_launch(accelerator)
    set_seed(spec["seed"])
    data, micro, step_tokens = load_data(args.data, spec, steps, by_steps)
    model, tokenizer, pad_id = load_model(args, spec)
    optimizer = torch.optim.AdamW(
        core.optimizer_groups(model, spec["lr"], spec["weight_decay"], spec["layer_lr_decay"]),
        lr=spec["lr"],
    )
    scheduler = get_scheduler(
        spec["scheduler"],
        optimizer,
        num_training_steps=steps,
        num_warmup_steps=core.warmup_steps(spec["warmup"], steps),
    )
    loader = torch.utils.data.DataLoader(
        Rows(data),
        batch_sampler=StepBatches(micro, per_device * procs, accum, procs, spec["batch_size"]),
        collate_fn=lambda batch: collate(batch, pad_id),
        # Its own generator: starting to iterate draws a seed, which from torch's global RNG
        # would shift every dropout mask away from the run's.
        generator=torch.Generator(),
    )
    return (
        accelerator,
        tokenizer,
        step_tokens,
        accelerator.prepare(model, optimizer, scheduler, loader),
    )


def main():
    """Train as the run did, log every step, save once."""
    config = json.loads((Path(__file__).resolve().parent / CONFIG_FILE).read_text())
    args, spec = parse_args(config), {**config["spec"], "batch_order": config.get("batch_order")}
    steps = args.max_steps or config["total_steps"]
    by_steps = args.max_steps is not None or spec["max_steps"] is not None
    accelerator, tokenizer, step_tokens, prepared = prepare(args, spec, steps, by_steps)
    model, optimizer, scheduler, loader = prepared
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
