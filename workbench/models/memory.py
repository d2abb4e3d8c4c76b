"""Estimate the peak memory of LoRA, QLoRA or full fine-tuning from a model's config alone.

:func:`estimate_memory` adds up weights, adapter, gradients, optimizer state, activations
(logits included) and the runtime's own overhead for one training step, without loading a
weight. :func:`fit_table` runs it over the catalog to show what fits on this machine.

The formula is calibrated against :mod:`workbench.models._measure`, which runs one real
step (load, peft LoRA on all linear layers, forward + backward + AdamW step) in a fresh
process and reads its peak RSS. On this project's CPU machines (torch 2.13, transformers
5.24, peft 0.21, bitsandbytes 0.50) the estimate lands within a few percent of that peak for
a tiny Llama and for Gemma 3 270M in float32, 4-bit and 8-bit (see tests/test_memory*.py).
Mixture-of-experts blocks and hybrid models' recurrent blocks (LFM2's short convolutions,
Granite 4.0-H's and Bamba's Mamba-2 layers, Qwen3.5's Gated DeltaNet) are counted by kind.
GPU numbers use the same formula in bf16 with assumed, not measured, allocator overheads.

Examples:
    >>> from workbench.models.memory import estimate_memory
    >>> est = estimate_memory("gemma-3-270m", seq_len=256, batch_size=4, device="cpu")
    >>> 5 < est.total / 2**30 < 8
    True
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from workbench._display import format_bytes, html_table, text_table
from workbench._io import expand_home
from workbench._numbers import plain_number
from workbench.errors import SpecError
from workbench.models.catalog import (
    CATALOG,
    LatentAttention,
    Mixer,
    ModelFacts,
    facts_from_config,
    get_facts,
    matched_to_model,
)
from workbench.types import Method, Quantization

__all__ = ["FitTable", "MemoryEstimate", "estimate_memory", "fit_table"]

Optimizer = Literal["adamw", "adamw_8bit", "sgd"]
Device = Literal["auto", "cpu", "cuda"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]

METHODS: tuple[str, ...] = ("full", "lora", "qlora")
QUANTIZATIONS: tuple[str | None, ...] = (None, "4bit", "8bit")
OPTIMIZERS: tuple[str, ...] = ("adamw", "adamw_8bit", "sgd")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")

MiB = 2**20
GiB = 2**30
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# bitsandbytes storage per quantized weight. NF4: 4 bits, plus one absmax per block of 64
# weights; double quantization stores those absmax in 8 bits with one fp32 scale per 256
# blocks (Dettmers et al. 2023, https://arxiv.org/abs/2305.14314, section 3).
# LLM.int8: one byte per weight; its fp32 per-row scales are under 0.1% and left out.
_QUANT_BYTES = {"4bit": 0.5 + 1 / 64 + 4 / (64 * 256), "8bit": 1.0}

# Adam keeps two moments per trainable weight (Loshchilov & Hutter 2019); 8-bit Adam stores
# them in one byte each (Dettmers et al. 2022, https://arxiv.org/abs/2110.02861); plain SGD
# (no momentum) keeps nothing.
_OPTIMIZER_STATES = {"adamw": 2, "adamw_8bit": 2, "sgd": 0}

# Runtime overhead. CPU: `import torch, transformers, peft` took the process to a peak RSS
# of 390 MiB (torch 2.13 CPU, transformers 5.24, peft 0.21; python 3.11), and the first
# forward/backward adds ~40 MiB of thread pools, oneDNN kernels and autograd state that
# does not grow with the model (a 2-layer, 64-wide model's whole step peaked at 458 MiB).
# CUDA: the CUDA context, cuBLAS workspace and kernel images, typically 0.5-1 GiB on
# recent GPUs; not measured here, so the upper end is used.
_OVERHEAD = {"cpu": 430 * MiB, "cuda": 1 * GiB}

# Memory an allocator holds beyond the saved activations. CPU, measured: glibc malloc keeps
# the holes that freed forward temporaries leave in its heap, so Gemma 3 270M's peak RSS
# rose by 1.9x its saved activations at 18 layers (1.4x at 6 layers); 1.6 sits between.
# With MALLOC_MMAP_THRESHOLD_=131072 the same step peaked 690 MiB lower. CUDA: the caching
# allocator's block rounding and fragmentation, commonly 10-30%; assumed, not measured.
_ALLOCATOR_FACTOR = {"cpu": 1.6, "cuda": 1.2}

# Peak copies of the [tokens x vocab] logits, each in float32: the loss's log-softmax output
# (saved for backward), then in backward the gradient flowing into it and the gradient it
# returns for the logits. Measured for Gemma 3 270M (262k vocabulary): going from 2x256 to
# 4x256 tokens added 5.0 MB per token, of which 2.2 MB are the 18 layers' activations and
# 2.8 MB (2.7 copies of 1.05 MB) the loss path. In 16-bit training the model's own 16-bit
# logits come on top, before the loss upcasts them.
_LOGIT_COPIES = 3

# On CPU, transformers keeps the safetensors checkpoint memory-mapped while the model lives.
# bitsandbytes reads every weight it quantizes, so those pages stay resident (clean and
# reclaimable, but counted in RSS), and the float copies each layer passes through on its
# way to 4/8 bits leave ~2.5 bytes per quantized weight in glibc's heap (measured: 266 MiB
# anonymous memory after loading Gemma 3 270M in 4-bit, whose 100M quantized weights take
# 50 MiB; the float32 load of the same model added 6 MiB).
_CPU_QUANTIZE_WORK_BYTES = 2.5

# Families whose saved activations were counted with torch's saved-tensor hooks (float32,
# peft LoRA on all linear layers, one layer added at a time). Elements saved per token per
# block: cH*hidden + cQ*(heads*head_dim) + cKV*(kv_heads*head_dim) + cI*intermediate
# (+ r per adapted layer). Llama/Qwen2/Mistral: 4, 2, 2, 4 (two RMSNorms, q/k after RoPE and
# v for SDPA, attention output, and gate, act(gate), up and their product in the MLP).
# Gemma 2/3 add two sandwich norms and q/k norms: 6, 3, 3, 4; q/k norms alone (Qwen3, OLMo
# 2, EXAONE 4, LFM2's attention blocks): 4, 3, 3, 4; and a gate on the attention output made
# by a query projection twice as wide (Qwen3.5): 4, 7, 3, 4. Gemma 4 (five norms, q/k/v
# norms, each block's own embedding mixed in: 5 per its width more): 8, 5, 5, 4, fitted on
# its sliding blocks (its global ones, with wider heads, save less). GPT-2 style: 10H + 5I plus
# 3*heads*seq_len for the attention probabilities its masked attention keeps.
_GEMMA = {"gemma", "gemma2", "gemma3", "gemma3_text"}
_QK_NORM = {"qwen3", "olmo2", "exaone4", "lfm2", "lfm2_moe"}
_COEFFS = {
    "gated": (4, 2, 2, 4), "gemma": (6, 3, 3, 4), "qk_norm": (4, 3, 3, 4), "plain": (10, 0, 0, 5),
    "gated_attention": (4, 7, 3, 4), "gemma4": (8, 5, 5, 4),
}  # fmt: skip
_GEMMA4 = {"gemma4_text"}
# Model types whose gated MLPs (dense, or shared experts) the workbench's training makes keep
# two intermediate-wide tensors, not four, where LEAN_MLP_ON (workbench.train.core.
# lean_gated_mlps; tests/test_lean_mlp.py checks the tiny architectures, DeepSeek-V3, Cohere
# and Jamba; DeepSeek-V2, MiniCPM3 and GLM-4-MoE checked by hand). Others count as written.
_LEAN_MLP = {
    "llama", "qwen2", "qwen3", "mistral", "phi3", "smollm3", "olmo2", "olmo3", "granite",
    "gemma", "gemma2", "gemma3", "gemma3_text", "gemma4_text", "llama4_text", "stablelm",
    "qwen2_moe", "qwen3_moe", "ernie4_5", "glm4", "glm4_moe", "lfm2", "lfm2_moe", "exaone4",
    "granitemoehybrid", "qwen3_5_text", "bamba", "jamba", "deepseek_v2", "deepseek_v3",
    "minicpm3", "cohere",
}  # fmt: skip
_PER_LAYER_INPUT = 5  # saved per width of a block's own embedding (Gemma 4)

# RMSNorm inputs of one block, as (hidden, query, key/value) widths, whose float32 copies the
# workbench's training keeps as the 16-bit inputs themselves, 2 bytes less per element, where
# LEAN_NORM_ON (workbench.train.core.lean_norm_inputs); latent attention adds its latents'
# norms, a recurrent block only the hidden-wide ones. Counted with saved-tensor hooks on every
# tiny architecture and DeepSeek-V3 (tests/test_lean_norm.py); DeepSeek-V2, MiniCPM3 and
# GLM-4-MoE read from their code. Model types not listed count none: LayerNorms (Cohere,
# StableLM, GPT-2 style), or not checked. Some save more than counted: Llama 4 (q/k norms
# left out: its blocks without RoPE have none), GLM-4-MoE (its optional q/k norms). Gemma 4
# is counted at its blocks' mean head width (the tiny one's count is exact).
_LEAN_NORMS = {
    **dict.fromkeys((
        "llama", "qwen2", "mistral", "phi3", "smollm3", "granite", "gemma", "llama4_text",
        "mixtral", "granitemoe", "qwen2_moe", "ernie4_5", "granitemoehybrid", "bamba",
        "falcon_h1", "deepseek_v2", "deepseek_v3", "minicpm3", "glm4_moe",
    ), (2, 0, 0)),
    **dict.fromkeys((
        "qwen3", "qwen3_moe", "olmoe", "olmo2", "olmo3", "exaone4", "lfm2", "lfm2_moe",
        "qwen3_5_text",
    ), (2, 1, 1)),
    **dict.fromkeys(("gemma2", "glm4"), (4, 0, 0)),
    **dict.fromkeys(("gemma3", "gemma3_text"), (4, 1, 1)),
    "gemma4_text": (5, 1, 2),
}  # fmt: skip
_POST_NORM = {"olmo2", "olmo3", "exaone4"}  # norms after attention and MLP, none before

# A hybrid's recurrent block saves its two norms (4H), its MLP and LoRA's inputs as an
# attention block does, and for its mixer, counted the same way on transformers' torch path
# (no causal-conv1d or mamba_ssm kernels; float32, then bfloat16 for which part stays
# float32): LFM2's gated short convolution 6H, half of it float32. Mamba-2's chunked scan,
# fitted over 12 shapes (within 0.1%): 11 x inner (10 of them float32), 3 x heads x chunk
# (the chunk's decay matrices), 5 x heads x state (B and C per head), 6 x groups x state,
# and 2 x inner x state / chunk (the states between chunks), all float32 but the groups'.
# Qwen3.5's Gated DeltaNet (torch path: no flash-linear-attention), fitted over 12 shapes
# (within 2%): 9.5 x values' width, 5 x keys' width, 5.5 x value heads x chunk, 10.5 x
# value heads x key width (queries and keys repeated per value head) and 2 x value heads x
# key width x value width / chunk (the states); the delta rule runs in float32.
# Copies of each head's seq x seq attention weights a block keeps for backward, counted with
# saved-tensor hooks (transformers 5.25, CPU, float32): eager attention keeps the softmax's
# output (Llama, GPT-NeoX, GPT-OSS forced or by default: 1), and the softcapped scores
# before it (Gemma 2, VaultGemma: 2); attention dropout adds its mask and the dropped
# weights (2 more). SDPA keeps none, unless attention dropout is on, when it keeps what
# eager does (GPT-2's attn_pdrop 0.1: 3). Not measured on CUDA.
_SOFTMAX_OUTPUT, _SOFTCAPPED_SCORES, _ATTENTION_DROPOUT = 1, 1, 2
_ATTENTION_PROBS_UNKNOWN = 3  # a catalog entry without a config, plain MLP (GPT-2's era)


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak memory of one training step, by part, in bytes.

    Attributes:
        model: The model's name.
        device: ``"cpu"`` (process RSS) or ``"cuda"`` (GPU memory).
        dtype: Compute dtype of the base weights and activations.
        method: ``"full"``, ``"lora"`` or ``"qlora"``.
        quantization: ``None``, ``"4bit"`` or ``"8bit"``.
        seq_len: Tokens per sequence.
        batch_size: Sequences per step.
        weights: The base model's weights (quantized where asked; on CPU with quantization
            this includes the resident checkpoint pages and quantization leftovers).
        adapter: The LoRA adapter's weights (float32); 0 for full fine-tuning.
        gradients: Gradients of the trained weights.
        optimizer: Optimizer state (two moments for AdamW).
        activations: Tensors kept for the backward pass, allocator overhead and the logits.
        logits: The part of ``activations`` that is the loss path's copies of the logits.
        overhead: The runtime itself: torch/transformers process baseline on CPU, CUDA
            context on GPU.
        total: The sum of all parts except ``logits`` (already in ``activations``).

    Examples:
        >>> est = estimate_memory("smollm2-135m", device="cpu", seq_len=256, batch_size=4)
        >>> est.method, est.dtype, est.weights == 134515008 * 4
        ('lora', 'float32', True)
        >>> parts = est.weights + est.adapter + est.gradients + est.optimizer + est.activations
        >>> est.total == parts + est.overhead
        True
        >>> est.fits(est.total), est.fits(est.total - 1)
        (True, False)
    """

    model: str
    device: str
    dtype: str
    method: str
    quantization: str | None
    seq_len: int
    batch_size: int
    weights: int
    adapter: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    overhead: int
    processes: int = 1
    fsdp: bool = False
    total: int = field(init=False)

    def __post_init__(self) -> None:
        parts = (self.weights, self.adapter, self.gradients, self.optimizer, self.activations)
        object.__setattr__(self, "total", sum(parts) + self.overhead)

    def fits(self, available_bytes: int | float) -> bool:
        """Whether the estimated peak fits in ``available_bytes``.

        Args:
            available_bytes: Free memory to compare with, in bytes.

        Returns:
            ``True`` when ``total <= available_bytes``.

        Examples:
            >>> est = estimate_memory("smollm2-135m", device="cpu")
            >>> est.fits(64 * 2**30), est.fits(2**20)
            (True, False)
        """
        return self.total <= available_bytes

    def rows(self) -> list[tuple[str, str]]:
        """(part, size) rows for display, ending with the total.

        Examples:
            >>> estimate_memory("smollm2-135m", device="cpu").rows()[-1][0]
            'total'
        """
        parts = [
            ("weights", self.weights), ("adapter", self.adapter),
            ("gradients", self.gradients), ("optimizer", self.optimizer),
            ("activations", self.activations), ("  of which logits", self.logits),
            ("runtime overhead", self.overhead), ("total", self.total),
        ]  # fmt: skip
        return [(name, format_bytes(value)) for name, value in parts]

    def title(self) -> str:
        """One line naming the model and the settings.

        Examples:
            >>> estimate_memory("smollm2-135m", device="cpu", seq_len=128).title()
            'smollm2-135m: lora, float32 on cpu, batch 4 x 128 tokens'
        """
        quant = f" {self.quantization}" if self.quantization else ""
        share = ""
        if self.processes > 1:
            share = f", per process of {self.processes} ({'FSDP' if self.fsdp else 'DDP'})"
        return (
            f"{self.model}: {self.method}{quant}, {self.dtype} on {self.device}, "
            f"batch {self.batch_size} x {self.seq_len} tokens{share}"
        )

    def __str__(self) -> str:
        return self.title() + "\n" + text_table(self.rows(), header=("part", "memory"))

    def _repr_html_(self) -> str:
        return html_table(self.rows(), header=("part", "memory"), title=self.title())


