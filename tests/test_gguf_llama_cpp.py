"""GGUF exports run in llama.cpp itself: same tokens and same greedy answers as transformers.

llama.cpp comes from llama-cpp-python (``bash .ci/llama-cpp-setup.sh`` builds and installs
it). Without it these tests skip, except under CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from deploy_fixtures import LLAMA3_ROPE

import workbench as wb
from workbench.data.templates import TEMPLATES
from workbench.deploy.modelfile import render_modelfile
from workbench.models.tiny import TINY_ARCHITECTURES

# Every tiny family the GGUF writer supports (it refuses Llama 4).
ARCHITECTURES = [a for a in TINY_ARCHITECTURES if a != "llama4"]
PROMPTS = [
    "Question: What is the capital of France? Answer:",
    "<|im_start|>user\nTurn the record into JSON.<|im_end|>\n<|im_start|>assistant\n",
]
TEXTS = [
    *PROMPTS,
    "The quick brown fox jumps over the lazy dog.\n\n  indented  2024 3.14 café 🚀 don't",
    'Output: {"name": "Ada", "age": 36}</s><s>',
]
NEW_TOKENS = 12


@pytest.fixture(scope="session")
def llama_class():
    """llama_cpp.Llama, or a skip (a failure under CI) when llama-cpp-python is missing."""
    try:
        from llama_cpp import Llama
    except ImportError:
        msg = (
            "llama-cpp-python is not installed; `bash .ci/llama-cpp-setup.sh` builds and "
            "installs it"
        )
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the llama.cpp tests: {msg}", pytrace=False)
        pytest.skip(msg)
    return Llama


def exported(tmp_path, architecture, gguf_type="f32", hidden=64, layers=2):
    """A session on a fresh tiny model and the folder of its GGUF export."""
    model_dir = wb.build_tiny_model(
        tmp_path / architecture, architecture, hidden=hidden, layers=layers
    )
    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(model_dir))
    folder = s.export(f"export/{gguf_type}", format="gguf", gguf_type=gguf_type)
    return s, folder


def load(llama_class, path):
    return llama_class(model_path=str(path), n_ctx=256, logits_all=True, verbose=False, n_threads=2)


def hf_greedy(model, ids, steps=NEW_TOKENS):
    ids = list(ids)
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([ids])).logits[0, -1]
            ids.append(int(logits.argmax()))
    return ids[-steps:]


def llama_greedy(llm, ids, steps=NEW_TOKENS):
    llm.reset()
    llm.eval(list(ids))
    out = []
    for _ in range(steps):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([out[-1]])
    return out


def llama_logits(llm, ids):
    """llama.cpp's logits at every position of ``ids`` (teacher-forced)."""
    llm.reset()
    llm.eval(list(ids))
    return np.array(llm.scores[: len(ids)])


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([list(ids)])).logits[0].numpy()


@pytest.mark.llama_cpp
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_llama_cpp_answers_like_transformers(tmp_path, llama_class, architecture):
    s, folder = exported(tmp_path, architecture)
    llm = load(llama_class, folder / "model.gguf")
    for prompt in PROMPTS:
        ids = s.tokenizer(prompt).input_ids
        assert llama_greedy(llm, ids) == hf_greedy(s.model, ids), prompt


@pytest.mark.llama_cpp
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_llama_cpp_tokenizes_like_transformers(tmp_path, llama_class, architecture):
    s, folder = exported(tmp_path, architecture)
    llm = load(llama_class, folder / "model.gguf")
    for text in TEXTS:
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == (
            s.tokenizer(text).input_ids
        ), text
    im_end = s.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert llm.metadata["tokenizer.ggml.eot_token_id"] == str(im_end)
    assert llm.metadata["tokenizer.chat_template"] == s.tokenizer.chat_template


@pytest.mark.llama_cpp
@pytest.mark.parametrize("architecture", ["mistral", "phi3"])
def test_export_warns_that_llama_cpp_drops_the_window(tmp_path, llama_class, architecture):
    """The warning is true: equal logits within the 64-token window, not past it."""
    with pytest.warns(wb.WorkbenchWarning, match="sliding window of 64 tokens"):
        s, folder = exported(tmp_path, architecture)
    llm = load(llama_class, folder / "model.gguf")
    ids = s.tokenizer(" ".join(["the quick brown fox jumps over the lazy dog"] * 12)).input_ids
    assert len(ids) > 100
    theirs, ours = llama_logits(llm, ids), hf_logits(s.model, ids)
    assert np.abs(theirs[:64] - ours[:64]).max() < 0.05
    assert np.abs(theirs[80:] - ours[80:]).max() > 0.05


@pytest.mark.llama_cpp
def test_a_qwen2_sliding_window_is_warned_of_too(tmp_path, llama_class):
    """Qwen2 exported its window silently: llama.cpp's Qwen2 graph has none."""
    window = {"use_sliding_window": True, "sliding_window": 8}
    with pytest.warns(wb.WorkbenchWarning, match="qwen2 attends within a sliding window of 8"):
        s = gguf_variant(tmp_path, "qwen2", **window, layer_types=["sliding_attention"] * 2)
        folder = s.export("export/gguf", format="gguf")
    llm = load(llama_class, folder / "model.gguf")
    ids = s.tokenizer(" ".join(["the quick brown fox jumps over the lazy dog"] * 4)).input_ids
    theirs, ours = llama_logits(llm, ids), hf_logits(s.model, ids)
    assert np.abs(theirs[:8] - ours[:8]).max() < 0.05
    assert np.abs(theirs[16:] - ours[16:]).max() > 0.05
    full = {**window, "layer_types": ["full_attention"] * 2}  # max_window_layers past them all
    with warnings.catch_warnings():
        warnings.simplefilter("error", wb.WorkbenchWarning)
        gguf_variant(tmp_path / "full", "qwen2", **full).export("export/gguf", format="gguf")


@pytest.mark.llama_cpp
def test_qwen3_query_and_key_norms_reach_the_file(tmp_path, llama_class):
    import gguf

    s, folder = exported(tmp_path, "qwen3")
    names = {t.name for t in gguf.GGUFReader(folder / "model.gguf").tensors}
    assert {"blk.0.attn_q_norm.weight", "blk.1.attn_k_norm.weight"} <= names
    ids = s.tokenizer(PROMPTS[1]).input_ids
    llm = load(llama_class, folder / "model.gguf")
    assert np.abs(llama_logits(llm, ids) - hf_logits(s.model, ids)).max() < 0.05


@pytest.mark.llama_cpp
def test_gemma2_matches_past_its_window_and_refuses_a_pattern_llama_cpp_cannot_run(
    tmp_path, llama_class
):
    s, folder = exported(tmp_path, "gemma2")
    llm = load(llama_class, folder / "model.gguf")
    ids = s.tokenizer(" ".join(["the quick brown fox jumps over the lazy dog"] * 12)).input_ids
    assert len(ids) > 100  # the window is 64: sliding blocks see less than full ones
    assert np.abs(llama_logits(llm, ids) - hf_logits(s.model, ids)).max() < 0.05
    s.model.config.layer_types = ["full_attention", "sliding_attention"]
    with pytest.raises(wb.SpecError, match="do not alternate sliding and full attention"):
        s.export("export/swapped", format="gguf")
    assert not (tmp_path / "run" / "export" / "swapped").exists()


@pytest.mark.llama_cpp
def test_a_model_named_like_phi3_still_tokenizes_like_transformers(tmp_path, llama_class):
    """llama.cpp applies Phi-3's token rules by file name; a tokenizer without them is renamed."""
    import gguf

    model_dir = wb.build_tiny_model(tmp_path / "My-Phi-3-copy", "llama")
    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(model_dir))
    folder = s.export("export/gguf", format="gguf")
    name = gguf.GGUFReader(folder / "model.gguf").fields["general.name"].contents()
    assert name == "my-phi 3-copy"
    llm = load(llama_class, folder / "model.gguf")  # with the name kept: fails to load
    for text in TEXTS:
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == (
            s.tokenizer(text).input_ids
        ), text


# The split regex of GPT-4o's and Phi-4-mini's tokenizer.json, as they write it.
GPT4O_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+"
    r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
    r"[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@pytest.mark.llama_cpp
