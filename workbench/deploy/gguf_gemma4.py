"""Gemma 4's facts in a GGUF file, as llama.cpp's ``gemma4`` model reads them.

Gemma 4 differs block by block, so most of its facts are per block or per block kind:

- sliding blocks and global ones have their own head width (``attention.key_length_swa``
  and ``attention.key_length``), rope base (``rope.freq_base_swa``) and rotated width
  (``rope.dimension_count_swa``); which block slides is ``attention.sliding_window_pattern``;
- global blocks rotate only part of each head ("proportional" rope): llama.cpp rotates the
  whole head with one factor per frequency (``rope_freqs.weight``), a huge one for the
  frequencies transformers leaves still;
- key/value heads may differ on global blocks (``attention.head_count_kv`` per block), as may
  the MLP width (``feed_forward_length`` per block: twice as wide on the blocks that reuse
  an earlier block's keys and values, with ``use_double_wide_mlp``);
- the last ``attention.shared_kv_layers`` blocks reuse the keys and values of the last
  block of their kind before them. llama.cpp takes those from the last two blocks before
  the shared ones (sliding, then global), so a model whose blocks end otherwise there is
  refused;
- each block's own token embedding: ``embedding_length_per_layer_input`` wide.

Refused (llama.cpp computes them otherwise or not at all): the mixture-of-experts block,
bidirectional attention, attention biases, rope scaling, a partly rotated sliding block.

Examples:
    >>> from transformers import AutoConfig
    >>> config = AutoConfig.for_model("gemma4_text", num_hidden_layers=2, head_dim=16,
    ...     global_head_dim=32, layer_types=["sliding_attention", "full_attention"])
    >>> facts = gemma4_hparams(config)
    >>> facts["attention.key_length"], facts["attention.key_length_swa"]
    (32, 16)
    >>> (gemma4_rope_freqs(config) == 1).tolist()[:5]  # a quarter of 32 dimensions rotate
    [True, True, True, True, False]
"""

from __future__ import annotations

from typing import Any

from workbench.deploy.gguf_metadata import rope_parameters
from workbench.errors import SpecError
from workbench.models.catalog import gemma4_mlp_widths

__all__ = ["gemma4_hparams", "gemma4_rope_freqs"]

_STILL = 1e30  # a frequency factor that makes a rotation angle zero (cos 1, sin 0)
_SAFETENSORS = "Export as 'safetensors' instead."


def gemma4_hparams(config: Any) -> dict[str, Any]:
    """The ``gemma4.*`` facts of a Gemma 4 text config (key without the prefix -> value).

    Raises:
        SpecError: a setting llama.cpp's Gemma 4 cannot reproduce (see the module docstring).

    Examples:
        >>> from transformers import AutoConfig
        >>> config = AutoConfig.for_model("gemma4_text", num_hidden_layers=2,
        ...     layer_types=["sliding_attention", "full_attention"], global_head_dim=512)
        >>> facts = gemma4_hparams(config)
        >>> facts["attention.sliding_window_pattern"], facts["rope.dimension_count"]
        ([True, False], 512)
        >>> gemma4_hparams(AutoConfig.for_model("gemma4_text", enable_moe_block=True,
        ...     num_experts=4, top_k_experts=2, moe_intermediate_size=64))
        Traceback (most recent call last):
        workbench.errors.SpecError: GGUF export: Gemma 4 with mixture-of-experts blocks \
(enable_moe_block=True) is not written by this exporter. Export as 'safetensors' instead.
    """
    _check(config)
    blocks = range(config.num_hidden_layers)
    kinds = list(config.layer_types)
    sliding = [kind == "sliding_attention" for kind in kinds]
    layers = [config.per_layer_config[i] for i in blocks]
    global_dim = _one([c.head_dim for c, s in zip(layers, sliding, strict=True) if not s])
    local_dim = _one([c.head_dim for c, s in zip(layers, sliding, strict=True) if s])
    kv_heads = [int(c.num_key_value_heads) for c in layers]
    widths = gemma4_mlp_widths(config)
    local = rope_parameters(config, "sliding_attention")
    full = rope_parameters(config, "full_attention")
    facts: dict[str, Any] = {
        "context_length": int(config.max_position_embeddings),
        "embedding_length": int(config.hidden_size),
        "block_count": len(blocks),
        "feed_forward_length": widths if len(set(widths)) > 1 else widths[0],
        "attention.head_count": int(config.num_attention_heads),
        "attention.head_count_kv": kv_heads if len(set(kv_heads)) > 1 else kv_heads[0],
        "attention.key_length": int(global_dim),
        "attention.value_length": int(global_dim),
        "attention.key_length_swa": int(local_dim or global_dim),
        "attention.value_length_swa": int(local_dim or global_dim),
        "attention.layer_norm_rms_epsilon": float(config.rms_norm_eps),
        "attention.sliding_window": int(config.sliding_window),
        "attention.sliding_window_pattern": sliding,
        "rope.dimension_count": int(global_dim),
        "rope.dimension_count_swa": int(local_dim or global_dim),
        "rope.freq_base": float(full.get("rope_theta", 1_000_000.0)),
        "rope.freq_base_swa": float(local.get("rope_theta", 10_000.0)),
        "embedding_length_per_layer_input": int(config.hidden_size_per_layer_input or 0),
        "vocab_size": int(config.vocab_size),
    }
    if config.num_kv_shared_layers:
        facts["attention.shared_kv_layers"] = int(config.num_kv_shared_layers)
    # written when unset too: llama.cpp caps Gemma logits at 30 unless the file says 0
    facts["final_logit_softcapping"] = float(getattr(config, "final_logit_softcapping", 0) or 0)
    return facts