@dataclass(frozen=True)
class _Plan:
    """Resolved, validated settings of one estimate."""

    facts: ModelFacts
    device: str
    dtype: str
    method: str
    quantization: str | None
    lora_r: int
    lora_dropout: float
    seq_len: int
    batch_size: int
    gradient_checkpointing: bool
    optimizer: str
    attention_probs: int  # copies of [heads x seq x seq] kept per block (0: none)
    checkpoint_bytes: int
    logit_tokens: int | None = None

    @property
    def tokens(self) -> int:
        return self.seq_len * self.batch_size

    @property
    def compute_bytes(self) -> int:
        return _DTYPE_BYTES[self.dtype]


def _config_dtype(config: Any) -> int:
    """Bytes per weight in the checkpoint on disk, from the config's ``dtype`` entry."""
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    name = str(value).removeprefix("torch.") if value is not None else "bfloat16"
    return _DTYPE_BYTES.get(name, 2)


def _runs_eager(config: Any) -> bool:
    """Whether transformers runs this config's attention eagerly: as the config says once a
    model set it, else as it will (a family without SDPA support, such as Gemma 2,
    VaultGemma and GPT-OSS, loads with eager attention: counted as SDPA, its estimate from a
    folder was half the measured peak)."""
    chosen = getattr(config, "_attn_implementation", None)
    if chosen is not None:
        return chosen == "eager"
    try:
        from transformers import AutoModelForCausalLM

        model_class = AutoModelForCausalLM._model_mapping[type(config)]
    except (ImportError, KeyError, ValueError):  # a raw config.json or an unknown type
        return False
    return not getattr(model_class, "_supports_sdpa", True)


