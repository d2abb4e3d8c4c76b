"""Fold a LoRA adapter into the base weights, for plain and for 4-bit/8-bit bases.

For a plain base this is peft's ``merge_and_unload``. For a bitsandbytes base, peft would
re-quantize after merging, adding a second rounding error, so each adapted layer is instead
dequantized, merged and kept in the compute dtype: the merged model then computes what the
adapter model computed, and the remaining quantized layers are dequantized the same way.
:func:`plain_model` does this on a copy that shares the unchanged tensors, so an export can
merge without changing the model the session keeps training and evaluating.

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

import copy
from typing import Any

from workbench.errors import SpecError

__all__ = ["is_adapted", "merge_adapter", "plain_model"]


def is_adapted(model: Any) -> bool:
    """True when ``model`` is a peft model carrying an adapter.

    Examples:
        >>> from peft import LoraConfig, get_peft_model
        >>> from workbench.models.loading import load_model
        >>> from workbench.models.tiny import build_tiny_model
        >>> loaded = load_model(str(build_tiny_model("/tmp/wb-doc-deploy-merge-tiny")),
        ...                     on_event=len)
        >>> is_adapted(loaded.model)
        False
        >>> is_adapted(get_peft_model(loaded.model, LoraConfig(r=4, target_modules="all-linear")))
        True
    """
    from peft import PeftModel

    return isinstance(model, PeftModel)


def merge_adapter(model: Any) -> Any:
    """Return the base transformers model with the active adapter folded into its weights.

    This merges in place: ``model`` is consumed. Use :func:`plain_model` to keep it.

    Args:
        model: A ``PeftModel`` (LoRA or DoRA) over a plain, 4-bit or 8-bit base.

    Raises:
        SpecError: ``model`` has no adapter to merge.

    Examples:
        >>> from peft import LoraConfig, get_peft_model
        >>> from workbench.models.loading import load_model
        >>> from workbench.models.tiny import build_tiny_model
        >>> loaded = load_model(str(build_tiny_model("/tmp/wb-doc-deploy-merge-tiny")),
        ...                     on_event=len)
        >>> merge_adapter(loaded.model)
        Traceback (most recent call last):
        workbench.errors.SpecError: there is no adapter to merge: train or load an adapter first.
        >>> adapted = get_peft_model(loaded.model, LoraConfig(r=4, target_modules="all-linear"))
        >>> merged = merge_adapter(adapted)
        >>> type(merged).__name__, is_adapted(merged), merged is loaded.model
        ('LlamaForCausalLM', False, True)
    """
    if not is_adapted(model):
        raise SpecError("there is no adapter to merge: train or load an adapter first.")
    _drop_switched_off(model)
    base = model.get_base_model()
    if getattr(base, "hf_quantizer", None) is None:
        return model.merge_and_unload()
    _replace_quantized_layers(model)
    # What is left adapts float weights (a layer or a mixture of experts' 3D weights that
    # bitsandbytes did not quantize): peft merges those with its own arithmetic.
    merged = model.merge_and_unload()
    if hasattr(merged, "peft_config"):
        del merged.peft_config
    # Every quantized layer is now a float one: only drop the quantization config so the
    # model saves and reloads as a plain one.
    merged.hf_quantizer.remove_quantization_config(merged)
    return merged


def plain_model(model: Any) -> Any:
    """A plain transformers model computing what ``model`` computes, leaving ``model`` unchanged.

    "Plain" means no adapter and no quantized layers: what an export writes. A model that is
    already plain is returned as it is. Otherwise the result is a new object that shares every
    tensor of ``model`` (no second copy of the embeddings or of the layers without an
    adapter); only the adapted and the quantized layers get new weights, computed one layer at
    a time. Over a plain base each adapted layer's weights are cloned and merged with peft's
    own arithmetic (LoRA, DoRA, GPT-2's transposed Conv1D); over a 4-bit or 8-bit base each
    adapted or quantized layer is dequantized into a new float layer. The caller's model keeps
    its adapter and its weights, bit for bit.

    Args:
        model: A transformers model, or a ``PeftModel`` (LoRA or DoRA) over a plain, 4-bit or
            8-bit base.

    Examples:
        >>> from peft import LoraConfig, get_peft_model
        >>> from workbench.models.tiny import build_tiny_model
        >>> from workbench.models.loading import load_model
        >>> loaded = load_model(str(build_tiny_model("/tmp/tiny-merge-doc")), on_event=len)
        >>> adapted = get_peft_model(loaded.model, LoraConfig(r=4, target_modules="all-linear"))
        >>> before = {k: v.clone() for k, v in adapted.state_dict().items()}
        >>> merged = plain_model(adapted)
        >>> type(merged).__name__, is_adapted(adapted)
        ('LlamaForCausalLM', True)
        >>> all((adapted.state_dict()[k] == v).all() for k, v in before.items())
        True
    """
    adapted = is_adapted(model)
    base = model.get_base_model() if adapted else model
    quantized = getattr(base, "hf_quantizer", None) is not None
    if not adapted and not quantized:
        return model
    # Deep-copy the module tree only: each tensor maps to itself, so the copy shares them.
    tensors = [*model.parameters(), *model.buffers()]
    shell = copy.deepcopy(model, memo={id(t): t for t in tensors})
    if adapted:
        _own_adapted_weights(shell)
        return merge_adapter(shell)
    _replace_quantized_layers(shell)
    shell.hf_quantizer.remove_quantization_config(shell)
    return shell


def _own_adapted_weights(model: Any) -> None:
    """Give each adapted float layer of ``model`` its own copy of its base weights to merge into.

    peft merges in place (``weight.data += delta``); the copies keep that away from the
    tensors ``model`` shares with the caller's model. A bitsandbytes base is left as it is:
    it is dequantized into a new layer instead.
    """
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        base = module.get_base_layer()
        if _is_bnb_layer(base):
            continue
        for name, param in list(base._parameters.items()):
            if param is not None:
                base._parameters[name] = torch.nn.Parameter(
                    param.detach().clone(), requires_grad=False
                )


def _drop_switched_off(model: Any) -> None:
    """Put back the base layer of each adapted layer whose adapters are switched off (a
    DoRA adapter at strength 0): peft's merge would fold them in anyway, while the model
    computes without them."""
    from workbench.models.adapters import remove_adapter_layers

    remove_adapter_layers(model, where=lambda layer: layer.disable_adapters)


def _is_bnb_layer(module: Any) -> bool:
    return type(module).__module__.startswith("bitsandbytes")


def _replace_quantized_layers(model: Any) -> None:
    """Replace each bitsandbytes layer, adapted or bare, by a float Linear (base + delta).

    Adapters over float weights stay, for peft to merge.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    tuners = {n: m for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)}
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if (name in tuners and _is_bnb_layer(module.get_base_layer()))
        or (_is_bnb_layer(module) and not any(name.startswith(f"{t}.") for t in tuners))
    ]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, _merged_linear(module))


