"""Write a merged model and its tokenizer as a float32 GGUF file, with the ``gguf`` package.

The file follows llama.cpp's conventions, the ones transformers reverses when it reads a GGUF
(``gguf_file=``): tensor names from ``gguf.get_tensor_name_map``, Llama's rotary permutation of
the query and key weights, Gemma's ``1 + weight`` norms, and config facts under the keys of
transformers' ``GGUF_CONFIG_MAPPING``. Quantized GGUF types are left to llama.cpp's tools.

Examples:
    >>> write_gguf(merged_model, tokenizer, Path("out/model.gguf"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from workbench.errors import SpecError

__all__ = ["GGUF_ARCHITECTURES", "write_gguf"]

# transformers model_type -> GGUF architecture this writer supports.
GGUF_ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "gemma3_text": "gemma3"}
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_BYTE = 1, 2, 3, 6


def write_gguf(model: Any, tokenizer: Any, path: Path) -> Path:
    """Write ``model`` (no adapter, not quantized) and ``tokenizer`` to ``path`` in GGUF.

    Raises:
        SpecError: the architecture is not one this writer supports.

    Examples:
        >>> write_gguf(gpt2_model, tokenizer, Path("x.gguf"))  # doctest: +SKIP
        Traceback (most recent call last):
        workbench.errors.SpecError: GGUF export supports ...
    """
    import gguf

    config = model.config
    arch = GGUF_ARCHITECTURES.get(config.model_type)
    if arch is None:
        msg = (
            f"GGUF export supports {', '.join(sorted(GGUF_ARCHITECTURES))} models, not "
            f"{config.model_type!r}. Export as 'safetensors' and convert it with llama.cpp's "
            "convert_hf_to_gguf.py instead."
        )
        raise SpecError(msg)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(str(getattr(config, "_name_or_path", "") or config.model_type))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    _add_config(writer, arch, config)
    _add_tokenizer(writer, tokenizer)
    _add_tensors(writer, arch, model)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _config_value(config: Any, attribute: str):
    if attribute == "rope_theta":
        rope = getattr(config, "rope_parameters", None) or {}
        if isinstance(rope, dict) and "full_attention" in rope:
            rope = rope["full_attention"]
        return rope.get("rope_theta", getattr(config, "rope_theta", None))
    return getattr(config, attribute, None)


def _add_config(writer: Any, arch: str, config: Any) -> None:
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    for key, attribute in GGUF_CONFIG_MAPPING[arch].items():
        value = _config_value(config, attribute) if attribute else None
        if key == "rope.dimension_count" and value is None:
            value = getattr(config, "head_dim", None)
        if value is None or isinstance(value, (list, dict)):
            continue
        name = f"{arch}.{key}"
        if isinstance(value, (bool, int)):
            writer.add_uint32(name, int(value))
        else:
            writer.add_float32(name, float(value))


def _add_tokenizer(writer: Any, tokenizer: Any) -> None:
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    byte_level = "ByteLevel" in json.dumps(state.get("pre_tokenizer"))
    vocab = tokenizer.get_vocab()
    tokens = [""] * len(vocab)
    for token, index in vocab.items():
        tokens[index] = token
    special = set(tokenizer.all_special_ids)
    kinds = [_token_kind(i, t, special, tokenizer) for i, t in enumerate(tokens)]
    writer.add_tokenizer_model("gpt2" if byte_level else "llama")
    writer.add_token_list(tokens)
    writer.add_token_types(kinds)
    if not byte_level:
        writer.add_token_scores([-float(i) for i in range(len(tokens))])
    merges = state.get("model", {}).get("merges") or []
    if merges:
        writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    for name, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        if token_id is not None:
            add(int(token_id))
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def _token_kind(index: int, token: str, special: set[int], tokenizer: Any) -> int:
    if index == tokenizer.unk_token_id:
        return TOKEN_UNKNOWN
    if index in special:
        return TOKEN_CONTROL
    if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        return TOKEN_BYTE
    return TOKEN_NORMAL


def _add_tensors(writer: Any, arch: str, model: Any) -> None:
    import gguf

    config = model.config
    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    names = gguf.get_tensor_name_map(arch_id, config.num_hidden_layers)
    tied = getattr(config, "tie_word_embeddings", False)
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        module, _, suffix = hf_name.rpartition(".")
        gguf_name = names.get_name(module)
        if gguf_name is None:
            raise SpecError(f"GGUF export: no GGUF name for tensor {hf_name!r} ({arch}).")
        data = tensor.detach().float().cpu().numpy()
        writer.add_tensor(f"{gguf_name}.{suffix}", _to_gguf_layout(arch, gguf_name, data, config))


def _to_gguf_layout(arch: str, gguf_name: str, data, config):
    """Undo what transformers' GGUF reader will do to this tensor."""
    if arch == "llama" and gguf_name.endswith(("attn_q", "attn_k")):
        heads = config.num_attention_heads
        if gguf_name.endswith("attn_k"):
            heads = config.num_key_value_heads
        # llama.cpp's rotary permutation (convert_hf_to_gguf.py, LlamaModel.permute).
        shape = data.shape
        split = data.reshape(heads, 2, shape[0] // heads // 2, *shape[1:])
        return split.swapaxes(1, 2).reshape(shape)
    if arch == "gemma3" and gguf_name.endswith("norm"):
        return data + 1  # Gemma's RMSNorm scales by (1 + weight); GGUF stores the sum
    return data
