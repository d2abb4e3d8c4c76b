"""Templates, rendering, completion-only masks token by token, truncation, examples."""

from __future__ import annotations

import pytest
from data_fixtures import CHAT_ROW, cache_dir, load, plain_tokenizer, tokenizer

from workbench.data import (
    IGNORE_INDEX,
    TEMPLATES,
    Template,
    check_template,
    encode_prompt,
    render_prompt,
    resolve_template,
)
from workbench.errors import DataError, SpecError

__all__ = ["cache_dir", "plain_tokenizer", "tokenizer"]

USER = [{"role": "user", "content": "Hi"}]
# A generation prompt with a trailing space ("A: "): the space merges with the answer's first word.
SPACED = (
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ 'Q: ' + m['content'] + '\n' }}"
    "{% elif m['role'] == 'assistant' %}"
    "{{ 'A: ' + m['content'] + eos_token + '\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'A: ' }}{% endif %}"
)


def test_gemma_template_is_gemmas_turn_format(tokenizer):
    text = render_prompt("gemma", tokenizer, [{"role": "system", "content": "Be kind."}, *USER])
    assert text == "<s><start_of_turn>user\nBe kind.\n\nHi<end_of_turn>\n<start_of_turn>model\n"


def test_chatml_and_alpaca_render(tokenizer):
    assert render_prompt("chatml", tokenizer, USER) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    alpaca = render_prompt("alpaca", tokenizer, USER)
    assert alpaca.startswith("<s>Below is an instruction")
    assert alpaca.endswith("### Instruction:\nHi\n\n### Response:\n")


def test_template_choice(tokenizer, plain_tokenizer):
    assert resolve_template(None, tokenizer).origin == "tokenizer"
    assert resolve_template(None, plain_tokenizer).name == "chatml"  # knows <|im_start|>
    assert resolve_template("alpaca", tokenizer).name == "alpaca"  # a name beats the tokenizer's
    gemma_like = plain_tokenizer.__class__.from_pretrained(plain_tokenizer.name_or_path)
    gemma_like.add_special_tokens(
        {"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]}
    )
    assert resolve_template(None, gemma_like).name == "gemma"
    with pytest.raises(SpecError, match="no chat template"):
        resolve_template("tokenizer", plain_tokenizer)
    with pytest.raises(SpecError, match="llama9"):
        resolve_template("llama9", tokenizer)


def test_template_shows_itself_readably():
    text = str(TEMPLATES["gemma"])
    assert "Template 'gemma'" in text and "<start_of_turn>model" in text
    assert "&lt;start_of_turn&gt;" in TEMPLATES["gemma"]._repr_html_()


def test_rendering_matches_apply_chat_template(tokenizer):
    messages = CHAT_ROW["messages"][:4]
    expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert render_prompt(None, tokenizer, messages) == expected


def test_chat_masks_token_by_token(tmp_path, tokenizer, cache_dir):
    data = load([CHAT_ROW], tokenizer, cache_dir)
    segments = [
        (
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
            "<|im_start|>assistant\n",
            False,
        ),
        ("four<|im_end|>\n", True),
        ("<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n", False),
        ("six<|im_end|>\n", True),
    ]
    expected = []
    for text, trained in segments:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        expected += [(i, trained) for i in ids]
    row = data.train[0]
    assert row["input_ids"] == [i for i, _ in expected]
    assert [label != IGNORE_INDEX for label in row["labels"]] == [t for _, t in expected]
    assert all(
        lab in (IGNORE_INDEX, tid) for lab, tid in zip(row["labels"], row["input_ids"], strict=True)
    )
    example = data.example(0)
    assert example.trained_text == "four<|im_end|>\nsix<|im_end|>\n"
    assert example.answer == "six"
    assert example.prompt.endswith("And 3+3?<|im_end|>\n<|im_start|>assistant\n")
    specials = [t.text for t in example.tokens if t.special]
    assert specials.count("<|im_start|>") == 5 and specials.count("<|im_end|>") == 5


def test_alpaca_answer_includes_eos(tokenizer, cache_dir):
    rows = [{"instruction": "Say hi", "output": "hi"}]
    data = load(rows, tokenizer, cache_dir, template="alpaca")
    example = data.example(0)
    assert example.trained_text == "hi</s>"
    assert example.tokens[0].text == "<s>" and not example.tokens[0].trained


def test_raw_text_trains_every_token_but_bos(tokenizer, cache_dir):
    data = load([{"text": "The quick brown fox."}], tokenizer, cache_dir)
    tokens = data.example(0).tokens
    assert tokens[0].text == "<s>" and not tokens[0].trained
    assert all(t.trained for t in tokens[1:]) and tokens[-1].text == "</s>"


def test_truncation_keeps_the_start_and_reports_the_cut(tokenizer, cache_dir):
    full = load([CHAT_ROW], tokenizer, cache_dir)
    n = len(full.train[0]["input_ids"])
    cut = full.with_max_length(n - 3)
    assert cut.train[0]["input_ids"] == full.train[0]["input_ids"][: n - 3]
    assert cut.example(0).cut == 3
    assert cut.truncation_at(n - 3) == full.truncation_at(n - 3)
    assert full.truncation_at(n) == {"examples": 0, "answers": 0, "answers_lost": 0, "total": 1}
    assert full.truncation_at(n - 1)["answers"] == 1
    assert full.truncation_at(3)["answers_lost"] == 1


def test_template_agreement_check(tokenizer):
    assert check_template(TEMPLATES["chatml"], tokenizer).ok
    # A trailing space after "A:" in the generation prompt merges with the answer's first word.
    spaced = Template("spaced", SPACED)
    check = check_template(spaced, tokenizer, [*USER, {"role": "assistant", "content": "yes"}])
    assert not check.ok and check.position is not None and "trailing space" in check.message


def test_template_mismatch_problems(tokenizer, cache_dir):
    spaced = SPACED
    data = load([{"question": "2+2?", "answer": "four"}], tokenizer, cache_dir, template=spaced)
    kinds = [(p.kind, p.split) for p in data.report().problems]
    assert ("template_mismatch", None) in kinds and ("template_mismatch", "train") in kinds
    good = load([{"question": "2+2?", "answer": "four"}], tokenizer, cache_dir)
    assert good.report().count("template_mismatch") == 0


def test_encode_prompt_is_the_training_prefix(tokenizer, cache_dir):
    data = load([CHAT_ROW], tokenizer, cache_dir)
    ids = encode_prompt(data.template, tokenizer, CHAT_ROW["messages"][:2])
    assert data.train[0]["input_ids"][: len(ids)] == ids
    assert data.train[0]["labels"][len(ids)] != IGNORE_INDEX
    assert data.train[0]["labels"][len(ids) - 1] == IGNORE_INDEX


# Gemma 2's and Mistral's templates raise on a system turn and on roles that do not alternate.
STRICT = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] }}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.mark.parametrize("batched", [True, False])
def test_turns_the_chat_template_refuses_are_named_or_skipped(
    tmp_path, tokenizer, cache_dir, batched
):
    """A system turn under a template that refuses one raised Jinja's TemplateError out of
    the tokenizing map, with no file or row, and on_error="skip" could not skip it."""
    import json

    def turns(*roles):
        return {"messages": [{"role": r, "content": f"{r} {i}"} for i, r in enumerate(roles)]}

    rows = [turns("user", "assistant")] * 3 + [turns("system", "user", "assistant")]
    rows += [turns("user", "user", "assistant"), turns("user", "assistant", "user", "assistant")]
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    strict = Template("strict", STRICT, "custom")
    with pytest.raises(
        DataError,
        match=r"chats\.jsonl, line 4, field 'messages': the chat template \('strict'\) refuses "
        r"this conversation: System role not supported; drop the system turn",
    ):
        load(path, tokenizer, cache_dir, template=strict, batched=batched)
    data = load(path, tokenizer, cache_dir, template=strict, on_error="skip", batched=batched)
    assert [len(r["messages"]) for r in data.train] == [2, 2, 2, 4]
    refused = {p.row: p.message for p in data.report().problems if p.kind == "malformed"}
    assert set(refused) == {4, 5} and "roles must alternate" in refused[5]
    broken_first = tmp_path / "broken.jsonl"  # a row skipped before the template's check
    broken_first.write_text("{not json\n" + path.read_text())
    data = load(broken_first, tokenizer, cache_dir, template=strict, on_error="skip")
    assert [len(r["messages"]) for r in data.train] == [2, 2, 2, 4]
    skipped = sorted(p.row for p in data.report().problems if p.kind == "malformed")
    assert skipped == [1, 5, 6]
    validation = tmp_path / "val.jsonl"
    validation.write_text(json.dumps(turns("system", "user", "assistant")))
    # every row of the validation file refused: nothing to validate on
    with pytest.raises(DataError, match=r"val\.jsonl: no usable rows .*line 1, field 'messages'"):
        load(
            path, tokenizer, cache_dir, template=strict, validation=str(validation), on_error="skip"
        )