def _attention_probs(config: Any) -> int:
    """Copies of each head's attention weights a block of ``config`` keeps for backward."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    dropout = any(
        isinstance(value, (int, float)) and value > 0
        for value in (getattr(text, key, None) for key in _ATTENTION_DROPOUT_KEYS)
    )
    if not _runs_eager(text):
        return _SOFTMAX_OUTPUT + _ATTENTION_DROPOUT if dropout else 0
    softcap = bool(getattr(text, "attn_logit_softcapping", None))
    return (
        _SOFTMAX_OUTPUT
        + (_SOFTCAPPED_SCORES if softcap else 0)
        + (_ATTENTION_DROPOUT if dropout else 0)
    )


_ATTENTION_DROPOUT_KEYS = ("attention_dropout", "attn_pdrop", "attention_probs_dropout_prob")


def _from_config(config: Any, name: str | None = None) -> tuple[ModelFacts, int, int]:
    facts = matched_to_model(facts_from_config(config, name=name), config)
    return facts, _attention_probs(config), _config_dtype(config)


def _from_folder(folder: Path) -> tuple[ModelFacts, int, int]:
    """Read ``config.json`` only (no weights), through transformers when it knows the type."""
    path = folder / "config.json"
    if not path.is_file():
        msg = f"model={str(folder)!r} is a folder without config.json; pass a model folder"
        raise SpecError(msg)
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    except (ValueError, KeyError, OSError, TypeError):  # an unknown model_type: the raw JSON
        config = _Namespace(_raw_config(path))
    return _from_config(config, name=folder.name)


def _raw_config(path: Path) -> dict[str, Any]:
    """A config.json's settings (a multimodal one's text model's), or a refusal naming it."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise SpecError(f"{path} is not valid JSON ({err}); copy the model folder again") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path} holds a {type(raw).__name__}, not a model config object")
    text = raw.get("text_config", raw)
    return text if isinstance(text, dict) else raw


