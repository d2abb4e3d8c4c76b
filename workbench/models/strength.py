"""Adapter strength: scale a LoRA adapter live, from 0 (the base model) to 1 (tuned) and beyond.

Every peft LoRA layer adds ``scaling[adapter] * B(A(x))`` to its base layer's output
(``scaling = alpha / r``). The strength multiplies that scaling on every LoRA layer of the
model, on the same weights: nothing is copied or merged. The scalings at strength 1 are kept
on each layer the first time it is scaled, so strength 1 gives them back exactly (no rounding),
and strength 0 adds exactly nothing, which is the base model's output bit for bit. 4-bit and
8-bit (bitsandbytes) LoRA layers keep the same ``scaling`` and scale the same way.

DoRA layers also rescale their base output by a learned magnitude that scaling does not
reach, so at strength 0 they are switched off (peft's ``enable_adapters(False)``; their
``requires_grad`` flags are given back on the way out of 0), which again is the base model
exactly. In between, a DoRA adapter's direction update is scaled and its magnitude kept.

Examples:
    >>> from peft import LoraConfig, get_peft_model
    >>> from workbench.models.loading import load_model
    >>> from workbench.models.tiny import build_tiny_model
    >>> loaded = load_model(str(build_tiny_model("/tmp/wb-doc-strength")), on_event=len)
    >>> config = LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False)
    >>> model = get_peft_model(loaded.model, config).eval()
    >>> adapter_strength(model), set_adapter_strength(model, 0.5), adapter_strength(model)
    (1.0, 0.5, 0.5)
    >>> set_adapter_strength(model, 1.0)
    1.0
"""

from __future__ import annotations

import math
from typing import Any

from workbench.errors import SpecError

__all__ = [
    "adapter_strength",
    "has_adapter",
    "lora_layers",
    "reset_adapter_strength",
    "set_adapter_strength",
]

# Attributes the workbench keeps on each LoRA layer it has scaled.
_ORIGINAL = "_workbench_scaling"  # {adapter: scaling at strength 1}
_STRENGTH = "_workbench_strength"  # the strength now
_GRADS = "_workbench_grads"  # requires_grad flags of a layer switched off at strength 0


def lora_layers(model: Any) -> list[Any]:
    """Every peft LoRA layer in ``model`` (plain, 4-bit or 8-bit), in module order.

    Examples:
        >>> import torch
        >>> lora_layers(torch.nn.Linear(2, 2))
        []
    """
    from peft.tuners.lora import LoraLayer

    return [module for module in model.modules() if isinstance(module, LoraLayer)]


def has_adapter(model: Any) -> bool:
    """Whether ``model`` carries LoRA layers whose strength can be set.

    Examples:
        >>> import torch
        >>> has_adapter(torch.nn.Linear(2, 2))
        False
    """
    return bool(lora_layers(model))


def adapter_strength(model: Any) -> float | None:
    """The strength the model's adapter acts with now (1.0 until set), or ``None`` without one.

    Examples:
        >>> import torch
        >>> adapter_strength(torch.nn.Linear(2, 2)) is None
        True
    """
    layers = lora_layers(model)
    if not layers:
        return None
    return float(getattr(layers[0], _STRENGTH, 1.0))


def set_adapter_strength(model: Any, strength: float) -> float:
    """Scale every LoRA layer of ``model`` to ``strength`` times its tuned scaling; returns it.

    ``0`` is the base model exactly, ``1`` the tuned model exactly, values in between blend
    and values above 1 exaggerate the update (``1.5``: half as much again).

    Raises:
        SpecError: ``strength`` is negative, not finite or not a number; ``model`` has no
            LoRA layers; or its adapter is merged into the weights (scaling it then would
            change nothing until an unmerge subtracted the wrong amount).

    Examples:
        >>> import torch
        >>> from peft import LoraConfig, get_peft_model
        >>> from workbench.models.loading import load_model
        >>> from workbench.models.tiny import build_tiny_model
        >>> loaded = load_model(str(build_tiny_model("/tmp/wb-doc-strength")), on_event=len)
        >>> config = LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False)
        >>> model = get_peft_model(loaded.model, config).eval()
        >>> ids = torch.tensor([[1, 45, 78]])
        >>> tuned = model(ids).logits
        >>> with model.disable_adapter():
        ...     base = model(ids).logits
        >>> _ = set_adapter_strength(model, 0)
        >>> torch.equal(model(ids).logits, base)
        True
        >>> _ = set_adapter_strength(model, 1.5), set_adapter_strength(model, 1)
        >>> torch.equal(model(ids).logits, tuned)
        True
        >>> set_adapter_strength(model, -0.5)
        Traceback (most recent call last):
        workbench.errors.SpecError: strength=-0.5 must be a number >= 0 (0 is the base model, \
1 the tuned one).
    """
    value = _checked(strength)
    layers = lora_layers(model)
    if not layers:
        raise SpecError("the model has no LoRA adapter layers to scale.")
    if any(layer.merged for layer in layers):
        raise SpecError(
            "the adapter is merged into the weights, so its strength cannot change: "
            "unmerge it (model.unmerge_adapter()) or load the adapter unmerged."
        )
    switch_off = value == 0.0 and any(_variants(layer) for layer in layers)
    for layer in layers:
        original = layer.__dict__.setdefault(_ORIGINAL, {})
        for adapter, scaling in layer.scaling.items():
            original.setdefault(adapter, scaling)  # the first time: the tuned scaling
        for adapter, scaling in original.items():
            if adapter in layer.scaling:
                layer.scaling[adapter] = scaling if value == 1.0 else scaling * value
        _switch(layer, off=switch_off)
        setattr(layer, _STRENGTH, value)
    return value


def reset_adapter_strength(model: Any) -> None:
    """Put every LoRA layer of ``model`` back to strength 1; nothing to do without any.

    Training calls this first: a run must never start from a scaled adapter.

    Examples:
        >>> import torch
        >>> reset_adapter_strength(torch.nn.Linear(2, 2))
    """
    if has_adapter(model) and adapter_strength(model) != 1.0:
        set_adapter_strength(model, 1.0)


def _checked(strength: Any) -> float:
    import numbers

    if hasattr(strength, "item") and getattr(strength, "ndim", None) == 0:
        strength = strength.item()  # a numpy or torch scalar, as a dial or a sweep gives
    number = isinstance(strength, numbers.Real) and not isinstance(strength, bool)
    if not number or not math.isfinite(strength) or strength < 0:
        raise SpecError(
            f"strength={strength!r} must be a number >= 0 (0 is the base model, 1 the tuned one)."
        )
    return float(strength)


def _variants(layer: Any) -> bool:
    """Whether the layer has an adapter that is not plain LoRA (DoRA)."""
    return bool(getattr(layer, "lora_variant", None))


def _switch(layer: Any, off: bool) -> None:
    """Switch the layer's adapters off (keeping its requires_grad flags) or back on."""
    if off and _GRADS not in layer.__dict__:
        setattr(layer, _GRADS, [(p, p.requires_grad) for p in layer.parameters()])
        layer.enable_adapters(False)
    elif not off and _GRADS in layer.__dict__:
        layer.enable_adapters(True)
        for parameter, flag in layer.__dict__.pop(_GRADS):
            parameter.requires_grad_(flag)
