"""Build a tiny causal language model and its tokenizer on the spot, with no download.

Tests and teaching notebooks use it instead of a hub model: it is a normal transformers
model folder (``config.json``, ``model.safetensors``, tokenizer files), built in about a
second from a config and a byte-level BPE tokenizer trained on a small built-in corpus.

Examples:
    >>> from workbench.models.tiny import build_tiny_model
    >>> folder = build_tiny_model("/tmp/wb-doc-tiny")
    >>> sorted(p.name for p in folder.iterdir())[:2]
    ['chat_template.jinja', 'config.json']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

from workbench._io import staging_folder
from workbench._quiet import no_transformers_bars
from workbench.errors import SpecError

__all__ = ["CHATML_TEMPLATE", "TINY_ARCHITECTURES", "build_model_from_config", "build_tiny_model"]

TinyArchitecture = Literal[
    "llama",
    "gpt2",
    "qwen2",
    "qwen3",
    "mistral",
    "phi3",
    "smollm3",
    "olmo2",
    "granite",
    "gemma2",
    "gemma3",
    "gemma4",
    "llama4",
    "qwen3_moe",
    "mixtral",
    "olmoe",
    "granitemoe",
    "gemma",
    "phi",
    "stablelm",
    "qwen2_moe",
    "gpt_neox",
    "ernie4_5",
    "starcoder2",
    "olmo3",
    "glm4",
    "lfm2",
    "exaone4",
    "granitemoehybrid",
    "lfm2_moe",
    "qwen3_5",
    "bamba",
    "falcon_h1",
]
TINY_ARCHITECTURES: tuple[str, ...] = get_args(TinyArchitecture)

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]

# A ChatML template (the format of Qwen and SmolLM): it makes the tiny model behave like an
# instruction model, so chat-template code paths run in tests.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = """
The quick brown fox jumps over the lazy dog. A small model learns from examples.
Question: What is the capital of France? Answer: Paris.
Question: What is two plus two? Answer: four.
Instruction: Turn the record into JSON. Input: name Ada, age 36, city London.
Output: {"name": "Ada", "age": 36, "city": "London"}
Translate to French: good morning -> bonjour. Summarize: the meeting moved to Monday.
user assistant system Hello! How can I help you today? Thank you, goodbye.
0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 100 2024 3.14 yes no true false null
positive negative neutral red green blue cat dog bird fish apple banana cherry
"""


def _train_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS.split("\n") * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )


def _alternating(recurrent: str, attention: str, layers: int) -> list[str]:
    """A hybrid's ``layer_types``: a recurrent block, then an attention one, in turn."""
    return [recurrent if i % 2 == 0 else attention for i in range(layers)]