class _Namespace:
    """Attribute access to a config.json dict, for model types transformers doesn't know."""

    def __init__(self, values: dict) -> None:
        self.__dict__.update(values)


def _resolve_spec(spec: Any) -> tuple[ModelFacts, int, int]:
    """ModelFacts, attention weights' copies kept per block, checkpoint bytes per weight."""
    if isinstance(spec, ModelFacts):
        return spec, _probs_without_config(spec), 2
    if isinstance(spec, (str, Path)):
        if isinstance(spec, str) and spec.strip().lower() in CATALOG:
            facts = get_facts(spec)  # hub checkpoints of the catalog are 16-bit
            return facts, _probs_without_config(facts), 2
        if expand_home(spec).is_dir():
            return _from_folder(expand_home(spec))
        facts = get_facts(str(spec))  # raises a SpecError listing known names
        return facts, _probs_without_config(facts), 2
    if hasattr(spec, "to_dict") or hasattr(spec, "get_text_config"):
        return _from_config(spec)
    msg = (
        f"spec={spec!r} is not a catalog name, a model folder or a transformers config; "
        f"use one of {sorted(CATALOG)}, a folder with config.json, or AutoConfig output"
    )
    raise SpecError(msg)


def _probs_without_config(facts: ModelFacts) -> int:
    """Without a config to say how attention runs: SDPA without dropout for today's gated-MLP
    families, eager with dropout for a plain-MLP one."""
    return 0 if facts.gated_mlp else _ATTENTION_PROBS_UNKNOWN


def _check_choices(settings: dict[str, Any]) -> list[str]:
    choices = {
        "quantization": QUANTIZATIONS, "method": METHODS, "optimizer": OPTIMIZERS,
        "device": DEVICES, "dtype": DTYPES,
    }  # fmt: skip
    return [
        f"{name}={settings[name]!r}: use one of {allowed}"
        for name, allowed in choices.items()
        if settings[name] not in allowed
    ]


def _check_settings(settings: dict[str, Any]) -> None:
    """Collect every problem with the settings and raise them in one SpecError."""
    problems = _check_choices(settings)
    names = ("lora_r", "seq_len", "batch_size", "processes")
    if settings.get("logit_tokens") is not None:
        names += ("logit_tokens",)
    for name in names:
        value = settings[name]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            problems.append(f"{name}={value!r}: use a positive integer")
    problems += _dropout_problems(settings["lora_dropout"])
    method, quant = settings["method"], settings["quantization"]
    if method == "full" and quant is not None:
        problems.append(
            f"method='full' with quantization={quant!r}: quantized weights cannot be trained "
            "directly; use method='lora' or 'qlora', or quantization=None"
        )
    if method == "qlora" and quant == "8bit":
        problems.append("method='qlora' with quantization='8bit': QLoRA is 4-bit; use '4bit'")
    checkpointing = settings["gradient_checkpointing"]
    if not isinstance(checkpointing, bool) and checkpointing != "auto":
        problems.append(f"gradient_checkpointing={checkpointing!r}: use 'auto', True or False")
    if problems:
        raise SpecError("cannot estimate memory: " + "; ".join(problems))


def _dropout_problems(dropout: Any) -> list[str]:
    """What is wrong with a ``lora_dropout`` setting, if anything (shared with the measuring)."""
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        return [f"lora_dropout={dropout!r}: use a number from 0 up to (not including) 1"]
    return []


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _resolve_dtype(dtype: str, device: str) -> str:
    # CPUs without native bf16 run 16-bit matmuls hundreds of times slower (design.md), so
    # training on CPU computes in float32; GPUs train in bf16.
    if dtype != "auto":
        return dtype
    return "float32" if device == "cpu" else "bfloat16"


def _weights(plan: _Plan) -> int:
    """Base weights; Linear layers of the blocks quantized, embeddings/norms/lm_head not."""
    facts = plan.facts
    fused = _fused_checkpoint_pages(plan)
    if plan.quantization is None:
        return facts.params * plan.compute_bytes + fused
    quantized = facts.block_linear_params  # the experts' 3D weights are not Linear layers
    kept = facts.params - quantized  # bitsandbytes skips the output layer and embeddings
    total = quantized * _QUANT_BYTES[plan.quantization] + kept * plan.compute_bytes + fused
    if plan.device == "cpu":
        total += quantized * (plan.checkpoint_bytes + _CPU_QUANTIZE_WORK_BYTES)
    return int(total)


