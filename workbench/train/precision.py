"""Train the adapter in the precision the base computes in (bfloat16 autocast).

peft keeps LoRA weights in float32 (``autocast_adapter_dtype``), which is right for the
optimizer: its updates are often below bfloat16's resolution. Without autocast, though,
every LoRA layer of a bfloat16 base casts its input up to float32 and runs its two matmuls
there, beside a base that runs in bfloat16: on a GPU that is the slow path (no bfloat16
tensor cores for the adapter, and float32 activations saved for backward). Under
``torch.autocast(dtype=bfloat16)`` the adapter's matmuls run in bfloat16 on the fly while
its weights, gradients and AdamW moments stay float32 — what transformers' ``Trainer`` does
with ``bf16=True``.

A float32 base (the CPU default) is left alone; so is a float16 base, which would need loss
scaling to train safely under autocast.

On CUDA the same context also keeps PyTorch's scaled-dot-product attention off its cuDNN
kernel (:func:`attention_kernels`).

Examples:
    >>> import torch
    >>> from transformers import AutoModelForCausalLM
    >>> from workbench.models.tiny import build_tiny_model
    >>> folder = build_tiny_model("/tmp/wb-doc-precision-tiny")
    >>> compute_dtype(AutoModelForCausalLM.from_pretrained(folder))
    torch.float32
    >>> model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    >>> with training_precision(model):
    ...     torch.is_autocast_enabled("cpu")
    True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from workbench.train.loss import causal_lm

__all__ = ["attention_kernels", "compute_dtype", "training_precision"]


def compute_dtype(model: Any) -> Any:
    """The dtype the base model's matmuls run in.

    A bitsandbytes 4-bit base computes in its ``bnb_4bit_compute_dtype``; any other base in
    the dtype of its input embeddings.

    Examples:
        >>> from transformers import AutoModelForCausalLM
        >>> from workbench.models.tiny import build_tiny_model
        >>> model = AutoModelForCausalLM.from_pretrained(build_tiny_model("/tmp/wb-doc-prec"))
        >>> compute_dtype(model)
        torch.float32
    """
    lm = causal_lm(model)
    quant = getattr(lm.config, "quantization_config", None)
    if quant is not None and getattr(lm, "is_loaded_in_4bit", False):
        import torch

        declared = getattr(quant, "bnb_4bit_compute_dtype", None)
        if declared is None and isinstance(quant, dict):
            declared = quant.get("bnb_4bit_compute_dtype")
        if isinstance(declared, str):
            declared = getattr(torch, declared.replace("torch.", ""), None)
        if declared is not None:
            return declared
    return lm.get_input_embeddings().weight.dtype


def attention_kernels(device_type: str) -> contextlib.AbstractContextManager:
    """On CUDA, PyTorch's flash, memory-efficient or math attention, not cuDNN's.

    PyTorch picks cuDNN's attention on Hopper GPUs, and cuDNN builds a graph for each new
    sequence length, forward and backward: milliseconds of host time each. Training batches
    change length every step (packed rows, padded widths), so on one H200 (0.5B Qwen2 shape,
    torch 2.11, benchmarks/gpu-runs/2026-12-04-h200) the attention calls took 140 ms of host
    time in a 476 ms step whose kernels ran 42 ms in all. Flash attention (a causal batch
    without a mask) and the memory-efficient kernel (a packed row's block mask) launch in
    microseconds at any length. The backward runs the kernel its forward chose. Elsewhere
    nothing changes.

    Examples:
        >>> import torch
        >>> with attention_kernels("cuda"):
        ...     torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled()
        (False, True)
        >>> with attention_kernels("cpu"):
        ...     torch.backends.cuda.cudnn_sdp_enabled()
        True
    """
    if device_type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kinds = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    return sdpa_kernel(kinds)


@contextlib.contextmanager
def training_precision(model: Any) -> Iterator[None]:
    """The context of a training forward: bfloat16 autocast on a bfloat16 base, else none;
    on CUDA also :func:`attention_kernels`.

    Examples:
        >>> import torch
        >>> from transformers import AutoModelForCausalLM
        >>> from workbench.models.tiny import build_tiny_model
        >>> model = AutoModelForCausalLM.from_pretrained(build_tiny_model("/tmp/wb-doc-prec"))
        >>> with training_precision(model):
        ...     torch.is_autocast_enabled("cpu")
        False
    """
    import torch

    device = next(model.parameters()).device.type
    with contextlib.ExitStack() as stack:
        stack.enter_context(attention_kernels(device))
        if compute_dtype(model) == torch.bfloat16:
            stack.enter_context(torch.autocast(device_type=device, dtype=torch.bfloat16))
        yield
