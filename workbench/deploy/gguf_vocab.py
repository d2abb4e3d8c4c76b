"""The tokenizer a GGUF file carries under ``tokenizer.*``, as llama.cpp reads it.

llama.cpp re-implements the tokenizer from these keys (``llama_vocab::load`` in
``src/llama-vocab.cpp``), so each must say what the transformers tokenizer does:

- ``tokenizer.ggml.model``: ``gpt2`` for byte-level BPE (the tiny model, Qwen, Llama 3,
  SmolLM), ``llama`` for SentencePiece-style vocabularies with ``▁`` and byte fallback
  (Gemma, Llama 2).
- ``tokenizer.ggml.pre``: which split-before-BPE regex to use, read from the tokenizer's
  pre-tokenizer (:func:`pre_tokenizer_name`). A wrong one tokenizes differently.
- tokens, token types (added special tokens are ``CONTROL``, other added tokens
  ``USER_DEFINED``, ``<0xNN>`` pieces ``BYTE``) and merges (BPE) or scores (SentencePiece).
- the special ids (bos, eos, unk, pad and the end-of-turn token of the chat template, so
  generation stops at ``<|im_end|>`` or ``<end_of_turn>``), whether encoding adds bos/eos,
  whether SentencePiece adds a leading space, and ``tokenizer.chat_template``.

Examples:
    >>> from workbench.data.templates import TEMPLATES
    >>> end_of_turn(TEMPLATES["chatml"].source)
    '<|im_end|>'
"""

from __future__ import annotations

import json
import warnings
from typing import Any

from workbench.chat import END_OF_TURN_TOKENS
from workbench.errors import WorkbenchWarning

__all__ = ["END_OF_TURN_TOKENS", "add_tokenizer", "end_of_turn", "pre_tokenizer_name"]

TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = range(
    1, 7
)

# Split-regexes of known byte-level BPE tokenizers -> llama.cpp's pre-tokenizer name
# (llama-vocab.cpp). The regexes are the ones in those models' tokenizer.json.
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
    r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_REGEX = _LLAMA3_REGEX.replace(r"\p{N}{1,3}", r"\p{N}")