def test_a_gpt4o_split_tokenizer_is_named_so_and_tokenizes_like_transformers(
    tmp_path, llama_class, tiny_model_dir
):
    """Phi-4-mini's split (GPT-4o's o200k regex): llama.cpp must be told "gpt-4o".

    Trained with GPT-2's split, the vocabulary merges across the places where GPT-4o's split
    cuts ("HelloWorld"), so a file saying "default" tokenizes differently (checked once).
    """
    import warnings

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from workbench.deploy.gguf_writer import write_gguf

    words = ["HelloWorld", "JSONParser", "camelCase", "McDonald's", "DON'T", "iPhone", "XMLHttp"]
    corpus = [
        " ".join(words[(k + i) % len(words)] for i in range(20)) + " 12345" for k in range(50)
    ]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, initial_alphabet=alphabet))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(GPT4O_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok)
    assert tokenizer.tokenize("HelloWorld")[:2] == ["Hello", "World"]
    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(tiny_model_dir))
    with warnings.catch_warnings():
        warnings.simplefilter("error", wb.WorkbenchWarning)  # no "no pre-tokenizer known"
        path = write_gguf(s.model, tokenizer, tmp_path / "model.gguf")
    llm = llama_class(model_path=str(path), n_ctx=256, verbose=False, vocab_only=True)
    assert llm.metadata["tokenizer.ggml.pre"] == "gpt-4o"
    for text in ["HelloWorld JSONParser DON'T 12345", "McDonald's iPhone XMLHttp", *TEXTS]:
        ids = tokenizer(text).input_ids
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids, text


@pytest.mark.llama_cpp
def test_smollm3_blocks_without_rotary_embeddings_match_and_other_patterns_are_refused(
    tmp_path, llama_class
):
    s, folder = exported(tmp_path, "smollm3", layers=4)
    assert s.model.config.no_rope_layers == [1, 1, 1, 0]  # the 4th block has no rotary
    llm = load(llama_class, folder / "model.gguf")
    ids = s.tokenizer(" ".join(["the quick brown fox jumps over the lazy dog"] * 12)).input_ids
    assert np.abs(llama_logits(llm, ids) - hf_logits(s.model, ids)).max() < 0.05
    s.model.config.no_rope_layers = [1, 0, 1, 0]
    with pytest.raises(wb.SpecError, match=r"no_rope_layers=\[1, 0, 1, 0\]"):
        s.export("export/every-other", format="gguf")
    assert not (tmp_path / "run" / "export" / "every-other").exists()


@pytest.mark.llama_cpp
def test_qwen2_moe_shared_expert_matches_and_renormalised_routing_is_refused(tmp_path, llama_class):
    import gguf

    s, folder = exported(tmp_path, "qwen2_moe")
    reader = gguf.GGUFReader(folder / "model.gguf")
    names = {t.name for t in reader.tensors}
    assert {"blk.0.ffn_gate_inp_shexp.weight", "blk.1.ffn_down_shexp.weight"} <= names
    assert reader.fields["qwen2moe.expert_shared_feed_forward_length"].contents() == 128
    llm = load(llama_class, folder / "model.gguf")
    ids = s.tokenizer(" ".join(["the quick brown fox jumps over the lazy dog"] * 6)).input_ids
    assert np.abs(llama_logits(llm, ids) - hf_logits(s.model, ids)).max() < 0.05
    # llama.cpp's Qwen2-MoE does not renormalise the chosen experts' weights (1.9 logits
    # apart when transformers does), and no key changes that
    s.model.config.norm_topk_prob = True
    with pytest.raises(wb.SpecError, match="norm_topk_prob=True; llama.cpp does not"):
        s.export("export/renormalised", format="gguf")
    assert not (tmp_path / "run" / "export" / "renormalised").exists()


def longrope_phi(tmp_path, long_factor, short_factor):
    """A tiny Phi-4-mini-like model: LongRoPE from 256 to 1024 tokens, half the head rotated."""
    import json

    folder = wb.build_tiny_model(tmp_path / "phi-longrope", "phi3")
    config = json.loads((folder / "config.json").read_text())
    rope = {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
    config["rope_parameters"] = {
        **rope,
        "long_factor": long_factor,
        "short_factor": short_factor,
        "original_max_position_embeddings": 256,
    }
    config.update(max_position_embeddings=1024, original_max_position_embeddings=256)
    config.update(partial_rotary_factor=0.5, sliding_window=None)
    (folder / "config.json").write_text(json.dumps(config))
    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(folder))
    return s


@pytest.mark.llama_cpp
def test_phi3_longrope_matches_with_short_and_long_factors(tmp_path, llama_class):
    import gguf

    # one factor per rotated frequency: 16-wide heads, half rotated, 4 frequencies
    s = longrope_phi(tmp_path, [2.9, 1.8, 1.1, 3.4], [1.3, 1.5, 1.0, 1.1])
    folder = s.export("export/gguf", format="gguf")
    reader = gguf.GGUFReader(folder / "model.gguf")
    tensors = {t.name: t.data.tolist() for t in reader.tensors if t.name.startswith("rope_")}
    assert tensors.keys() == {"rope_factors_long.weight", "rope_factors_short.weight"}
    assert tensors["rope_factors_long.weight"] == pytest.approx([2.9, 1.8, 1.1, 3.4])
    assert tensors["rope_factors_short.weight"] == pytest.approx([1.3, 1.5, 1.0, 1.1])
    assert reader.fields["phi3.rope.dimension_count"].contents() == 8
    # transformers takes the short factors for inputs up to 256 tokens, llama.cpp for a
    # context of up to 256 (it rounds n_ctx up to a multiple of 256): the same numbers
    short = s.tokenizer(PROMPTS[0]).input_ids
    llm = llama_class(
        model_path=str(folder / "model.gguf"),
        n_ctx=256,
        logits_all=True,
        verbose=False,
        n_threads=2,
    )
    assert np.abs(llama_logits(llm, short) - hf_logits(s.model, short)).max() < 0.05
    # past 256 both take the long factors and the attention factor sqrt(1 + ln 4 / ln 256)
    long = s.tokenizer(" ".join(["the quick brown fox jumps over the lazy dog"] * 36)).input_ids
    assert len(long) > 256
    llm = llama_class(
        model_path=str(folder / "model.gguf"),
        n_ctx=512,
        logits_all=True,
        verbose=False,
        n_threads=2,
    )
    assert np.abs(llama_logits(llm, long) - hf_logits(s.model, long)).max() < 0.05


def test_phi3_longrope_with_a_factor_per_wrong_frequency_count_is_refused(tmp_path):
    s = longrope_phi(tmp_path, [2.0] * 4, [1.0] * 4)
    s.model.config.rope_parameters["long_factor"] = [2.0] * 8  # transformers checks at load
    with pytest.raises(wb.SpecError, match="long_factor has 8 entries; the model rotates 4"):
        s.export("export/gguf", format="gguf")
    assert not (tmp_path / "run" / "export" / "gguf").exists()


@pytest.mark.llama_cpp
def test_qwen3_moe_experts_are_split_as_llama_cpp_wants_and_odd_routing_is_refused(
    tmp_path, llama_class
):
    import gguf

    s, folder = exported(tmp_path, "qwen3_moe")
    tensors = {t.name: t for t in gguf.GGUFReader(folder / "model.gguf").tensors}
    width = s.model.config.moe_intermediate_size
    for kind in ("gate", "up"):  # written [experts, width, hidden]; listed in ggml's order
        assert tuple(tensors[f"blk.0.ffn_{kind}_exps.weight"].shape) == (64, width, 4)
    ids = s.tokenizer(" ".join(["the quick brown fox jumps over the lazy dog"] * 6)).input_ids
    llm = load(llama_class, folder / "model.gguf")
    assert np.abs(llama_logits(llm, ids) - hf_logits(s.model, ids)).max() < 0.05
    s.model.config.norm_topk_prob = False
    with pytest.raises(wb.SpecError, match="norm_topk_prob=False"):
        s.export("export/unnormalised", format="gguf")
    s.model.config.norm_topk_prob, s.model.config.mlp_only_layers = True, [0]
    with pytest.raises(wb.SpecError, match=r"dense blocks \(mlp_only_layers=\[0\]"):
        s.export("export/dense", format="gguf")


def test_olmoe_with_fewer_key_value_heads_is_refused(tmp_path):
    s, _ = exported(tmp_path, "olmoe")
    s.model.config.num_key_value_heads = 2
    with pytest.raises(wb.SpecError, match="OLMoE with 2 key/value heads for 4 query heads"):
        s.export("export/gqa", format="gguf")
    assert not (tmp_path / "run" / "export" / "gqa").exists()


