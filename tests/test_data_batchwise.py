"""The batch-wise preparation gives exactly what the row-by-row one gives, row by row.

``PreparedData.load(..., batched=False)`` is the earlier way: every row read through
``Dataset.from_generator``, every answer's prompt rendered with Jinja and tokenized on its own,
every row checked at token level. The default batch way renders plain rows by layout,
tokenizes once and checks a sample (see ``workbench.data.batched``). Both are run here on
every format, on chat templates of several model families (attached offline to three kinds of
tokenizer: byte-level BPE, SentencePiece-style Metaspace BPE and lower-casing WordPiece),
with system prompts, multi-turn conversations, rows cut by ``max_length``, odd whitespace and
unicode, literal control tokens, malformed rows and rows whose structure differs from the
rest; the columns, features, skipped rows and the whole problem report must be identical.
"""

from __future__ import annotations

import functools
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from data_fixtures import cache_dir, plain_tokenizer, tokenizer

from workbench.data import PreparedData, resolve_template
from workbench.data.batched import SAMPLE_PER_BATCH, BatchLabeller
from workbench.data.layouts import learn_layout, sensitive_literals
from workbench.data.templates import Template
from workbench.data.tokenize import Labeller

__all__ = ["cache_dir", "plain_tokenizer", "tokenizer"]

# --- chat templates of model families (as published, tool branches trimmed) ------------

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
LLAMA31 = """{{- bos_token }}
{%- if not date_string is defined %}{%- set date_string = "26 Jul 2024" %}{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- if messages[0]['content'] is string %}
        {%- set system_message = messages[0]['content']|trim %}
    {%- else %}
        {%- set system_message = messages[0]['content'][0]['text']|trim %}
    {%- endif %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""  # noqa: E501
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}{% endfor %}"
)
QWEN25 = """{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""  # noqa: E501
QWEN3 = """{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {{- '<|im_start|>user\\n<tool_response>\\n' + content + '\\n</tool_response><|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}
"""  # noqa: E501
PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
ZEPHYR = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n"
    "{% endfor %}"
)
# The trailing space of the generation prompt merges with the answer's first word: every
# row is a template_mismatch, and the mask starts at the first token past the prompt.
TRAILING_SPACE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ 'A: ' + m['content'] + eos_token }}"
    "{% else %}{{ 'Q: ' + m['content'] + '\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'A: ' }}{% endif %}"
)
# Content-dependent templates no layout may assume anything about.
SLICING = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'][:40] }}</{{ m['role'] }}>"
    "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
)
LOWER = (
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] | lower }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)

