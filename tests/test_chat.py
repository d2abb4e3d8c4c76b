"""Chat with the model and its strength dial (issue 15, item 1): what the learner sees.

A tiny model is tuned for real (a few LoRA steps on JSON answers); the dial scales that
adapter on the same weights, and the panel is driven through the methods its widgets call.
"""

from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench._display import printable
from workbench.chat import chat_inputs
from workbench.data.templates import render_prompt
from workbench.errors import SessionStateError, SpecError
from workbench.models.generation import generate_text
from workbench.models.strength import lora_layers, reset_adapter_strength, set_adapter_strength
from workbench.models.tiny import build_tiny_model
from workbench.widgets._html import escape

ROWS = [{"question": f"record {i}", "answer": f'{{"n": {i}}}'} for i in range(16)]
IDS = torch.tensor([[1, 45, 78, 90, 12, 7]])
N = 12  # new tokens per answer


def tuned_session(folder, model_dir, template="chatml", steps=40, **model_options):
    """A session whose tiny model was tuned for ``steps`` LoRA steps on JSON answers."""
    s = wb.Session(folder, verbose=False)
    s.load_model(str(model_dir), **model_options)
    s.load_data(ROWS, validation=None, template=template)
    run = s.train(max_steps=steps, lr=1e-2, lora=wb.LoRA(r=8), wait=False).wait()
    assert run.state.value == "finished"
    s.model.eval()
    return s


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, tiny_model_dir):
    return tuned_session(tmp_path_factory.mktemp("chat") / "session", tiny_model_dir)


@pytest.fixture(autouse=True)
def _back_to_strength_one(request):
    yield
    if "tuned" in request.fixturenames:
        request.getfixturevalue("tuned").set_adapter_strength(1.0)


def logits(model):
    with torch.no_grad():
        return model(IDS).logits


def base_logits(model):
    with torch.no_grad(), model.disable_adapter():
        return model(IDS).logits


# --- the dial on the weights -----------------------------------------------------------


def test_strength_zero_is_the_base_model_and_one_the_tuned_model(tuned):
    model = tuned.model
    untouched = logits(model)
    assert tuned.adapter_strength == 1.0
    assert tuned.set_adapter_strength(0) == 0.0
    at_zero = logits(model)
    assert tuned.set_adapter_strength(1) == 1.0
    assert torch.equal(logits(model), untouched)
    base = base_logits(model)
    torch.testing.assert_close(at_zero, base, atol=1e-6, rtol=0)
    assert (untouched - base).abs().max() > 0.1  # the adapter did learn something


def test_half_strength_lies_between_and_one_layer_scales_linearly(tuned):
    model = tuned.model
    first = lora_layers(model)[0]  # layer 0's q_proj: no other adapter acts before it
    outputs = []
    hook = first.register_forward_hook(lambda _m, _i, out: outputs.append(out.detach()))
    try:
        by_strength = {}
        for x in (0.0, 0.5, 1.0):
            tuned.set_adapter_strength(x)
            by_strength[x] = logits(model)
    finally:
        hook.remove()
    out0, out_half, out1 = outputs
    torch.testing.assert_close(out_half - out0, 0.5 * (out1 - out0), atol=1e-6, rtol=1e-5)
    to_half = (by_strength[0.5] - by_strength[0.0]).norm()
    to_tuned = (by_strength[1.0] - by_strength[0.0]).norm()
    assert 0 < to_half < to_tuned
    assert not torch.equal(by_strength[0.5], by_strength[1.0])


def test_strength_round_trip_gives_the_tuned_model_back_exactly(tuned):
    model = tuned.model
    untouched = logits(model)
    scalings = [dict(layer.scaling) for layer in lora_layers(model)]
    for x in (0.0, 1.5, 0.35, 2.0):
        tuned.set_adapter_strength(x)
        assert tuned.adapter_strength == x
    tuned.set_adapter_strength(1.0)
    assert [dict(layer.scaling) for layer in lora_layers(model)] == scalings
    assert torch.equal(logits(model), untouched)


