"""Write a merged model and its tokenizer as a GGUF file that llama.cpp loads, with ``gguf``.

The file follows llama.cpp's conventions: tensor names from ``gguf.get_tensor_name_map``,
Llama's rotary permutation of the query and key weights, Gemma's ``1 + weight`` norms, every
model fact llama.cpp reads (:mod:`workbench.deploy.gguf_metadata`) and the tokenizer as
llama.cpp re-implements it (:mod:`workbench.deploy.gguf_vocab`). transformers reads it back
too (``gguf_file=``).

Tensor types (``quantization``), made by gguf-py's own quantizers (``gguf.quants``):

- ``f32``: exact; ``f16``: half the size, rounding only;
- ``q8_0``: blocks of 32 weights as int8 with one scale (about 8.5 bits a weight);
- ``q4_0``: blocks of 32 as 4-bit with one scale (4.5 bits), the smallest type gguf-py
  quantizes on CPU. The token embedding and output matrix stay Q8_0, as ``llama-quantize``
  keeps the output at a higher precision than the blocks;
- ``q6_k``, ``q5_k_m``, ``q4_k_m``, ``q3_k_m``, ``q2_k``: llama.cpp's K-quants, which gguf-py
  cannot make: an F16 file is written and requantized by llama.cpp itself, through
  llama-cpp-python (:mod:`workbench.deploy.llama_quantize`).

As in llama.cpp's converter, norms and other 1-D tensors stay F32 (llama.cpp computes with
them in F32), and a matrix whose rows are not a multiple of 32 falls back to F16.

Examples:
    The tiny model in each type: its file sizes relative to ``f32`` (the tokenizer and the F32
    norms are a larger share of so small a file than of a real model), then the types in the
    ``q4_0`` file:

    >>> import gguf
    >>> from workbench.models.loading import load_model
    >>> from workbench.models.tiny import build_tiny_model
    >>> folder = build_tiny_model("/tmp/wb-doc-deploy-gguf_writer-tiny")
    >>> loaded = load_model(str(folder), on_event=len)
    >>> files = {q: write_gguf(loaded.model, loaded.tokenizer,
    ...                        Path(f"/tmp/wb-doc-deploy-gguf_writer-{q}.gguf"), q)
    ...          for q in ("f32", "f16", "q8_0", "q4_0")}
    >>> {q: round(f.stat().st_size / files["f32"].stat().st_size, 2) for q, f in files.items()}
    {'f32': 1.0, 'f16': 0.52, 'q8_0': 0.29, 'q4_0': 0.21}
    >>> types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(files["q4_0"]).tensors}
    >>> types["token_embd.weight"], types["blk.0.attn_q.weight"], types["blk.0.attn_norm.weight"]
    ('Q8_0', 'Q4_0', 'F32')
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Literal, get_args

from workbench.deploy.gguf_metadata import rotary_dim
from workbench.errors import SpecError, WorkbenchWarning

__all__ = [
    "GGUF_ARCHITECTURES",
    "GGUFType",
    "check_gguf_model",
    "check_gguf_type",
    "gguf_bytes_per_weight",
    "gguf_model_name",
    "write_gguf",
]

# transformers model_type -> GGUF architecture this writer supports.
GGUF_ARCHITECTURES = {
    "llama": "llama",
    "mistral": "llama",  # llama.cpp runs Mistral as Llama (its converter does the same)
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "phi3": "phi3",
    "smollm3": "smollm3",
    "olmo2": "olmo2",
    "granite": "granite",
    "qwen2_moe": "qwen2moe",
    "qwen3_moe": "qwen3moe",
    "mixtral": "llama",  # llama.cpp runs Mixtral as Llama with experts, as its converter does
    "olmoe": "olmoe",
    "granitemoe": "granitemoe",
    "gemma": "gemma",
    "gemma2": "gemma2",
    "gemma3_text": "gemma3",
    "gemma4_text": "gemma4",  # its per-block token embeddings, shared keys and values
    "phi": "phi2",
    "stablelm": "stablelm",
    "gpt2": "gpt2",
    "gpt_neox": "gptneox",  # Pythia
    "olmo3": "olmo2",  # llama.cpp runs OLMo 3 as OLMo 2 with a sliding window
    "ernie4_5": "ernie4_5",
    "starcoder2": "starcoder2",
    "glm4": "glm4",
    "lfm2": "lfm2",  # LFM2's short-convolution blocks are llama.cpp's "shortconv" tensors
    "lfm2_moe": "lfm2moe",  # and LFM2-MoE's experts after its dense first blocks
    "exaone4": "exaone4",
    "granitemoehybrid": "granitehybrid",  # Granite 4.0-H: Mamba-2 and attention blocks
    "bamba": "granitehybrid",  # the same blocks, half of each attention head rotated
    "falcon_h1": "falcon-h1",  # Falcon-H1: Mamba-2 beside attention in every block
    "qwen3_5_text": "qwen35",  # Qwen3.5: Gated DeltaNet and gated attention blocks
}
GGUFType = Literal["f32", "f16", "q8_0", "q4_0", "q6_k", "q5_k_m", "q4_k_m", "q3_k_m", "q2_k"]
# Bytes a type gguf-py makes spends per weight (gguf.GGML_QUANT_SIZES: block bytes / size).
GGUF_BYTES_PER_WEIGHT = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}


def check_gguf_type(quantization: str) -> None:
    """Refuse a GGUF tensor type this writer cannot make, here.

    Raises:
        SpecError: ``quantization`` is not one of :data:`GGUFType`.
        DependencyError: a K-quant, and llama-cpp-python (which makes it) is not installed.

    Examples:
        >>> check_gguf_type("q4_k_s")
        Traceback (most recent call last):
        workbench.errors.SpecError: gguf_type='q4_k_s' is not one of ('f32', 'f16', 'q8_0', \
'q4_0', 'q6_k', 'q5_k_m', 'q4_k_m', 'q3_k_m', 'q2_k').
    """
    from workbench.deploy.llama_quantize import check_llama_quantizer

    if quantization not in get_args(GGUFType):
        raise SpecError(f"gguf_type={quantization!r} is not one of {get_args(GGUFType)}.")
    check_llama_quantizer(quantization)


def gguf_bytes_per_weight(quantization: GGUFType) -> float:
    """Disk bytes per weight an export in ``quantization`` needs at its largest.

    ``q4_0`` counts as ``q8_0``, which its embedding keeps. A K-quant counts the F16 file
    staged for llama.cpp plus its own file at Q8_0, the widest type llama.cpp falls back to
    for rows it cannot cut into blocks of 256.

    Examples:
        >>> gguf_bytes_per_weight("f16"), gguf_bytes_per_weight("q4_k_m")
        (2.0, 3.0625)
    """
    from workbench.deploy.llama_quantize import LLAMA_CPP_TYPES

    if quantization in LLAMA_CPP_TYPES:
        return GGUF_BYTES_PER_WEIGHT["f16"] + GGUF_BYTES_PER_WEIGHT["q8_0"]
    return GGUF_BYTES_PER_WEIGHT["q8_0" if quantization == "q4_0" else quantization]


def write_gguf(model: Any, tokenizer: Any, path: Path, quantization: GGUFType = "f32") -> Path:
    """Write ``model`` (no adapter, not quantized) and ``tokenizer`` to ``path`` in GGUF.

    Args:
        model: A plain transformers causal LM of a family in :data:`GGUF_ARCHITECTURES`.
        tokenizer: Its tokenizer, with the chat template the model was tuned with.
        path: The ``.gguf`` file to write.
        quantization: Tensor type of the weight matrices (see the module docstring).

    Raises:
        SpecError: an unsupported architecture or ``quantization``, or a setting llama.cpp
            cannot reproduce.
        DependencyError: a K-quant without llama-cpp-python.
        WriteError: llama.cpp failed to make the K-quant (its log says why).

    Examples:
        >>> import gguf
        >>> from workbench.models.loading import load_model
        >>> from workbench.models.tiny import build_tiny_model
        >>> loaded = load_model(str(build_tiny_model("/tmp/wb-doc-deploy-gguf_writer-tiny")),
        ...                     on_event=len)
        >>> path = write_gguf(loaded.model, loaded.tokenizer,
        ...                   Path("/tmp/wb-doc-deploy-gguf_writer-model.gguf"))
        >>> reader = gguf.GGUFReader(path)
        >>> len(reader.tensors), reader.fields["llama.attention.key_length"].contents()
        (20, 16)

        A Llama 4 model is refused before anything is written:

        >>> llama4 = build_tiny_model("/tmp/wb-doc-deploy-gguf_writer-llama4", "llama4")
        >>> llama4 = load_model(str(llama4), on_event=len)
        >>> write_gguf(llama4.model, llama4.tokenizer, Path("/tmp/wb-doc-gguf_writer-llama4.gguf"))
        ... # doctest: +ELLIPSIS
        Traceback (most recent call last):
        workbench.errors.SpecError: GGUF export supports bamba, ernie4_5, ... models, \