def rounded_like_gguf(model, gguf_type):
    """A copy of ``model`` whose matrices went through gguf-py's quantizer and back."""
    import copy

    import gguf

    from workbench.deploy.gguf_writer import tensor_type

    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for name, param in rounded.named_parameters():
            if param.dim() != 2:
                continue
            embedding = "embed_tokens" in name or "lm_head" in name
            qtype = tensor_type(
                "token_embd.weight" if embedding else "blk.0.attn_q.weight",
                tuple(param.shape),
                gguf_type,
            )
            data = param.numpy()
            back = gguf.quants.dequantize(gguf.quants.quantize(data, qtype), qtype)
            param.copy_(torch.from_numpy(back.reshape(data.shape)))
    return rounded


def relative_rms(expected, got):
    return float(np.sqrt(((expected - got) ** 2).mean()) / expected.std())


@pytest.mark.llama_cpp
@pytest.mark.parametrize(
    "architecture", ["llama", "gemma3", "phi3", "qwen3", "gemma2", "granite", "olmo2"]
)
def test_quantized_types_load_shrink_and_answer_nearly_alike(tmp_path, llama_class, architecture):
    import gguf

    sizes = {}
    for gguf_type in ("f32", "f16", "q8_0", "q4_0"):
        s, folder = exported(tmp_path / gguf_type, architecture, gguf_type, hidden=128)
        path = folder / "model.gguf"
        sizes[gguf_type] = sum(int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors)
        llm = load(llama_class, path)
        ids = s.tokenizer(PROMPTS[0]).input_ids
        sequence = ids + hf_greedy(s.model, ids)  # teacher-forced on transformers' answer
        expected, got = hf_logits(s.model, sequence), llama_logits(llm, sequence)
        if gguf_type in ("f32", "f16"):
            assert llama_greedy(llm, ids) == hf_greedy(s.model, ids)
            continue
        # llama.cpp reads the rounded weights exactly as written: against transformers with
        # the same rounding, what is left is llama.cpp rounding activations to 8 bits in its
        # quantized matmuls (measured 0.8-2.4% of the logits' spread, for Q8_0 and Q4_0).
        rounded = hf_logits(rounded_like_gguf(s.model, gguf_type), sequence)
        assert relative_rms(rounded, got) < 0.05
        if gguf_type == "q8_0":
            # Q8_0 against the exact model: logits within 10% of their spread (measured 1-6%),
            # and where the next token differs, transformers had a near tie: the token
            # llama.cpp picks is within 0.1 std of transformers' best (measured <= 0.03).
            assert relative_rms(expected, got) < 0.1
            picked = expected[np.arange(len(sequence)), got.argmax(-1)]
            assert ((expected.max(-1) - picked) / expected.std()).max() < 0.1
    assert 0.50 <= sizes["f16"] / sizes["f32"] < 0.52  # norms stay F32
    assert 0.265 <= sizes["q8_0"] / sizes["f32"] < 0.28  # 34 bytes per 32 weights
    assert 0.14 <= sizes["q4_0"] / sizes["f32"] < 0.2  # 18 per 32; embedding kept Q8_0


def read_back_from_gguf(model, path):
    """A copy of ``model`` whose matrices are the file's own, dequantized by gguf-py.

    Undoes what the writer did to them (GGUF names, Llama's rotary permutation, GPT-2's
    transposed Conv1D weights, GPT-NeoX's per-head query/key/value, Falcon-H1's folded
    multipliers); the norms and biases stay the model's (the file keeps them in F32). An
    output the file holds apart from the embedding is read as its own matrix.
    """
    import copy

    import gguf

    from workbench.deploy.gguf_writer import falcon_h1_scales, gguf_architecture

    config = model.config
    arch = gguf_architecture(config)
    scales = falcon_h1_scales(config) if arch == "falcon-h1" else {}
    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    names = gguf.get_tensor_name_map(arch_id, config.num_hidden_layers)
    tensors = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}

    def gguf_name_of(module):  # GraniteMoE's block_sparse_moe under Mixtral's mlp names
        return names.get_name(module) or names.get_name(
            module.replace(".block_sparse_moe.", ".mlp.")
        )

    def file_tensor(module):
        tensor = tensors.get(f"{gguf_name_of(module)}.weight")
        return None if tensor is None else gguf.quants.dequantize(tensor.data, tensor.tensor_type)

    back = copy.deepcopy(model)
    output, embedding = back.get_output_embeddings(), back.get_input_embeddings()
    if "output.weight" in tensors and output.weight is embedding.weight:
        output.weight = torch.nn.Parameter(embedding.weight.clone())  # the file's, below
    with torch.no_grad():
        for name, param in back.named_parameters():
            module = name.removesuffix(".weight")
            if name.endswith("experts.gate_up_proj"):  # written as two halves, gate first
                stem = name.removesuffix("gate_up_proj")
                halves = [file_tensor(f"{stem}{half}_proj") for half in ("gate", "up")]
                experts, _, width = param.shape
                data = np.concatenate([h.reshape(experts, -1, width) for h in halves], axis=1)
            elif ".shared_mlp." in name:  # Granite 4.0-H's dense MLP, under Llama's names
                block = name.split(".shared_mlp.")[0]
                mlp = "mlp.shared_expert" if getattr(config, "num_local_experts", 0) else "mlp"
                parts = ("gate", "up") if "input_linear" in name else ("down",)
                halves = [file_tensor(f"{block}.{mlp}.{part}_proj") for part in parts]
                data = np.concatenate([h.reshape(-1, param.shape[1]) for h in halves], axis=0)
            elif name.endswith("block_sparse_moe.router.weight") and arch == "granitehybrid":
                data = file_tensor(f"{name.split('.block_sparse_moe.')[0]}.mlp.gate")
            elif param.dim() == 1 or (data := file_tensor(module)) is None:
                continue  # a norm, or a tied output
            gguf_name = gguf_name_of(module) or ""
            if arch == "gpt2" and not gguf_name.endswith("_embd"):  # Conv1D: [in, out]
                data = data.reshape(param.shape[::-1]).T
            if arch == "gptneox" and gguf_name.endswith("attn_qkv"):  # back to per head
                heads = config.num_attention_heads
                data = data.reshape(3, heads, -1, data.shape[-1]).swapaxes(0, 1)
            data = data.reshape(param.shape)
            rotated = arch in ("llama", "smollm3", "granite", "granitemoe", "granitehybrid")
            if rotated and gguf_name.endswith(("attn_q", "attn_k")):
                heads = config.num_attention_heads
                if gguf_name.endswith("attn_k"):
                    heads = config.num_key_value_heads
                data = data.reshape(heads, -1, 2, data.shape[-1]).swapaxes(1, 2)
            data = data / next((f for end, f in scales.items() if name.endswith(end)), 1.0)
            param.copy_(torch.from_numpy(np.ascontiguousarray(data).reshape(param.shape)))
    return back


K_QUANTS = ["q6_k", "q5_k_m", "q4_k_m", "q3_k_m", "q2_k"]


@pytest.mark.llama_cpp
@pytest.mark.parametrize("architecture", ["llama", "gemma3", "qwen3", "phi3", "gemma4"])
def test_k_quants_are_made_by_llama_cpp_and_computed_as_written(
    tmp_path, llama_class, architecture
):
    import gguf

    sizes = {}
    for gguf_type in K_QUANTS:
        # hidden 256: every matrix's rows cut into llama.cpp's K-quant blocks of 256
        s, folder = exported(tmp_path / gguf_type, architecture, gguf_type, hidden=256)
        path = folder / "model.gguf"
        # the F16 file staged for llama.cpp is gone; the export was checked in llama.cpp
        assert sorted(p.name for p in folder.iterdir()) == [
            "Modelfile",
            "README.md",
            "export_check.json",
            "model.gguf",
        ]
        reader = gguf.GGUFReader(str(path))
        file_type = gguf.LlamaFileType[f"MOSTLY_{gguf_type.upper()}"]
        assert reader.fields["general.file_type"].contents() == file_type
        types = {t.name: t.tensor_type.name for t in reader.tensors}
        sizes[gguf_type] = sum(int(t.n_bytes) for t in reader.tensors)
        assert types["blk.0.attn_norm.weight"] == "F32"
        matrices = Counter(t for n, t in types.items() if n.startswith("blk.") and t != "F32")
        assert gguf_type[:4].upper() in matrices  # q4_k_m: Q4_K blocks
        if gguf_type != "q6_k":  # the mixes keep some matrices finer, as llama.cpp's do
            assert len(matrices) >= 2
        ids = s.tokenizer(PROMPTS[0]).input_ids
        sequence = ids + hf_greedy(s.model, ids)
        llm = load(llama_class, path)
        # llama.cpp computes with exactly the weights in the file: against transformers with
        # the file's dequantized matrices, what is left is llama.cpp rounding activations to
        # 8 bits in blocks of 256 (measured 0.6-6.6% of the logits' spread).
        file_model = read_back_from_gguf(s.model, path)
        got = llama_logits(llm, sequence)
        assert relative_rms(hf_logits(file_model, sequence), got) < 0.1
    assert list(sizes.values()) == sorted(sizes.values(), reverse=True)  # q6_k biggest
    # the free-space check counts the F16 file staged for llama.cpp beside the K-quant one
    from workbench.deploy.export import export_bytes

    staged = s.export("export/f16", format="gguf", gguf_type="f16") / "model.gguf"
    written = staged.stat().st_size + (tmp_path / "q6_k/run/export/q6_k/model.gguf").stat().st_size
    assert written <= export_bytes(s.model, "gguf", "q6_k") <= 2 * written