def _fused_checkpoint_pages(plan: _Plan) -> int:
    """CPU: checkpoint pages that stay resident beside experts fused while loading.

    A float weight loaded as it is stored aliases the memory-mapped checkpoint (counted
    once). Experts stored one by one and fused into 3D weights at load (transformers 5's
    conversion for Qwen2/3-MoE, OLMoE, Mixtral, DeepSeek...) are new memory, and the
    checkpoint pages read for them stay resident too (measured: loading a 108M-weight
    Qwen3-MoE in float32 peaked at 2.2x its weights above the imports; GraniteMoE, stored
    fused, at 0x: its weights were not even read yet).
    """
    experts = plan.facts.experts
    if plan.device != "cpu" or experts is None or not experts.fused_at_load:
        return 0
    return plan.facts.expert_params * plan.checkpoint_bytes


def _trainable(plan: _Plan) -> tuple[int, int]:
    """(trainable weights, bytes per trainable weight)."""
    if plan.method == "full":
        return plan.facts.params, plan.compute_bytes
    return plan.facts.lora_params(plan.lora_r), 4  # peft keeps adapter weights in float32


def _optimizer(plan: _Plan) -> int:
    count, size = _trainable(plan)
    per_state = 1 if plan.optimizer == "adamw_8bit" else size
    return count * _OPTIMIZER_STATES[plan.optimizer] * per_state


def _family(facts: ModelFacts) -> str:
    if not facts.gated_mlp:
        return "plain"
    if facts.architecture in _GEMMA:
        return "gemma"
    if facts.architecture in _GEMMA4:
        return "gemma4"
    if facts.attention_gate:
        return "gated_attention"
    return "qk_norm" if facts.architecture in _QK_NORM else "gated"


def _mixer_elements(mixer: Mixer) -> tuple[int, int]:
    """Saved elements per token of a recurrent block's mixer: (float32, compute dtype)."""
    if mixer.kind == "short_conv":
        return 3 * mixer.inner, 3 * mixer.inner
    if mixer.kind == "gated_deltanet":
        keys = mixer.groups * mixer.state
        value_width = mixer.inner // max(mixer.heads, 1)
        float32 = (
            8 * mixer.inner + 5.5 * mixer.heads * mixer.chunk + 10.5 * mixer.heads * mixer.state
            + 2 * mixer.heads * mixer.state * value_width / mixer.chunk
        )  # fmt: skip
        return int(float32), int(1.5 * mixer.inner + 5 * keys)
    float32 = (
        10 * mixer.inner + 3 * mixer.heads * mixer.chunk + 5 * mixer.heads * mixer.state
        + 2 * mixer.inner * mixer.state // max(mixer.chunk, 1)
    )  # fmt: skip
    return float32, mixer.inner + 6 * mixer.groups * mixer.state


def _block_elements(
    plan: _Plan, expert_block: bool = False, attention: bool = True
) -> tuple[int, int]:
    """Saved elements per token of one block: (float32 part, compute-dtype part)."""
    facts = plan.facts
    c_h, c_q, c_kv, c_i = _COEFFS[_family(facts)]
    float32 = c_h * facts.hidden  # RMSNorm/LayerNorm compute in float32
    rest = 0
    if attention and facts.latent_attention is not None:
        rest = _latent_attention_elements(facts.latent_attention, facts.heads, plan)
    elif attention:
        rest = c_q * facts.heads * facts.head_dim + c_kv * facts.kv_heads * facts.head_dim
        rest += plan.attention_probs * facts.heads * plan.seq_len
    if facts.mixer is not None and (facts.mixer.parallel or not attention):
        mixer_float32, mixer_rest = _mixer_elements(facts.mixer)
        float32, rest = float32 + mixer_float32, rest + mixer_rest
    width = facts.experts.shared_intermediate if expert_block else facts.intermediate
    if expert_block:
        rest += _expert_elements(facts.experts, facts.hidden)
    lean = _lean_mlp(plan)
    rest += (2 if lean else c_i) * width  # lean: gate(x) and up(x) only
    if width and plan.method != "full" and facts.experts is not None and facts.experts.mlps_frozen:
        # peft leaves this MLP without LoRA (Experts.mlps_frozen): it keeps one hidden-
        # wide tensor fewer, and as written one intermediate-wide (measured on Llama and
        # DeepSeek-V3): its frozen down projection needs no input
        rest -= facts.hidden + (0 if lean else width)
    rest += _PER_LAYER_INPUT * facts.per_layer_input
    if plan.method != "full":
        rest += plan.lora_r * len(facts.linear_shapes(expert_block, attention, True))
    return float32, rest


def _dropout_masks(plan: _Plan, expert_block: bool, attention: bool) -> int:
    """Bytes per token of one block's LoRA dropout masks, kept for backward.

    The workbench's adapters keep each adapted layer's mask, a byte per input element, on
    CPU; on the devices of ``REDRAWS_MASKS_ON`` (CUDA) they draw it again in backward
    instead (:func:`workbench.train.core.lean_lora_inputs`). Where peft adapts fused experts the
    run has no dropout (:func:`workbench.train.prepare.fit_spec_to_model`).
    """
    from workbench.train.core import REDRAWS_MASKS_ON

    facts = plan.facts
    if plan.method == "full" or not plan.lora_dropout or plan.device in REDRAWS_MASKS_ON:
        return 0
    if facts.experts is not None and facts.experts.adapted:
        return 0
    return sum(width for width, _ in facts.linear_shapes(expert_block, attention, True))


def _latent_attention_elements(mla: LatentAttention, heads: int, plan: _Plan) -> int:
    """Saved elements per token of latent attention (DeepSeek's MLA), in the compute dtype.

    Counted with torch's saved-tensor hooks (transformers 5.24, DeepSeek-V2/V3 and MiniCPM3,
    SDPA on CPU): each latent twice (its projection, its norm), the key's rotary part, and
    per head twice the query, key and value widths. Where the query/key width differs from
    the value width (DeepSeek: 192 and 128), SDPA has no fused kernel for it and its math
    path keeps the attention weights, ``seq_len`` per head; with equal widths (GLM-4.7-Flash)
    the fused kernel keeps 1.5 x the value width + 1 per head.
    """
    latents = 2 * mla.query_rank + 2 * mla.kv_rank + mla.rope
    per_head = 2 * (mla.nope + mla.rope + mla.value)
    if plan.attention_probs:
        per_head += plan.attention_probs * plan.seq_len
    elif mla.nope + mla.rope != mla.value:
        per_head += plan.seq_len
    else:
        per_head += 1.5 * mla.value + 1
    return int(latents + heads * per_head)


