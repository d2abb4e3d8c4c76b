"""Put a saved peft adapter on a base model: all of it, or nothing.

peft injects an adapter's LoRA layers into the base model before it reads their weights, so
an adapter that fails to load (a damaged weights file, another model's layers) would leave
the base model carrying empty LoRA layers: generation would still look like the base, but
the next training run would refuse "an adapter already attached". :func:`attach_adapter`
takes those layers out again when the load fails, and says what was wrong with the folder.

Examples:
    >>> from workbench.models.loading import load_model
    >>> from workbench.models.tiny import build_tiny_model
    >>> loaded = load_model(str(build_tiny_model("/tmp/wb-doc-adapters")), on_event=len)
    >>> attach_adapter(loaded.model, "/tmp/wb-doc-adapters")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    workbench.errors.ModelLoadError: /tmp/wb-doc-adapters is not a peft adapter folder: ...
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from workbench.errors import ModelLoadError

__all__ = ["attach_adapter", "remove_adapter_layers"]

CONFIG = "adapter_config.json"


def attach_adapter(model: Any, path: str | Path) -> Any:
    """``model`` wrapped with the peft adapter saved in ``path``, in eval mode.

    Raises:
        ModelLoadError: ``path`` is not an adapter folder, or its adapter does not fit
            ``model`` (other layers or shapes, a damaged weights file); ``model`` is left
            as it was, without LoRA layers.

    Examples:
        >>> from peft import LoraConfig, get_peft_model
        >>> from workbench.models.loading import load_model
        >>> from workbench.models.tiny import build_tiny_model
        >>> folder = str(build_tiny_model("/tmp/wb-doc-adapters"))
        >>> config = LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM")
        >>> get_peft_model(load_model(folder, on_event=len).model, config).save_pretrained(
        ...     "/tmp/wb-doc-adapters-lora")
        >>> type(attach_adapter(load_model(folder, on_event=len).model,
        ...                     "/tmp/wb-doc-adapters-lora")).__name__
        'PeftModelForCausalLM'
    """
    from peft import PeftModel

    folder = Path(path)
    if not (folder / CONFIG).is_file():
        found = "it does not exist" if not folder.exists() else f"it has no {CONFIG}"
        msg = (
            f"{folder} is not a peft adapter folder: {found}. Export one with "
            "Session.export(path, format='adapter')."
        )
        raise ModelLoadError(msg)
    try:
        return PeftModel.from_pretrained(model, str(folder)).eval()
    except Exception as err:  # peft and safetensors raise many kinds; all mean "does not fit"
        removed = remove_adapter_layers(model)
        msg = f"cannot put the adapter in {folder} on this model: {type(err).__name__}: {err}"
        if removed:
            msg += f" (the {removed} LoRA layers it had added are taken out again)"
        raise ModelLoadError(msg) from err


def remove_adapter_layers(model: Any, where: Callable[[Any], bool] | None = None) -> int:
    """Replace every peft tuner layer in ``model`` (with ``where``, those it accepts) by the
    base layer it wraps; returns how many were replaced. With no ``where`` the model is then
    the plain base model again.

    Examples:
        >>> import torch
        >>> remove_adapter_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))
        0
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    found = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, BaseTunerLayer) and (where is None or where(m))
    ]
    for name, layer in found:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    for attribute in ("peft_config", "_hf_peft_config_loaded") if where is None else ():
        if attribute in getattr(model, "__dict__", {}):
            delattr(model, attribute)
    return len(found)
