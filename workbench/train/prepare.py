"""Check a model against a :class:`TrainSpec`, then wrap it for training (peft or full).

The steps the scale-out script shares (adapter, checkpointing, AdamW groups, NEFTune) are in
:mod:`workbench.train.core`; this module checks the spec and adds quantized bases.

Examples:
    >>> from transformers import AutoModelForCausalLM
    >>> from workbench.models.tiny import build_tiny_model
    >>> from workbench.train.spec import LoRA
    >>> folder = build_tiny_model("/tmp/wb-doc-prepare-tiny")
    >>> model = AutoModelForCausalLM.from_pretrained(folder)
    >>> spec = TrainSpec(lora=LoRA(r=8, target=("q_proj", "v_proj")))
    >>> check_model(model, spec)  # raises SpecError or DependencyError; changes nothing
    >>> model = wrap_model(model, spec)
    >>> type(model).__name__
    'PeftModelForCausalLM'
"""

from __future__ import annotations

import dataclasses
from typing import Any

from workbench.errors import DependencyError, SpecError
from workbench.models.loading import keep_4bit_layout_trainable
from workbench.train import core
from workbench.train.core import add_neftune
from workbench.train.spec import TrainSpec, respec

__all__ = [
    "add_neftune",
    "check_model",
    "choose_checkpointing",
    "fit_spec_to_model",
    "freeze_quantized_base",
    "is_4bit",
    "is_quantized",
    "optimizer_groups",
    "rank_note",
    "wrap_model",
]


def is_4bit(model: Any) -> bool:
    """Whether the model was loaded with bitsandbytes 4-bit weights.

    Examples:
        >>> from workbench.models.loading import load_model
        >>> from workbench.models.tiny import build_tiny_model
        >>> folder = str(build_tiny_model("/tmp/wb-doc-prepare-tiny"))
        >>> is_4bit(load_model(folder, quantization="4bit", on_event=lambda m: None).model)
        True
    """
    return bool(getattr(model, "is_loaded_in_4bit", False))


def is_quantized(model: Any) -> bool:
    """Whether the model has 4-bit or 8-bit bitsandbytes weights.

    Examples:
        >>> from transformers import AutoModelForCausalLM
        >>> from workbench.models.tiny import build_tiny_model
        >>> folder = build_tiny_model("/tmp/wb-doc-prepare-tiny")
        >>> is_quantized(AutoModelForCausalLM.from_pretrained(folder))
        False
    """
    return is_4bit(model) or bool(getattr(model, "is_loaded_in_8bit", False))


def _check_target(model: Any, spec: TrainSpec) -> None:
    from workbench.models.info import lora_target_names
    from workbench.train.core import kernel_read_projections

    if spec.method == "full" or spec.lora.target == "all-linear":
        return
    available = lora_target_names(model)
    # peft also takes a module's full name (or a tail of it): "model.layers.0.self_attn.q_proj"
    full = [n for n, _ in model.named_modules() if n.rsplit(".", 1)[-1] in available]
    missing = [
        t
        for t in spec.lora.target
        if t not in available and not any(n == t or n.endswith(f".{t}") for n in full)
    ]
    kernel_read = sorted({name.rsplit(".", 1)[-1] for name in kernel_read_projections(model)})
    refused = [t for t in missing if t in kernel_read]
    if refused:
        msg = (
            f"LoRA target {refused} cannot take an adapter in this model: its Mamba blocks "
            "hand that layer's weight straight to the fused mamba_ssm kernel, which would "
            f"skip the adapter on a GPU. Its other linear layers are {list(available)}."
        )
        raise SpecError(msg)
    if missing:
        msg = (
            f"LoRA target {missing} not found in this model. Its linear layers are "
            f"{list(available)}; use some of these or target='all-linear'."
        )
        raise SpecError(msg)


