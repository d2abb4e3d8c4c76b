"""What a loaded model is: size, precision, placement and the layers LoRA can target.

Examples:
    >>> from workbench.models.tiny import build_tiny_model
    >>> from workbench.models.loading import load_model
    >>> info = model_info(load_model(str(build_tiny_model("/tmp/wb-doc-info")), on_event=len))
    >>> info.lora_targets
    ('down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj')
"""

from __future__ import annotations

from dataclasses import dataclass

from workbench._display import format_bytes, html_table, text_table
from workbench._model_context import model_context
from workbench.models.builtin import BUILTIN_MODELS

__all__ = ["ModelInfo", "lora_target_names", "model_info"]


@dataclass(frozen=True)
class ModelInfo:
    """Facts about a loaded model, shown as a table in a notebook and as text in a script.

    Attributes:
        name: The spec it was loaded from.
        source: ``builtin``, ``gguf``, ``folder`` or ``hub``.
        architecture: The transformers class, e.g. ``Gemma3ForCausalLM``.
        model_type: The config's ``model_type``.
        parameters: Number of parameters (a 4-bit weight counts as its unpacked size).
        trainable_parameters: Parameters with ``requires_grad``.
        memory_bytes: Bytes the parameters and buffers take (``get_memory_footprint``).
        dtype: Compute dtype.
        device: Where the weights live.
        quantization: ``None``, ``"4bit"`` or ``"8bit"``.
        layers: Number of transformer blocks.
        hidden_size: Width of the residual stream.
        vocab_size: Tokenizer vocabulary size of the output layer.
        context_length: The context the config gives (``max_position_embeddings``,
            ``n_positions``, MPT's ``max_seq_len``...), when it gives one.
        lora_targets: Short names of the linear layers LoRA can adapt.
        terms: Licence note for built-in weights, else empty.
        experts: For a mixture of experts, how many, how tokens are routed and whether
            LoRA adapts them; ``None`` for a dense model.
        blocks: For a hybrid model, how many blocks have each token mixer (``"11
            short-convolution, 5 attention"``); ``None`` when every block attends.
        attention: For latent attention (DeepSeek's MLA), the widths of its latents;
            ``None`` for the usual query, key and value projections.

    Examples:
        >>> from workbench.models.loading import load_model
        >>> from workbench.models.tiny import build_tiny_model
        >>> loaded = load_model(str(build_tiny_model("/tmp/wb-doc-info-cls")), on_event=len)
        >>> info = model_info(loaded)
        >>> info.architecture, info.layers, info.hidden_size, info.quantization
        ('LlamaForCausalLM', 2, 64, None)
        >>> info.parameters == info.trainable_parameters > 0
        True
    """

    name: str
    source: str
    architecture: str
    model_type: str
    parameters: int
    trainable_parameters: int
    memory_bytes: int
    dtype: str
    device: str
    quantization: str | None
    layers: int | None
    hidden_size: int | None
    vocab_size: int | None
    context_length: int | None
    lora_targets: tuple[str, ...]
    terms: str = ""
    experts: str | None = None
    blocks: str | None = None
    attention: str | None = None

    def rows(self) -> list[tuple[str, str]]:
        """The facts as ``(label, value)`` pairs, in display order.

        Examples:
            >>> from workbench.models.loading import load_model
            >>> from workbench.models.tiny import build_tiny_model
            >>> folder = build_tiny_model("/tmp/wb-doc-info-rows")
            >>> info = model_info(load_model(str(folder), on_event=len))
            >>> info.rows()[0]
            ('model', '/tmp/wb-doc-info-rows')
            >>> info.rows()[1:3]
            [('source', 'folder'), ('architecture', 'LlamaForCausalLM')]
        """
        rows = [
            ("model", self.name),
            ("source", self.source),
            ("architecture", self.architecture),
            ("parameters", f"{self.parameters:,} ({self.trainable_parameters:,} trainable)"),
            ("memory", format_bytes(self.memory_bytes)),
            ("dtype", self.dtype),
            ("device", self.device),
            ("quantization", self.quantization or "none"),
            ("layers", self.layers),
            ("hidden size", self.hidden_size),
            ("vocabulary", self.vocab_size),
            ("context length", self.context_length),
            ("LoRA targets", ", ".join(self.lora_targets)),
        ]
        if self.experts:
            rows.insert(9, ("experts", self.experts))
        if self.blocks:
            rows.insert(9, ("blocks", self.blocks))
        if self.attention:
            rows.insert(9, ("attention", self.attention))
        if self.terms:
            rows.append(("terms", self.terms))
        return [(label, "-" if value is None else str(value)) for label, value in rows]

    def __str__(self) -> str:
        return text_table(self.rows())

    def _repr_html_(self) -> str:
        return html_table(self.rows(), title="Model")