# GPT-4o's o200k split (Phi-4-mini): a capitalised word ends where the next one begins.
_UPPER, _LOWER = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]", r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
_CONTRACTION = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
_GPT4O_REGEX = (
    rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+{_CONTRACTION}|"
    rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*{_CONTRACTION}|"
    r"\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLIT_REGEXES = {_LLAMA3_REGEX: "llama-bpe", _QWEN2_REGEX: "qwen2", _GPT4O_REGEX: "gpt-4o"}


def add_tokenizer(writer: Any, tokenizer: Any, n_vocab: int) -> None:
    """Write ``tokenizer`` as ``tokenizer.*`` keys, its token list padded to ``n_vocab``.

    ``n_vocab`` is the number of embedding rows: llama.cpp requires one token per row, so
    rows past the tokenizer's vocabulary (Qwen pads to a multiple of 128) get ``[PADn]``
    tokens of type ``UNUSED``, as llama.cpp's converter writes them.

    Examples:
        The tiny model's byte-level BPE tokenizer (512 tokens) written for 514 embedding rows:

        >>> import gguf
        >>> from transformers import AutoTokenizer
        >>> from workbench.models.tiny import build_tiny_model
        >>> folder = build_tiny_model("/tmp/wb-doc-deploy-gguf_vocab-tiny")
        >>> tokenizer = AutoTokenizer.from_pretrained(folder)
        >>> path = "/tmp/wb-doc-deploy-gguf_vocab-tokenizer.gguf"
        >>> writer = gguf.GGUFWriter(path, "llama")
        >>> add_tokenizer(writer, tokenizer, len(tokenizer) + 2)
        >>> writer.write_header_to_file()
        >>> writer.write_kv_data_to_file()
        >>> writer.close()
        >>> fields = gguf.GGUFReader(path).fields
        >>> fields["tokenizer.ggml.model"].contents(), fields["tokenizer.ggml.pre"].contents()
        ('gpt2', 'gpt-2')
        >>> tokens = fields["tokenizer.ggml.tokens"].contents()
        >>> len(tokens), tokens[-2:], fields["tokenizer.ggml.token_type"].contents()[-2:]
        (514, ['[PAD512]', '[PAD513]'], [5, 5])
        >>> tokens[fields["tokenizer.ggml.eot_token_id"].contents()]
        '<|im_end|>'
    """
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    byte_level = "ByteLevel" in json.dumps(state.get("pre_tokenizer"))
    tokens, kinds = _tokens_and_kinds(tokenizer, n_vocab, sentencepiece=not byte_level)
    writer.add_tokenizer_model("gpt2" if byte_level else "llama")
    writer.add_tokenizer_pre(pre_tokenizer_name(state) if byte_level else "default")
    writer.add_token_list(tokens)
    writer.add_token_types(kinds)
    if byte_level:
        merges = state.get("model", {}).get("merges") or []
        writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    else:
        writer.add_token_scores(_scores(state, kinds))
        writer.add_add_space_prefix(_adds_space_prefix(state))
    _add_special_ids(writer, tokenizer)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def end_of_turn(chat_template: str | None) -> str | None:
    """The end-of-turn marker a chat template writes after each message, or ``None``.

    Examples:
        >>> end_of_turn("{{ '<start_of_turn>' + role }}...{{ '<end_of_turn>' }}")
        '<end_of_turn>'
        >>> end_of_turn("{{ '<|turn>' + role }}...{{ '<turn|>' }}")  # Gemma 4's
        '<turn|>'
        >>> end_of_turn(None) is None
        True
    """
    return next((t for t in END_OF_TURN_TOKENS if t in (chat_template or "")), None)


def pre_tokenizer_name(state: dict) -> str:
    """llama.cpp's name for the pre-tokenizer of a byte-level BPE ``tokenizer.json`` state.

    ``ByteLevel`` with its own regex is GPT-2's split (``gpt-2``); digits split one by one
    before it is SmolLM's (``smollm``); a ``Split`` regex followed by ``ByteLevel`` is
    matched against Llama 3's, Qwen 2's and GPT-4o's (Phi-4-mini's) regexes. Anything else
    warns and falls back to ``default``, which llama.cpp accepts but may split differently.

    Examples:
        >>> pre_tokenizer_name({"pre_tokenizer": {"type": "ByteLevel", "use_regex": True}})
        'gpt-2'
    """
    pre = state.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"
    if kinds == ["Split", "ByteLevel"]:
        name = _SPLIT_REGEXES.get(steps[0].get("pattern", {}).get("Regex", ""))
        if name:
            return name
    msg = (
        f"GGUF export: llama.cpp has no pre-tokenizer known to match {json.dumps(pre)[:200]}; "
        "the file says 'default', so llama.cpp may split some text differently from "
        "transformers. Check tokenization in llama.cpp before relying on the file."
    )
    warnings.warn(msg, WorkbenchWarning, stacklevel=2)
    return "default"


def _tokens_and_kinds(tokenizer: Any, n_vocab: int, sentencepiece: bool):
    vocab = tokenizer.get_vocab()
    tokens = [f"[PAD{i}]" for i in range(max(n_vocab, len(vocab)))]
    kinds = [TOKEN_UNUSED] * len(tokens)
    for token, index in vocab.items():
        tokens[index], kinds[index] = token, TOKEN_NORMAL
        if sentencepiece and len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            kinds[index] = TOKEN_BYTE
    if tokenizer.unk_token_id is not None:  # an added special <unk> is CONTROL, as upstream
        kinds[tokenizer.unk_token_id] = TOKEN_UNKNOWN
    for index, added in tokenizer.added_tokens_decoder.items():
        special = added.special or _looks_special(added.content)
        kinds[index] = TOKEN_CONTROL if special else TOKEN_USER_DEFINED
        if sentencepiece and not special:
            tokens[index] = added.content.replace("\u2581", " ")  # llama.cpp matches it as text
    for index in tokenizer.all_special_ids:
        kinds[index] = TOKEN_CONTROL
    return tokens, kinds


def _looks_special(text: str) -> bool:
    # Tokens some tokenizers add as "not special" though they are control tokens (Gemma's
    # <unusedN> and <mask>, ChatML-like <|...|>), treated as control by llama.cpp's converter.
    return (
        (text.startswith("<|") and text.endswith("|>"))
        or text in ("<pad>", "<mask>")
        or (text.startswith("<unused") and text.endswith(">"))
    )


def _scores(state: dict, kinds: list[int]) -> list[float]:
    """SentencePiece scores: Unigram's own, else ``-id`` (BPE merges follow id order).

    llama.cpp merges the adjacent pair whose joined piece scores highest. A SentencePiece
    BPE vocabulary is ordered by merge priority, so ``-id`` ranks pieces as its merges do;
    control and user-defined tokens get -1000 and byte pieces 0, as in Google's own files.
    """
    model = state.get("model", {})
    unigram = model.get("type") == "Unigram"
    scores = []
    for index, kind in enumerate(kinds):
        if unigram and index < len(model["vocab"]) and kind == TOKEN_NORMAL:
            scores.append(float(model["vocab"][index][1]))
        elif kind in (TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED):
            scores.append(-1000.0)
        else:
            scores.append(0.0 if kind == TOKEN_BYTE else -float(index))
    return scores


def _adds_space_prefix(state: dict) -> bool:
    """Whether the tokenizer puts ``▁`` before the first word (Llama 2 does, Gemma not)."""
    text = json.dumps([state.get("normalizer"), state.get("pre_tokenizer")])
    return (
        '"Prepend"' in text
        or '"prepend_scheme": "always"' in text
        or ('"prepend_scheme": "first"' in text)
    )


def _add_special_ids(writer: Any, tokenizer: Any) -> None:
    for name in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        if token_id is not None:
            getattr(writer, f"add_{name}_token_id")(int(token_id))
    eot = end_of_turn(tokenizer.chat_template)
    if eot is not None and eot in tokenizer.get_vocab():
        writer.add_eot_token_id(int(tokenizer.convert_tokens_to_ids(eot)))
    probe = tokenizer("a").input_ids
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    writer.add_add_bos_token(bos is not None and probe[:1] == [bos])
    writer.add_add_eos_token(eos is not None and probe[-1:] == [eos])