def test_bad_strengths_are_refused_and_change_nothing(tuned):
    tuned.set_adapter_strength(0.4)
    for bad in (-0.5, float("nan"), float("inf"), "1", True):
        with pytest.raises(SpecError, match="must be a number >= 0"):
            tuned.set_adapter_strength(bad)
    assert tuned.adapter_strength == 0.4


def test_numpy_and_torch_scalars_set_the_strength(tuned):
    import numpy as np

    for value in (np.float32(0.25), np.float64(0.5), torch.tensor(0.75), np.int64(1)):
        assert tuned.set_adapter_strength(value) == float(value)
        assert tuned.adapter_strength == float(value)
    with pytest.raises(SpecError, match="must be a number >= 0"):
        tuned.set_adapter_strength(np.array([0.5, 0.5]))


def test_a_model_without_an_adapter_has_no_strength(tmp_path, tiny_model_dir):
    s = wb.Session(tmp_path / "plain", verbose=False)
    s.load_model(str(tiny_model_dir))
    assert s.adapter_strength is None
    with pytest.raises(
        SpecError, match=r"no adapter to scale: train\(\) or load_adapter\(\) first"
    ):
        s.set_adapter_strength(0.5)
    panel = s.chat(max_new_tokens=3)
    assert panel.strength.disabled and panel.side_by_side.disabled
    assert panel.send("Hi").answers[0][0] == "model"


def test_a_merged_adapter_cannot_be_scaled(tmp_path, tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    from workbench.models.loading import load_model

    loaded = load_model(str(tiny_model_dir), on_event=len)
    config = LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False)
    model = get_peft_model(loaded.model, config)
    model.merge_adapter()
    with pytest.raises(SpecError, match="merged into the weights"):
        set_adapter_strength(model, 0.5)


# --- chat=True: the tuned template and its stop string ---------------------------------