def lora_target_names(model) -> tuple[str, ...]:
    """Short names of the linear layers LoRA can adapt, found from the model itself.

    Counts ``torch.nn.Linear`` (bitsandbytes' 4-bit and 8-bit layers subclass it) and
    transformers' ``Conv1D`` (GPT-2), and leaves out the output layer, as peft's
    ``target_modules="all-linear"`` does, the mixture-of-experts routers that the
    workbench's ``"all-linear"`` leaves out (:func:`workbench.train.core.linear_routers`) and
    the Mamba projections a fused kernel reads directly
    (:func:`workbench.train.core.kernel_read_projections`), which no adapter may target.

    Examples:
        >>> from transformers import AutoModelForCausalLM
        >>> from workbench.models.tiny import build_tiny_model
        >>> folder = build_tiny_model("/tmp/wb-doc-info-gpt2", "gpt2")
        >>> gpt2 = AutoModelForCausalLM.from_pretrained(folder)
        >>> lora_target_names(gpt2)
        ('c_attn', 'c_fc', 'c_proj')
    """
    import torch
    from transformers.pytorch_utils import Conv1D

    from workbench.train.core import kernel_read_projections, linear_routers

    output = model.get_output_embeddings()
    output = getattr(output, "base_layer", output)  # peft may wrap the output layer too
    left_out = {*linear_routers(model), *kernel_read_projections(model)}
    names = set()
    for name, module in model.named_modules():
        linear = isinstance(module, (torch.nn.Linear, Conv1D))
        if not linear or module is output or name in left_out:
            continue
        parts = name.split(".")
        if any(part.startswith("lora_") for part in parts):
            continue  # an adapter's own matrices, not a layer of the model
        if parts[-1] == "base_layer" and len(parts) > 1:
            parts = parts[:-1]
        names.add(_short_name(parts))
    return tuple(sorted(names))


def _short_name(parts: list[str]) -> str:
    """A layer's name as peft's ``target_modules`` matches it: its last part, or from the
    last named part on when it sits in a list (Zamba2's ``..._adapter_list.0.1``), since a
    bare ``"0"`` would match the first item of every list in the model."""
    named = max((i for i, part in enumerate(parts) if not part.isdigit()), default=0)
    return ".".join(parts[named:])


def _count_parameters(model) -> tuple[int, int]:
    total = trainable = 0
    for param in model.parameters():
        # bitsandbytes packs two 4-bit weights per byte; quant_state keeps the real shape.
        shape = getattr(getattr(param, "quant_state", None), "shape", None)
        count = int(shape.numel()) if shape is not None else param.numel()
        total += count
        trainable += count if param.requires_grad else 0
    return total, trainable


def model_info(loaded) -> ModelInfo:
    """Describe a :class:`~workbench.models.loading.LoadedModel`.

    Examples:
        >>> from workbench.models.loading import load_model
        >>> from workbench.models.tiny import build_tiny_model
        >>> loaded = load_model(str(build_tiny_model("/tmp/wb-doc-info-fn")), on_event=len)
        >>> info = model_info(loaded)
        >>> info.dtype, info.device, info.source, info.vocab_size
        ('float32', 'cpu', 'folder', 512)
    """
    model, config = loaded.model, loaded.model.config
    total, trainable = _count_parameters(model)
    builtin = BUILTIN_MODELS.get(loaded.source.spec)
    return ModelInfo(
        name=loaded.source.spec,
        source=loaded.source.kind,
        architecture=type(model).__name__,
        model_type=config.model_type,
        parameters=total,
        trainable_parameters=trainable,
        memory_bytes=int(model.get_memory_footprint()),
        dtype=loaded.dtype,
        device=str(next(model.parameters()).device),
        quantization=loaded.quantization,
        layers=_config_value(config, "num_hidden_layers", "n_layer"),
        hidden_size=_config_value(config, "hidden_size", "n_embd"),
        vocab_size=_config_value(config, "vocab_size"),
        context_length=model_context(config),
        lora_targets=lora_target_names(model),
        terms=builtin.terms if builtin else "",
        **_shape_lines(model),
    )


def _shape_lines(model) -> dict[str, str | None]:
    """The experts, hybrid block and latent attention lines of a model's facts table."""
    from workbench.errors import SpecError
    from workbench.models.catalog import facts_from_config, matched_to_model

    config = model.config
    try:
        facts = matched_to_model(facts_from_config(config), config)
    except SpecError:  # sizes missing, or a layout the memory facts do not model
        return _lines_without_facts(model)
    return {
        "experts": facts.experts.describe(facts.layers) if facts.experts else None,
        "blocks": facts.mixer.describe(facts.layers) if facts.mixer else None,
        "attention": facts.latent_attention.describe() if facts.latent_attention else None,
    }


def _lines_without_facts(model) -> dict[str, str | None]:
    """The experts and block kinds of a model whose layout the memory facts do not model
    (Jamba): still worth saying, above all that LoRA leaves its experts frozen. Experts only
    where the model built them (Doge's config lists 16,384 it builds only with is_moe)."""
    from workbench.errors import SpecError
    from workbench.models.catalog import block_kinds, experts_from_config

    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    built = any(name.rpartition(".")[2] == "experts" for name, _ in model.named_modules())
    try:
        experts = experts_from_config(text) if built else None
    except SpecError:  # no layer count or width to read them against
        experts = None
    layers = _config_value(text, "num_hidden_layers", "n_layer", "num_layers")
    return {
        "experts": experts.describe(layers) if experts and layers else None,
        "blocks": block_kinds(text),
    }


def _config_value(config, *names: str) -> int | None:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in names:
        value = getattr(text, name, None)
        if value is not None:
            return int(value)
    return None