def quantized_logits(tmp_path, llama_class, architecture, gguf_type):
    """Logits on the first prompt and transformers' answer to it: the exact model's, those of
    transformers running the file's own (dequantized) matrices, and llama.cpp's."""
    s, folder = exported(tmp_path / gguf_type, architecture, gguf_type, hidden=256)
    path = folder / "model.gguf"
    ids = s.tokenizer(PROMPTS[0]).input_ids
    sequence = ids + hf_greedy(s.model, ids)
    file_model = read_back_from_gguf(s.model, path)
    return (
        hf_logits(s.model, sequence),
        hf_logits(file_model, sequence),
        llama_logits(load(llama_class, path), sequence),
    )


@pytest.mark.llama_cpp
@pytest.mark.parametrize(
    "architecture", ["qwen3_moe", "qwen2_moe", "mixtral", "olmoe", "granitemoe", "lfm2_moe"]
)
def test_quantized_mixtures_of_experts_are_computed_as_written(tmp_path, llama_class, architecture):
    """The 3D expert tensors quantized by gguf-py (q8_0, q4_0) and by llama.cpp (q4_k_m)."""
    for gguf_type in ("q8_0", "q4_0", "q4_k_m"):
        _, expected, got = quantized_logits(tmp_path, llama_class, architecture, gguf_type)
        # measured 2.5-12% of the logits' spread (against the exact model: 5-74%): the
        # router picks experts from activations llama.cpp has rounded to 8 bits
        assert relative_rms(expected, got) < 0.2, gguf_type


@pytest.mark.llama_cpp
@pytest.mark.parametrize(
    ("architecture", "changes"),
    [
        # Granite 4.0-H Tiny/Small's shape: Mamba-2 blocks, routed experts, a shared expert
        (
            "granitemoehybrid",
            {"num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 48},
        ),
        # Falcon-H1's multipliers folded into its matrices (a tied output written apart)
        ("falcon_h1", {}),
        ("falcon_h1", {"tie_word_embeddings": False}),
    ],
    ids=["granite4h-experts", "falcon-h1", "falcon-h1-untied"],
)
def test_quantized_hybrids_are_computed_as_written(tmp_path, llama_class, architecture, changes):
    """llama.cpp computes what transformers does with the file's own (dequantized) matrices."""
    s = gguf_variant(tmp_path, architecture, **changes)
    ids = s.tokenizer(PROMPTS[0]).input_ids
    sequence = ids + hf_greedy(s.model, ids)
    for gguf_type in ("q8_0", "q4_0", "q4_k_m"):
        folder = s.export(f"export/{gguf_type}", format="gguf", gguf_type=gguf_type)
        expected = hf_logits(read_back_from_gguf(s.model, folder / "model.gguf"), sequence)
        got = llama_logits(load(llama_class, folder / "model.gguf"), sequence)
        # measured 0.8% for each type (Granite 4.0-H), 2-3% (Falcon-H1)
        assert relative_rms(expected, got) < 0.1, gguf_type


@pytest.mark.llama_cpp
@pytest.mark.parametrize(
    "changes",
    [
        {},
        # more value heads than key heads: llama.cpp wants them tiled, not grouped
        {"linear_num_value_heads": 12, "layer_types": ["linear_attention", "full_attention"] * 2},
        # attention in every 3rd block, every dimension rotated, a short convolution
        {
            "layer_types": ["linear_attention", "linear_attention", "full_attention"] * 2,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1e6,
                "partial_rotary_factor": 1.0,
            },
            "linear_conv_kernel_dim": 2,
        },
    ],
    ids=["trained-norms", "tiled-value-heads", "every-third-full-rotary"],
)
def test_qwen3_5_matches_llama_cpp(tmp_path, llama_class, changes):
    """Qwen3.5's norms scale by (1 + weight): random ones here, as training leaves them."""
    changes = {"num_hidden_layers": len(changes.get("layer_types", [0, 0])), **changes}
    s = gguf_variant(tmp_path, "qwen3_5", **changes)
    with torch.no_grad():
        for name, weight in s.model.named_parameters():
            if "norm" in name:
                weight.normal_(0, 0.3)
    # measured 1e-4-2e-3; rotating by the wrong sections drifted to 0.03-0.18 along the text
    assert exported_logits_gap(s, llama_class) < 5e-3


@pytest.mark.llama_cpp
def test_a_multimodal_qwen3_5_checkpoint_exports_its_text_model(tmp_path, llama_class):
    """Qwen3.5's checkpoints hold a vision tower too: the workbench tunes and exports the
    text model, which llama.cpp runs as transformers does."""
    from transformers import (
        AutoConfig,
        AutoTokenizer,
        Qwen3_5Config,
        Qwen3_5ForConditionalGeneration,
    )

    tiny = wb.build_tiny_model(tmp_path / "tiny", "qwen3_5")
    text = AutoConfig.from_pretrained(tiny).to_dict()
    vision = {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
              "out_hidden_size": text["hidden_size"]}  # fmt: skip
    torch.manual_seed(0)
    model = Qwen3_5ForConditionalGeneration(Qwen3_5Config(text_config=text, vision_config=vision))
    model.save_pretrained(tmp_path / "multimodal")
    AutoTokenizer.from_pretrained(tiny).save_pretrained(tmp_path / "multimodal")
    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(tmp_path / "multimodal"))
    folder = s.export("export/gguf", format="gguf")
    ids = list(range(5, 60))
    expected = model(input_ids=torch.tensor([ids])).logits[0].detach().numpy()
    llm = load(llama_class, folder / "model.gguf")
    assert np.abs(llama_logits(llm, ids) - expected).max() < 5e-3  # measured 1e-3


@pytest.mark.llama_cpp
@pytest.mark.parametrize(
    "architecture", ["gpt2", "gpt_neox", "lfm2", "granitemoehybrid", "qwen3_5"]
)
def test_quantized_reshaped_weights_are_computed_as_written(tmp_path, llama_class, architecture):
    """GPT-2's transposed Conv1D weights, NeoX's reordered query/key/value, LFM2's and
    Granite 4.0-H's squeezed convolution kernels (kept float32: llama.cpp's kernels compute
    in no other type, and abort the process on an F16 one) and Mamba-2's A, D and grouped
    norm, quantized."""
    import gguf

    for gguf_type in ("q8_0", "q4_0", "q4_k_m"):
        exact, expected, got = quantized_logits(tmp_path, llama_class, architecture, gguf_type)
        # read back along the wrong axis, the matrices would compute something else entirely
        assert relative_rms(exact, expected) < 0.5
        assert relative_rms(expected, got) < 0.1, gguf_type
        path = tmp_path / gguf_type / "run" / "export" / gguf_type / "model.gguf"
        kernels = ("shortconv.conv.weight", "ssm_conv1d.weight")
        tensors = gguf.GGUFReader(str(path)).tensors
        conv = {t.tensor_type.name for t in tensors if t.name.endswith(kernels)}
        recurrent = ("lfm2", "granitemoehybrid", "qwen3_5")
        assert conv == ({"F32"} if architecture in recurrent else set())