def gemma4_rope_freqs(config: Any):
    """The ``rope_freqs.weight`` tensor of Gemma 4's global blocks: per frequency of a head,
    1 where transformers rotates it, a huge factor (no rotation) where it does not.

    Examples:
        >>> from transformers import AutoConfig
        >>> config = AutoConfig.for_model("gemma4_text", num_hidden_layers=1, global_head_dim=8,
        ...     layer_types=["full_attention"])
        >>> [f"{f:.0e}" for f in gemma4_rope_freqs(config)]  # 0.25 of 8 dimensions: 1 of 4
        ['1e+00', '1e+30', '1e+30', '1e+30']
    """
    import numpy as np

    kinds = list(config.layer_types)
    block = kinds.index("full_attention")
    head_dim = int(config.per_layer_config[block].head_dim)
    rope = rope_parameters(config, "full_attention")
    if rope.get("rope_type", "default") == "proportional":
        rotated = int(rope.get("partial_rotary_factor", 1.0) * head_dim // 2)
    else:
        rotated = head_dim // 2
    factors = np.full(head_dim // 2, _STILL, dtype=np.float32)
    factors[:rotated] = 1.0
    return factors


def _check(config: Any) -> None:
    refusals = {
        "enable_moe_block": "mixture-of-experts blocks (enable_moe_block=True) is not written "
        "by this exporter",
        "attention_bias": "attention biases (attention_bias=True); llama.cpp's Gemma 4 has none",
        "use_bidirectional_attention": "bidirectional attention "
        f"(use_bidirectional_attention={getattr(config, 'use_bidirectional_attention', None)!r}); "
        "llama.cpp's Gemma 4 attends causally",
    }
    for flag, why in refusals.items():
        if getattr(config, flag, None):
            raise SpecError(f"GGUF export: Gemma 4 with {why}. {_SAFETENSORS}")
    local = rope_parameters(config, "sliding_attention")
    full = rope_parameters(config, "full_attention")
    if (
        local.get("rope_type", "default") != "default"
        or local.get("partial_rotary_factor", 1.0) != 1
    ):
        raise SpecError(
            f"GGUF export: Gemma 4 sliding blocks with rope {local}; llama.cpp rotates their "
            f"whole heads without scaling. {_SAFETENSORS}"
        )
    if (
        full.get("rope_type", "default") not in ("default", "proportional")
        or full.get("factor", 1.0) != 1
    ):
        raise SpecError(
            f"GGUF export: Gemma 4 global blocks with rope {full}; llama.cpp's Gemma 4 takes "
            f"proportional rope without a scaling factor. {_SAFETENSORS}"
        )
    per_block_vocab = getattr(config, "vocab_size_per_layer_input", None)
    if config.hidden_size_per_layer_input and per_block_vocab != config.vocab_size:
        raise SpecError(
            f"GGUF export: Gemma 4 with per-block token embeddings over {per_block_vocab} "
            f"tokens and a vocabulary of {config.vocab_size}; llama.cpp takes one size for "
            f"both. {_SAFETENSORS}"
        )
    if "full_attention" not in config.layer_types:
        raise SpecError(f"GGUF export: a Gemma 4 model without a global block. {_SAFETENSORS}")
    _check_shared_kv(config)


def _check_shared_kv(config: Any) -> None:
    """llama.cpp's shared blocks read the keys and values of the second-to-last block before
    them (sliding ones) or the last (global ones); transformers' read the last of their kind."""
    shared = int(config.num_kv_shared_layers or 0)
    if not shared:
        return
    kinds = list(config.layer_types)
    first = len(kinds) - shared
    if first < 2 or kinds[first - 1] != "full_attention" or kinds[first - 2] != "sliding_attention":
        raise SpecError(
            f"GGUF export: Gemma 4 shares keys and values from block {first + 1} on, and the "
            f"blocks before it end {kinds[max(0, first - 2) : first]}; llama.cpp reads shared "
            "keys and values from a sliding block followed by a global one there, so its "
            f"answers would differ. {_SAFETENSORS}"
        )


def _one(values: list[int]) -> int | None:
    """The one head width a block kind has (``None``: no block of the kind)."""
    if len(set(values)) > 1:
        raise SpecError(
            f"GGUF export: Gemma 4 blocks of one kind with head widths {sorted(set(values))}; "
            f"llama.cpp takes one per kind. {_SAFETENSORS}"
        )
    return values[0] if values else None