def _config(architecture: str, vocab_size: int, hidden: int, layers: int, tokenizer):
    import transformers

    ids = dict(
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    # initializer_range=0.2: with the default 0.02 the frozen output layer cannot produce
    # confident logits and LoRA training stalls near log(vocab) (see design.md).
    common = dict(vocab_size=vocab_size, initializer_range=0.2, tie_word_embeddings=True, **ids)
    heads = max(2, hidden // 16)
    if architecture == "gpt2":
        return transformers.GPT2Config(
            n_embd=hidden, n_layer=layers, n_head=heads, n_positions=1024, **common
        )
    shape = dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        intermediate_size=hidden * 2,
        max_position_embeddings=1024,
        **common,
    )
    granite_multipliers = {
        "embedding_multiplier": 12.0,
        "residual_multiplier": 0.22,
        "attention_multiplier": 1 / 16,
        "logits_scaling": 8.0,
    }
    # Each family's config class and what sets it apart from Llama's shape.
    families = {
        "llama": (transformers.LlamaConfig, {}),
        "qwen2": (transformers.Qwen2Config, {}),
        # per-head RMSNorm of queries and keys, a head width of its own
        "qwen3": (transformers.Qwen3Config, {"head_dim": 16}),
        # Llama's blocks attending within a sliding window
        "mistral": (transformers.MistralConfig, {"sliding_window": 64}),
        # mixture of experts, its router a linear layer of its own
        "llama4": (
            transformers.Llama4TextConfig,
            {"intermediate_size_mlp": hidden * 2, "num_local_experts": 4},
        ),
        # mixture of experts, the experts fused in 3D weights
        # (the chosen experts' weights renormalised, as in the published Qwen3-MoE models)
        "qwen3_moe": (
            transformers.Qwen3MoeConfig,
            {
                "num_experts": 4,
                "num_experts_per_tok": 2,
                "moe_intermediate_size": hidden,
                "norm_topk_prob": True,
            },
        ),
        # fused query/key/value and gate/up projections, a sliding window, partial rotary
        "phi3": (
            transformers.Phi3Config,
            {"sliding_window": 64, "partial_rotary_factor": 0.5},
        ),
        # Llama's blocks, every 4th without rotary embeddings (built with 4 blocks to show it)
        "smollm3": (transformers.SmolLM3Config, {}),
        # norms after attention and MLP, query and key norms over all heads
        "olmo2": (transformers.Olmo2Config, {}),
        # Llama's blocks with embedding, residual, attention and logit multipliers
        "granite": (transformers.GraniteConfig, granite_multipliers),
        # soft-capped attention logits, sliding and full attention alternating
        "gemma2": (
            transformers.Gemma2Config,
            {"head_dim": 16, "sliding_window": 64, "query_pre_attn_scalar": 16},
        ),
        # Llama's attention, every block's MLP a mixture of experts
        "mixtral": (transformers.MixtralConfig, {"num_local_experts": 4, "num_experts_per_tok": 2}),
        # OLMo 2's norms and a mixture of experts (as many key/value heads as query heads)
        "olmoe": (
            transformers.OlmoeConfig,
            {"num_experts": 4, "num_experts_per_tok": 2, "num_key_value_heads": heads},
        ),
        # Granite's multipliers and a mixture of experts (its router a bare weight)
        "granitemoe": (
            transformers.GraniteMoeConfig,
            {**granite_multipliers, "num_local_experts": 4, "num_experts_per_tok": 2},
        ),
        # Qwen2-MoE: routed experts (chosen weights not renormalised) and a gated shared one
        "qwen2_moe": (
            transformers.Qwen2MoeConfig,
            {
                "num_experts": 4,
                "num_experts_per_tok": 2,
                "moe_intermediate_size": hidden,
                "shared_expert_intermediate_size": hidden * 2,
            },
        ),
        # Gemma 1: (1 + weight) norms, the embedding scaled by sqrt(hidden), GELU
        "gemma": (transformers.GemmaConfig, {"head_dim": 16}),
        # Phi-2: LayerNorm with biases, attention and MLP side by side, partial rotary
        "phi": (transformers.PhiConfig, {"partial_rotary_factor": 0.5}),
        # StableLM 2: LayerNorm, biased query/key/value, a quarter of each head rotated
        "stablelm": (
            transformers.StableLmConfig,
            {"partial_rotary_factor": 0.25, "use_qkv_bias": True},
        ),
        # GPT-NeoX (Pythia): query/key/value fused per head, a quarter of each head rotated,
        # attention and MLP side by side, an output matrix of its own
        "gpt_neox": (
            transformers.GPTNeoXConfig,
            {"num_key_value_heads": heads, "tie_word_embeddings": False},
        ),
        # ERNIE 4.5 (0.3B): Llama's blocks, its rotary on interleaved pairs
        "ernie4_5": (transformers.Ernie4_5Config, {"head_dim": 16}),
        # StarCoder2: LayerNorm and biases everywhere, a plain GELU MLP
        "starcoder2": (transformers.Starcoder2Config, {}),
        # OLMo 3: OLMo 2's blocks, three of every four attending within a sliding window
        "olmo3": (transformers.Olmo3Config, {"sliding_window": 64}),
        # GLM-4: fused gate/up projection, norms after attention and MLP, half of each head
        # rotated on interleaved pairs
        "glm4": (transformers.Glm4Config, {"head_dim": 16}),
        # LFM2: gated short convolutions in every other block, attention with query and key
        # norms in the rest; the MLP width is derived (two thirds, rounded up to 32)
        "lfm2": (
            transformers.Lfm2Config,
            {
                "layer_types": _alternating("conv", "full_attention", layers),
                "block_multiple_of": 32,
            },
        ),
        # LFM2-MoE: LFM2's blocks, the first with a dense MLP, the others with experts picked
        # by sigmoid scores plus a learned bias
        "lfm2_moe": (
            transformers.Lfm2MoeConfig,
            {
                "layer_types": _alternating("conv", "full_attention", layers),
                "num_dense_layers": 1,
                "num_experts": 4,
                "num_experts_per_tok": 2,
                "moe_intermediate_size": hidden,
            },
        ),
        # Qwen3.5: Gated DeltaNet blocks and gated attention ones (a query projection twice
        # as wide, a quarter of each head rotated), norms that scale by (1 + weight)
        "qwen3_5": (
            transformers.Qwen3_5TextConfig,
            {
                "head_dim": 16,
                "layer_types": _alternating("linear_attention", "full_attention", layers),
                "linear_num_key_heads": heads,
                "linear_num_value_heads": heads,
                "linear_key_head_dim": 16,
                "linear_value_head_dim": 16,
            },
        ),
        # EXAONE 4 (1.2B shape): norms only after attention and MLP, query and key norms,
        # every block global (a sliding window would leave the global blocks unrotated)
        "exaone4": (
            transformers.Exaone4Config,
            {"head_dim": 16, "sliding_window": None, "layer_types": ["full_attention"] * layers},
        ),
        # Granite 4.0-H (350M, 1B): Mamba-2 blocks and attention blocks without position
        # encoding, Granite's multipliers, one dense MLP per block
        "granitemoehybrid": (
            transformers.GraniteMoeHybridConfig,
            {
                **granite_multipliers,
                "layer_types": _alternating("mamba", "attention", layers),
                "num_local_experts": 0,
                "shared_intermediate_size": hidden * 2,
                "position_embedding_type": "nope",
                "mamba_n_heads": heads,
                "mamba_d_head": 2 * hidden // heads,
                "mamba_d_state": 16,
                "mamba_chunk_size": 16,
            },
        ),
        # Bamba (9B): Granite 4.0-H's blocks without its multipliers; its attention blocks
        # rotate half of each head
        "bamba": (
            transformers.BambaConfig,
            {
                "attn_layer_indices": list(range(1, layers, 2)),
                "mamba_n_heads": heads,
                "mamba_d_state": 16,
                "mamba_chunk_size": 16,
            },
        ),
        # Falcon-H1 (0.5B-34B): a Mamba-2 layer beside attention in every block, and
        # multipliers on the embeddings, keys, both mixers' inputs and outputs, the MLP and
        # the logits (its published values are of this size, none of them 1)
        "falcon_h1": (
            transformers.FalconH1Config,
            {
                "head_dim": 16,
                "mamba_d_ssm": 2 * hidden,
                "mamba_n_heads": heads,
                "mamba_d_head": 2 * hidden // heads,
                "mamba_d_state": 16,
                "mamba_chunk_size": 16,
                "embedding_multiplier": 2.0,
                "lm_head_multiplier": 0.5,
                "attention_in_multiplier": 0.9,
                "attention_out_multiplier": 0.8,
                "key_multiplier": 0.7,
                "ssm_in_multiplier": 1.2,
                "ssm_out_multiplier": 0.6,
                "mlp_multipliers": [0.9, 0.8],
                "ssm_multipliers": [0.7, 0.9, 1.1, 0.8, 1.2],
            },
        ),
        "gemma3": (
            transformers.Gemma3TextConfig,
            {"head_dim": 16, "sliding_window": 64, "query_pre_attn_scalar": 16},
        ),
        # Gemma 4: sliding and global blocks in turn, the global ones with wider heads and a
        # quarter of each rotated; each block with its own token embedding
        "gemma4": (
            transformers.Gemma4TextConfig,
            {
                "head_dim": 16,
                "global_head_dim": 32,
                "sliding_window": 64,
                "hidden_size_per_layer_input": 8,
                "vocab_size_per_layer_input": vocab_size,
                "layer_types": [
                    *(
                        "full_attention" if i % 2 else "sliding_attention"
                        for i in range(layers - 1)
                    ),
                    "full_attention",  # transformers makes the last block global
                ],
            },
        ),
    }
    config_class, extra = families[architecture]
    return config_class(**{**shape, **extra})  # a family's own values win


def build_tiny_model(
    path: str | Path,
    architecture: TinyArchitecture = "llama",
    hidden: int = 64,
    layers: int = 2,
    vocab_size: int = 512,
    chat_template: bool = True,
    seed: int = 0,
) -> Path:
    """Write a tiny, randomly initialised causal LM and its tokenizer to ``path``.

    The folder is written under a temporary name and renamed, so it is complete or absent.

    Args:
        path: Folder to create (replaced if it exists).
        architecture: ``"llama"``, ``"gpt2"`` (Conv1D layers), ``"qwen2"``, ``"qwen3"``
            (query and key norms), ``"mistral"`` (sliding window), ``"phi3"`` (fused projections),
            ``"smollm3"`` (no rotary embedding in every 4th block), ``"olmo2"`` (norms after
            each sublayer), ``"granite"`` (scaling multipliers), ``"gemma"``, ``"gemma2"``,
            ``"gemma3"``, ``"gemma4"`` (per-block token embeddings, wider global heads),
            ``"phi"`` (Phi-2: LayerNorm, parallel blocks), ``"stablelm"``,
            ``"gpt_neox"`` (Pythia: fused query/key/value, untied output), ``"ernie4_5"``,
            ``"starcoder2"``, ``"olmo3"`` (OLMo 2 with sliding windows), ``"glm4"``,
            ``"lfm2"`` (short convolutions and attention, block by block), ``"exaone4"``,
            ``"granitemoehybrid"`` (Granite 4.0-H: Mamba-2 and attention blocks), ``"bamba"``
            (Mamba-2 and attention blocks, half of each head rotated), ``"falcon_h1"``
            (Falcon-H1: Mamba-2 beside attention in every block, with multipliers),
            ``"lfm2_moe"`` (LFM2 with experts after a dense first block), ``"qwen3_5"``
            (Qwen3.5: Gated DeltaNet and gated attention blocks), or
            a mixture of experts: ``"llama4"`` (Llama 4's text model, its router a linear
            layer), ``"qwen3_moe"`` (its experts fused in 3D weights), ``"qwen2_moe"`` (and a
            shared expert), ``"mixtral"``, ``"olmoe"`` or ``"granitemoe"``.
        hidden: Hidden size; attention heads are ``hidden // 16``.
        layers: Number of transformer blocks.
        vocab_size: Size of the byte-level BPE vocabulary trained on the built-in corpus.
        chat_template: Give the tokenizer a ChatML chat template.
        seed: Seed for the weights, so two builds are identical.

    Returns:
        The folder, loadable with ``AutoModelForCausalLM.from_pretrained``.

    Raises:
        SpecError: ``architecture`` is not one of :data:`TINY_ARCHITECTURES`.

    Examples:
        >>> folder = build_tiny_model("/tmp/wb-doc-tiny-gpt2", architecture="gpt2")
        >>> (folder / "model.safetensors").exists()
        True
        >>> build_tiny_model("/tmp/wb-doc-tiny-bad", architecture="bloom")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        workbench.errors.SpecError: architecture='bloom' is not one of ('llama', 'gpt2', ...)
    """
    if architecture not in TINY_ARCHITECTURES:
        msg = f"architecture={architecture!r} is not one of {TINY_ARCHITECTURES}"
        raise SpecError(msg)
    tokenizer = _train_tokenizer(vocab_size)
    if chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    config = _config(architecture, len(tokenizer), hidden, layers, tokenizer)
    return _write(path, config, tokenizer, seed)


def build_model_from_config(path: str | Path, config: Any, seed: int = 0) -> Path:
    """Write a randomly initialised model of any transformers ``config`` with the tiny tokenizer.

    For a family :func:`build_tiny_model` does not list: the config's sizes are kept, its
    vocabulary and special token ids become the tokenizer's (a ChatML chat template, as
    there). The folder is complete or absent, as there.

    Examples:
        >>> from transformers import BloomConfig
        >>> config = BloomConfig(hidden_size=32, n_layer=2, n_head=2)
        >>> folder = build_model_from_config("/tmp/wb-doc-tiny-bloom", config)
        >>> from transformers import AutoConfig
        >>> AutoConfig.from_pretrained(folder).vocab_size
        512
    """
    tokenizer = _train_tokenizer(512)
    tokenizer.chat_template = CHATML_TEMPLATE
    config.vocab_size = len(tokenizer)
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    return _write(path, config, tokenizer, seed)


def _write(path: str | Path, config: Any, tokenizer: Any, seed: int) -> Path:
    """The model of ``config`` (seeded random weights) and ``tokenizer``, staged and renamed."""
    import torch
    from transformers import AutoModelForCausalLM

    target = Path(path)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # trained, an LFM2-MoE's routing bias is not zero, as it starts,
        for name, buffer in model.named_buffers():  # nor a Gemma 4 block's output scale 1
            if name.endswith("expert_bias"):
                buffer.normal_(std=0.5)
            if name.endswith("layer_scalar"):
                buffer.uniform_(0.5, 1.5)
    with staging_folder(target, replace=True) as staging, no_transformers_bars():
        model.save_pretrained(staging)  # no "Writing model shards" bar in the cell
        tokenizer.save_pretrained(staging)
    return target