def exported_logits_gap(s, llama_class) -> float:
    """The largest gap between llama.cpp's logits for the session's GGUF export and
    transformers' own, along a 79-token text."""
    folder = s.export("export/gguf", format="gguf")
    ids = s.tokenizer(" ".join(["the quick brown fox jumps over the lazy dog"] * 6)).input_ids
    llm = load(llama_class, folder / "model.gguf")
    return float(np.abs(llama_logits(llm, ids) - hf_logits(s.model, ids)).max())


def gguf_variant(tmp_path, architecture, **changes):
    """A session on a tiny model with ``changes`` to its config (and fresh weights to fit)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = wb.build_tiny_model(tmp_path / architecture, architecture)
    config = AutoConfig.from_pretrained(folder)
    for key, value in changes.items():
        setattr(config, key, value)
    torch.manual_seed(1)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(folder))
    return s


@pytest.mark.llama_cpp
@pytest.mark.parametrize(
    ("architecture", "changes"),
    [
        ("gpt_neox", {"use_parallel_residual": False}),
        ("gpt_neox", {"attention_bias": False}),  # llama.cpp needs the biases: zeros written
        ("gpt_neox", {"tie_word_embeddings": True}),  # and the output matrix
        (
            "gpt_neox",
            {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}},
        ),
        ("gpt2", {"n_inner": 96, "activation_function": "gelu"}),
        ("starcoder2", {"use_bias": False}),  # zero biases written, as for NeoX
        ("starcoder2", {"tie_word_embeddings": False}),
        ("exaone4", {"tie_word_embeddings": False}),
        ("exaone4", {"rope_parameters": LLAMA3_ROPE}),
        ("granitemoehybrid", {"mamba_n_groups": 2, "tie_word_embeddings": False}),
        ("granitemoehybrid", {"position_embedding_type": "rope"}),  # as Bamba rotates
        # Tiny/Small: routed experts beside the dense MLP, which becomes their shared expert
        (
            "granitemoehybrid",
            {"num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 48},
        ),
        (
            "granitemoehybrid",
            {
                "num_local_experts": 8,
                "num_experts_per_tok": 1,
                "intermediate_size": 32,
                "shared_intermediate_size": 96,
                "tie_word_embeddings": False,
            },
        ),
        # Bamba: rotated halves of heads, more groups, its own output layer; biases everywhere
        ("bamba", {"mamba_n_groups": 2, "tie_word_embeddings": False}),
        ("bamba", {"attention_bias": True, "mlp_bias": True}),
        ("bamba", {"mamba_conv_bias": False}),
        ("granitemoehybrid", {"mamba_conv_bias": False}),  # zeros written: llama.cpp crashes
        # Falcon-H1: its multipliers folded into the weights (tied: the output written apart),
        # untied with more groups, no convolution bias, a Mamba-2 width of its own
        ("falcon_h1", {"mamba_n_groups": 2, "tie_word_embeddings": False}),
        ("falcon_h1", {"mamba_conv_bias": False}),
        ("falcon_h1", {"mamba_d_ssm": 96, "mamba_d_head": 24, "head_dim": 32}),
        # no routing bias (llama.cpp's graph needs one: zeros are written), every block with
        # experts, one expert a token
        ("lfm2_moe", {"use_expert_bias": False}),
        ("lfm2_moe", {"num_dense_layers": 0, "num_experts_per_tok": 1}),
        ("lfm2", {"layer_types": ["full_attention", "conv"], "conv_L_cache": 4}),
        ("lfm2", {"tie_word_embeddings": False, "block_auto_adjust_ff_dim": False}),
        (
            "lfm2",
            {
                "block_ffn_dim_multiplier": 1.5,
                "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
            },
        ),
    ],
    ids=[
        "sequential",
        "no-attention-bias",
        "tied",
        "linear-rope",
        "gpt2-width",
        "starcoder2-no-bias",
        "starcoder2-untied",
        "exaone4-untied",
        "exaone4-llama3-rope",
        "granite4h-two-groups-untied",
        "granite4h-rotary",
        "granite4h-experts",
        "granite4h-experts-top1-untied",
        "bamba-two-groups-untied",
        "bamba-biases",
        "bamba-no-conv-bias",
        "granite4h-no-conv-bias",
        "falcon-h1-two-groups-untied",
        "falcon-h1-no-conv-bias",
        "falcon-h1-own-widths",
        "lfm2-moe-no-routing-bias",
        "lfm2-moe-no-dense-block-top1",
        "lfm2-attention-first-wider-conv",
        "lfm2-untied-plain-width",
        "lfm2-width-multiplier",
    ],
)
def test_family_variants_match_llama_cpp(tmp_path, llama_class, architecture, changes):
    s = gguf_variant(tmp_path, architecture, **changes)
    folder = s.export("export/gguf", format="gguf")
    ids = s.tokenizer(" ".join(["the quick brown fox jumps over the lazy dog"] * 6)).input_ids
    llm = load(llama_class, folder / "model.gguf")
    assert np.abs(llama_logits(llm, ids) - hf_logits(s.model, ids)).max() < 0.05


@pytest.mark.llama_cpp
@pytest.mark.parametrize(
    "changes",
    [
        {"mamba_rms_norm": True, "mamba_norm_before_gate": False, "mamba_n_groups": 2},
        {"mlp_bias": True},
    ],
    ids=["gated-norm-two-groups", "mlp-biases"],
)
def test_falcon_h1_trained_norms_and_biases_match_llama_cpp(tmp_path, llama_class, changes):
    """Falcon-H1's Mamba-2 norm over groups (its real checkpoints gate before it, as
    llama.cpp does) and MLP biases, scaled by the MLP's multipliers: random values, as
    training leaves them."""
    s = gguf_variant(tmp_path, "falcon_h1", **changes)
    with torch.no_grad():
        for name, weight in s.model.named_parameters():
            if name.endswith(("norm.weight", "_proj.bias")):
                weight.normal_(1.0 if name.endswith("norm.weight") else 0.0, 0.3)
    folder = s.export("export/gguf", format="gguf")
    ids = s.tokenizer(" ".join(["the quick brown fox jumps over the lazy dog"] * 6)).input_ids
    llm = load(llama_class, folder / "model.gguf")
    assert np.abs(llama_logits(llm, ids) - hf_logits(s.model, ids)).max() < 0.05


@pytest.mark.llama_cpp
def test_olmo3_sliding_window_matches_past_it_and_other_patterns_are_refused(tmp_path, llama_class):
    import gguf

    pattern = ["sliding_attention"] * 3 + ["full_attention"]
    s = gguf_variant(tmp_path, "olmo3", num_hidden_layers=4, layer_types=pattern, sliding_window=8)
    folder = s.export("export/gguf", format="gguf")
    reader = gguf.GGUFReader(folder / "model.gguf")
    assert reader.fields["general.architecture"].contents() == "olmo2"
    assert reader.fields["olmo2.attention.sliding_window"].contents() == 8
    ids = s.tokenizer(" ".join(["the quick brown fox jumps over the lazy dog"] * 6)).input_ids
    assert len(ids) > 4 * 8  # far past the window
    llm = load(llama_class, folder / "model.gguf")
    assert np.abs(llama_logits(llm, ids) - hf_logits(s.model, ids)).max() < 0.05
    s.model.config.layer_types = ["sliding_attention", "full_attention"] * 2
    with pytest.raises(wb.SpecError, match="llama.cpp slides in every block but each 4th"):
        s.export("export/alternating", format="gguf")
    s.model.config.layer_types = pattern
    s.model.config.rope_parameters["full_attention"] = {"rope_type": "default", "rope_theta": 1e6}
    with pytest.raises(wb.SpecError, match="llama.cpp uses one for both"):
        s.export("export/two-ropes", format="gguf")
    assert not (tmp_path / "run" / "export" / "alternating").exists()


@pytest.mark.llama_cpp
def test_exaone4_sliding_window_in_the_32b_shape_matches_and_other_shapes_are_refused(
    tmp_path, llama_class
):
    """llama.cpp slides (and rotates) EXAONE 4's blocks only with 64 of them, three of each
    four sliding; transformers leaves a windowed model's global blocks unrotated."""
    import gguf

    pattern = ["full_attention" if i % 4 == 3 else "sliding_attention" for i in range(64)]
    s = gguf_variant(
        tmp_path, "exaone4", num_hidden_layers=64, layer_types=pattern, sliding_window=8
    )
    folder = s.export("export/gguf", format="gguf")
    reader = gguf.GGUFReader(folder / "model.gguf")
    assert reader.fields["exaone4.attention.sliding_window"].contents() == 8
    ids = s.tokenizer(" ".join(["the quick brown fox jumps over the lazy dog"] * 6)).input_ids
    assert len(ids) > 4 * 8  # far past the window
    llm = load(llama_class, folder / "model.gguf")
    assert np.abs(llama_logits(llm, ids) - hf_logits(s.model, ids)).max() < 0.05
    for blocks in (4, 64):  # 4 blocks of the same pattern; 64 with another one
        s.model.config.layer_types = pattern[:blocks] if blocks == 4 else pattern[::-1]
        s.model.config.num_hidden_layers = blocks
        with pytest.raises(wb.SpecError, match=f"sliding window over {blocks} blocks"):
            s.export(f"export/{blocks}", format="gguf")
        assert not (tmp_path / "run" / "export" / str(blocks)).exists()


