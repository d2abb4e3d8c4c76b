"""The model facts a GGUF file carries under ``{arch}.*``, as llama.cpp reads them.

llama.cpp builds the model from these keys alone (``llama_model::load_hparams`` and the
per-architecture ``load_arch_hparams`` in ``src/models/*.cpp``). What a key does not say
llama.cpp guesses, and several guesses are wrong for small models: the head width defaults
to ``hidden / heads`` (Gemma 3 270M has 256, not 160), the rope base to 10,000, Gemma 3's
sliding window to "none". So every fact llama.cpp reads for the supported families is
written, taken from the transformers config:

- shape: ``context_length``, ``embedding_length``, ``block_count``, ``feed_forward_length``,
  ``attention.head_count``/``head_count_kv``, ``attention.key_length``/``value_length``,
  ``rope.dimension_count``, ``vocab_size``;
- norms: ``attention.layer_norm_rms_epsilon`` (``attention.layer_norm_epsilon`` for the
  LayerNorm families, Phi-2, StableLM, GPT-2 and GPT-NeoX);
- rope: ``rope.freq_base``, ``rope.scaling.*`` (linear, YaRN, and Phi-3's LongRoPE
  attention factor and pretraining context; Llama 3's scaling and LongRoPE's factors are
  tensors, see :func:`rope_tensors`), and for Gemma 3 ``rope.freq_base_swa``;
- Gemma 3: ``attention.sliding_window``, ``attention.sliding_window_pattern`` (one flag per
  layer, from ``config.layer_types``) and ``final_logit_softcapping``;
- Gemma 4: its sliding and global blocks' own head widths, rope bases and rotated widths,
  per-block key/value heads and MLP widths, shared keys and values and per-block token
  embeddings (:mod:`workbench.deploy.gguf_gemma4`);
- Gemma 2: ``attention.sliding_window`` (llama.cpp alternates sliding and full blocks
  itself), ``attn_logit_softcapping`` and ``final_logit_softcapping`` (llama.cpp always
  caps, so a config without them is refused);
- SmolLM3: nothing more, but its blocks without rotary embeddings must be llama.cpp's fixed
  every-4th pattern (else the export is refused);
- GPT-NeoX: ``use_parallel_residual``; GPT-2: no rope keys (its positions are learned);
- OLMo 3 (written as OLMo 2): ``attention.sliding_window``, the blocks sliding as llama.cpp
  fixes them (three of every four; else the export is refused);
- Mamba-2 hybrids (Granite 4.0-H and Bamba as ``granitehybrid``, Falcon-H1 as
  ``falcon-h1``): ``ssm.conv_kernel``, ``ssm.state_size``, ``ssm.group_count``,
  ``ssm.inner_size`` and ``ssm.time_step_rank``; for ``granitehybrid`` a key/value head
  count per block (0: a Mamba-2 block) and Granite's multipliers. No key carries Falcon-H1's
  multipliers: the writer folds them into the weights.

No key names the MLP's activation (each family's graph fixes it), so a config whose
activation differs from its family's is refused, as are settings no key can express.

Examples:
    >>> from transformers import Gemma3TextConfig
    >>> facts = hparams("gemma3", Gemma3TextConfig(hidden_size=640, num_attention_heads=4,
    ...                                            head_dim=256, num_hidden_layers=6))
    >>> facts["attention.key_length"], facts["attention.sliding_window_pattern"]
    (256, [True, True, True, True, True, False])
"""

from __future__ import annotations

import math
from typing import Any

from workbench.errors import SpecError

__all__ = ["add_hparams", "hparams", "rope_freqs", "rope_tensors", "rotary_dim"]


def add_hparams(writer: Any, arch: str, config: Any) -> None:
    """Write :func:`hparams` to ``writer`` (a ``gguf.GGUFWriter``) with GGUF's value types.

    Examples:
        >>> import gguf
        >>> from transformers import LlamaConfig
        >>> path = "/tmp/wb-doc-deploy-gguf_metadata-hparams.gguf"
        >>> writer = gguf.GGUFWriter(path, "llama")
        >>> add_hparams(writer, "llama", LlamaConfig(hidden_size=64, num_attention_heads=4))
        >>> writer.write_header_to_file()
        >>> writer.write_kv_data_to_file()
        >>> writer.close()
        >>> fields = gguf.GGUFReader(path).fields
        >>> fields["llama.attention.key_length"].contents()
        16
        >>> fields["llama.rope.freq_base"].contents()
        10000.0
    """
    for key, value in hparams(arch, config).items():
        name = f"{arch}.{key}"
        if isinstance(value, list):
            writer.add_array(name, value)
        elif isinstance(value, str):
            writer.add_string(name, value)
        elif isinstance(value, bool):
            writer.add_bool(name, value)
        elif isinstance(value, int):
            writer.add_uint32(name, value)
        else:
            writer.add_float32(name, float(value))


