"""Measure the real peak memory of one training step, in a fresh subprocess.

This is the ground truth that :func:`workbench.models.memory.estimate_memory` is calibrated
against, and the engine of a future dry-run: it loads the model folder, wraps it in a peft
LoRA adapter on all linear layers (or trains it fully), runs one forward + backward +
optimizer step on a random batch of ``batch_size x seq_len`` tokens, and reports the whole
process's peak resident memory (``VmHWM`` in ``/proc/self/status``) on CPU, or
``torch.cuda.max_memory_reserved()`` on CUDA.

A subprocess is needed because ``VmHWM`` is a high-water mark of the whole process: it
never goes down, so it can only measure one step of one configuration in a clean process.
The number therefore includes the interpreter and the imported libraries (torch,
transformers, peft), which is exactly what a user's notebook kernel also pays.

Each measurement starts a Python process that imports torch, transformers and peft (several
seconds even for the tiny model), so the examples here check only the settings, which are
validated before any process starts. A real call reads like this::

    folder = build_tiny_model("/tmp/tiny-measure")
    measure_peak_memory(folder, seq_len=32, batch_size=2)  # bytes; over 100 MB on CPU

Examples:
    >>> from workbench.models._measure import measure_training_step
    >>> measure_training_step("/tmp/wb-doc-measure", method="dora")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    workbench.errors.SpecError: cannot ...: method='dora': use 'full', 'lora' or 'qlora'
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from workbench.types import Method, Quantization

__all__ = ["StepMeasurement", "measure_peak_memory", "measure_training_step"]

Device = Literal["cpu", "cuda"]


@dataclass(frozen=True)
class StepMeasurement:
    """Memory high-water marks of one measured training step, in bytes.

    Attributes:
        after_imports: Peak after ``import torch, transformers, peft`` (the runtime baseline).
        after_load: Peak after loading (and quantizing) the model and adding the adapter.
        peak: Peak after forward, backward and the optimizer step: the number to compare.
        device: ``"cpu"`` (process RSS) or ``"cuda"`` (torch's reserved GPU memory).
    """

    after_imports: int
    after_load: int
    peak: int
    device: str


def _quantization_config(quantization: str | None, dtype):
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def _peak_bytes(device: str) -> int:
    import torch

    if device == "cuda":
        return int(torch.cuda.max_memory_reserved())
    # VmHWM, not ru_maxrss: Linux carries the parent's RSS at fork time into the child's
    # ru_maxrss across exec, so a large parent (a test runner, a notebook) would inflate it.
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # reported in kB
    import resource  # no /proc: fall back to the rusage high-water mark

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _load(args: dict):
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    dtype = torch.float32 if args["device"] == "cpu" else torch.bfloat16
    quant = _quantization_config(args["quantization"], dtype)
    model = AutoModelForCausalLM.from_pretrained(
        args["folder"], dtype=dtype, quantization_config=quant, device_map=args["device"]
    )
    if args["gradient_checkpointing"]:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    if args["method"] != "full":
        core = _training_core()
        lora = LoraConfig(r=args["lora_r"], target_modules="all-linear", task_type="CAUSAL_LM")
        if not core.dropout_free_targets(model, lora):  # fused experts: none, as in runs
            lora.lora_dropout = args["lora_dropout"]
        return core.make_trainable(model, lora)  # MoE routers left out, as in runs
    model.train()
    return model


def _training_core():
    """``workbench/train/core.py`` loaded from its file, as the standalone script does: the
    child imports nothing else of the workbench, so its baseline stays a plain process's."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "train" / "core.py"
    spec = importlib.util.spec_from_file_location("train_core", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _settle_the_allocator() -> None:
    """Put glibc's malloc in the state a running kernel is in before the step is measured.

    glibc raises its mmap threshold (to at most 32 MiB, and keeps up to twice that of freed
    heap memory) the first time it frees a large mmapped block. Whether the child's loading
    happened to free one before the step made the same step peak at either of two levels, up
    to 30% apart (a tiny Gemma 4: 1.0 or 1.37 GiB from run to run). A notebook kernel has
    freed such blocks long before it trains, so the child starts in that settled state.
    It narrows the spread, without removing it (the tests compare with the highest of a few
    steps). No-op where the C library has no ``mallopt`` (not glibc).
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    mallopt(m_mmap_threshold, 32 << 20)
    mallopt(m_trim_threshold, 64 << 20)


def _child(args: dict) -> dict:
    """Run in the subprocess: imports, load, one step; print the high-water marks."""
    import peft  # noqa: F401  (imported for the baseline, as a training kernel would)
    import torch
    import transformers  # noqa: F401

    after_imports = _peak_bytes("cpu")
    _settle_the_allocator()
    model = _load(args)
    after_load = _peak_bytes(args["device"])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    torch.manual_seed(0)
    vocab = model.config.get_text_config().vocab_size
    ids = torch.randint(0, vocab, (args["batch_size"], args["seq_len"]), device=args["device"])
    labels = ids.clone()
    if args.get("trained_per_row"):
        labels[:, : args["seq_len"] - args["trained_per_row"]] = -100
    if args.get("loss_function"):  # "module:function" taking (model, batch) -> (sum, count)
        import importlib

        module, name = args["loss_function"].split(":")
        total, count = getattr(importlib.import_module(module), name)(
            model, {"input_ids": ids, "labels": labels}
        )
        loss = total / count
    else:
        loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {
        "after_imports": after_imports,
        "after_load": after_load,
        "peak": _peak_bytes(args["device"]),
        "device": args["device"],
    }


def _check(quantization, method, seq_len: int, batch_size: int, lora_r: int, dropout) -> None:
    from workbench.errors import SpecError
    from workbench.models.memory import _dropout_problems

    problems = []
    if quantization not in (None, "4bit", "8bit"):
        problems.append(f"quantization={quantization!r}: use None, '4bit' or '8bit'")
    if method not in ("full", "lora", "qlora"):
        problems.append(f"method={method!r}: use 'full', 'lora' or 'qlora'")
    for name, value in (("seq_len", seq_len), ("batch_size", batch_size), ("lora_r", lora_r)):
        if not isinstance(value, int) or value <= 0:
            problems.append(f"{name}={value!r}: use a positive integer")
    problems += _dropout_problems(dropout)
    if problems:
        raise SpecError("cannot measure a training step: " + "; ".join(problems))


def measure_training_step(
    folder: str | Path,
    *,
    quantization: Quantization | None = None,
    method: Method = "lora",
    lora_r: int = 8,
    lora_dropout: float = 0.05,
    seq_len: int = 512,
    batch_size: int = 4,
    gradient_checkpointing: bool | Literal["auto"] = "auto",
    device: Device = "cpu",
    timeout: float = 1800,
    trained_per_row: int | None = None,
    loss_function: str | None = None,
) -> StepMeasurement:
    """Run one real training step in a fresh subprocess and return its memory high-water marks.

    Args:
        folder: A local transformers model folder (``config.json`` + safetensors weights).
        quantization: ``None``, ``"4bit"`` (NF4, double quant) or ``"8bit"`` (LLM.int8).
        method: ``"full"`` trains every weight; ``"lora"`` and ``"qlora"`` train a LoRA adapter
            of rank ``lora_r`` on all linear layers. ``"qlora"`` implies ``"4bit"``.
        lora_r: LoRA rank.
        lora_dropout: Dropout on the adapter's inputs (``TrainSpec``'s default 0.05).
        seq_len: Tokens per sequence of the random batch.
        batch_size: Sequences in the batch.
        gradient_checkpointing: Recompute block activations in the backward pass;
            ``"auto"``: for a quantized base on CUDA, as training's ``"auto"`` does.
        device: ``"cpu"`` (float32, process RSS) or ``"cuda"`` (bf16, torch's reserved memory).
        timeout: Seconds before the subprocess is killed.
        trained_per_row: Train only the last ``trained_per_row`` labels of each row
            (``None``: every label).
        loss_function: ``"module:function"`` computing ``(loss_sum, count)`` from
            ``(model, {"input_ids", "labels"})``, e.g. the workbench's
            ``"workbench.train.loss:token_loss_sum"`` (logits only where labels train);
            ``None``: the model's own loss, as plain transformers computes it.

    Returns:
        A :class:`StepMeasurement` in bytes.

    Raises:
        SpecError: A setting is not usable (names the field, the value and the fix).
        WorkbenchError: The subprocess failed; the message carries the end of its stderr.

    Examples:
        A real step takes several seconds (a fresh process imports torch), and its result
        satisfies ``m.peak >= m.after_load >= m.after_imports``. Every setting is checked
        first, and all problems are named in one error:

        >>> measure_training_step("/tmp/wb-doc-measure", seq_len=0, batch_size=-1)
        ... # doctest: +NORMALIZE_WHITESPACE
        Traceback (most recent call last):
        workbench.errors.SpecError: cannot measure a training step:
        seq_len=0: use a positive integer; batch_size=-1: use a positive integer
    """
    _check(quantization, method, seq_len, batch_size, lora_r, lora_dropout)
    if trained_per_row is not None and not 0 < trained_per_row < seq_len:
        from workbench.errors import SpecError

        msg = f"trained_per_row={trained_per_row!r}: use a number from 1 to seq_len - 1"
        raise SpecError(msg)
    if method == "qlora":
        quantization = quantization or "4bit"
    if gradient_checkpointing == "auto":
        from workbench.train.core import checkpoints_by_default

        gradient_checkpointing = checkpoints_by_default(quantization is not None, device)
    args = dict(
        folder=str(folder), quantization=quantization, method=method, lora_r=lora_r,
        lora_dropout=lora_dropout, seq_len=seq_len, batch_size=batch_size, device=device,
        gradient_checkpointing=gradient_checkpointing, trained_per_row=trained_per_row,
        loss_function=loss_function,
    )  # fmt: skip
    # The child runs this file as a script, so it imports torch, transformers and peft but
    # not the workbench (only the loss_function asked for): its baseline is what any
    # training process pays.
    command = [sys.executable, str(Path(__file__).resolve()), json.dumps(args)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        from workbench.errors import WorkbenchError

        msg = f"measuring a training step of {folder} failed:\n{done.stderr[-3000:]}"
        raise WorkbenchError(msg)
    return StepMeasurement(**json.loads(done.stdout.strip().splitlines()[-1]))


def measure_peak_memory(folder: str | Path, **settings) -> int:
    """Return the peak memory in bytes of one real training step.

    A shortcut for ``measure_training_step(folder, **settings).peak``.

    Args:
        folder: A local transformers model folder.
        **settings: Keyword arguments of :func:`measure_training_step`.

    Returns:
        Peak process RSS on CPU, or peak reserved GPU memory on CUDA, in bytes.

    Examples:
        The settings pass through to :func:`measure_training_step`, which checks them before
        it starts the measuring process:

        >>> measure_peak_memory("/tmp/wb-doc-measure", lora_r=0)
        Traceback (most recent call last):
        workbench.errors.SpecError: cannot measure a training step: lora_r=0: use a positive integer
    """
    return measure_training_step(folder, **settings).peak


if __name__ == "__main__":
    print(json.dumps(asdict(StepMeasurement(**_child(json.loads(sys.argv[1]))))))
