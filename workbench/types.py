"""The closed choices shared across the workbench, each defined once.

Settings are checked against these at construction (``typing.get_args``), so a misspelt choice
fails before anything is loaded or written.

Examples:
    >>> from typing import get_args
    >>> get_args(Quantization), get_args(Method)
    (('4bit', '8bit'), ('lora', 'qlora', 'full'))
"""

from __future__ import annotations

from typing import Literal

__all__ = ["DType", "Method", "Quantization"]

Quantization = Literal["4bit", "8bit"]
"""bitsandbytes quantization of a base model: NF4 with double quantization, or LLM.int8."""

Method = Literal["lora", "qlora", "full"]
"""What trains: a LoRA adapter, a LoRA adapter over a 4-bit base, or every weight."""

DType = Literal["auto", "float32", "bfloat16", "float16"]
"""Compute dtype of a loaded model (``auto``: bfloat16 on a GPU that supports it, else float32)."""