def hparams(arch: str, config: Any) -> dict[str, Any]:
    """The ``{arch}.*`` facts of ``config`` (key without the arch prefix -> value).

    Raises:
        SpecError: a setting llama.cpp cannot reproduce (an unknown rope scaling, Gemma 3
            with a query scale other than ``head_dim``, Gemma 2 without softcapping, Phi
            with ``qk_layernorm``).

    Examples:
        >>> from transformers import LlamaConfig
        >>> facts = hparams("llama", LlamaConfig(hidden_size=64, num_attention_heads=4))
        >>> facts["attention.key_length"], facts["rope.dimension_count"]
        (16, 16)
    """
    if arch == "gemma4":  # its facts differ block by block
        from workbench.deploy.gguf_gemma4 import gemma4_hparams

        _check_activation(arch, config)
        return gemma4_hparams(config)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    facts: dict[str, Any] = {
        "context_length": int(config.max_position_embeddings),
        "embedding_length": int(config.hidden_size),
        "block_count": int(config.num_hidden_layers),
        "feed_forward_length": _feed_forward_length(config),
        "attention.head_count": int(heads),
        # GPT-NeoX configs carry a num_key_value_heads its attention does not use
        "attention.head_count_kv": int(heads if arch == "gptneox" else kv_heads),
        "attention.key_length": int(head_dim),
        "attention.value_length": int(head_dim),
        **_norm_epsilon(config),
        "vocab_size": int(config.vocab_size),
    }
    _check_activation(arch, config)
    if arch == "gpt2":
        _check_gpt2_attention(config)  # learned positions: no rotary facts
    else:
        facts.update({"rope.dimension_count": rotary_dim(config), **_rope_facts(config, arch)})
    if arch == "gptneox":
        facts["use_parallel_residual"] = bool(config.use_parallel_residual)
    if arch == "gemma3":
        facts.update(_gemma3_facts(config, head_dim))
    if arch == "gemma2":
        facts.update(_gemma2_facts(config, head_dim))
    if arch == "smollm3":
        _check_smollm3_rope_layers(config)
    facts.update(_moe_facts(arch, config))
    if arch == "olmoe":
        _check_olmoe_heads(facts["attention.head_count_kv"], heads)
    if arch in ("granite", "granitemoe", "granitehybrid"):
        facts.update(_granite_facts(config, head_dim))
    if arch == "olmo2":
        facts.update(_olmo3_window(config))
    facts.update(_block_kinds_facts(arch, config, kv_heads))
    _check_biases(arch, config)
    _check_phi_qk_norms(arch, config)
    return facts


# Bias settings of families whose llama.cpp graph has no such bias tensors: a file with them
# fails to load ("wrong number of tensors"). Found by exporting each tiny family with each
# bias flag of its config switched (llama.cpp b7000s via llama-cpp-python 0.3.36); Llama,
# Granite, Bamba, GLM-4, Qwen2-MoE, StableLM and GPT-NeoX load theirs.
_BIASES_LLAMA_CPP_LACKS = {
    "qwen3": ("attention_bias",), "qwen3_moe": ("attention_bias",),
    "qwen3_5_text": ("attention_bias",), "smollm3": ("attention_bias", "mlp_bias"),
    "olmo2": ("attention_bias",), "olmo3": ("attention_bias",), "olmoe": ("attention_bias",),
    "gemma": ("attention_bias",), "gemma2": ("attention_bias",),
    "gemma3_text": ("attention_bias",), "ernie4_5": ("use_bias",),
}  # fmt: skip


def _check_biases(arch: str, config: Any) -> None:
    """Refuse, before anything is written, biases llama.cpp's graph for the family lacks."""
    for flag in _BIASES_LLAMA_CPP_LACKS.get(config.model_type, ()):
        if getattr(config, flag, False):
            raise SpecError(
                f"GGUF export: {config.model_type} with {flag}=True; llama.cpp's {arch} has no "
                "such biases, so the file would not load. Export as 'safetensors' instead."
            )


def _check_phi_qk_norms(arch: str, config: Any) -> None:
    # llama.cpp's phi2 graph normalises neither queries nor keys (no tensor to hold them)
    if arch == "phi2" and getattr(config, "qk_layernorm", False):
        msg = (
            "GGUF export: phi with qk_layernorm=True; llama.cpp's phi2 has no query/key "
            "norms, so the file would compute something else. Export as 'safetensors' instead."
        )
        raise SpecError(msg)


