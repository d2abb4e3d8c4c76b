"""``batch_size="auto"``: the largest batch the memory estimate says fits, chosen at the start.

The run's longest example sets the width of the widest micro-batch; for each power of two up
to a per-device limit, :func:`~workbench.models.memory.estimate_memory` gives the peak of one
step of that width, and the largest batch whose peak stays under a share of the memory this
process can use is taken. The choice is made once, when the run starts, and stored in the
run's ``spec`` as a plain number, so a resumed or forked run keeps it (the data order depends
on it). The reason is kept in the run folder's ``meta.json`` and in ``Run.choices``.

Examples:
    >>> from transformers import AutoModelForCausalLM
    >>> from workbench.models.tiny import build_tiny_model
    >>> from workbench.train.spec import TrainSpec
    >>> model = AutoModelForCausalLM.from_pretrained(build_tiny_model("/tmp/wb-doc-bs-tiny"))
    >>> choice = choose_batch_size(model, [40, 64, 12] * 10, TrainSpec(), budget=8 * 2**30)
    >>> choice.size, choice.reason.startswith("batch_size='auto' chose 8")
    (8, True)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from workbench.errors import SpecError, WorkbenchWarning

__all__ = ["AUTO_LIMIT", "HEADROOM", "BatchSizeChoice", "choose_batch_size", "usable_memory"]

# The largest batch "auto" picks. CPU: tokens/s stops growing past a few rows (matmuls are
# already large), while memory keeps growing, so a laptop keeps its headroom. CUDA: large
# enough for a small model's batch to fill the chip.
AUTO_LIMIT = {"cpu": 8, "cuda": 64}
# Share of the usable memory the estimated peak may take. The CPU estimate is within a few
# percent of measured peaks (tests/test_memory*.py); CUDA's allocator overheads are assumed,
# not yet measured on a GPU (workbench/models/memory.py), so more is kept back there... and
# on CPU the notebook, the browser and the OS live in the same memory.
HEADROOM = {"cpu": 0.6, "cuda": 0.8}


@dataclass(frozen=True)
class BatchSizeChoice:
    """The batch size ``"auto"`` chose, and why.

    Examples:
        >>> BatchSizeChoice(4, "batch_size='auto' chose 4").size
        4
    """

    size: int
    reason: str


def usable_memory(device: Any) -> int:
    """Bytes this process can use for training on ``device`` (what it holds plus what is free).

    CUDA (``"cuda"``, ``"cuda:N"`` or a ``torch.device``): that GPU's free memory plus what
    torch's allocator already reserved there. CPU: this process's resident memory plus the
    memory the OS reports available (its estimate of what can be used without swapping).

    Examples:
        >>> usable_memory("cpu") > 2**28
        True
    """
    import torch

    if torch.device(device).type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device))
    import psutil

    rss = psutil.Process(os.getpid()).memory_info().rss
    return int(rss + psutil.virtual_memory().available)


def _estimate_settings(model: Any, spec: Any, device: str) -> dict[str, Any]:
    from workbench.train.loss import causal_lm
    from workbench.train.precision import compute_dtype
    from workbench.train.prepare import choose_checkpointing, is_4bit, is_quantized

    quantization = ("4bit" if is_4bit(model) else "8bit") if is_quantized(model) else None
    computes_in = str(compute_dtype(model)).removeprefix("torch.")
    if computes_in not in ("float32", "bfloat16", "float16"):
        computes_in = "auto"  # a dtype the estimate does not know: its device default
    return {
        "spec": causal_lm(model).config,
        "quantization": quantization,
        "method": spec.method,
        "lora_r": spec.lora.r,
        "lora_dropout": spec.lora.dropout,
        "gradient_checkpointing": choose_checkpointing(model, spec)[0].gradient_checkpointing,
        "device": device,
        "dtype": "float32" if device == "cpu" else computes_in,
    }


def _fast_loss(model: Any, spec: Any) -> bool:
    from workbench.train.loss import supports_fast_loss

    return bool(spec.fast_loss) and supports_fast_loss(model)


def choose_batch_size(
    model: Any,
    lengths: Sequence[int],
    spec: Any,
    trained: Sequence[int] | None = None,
    budget: int | None = None,
    device: str | None = None,
    processes: int = 1,
    fsdp: bool = False,
) -> BatchSizeChoice:
    """The largest power-of-two batch whose estimated peak fits the memory budget.

    Args:
        model: The loaded model (plain or quantized) the run will train.
        lengths: Token counts of the training examples; the longest sets the width.
        trained: Trained tokens of each example. With the workbench's loss
            (``spec.fast_loss``) only those get logits, so the batch's logits are estimated
            as ``size x max(trained)`` (``None``: every token's, as plain transformers).
        spec: The run's :class:`~workbench.train.spec.TrainSpec` (method, rank,
            gradient checkpointing).
        budget: Bytes to fit in (``None``: :func:`usable_memory` of the device); the
            estimated peak may take :data:`HEADROOM` of it.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (``None``: where the model's weights
            are).
        processes, fsdp: A launched run's processes per step, and sharding: the estimate
            is then per process for its share of the batch.

    Returns:
        A :class:`BatchSizeChoice`; at least 1, at most :data:`AUTO_LIMIT` for the device
        and the number of examples. When even 1 does not fit, 1 is chosen, a
        :class:`~workbench.errors.WorkbenchWarning` says so, and the reason too.

    Raises:
        SpecError: The model is one the memory estimate does not model (Nemotron-H).

    Examples:
        >>> from transformers import AutoModelForCausalLM
        >>> from workbench.models.tiny import build_tiny_model
        >>> from workbench.train.spec import TrainSpec
        >>> model = AutoModelForCausalLM.from_pretrained(build_tiny_model("/tmp/wb-doc-bs-tiny"))
        >>> choose_batch_size(model, [40, 64], TrainSpec(), budget=8 * 2**30).size  # 2 rows
        2
    """
    import warnings

    import torch

    from workbench.models.memory import estimate_memory

    where_trained = device or next(model.parameters()).device
    device = "cuda" if torch.device(where_trained).type == "cuda" else "cpu"
    budget = usable_memory(where_trained) if budget is None else int(budget)
    allowed = int(budget * HEADROOM[device])
    width, limit = max(lengths), max(1, min(AUTO_LIMIT[device], len(lengths)))
    settings = _estimate_settings(model, spec, device)
    per_row = max(trained) if trained is not None and _fast_loss(model, spec) else None

    def peak(size: int) -> int:
        est = estimate_memory(
            **settings,
            seq_len=width,
            batch_size=size,
            processes=processes,
            fsdp=fsdp,
            logit_tokens=None if per_row is None else max(1, per_row * size),
        )
        return est.total

    sizes = sorted({2**k for k in range(limit.bit_length()) if 2**k <= limit} | {limit})
    try:
        peaks = {n: peak(n) for n in sizes}
    except SpecError as error:
        raise SpecError(f"batch_size='auto' needs a memory estimate, and {error}; give "
                        "batch_size a number") from None  # fmt: skip
    fitting = [n for n in sizes if peaks[n] <= allowed]
    size = fitting[-1] if fitting else 1
    gib = 2**30
    where = f"{HEADROOM[device]:.0%} of the {budget / gib:.1f} GiB usable on {device}"
    if not fitting:
        reason = (
            f"batch_size='auto' chose 1, but even that is estimated at "
            f"{peaks[1] / gib:.2f} GiB, over {where}: shorten max_length, use "
            "gradient_checkpointing=True or a 4-bit base"
        )
        warnings.warn(reason, WorkbenchWarning, stacklevel=3)
        return BatchSizeChoice(size, reason)
    reason = (
        f"batch_size='auto' chose {size}: its estimated peak at the longest example "
        f"({width} tokens) is {peaks[size] / gib:.2f} GiB, within {where}"
    )
    if size < limit:
        bigger = sizes[sizes.index(size) + 1]
        reason += f" (batch {bigger}: {peaks[bigger] / gib:.2f} GiB)"
    else:
        reason += f" (the largest it picks on {device}: {limit})"
    return BatchSizeChoice(size, reason)