def test_k_quant_without_llama_cpp_is_refused_before_anything_is_written(
    tmp_path, tiny_model_dir, monkeypatch
):
    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(tiny_model_dir))
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp now fails
    with pytest.raises(wb.DependencyError, match="pip install llama-cpp-python"):
        s.export("export/gguf", format="gguf", gguf_type="q4_k_m")
    assert not (tmp_path / "run" / "export").exists()
    assert s.export("export/gguf", format="gguf", gguf_type="q4_0").is_dir()  # gguf-py's own


@pytest.mark.llama_cpp
def test_a_failed_llama_cpp_quantization_names_the_file_and_leaves_no_file(tmp_path, llama_class):
    from workbench.deploy.llama_quantize import quantize_gguf

    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(b"GGUF" + bytes(60))  # a header and nothing after it
    why = f"could not quantize {damaged} to Q4_K_M: .*failed to read header"
    with pytest.raises(wb.WriteError, match=why):
        quantize_gguf(damaged, tmp_path / "model.gguf", "q4_k_m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.gguf"]


def quantizer_children(parent_pid):
    """Pids of the llama.cpp quantizer processes whose parent is ``parent_pid``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            command = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone between listing and reading
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent_pid and b"workbench.deploy.llama_quantize" in command:
            found.append(int(proc.name))
    return found


def process_state(pid):
    """The state letter of process ``pid`` (``"T"``: stopped), or ``"gone"``."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def stopped_state(pid, timeout=30.0):
    """The state of ``pid`` once a SIGSTOP sent to it has landed (``"T"``), or the state it
    ended in: the signal is delivered when the kernel next schedules it, later on a busy
    machine."""
    import time

    deadline = time.monotonic() + timeout
    while (state := process_state(pid)) not in ("T", "Z", "X", "gone"):
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    return state


@pytest.fixture
def interrupt_in_llama_log(monkeypatch):
    """Sends this process Jupyter's interrupt (SIGINT) from inside llama-cpp-python's log
    callback, the first time llama.cpp logs: where ctypes used to drop it."""
    import signal

    import llama_cpp._logger

    real = llama_cpp._logger.logger

    class InterruptOnFirstRead:
        """The callback's logger: its level, read on each log line, sends the interrupt
        once armed, and only under a call of the function named ``within`` when set."""

        armed = sent = False
        within = None

        @property
        def level(self):
            ready = InterruptOnFirstRead.armed and not InterruptOnFirstRead.sent
            if ready and (self.within is None or self._called_from(self.within)):
                InterruptOnFirstRead.sent = True
                os.kill(os.getpid(), signal.SIGINT)
            return real.level

        @staticmethod
        def _called_from(name):
            frame = sys._getframe()
            while frame is not None and frame.f_code.co_name != name:
                frame = frame.f_back
            return frame is not None

        def __getattr__(self, name):
            return getattr(real, name)

    monkeypatch.setattr(llama_cpp._logger, "logger", InterruptOnFirstRead())
    return InterruptOnFirstRead


@pytest.mark.llama_cpp
def test_an_interrupt_while_llama_cpp_loads_the_export_stops_it(
    tmp_path, llama_class, interrupt_in_llama_log
):
    """The interrupt lands while llama.cpp loads the new file to prove it (before the export
    is put in place): the export stops, and nothing is left at the target."""
    model = wb.build_tiny_model(tmp_path / "model", "llama")
    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(model))
    interrupt_in_llama_log.armed = True
    with pytest.raises(KeyboardInterrupt):
        s.export("export/gguf", format="gguf")
    assert interrupt_in_llama_log.sent
    export = tmp_path / "run" / "export"
    assert not export.exists() or sorted(p.name for p in export.iterdir()) == []
    assert s.export("export/gguf", format="gguf").joinpath("model.gguf").is_file()  # again


@pytest.mark.llama_cpp
def test_an_interrupt_while_the_check_runs_the_export_stops_the_check(
    tmp_path, llama_class, interrupt_in_llama_log
):
    s, folder = exported(tmp_path, "llama")
    (folder / "export_check.json").unlink()
    interrupt_in_llama_log.armed = True
    with pytest.raises(KeyboardInterrupt):
        s.check_export(folder)
    assert interrupt_in_llama_log.sent
    assert not (folder / "export_check.json").exists()  # no report of a check that stopped


@pytest.mark.llama_cpp
def test_an_export_whose_check_was_interrupted_is_replaced_by_the_same_call(
    tmp_path, llama_class, interrupt_in_llama_log
):
    """The cell run again after an interrupt in the export's own check: the written export
    is still the session's, so it is replaced (no overwrite=True needed) and checked."""
    model = wb.build_tiny_model(tmp_path / "model", "llama")
    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(model))
    interrupt_in_llama_log.armed, interrupt_in_llama_log.within = True, "check_gguf"
    with pytest.raises(KeyboardInterrupt):
        s.export("export/gguf", format="gguf")
    folder = tmp_path / "run" / "export" / "gguf"
    assert sorted(p.name for p in folder.iterdir()) == ["Modelfile", "README.md", "model.gguf"]
    assert s.export("export/gguf", format="gguf") == folder
    assert (folder / "export_check.json").is_file()


@pytest.mark.llama_cpp
def test_an_interrupt_during_a_k_quant_leaves_no_export_no_staged_file_and_no_process(
    tmp_path, llama_class
):
    """Jupyter's interrupt (SIGINT to the kernel's process group) while llama.cpp quantizes."""
    import signal
    import subprocess
    import time

    model = wb.build_tiny_model(tmp_path / "model", "llama", hidden=768, layers=6)
    script = f"""
import workbench as wb
s = wb.Session({str(tmp_path / "run")!r}, verbose=False)
s.load_model({str(model)!r})
s.export("export/q4", format="gguf", gguf_type="q4_k_m")
"""
    kernel = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a kernel has
    )
    children, deadline = [], time.monotonic() + 300
    while not children and kernel.poll() is None and time.monotonic() < deadline:
        children = quantizer_children(kernel.pid)
        time.sleep(0.005)
    assert children, f"llama.cpp's quantizer never ran: {kernel.communicate()[1][-2000:]}"
    # Frozen, the quantizer is still quantizing when the interrupt lands, however long this
    # process is kept off the CPU (it was not always: the kernel had moved on to the load
    # check, where llama-cpp-python's log callback used to swallow the interrupt).
    for pid in children:
        os.kill(pid, signal.SIGSTOP)
    states = [stopped_state(pid) for pid in children]
    assert states == ["T"] * len(children), f"it ended before it was frozen: {states}"
    os.killpg(kernel.pid, signal.SIGINT)
    for pid in children:
        os.kill(pid, signal.SIGCONT)
    _, err = kernel.communicate(timeout=120)
    assert kernel.returncode != 0 and "KeyboardInterrupt" in err, err[-2000:]
    assert "in quantize_gguf" in err  # it landed while llama.cpp quantized
    export = tmp_path / "run" / "export"
    assert not export.exists() or sorted(p.name for p in export.iterdir()) == []
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)  # none left running


def test_modelfile_for_chatml_is_written_beside_the_gguf(tmp_path):
    _, folder = exported(tmp_path, "llama", "q8_0")
    # export_check.json: the export ran in llama.cpp at once and was compared with the model
    assert sorted(p.name for p in folder.iterdir()) == [
        "Modelfile",
        "README.md",
        "export_check.json",
        "model.gguf",
    ]
    assert (folder / "Modelfile").read_text() == (
        "FROM ./model.gguf\n"
        'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}\n'
        "{{ .Content }}<|im_end|>\n"
        '{{ end }}<|im_start|>assistant\n"""\n'
        'PARAMETER stop "<|im_end|>"\n'
    )