def _merged_linear(module: Any):
    """A float Linear (or Conv1D): ``module``'s dequantized base plus its active LoRA deltas."""
    import torch
    from transformers.pytorch_utils import Conv1D

    wrapper = module if hasattr(module, "get_base_layer") else None
    base = wrapper.get_base_layer() if wrapper is not None else module
    weight = _dequantized(base).float()
    unmerged = weight
    for adapter in wrapper.active_adapters if wrapper is not None else ():
        if adapter in wrapper.lora_A:
            delta = wrapper.get_delta_weight(adapter).float()
            weight = _dora_factor(wrapper, adapter, unmerged, delta) * (weight + delta)
    dtype = getattr(base, "compute_dtype", None) or torch.float32
    out_features, in_features = weight.shape
    if issubclass(getattr(base, "source_cls", torch.nn.Linear), Conv1D):
        # GPT-2's Conv1D layers were transposed into Linear ones to be quantized; a merged
        # checkpoint must hold them as Conv1D again, or it reloads with the wrong shapes.
        layer = Conv1D(out_features, in_features)
        layer.weight = torch.nn.Parameter(weight.T.contiguous().to(dtype), requires_grad=False)
    else:
        layer = torch.nn.Linear(in_features, out_features, device="meta")
        layer.weight = torch.nn.Parameter(weight.to(dtype), requires_grad=False)
    if base.bias is None:
        layer.bias = None
    else:
        layer.bias = torch.nn.Parameter(base.bias.detach().to(dtype), requires_grad=False)
    return layer


def _dora_factor(wrapper: Any, adapter: str, base: Any, delta: Any) -> Any:
    """What a DoRA adapter multiplies each output row by once merged: its learned magnitude
    over the row's norm in the unmerged weight plus the update (peft's own rule); ``1`` for
    plain LoRA. Another peft variant is refused rather than merged wrong."""
    variant = getattr(wrapper, "lora_variant", {}).get(adapter)
    if variant is None:
        return 1.0
    if type(variant).__name__ != "DoraLinearVariant":
        msg = f"cannot merge a {type(variant).__name__} adapter over a quantized base."
        raise SpecError(msg)
    magnitude = wrapper.lora_magnitude_vector[adapter].weight.detach().float()
    return (magnitude / (base + delta).norm(dim=1)).view(-1, 1)


def _dequantized(layer: Any):
    """The float weight of a bitsandbytes layer, read without changing the layer."""
    from peft.utils.integrations import dequantize_bnb_weight

    weight = layer.weight
    state = getattr(weight, "quant_state", None)
    if state is None:  # 8-bit
        return dequantize_bnb_weight(weight, state=layer.state)
    import bitsandbytes.functional as bnbf

    data = weight.data
    if getattr(state, "packing_format_for_cpu", False):
        # bitsandbytes repacks 4-bit weights for its CPU kernel at the first no-grad forward;
        # dequantize_4bit reads only the standard layout. Unpack a copy: unpacking the
        # layer's own state (what its state_dict() does) changes what it computes next.
        data, state = bnbf._convert_weight_packed_for_cpu_inverse(data, copy.copy(state))
    return bnbf.dequantize_4bit(data, state)