# Saved elements per token of a block's experts, counted with torch's saved-tensor hooks on
# transformers 5.24 + peft 0.21 (OLMoE, Qwen3-MoE, Mixtral, GraniteMoE, Qwen2-MoE, Llama 4;
# 8-16 experts, top-2/4, widths 64-128): for each expert that computes the token, 3 x width
# + hidden (4 x width + 2 x hidden where peft adapts the fused weights, which it computes
# as base + LoRA), and hidden + experts for the routing (2 x hidden + experts when adapted).
# Within 4% of the counts but GraniteMoE (+15%) and Mixtral (+11%), which save less.
_EXPERT_SLOT = {False: (3, 1), True: (4, 2)}  # (x width, x hidden) per computing expert
_EXPERT_ROUTING = {False: 1, True: 2}  # x hidden per token


def _expert_elements(experts: Any, hidden: int) -> int:
    per_width, per_hidden = _EXPERT_SLOT[experts.adapted]
    slot = per_width * experts.intermediate + per_hidden * hidden
    return experts.routed * slot + _EXPERT_ROUTING[experts.adapted] * hidden + experts.count


def _lean_mlp(plan: _Plan) -> bool:
    """Whether the gated MLPs keep ``gate(x)`` and ``up(x)`` only: on the devices of
    ``LEAN_MLP_ON`` (CUDA), outside checkpointed blocks, for the model types that do."""
    from workbench.train.core import LEAN_MLP_ON

    return (
        plan.device in LEAN_MLP_ON
        and not plan.gradient_checkpointing
        and plan.facts.gated_mlp
        and plan.facts.architecture in _LEAN_MLP
    )


def _lean_norms(plan: _Plan) -> bool:
    """Whether RMSNorms keep their 16-bit inputs, not float32 copies, for backward: on the
    devices of ``LEAN_NORM_ON`` (CUDA), in 16 bits, outside checkpointed blocks."""
    from workbench.train.core import LEAN_NORM_ON

    return (
        plan.device in LEAN_NORM_ON
        and plan.compute_bytes == 2
        and not plan.gradient_checkpointing
        and plan.facts.architecture in _LEAN_NORMS
    )


def _lean_norm_savings(plan: _Plan, attention: bool) -> int:
    """Bytes per token one block's RMSNorms keep less with :func:`_lean_norms`."""
    if not _lean_norms(plan):
        return 0
    facts = plan.facts
    hidden, query, key_value = _LEAN_NORMS[facts.architecture]
    widths = hidden * facts.hidden
    if attention and facts.latent_attention is not None:
        widths += facts.latent_attention.query_rank + facts.latent_attention.kv_rank
    elif attention:
        widths += (query * facts.heads + key_value * facts.kv_heads) * facts.head_dim
    return 2 * widths  # 4 bytes of a float32 copy, 2 of the 16-bit input


def _lean_norm_savings_outside_blocks(plan: _Plan) -> int:
    """Bytes per token the norms outside the blocks keep less: the final norm's copy, less
    the first block's input norm, whose input (the frozen embedding) needs no gradient
    under LoRA, and Gemma 4's norm of the blocks' own embeddings."""
    if not _lean_norms(plan):
        return 0
    facts = plan.facts
    first_without_gradient = plan.method != "full" and facts.architecture not in _POST_NORM
    widths = facts.hidden * (1 - first_without_gradient) + facts.layers * facts.per_layer_input
    return 2 * widths


def _checkpointing_frees(plan: _Plan) -> bool:
    """Whether checkpointing lowers the peak as the estimate counts it: on CUDA, whose
    caching allocator reuses what each block frees; not on CPU (``estimate_memory``)."""
    return plan.gradient_checkpointing and plan.device != "cpu"


def _adapted_expert_copies(plan: _Plan) -> int:
    """Bytes of the merged expert weights peft keeps for backward, where it adapts them.

    peft computes adapted fused experts with ``base + delta`` weights, a full copy per block
    saved for backward (the hook counts: exactly one expert weight set per block), and one
    more block's worth as the gradient of that copy in backward.
    """
    experts = plan.facts.experts
    if experts is None or not experts.adapted or plan.method == "full":
        return 0
    per_block = plan.facts.expert_params // max(experts.layers, 1)
    kept = 1 if _checkpointing_frees(plan) else experts.layers
    return (kept + 1) * per_block * plan.compute_bytes


# The workbench's loss (workbench.train.loss) applies the output layer only to trained rows,
# in chunks of at most this many logits (256 MB in float32), each recomputed in backward.
LOSS_CHUNK_ELEMENTS = 2**26


def _logits(plan: _Plan) -> int:
    per_element = _LOGIT_COPIES * 4 + (plan.compute_bytes if plan.compute_bytes < 4 else 0)
    if plan.logit_tokens is None:
        return plan.tokens * plan.facts.vocab * per_element
    elements = min(plan.logit_tokens, plan.tokens) * plan.facts.vocab
    return min(elements, LOSS_CHUNK_ELEMENTS) * per_element


def _activations(plan: _Plan) -> int:
    """Saved block activations times the allocator factor, plus the logits' copies."""

    def block(expert_block: bool, attention: bool) -> int:
        float32, rest = _block_elements(plan, expert_block, attention)
        masks = _dropout_masks(plan, expert_block, attention)
        kept = float32 * 4 + rest * plan.compute_bytes + masks
        return plan.tokens * (kept - _lean_norm_savings(plan, attention))

    facts = plan.facts
    if _checkpointing_frees(plan):
        # Only each block's input is kept; one block at a time is recomputed in backward.
        kept = facts.layers * plan.tokens * facts.hidden * plan.compute_bytes
        saved = kept + max(block(*kind) for kind in facts.block_kinds())
    else:
        saved = facts.sum_over_blocks(block)
        saved -= plan.tokens * _lean_norm_savings_outside_blocks(plan)
    allocated = int(saved * _ALLOCATOR_FACTOR[plan.device]) + _adapted_expert_copies(plan)
    return allocated + _logits(plan)


