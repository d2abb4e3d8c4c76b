"""Fold a LoRA adapter into the base weights, for plain and for 4-bit/8-bit bases.

For a plain base this is peft's ``merge_and_unload``. For a bitsandbytes base, peft would
re-quantize after merging, adding a second rounding error, so each adapted layer is instead
dequantized, merged and kept in the compute dtype: the merged model then computes what the
adapter model computed, and the remaining quantized layers are dequantized by transformers.

Examples:
    >>> from peft import LoraConfig, get_peft_model
    >>> from workbench.models.tiny import build_tiny_model
    >>> from workbench.models.loading import load_model
    >>> loaded = load_model(str(build_tiny_model("/tmp/tiny-merge-doc")), on_event=len)
    >>> adapted = get_peft_model(loaded.model, LoraConfig(r=4, target_modules="all-linear"))
    >>> type(merge_adapter(adapted)).__name__
    'LlamaForCausalLM'
"""

from __future__ import annotations

from typing import Any

from workbench.errors import SpecError

__all__ = ["is_adapted", "merge_adapter"]


def is_adapted(model: Any) -> bool:
    """True when ``model`` is a peft model carrying an adapter.

    Examples:
        >>> is_adapted(loaded.model)  # doctest: +SKIP
        False
    """
    from peft import PeftModel

    return isinstance(model, PeftModel)


def merge_adapter(model: Any) -> Any:
    """Return the base transformers model with the active adapter folded into its weights.

    Args:
        model: A ``PeftModel`` (LoRA or DoRA) over a plain, 4-bit or 8-bit base.

    Raises:
        SpecError: ``model`` has no adapter to merge.

    Examples:
        >>> merged = merge_adapter(adapted)  # doctest: +SKIP
    """
    if not is_adapted(model):
        raise SpecError("there is no adapter to merge: train or load an adapter first.")
    base = model.get_base_model()
    if getattr(base, "hf_quantizer", None) is None:
        return model.merge_and_unload()
    _merge_quantized_layers(model)
    merged = model.get_base_model()
    if any(_is_bnb_layer(m) for m in merged.modules()):
        return merged.dequantize(dtype=_compute_dtype(merged))
    # Nothing left to dequantize (transformers' dequantize fails on that case): only drop
    # the quantization config so the model saves and reloads as a plain one.
    merged.hf_quantizer.remove_quantization_config(merged)
    return merged


def _is_bnb_layer(module: Any) -> bool:
    return type(module).__module__.startswith("bitsandbytes")


def _compute_dtype(model: Any):
    import torch

    for param in model.parameters():
        if param.dtype.is_floating_point and param.dtype != torch.uint8:
            return param.dtype
    return torch.float32


def _merge_quantized_layers(model: Any) -> None:
    """Replace each adapted bitsandbytes layer by a float Linear holding base + delta."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    wrappers = [(name, m) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, wrapper in wrappers:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, _merged_linear(wrapper))


def _merged_linear(wrapper: Any):
    import torch
    from peft.utils.integrations import dequantize_bnb_weight

    base = wrapper.get_base_layer()
    if getattr(getattr(base.weight, "quant_state", None), "packing_format_for_cpu", False):
        # bitsandbytes repacks 4-bit weights for its CPU kernel at the first no-grad forward;
        # dequantize_4bit reads only the standard layout, which its state_dict() restores.
        base.state_dict()
    state = getattr(base.weight, "quant_state", None) or getattr(base, "state", None)
    weight = dequantize_bnb_weight(base.weight, state=state).float()
    for adapter in wrapper.active_adapters:
        if adapter in wrapper.lora_A:
            weight = weight + wrapper.get_delta_weight(adapter).float()
    dtype = getattr(base, "compute_dtype", None) or torch.float32
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=base.bias is not None)
    linear.weight.data = weight.to(dtype)
    if base.bias is not None:
        linear.bias.data = base.bias.data.to(dtype)
    return linear.to(weight.device)