def _feed_forward_length(config: Any) -> int:
    from workbench.models.catalog import mlp_width

    # GPT-2's n_inner of None means four times the hidden size
    return int(mlp_width(config) or 4 * config.hidden_size)


def _norm_epsilon(config: Any) -> dict[str, float]:
    # RMSNorm families, and LayerNorm ones (Phi-2, StableLM, GPT-2, GPT-NeoX) under their own key
    if getattr(config, "rms_norm_eps", None) is not None:
        return {"attention.layer_norm_rms_epsilon": float(config.rms_norm_eps)}
    if config.model_type in ("lfm2", "lfm2_moe"):  # its RMSNorms' epsilon, named its own way
        return {"attention.layer_norm_rms_epsilon": float(config.norm_eps)}
    names = ("layer_norm_eps", "layer_norm_epsilon", "norm_epsilon")  # GPT-2's, StarCoder2's
    epsilon = next(getattr(config, n) for n in names if getattr(config, n, None) is not None)
    return {"attention.layer_norm_epsilon": float(epsilon)}


_GELU = {"gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "gelu_python", "gelu_accurate"}
_GELU_FAMILIES = {"gemma", "gemma2", "gemma3", "gemma4", "phi2", "gpt2", "gptneox", "starcoder2"}


def _check_activation(arch: str, config: Any) -> None:
    # No GGUF key names the MLP's activation: llama.cpp's graph for each family fixes it.
    # (The GELU variants differ by under 1e-3; llama.cpp computes the tanh one.)
    names = ("hidden_activation", "hidden_act", "activation_function")
    activation = next((v for v in (getattr(config, n, None) for n in names) if v), None)
    expected = _GELU if arch in _GELU_FAMILIES else {"silu", "swish"}
    if activation is not None and activation not in expected:
        msg = (
            f"GGUF export: this {config.model_type} model's MLP uses {activation!r}; "
            f"llama.cpp's {arch} graph computes {'GELU' if expected is _GELU else 'SiLU'}. "
            "Export as 'safetensors' instead."
        )
        raise SpecError(msg)


def _check_gpt2_attention(config: Any) -> None:
    # llama.cpp's GPT-2 graph always scales scores by 1/sqrt(head_dim), never by layer depth
    if not getattr(config, "scale_attn_weights", True) or getattr(
        config, "scale_attn_by_inverse_layer_idx", False
    ):
        msg = (
            "GGUF export: this GPT-2 config scales attention differently "
            "(scale_attn_weights=False or scale_attn_by_inverse_layer_idx=True), which "
            "llama.cpp's GPT-2 cannot reproduce. Export as 'safetensors' instead."
        )
        raise SpecError(msg)


def _lfm2_facts(config: Any, kv_heads: int) -> dict[str, Any]:
    """LFM2: which blocks are short convolutions (no key/value heads) and their width."""
    if getattr(config, "conv_bias", False):
        raise SpecError(
            "GGUF export: LFM2 with biased convolutions (conv_bias=True); llama.cpp's LFM2 has "
            "none, so the file would not load. Export as 'safetensors' instead."
        )
    if rope_parameters(config).get("rope_type", "default") not in ("default", None):
        raise SpecError(
            "GGUF export: LFM2 with rope scaling; llama.cpp's LFM2 rotates without it. "
            "Export as 'safetensors' instead."
        )
    return {
        "attention.head_count_kv": _kv_heads_per_block(config, kv_heads),
        "shortconv.l_cache": int(config.conv_L_cache),
    }


def _block_kinds_facts(arch: str, config: Any, kv_heads: int) -> dict[str, Any]:
    """Families whose blocks differ by kind (LFM2's and Granite 4.0-H's recurrent blocks,
    EXAONE 4's sliding ones) or hold two (Falcon-H1: Mamba-2 beside attention in each)."""
    if arch in ("lfm2", "lfm2moe"):
        return _lfm2_facts(config, kv_heads)
    if arch in ("granitehybrid", "falcon-h1"):
        return _mamba2_facts(arch, config, kv_heads)
    if arch == "qwen35":
        return _gated_deltanet_facts(config)
    if arch == "exaone4":
        return _exaone4_window(config)
    return {}


def _mamba2_facts(arch: str, config: Any, kv_heads: int) -> dict[str, Any]:
    """Granite 4.0-H, Bamba and Falcon-H1: their Mamba-2 layers' sizes; for the first two,
    which blocks attend, and whether those rotate (Bamba's do, Granite 4.0-H's do not)."""
    # Falcon-H1 may set the Mamba-2 width apart from the hidden size (mamba_d_ssm)
    inner = int(getattr(config, "mamba_d_ssm", None) or config.mamba_expand * config.hidden_size)
    limit = tuple(config.time_step_limit or (0.0, math.inf))
    if config.mamba_n_heads * config.mamba_d_head != inner or config.mamba_proj_bias:
        raise SpecError(
            f"GGUF export: this {config.model_type} model's Mamba-2 heads do not fill its inner "
            "width (or its projections have biases: mamba_proj_bias=True), which llama.cpp's "
            "graph assumes. Export as 'safetensors' instead."
        )
    if limit != (0.0, math.inf):
        raise SpecError(
            f"GGUF export: this {config.model_type} model clamps its Mamba-2 time steps to "
            f"time_step_limit={limit}; llama.cpp's graph never clamps them. Export as "
            "'safetensors' instead."
        )
    facts = {
        "ssm.conv_kernel": int(config.mamba_d_conv),
        "ssm.state_size": int(config.mamba_d_state),
        "ssm.group_count": int(config.mamba_n_groups),
        "ssm.inner_size": inner,
        "ssm.time_step_rank": int(config.mamba_n_heads),
    }
    if arch == "falcon-h1":  # every block attends, with the model's own key/value heads
        _check_falcon_h1(config)
        return facts
    # Bamba's config has no position_embedding_type: it always rotates
    rotary = getattr(config, "position_embedding_type", "rope") not in (None, "nope")
    return {
        **facts,
        "attention.head_count_kv": _kv_heads_per_block(config, kv_heads),
        "rope.scaling.finetuned": rotary,  # llama.cpp's switch for Granite's rotary encoding
    }


def _check_falcon_h1(config: Any) -> None:
    """Refuse the Falcon-H1 settings llama.cpp's falcon-h1 graph computes otherwise: it
    gates the Mamba-2 output before its norm, adds no bias to attention's output or to the
    Mamba-2 output projection, and rotates without per-frequency factors (Llama 3's
    scaling)."""
    if config.mamba_rms_norm and config.mamba_norm_before_gate:
        raise SpecError(
            "GGUF export: Falcon-H1 with mamba_norm_before_gate=True (and mamba_rms_norm=True) "
            "norms its Mamba-2 output before gating it; llama.cpp gates first. Export as "
            "'safetensors' instead."
        )
    if config.attention_bias:
        raise SpecError(
            "GGUF export: Falcon-H1 with attention_bias=True; llama.cpp's falcon-h1 never adds "
            "the bias of attention's output projection. Export as 'safetensors' instead."
        )
    if config.projectors_bias:
        raise SpecError(
            "GGUF export: Falcon-H1 with projectors_bias=True (a bias on its Mamba-2 output "
            "projection); llama.cpp's falcon-h1 has none. Export as 'safetensors' instead."
        )
    if rope_freqs(config) is not None:
        raise SpecError(
            "GGUF export: Falcon-H1 with Llama 3's rope scaling (config.rope_parameters); "
            "llama.cpp's falcon-h1 rotates without its factors. Export as 'safetensors' instead."
        )


def _kv_heads_per_block(config: Any, kv_heads: int) -> list[int]:
    # llama.cpp learns which blocks of a hybrid attend from their key/value head counts
    from workbench.models.catalog import recurrent_blocks

    recurrent = set(recurrent_blocks(config))
    return [0 if block in recurrent else kv_heads for block in range(config.num_hidden_layers)]


def _gated_deltanet_facts(config: Any) -> dict[str, Any]:
    """Qwen3.5: its Gated DeltaNet blocks' sizes, which blocks attend, and the sections of its
    multimodal rotary encoding (text positions rotate every section alike)."""
    types = list(config.layer_types)
    interval = types.index("full_attention") + 1 if "full_attention" in types else 0
    every = ["full_attention" if (i + 1) % max(interval, 1) == 0 else "linear_attention"
             for i in range(len(types))]  # fmt: skip
    key_heads, value_heads = config.linear_num_key_heads, config.linear_num_value_heads
    widths = config.linear_key_head_dim, config.linear_value_head_dim
    if interval < 2 or types != every or value_heads % key_heads or widths[0] != widths[1]:
        raise SpecError(  # interval 1 (no recurrent block) aborts llama.cpp's process
            f"GGUF export: this Qwen3.5's layer_types ({types}) or linear attention heads "
            f"({key_heads} key, {value_heads} value, widths {widths}) are not what llama.cpp's "
            "qwen35 runs (attention in every n-th block, n at least 2; value heads a multiple "
            "of key heads, as wide). Export as 'safetensors' instead."
        )
    # llama.cpp interleaves the rotated pairs over three sections (time, height, width); a
    # text token has one position in all three, so each pair must fall in one of them: as
    # many pairs in each as the interleaving gives it (Qwen3.5's own [11, 11, 10] for 32)
    pairs = rotary_dim(config) // 2
    sections = [len(range(k, pairs, 3)) for k in range(3)]
    return {
        "ssm.conv_kernel": int(config.linear_conv_kernel_dim),
        "ssm.state_size": int(config.linear_key_head_dim),
        "ssm.group_count": int(key_heads),
        "ssm.time_step_rank": int(value_heads),
        "ssm.inner_size": int(value_heads * config.linear_value_head_dim),
        "full_attention_interval": interval,
        "rope.dimension_sections": [*sections, 0],
    }


def _exaone4_window(config: Any) -> dict[str, int]:
    """EXAONE 4's sliding window, which llama.cpp runs only in its 32B shape.

    transformers rotates EXAONE 4's queries and keys only in sliding blocks once a window is
    set (its global blocks have no position encoding); llama.cpp rotates every block unless
    the model has 64 blocks, then slides (and rotates) in three of every four.
    """
    window = getattr(config, "sliding_window", None)
    if window is None:
        return {}  # every block global and rotated, on both sides
    types = list(config.layer_types)
    expected = ["full_attention" if i % 4 == 3 else "sliding_attention" for i in range(64)]
    if types == expected:
        return {"attention.sliding_window": int(window)}
    msg = (
        f"GGUF export: EXAONE 4 with a sliding window over {len(types)} blocks "
        f"({types.count('sliding_attention')} sliding); llama.cpp runs EXAONE 4's window only "
        "in the 32B shape (64 blocks, three of every four sliding), and rotates every block "
        "otherwise, where transformers leaves the global ones unrotated. Export as "
        "'safetensors' instead."
    )
    raise SpecError(msg)


def _olmo3_window(config: Any) -> dict[str, int]:
    """OLMo 3's sliding window: llama.cpp's OLMo 2 graph slides in 3 blocks of every 4."""
    types = list(getattr(config, "layer_types", None) or [])
    if "sliding_attention" not in types:
        return {}
    expected = ["full_attention" if i % 4 == 3 else "sliding_attention" for i in range(len(types))]
    sliding, full = (rope_parameters(config, t) for t in ("sliding_attention", "full_attention"))
    if types != expected:
        msg = (
            f"GGUF export: {config.model_type} with layer_types={types}; llama.cpp slides "
            "in every block but each 4th. Export as 'safetensors' instead."
        )
        raise SpecError(msg)
    if sliding != full:
        msg = (
            f"GGUF export: {config.model_type} with rope {sliding} in its sliding blocks and "
            f"{full} in its full ones; llama.cpp uses one for both. Export as 'safetensors' "
            "instead."
        )
        raise SpecError(msg)
    return {"attention.sliding_window": int(config.sliding_window)}


def _check_olmoe_heads(kv_heads: int, heads: int) -> None:
    if kv_heads != heads:
        msg = (
            f"GGUF export: OLMoE with {kv_heads} key/value heads for {heads} query heads; "
            f"llama.cpp's OLMoE normalises keys over all {heads} heads' width, so the file "
            "would not load. Export as 'safetensors' instead."
        )
        raise SpecError(msg)


def _granite_facts(config: Any, head_dim: int) -> dict[str, float]:
    # Granite's four multipliers, each a key llama.cpp's Granite requires; Bamba, which
    # llama.cpp runs as Granite 4.0-H, has none: the plain scales are written
    return {
        "embedding_scale": float(getattr(config, "embedding_multiplier", 1.0)),
        "residual_scale": float(getattr(config, "residual_multiplier", 1.0)),
        "attention.scale": float(getattr(config, "attention_multiplier", head_dim**-0.5)),
        "logit_scale": float(getattr(config, "logits_scaling", 1.0)),
    }


# Whether llama.cpp's graph renormalises the chosen experts' weights, per family (its Llama
# graph, which runs Mixtral, does; Qwen2-MoE's does not; no key says otherwise).
_RENORMALISES = {
    "qwen3moe": True, "olmoe": False, "llama": True, "qwen2moe": False, "lfm2moe": True,
}  # fmt: skip
_SIGMOID_GATING = 2  # gguf.ExpertGatingFuncType.SIGMOID: LFM2-MoE scores experts by sigmoid


def _moe_facts(arch: str, config: Any) -> dict[str, Any]:
    """Expert counts and width of a mixture of experts (empty for a dense model)."""
    from workbench.models.catalog import facts_from_config

    experts = facts_from_config(config).experts
    if experts is None:
        return {}
    # LFM2-MoE's first blocks are dense, which llama.cpp's lfm2moe graph is told
    leading_dense = int(config.num_dense_layers) if arch == "lfm2moe" else 0
    if experts.layers + leading_dense != config.num_hidden_layers:
        dense = list(getattr(config, "mlp_only_layers", None) or [])
        msg = (
            f"GGUF export: {config.model_type} with dense blocks (mlp_only_layers={dense}, "
            f"decoder_sparse_step={getattr(config, 'decoder_sparse_step', 1)}): experts in "
            f"{experts.layers} of {config.num_hidden_layers} blocks; llama.cpp makes every "
            "block a mixture of experts. Export as 'safetensors' instead."
        )
        raise SpecError(msg)
    given = getattr(config, "norm_topk_prob", None)
    if given is not None and bool(given) != _RENORMALISES[arch]:
        done = "renormalises" if _RENORMALISES[arch] else "does not renormalise"
        msg = (
            f"GGUF export: {config.model_type} with norm_topk_prob={given}; llama.cpp "
            f"{done} the chosen experts' weights. Export as 'safetensors' instead."
        )
        raise SpecError(msg)
    facts = {
        "expert_count": experts.count,
        "expert_used_count": experts.per_token,
        "expert_feed_forward_length": experts.intermediate,
    }
    # Qwen2-MoE's shared expert (gated by a sigmoid), Granite 4.0-H's dense MLP (ungated)
    if experts.shared_intermediate:
        facts["expert_shared_feed_forward_length"] = experts.shared_intermediate
    if arch == "lfm2moe":
        facts.update(_lfm2_moe_facts(config), leading_dense_block_count=leading_dense)
    return facts


def _lfm2_moe_facts(config: Any) -> dict[str, int]:
    """LFM2-MoE scores experts by sigmoid (and a learned bias that only picks them)."""
    if not getattr(config, "tie_word_embeddings", True):
        raise SpecError(
            "GGUF export: LFM2-MoE with an output layer of its own (tie_word_embeddings=False); "
            "llama.cpp's LFM2-MoE has none (it reads the embedding). Export as 'safetensors' "
            "instead."
        )
    scale = getattr(config, "routed_scaling_factor", None)
    if scale not in (None, 1, 1.0):
        raise SpecError(
            f"GGUF export: LFM2-MoE with routed_scaling_factor={scale}; llama.cpp's LFM2-MoE "
            "does not scale the experts' weights. Export as 'safetensors' instead."
        )
    return {"expert_gating_func": _SIGMOID_GATING}


def _check_smollm3_rope_layers(config: Any) -> None:
    # llama.cpp's SmolLM3 leaves out rotary embeddings in every 4th block, with no key to
    # say otherwise; transformers reads the pattern from config.no_rope_layers.
    layers = config.num_hidden_layers
    expected = [int((i + 1) % 4 != 0) for i in range(layers)]
    given = list(getattr(config, "no_rope_layers", None) or expected)
    if given != expected:
        msg = (
            f"GGUF export: SmolLM3 no_rope_layers={given} (1: rotary, 0: none) differ from "
            "llama.cpp's fixed pattern, no rotary embedding in every 4th block; the file would "
            "compute something else. Export as 'safetensors' instead."
        )
        raise SpecError(msg)


def rope_parameters(config: Any, layer_type: str = "full_attention") -> dict[str, Any]:
    """The rope settings of ``layer_type`` layers, from either transformers config layout.

    transformers 5 keeps them in ``config.rope_parameters`` (per layer type for Gemma 3);
    older configs have ``rope_theta`` and ``rope_scaling``.

    Examples:
        >>> from transformers import LlamaConfig
        >>> rope_parameters(LlamaConfig(rope_theta=500000.0))["rope_theta"]
        500000.0
    """
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if layer_type in rope or "full_attention" in rope:
        rope = dict(rope.get(layer_type) or {})
    if not rope:
        rope = dict(getattr(config, "rope_scaling", None) or {})
        if getattr(config, "rope_theta", None) is not None:
            rope["rope_theta"] = config.rope_theta
    return rope


def rotary_dim(config: Any) -> int:
    """How many of each head's dimensions are rotated (Phi-4-mini: three quarters).

    Examples:
        >>> from transformers import Phi3Config
        >>> rotary_dim(Phi3Config(hidden_size=3072, num_attention_heads=24,
        ...                       partial_rotary_factor=0.75))
        96
    """
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    fraction = rope_parameters(config).get("partial_rotary_factor")
    if fraction is None:
        fraction = getattr(config, "partial_rotary_factor", None) or 1.0
    return int(head_dim * fraction)


def _rope_facts(config: Any, arch: str) -> dict[str, Any]:
    rope = rope_parameters(config)
    facts: dict[str, Any] = {"rope.freq_base": float(rope.get("rope_theta", 10000.0))}
    kind = rope.get("rope_type", rope.get("type")) or "default"
    factor = rope.get("factor")
    if kind in ("default", "llama3"):  # llama3: a rope_freqs tensor, see rope_tensors()
        return facts
    if kind in ("longrope", "su") and arch == "phi3":  # and two factor tensors
        original, attention = _longrope_lengths(config, rope)
        return {
            **facts,
            "rope.scaling.attn_factor": attention,
            "rope.scaling.original_context_length": original,
        }
    if kind == "linear" and factor:
        return {**facts, "rope.scaling.type": "linear", "rope.scaling.factor": float(factor)}
    if kind == "yarn" and factor:
        original = rope.get("original_max_position_embeddings", config.max_position_embeddings)
        return {
            **facts,
            "rope.scaling.type": "yarn",
            "rope.scaling.factor": float(factor),
            "rope.scaling.original_context_length": int(original),
        }
    msg = (
        f"GGUF export: rope scaling {kind!r} (config.rope_parameters) has no llama.cpp "
        "equivalent this writer knows. Export as 'safetensors' and convert it with "
        "llama.cpp's convert_hf_to_gguf.py instead."
    )
    raise SpecError(msg)


def _check_query_scale(config: Any, head_dim: int, family: str, big_blocks: int) -> None:
    # llama.cpp scales Gemma queries by 1/sqrt(head_dim) (the 27B, known by its block count:
    # by hidden/heads), with no key to say otherwise; transformers by
    # query_pre_attn_scalar ** -0.5.
    scalar = getattr(config, "query_pre_attn_scalar", head_dim)
    if scalar is not None and int(scalar) != head_dim and config.num_hidden_layers != big_blocks:
        msg = (
            f"GGUF export: query_pre_attn_scalar={scalar} differs from head_dim={head_dim}; "
            f"llama.cpp's {family} always scales queries by 1/sqrt(head_dim), so the file "
            "would compute something else. Export as 'safetensors' instead."
        )
        raise SpecError(msg)


def _gemma2_facts(config: Any, head_dim: int) -> dict[str, Any]:
    _check_query_scale(config, head_dim, "Gemma 2", 46)
    facts: dict[str, Any] = {}
    types = list(getattr(config, "layer_types", None) or [])
    if "sliding_attention" in types and getattr(config, "sliding_window", None):
        # llama.cpp's Gemma 2 slides on even blocks and attends fully on odd ones.
        alternating = [("sliding_attention", "full_attention")[i % 2] for i in range(len(types))]
        if types != alternating:
            msg = (
                f"GGUF export: Gemma 2 layer_types {types} do not alternate sliding and full "
                "attention from the first block, the only pattern llama.cpp's Gemma 2 runs. "
                "Export as 'safetensors' instead."
            )
            raise SpecError(msg)
        facts["attention.sliding_window"] = int(config.sliding_window)
    return {**facts, **_gemma2_softcaps(config)}


_GEMMA2_CAPS = ("attn_logit_softcapping", "final_logit_softcapping")


def _gemma2_softcaps(config: Any) -> dict[str, float]:
    # llama.cpp's Gemma 2 caps attention scores and logits whatever the file says: with no
    # key at its defaults (50, 30: logits 0.42 off on a tiny model), with 0 it divides by
    # zero (NaN logits; llama-cpp-python 0.3.36). A huge cap is near the identity only in
    # f32 kernels. So a Gemma 2 that does not cap cannot be written.
    off = [key for key in _GEMMA2_CAPS if not getattr(config, key, None)]
    if off:
        settings = " and ".join(f"{key}={getattr(config, key, None)}" for key in off)
        msg = (
            f"GGUF export: Gemma 2 with {settings} (softcapping off); llama.cpp's Gemma 2 "
            "always caps (at 50 and 30 when the file says nothing), so the file would "
            "compute something else. Export as 'safetensors' instead."
        )
        raise SpecError(msg)
    return {key: float(getattr(config, key)) for key in _GEMMA2_CAPS}


def _gemma3_facts(config: Any, head_dim: int) -> dict[str, Any]:
    _check_query_scale(config, head_dim, "Gemma 3", 62)
    facts: dict[str, Any] = {}
    types = list(getattr(config, "layer_types", None) or [])
    if "sliding_attention" in types and getattr(config, "sliding_window", None):
        facts["attention.sliding_window"] = int(config.sliding_window)
        facts["attention.sliding_window_pattern"] = [t == "sliding_attention" for t in types]
        local = rope_parameters(config, "sliding_attention")
        base = local.get("rope_theta", getattr(config, "rope_local_base_freq", 10000.0))
        facts["rope.freq_base_swa"] = float(base)
    if getattr(config, "final_logit_softcapping", None):
        facts["final_logit_softcapping"] = float(config.final_logit_softcapping)
    return facts


def _longrope_lengths(config: Any, rope: dict[str, Any]) -> tuple[int, float]:
    """LongRoPE's pretraining context and its attention factor, as transformers computes it."""
    original = rope.get("original_max_position_embeddings") or getattr(
        config, "original_max_position_embeddings", config.max_position_embeddings
    )
    factor = rope.get("factor") or config.max_position_embeddings / original
    attention = rope.get("attention_factor")
    if attention is None:
        attention = math.sqrt(1 + math.log(factor) / math.log(original)) if factor > 1 else 1.0
    return int(original), float(attention)


def rope_tensors(config: Any) -> dict[str, Any]:
    """The rope tensors llama.cpp reads instead of metadata, by GGUF name (may be empty).

    Llama 3's scaling is ``rope_freqs.weight`` (:func:`rope_freqs`). Phi-3.5's and Phi-4's
    LongRoPE is two tensors of one factor per rotary frequency: ``rope_factors_short`` for
    contexts up to the pretraining length and ``rope_factors_long`` past it. transformers
    switches per input (long factors once an input is longer than
    ``original_max_position_embeddings``); llama.cpp switches per context size (long factors
    for every prompt once ``n_ctx`` is larger).

    Raises:
        SpecError: the factor lists do not have one entry per rotary frequency.

    Examples:
        >>> from transformers import Phi3Config
        >>> rope = {"rope_type": "longrope", "rope_theta": 10000.0,
        ...         "long_factor": [1.0, 2.0], "short_factor": [1.0, 1.0]}
        >>> config = Phi3Config(hidden_size=16, num_attention_heads=4, rope_parameters=rope,
        ...                     max_position_embeddings=256, original_max_position_embeddings=64)
        >>> {name: t.tolist() for name, t in rope_tensors(config).items()}
        {'rope_factors_long.weight': [1.0, 2.0], 'rope_factors_short.weight': [1.0, 1.0]}
    """
    import numpy as np

    if getattr(config, "model_type", None) == "gemma4_text":  # its global blocks' proportional rope
        from workbench.deploy.gguf_gemma4 import gemma4_rope_freqs

        return {"rope_freqs.weight": gemma4_rope_freqs(config)}
    freqs = rope_freqs(config)
    if freqs is not None:
        return {"rope_freqs.weight": freqs}
    rope = rope_parameters(config)
    if (rope.get("rope_type", rope.get("type")) or "").lower() not in ("longrope", "su"):
        return {}
    wanted = rotary_dim(config) // 2
    factors = {}
    for which in ("long", "short"):
        values = list(rope.get(f"{which}_factor") or [])
        if len(values) != wanted:
            msg = (
                f"GGUF export: LongRoPE {which}_factor has {len(values)} entries; the model "
                f"rotates {wanted} frequencies per head, and llama.cpp needs one factor each."
            )
            raise SpecError(msg)
        factors[f"rope_factors_{which}.weight"] = np.asarray(values, dtype=np.float32)
    return factors


def rope_freqs(config: Any):
    """Llama 3's per-frequency rope factors (the ``rope_freqs.weight`` tensor), or ``None``.

    llama.cpp applies Llama 3.x's long-context rope scaling through this tensor instead of
    metadata: one factor per rotary frequency, 1 for high frequencies, ``factor`` for low
    ones and a smooth blend between (Meta's ``apply_scaling``; the same formula as
    transformers' ``_compute_llama3_parameters``).

    Examples:
        >>> from transformers import LlamaConfig
        >>> rope_freqs(LlamaConfig()) is None
        True
        >>> rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
        ...         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        ...         "original_max_position_embeddings": 8192}
        >>> freqs = rope_freqs(LlamaConfig(hidden_size=2048, num_attention_heads=32,
        ...                                rope_parameters=rope))
        >>> freqs.shape, float(freqs[0]), float(freqs[-1])
        ((32,), 1.0, 32.0)
    """
    import numpy as np

    rope = rope_parameters(config)
    if (rope.get("rope_type", rope.get("type")) or "").lower() != "llama3":
        return None
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    base, factor = rope.get("rope_theta", 10000.0), rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_context = rope.get("original_max_position_embeddings", 8192)
    factors = []
    for i in range(0, dim, 2):
        wavelength = 2 * math.pi * base ** (i / dim)
        if wavelength < old_context / high:
            factors.append(1.0)
        elif wavelength > old_context / low:
            factors.append(factor)
        else:
            smooth = (old_context / wavelength - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)