def estimate_memory(
    spec: Any,
    *,
    quantization: Quantization | None = None,
    lora_r: int = 8,
    lora_dropout: float = 0.05,
    seq_len: int = 512,
    batch_size: int = 4,
    gradient_checkpointing: bool | Literal["auto"] = "auto",
    optimizer: Optimizer = "adamw",
    method: Method = "lora",
    device: Device = "auto",
    dtype: Dtype = "auto",
    processes: int = 1,
    fsdp: bool = False,
    logit_tokens: int | None = None,
) -> MemoryEstimate:
    """Estimate the peak memory of one training step from the model's config alone.

    No weights are loaded: a catalog name, a config object or a folder's ``config.json`` is
    enough. The parts are the base weights, the LoRA adapter, gradients, optimizer state,
    activations (with the logits, which dominate for 262k-vocabulary models like Gemma 3)
    and the runtime's overhead. On CPU the total is the training process's peak RSS; on
    CUDA it is GPU memory (the host process is not counted).

    Args:
        spec: A catalog name (``"gemma-3-270m"``, ``"mistral-7b"``, ...), a transformers
            ``PretrainedConfig``, a local model folder (only ``config.json`` is read) or a
            :class:`~workbench.models.catalog.ModelFacts`.
        quantization: ``None``, ``"4bit"`` (bitsandbytes NF4, double quant) or ``"8bit"``.
        lora_r: LoRA rank; the adapter covers every linear layer of every block.
        lora_dropout: Dropout on the adapter's inputs (``TrainSpec``'s default): on CPU
            each adapted layer keeps its mask for backward, a byte per input element.
        seq_len: Tokens per sequence.
        batch_size: Sequences per step (per device; gradient accumulation adds nothing).
        gradient_checkpointing: Keep only each block's input and recompute the rest;
            ``"auto"``: for a quantized base on CUDA, as training's ``"auto"`` does. On
            CPU it is counted as saving nothing: glibc's malloc kept 0.4-1x of the
            activations a checkpointed step freed (tiny Llama, Qwen2, Gemma 4 and hybrid
            models), so only an estimate without the saving stays on the safe side.
        optimizer: ``"adamw"`` (two moments per trainable weight), ``"adamw_8bit"`` or
            ``"sgd"`` (no state).
        method: ``"full"`` trains every weight, ``"lora"`` an adapter, ``"qlora"`` an
            adapter on a 4-bit base (``quantization`` defaults to ``"4bit"``).
        device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when torch sees a GPU).
        dtype: Compute dtype; ``"auto"`` is float32 on CPU (no fast bf16 there) and bf16 on
            CUDA.
        processes: Processes sharing each step (``Session.train(processes=N)``): the
            estimate is then per process, for its share of ``batch_size`` (the global
            micro-batch, split across them). With DDP every process holds the whole model
            plus a second copy of the trained gradients (the reduce buckets).
        fsdp: Shard weights, gradients and optimizer state across the processes (FSDP):
            each holds 1/N of them plus one block gathered whole at a time.
        logit_tokens: Tokens of the step whose logits are computed. ``None``: every token,
            as plain transformers computes them. The workbench's training path
            (``TrainSpec.fast_loss``) computes them only where a label is trained, in
            chunks of at most 2**26 logits: pass the step's trained tokens.

    Returns:
        A :class:`MemoryEstimate` whose ``total`` is the estimated peak in bytes.

    Raises:
        SpecError: An unknown model name, an unusable setting (all problems in one message,
            each naming the field, its value and the fix), or a config without the needed
            sizes.

    Examples:
        >>> est = estimate_memory("gemma-3-270m", quantization="4bit", seq_len=256, device="cpu")
        >>> est.weights < est.activations
        True
        >>> estimate_memory("mistral-7b", device="cuda").total > 16 * 2**30
        True
        >>> one = estimate_memory("mistral-7b", method="full", device="cuda", batch_size=8)
        >>> eight = estimate_memory("mistral-7b", method="full", device="cuda", batch_size=8,
        ...                         processes=8, fsdp=True)
        >>> eight.total < one.total / 4, eight.title().endswith("per process of 8 (FSDP)")
        (True, True)
    """
    lora_r, lora_dropout, seq_len, batch_size, processes, logit_tokens = map(
        plain_number, (lora_r, lora_dropout, seq_len, batch_size, processes, logit_tokens)
    )  # np.int64(512) from a sweep's np.arange is the 512 it is
    settings = dict(locals())
    _check_settings(settings)
    facts, attention_probs, checkpoint_bytes = _resolve_spec(spec)
    resolved = _resolve_device(device)
    quantization = "4bit" if method == "qlora" else quantization
    if gradient_checkpointing == "auto":
        from workbench.train.core import checkpoints_by_default

        gradient_checkpointing = checkpoints_by_default(quantization is not None, resolved)
    plan = _Plan(
        facts=facts, device=resolved, dtype=_resolve_dtype(dtype, resolved), method=method,
        quantization=quantization, lora_r=lora_r,
        lora_dropout=float(lora_dropout), seq_len=seq_len,
        batch_size=-(-batch_size // processes), optimizer=optimizer,
        gradient_checkpointing=gradient_checkpointing, attention_probs=attention_probs,
        checkpoint_bytes=checkpoint_bytes,
        logit_tokens=None if logit_tokens is None else -(-logit_tokens // processes),
    )  # fmt: skip
    return _shared(_estimate(plan), plan, processes, fsdp)


def _shared(est: MemoryEstimate, plan: _Plan, processes: int, fsdp: bool) -> MemoryEstimate:
    """One process's part when ``processes`` share the step (DDP copies, FSDP shards)."""
    if processes == 1:
        return est
    parts = {"weights": est.weights, "adapter": est.adapter, "gradients": est.gradients}
    parts["optimizer"] = est.optimizer
    if fsdp:
        block = est.weights * plan.facts.largest_block_params // max(plan.facts.params, 1)
        parts = {name: -(-value // processes) for name, value in parts.items()}
        parts["weights"] += block  # the unit being computed is gathered whole
    else:
        parts["gradients"] *= 2  # DDP's reduce buckets hold a copy of the trained gradients
    return replace(est, batch_size=plan.batch_size, processes=processes,
                               fsdp=fsdp, **parts)  # fmt: skip


def _estimate(plan: _Plan) -> MemoryEstimate:
    count, size = _trainable(plan)
    adapter = 0 if plan.method == "full" else count * size
    return MemoryEstimate(
        model=plan.facts.name, device=plan.device, dtype=plan.dtype, method=plan.method,
        quantization=plan.quantization, seq_len=plan.seq_len, batch_size=plan.batch_size,
        weights=_weights(plan), adapter=adapter, gradients=count * size,
        optimizer=_optimizer(plan), activations=_activations(plan), logits=_logits(plan),
        overhead=_OVERHEAD[plan.device],
    )  # fmt: skip


@dataclass(frozen=True)
class FitTable:
    """Estimated peak memory of each catalog model and method, against the memory here.

    Attributes:
        records: One dict per (model, method): ``model``, ``params``, ``method``,
            ``quantization``, ``device``, ``dtype``, ``peak`` (bytes), ``available``
            (bytes) and ``fits`` (bool).
        device: ``"cpu"`` or ``"cuda"``.
        available: The memory compared against, in bytes.
        seq_len: Tokens per sequence of the estimates.
        batch_size: Sequences per step of the estimates.

    Examples:
        >>> table = fit_table(seq_len=256, batch_size=1, device="cpu", available=8 * 2**30)
        >>> first = table.records[0]
        >>> first["model"], first["method"], first["peak"] < first["available"], first["fits"]
        ('gemma-3-270m', 'full', True, True)
    """

    records: list[dict[str, Any]]
    device: str
    available: int
    seq_len: int
    batch_size: int

    def rows(self) -> list[tuple[str, ...]]:
        """Display rows: model, parameters, method, estimated peak, fits.

        Examples:
            >>> fit_table(available=8 * 2**30, device="cpu").rows()[0][:3]
            ('gemma-3-270m', '268M', 'full')
        """
        return [
            (r["model"], _count(r["params"]), r["method"], format_bytes(r["peak"]),
             "yes" if r["fits"] else "no")
            for r in self.records
        ]  # fmt: skip

    def title(self) -> str:
        """One line naming the device, the memory compared against, and the batch.

        Examples:
            >>> fit_table(available=2**30, device="cpu", seq_len=64).title()
            'training peak vs 1.00 GiB on cpu, batch 4 x 64 tokens'
        """
        return (
            f"training peak vs {format_bytes(self.available)} on {self.device}, "
            f"batch {self.batch_size} x {self.seq_len} tokens"
        )

    def __str__(self) -> str:
        header = ("model", "params", "method", "peak", "fits")
        return self.title() + "\n" + text_table(self.rows(), header=header)

    def _repr_html_(self) -> str:
        header = ("model", "params", "method", "peak", "fits")
        return html_table(self.rows(), header=header, title=self.title())


def _count(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 0.95e9 else f"{n / 1e6:.0f}M"


def _available_memory(device: str) -> int:
    """Free GPU memory (``torch.cuda.mem_get_info``) or available RAM (psutil)."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            msg = (
                "device='cuda' with no available=: torch sees no CUDA GPU here to read free "
                "memory from; give available=<bytes> (e.g. 24 * 2**30) for the GPU you plan on"
            )
            raise SpecError(msg)
        free, _total = torch.cuda.mem_get_info()
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def _checked_budget(available: Any) -> int:
    available = plain_number(available)  # np.float32 is no float
    if isinstance(available, bool) or not isinstance(available, (int, float)) or available <= 0:
        msg = f"available={available!r}: give a positive number of bytes, e.g. 16 * 2**30"
        raise SpecError(msg)
    return int(available)


def fit_table(
    seq_len: int = 512,
    batch_size: int = 4,
    available: int | None = None,
    device: Device = "auto",
    lora_r: int = 8,
) -> FitTable:
    """Estimate every catalog model with full, LoRA and QLoRA training, and say what fits.

    Full and LoRA train on the compute dtype (float32 on CPU, bf16 on CUDA); QLoRA on a
    4-bit base, on CUDA with gradient checkpointing, as training's
    ``gradient_checkpointing="auto"`` does.

    Args:
        seq_len: Tokens per sequence.
        batch_size: Sequences per step.
        available: Bytes to compare with; default: free GPU memory on CUDA, available RAM
            on CPU.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        lora_r: LoRA rank of the lora and qlora rows.

    Returns:
        A :class:`FitTable`; ``records`` holds one dict per model and method.

    Raises:
        SpecError: An unusable setting.

    Examples:
        >>> table = fit_table(seq_len=256, available=16 * 2**30, device="cuda")
        >>> [r["fits"] for r in table.records if r["model"] == "mistral-7b"]
        [False, False, True]
    """
    seq_len, batch_size, lora_r = map(plain_number, (seq_len, batch_size, lora_r))
    resolved = _resolve_device(device) if device in DEVICES else device
    budget = _available_memory(resolved) if available is None else _checked_budget(available)
    records = []
    for name, facts in CATALOG.items():
        for method in METHODS:
            est = estimate_memory(
                facts, method=method, lora_r=lora_r, seq_len=seq_len,
                batch_size=batch_size, device=resolved,
            )  # fmt: skip
            records.append(
                dict(model=name, params=facts.params, method=method,
                     quantization=est.quantization, device=est.device, dtype=est.dtype,
                     peak=est.total, available=budget, fits=est.fits(budget))
            )  # fmt: skip
    return FitTable(records, resolved, budget, seq_len, batch_size)