# family -> (tokenizer kind, template, special tokens added, bos, eos)
FAMILIES: dict[str, tuple[str, str, list[str], str, str]] = {
    "chatml": ("bpe", "tokenizer", [], "<s>", "</s>"),
    "gemma": ("bpe", "gemma", ["<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>"),
    "alpaca": ("bpe", "alpaca", [], "<s>", "</s>"),
    "llama3": (
        "bpe",
        LLAMA3,
        ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "<|begin_of_text|>",
        "<|eot_id|>",
    ),
    "llama3.1": (
        "bpe",
        LLAMA31,
        ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "<|begin_of_text|>",
        "<|eot_id|>",
    ),
    "qwen2.5": ("bpe", QWEN25, [], "<s>", "<|im_end|>"),
    "qwen3": ("bpe", QWEN3, ["<think>", "</think>"], "<s>", "<|im_end|>"),
    "phi3": ("bpe", PHI3, ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"], "<s>", "</s>"),
    "zephyr": ("bpe", ZEPHYR, ["<|system|>", "<|user|>", "<|assistant|>"], "<s>", "</s>"),
    "trailing-space": ("bpe", TRAILING_SPACE, [], "<s>", "</s>"),
    "slicing": ("bpe", SLICING, [], "<s>", "</s>"),
    "lower": ("bpe", LOWER, [], "<s>", "</s>"),
    "mistral-sentencepiece": ("metaspace", MISTRAL, [], "<s>", "</s>"),
    "llama3-sentencepiece": (
        "metaspace",
        LLAMA3,
        ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "<|begin_of_text|>",
        "<|eot_id|>",
    ),
    "chatml-wordpiece": ("wordpiece", "chatml", ["<|im_start|>", "<|im_end|>"], "[CLS]", "[SEP]"),
    "zephyr-wordpiece": (
        "wordpiece",
        ZEPHYR,
        ["<|system|>", "<|user|>", "<|assistant|>"],
        "[CLS]",
        "[SEP]",
    ),
}
# Families whose templates reject some role sequences (a system message, two users in a row).
STRICT = {"mistral-sentencepiece"}

WORDS = [
    *("the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "model", "learns"),
    *("from", "examples", "capital", "of", "france", "paris", "answer", "question"),
    *("record", "json", "name", "age", "city", "london", "red", "green", "blue", "cat", "bird"),
]
ODD = [
    "  leading spaces",
    "trailing spaces   ",
    "\ttabs\tinside and at the start",
    "windows\r\nline breaks\r\n",
    "no-break\u00a0spaces\u00a0",
    "\u3000ideographic space",
    "emoji \U0001f600 \U0001f44d\U0001f3fd family \U0001f468\u200d\U0001f469\u200d\U0001f467",
    "e\u0301 combining accent, caf\u00e9, na\u00efve",
    "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd right to left",
    "zero\u200bwidth\u200bspace",
    "private \U000f0003 use \U00100001 characters",
    "  ",
    "",
    "x",
    "tabs and\n\n\nmany\n\n\n\nnewlines",
    "ends with a newline\n",
    "quotes ' \" and {{ jinja }} {% tags %} and \\ backslash",
    "CAPITALS and MixedCase Words",
]
CORPUS = [" ".join(WORDS)] * 3 + ODD + ["assistant user system tool response instruction"]


def _words(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(low, high)))


@functools.cache
def _base_tokenizer(kind: str) -> Any:
    """A fast tokenizer of ``kind``, trained offline on a small corpus."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from workbench.models.tiny import build_tiny_model

    if kind == "bpe":
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="wb-batchwise-")) / "tiny"
        return AutoTokenizer.from_pretrained(build_tiny_model(folder, chat_template=False))
    alphabet = sorted(set("".join(CORPUS)))
    if kind == "metaspace":
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
        trainer = trainers.BpeTrainer(
            vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=alphabet
        )
        tok.train_from_iterator(CORPUS, trainer)
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
        )
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=["[UNK]", "[CLS]", "[SEP]"], initial_alphabet=alphabet
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="[CLS]", eos_token="[SEP]", unk_token="[UNK]"
    )


@functools.cache
def family_tokenizer(name: str) -> Any:
    """The family's tokenizer: its kind, special tokens and chat template."""
    import copy

    kind, template, specials, bos, eos = FAMILIES[name]
    tok = copy.deepcopy(_base_tokenizer(kind))
    tok.add_special_tokens(
        {"bos_token": bos, "eos_token": eos, "additional_special_tokens": specials}
    )
    if template not in ("tokenizer", "chatml", "gemma", "alpaca"):
        tok.chat_template = template
    elif template == "tokenizer":
        assert tok.chat_template is None
        tok.chat_template = resolve_template("chatml", None).source
    return tok


def family_template(name: str) -> str | None:
    template = FAMILIES[name][1]
    return template if template in ("chatml", "gemma", "alpaca") else None


# --- data of every format --------------------------------------------------------------


def alpaca_rows(rng: random.Random, strict: bool) -> list[dict[str, Any]]:
    rows = []
    for i in range(60):
        row = {"instruction": _words(rng, 3, 25), "input": "", "output": _words(rng, 1, 20)}
        if i % 3 == 0:
            row["input"] = f"id {i}"
        if i % 7 == 0 and not strict:
            row["system"] = _words(rng, 2, 8)
        rows.append(row)
    for k, odd in enumerate(ODD):
        rows.append({"instruction": odd, "input": ODD[-k], "output": ODD[(k + 3) % len(ODD)]})
    rows.append({"instruction": _words(rng, 80, 120), "input": "", "output": _words(rng, 5, 9)})
    return rows


def qa_rows(rng: random.Random, strict: bool) -> list[dict[str, Any]]:
    rows = [{"question": _words(rng, 2, 30), "answer": _words(rng, 1, 12)} for _ in range(50)]
    for k, odd in enumerate(ODD):
        rows.append({"question": ODD[-k - 1], "answer": odd})
    if not strict:
        rows += [{"question": "q", "answer": "a", "system": s} for s in ("Be brief.", " ", "\n")]
    rows.append({"question": _words(rng, 60, 90), "answer": _words(rng, 3, 9)})
    return rows


def _conversation(rng: random.Random, roles: list[str]) -> list[dict[str, str]]:
    return [{"role": r, "content": _words(rng, 1, 15)} for r in roles]


def chat_rows(rng: random.Random, strict: bool) -> list[dict[str, Any]]:
    shapes = [["user", "assistant"]] * 3 + [["user", "assistant", "user", "assistant"]]
    if not strict:
        shapes += [
            ["system", "user", "assistant"],
            ["system", "user", "assistant", "user", "assistant", "user", "assistant"],
            ["user", "assistant", "user"],  # ends with a question: the last answer is inner
            ["user", "user", "assistant"],
            ["user", "assistant", "assistant"],
            ["user"],  # nothing to train on
        ]
    rows = [{"messages": _conversation(rng, rng.choice(shapes))} for _ in range(70)]
    for k, odd in enumerate(ODD):
        roles = ["user", "assistant", "user", "assistant"]
        contents = [odd, ODD[(k + 1) % len(ODD)], _words(rng, 1, 5), ODD[-k - 1]]
        rows.append(
            {"messages": [{"role": r, "content": c} for r, c in zip(roles, contents, strict=True)]}
        )
    for marker in ("<think>x</think>", "</think>", "<tool_response>y</tool_response>"):
        rows.append({"messages": _conversation(rng, ["user", "assistant"])})
        rows[-1]["messages"][-1]["content"] = f"{marker} then the answer"
    for row in rows[::3]:  # OpenAI's per-turn weights: 0 leaves a turn untrained
        for message in row["messages"]:
            if message["role"] == "assistant":
                message["weight"] = rng.choice([0, 1])
    return rows


def sharegpt_rows(rng: random.Random, strict: bool) -> list[dict[str, Any]]:
    names = {"user": "human", "assistant": "gpt", "system": "system"}
    rows = []
    for row in chat_rows(rng, strict):
        turns = [
            {"from": names[m["role"]], "value": m["content"]}
            | ({"weight": m["weight"]} if "weight" in m else {})
            for m in row["messages"]
        ]
        rows.append({"conversations": turns})
    return rows


def text_rows(rng: random.Random, tok: Any) -> list[dict[str, Any]]:
    rows = [{"text": _words(rng, 1, 60)} for _ in range(40)]
    rows += [{"text": odd} for odd in ODD if odd.strip()]
    rows.append({"text": f"one {tok.eos_token} two {tok.bos_token}"})
    return rows


ROWS = {"alpaca": alpaca_rows, "qa": qa_rows, "chat": chat_rows, "sharegpt": sharegpt_rows}


# --- comparing both ways -----------------------------------------------------------------


def load_both(source: Any, tok: Any, cache: str, **options: Any) -> tuple[Any, Any]:
    batched = PreparedData.load(source, tok, cache_dir=f"{cache}/batched", **options)
    rows = PreparedData.load(source, tok, cache_dir=f"{cache}/rows", batched=False, **options)
    return batched, rows


def assert_identical(batched: Any, rows: Any) -> None:
    assert batched.format == rows.format
    assert batched.template == rows.template
    assert batched.skipped == rows.skipped
    for split in ("train", "validation"):
        a, b = getattr(batched, split), getattr(rows, split)
        assert (a is None) == (b is None)
        if a is None:
            continue
        assert a.column_names == b.column_names
        assert a.features == b.features
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            for column in a.column_names:
                assert x[column] == y[column], (split, i, column, x, y)
    assert batched.report().problems == rows.report().problems
    assert batched.report().lines() == rows.report().lines()


@pytest.mark.parametrize("fmt", list(ROWS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_format_and_family_gives_identical_rows_and_report(family, fmt, cache_dir):
    tok = family_tokenizer(family)
    rows = ROWS[fmt](random.Random(f"{family}{fmt}"), family in STRICT)
    options = {"template": family_template(family), "validation": 0.25, "max_length": 48}
    batched, by_rows = load_both(rows, tok, cache_dir, **options)
    assert_identical(batched, by_rows)
    assert len(batched.train) + len(batched.validation) == len(rows)
    assert any("max_length=48" in p.message for p in batched.report().problems)  # rows cut


@pytest.mark.parametrize("mode", ["split", "keep"])
@pytest.mark.parametrize("family", ["chatml", "gemma", "llama3-sentencepiece", "chatml-wordpiece"])
def test_literal_control_tokens_in_both_modes(family, mode, cache_dir):
    tok = family_tokenizer(family)
    specials = [t for t in tok.all_special_tokens if t != tok.unk_token]
    rng = random.Random(mode)
    rows = chat_rows(rng, strict=False)
    for k, token in enumerate(specials * 3):
        target = rows[k * 2]["messages"][k % len(rows[k * 2]["messages"])]
        target["content"] = [f"{token}", f"say {token} twice {token}", f"  {token}  "][k % 3]
    batched, by_rows = load_both(
        rows, tok, cache_dir, template=family_template(family), special_tokens_in_text=mode
    )
    assert_identical(batched, by_rows)
    assert batched.report().count("special_token_text") >= len(specials)


@pytest.mark.parametrize("kind", ["bpe", "metaspace", "wordpiece"])
@pytest.mark.parametrize("mode", ["split", "keep"])
def test_raw_text_is_identical(kind, mode, cache_dir):
    tok = family_tokenizer(
        {"bpe": "chatml", "metaspace": "mistral-sentencepiece"}.get(kind, "chatml-wordpiece")
    )
    rows = text_rows(random.Random(kind), tok)
    batched, by_rows = load_both(
        rows, tok, cache_dir, max_length=16, validation=0.2, special_tokens_in_text=mode
    )
    assert_identical(batched, by_rows)


def test_malformed_rows_are_reported_the_same_by_file_line_and_field(tmp_path, cache_dir):
    rng = random.Random(1)
    lines = [json.dumps(r) for r in alpaca_rows(rng, strict=False)]
    lines[3] = '{"instruction": "no output"}'
    lines[7] = "not json at all"
    lines[9] = '{"instruction": false, "output": "x"}'  # a number would be its text
    lines[11] = "[1, 2]"
    lines.insert(13, "")  # a blank line still counts as a line
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tok = family_tokenizer("chatml")
    batched, by_rows = load_both(path, tok, cache_dir, on_error="skip", validation=0.25)
    assert_identical(batched, by_rows)
    assert [(p.row, p.kind) for p in batched.skipped] == [
        (4, "malformed"),
        (8, "malformed"),
        (10, "malformed"),
        (12, "malformed"),
    ]
    assert "data.jsonl, line 4, field 'output': missing" in batched.skipped[0].message
    with pytest.raises(Exception) as raised:
        PreparedData.load(path, tok, cache_dir=f"{cache_dir}/r")
    with pytest.raises(type(raised.value), match="line 4, field 'output': missing"):
        PreparedData.load(path, tok, cache_dir=f"{cache_dir}/s", batched=False)


def test_a_template_that_rejects_a_row_fails_the_same_way(cache_dir):
    tok = family_tokenizer("mistral-sentencepiece")
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(30)]
    rows[17]["system"] = "You are terse."
    errors = []
    for batched in (True, False):
        with pytest.raises(Exception) as raised:
            PreparedData.load(rows, tok, cache_dir=cache_dir, validation=None, batched=batched)
        errors.append((type(raised.value), str(raised.value)))
    assert errors[0] == errors[1]
    assert "Conversation roles must alternate" in errors[0][1]


def test_with_max_length_keeps_the_way_and_the_result(cache_dir):
    tok = family_tokenizer("llama3.1")
    rows = chat_rows(random.Random(5), strict=False)
    batched, by_rows = load_both(rows, tok, cache_dir, validation=0.2)
    assert batched.spec.batched and not by_rows.spec.batched
    assert_identical(batched.with_max_length(20), by_rows.with_max_length(20))


def test_sources_of_every_kind_are_read_the_same(tmp_path, cache_dir):
    import pandas as pd
    from datasets import Dataset

    rows = qa_rows(random.Random(2), strict=False)
    frame = pd.DataFrame(rows)
    frame.to_csv(tmp_path / "data.csv", index=False)
    frame.to_parquet(tmp_path / "data.parquet")
    (tmp_path / "data.json").write_text(json.dumps(rows), encoding="utf-8")
    tok = family_tokenizer("qwen2.5")
    for source in (
        tmp_path / "data.csv",
        tmp_path / "data.parquet",
        tmp_path / "data.json",
        frame,
        Dataset.from_list(rows),
    ):
        assert_identical(*load_both(source, tok, cache_dir, validation=0.3))


# --- the batch way really takes its shortcuts, and checks them -----------------------------


def _table(rows: list[dict[str, Any]], untrained: list[list[int]] | None = None) -> Any:
    columns = {"messages": [r["messages"] for r in rows]}
    if untrained is not None:
        columns["untrained_turns"] = untrained
    return pa.table(columns)


# family -> does a plain (user, assistant) / multi-turn row take the layout way?
LAYOUT_WAY = {
    "chatml": (True, True),
    "gemma": (True, True),
    "alpaca": (True, True),
    "llama3": (True, True),
    "llama3.1": (True, True),
    "qwen2.5": (True, True),
    "qwen3": (True, False),  # an inner answer gets no <think> block: not a prefix
    "phi3": (True, False),  # an inner answer's own rendering ends with eos: not a prefix
    "zephyr": (True, True),
    "trailing-space": (True, True),
    "slicing": (False, False),  # measures content: never by layout
    "lower": (False, False),  # changes content: no layout
    "mistral-sentencepiece": (True, True),
    "llama3-sentencepiece": (True, True),
    "chatml-wordpiece": (True, True),
    "zephyr-wordpiece": (True, True),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_plain_rows_take_the_layout_way_except_a_sample(family):
    tok = family_tokenizer(family)
    template = resolve_template(family_template(family), tok)
    rng = random.Random(family)
    single = [{"messages": _conversation(rng, ["user", "assistant"])} for _ in range(40)]
    multi = [
        {"messages": _conversation(rng, ["user", "assistant", "user", "assistant"])}
        for _ in range(40)
    ]
    # weight-0 turns (OpenAI's per-turn weights): none, either or both answers untrained
    untrained = [[[], [1], [], [3], [1, 3]][k % 5] for k in range(40)]
    answers = []
    ways = (*LAYOUT_WAY[family], LAYOUT_WAY[family][1])
    cases = zip((single, multi, multi), ways, (None, None, untrained), strict=True)
    for rows, expected, skip in cases:
        labeller = BatchLabeller(template, tok, None, False)
        out = labeller(_table(rows, skip))
        answers.append(out.column("n_answer").to_pylist())
        reference = Labeller(template, tok, None, False)(
            {"messages": [r["messages"] for r in rows], "untrained_turns": skip}
        )
        for column, values in reference.items():
            assert out.column(column).to_pylist() == values, column
        assert labeller.checked == (SAMPLE_PER_BATCH if expected else len(rows))
        assert not labeller.distrusted
    for k, (every, weighted) in enumerate(zip(answers[1], answers[2], strict=True)):
        if not untrained[k]:
            assert weighted == every, k
        elif len(untrained[k]) == 2:
            assert weighted == 0, k
        elif untrained[k] == [3]:  # the last answer is trained under every template
            assert weighted < every, k
        else:  # Qwen3's renders an earlier answer unlike a last one: no labels there anyway
            assert weighted <= every, k


def test_rows_that_differ_are_all_checked_row_by_row():
    tok = family_tokenizer("chatml")
    template = resolve_template(None, tok)
    rng = random.Random(3)
    rows = [{"messages": _conversation(rng, ["user", "assistant"])} for _ in range(30)]
    rows[10]["messages"][1]["content"] = " leading space"  # a sample group of its own
    rows[11]["messages"][0]["content"] = "has <|im_end|> in it"  # control token text
    rows[12]["messages"] = _conversation(rng, ["system", "user", "assistant"])  # own roles
    rows[13]["messages"][1]["content"] = ""  # empty
    labeller = BatchLabeller(template, tok, None, False)
    labeller(_table(rows))
    # 4 sampled plain (user, assistant) rows, the one edged with whitespace (its group's
    # sample), 2 odd rows, and the one (system, ...) row
    assert labeller.checked == SAMPLE_PER_BATCH + 4


EDGES = [" ", "\n", "\t", "\r\n", "\u3000", "  \n", "\n\n"]


# family -> does the template keep (or strip) whitespace at every content's edges?
@pytest.mark.parametrize(
    ("family", "by_layout"),
    [("chatml", True), ("llama3", True), ("gemma", True), ("alpaca", True), ("qwen3", False)],
)
def test_contents_edged_with_whitespace_take_the_layout_way_where_it_is_kept_or_stripped(
    family, by_layout
):
    # ChatML and Alpaca keep edges, Llama 3 trims every content, Gemma all but a system
    # turn's; Qwen3 strips only newlines before a last answer: those rows go row by row.
    tok = family_tokenizer(family)
    template = resolve_template(family_template(family), tok)
    rng = random.Random(11)
    rows = [{"messages": _conversation(rng, ["user", "assistant"])} for _ in range(40)]
    for row in rows:
        for message in row["messages"]:
            message["content"] = rng.choice(EDGES) + message["content"] + rng.choice(EDGES)
    labeller = BatchLabeller(template, tok, None, False)
    out = labeller(_table(rows))
    reference = Labeller(template, tok, None, False)({"messages": [r["messages"] for r in rows]})
    for column, values in reference.items():
        assert out.column(column).to_pylist() == values, column
    assert labeller.checked == (SAMPLE_PER_BATCH if by_layout else len(rows))
    assert not labeller.distrusted


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in STRICT])
def test_an_empty_system_prompt_or_question_takes_a_layout_of_its_own(family):
    # Exports often carry an empty system turn in every row; a template may write an empty
    # content otherwise than a full one (or a default prompt for none), so such rows get a
    # layout of their own. An empty answer has nothing to place: row by row.
    tok = family_tokenizer(family)
    template = resolve_template(family_template(family), tok)
    rng = random.Random(13)
    roles = ["system", "user", "assistant", "user", "assistant"]
    rows = [{"messages": _conversation(rng, roles)} for _ in range(30)]
    for row in rows:
        row["messages"][0]["content"] = ""
    for row in rows[::3]:
        row["messages"][3]["content"] = ""
    rows[-1]["messages"][4]["content"] = ""
    labeller = BatchLabeller(template, tok, None, False)
    out = labeller(_table(rows))
    reference = Labeller(template, tok, None, False)({"messages": [r["messages"] for r in rows]})
    for column, values in reference.items():
        assert out.column(column).to_pylist() == values, column
    by_layout = LAYOUT_WAY[family][1]  # whether multi-turn rows take the layout way at all
    # two layouts (empty system; empty system and second question), a sample of each, and
    # the row with an empty answer
    assert labeller.checked == (2 * SAMPLE_PER_BATCH + 1 if by_layout else len(rows))
    assert not labeller.distrusted


def test_a_wrong_guess_about_edges_is_caught_by_the_sample():
    tok = family_tokenizer("chatml")
    template = resolve_template(None, tok)
    rng = random.Random(12)
    rows = [{"messages": _conversation(rng, ["user", "assistant"])} for _ in range(30)]
    for row in rows[::2]:
        row["messages"][1]["content"] = " " + row["messages"][1]["content"] + "\n"
    labeller = BatchLabeller(template, tok, None, False)
    right = learn_layout(template, tok, ("user", "assistant"))
    assert right.strips == (False, False)  # ChatML keeps edges; say it strips them
    labeller._layouts[("user", "assistant")] = type(right)(
        right.roles, right.segments, right.turns, (True, True)
    )
    out = labeller(_table(rows))
    reference = Labeller(template, tok, None, False)({"messages": [r["messages"] for r in rows]})
    assert out.column("labels").to_pylist() == reference["labels"]
    assert labeller.distrusted == {("user", "assistant", "<edged with whitespace>")}


def test_a_sample_that_disagrees_sends_its_roles_row_by_row():
    """A layout that is wrong for real rows is caught by the sample, and not used again."""
    tok = family_tokenizer("chatml")
    template = resolve_template(None, tok)
    rng = random.Random(4)
    rows = [{"messages": _conversation(rng, ["user", "assistant"])} for _ in range(30)]
    labeller = BatchLabeller(template, tok, None, False)
    wrong = learn_layout(template, tok, ("user", "assistant"))
    labeller._layouts[("user", "assistant")] = type(wrong)(
        wrong.roles, (wrong.segments[0], wrong.segments[1] + " ", wrong.segments[2]), wrong.turns
    )
    out = labeller(_table(rows))
    reference = Labeller(template, tok, None, False)({"messages": [r["messages"] for r in rows]})
    assert out.column("labels").to_pylist() == reference["labels"]
    assert labeller.distrusted == {("user", "assistant")}
    assert labeller.checked == len(rows)
    labeller(_table(rows))
    assert labeller.checked == 2 * len(rows)


def test_a_group_is_sampled_less_once_its_samples_agreed_and_still_checked():
    from workbench.data.batched import SAMPLE_WHEN_TRUSTED, TRUSTED_AFTER

    tok = family_tokenizer("chatml")
    template = resolve_template(None, tok)
    rng = random.Random(5)
    labeller = BatchLabeller(template, tok, None, False)
    reference = Labeller(template, tok, None, False)
    trusting = TRUSTED_AFTER // SAMPLE_PER_BATCH
    for batch in range(trusting + 2):
        rows = [{"messages": _conversation(rng, ["user", "assistant"])} for _ in range(20)]
        labeller(_table(rows))
        full = min(batch + 1, trusting)
        assert labeller.checked == full * SAMPLE_PER_BATCH + max(0, batch + 1 - trusting)
    assert labeller.checked == TRUSTED_AFTER + 2 * SAMPLE_WHEN_TRUSTED
    # A layout gone wrong now is still caught by the one row a batch.
    wrong = labeller._layouts[("user", "assistant")]
    labeller._layouts[("user", "assistant")] = type(wrong)(
        wrong.roles, (wrong.segments[0], wrong.segments[1] + " ", wrong.segments[2]), wrong.turns
    )
    rows = [{"messages": _conversation(rng, ["user", "assistant"])} for _ in range(20)]
    out = labeller(_table(rows))
    expected = reference({"messages": [r["messages"] for r in rows]})
    assert out.column("labels").to_pylist() == expected["labels"]
    assert labeller.distrusted == {("user", "assistant")}


def test_content_tests_in_templates_are_found():
    assert sensitive_literals(Template("q3", QWEN3)) == {
        "<tool_response>",
        "</tool_response>",
        "</think>",
        "<think>",
    }
    assert sensitive_literals(Template("l31", LLAMA31)) == frozenset()
    assert sensitive_literals(Template("cut", SLICING)) is None
    measuring = "{% for m in messages %}{% if m.content|length > 9 %}x{% endif %}{% endfor %}"
    assert sensitive_literals(Template("len", measuring)) is None


@pytest.mark.parametrize("layout", ["alpaca", "messages", "sharegpt", "tools", "tools-mixed"])
def test_the_load_benchmark_finds_both_ways_identical_on_its_row_shapes(layout):
    """benchmarks/data_load.py compares the two ways itself and fails if one token differs."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "data_load.py"
    done = subprocess.run(
        [sys.executable, str(script), "--rows", "300", "--layout", layout],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"300 {layout} rows" in done.stdout
    assert "batch-wise and row-by-row: identical columns and problem report" in done.stdout