def rank_note(model: Any, spec: TrainSpec) -> str | None:
    """What to say when the LoRA rank is above what any adapted layer can hold.

    A layer's update ``B @ A`` has rank at most ``min(in, out)``: a larger ``r`` only adds
    parameters (and checkpoint bytes) that learn nothing more.

    Examples:
        >>> from transformers import AutoModelForCausalLM
        >>> from workbench.models.tiny import build_tiny_model
        >>> from workbench.train.spec import LoRA
        >>> folder = build_tiny_model("/tmp/wb-doc-prepare-tiny")
        >>> model = AutoModelForCausalLM.from_pretrained(folder)
        >>> print(rank_note(model, TrainSpec(lora=LoRA(r=1000))))  # doctest: +ELLIPSIS
        LoRA r=1000 is above the rank any adapted layer can take (the smaller of its input and \
output sizes: at most 64 here); the extra rank only adds parameters: r=64 learns the same
        >>> rank_note(model, TrainSpec(lora=LoRA(r=16))) is None
        True
    """
    if spec.method == "full":
        return None
    target = spec.lora.target
    sizes = [
        min(module.in_features, module.out_features)
        for name, module in model.named_modules()
        if isinstance(getattr(module, "in_features", None), int)
        and isinstance(getattr(module, "out_features", None), int)
        and name.rsplit(".", 1)[-1] != "lm_head"
        and (target == "all-linear" or any(name == t or name.endswith(f".{t}") for t in target))
    ]
    if not sizes or spec.lora.r <= max(sizes):
        return None
    return (
        f"LoRA r={spec.lora.r} is above the rank any adapted layer can take (the smaller of "
        f"its input and output sizes: at most {max(sizes)} here); the extra rank only adds "
        f"parameters: r={max(sizes)} learns the same"
    )