def test_chat_renders_the_data_template_and_stops_at_its_end_of_turn(tuned):
    inputs = chat_inputs("record 3", tuned.tokenizer, tuned.data.template)
    assert inputs.prompts == ["<|im_start|>user\nrecord 3<|im_end|>\n<|im_start|>assistant\n"]
    assert inputs.prompts[0] == render_prompt(
        "chatml", tuned.tokenizer, [{"role": "user", "content": "record 3"}]
    )
    answer = tuned.generate("record 3", max_new_tokens=N, chat=True)
    # Without the stop the tuned model runs on past its end of turn into another turn.
    batch = tuned.tokenizer(inputs.prompts, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = tuned.model.generate(**batch, max_new_tokens=N, do_sample=False)
    raw = tuned.tokenizer.decode(out[0, batch.input_ids.shape[1] :])
    assert "<|im_end|>" in raw
    assert answer == raw.split("<|im_end|>")[0]
    assert answer.startswith('{"n":') and answer.endswith("}")  # the format the data taught
    assert "<|im_end|>" not in answer and "<|im_start|>" not in answer


class _Writes:
    """A logits processor that makes the model write ``rows[i]``'s ids for prompt ``i``, then
    its eos: generation as it runs, with the answer chosen."""

    def __init__(self, rows, prompt_length, eos):
        self.rows, self.prompt_length, self.eos = rows, prompt_length, eos

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_length
        forced = torch.full_like(scores, float("-inf"))
        for i, row in enumerate(self.rows):
            forced[i, row[step] if step < len(row) else self.eos] = 0.0
        return forced


def test_special_tokens_the_model_writes_stay_in_its_answer(tmp_path):
    """Gemma 4 and Mistral write tool calls with special tokens: an answer decoded without
    them loses its calls. Only the end token and the padding after it are left out."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList

    folder = build_tiny_model(tmp_path / "tiny")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|tool_call>", "<tool_call|>"]})
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.resize_token_embeddings(len(tokenizer))
    call = "<|tool_call>call:add{a:1}<tool_call|>"
    assert (
        tokenizer.decode(tokenizer.encode(call, add_special_tokens=False), skip_special_tokens=True)
        == "call:add{a:1}"
    )
    rows = [tokenizer.encode(text, add_special_tokens=False) for text in (call, "Hi")]
    prompts = ["Add one", "Hello there, how are you"]  # unequal: the batch is left padded
    length = tokenizer(prompts, padding=True, return_tensors="pt").input_ids.shape[1]
    writes = LogitsProcessorList([_Writes(rows, length, tokenizer.eos_token_id)])
    answers = generate_text(model, tokenizer, prompts, 16, logits_processor=writes)
    assert answers == [call, "Hi"]  # "Hi" ended early: no eos, no padding in its text
    assert wb.parse_tool_calls(answers[0])[0]["function"] == {"name": "add", "arguments": {"a": 1}}


def test_a_character_the_token_limit_cuts_is_left_out_as_streaming_leaves_it(tmp_path):
    """A Chinese character is three byte tokens here: an answer cut after two of them ended
    in a replacement character, shown in evaluations and the report."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList

    folder = build_tiny_model(tmp_path / "tiny")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    answer = tokenizer.encode("你好我", add_special_tokens=False)
    assert len(answer) > 3 and tokenizer.decode(answer[:-1]).endswith("\ufffd")
    length = tokenizer(["Say hello"], return_tensors="pt").input_ids.shape[1]
    writes = LogitsProcessorList([_Writes([answer], length, tokenizer.eos_token_id)])
    cut = generate_text(model, tokenizer, ["Say hello"], len(answer) - 1, logits_processor=writes)
    assert cut == ["你好"]
    whole = generate_text(model, tokenizer, ["Say hello"], len(answer), logits_processor=writes)
    assert whole == ["你好我"]


def test_a_pad_token_the_model_writes_does_not_end_its_answer(tmp_path):
    """generate goes on after a pad token the model chose (so does an export): the answer
    was cut there, showing less than the exported model would say."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList

    folder = build_tiny_model(tmp_path / "tiny")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    words = [tokenizer.encode(w, add_special_tokens=False) for w in ("Hi", " there")]
    row = [*words[0], tokenizer.pad_token_id, *words[1]]
    prompts = ["Hello", "Hello there, how are you"]  # the first is left padded
    length = tokenizer(prompts, padding=True, return_tensors="pt").input_ids.shape[1]
    writes = LogitsProcessorList([_Writes([row, words[0]], length, tokenizer.eos_token_id)])
    answers = generate_text(model, tokenizer, prompts, 16, logits_processor=writes)
    assert answers == [tokenizer.decode(row), "Hi"]
    assert answers[0] == f"Hi{tokenizer.pad_token} there"


def test_chat_takes_a_batch_or_a_conversation(tuned):
    batch = tuned.generate(["record 3", "record 5"], max_new_tokens=N, chat=True)
    assert batch == [
        tuned.generate(q, max_new_tokens=N, chat=True) for q in ("record 3", "record 5")
    ]
    turns = [
        {"role": "user", "content": "record 3"},
        {"role": "assistant", "content": '{"n": 3}'},
        {"role": "user", "content": "record 5"},
    ]
    answer = tuned.generate(turns, max_new_tokens=N, chat=True)
    prompt = render_prompt(tuned.data.template, tuned.tokenizer, turns)
    expected = generate_text(tuned.model, tuned.tokenizer, [prompt], N, ["<|im_end|>"])[0]
    assert isinstance(answer, str) and answer == expected
    with pytest.raises(SpecError, match="ends with the user's turn"):
        tuned.generate(turns[:2], chat=True)


def test_the_dial_makes_the_json_format_appear(tuned):
    answers = {}
    for x in (0.0, 1.0):
        tuned.set_adapter_strength(x)
        answers[x] = tuned.generate("record 3", max_new_tokens=N, chat=True)
    assert answers[1.0].startswith('{"n":') and answers[1.0].endswith("}")
    assert not answers[0.0].startswith('{"n":')


def test_without_data_chat_uses_the_tokenizers_template(tmp_path, tiny_model_dir):
    s = wb.Session(tmp_path / "no-data", verbose=False)
    s.load_model(str(tiny_model_dir))
    inputs = chat_inputs("Hi", s.tokenizer, None)
    assert inputs.template.name == "tokenizer" and inputs.stop_strings == ["<|im_end|>"]
    expected = generate_text(s.model, s.tokenizer, inputs.prompts, 5, ["<|im_end|>"])[0]
    assert s.generate("Hi", max_new_tokens=5, chat=True) == expected


def test_without_any_template_chat_says_what_to_do(tmp_path):
    folder = build_tiny_model(tmp_path / "no-template", chat_template=False)
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(folder))
    with pytest.raises(SpecError, match=r"no chat template: load_data\(...\) first"):
        s.generate("Hi", chat=True)
    with pytest.raises(SpecError, match="no chat template"):
        s.chat()
    assert isinstance(s.generate("Hi", max_new_tokens=3), str)  # plain completion still works


def test_a_message_given_to_chat_says_chat_takes_tools(tmp_path, tiny_model_dir):
    # s.chat("Hello") said "tools: the tools are not JSON (Expecting value...)".
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    for message in ("Hello", [{"role": "user", "content": "Hello"}]):
        with pytest.raises(SpecError, match=r"its argument is tools=.*not a message.*send"):
            s.chat(message)
    assert s.chat(max_new_tokens=2).send("Hello").answer == s.generate("Hello", 2, chat=True)


# --- the panel ------------------------------------------------------------------------


def test_the_dial_sets_the_models_strength(tuned):
    panel = tuned.chat(max_new_tokens=N)
    assert panel.strength.value == 1.0
    assert (panel.strength.min, panel.strength.max, panel.strength.step) == (0.0, 1.5, 0.05)
    panel.strength.value = 0.5
    assert tuned.adapter_strength == 0.5
    first = lora_layers(tuned.model)[0]
    assert first.scaling["default"] == 0.5 * first._workbench_scaling["default"]
    panel.strength.value = 1.5
    assert tuned.adapter_strength == 1.5
    assert "strength 1.50" in panel.text()


def test_send_shows_the_escaped_message_and_the_models_answer(tuned):
    panel = tuned.chat(max_new_tokens=N)
    message = "<script>alert(1)</script>"
    panel.message.value = message
    turn = panel.send()
    assert turn.message == message and panel.message.value == ""
    assert turn.answer == tuned.generate(message, max_new_tokens=N, chat=True)
    history = panel.history_html.value
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in history
    assert "<script" not in history
    expected = tuned.generate("record 3", max_new_tokens=N, chat=True)
    assert panel.send("record 3").answers == (("model (strength 1.00)", expected),)
    assert len(panel.turns) == 2


def test_side_by_side_answers_with_base_and_tuned(tuned):
    panel = tuned.chat(max_new_tokens=N)
    panel.strength.value = 0.7
    panel.side_by_side.value = True
    turn = panel.send("record 5")
    assert tuned.adapter_strength == 0.7  # the dial's strength again
    tuned.set_adapter_strength(0)
    base = tuned.generate("record 5", max_new_tokens=N, chat=True)
    tuned.set_adapter_strength(0.7)
    at_dial = tuned.generate("record 5", max_new_tokens=N, chat=True)
    assert turn.answers == (("base (strength 0)", base), ("tuned (strength 0.70)", at_dial))
    html = panel.html()
    assert html.count('<div style="flex:1;min-width:0;">') == 2
    assert "base (strength 0)" in html and "tuned (strength 0.70)" in html
    expected = f"you: record 5\nbase (strength 0): {base}\ntuned (strength 0.70): {at_dial}"
    assert panel.text().endswith(printable(expected))  # a control character as its picture


def test_the_dial_follows_a_strength_set_in_code(tuned):
    panel = tuned.chat(max_new_tokens=N, side_by_side=True)
    tuned.set_adapter_strength(0.3)  # in another cell, with the panel open
    turn = panel.send("record 3")
    assert turn.answers[1] == (
        "tuned (strength 0.30)",
        tuned.generate("record 3", max_new_tokens=N, chat=True),
    )
    assert panel.strength.value == 0.3 and tuned.adapter_strength == 0.3


def test_the_display_bundle_has_text_and_a_static_snapshot(tuned):
    panel = tuned.chat(max_new_tokens=N)
    answer = panel.send("record 3").answer
    panel.send("a < b & c")
    bundle = panel._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/plain"] == panel.text()
    assert f"you: record 3\nmodel (strength 1.00): {answer}\n" in bundle["text/plain"]
    html = bundle["text/html"]
    assert "record 3" in html and escape(answer) in html and "a &lt; b &amp; c" in html
    assert "{&quot;n&quot;:" in html  # the JSON answer, escaped
    for outside in ("<script", "src=", "href=", "http", "<link", "@import"):
        assert outside not in html
    assert "answers stop at &#x27;&lt;|im_end|&gt;&#x27;" in html


def test_remember_sends_the_conversation(tuned):
    panel = tuned.chat(max_new_tokens=N, remember=True)
    first = panel.send("record 3")
    second = panel.send("record 5")
    turns = [
        {"role": "user", "content": "record 3"},
        {"role": "assistant", "content": first.answer},
        {"role": "user", "content": "record 5"},
    ]
    assert second.answer == tuned.generate(turns, max_new_tokens=N, chat=True)
    panel.clear()
    assert panel.turns == [] and "(no messages yet)" in panel.html()


# --- run states -----------------------------------------------------------------------


def test_strength_is_refused_while_a_run_trains_and_training_starts_at_one(
    tmp_path, tiny_model_dir
):
    s = wb.Session(tmp_path / "states", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.load_data(ROWS, validation=None, template="chatml")
    run = s.train(max_steps=400, lr=1e-2, wait=False)
    try:
        with pytest.raises(SessionStateError, match=r"set_adapter_strength\(\) is refused"):
            s.set_adapter_strength(0.5)
        with pytest.raises(SessionStateError, match=r"call run.pause\(\) and then chat\(\)"):
            s.chat()
        run.pause()
        with pytest.raises(SessionStateError, match="is paused"):
            s.set_adapter_strength(0.5)
        panel = s.chat(max_new_tokens=3)  # read-only calls work while paused
        assert isinstance(panel.send("record 3").answer, str)
        assert panel.apply_strength(0.5) is None and "is paused" in panel.status.value
        assert panel.strength.value == 1.0 and s.adapter_strength == 1.0
        panel.side_by_side.value = True
        assert panel.send("record 3") is None and "is paused" in panel.status.value
        assert s.adapter_strength == 1.0
    finally:
        run.stop()
        run.wait()
    assert s.set_adapter_strength(0.3) == 0.3
    again = s.resume(run.run_dir, wait=False)
    try:
        assert s.adapter_strength == 1.0  # a run never continues from a scaled adapter
    finally:
        again.stop()
        again.wait()


def test_reset_puts_a_scaled_adapter_back_to_one(tuned):
    tuned.set_adapter_strength(0.2)
    reset_adapter_strength(tuned.model)
    assert tuned.adapter_strength == 1.0


# --- other architectures and layer kinds ----------------------------------------------


@pytest.mark.parametrize(
    ("name", "options", "lora"),
    [
        ("gpt2", {}, wb.LoRA(r=8)),
        ("4bit", {"quantization": "4bit"}, wb.LoRA(r=8)),
        ("8bit", {"quantization": "8bit"}, wb.LoRA(r=8)),
        ("dora", {}, wb.LoRA(r=8, use_dora=True)),
    ],
)
def test_the_dial_works_beyond_plain_llama(
    tmp_path, tiny_model_dir, tiny_gpt2_dir, name, options, lora
):
    model_dir = tiny_gpt2_dir if name == "gpt2" else tiny_model_dir
    s = wb.Session(tmp_path / name, verbose=False)
    s.load_model(str(model_dir), **options)
    s.load_data(ROWS, validation=None, template="chatml")
    assert s.train(max_steps=8, lr=1e-2, lora=lora, wait=False).wait().state.value == "finished"
    model = s.model.eval()
    grads = [p.requires_grad for p in model.parameters()]
    untouched = logits(model)
    s.set_adapter_strength(0)
    at_zero = logits(model)
    s.set_adapter_strength(1.5)
    s.set_adapter_strength(1)
    assert torch.equal(logits(model), untouched)
    assert [p.requires_grad for p in model.parameters()] == grads
    torch.testing.assert_close(at_zero, base_logits(model), atol=1e-6, rtol=0)
    panel = s.chat(max_new_tokens=4, side_by_side=True)
    turn = panel.send("record 3")
    assert [label for label, _ in turn.answers] == ["base (strength 0)", "tuned (strength 1.00)"]
    assert turn.answer == s.generate("record 3", max_new_tokens=4, chat=True)


def test_the_chat_panel_reads_calls_as_the_offered_tools_declare_them():
    from workbench.widgets.chat_panel import ChatPanel

    written = "<function=lookup><parameter=code>10115</parameter></function>"
    tool = {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {"type": "object", "properties": {"code": {"type": "string"}}},
        },
    }
    offered = ChatPanel(lambda messages, max_new_tokens: written, tools=[tool])
    offered.send("Where is 10115?")
    assert 'calls lookup({"code": "10115"})' in offered.text()
    assert "lookup({&quot;code&quot;: &quot;10115&quot;})" in offered.html()
    bare = ChatPanel(lambda messages, max_new_tokens: written)
    bare.send("Where is 10115?")
    assert 'calls lookup({"code": 10115})' in bare.text()  # no schema: read as JSON


def test_a_bool_for_max_new_tokens_and_a_list_sent_to_the_panel_are_refused(tuned):
    # max_new_tokens=True generated one token; send(["a", "b"]) raised AttributeError
    with pytest.raises(SpecError, match=r"max_new_tokens=True must be a positive integer"):
        tuned.generate("record 3", max_new_tokens=True)
    panel = tuned.chat()
    with pytest.raises(SpecError, match=r"send\(\) takes one message as text, not list"):
        panel.send(["record 3", "record 5"])
    assert panel.turns == []


def test_a_rendered_text_prompt_ends_at_the_templates_end_of_turn_as_the_chat_does(tuned):
    prompt = tuned.example(3).prompt
    assert prompt == "<|im_start|>user\nrecord 3<|im_end|>\n<|im_start|>assistant\n"
    answer = tuned.generate(prompt, max_new_tokens=N)
    # the tuned model writes its end of turn and would go on into another turn after it
    assert answer == tuned.generate("record 3", max_new_tokens=N, chat=True)
    assert answer.startswith('{"n":') and "<|im_end|>" not in answer
    assert tuned.generate(prompt, max_new_tokens=N, stop_strings='"n"') == "{"


def test_an_empty_reply_is_said_to_be_empty_in_the_panel_and_its_text():
    # An empty answer was a blank box, and "model: " in the text fallback.
    from workbench._display import EMPTY_ANSWER
    from workbench.widgets.chat_panel import ChatPanel

    replies = iter([" \n", "ok"])
    panel = ChatPanel(lambda messages, max_new_tokens: next(replies))
    panel.send("first")
    panel.send("second")
    assert panel.html().count(EMPTY_ANSWER) == 1
    assert "model: (empty answer)" in panel.text() and "model: ok" in panel.text()