# A template that refuses by what a turn says, not by its role: the role check renders one
# row per sequence of roles and passes; the refusal comes while tokenizing.
BY_CONTENT = (
    "{% for message in messages %}{% if 'forbidden' in message['content'] %}"
    "{{ raise_exception('No forbidden words, please') }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.mark.parametrize("batched", [True, False])
def test_turns_a_template_refuses_by_content_are_named_or_skipped(
    tmp_path, tokenizer, cache_dir, batched
):
    """Jinja's bare TemplateError came out of the tokenizing map, with no file or row, and
    on_error="skip" could not skip it."""
    import json

    rows = [
        {"messages": [{"role": "user", "content": f"say {word}"},
                      {"role": "assistant", "content": word}]}
        for word in ("one", "two", "forbidden fruit", "three", "forbidden", "four")
    ]  # fmt: skip
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    strict = Template("by-content", BY_CONTENT, "custom")
    with pytest.raises(
        DataError,
        match=r"chats\.jsonl, line 3, field 'messages': the chat template \('by-content'\) "
        r"refuses this conversation: No forbidden words, please",
    ):
        load(path, tokenizer, cache_dir, template=strict, batched=batched)
    data = load(path, tokenizer, cache_dir, template=strict, on_error="skip", batched=batched)
    kept = [r["messages"][1]["content"] for r in data.train]
    assert sorted(kept) == ["four", "one", "three", "two"]
    refused = sorted(p.row for p in data.report().problems if p.kind == "malformed")
    assert refused == [3, 5]


def test_a_chat_turn_the_template_refuses_is_a_spec_error(tmp_path, tiny_model_dir):
    import workbench as wb

    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.tokenizer.chat_template = STRICT
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    with pytest.raises(wb.SpecError, match=r"refuses these turns: System role not supported"):
        s.generate(turns, chat=True, max_new_tokens=2)
    assert isinstance(s.generate(turns[1:], chat=True, max_new_tokens=2), str)