not 'llama4_text'. Export as 'safetensors' and convert it with llama.cpp's convert_hf_to_gguf.py \
instead.
    """
    from workbench.deploy.llama_quantize import LLAMA_CPP_TYPES, quantize_gguf

    check_gguf_type(quantization)
    model = _language_model(model)
    arch = check_gguf_model(model.config)
    _warn_if_window_is_dropped(arch, model.config)
    if quantization not in LLAMA_CPP_TYPES:
        return _write_file(model, tokenizer, path, arch, quantization)
    staged = path.with_name(f".{path.name}.f16")
    try:
        _write_file(model, tokenizer, staged, arch, "f16")
        return quantize_gguf(staged, path, quantization)
    finally:
        staged.unlink(missing_ok=True)


def _write_file(model: Any, tokenizer: Any, path: Path, arch: str, quantization: str) -> Path:
    """The GGUF file of GGUF architecture ``arch`` in a type gguf-py makes."""
    import gguf

    from workbench.deploy.gguf_metadata import add_hparams
    from workbench.deploy.gguf_vocab import add_tokenizer

    config = model.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(gguf_model_name(config, tokenizer))
    writer.add_file_type(_FILE_TYPES[quantization])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_hparams(writer, arch, config)
    add_tokenizer(writer, tokenizer, model.get_input_embeddings().weight.shape[0])
    _add_tensors(writer, arch, model, quantization)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def gguf_architecture(config: Any) -> str:
    """The GGUF architecture name of a transformers config.

    Raises:
        SpecError: the family is not one this writer supports.

    Examples:
        >>> from transformers import Qwen2Config
        >>> gguf_architecture(Qwen2Config())
        'qwen2'
    """
    arch = GGUF_ARCHITECTURES.get(config.model_type)
    if arch is None:
        msg = (
            f"GGUF export supports {', '.join(sorted(GGUF_ARCHITECTURES))} models, not "
            f"{config.model_type!r}. Export as 'safetensors' and convert it with llama.cpp's "
            "convert_hf_to_gguf.py instead."
        )
        raise SpecError(msg)
    return arch


def check_gguf_model(config: Any) -> str:
    """Refuse, before anything is merged or written, a model llama.cpp would run differently.

    Returns its GGUF architecture name.

    Raises:
        SpecError: an unsupported family, or a setting llama.cpp cannot reproduce (its
            activation, rope scaling, GPT-2's attention scaling...).

    Examples:
        >>> from transformers import GPT2Config, LlamaConfig
        >>> check_gguf_model(GPT2Config(n_embd=64, n_head=4))
        'gpt2'
        >>> check_gguf_model(LlamaConfig(hidden_size=64, num_attention_heads=4, hidden_act="relu"))
        Traceback (most recent call last):
        workbench.errors.SpecError: GGUF export: this llama model's MLP uses 'relu'; \
llama.cpp's llama graph computes SiLU. Export as 'safetensors' instead.
    """
    from workbench.deploy.gguf_metadata import hparams

    if config.model_type in _MULTIMODAL:
        config = config.get_text_config()
    arch = gguf_architecture(config)
    hparams(arch, config)
    return arch


# Multimodal checkpoints whose language model the writer exports
_MULTIMODAL = {"gemma4"}


class _LanguageModel:
    """The language model of a multimodal checkpoint, read as the writer reads a causal LM:
    its text config, and its weights under the names a text-only checkpoint gives them."""

    _PREFIX = "model.language_model."

    def __init__(self, model: Any) -> None:
        self._model = model
        self.config = model.config.get_text_config()

    def get_input_embeddings(self) -> Any:
        return self._model.get_input_embeddings()

    def get_output_embeddings(self) -> Any:
        return self._model.get_output_embeddings()

    def state_dict(self) -> dict[str, Any]:
        weights = self._model.state_dict()
        text = {f"model.{k.removeprefix(self._PREFIX)}": v for k, v in weights.items()
                if k.startswith(self._PREFIX)}  # fmt: skip
        return {**text, **{k: v for k, v in weights.items() if k.startswith("lm_head.")}}


def _language_model(model: Any) -> Any:
    """``model``, or the language model of a multimodal one (its vision and audio towers are
    not written: llama.cpp takes those from a separate projector file)."""
    return _LanguageModel(model) if model.config.model_type in _MULTIMODAL else model


_FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7, "q4_0": 2}  # gguf.LlamaFileType values


def _warn_if_window_is_dropped(arch: str, config: Any) -> None:
    # llama.cpp's Llama, Qwen 2/3 (and their MoE), SmolLM3 and StarCoder2 graphs (Llama runs
    # Mistral) have no sliding window, and its Phi-3 one turns the window off: past it, the
    # file attends to tokens transformers no longer sees.
    window = getattr(config, "sliding_window", None)
    if not getattr(config, "use_sliding_window", True):  # Qwen and SmolLM3 configs may say so
        window = None
    layer_types = getattr(config, "layer_types", None) or []
    if layer_types and "sliding_attention" not in layer_types:  # Qwen2's max_window_layers
        window = None
    droppers = ("llama", "phi3", "smollm3", "starcoder2", "qwen2", "qwen3", "qwen2moe", "qwen3moe")
    if arch in droppers and window and window < config.max_position_embeddings:
        msg = (
            f"GGUF export: {config.model_type} attends within a sliding window of {window} "
            "tokens; llama.cpp attends over the whole context, so prompts and answers "
            f"longer than {window} tokens are computed differently there."
        )
        warnings.warn(msg, WorkbenchWarning, stacklevel=3)


# llama.cpp gives a file whose general.name contains one of these (lower-cased) Phi-3's
# token rules: whitespace after every special token is dropped, except after these tokens,
# which it looks up and must find (llama-vocab.cpp).
_PHI3_NAMES = ("phi-3", "phi3")
_PHI3_KEPT = ("<unk>", "<s>", "<|endoftext|>", "</s>")


def gguf_model_name(config: Any, tokenizer: Any) -> str:
    """The file's ``general.name``: the model folder's name, unless llama.cpp would misread it.

    llama.cpp applies Phi-3's whitespace rules to any file named like Phi-3 (and fails to
    load one whose vocabulary lacks Phi-3's tokens). A name that would trigger them for a
    tokenizer that does not strip whitespace after its special tokens is written with
    ``phi 3`` instead, so llama.cpp tokenizes as transformers does.

    Examples:
        >>> from transformers import AutoTokenizer, LlamaConfig
        >>> from workbench.models.tiny import build_tiny_model
        >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-name"))
        >>> gguf_model_name(LlamaConfig(name_or_path="/models/my-tuned-model"), tokenizer)
        'my-tuned-model'
        >>> gguf_model_name(LlamaConfig(name_or_path="/models/Phi-3-copy"), tokenizer)
        'phi 3-copy'
    """
    name = Path(str(getattr(config, "_name_or_path", "") or config.model_type)).name
    lowered = name.lower()
    if not any(trigger in lowered for trigger in _PHI3_NAMES):
        return name
    vocab = tokenizer.get_vocab()
    special = [t for t in tokenizer.added_tokens_decoder.values() if t.special]
    if all(token in vocab for token in _PHI3_KEPT) and all(t.rstrip for t in special):
        return name  # a real Phi-3 tokenizer: llama.cpp's rules are its own
    for trigger in _PHI3_NAMES:
        lowered = lowered.replace(trigger, "phi 3")
    return lowered


# llama.cpp's OLMo 2, OLMoE, Phi-2, StableLM, Qwen2-MoE and GPT-NeoX graphs need an output
# matrix even when it is tied; Falcon-H1's embedding and output fold different multipliers.
_NEEDS_OUTPUT = {"olmo2", "olmoe", "phi2", "stablelm", "qwen2moe", "gptneox", "falcon-h1"}
# Families with Mamba-2 layers, written as llama.cpp's converter writes them (_mamba2_parts)
_MAMBA2 = {"granitehybrid", "falcon-h1"}
# Buffers gguf-py names without a suffix that llama.cpp reads as ``.weight`` (Gemma 4's
# per-block output scale)
_SCALES_READ_AS_WEIGHTS = ("layer_output_scale",)
# Families llama.cpp rotates as Llama does (pairs interleaved): their query and key rows are
# permuted from transformers' halves layout, as llama.cpp's converter does.
_LLAMA_ROTARY = {"llama", "smollm3", "granite", "granitemoe", "granitehybrid"}


def _add_tensors(writer: Any, arch: str, model: Any, quantization: str) -> None:
    import gguf

    from workbench.deploy.gguf_metadata import rope_tensors

    config = model.config
    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    names = gguf.get_tensor_name_map(arch_id, config.num_hidden_layers)
    tied = _output_is_the_embedding(model) and arch not in _NEEDS_OUTPUT
    scales = falcon_h1_scales(config) if arch == "falcon-h1" else {}
    for name, factors in {**rope_tensors(config), **_absent_biases(arch, config)}.items():
        writer.add_tensor(name, factors)
    for hf_name, tensor in _stacked_head_norms(model.state_dict()).items():
        if (tied and hf_name == "lm_head.weight") or hf_name.endswith("rotary_emb.inv_freq"):
            continue
        parts = _split_fused_experts(hf_name, tensor.detach().float().cpu())
        if arch in _MAMBA2:
            parts = [p for name, data in parts for p in _mamba2_parts(name, data, config)]
        if arch == "qwen35":
            parts = [_gated_deltanet_part(name, data, config) for name, data in parts]
        for part_name, part in parts:
            module, _, suffix = part_name.rpartition(".")
            # GraniteMoE's block_sparse_moe holds what gguf knows under Mixtral's mlp names
            gguf_name = names.get_name(module) or names.get_name(
                module.replace(".block_sparse_moe.", ".mlp.")
            )
            name = f"{gguf_name}.{suffix}"
            if gguf_name is None:  # Mamba-2's A and D: GGUF names without a suffix
                gguf_name = name = names.get_name(part_name)
                if name is not None and name.endswith(_SCALES_READ_AS_WEIGHTS):
                    name += ".weight"
            if gguf_name is None:
                raise SpecError(f"GGUF export: no GGUF name for tensor {hf_name!r} ({arch}).")
            data = _to_gguf_layout(arch, gguf_name, _fold(part_name, part, scales), config)
            qtype = tensor_type(name, data.shape, quantization)
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)


_HEAD_NORM = re.compile(r"^(.*\.[qk]_layernorm)\.norms\.(\d+)\.weight$")


def _stacked_head_norms(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with StableLM's per-head query and key LayerNorms (``q_layernorm.norms.{h}``)
    stacked into one ``q_layernorm.weight`` of shape (heads, head width) per block, the one
    tensor llama.cpp's StableLM graph reads for them (``attn_q_norm``, ``attn_k_norm``).

    Examples:
        >>> import torch
        >>> norms = {f"m.q_layernorm.norms.{h}.weight": torch.full((2,), h) for h in (1, 0)}
        >>> {k: v.tolist() for k, v in _stacked_head_norms(norms).items()}
        {'m.q_layernorm.weight': [[0, 0], [1, 1]]}
    """
    import torch

    heads: dict[str, dict[int, Any]] = {}
    out: dict[str, Any] = {}
    for name, tensor in state.items():
        match = _HEAD_NORM.match(name)
        if match is None:
            out[name] = tensor
            continue
        group = f"{match.group(1)}.weight"
        out.setdefault(group, None)  # keeps the block's place in the order
        heads.setdefault(group, {})[int(match.group(2))] = tensor
    for group, per_head in heads.items():
        out[group] = torch.stack([per_head[h] for h in sorted(per_head)])
    return out


def _output_is_the_embedding(model: Any) -> bool:
    """Whether the output layer is the embedding matrix itself. The weights say so, not the
    config: transformers leaves them apart when a checkpoint holds two different matrices
    under a config that asks to tie them (a multimodal Qwen3.5's text model can)."""
    output, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    return output is not None and output.weight.data_ptr() == embedding.weight.data_ptr()


def _absent_biases(arch: str, config: Any) -> dict[str, Any]:
    """Zero biases llama.cpp's GPT-NeoX, StarCoder2, LFM2-MoE and Mamba-2 graphs require of a
    model without them (its process crashes on a Mamba-2 convolution without one)."""
    import numpy as np

    hidden = config.hidden_size
    if arch in _MAMBA2 and not getattr(config, "mamba_conv_bias", True):
        from workbench.models.catalog import facts_from_config, recurrent_blocks

        channels = np.zeros(facts_from_config(config).mixer.channels, dtype=np.float32)
        return {f"blk.{block}.ssm_conv1d.bias": channels for block in recurrent_blocks(config)}
    if arch == "lfm2moe" and not getattr(config, "use_expert_bias", True):
        experts = np.zeros(config.num_experts, dtype=np.float32)  # no bias in picking them
        blocks = range(config.num_dense_layers, config.num_hidden_layers)
        return {f"blk.{block}.exp_probs_b.bias": experts for block in blocks}
    if arch == "gptneox" and not getattr(config, "attention_bias", True):
        widths = {"attn_qkv": 3 * hidden, "attn_output": hidden}
    elif arch == "starcoder2" and not getattr(config, "use_bias", True):
        head_dim = hidden // config.num_attention_heads
        kv_width = config.num_key_value_heads * head_dim
        widths = {"attn_q": hidden, "attn_k": kv_width, "attn_v": kv_width, "attn_output": hidden}
        widths.update(ffn_up=config.intermediate_size, ffn_down=hidden)
    else:
        return {}
    return {
        f"blk.{block}.{name}.bias": np.zeros(width, dtype=np.float32)
        for block in range(config.num_hidden_layers)
        for name, width in widths.items()
    }


def _split_fused_experts(hf_name: str, tensor: Any) -> list[tuple[str, Any]]:
    """``(name, array)`` pairs to write for one state-dict entry.

    transformers 5 keeps a mixture of experts' weights fused in 3D tensors named without
    ``.weight``: ``experts.gate_up_proj`` ``[experts, 2 * width, hidden]`` (the gate half
    first) and ``experts.down_proj`` ``[experts, hidden, width]``. llama.cpp wants the gate and
    up halves as separate ``[experts, width, hidden]`` tensors, in that same order of axes.
    """
    import numpy as np

    data = tensor.numpy()
    if hf_name.endswith(".expert_bias"):  # LFM2-MoE's routing bias: GGUF's exp_probs_b.bias
        return [(f"{hf_name}.bias", data)]
    if hf_name.endswith("experts.gate_up_proj"):
        gate, up = np.split(data, 2, axis=1)
        stem = hf_name.removesuffix("gate_up_proj")
        return [(f"{stem}gate_proj.weight", gate), (f"{stem}up_proj.weight", up)]
    if hf_name.endswith("experts.down_proj"):
        return [(f"{hf_name}.weight", data)]
    return [(hf_name, data)]


# Norms stay exact; llama.cpp's short-convolution kernel (LFM2) computes in float32 only.
_FLOAT32_ONLY = ("norm.weight", "shortconv.conv.weight", "ssm_conv1d.weight")


def _mamba2_parts(hf_name: str, data: Any, config: Any) -> list[tuple[str, Any]]:
    """Granite 4.0-H's and Falcon-H1's tensors as llama.cpp's converter writes them (its
    Mamba2Model).

    A is stored as ``-exp(A_log)``; A and D get a unit axis; the gated norm is split into its
    groups; the bias of the time steps is ``dt_proj``'s; the dense MLP's fused
    ``input_linear`` is its gate half then its up half, ``output_linear`` its down matrix.
    With experts (Granite 4.0-H Tiny/Small), that MLP is their shared expert and the router's
    weight is the experts' gate input.
    """
    import numpy as np

    stem, _, last = hf_name.rpartition(".")
    block = hf_name.partition(".shared_mlp.")[0]
    # beside experts, the dense MLP is their shared expert
    mlp = "mlp.shared_expert" if getattr(config, "num_local_experts", 0) else "mlp"
    if hf_name.endswith("shared_mlp.input_linear.weight"):
        gate, up = np.split(data, 2, axis=0)
        return [(f"{block}.{mlp}.gate_proj.weight", gate), (f"{block}.{mlp}.up_proj.weight", up)]
    name, value = hf_name, data
    if hf_name.endswith("block_sparse_moe.router.weight"):
        name = f"{hf_name.partition('.block_sparse_moe.')[0]}.mlp.gate.weight"
    elif last in ("A_log", "D"):
        value = (-np.exp(data) if last == "A_log" else data).reshape(-1, 1)
    elif last == "dt_bias":
        name = f"{stem}.dt_proj.bias"
    elif hf_name.endswith("mamba.norm.weight"):
        value = data.reshape(config.mamba_n_groups, -1)
    elif hf_name.endswith("shared_mlp.output_linear.weight"):
        name = f"{block}.{mlp}.down_proj.weight"
    return [(name, value)]


def falcon_h1_scales(config: Any) -> dict[str, Any]:
    """Falcon-H1's multipliers as factors of its weights and biases, by how their names end.

    transformers scales activations: the embeddings, the logits, attention's input, keys and
    output, the Mamba-2 layer's input and output (and each part of its input projection, z,
    x, B, C and the time steps, by ``ssm_multipliers``), the MLP's gate and down
    projections. llama.cpp's falcon-h1 graph reads none of them, so, as its converter does,
    each is folded into the weights of the layer it scales (the MLP's biases too; Falcon-H1's
    other biases are refused, :func:`workbench.deploy.gguf_metadata.hparams`).

    Examples:
        >>> from transformers import FalconH1Config
        >>> config = FalconH1Config(hidden_size=8, num_attention_heads=2, mamba_d_ssm=8,
        ...                         mamba_n_heads=2, mamba_d_state=2, key_multiplier=0.5,
        ...                         attention_in_multiplier=2.0, ssm_in_multiplier=10.0,
        ...                         ssm_multipliers=[1.0, 2.0, 3.0, 4.0, 5.0])
        >>> scales = falcon_h1_scales(config)
        >>> scales["self_attn.k_proj.weight"], scales["self_attn.q_proj.weight"]
        (1.0, 2.0)
        >>> factors = scales["mamba.in_proj.weight"]  # a row each: z, x, B, C, time steps
        >>> factors.shape, factors[[0, 8, 16, 18, 20], 0].tolist()
        ((22, 1), [10.0, 20.0, 30.0, 40.0, 50.0])
    """
    import numpy as np

    from workbench.models.catalog import facts_from_config

    mixer = facts_from_config(config).mixer
    widths = [mixer.inner, mixer.inner, *[mixer.groups * mixer.state] * 2, mixer.heads]
    parts = np.repeat(np.asarray(config.ssm_multipliers, dtype=np.float32), widths)
    attention_in = config.attention_in_multiplier
    gate, down = config.mlp_multipliers
    return {
        "embed_tokens.weight": config.embedding_multiplier,
        "lm_head.weight": config.lm_head_multiplier,
        "self_attn.q_proj.weight": attention_in,
        "self_attn.k_proj.weight": attention_in * config.key_multiplier,
        "self_attn.v_proj.weight": attention_in,
        "self_attn.o_proj.weight": config.attention_out_multiplier,
        "mamba.in_proj.weight": (config.ssm_in_multiplier * parts)[:, None],
        "mamba.out_proj.weight": config.ssm_out_multiplier,
        "feed_forward.gate_proj.weight": gate,
        "feed_forward.gate_proj.bias": gate,
        "feed_forward.down_proj.weight": down,
        "feed_forward.down_proj.bias": down,
    }


def _fold(hf_name: str, data: Any, scales: dict[str, Any]) -> Any:
    """``data`` times the factor :func:`falcon_h1_scales` (or another such table) gives it."""
    factor = next((f for end, f in scales.items() if f".{hf_name}".endswith(f".{end}")), None)
    return data if factor is None else (data * factor).astype(data.dtype)


def _gated_deltanet_part(hf_name: str, data: Any, config: Any) -> tuple[str, Any]:
    """Qwen3.5's tensors as llama.cpp's converter writes them (its Qwen3_5TextModel).

    A is stored as ``-exp(A_log)``, the time steps' bias as ``dt_proj``'s; with fewer key
    heads than value heads, the value heads are reordered from grouped (each key head's
    together) to tiled (one of each key head's in turn), as llama.cpp's broadcast reads them.
    """
    import numpy as np

    name, value = hf_name, data
    if hf_name.endswith(".A_log"):
        value = -np.exp(data)
    elif hf_name.endswith(".dt_bias"):
        name = hf_name.removesuffix("dt_bias") + "dt_proj.bias"
    if ".linear_attn." in hf_name:
        value = _tile_value_heads(hf_name, value, config)
    return name, value


def _tile_value_heads(hf_name: str, data: Any, config: Any) -> Any:
    import numpy as np

    key_heads, value_heads = config.linear_num_key_heads, config.linear_num_value_heads
    if key_heads == value_heads:
        return data
    width = config.linear_value_head_dim
    keys = 2 * key_heads * config.linear_key_head_dim  # q and k before v

    def tiled(rows: Any, axis: int, head_width: int) -> Any:
        shape = rows.shape
        grouped = rows.reshape(
            *shape[:axis], key_heads, value_heads // key_heads, head_width, *shape[axis + 1 :]
        )
        return np.swapaxes(grouped, axis, axis + 1).reshape(shape)

    if hf_name.endswith(("in_proj_qkv.weight", "conv1d.weight")):
        return np.concatenate([data[:keys], tiled(data[keys:], 0, width)])
    if hf_name.endswith("in_proj_z.weight"):
        return tiled(data, 0, width)
    if hf_name.endswith(("in_proj_a.weight", "in_proj_b.weight", ".A_log", ".dt_bias")):
        return tiled(data, 0, 1)
    if hf_name.endswith("out_proj.weight"):
        return tiled(data, 1, width)
    return data


def tensor_type(name: str, shape: tuple[int, ...], quantization: str):
    """The GGML type a tensor is stored in, for a file of type ``quantization``.

    Examples:
        >>> tensor_type("blk.0.attn_norm.weight", (64,), "q4_0").name
        'F32'
        >>> tensor_type("blk.0.attn_q.weight", (64, 64), "q4_0").name
        'Q4_0'
        >>> tensor_type("token_embd.weight", (512, 64), "q4_0").name
        'Q8_0'
        >>> tensor_type("blk.0.ffn_down.weight", (64, 100), "q8_0").name
        'F16'
        >>> tensor_type("blk.0.shortconv.conv.weight", (64, 3), "f16").name
        'F32'
    """
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    wanted = GGMLQuantizationType[quantization.upper()]
    if len(shape) <= 1 or name.endswith(_FLOAT32_ONLY) or not name.endswith(".weight"):
        return GGMLQuantizationType.F32
    if wanted == GGMLQuantizationType.Q4_0 and name.startswith(("token_embd.", "output.")):
        wanted = GGMLQuantizationType.Q8_0
    block_size = GGML_QUANT_SIZES[wanted][0]
    return wanted if shape[-1] % block_size == 0 else GGMLQuantizationType.F16


# Families whose RMSNorms scale by (1 + weight): Gemma's, and Qwen3.5's but its gated norm
_ONE_PLUS_NORMS = ("gemma", "gemma2", "gemma3", "qwen35")


def _interleave_rotary_pairs(data, heads: int, rotated: int):
    """Query or key rows from transformers' halves layout to llama.cpp's interleaved pairs
    (its converter's ``LlamaModel.permute``), over each head's ``rotated`` leading rows only:
    the rest (Bamba's second half) is not rotated and keeps its place.

    Examples:
        >>> import numpy as np
        >>> _interleave_rotary_pairs(np.arange(6), heads=1, rotated=4).tolist()
        [0, 2, 1, 3, 4, 5]
    """
    import numpy as np

    shape = data.shape
    per_head = data.reshape(heads, shape[0] // heads, *shape[1:])
    halves = per_head[:, :rotated].reshape(heads, 2, rotated // 2, *shape[1:])
    pairs = halves.swapaxes(1, 2).reshape(heads, rotated, *shape[1:])
    return np.concatenate([pairs, per_head[:, rotated:]], axis=1).reshape(shape)


def _to_gguf_layout(arch: str, gguf_name: str, data, config):
    """Reorder a tensor the way llama.cpp's graph for ``arch`` expects it."""
    if arch in _LLAMA_ROTARY and gguf_name.endswith(("attn_q", "attn_k")):
        heads = config.num_attention_heads
        if gguf_name.endswith("attn_k"):
            heads = config.num_key_value_heads
        return _interleave_rotary_pairs(data, heads, rotary_dim(config))
    if arch in _ONE_PLUS_NORMS and gguf_name.endswith("norm") and "ssm_norm" not in gguf_name:
        return data + 1  # an RMSNorm that scales by (1 + weight): GGUF stores the sum
    if arch == "gpt2" and data.ndim == 2 and not gguf_name.endswith("_embd"):
        return data.T.copy()  # GPT-2's Conv1D keeps its weights as [in, out]
    if data.ndim == 3 and gguf_name.endswith(("shortconv.conv", "ssm_conv1d")):
        return data.squeeze(1)  # a depthwise Conv1d's [channels, 1, width]: llama.cpp's 2D
    if arch == "gptneox" and gguf_name.endswith("attn_qkv"):
        # NeoX interleaves query, key and value per head; llama.cpp reads them one after the
        # other, each over all heads
        heads = config.num_attention_heads
        split = data.reshape(heads, 3, data.shape[0] // heads // 3, *data.shape[1:])
        return split.swapaxes(0, 1).reshape(data.shape)
    return data