def base_fingerprint(model: Any) -> str:
    """A short hash of a base model's weights, to know it again when its run resumes.

    A sample of every floating-point parameter (its name, shape and first 64 values) is
    hashed: a few milliseconds for any size. Quantized (integer) weights are left out, as
    bitsandbytes may pack them differently on another device; the embeddings, norms and
    any layer left in float tell two models of one architecture apart.

    Examples:
        >>> import torch
        >>> a, b = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)
        >>> base_fingerprint(a) == base_fingerprint(a), base_fingerprint(a) == base_fingerprint(b)
        (True, False)
    """
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters(), key=lambda named: named[0]):
        if not param.is_floating_point() or param.device.type == "meta" or "lora_" in name:
            continue
        sample = param.detach().reshape(-1)[:64].to("cpu", dtype=torch.float32)
        digest.update(f"{name}{tuple(param.shape)}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def check_model(model: Any, spec: TrainSpec) -> None:
    """Raise a clear error if ``spec`` cannot train ``model``; changes nothing.

    Raises:
        SpecError: adapter already attached, qlora without a 4-bit base, full fine-tuning of
            a quantized base, or a LoRA target the model doesn't have.
        DependencyError: qlora without bitsandbytes installed.

    Examples:
        >>> from transformers import AutoModelForCausalLM
        >>> from workbench.models.tiny import build_tiny_model
        >>> from workbench.train.spec import LoRA
        >>> folder = build_tiny_model("/tmp/wb-doc-prepare-tiny")
        >>> model = AutoModelForCausalLM.from_pretrained(folder)
        >>> check_model(model, TrainSpec(method="qlora"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        workbench.errors.SpecError: method='qlora' trains LoRA on a 4-bit base, but this model ...
        >>> check_model(model, TrainSpec(lora=LoRA(target=("c_attn",))))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        workbench.errors.SpecError: LoRA target ['c_attn'] not found in this model. Its linear ...
    """
    if hasattr(model, "peft_config"):
        msg = (
            "the model already carries a peft adapter (from an earlier run): load the base "
            "model again, or merge the adapter first, before training a new one."
        )
        raise SpecError(msg)
    if spec.method == "qlora":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as err:
            msg = "method='qlora' needs bitsandbytes: pip install bitsandbytes."
            raise DependencyError(msg) from err
        if not is_4bit(model):
            msg = (
                "method='qlora' trains LoRA on a 4-bit base, but this model is not 4-bit: "
                "load it with load_model(..., quantization='4bit') (NF4, double "
                "quantization, as in the QLoRA recipe), or use method='lora'."
            )
            raise SpecError(msg)
    if spec.method == "full" and is_quantized(model):
        msg = (
            "method='full' cannot train quantized weights: load the model without "
            "quantization, or use method='qlora' (4-bit) / 'lora'."
        )
        raise SpecError(msg)
    _check_target(model, spec)


def fit_spec_to_model(model: Any, spec: TrainSpec) -> tuple[TrainSpec, str | None]:
    """``spec`` as ``model`` can train it, and what was changed and why (``None``: nothing).

    A mixture of experts whose experts peft adapts as fused 3D weights (Mixtral, OLMoE,
    Qwen3-MoE on transformers 5) takes no LoRA dropout there, and peft refuses the whole
    adapter otherwise: the run trains with ``dropout=0`` and says so.

    Examples:
        >>> from transformers import AutoModelForCausalLM
        >>> from workbench.models.tiny import build_tiny_model
        >>> folder = build_tiny_model("/tmp/wb-doc-prepare-moe", architecture="qwen3_moe")
        >>> model = AutoModelForCausalLM.from_pretrained(folder)
        >>> fitted, why = fit_spec_to_model(model, TrainSpec())
        >>> fitted.lora.dropout, why  # doctest: +ELLIPSIS
        (0.0, "LoRA dropout 0.05 -> 0: peft adapts qwen3_moe's fused expert weights and its ...")
        >>> fit_spec_to_model(model, fitted) == (fitted, None)
        True
    """
    if spec.method == "full" or not (spec.lora.dropout or spec.lora.use_dora):
        return spec, None
    fused = core.dropout_free_targets(model, spec.lora.to_peft())
    if not fused:
        return spec, None
    kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    if spec.lora.use_dora:
        msg = (
            f"use_dora=True: peft cannot put DoRA on {kind}'s weights that it adapts as "
            f"parameters (fused experts, router: {', '.join(fused)}). Train with "
            "use_dora=False, or name a target=[...] without them (e.g. the attention "
            "projections)."
        )
        raise SpecError(msg)
    if not spec.lora.dropout:
        return spec, None
    why = (
        f"LoRA dropout {spec.lora.dropout:g} -> 0: peft adapts {kind}'s fused expert weights "
        f"and its router ({', '.join(fused)}) only without dropout"
    )
    return respec(spec, lora=dataclasses.replace(spec.lora, dropout=0.0)), why


def choose_checkpointing(
    model: Any, spec: TrainSpec, device: str | None = None
) -> tuple[TrainSpec, str | None]:
    """``spec`` with ``gradient_checkpointing="auto"`` decided for ``model``, and why it was
    turned on (``None``: it was given, or left off).

    ``"auto"`` checkpoints a quantized base on CUDA, as peft's QLoRA recipe
    (``prepare_model_for_kbit_training``) does: a run on a 4- or 8-bit base is about memory,
    and without checkpointing its activations, not its weights, set the peak. A 16-bit base
    trains without it, for speed, and so does any base on CPU
    (:data:`~workbench.train.core.CHECKPOINTS_QUANTIZED_ON` says why). ``device`` is the
    device type the run trains on (``None``: where ``model``'s weights are); a launched
    run's processes may train on GPUs while the notebook's copy stays on CPU.

    Examples:
        >>> from workbench.models.loading import load_model
        >>> from workbench.models.tiny import build_tiny_model
        >>> folder = str(build_tiny_model("/tmp/wb-doc-prepare-tiny"))
        >>> four_bit = load_model(folder, quantization="4bit", on_event=lambda m: None).model
        >>> choose_checkpointing(four_bit, TrainSpec(method="qlora"))  # on CPU: off
        (TrainSpec(...gradient_checkpointing=False...), None)
        >>> choose_checkpointing(four_bit, TrainSpec(), device="cuda")[0].gradient_checkpointing
        True
        >>> choose_checkpointing(four_bit, TrainSpec(gradient_checkpointing=True))[0] == (
        ...     TrainSpec(gradient_checkpointing=True))
        True
    """
    if spec.gradient_checkpointing != "auto":
        return spec, None
    device = device or _weights_device(model)
    on = core.checkpoints_by_default(is_quantized(model), device)
    why = None
    if on:
        bits = "4-bit" if is_4bit(model) else "8-bit"
        why = (
            f"gradient_checkpointing='auto': on for a {bits} base, as in peft's QLoRA recipe "
            "(each block keeps only its input and recomputes the rest in backward: far less "
            "memory for about a third more compute; gradient_checkpointing=False for speed)"
        )
    return respec(spec, gradient_checkpointing=on), why


def _weights_device(model: Any) -> str:
    """The device type of ``model``'s first weight (``"cpu"`` for a model without any)."""
    first = next(iter(model.parameters()), None)
    return "cpu" if first is None else first.device.type


def wrap_model(model: Any, spec: TrainSpec) -> Any:
    """Prepare ``model`` for training: peft LoRA/DoRA adapter, or every weight for "full".

    Seeds torch with ``spec.seed`` first, so the adapter's initial weights are reproducible.

    Examples:
        >>> from transformers import AutoModelForCausalLM
        >>> from workbench.models.tiny import build_tiny_model
        >>> from workbench.train.spec import LoRA
        >>> folder = build_tiny_model("/tmp/wb-doc-prepare-tiny")
        >>> peft_model = wrap_model(AutoModelForCausalLM.from_pretrained(folder),
        ...                         TrainSpec(lora=LoRA(r=8)))
        >>> peft_model.peft_config["default"].r
        8
        >>> full = wrap_model(AutoModelForCausalLM.from_pretrained(folder),
        ...                   TrainSpec(method="full"))
        >>> all(p.requires_grad for p in full.parameters())
        True
    """
    import torch

    torch.manual_seed(spec.seed)
    if is_quantized(model):
        freeze_quantized_base(model)
        keep_4bit_layout_trainable(model)  # also done at load; a model may come from elsewhere
    core.remove_training_hooks(model)  # an earlier run's, on a model merged since
    spec, _ = choose_checkpointing(model, spec)
    if spec.gradient_checkpointing:
        core.enable_checkpointing(model)
    return core.make_trainable(model, None if spec.method == "full" else spec.lora.to_peft())


def freeze_quantized_base(model: Any) -> int:
    """Freeze a quantized base for an adapter; float16 weights left unquantized go float32.

    peft's ``prepare_model_for_kbit_training`` casts every weight bitsandbytes left in 16
    bits (embeddings, norms, the output layer) to float32. That guards a float16 base, whose
    range overflows; a bfloat16 base has float32's range, and there the cast doubled those
    weights, made the embeddings feed float32 activations through the whole residual stream
    and added a cast before and after every layer: measured on one H200 (0.5B Qwen2 shape,
    QLoRA, benchmarks/gpu-runs/2026-12-04-h200), the run peaked at 9.6 GiB against 7.5 GiB
    for the same model unquantized, with ~480 more casts per step. So only float16
    weights are cast; bfloat16 ones stay as loaded. Gradient checkpointing is
    :func:`~workbench.train.core.enable_checkpointing`'s job (non-reentrant: no input hook).
    Returns how many weights were cast.

    Examples:
        >>> import torch
        >>> from transformers import AutoModelForCausalLM, BitsAndBytesConfig
        >>> from workbench.models.tiny import build_tiny_model
        >>> folder = build_tiny_model("/tmp/wb-doc-prepare-tiny")
        >>> def load(dtype):
        ...     nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype)
        ...     return AutoModelForCausalLM.from_pretrained(
        ...         folder, quantization_config=nf4, dtype=dtype)
        >>> model = load(torch.bfloat16)
        >>> freeze_quantized_base(model), model.get_input_embeddings().weight.dtype
        (0, torch.bfloat16)
        >>> any(p.requires_grad for p in model.parameters())
        False
        >>> model = load(torch.float16)
        >>> freeze_quantized_base(model) > 0, model.get_input_embeddings().weight.dtype
        (True, torch.float32)
    """
    import torch

    cast = 0
    for param in model.parameters():
        param.requires_grad = False
        quantized = type(param).__name__ in ("Params4bit", "Int8Params")
        if param.dtype == torch.float16 and not quantized:
            param.data = param.data.to(torch.float32)
            cast += 1
    return cast


def optimizer_groups(model: Any, spec: TrainSpec) -> list[dict[str, Any]]:
    """AdamW parameter groups: per-layer learning rates and no decay on biases and norms.

    Examples:
        >>> import torch
        >>> from transformers import AutoModelForCausalLM
        >>> from workbench.models.tiny import build_tiny_model
        >>> folder = build_tiny_model("/tmp/wb-doc-prepare-tiny")
        >>> spec = TrainSpec(lr=1e-3, layer_lr_decay=0.5)
        >>> model = wrap_model(AutoModelForCausalLM.from_pretrained(folder), spec)
        >>> optimizer = torch.optim.AdamW(optimizer_groups(model, spec), lr=spec.lr)
        >>> [group["lr"] for group in optimizer.param_groups]  # the top layer gets spec.lr
        [0.0005, 0.001]
    """
    return core.optimizer_groups(model, spec.lr, spec.weight_decay, spec.layer_lr_decay)