def test_modelfile_for_gemma_puts_the_system_text_in_the_first_user_turn():
    text = render_modelfile(TEMPLATES["gemma"].source)
    assert '<start_of_turn>{{ if eq .Role "assistant" }}model{{ else }}{{ .Role }}' in text
    assert '{{ $system = printf "%s\\n\\n" .Content }}' in text
    assert text.endswith('<start_of_turn>model\n"""\nPARAMETER stop "<end_of_turn>"\n')
    assert "<bos>" not in text  # llama.cpp adds it (tokenizer.ggml.add_bos_token)


def test_gguf_type_is_checked_before_anything_is_written(tmp_path, tiny_model_dir):
    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(tiny_model_dir))
    with pytest.raises(wb.SpecError, match="gguf_type='q4_k_s' is not one of"):
        s.export("export/gguf", format="gguf", gguf_type="q4_k_s")
    with pytest.raises(wb.SpecError, match="applies to format='gguf' only"):
        s.export("export/merged", format="safetensors", gguf_type="q8_0")
    assert not (tmp_path / "run" / "export").exists() or not any(
        (tmp_path / "run" / "export").iterdir()
    )


@pytest.mark.slow
@pytest.mark.llama_cpp
def test_builtin_gemma_gguf_answers_paris_in_llama_cpp(tmp_path, llama_class):
    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model("gemma-3-270m")
    folder = s.export("export/gguf", format="gguf")
    prompt = "Question: What is the capital of France?\nAnswer:"
    ids = s.tokenizer(prompt).input_ids
    llm = load(llama_class, folder / "model.gguf")
    assert llm.tokenize(prompt.encode(), add_bos=True, special=True) == ids
    expected = hf_greedy(s.model, ids, 4)
    got = llama_greedy(llm, ids, 4)
    assert s.tokenizer.decode(expected).startswith(" Paris")
    assert got == expected
    # Q4_K_M, llama.cpp's usual choice, still knows: a quarter of the weights' bytes
    small = s.export("export/q4_k_m", format="gguf", gguf_type="q4_k_m") / "model.gguf"
    assert small.stat().st_size < 0.4 * (folder / "model.gguf").stat().st_size
    answer = llama_greedy(load(llama_class, small), ids, 4)
    assert s.tokenizer.decode(answer).startswith(" Paris")


def _bare_tokenizer_model(folder):
    """A tiny Llama whose tokenizer is a bare BPE: no chat template, no eos, pad or unk."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(["say the colour red green blue 0 1 2 3"] * 10, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, initializer_range=0.2,
        pad_token_id=None, bos_token_id=None, eos_token_id=None,
    )  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.llama_cpp
def test_a_tokenizer_without_special_tokens_trains_generates_and_exports(tmp_path, llama_class):
    """A bare BPE tokenizer (no chat template, end-of-sequence or pad token): the alpaca
    template's eos_token crashed load_data in Jinja, then batching had no pad token and the
    GGUF check gave transformers an empty list of end tokens."""
    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(_bare_tokenizer_model(tmp_path / "bare")))
    rows = [{"question": f"say {c}", "answer": f"{c} {c}"} for c in ["red", "green", "blue"] * 4]
    report = s.load_data(rows, validation=0.25)
    assert report.template == "chatml"  # answers end at a text marker, not a missing eos
    assert s.example(0).text.endswith("<|im_end|>\n")
    with pytest.raises(wb.SpecError, match=r"'eos_token' is undefined: the tokenizer has no"):
        s.load_data(rows, template="alpaca")
    run = s.train(max_steps=2, batch_size=4, wait=True)
    assert run.state.value == "finished"
    assert isinstance(s.generate(["say red", "say green blue"], max_new_tokens=3), list)
    s.export("export/gguf", format="gguf")
    report = s.check_export("export/gguf", max_new_tokens=6)
    assert report.all_same, report


@pytest.mark.llama_cpp
def test_a_gguf_llama_cpp_cannot_load_is_refused_and_the_target_kept(
    tmp_path, llama_class, monkeypatch
):
    """An OLMo 2 with attention biases: llama.cpp's olmo2 graph has none, and refused the
    file the export left behind (the export only warned that its check could not run).
    Such biases are now refused before writing; taken off that list here, the file stands
    for any variant llama.cpp refuses that the list does not know yet."""
    from transformers import Olmo2Config

    from workbench.deploy import gguf_metadata
    from workbench.models.tiny import build_model_from_config

    monkeypatch.setitem(gguf_metadata._BIASES_LLAMA_CPP_LACKS, "olmo2", ())

    config = Olmo2Config(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, attention_bias=True,
    )  # fmt: skip
    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(build_model_from_config(tmp_path / "olmo2", config)))
    target = tmp_path / "run" / "export" / "gguf"
    target.mkdir(parents=True)
    (target / "model.gguf").write_bytes(b"an earlier export")
    refused = r"cannot load the file written for this olmo2 model \(.*wrong number of tensors"
    with pytest.raises(wb.SpecError, match=refused + r".*\); nothing was written"):
        s.export("export/gguf", format="gguf", overwrite=True)
    assert [p.name for p in target.iterdir()] == ["model.gguf"]
    assert (target / "model.gguf").read_bytes() == b"an earlier export"
    assert not [p for p in target.parent.iterdir() if p.name != "gguf"]  # no staging left


def gemma4_session(tmp_path, **changes):
    """A session on a tiny Gemma 4 built from a fresh config (its per-block settings follow
    the block kinds only when the config is made with them), with trained-looking norms."""
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(wb.build_tiny_model(tmp_path / "tiny", "gemma4"))
    kinds = changes.pop("layer_types", ["sliding_attention", "full_attention"])
    settings = dict(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        global_head_dim=32, intermediate_size=128, hidden_size_per_layer_input=8,
        sliding_window=64, vocab_size=len(tokenizer), vocab_size_per_layer_input=len(tokenizer),
        initializer_range=0.2, num_hidden_layers=len(kinds), layer_types=kinds,
    )  # fmt: skip
    config = AutoConfig.for_model("gemma4_text", **{**settings, **changes})
    folder = wb.models.tiny.build_model_from_config(tmp_path / "gemma4", config)
    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(folder))
    with torch.no_grad():
        for name, weight in s.model.named_parameters():
            if name.endswith("norm.weight"):
                weight.normal_(1.0, 0.2)
    return s


@pytest.mark.llama_cpp
@pytest.mark.parametrize(
    "changes",
    [
        {},
        # E2B's shape: the last blocks reuse the keys and values of the last sliding and
        # global block before them, and their MLPs are twice as wide
        {
            "layer_types": ["sliding_attention", "full_attention"] * 2,
            "num_kv_shared_layers": 2,
            "use_double_wide_mlp": True,
        },
        # the larger ones: global blocks with their keys as values and fewer heads for them,
        # no per-block embeddings, capped logits, every dimension of a global head rotated
        {
            "attention_k_eq_v": True,
            "num_global_key_value_heads": 1,
            "hidden_size_per_layer_input": 0,
            "final_logit_softcapping": 5.0,
            "rope_parameters": {
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
                "full_attention": {"rope_type": "default", "rope_theta": 1e6},
            },
        },
        {"sliding_window": 8},  # the text runs past the window
    ],
    ids=["e2b-like", "shared-kv-double-mlp", "k-eq-v-capped-full-rotary", "past-the-window"],
)
def test_gemma4_matches_llama_cpp(tmp_path, llama_class, changes):
    s = gemma4_session(tmp_path, **changes)
    folder = s.export("export/gguf", format="gguf")
    ids = s.tokenizer(" ".join(["the quick brown fox jumps over the lazy dog"] * 6)).input_ids
    # keys and values kept in f32: Gemma 4 attends unscaled, sharply, and f16 ones drift by
    # up to 0.06 over four blocks
    llm = llama_class(model_path=str(folder / "model.gguf"), n_ctx=256, logits_all=True,
                      verbose=False, n_threads=2, type_k=0, type_v=0)  # fmt: skip
    # measured 0.002-0.025; logits capped at 30 by llama.cpp's default were 0.3 off, global
    # heads rotated whole 3.2
    assert np.abs(llama_logits(llm, ids) - hf_logits(s.model, ids)).max() < 0.05
    assert llama_greedy(llm, ids[:20]) == hf_greedy(s.model, ids[:20])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"layer_types": ["full_attention", "sliding_attention", "sliding_attention",
                             "full_attention"], "num_kv_shared_layers": 2},
            r"shares keys and values from block 3 on, and the blocks before it end "
            r"\['full_attention', 'sliding_attention'\]",
        ),
        (
            {"enable_moe_block": True, "num_experts": 2, "top_k_experts": 1,
             "moe_intermediate_size": 32},
            r"mixture-of-experts blocks",
        ),
        ({"attention_bias": True}, r"attention biases"),
    ],
    ids=["shared-kv-after-a-sliding-block", "experts", "biases"],
)  # fmt: skip
def test_gemma4_settings_llama_cpp_runs_otherwise_are_refused(tmp_path, changes, message):
    s = gemma4_session(tmp_path, **changes)
    with pytest.raises(wb.SpecError, match=message):
        s.export("export/gguf", format="gguf")
    assert not (tmp_path / "run" / "export" / "gguf").exists()  # nothing half-written


@pytest.mark.llama_cpp
def test_a_multimodal_gemma4_checkpoint_exports_its_language_model(tmp_path, llama_class):
    """Gemma 4's checkpoints hold vision (and audio) towers too and load as one multimodal
    model: the GGUF holds its language model, which llama.cpp runs as transformers does."""
    import gguf
    from transformers import AutoConfig, AutoTokenizer, Gemma4Config

    tiny = wb.build_tiny_model(tmp_path / "tiny", "gemma4")
    text = AutoConfig.from_pretrained(tiny).to_dict()
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16}  # fmt: skip
    config = Gemma4Config(text_config=text, vision_config=vision, audio_config=None)
    folder = wb.models.tiny.build_model_from_config(tmp_path / "multimodal", config)
    AutoTokenizer.from_pretrained(tiny).save_pretrained(folder)
    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(folder))
    assert type(s.model).__name__ == "Gemma4ForConditionalGeneration"
    exported = s.export("export/gguf", format="gguf")
    reader = gguf.GGUFReader(str(exported / "model.gguf"))
    names = [t.name for t in reader.tensors]
    assert "per_layer_token_embd.weight" in names and not any("v." in n[:2] for n in names)
    ids = s.tokenizer(" ".join(["the quick brown fox jumps over the lazy dog"] * 3)).input_ids
    llm = llama_class(model_path=str(exported / "model.gguf"), n_ctx=256, logits_all=True,
                      verbose=False, n_threads=2, type_k=0, type_v=0)  # fmt: skip
    assert np.abs(llama_logits(llm, ids) - hf_logits(s.model, ids)).max() < 0.05


@pytest.mark.llama_cpp
def test_a_tuned_gemma4_exports_and_answers_alike_in_llama_cpp(tmp_path, llama_class):
    """LoRA on every linear layer of a Gemma 4 (its per-block gates and projections too),
    merged, written to Q8_0, and checked in llama.cpp on the validation conversations."""
    import json

    from workbench.tasks import records_to_json

    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(wb.build_tiny_model(tmp_path / "gemma4", "gemma4", hidden=128)))
    train, test = records_to_json()
    s.load_data(train[:16], validation=test[:4])
    s.train(max_steps=4, batch_size=4, lora=wb.LoRA(r=8), lr=2e-3)
    folder = s.export("export/gguf", format="gguf", gguf_type="q8_0")
    check = json.loads((folder / "export_check.json").read_text())
    assert len(check["cases"]) == 4
    report = s.check_export(folder)
    assert report.same_count + report.near_tie_count == 4, report.table()


def _gemma_style_tokenizer(folder):
    """transformers' GemmaTokenizer (Gemma 3's and 4's pipeline: spaces as ▁, BPE with byte
    fallback) over a small vocabulary trained here, with Gemma's turn markers."""
    import json

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import AutoTokenizer, GemmaTokenizer

    corpus = [
        "The quick brown fox jumps over the lazy dog.\n\nIndented  code:\n    x = 1\n\n\n",
        "café 🚀 don't 2024 3.14\nline two\n\nline  four   spaced",
    ] * 20
    bpe = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    bpe.normalizer = normalizers.Replace(" ", "\u2581")
    bpe.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous")
    special = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    pieces = special + [f"<0x{i:02X}>" for i in range(256)]
    bpe.train_from_iterator(
        corpus, trainers.BpeTrainer(vocab_size=700, special_tokens=pieces, show_progress=False)
    )
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tokenizer = GemmaTokenizer(vocab=model["vocab"], merges=merges)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]}
    )
    tokenizer.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


@pytest.mark.llama_cpp
def test_a_gemma_style_tokenizer_tokenizes_in_llama_cpp_as_in_transformers(tmp_path, llama_class):
    """Gemma's SentencePiece-style BPE is written as llama.cpp's SentencePiece vocabulary with
    merge-order scores: spaces, runs of newlines, byte fallback and turn markers split alike."""
    from transformers import AutoConfig

    tokenizer = _gemma_style_tokenizer(tmp_path / "tokenizer")
    config = AutoConfig.for_model(
        "gemma4_text", hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, global_head_dim=32, intermediate_size=128, num_hidden_layers=2,
        hidden_size_per_layer_input=8, layer_types=["sliding_attention", "full_attention"],
        vocab_size=len(tokenizer), vocab_size_per_layer_input=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(tmp_path / "model"))
    llm = load(llama_class, s.export("export/gguf", format="gguf") / "model.gguf")
    texts = [
        "The quick brown fox\n\njumps", "  two leading spaces\n\n\nthree newlines",
        "café 🚀 don't 2024 3.14 ünseen", "x\n\n\n\n\ny", "<start_of_turn>user\nHi<end_of_turn>\n",
        "tabs\tand\r\nCRLF", "    x = 1\n\n\n",
    ]  # fmt: skip
    for text in texts:
        expected = s.tokenizer(text).input_ids
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == expected, text
    unseen = s.tokenizer.convert_ids_to_tokens(s.tokenizer("ünseen").input_ids)
    assert any(piece.startswith("<0x") for piece in unseen)  # byte fallback was exercised


@pytest.mark.llama_cpp
@pytest.mark.parametrize("parallel", [False, True], ids=["sequential", "parallel"])
def test_stablelm_per_head_query_key_norms_match_llama_cpp(tmp_path, llama_class, parallel):
    """StableLM 2's per-head LayerNorms of queries and keys (``qk_layernorm``), stacked into
    the one tensor per block llama.cpp reads: different random weights per head, so a head
    put in another's place would show."""
    s = gguf_variant(tmp_path, "stablelm", qk_layernorm=True, use_parallel_residual=parallel)
    with torch.no_grad():
        for name, weight in s.model.named_parameters():
            if "_layernorm.norms." in name:
                weight.normal_(1.0, 0.5)
    # measured 2e-3-7e-3, as StableLM without these norms (2e-3-0.017); heads stacked in
    # reverse order measured 2.6-9.4
    assert exported_logits_gap(s, llama_class) < 0.05


def test_the_quantizer_ends_when_the_process_that_started_it_is_killed(tmp_path):
    """A killed exporter (out of memory, a kernel restart) left llama.cpp's quantizer running
    for minutes, reparented, writing into a staging file nobody would place. Its source is a
    pipe no one writes here, so it waits inside llama.cpp until its parent is killed."""
    import signal
    import subprocess
    import time

    pytest.importorskip("llama_cpp")
    fifo = tmp_path / "never-written.gguf"
    os.mkfifo(fifo)
    parent = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-m', 'workbench.deploy.llama_quantize', "
        f"{str(fifo)!r}, {str(tmp_path / 'out.gguf')!r}, 'Q8_0'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    starter = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    quantizer = int(starter.stdout.readline())
    time.sleep(3)  # the quantizer is up and waiting in llama.cpp for its source
    assert Path(f"/proc/{quantizer}").exists()
    starter.send_signal(signal.SIGKILL)
    starter.wait()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{quantizer}/status").exists() and time.monotonic() < deadline:
        state = Path(f"/proc/{quantizer}/status").read_text()
        if "State:\tZ" in state:
            break  # ended, waiting for init to reap it
        time.sleep(0.2)
    alive = Path(f"/proc/{quantizer}/status").exists() and (
        "State:\tZ" not in Path(f"/proc/{quantizer}/status").read_text()
    )
    if alive:
        os.kill(quantizer, signal.SIGKILL)
    assert not alive, "the quantizer outlived the process that started it"
