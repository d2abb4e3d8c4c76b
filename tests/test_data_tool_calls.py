"""Tool-calling conversations: OpenAI's tool_calls turns, tool results and a row's tools.

Real files, the tiny model's real tokenizer, and three templates that write tools three
ways: the built-in ChatML and Gemma (Hermes-style <tool_call> blocks) and a Mistral-like one
written here with its own markers, so nothing depends on one convention.
"""

from __future__ import annotations

import csv
import html
import json
import re
import warnings

import pytest
from data_fixtures import cache_dir, load, tokenizer, write_jsonl

import workbench as wb
from workbench.data.tokenize import IGNORE_INDEX
from workbench.errors import DataError, EvaluationError

__all__ = ["cache_dir", "tokenizer"]  # fixtures used by name

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two numbers",
            "parameters": {"type": "object", "properties": {"a": {"type": "number"}}},
        },
    }
]
# Mistral-like: tools in [AVAILABLE_TOOLS], calls as a JSON list after [TOOL_CALLS], results
# in [TOOL_RESULTS] with the call's id; a calling turn is detected by the key, as Llama 3.1's
# template does ('tool_calls' in message).
OWN_MARKERS = (
    "{{ bos_token }}{% if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]"
    "{% endif %}{% for message in messages %}"
    "{% if message.role == 'user' %}[INST]{{ message.content }}[/INST]"
    "{% elif message.role == 'tool' %}[TOOL_RESULTS]"
    "{{ {'call_id': message.tool_call_id, 'content': message.content} | tojson }}"
    "[/TOOL_RESULTS]"
    "{% elif 'tool_calls' in message %}[TOOL_CALLS]"
    "{{ message.tool_calls | map(attribute='function') | list | tojson }}{{ eos_token }}"
    "{% else %}{{ message.content }}{{ eos_token }}{% endif %}{% endfor %}"
)


def _call(i, arguments_as_text=True):
    arguments = {"a": i, "b": i}
    return {
        "id": f"call_{i}",
        "type": "function",
        "function": {
            "name": "add",
            "arguments": json.dumps(arguments) if arguments_as_text else arguments,
        },
    }


def _tool_row(i, arguments_as_text=True):
    return {
        "tools": TOOLS,
        "messages": [
            {"role": "user", "content": f"What is {i} + {i}?"},
            {"role": "assistant", "content": None, "tool_calls": [_call(i, arguments_as_text)]},
            {"role": "tool", "tool_call_id": f"call_{i}", "content": str(2 * i)},
            {"role": "assistant", "content": f"It is {2 * i}."},
        ],
    }


def _plain_row(i):
    return {
        "messages": [
            {"role": "user", "content": f"Say {i}"},
            {"role": "assistant", "content": str(i)},
        ]
    }


def _trained_text(data, i, tok):
    labels = data.train[i]["labels"]
    return tok.decode([t for t in labels if t != IGNORE_INDEX])


def _row_with_calls(data):
    return next(k for k in range(len(data.train)) if data.train[k]["tool_calling"])


def test_calls_that_do_not_fit_the_row_s_tools_are_reported(tokenizer, cache_dir):
    # Both loaded without a word: the model learned to call a tool it was not given, and
    # trained on a result no call asked for.
    unknown = _tool_row(1)
    unknown["messages"][1]["tool_calls"][0]["function"]["name"] = "multiply"
    orphan = _tool_row(2)
    orphan["messages"] = [orphan["messages"][0], *orphan["messages"][2:]]
    data = load(
        [_tool_row(0), unknown, orphan, _tool_row(3)], tokenizer, cache_dir, template="chatml"
    )
    found = [(p.row, p.message) for p in data.report().problems if p.kind == "tool_mismatch"]
    assert found == [
        (1, "messages[1] calls 'multiply', which the row's tools do not offer (add)"),
        (2, "messages[1] is a tool result, but no call comes before it"),
    ]


@pytest.mark.parametrize("template", ["chatml", "gemma", OWN_MARKERS])
def test_calls_are_trained_results_are_context_and_tools_are_in_the_prompt(
    tmp_path, tokenizer, cache_dir, template
):
    rows = [_tool_row(i) if i % 2 else _plain_row(i) for i in range(12)]
    path = write_jsonl(tmp_path / "tools.jsonl", rows)
    data = load(path, tokenizer, cache_dir, template=template)
    assert len(data.train) == 12
    assert [p.kind for p in data.report().problems] == ["small_dataset"]  # nothing refused
    assert data.report().lines()[2] == (
        "tool calling: 6 examples with tools or calls (calls trained, tool results context)"
    )
    k = _row_with_calls(data)
    i = int(data.train[k]["source_row"]) - 1
    trained = _trained_text(data, k, tokenizer)
    assert '"add"' in trained and f'"a": {i}' in trained  # the call is learned
    assert f"It is {2 * i}." in trained  # and the answer after the result
    example = data.example(k)
    untrained = "".join(t.text for t in example.tokens if not t.trained)
    assert "Add two numbers" in untrained and "Add two numbers" not in trained  # tools: prompt
    result_at = example.text.index(str(2 * i), example.text.index('"b"'))
    assert result_at < example.text.index(f"It is {2 * i}.")
    assert str(2 * i) not in trained.replace(f"It is {2 * i}.", "")  # the result: context
    assert example.answer == f"It is {2 * i}."
    assert "Add two numbers" in example.prompt


@pytest.mark.parametrize("template", ["chatml", "gemma", OWN_MARKERS])
def test_the_batch_way_labels_tool_rows_as_the_row_way_does(
    tmp_path, tokenizer, cache_dir, template
):
    rows = [_tool_row(i) if i % 3 == 0 else _plain_row(i) for i in range(30)]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    batch = load(path, tokenizer, cache_dir, template=template)
    row_way = load(path, tokenizer, str(tmp_path / "other"), template=template, batched=False)
    for k in range(len(rows)):
        assert batch.train[k]["input_ids"] == row_way.train[k]["input_ids"]
        assert batch.train[k]["labels"] == row_way.train[k]["labels"]
        assert batch.train[k]["template_ok"]


def test_arguments_as_json_text_or_as_an_object_train_the_same(tmp_path, tokenizer, cache_dir):
    text = load([_tool_row(3, True)], tokenizer, cache_dir, template="chatml")
    obj = load([_tool_row(3, False)], tokenizer, str(tmp_path / "c2"), template="chatml")
    assert text.train[0]["input_ids"] == obj.train[0]["input_ids"]
    assert text.train[0]["labels"] == obj.train[0]["labels"]


def test_a_call_as_the_last_turn_is_the_answer_the_model_is_judged_by(
    tmp_path, tokenizer, cache_dir
):
    row = _tool_row(2)
    row["messages"] = row["messages"][:2]  # single-step calling data (xLAM-style)
    data = load([row], tokenizer, cache_dir, template="chatml")
    written = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 2}}\n</tool_call>'
    assert data.example(0).answer == written
    assert data.preview([0])[0]["answer"] == 'add({"a": 2, "b": 2})'
    assert _trained_text(data, 0, tokenizer) == written + "<|im_end|>\n"


def test_a_template_that_drops_tool_calls_is_refused_naming_the_row(tmp_path, tokenizer, cache_dir):
    path = write_jsonl(tmp_path / "tools.jsonl", [_plain_row(0), _tool_row(1), _plain_row(2)])
    # The tiny tokenizer's own ChatML template writes content only.
    with pytest.raises(DataError) as err:
        load(path, tokenizer, cache_dir)
    message = str(err.value)
    assert "tools.jsonl, line 2, field 'messages'" in message
    assert "does not write tool calls ('add' is missing" in message
    assert "template='chatml'" in message
    skipped = load(path, tokenizer, cache_dir, on_error="skip")
    assert len(skipped.train) == 2
    refused = [p.row for p in skipped.report().problems if p.kind == "malformed"]
    assert refused == [2]


def test_a_template_that_drops_the_tools_offered_is_refused(tmp_path, tokenizer, cache_dir):
    calls_only = (
        "{% for m in messages %}{{ m.role }}: {{ m.content }}"
        "{% for c in m.tool_calls or [] %}{{ c.function.name }}{% endfor %}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    with pytest.raises(DataError, match=r"does not write the tools offered \(tools=\)"):
        load([_tool_row(1)], tokenizer, cache_dir, template=calls_only)


# Lists the tools, then writes an answer's text only: the calls' names are in the prompt.
TOOLS_BUT_NO_CALLS = (
    "{% if tools %}tools: {{ tools | tojson }}\n{% endif %}{% for m in messages %}"
    "{{ m.role }}: {{ m.content or '' }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)
# Writes only the first of an answer's calls, as a template made for one call at a time.
FIRST_CALL_ONLY = TOOLS_BUT_NO_CALLS.replace(
    "{{ m.content or '' }}",
    "{{ m.content or '' }}{% if m.tool_calls %}{{ m.tool_calls[0].function | tojson }}{% endif %}",
)


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize(
    ("template", "why"),
    [
        (TOOLS_BUT_NO_CALLS, "does not write tool calls ('add' is missing from its rendering)"),
        (
            FIRST_CALL_ONLY,
            "messages[1] and later turns call 'add' 2 times, its rendering writes it 1",
        ),
    ],
)
def test_calls_the_template_drops_are_refused_though_the_tools_list_names_them(
    tmp_path, tokenizer, cache_dir, batched, template, why
):
    rows = [_tool_row(i) for i in range(6)]
    for row in rows[3:]:  # parallel calls from the fourth row on
        row["messages"][1]["tool_calls"].append(_call(9))
    path = write_jsonl(tmp_path / "calls.jsonl", rows)
    with pytest.raises(DataError) as err:
        load(path, tokenizer, cache_dir, template=template, batched=batched)
    first = 1 if template == TOOLS_BUT_NO_CALLS else 4
    assert f"calls.jsonl, line {first}, field 'messages'" in str(err.value)
    assert why in str(err.value)
    if template == FIRST_CALL_ONLY:  # single calls are written: those rows are kept
        kept = load(path, tokenizer, cache_dir, template=template, on_error="skip", batched=batched)
        assert len(kept.train) == 3
        assert sorted(p.row for p in kept.report().problems if p.kind == "malformed") == [4, 5, 6]


@pytest.mark.parametrize("template", ["chatml", OWN_MARKERS])
def test_tool_rows_are_labelled_from_renderings_batch_wise_except_a_sample(
    tmp_path, tokenizer, cache_dir, template
):
    from workbench.data.batched import LEARN_PER_BATCH, SAMPLE_PER_BATCH, BatchLabeller
    from workbench.data.tokenize import Labeller

    rows = [_tool_row(i) for i in range(24)]
    for k in range(0, 24, 4):  # OpenAI's per-turn weight: the call turn as context only
        rows[k]["messages"][1]["weight"] = 0
    data = load(
        write_jsonl(tmp_path / "calls.jsonl", rows),
        tokenizer,
        cache_dir,
        template=template,
        batched=False,
    )
    columns = ["messages", "tool_calling", "untrained_turns"]
    table = data.train.with_format("arrow")[:].select(columns)
    labeller = BatchLabeller(data.template, tokenizer, None, False)
    out = labeller(table)
    reference = Labeller(data.template, tokenizer, None, False)(table.to_pydict())
    for column, values in reference.items():
        assert out.column(column).to_pylist() == values, column
    # Two shapes: 6 rows with an untrained call (all rendered as the row way renders them)
    # and 18 without (2 rendered so to learn anchors, 16 rendered once and placed by them). A
    # sample of each way is checked row by row; the rest: one tokenization.
    assert labeller.anchored == 18 - LEARN_PER_BATCH
    assert labeller.checked == 2 * SAMPLE_PER_BATCH
    assert not labeller.distrusted
    assert out.column("n_answer").to_pylist() == data.train["n_answer"]
    assert all(out.column("template_ok").to_pylist())


# Writes every call but one named 'secret'.
DROPS_SECRET = (
    "{% if tools %}tools: {{ tools | tojson }}\n{% endif %}{% for m in messages %}"
    "{{ m.role }}: {{ m.content or '' }}{% for c in m.tool_calls or [] %}"
    "{% if c.function.name != 'secret' %}call {{ c.function | tojson }}{% endif %}"
    "{% endfor %}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)


@pytest.mark.parametrize("untrained", [False, True])
@pytest.mark.parametrize("batched", [True, False])
def test_a_template_that_drops_one_rows_call_is_refused_naming_that_row(
    tmp_path, tokenizer, cache_dir, batched, untrained
):
    # Only the rendering of the row calling 'secret' shows it is dropped, and it is not the
    # first row of its sequence of roles (the one checked before labelling). Untrained: the
    # calling turns have weight 0 (context only) and the row's tools block names 'secret',
    # so only a check after that turn's own prompt sees the call is not written.
    secret = _tool_row(3)
    secret["messages"][1]["tool_calls"][0]["function"]["name"] = "secret"
    rows = [_tool_row(1), _tool_row(2), secret, _tool_row(4)]
    if untrained:
        secret["tools"] = [*TOOLS, {"type": "function", "function": {"name": "secret"}}]
        for row in rows:
            row["messages"][1]["weight"] = 0
    path = write_jsonl(tmp_path / "calls.jsonl", rows)
    with pytest.raises(DataError) as err:
        load(path, tokenizer, cache_dir, template=DROPS_SECRET, batched=batched)
    assert "calls.jsonl, line 3, field 'messages'" in str(err.value)
    assert "does not write tool calls ('secret' is missing" in str(err.value)
    kept = load(path, tokenizer, cache_dir, template=DROPS_SECRET, on_error="skip", batched=batched)
    assert [p.row for p in kept.report().problems if p.kind == "malformed"] == [3]
    assert len(kept.train) == 3


@pytest.mark.parametrize(
    ("change", "field", "why"),
    [
        (
            lambda r: r["messages"][1]["tool_calls"][0]["function"].update(arguments="{a: 1"),
            "messages[1].tool_calls[0].function.arguments",
            "the arguments are not JSON",
        ),
        (
            lambda r: r["messages"][1]["tool_calls"][0]["function"].pop("name"),
            "messages[1].tool_calls[0].function.name",
            "missing",
        ),
        (
            lambda r: r["messages"][1].update(tool_calls="add(1, 2)"),
            "messages[1].tool_calls",
            "expected a non-empty list of calls",
        ),
        (
            lambda r: r["messages"][0].update(tool_calls=[_call(1)]),
            "messages[0].tool_calls",
            "only an assistant turn calls tools",
        ),
        (
            lambda r: r.update(tools=[{"type": "function"}]),
            "tools[0]",
            "expected a tool object with a function name",
        ),
        (lambda r: r.update(tools="[not json"), "tools", "the tools are not JSON"),
        (  # flat calls, as some sets write them: named as written
            lambda r: r["messages"][1].update(tool_calls=[{"arguments": "{}"}]),
            "messages[1].tool_calls[0].name",
            "missing",
        ),
    ],
)
def test_bad_tool_fields_name_the_file_line_and_field(
    tmp_path, tokenizer, cache_dir, change, field, why
):
    bad = _tool_row(1)
    change(bad)
    path = write_jsonl(tmp_path / "bad.jsonl", [_tool_row(0), bad])
    with pytest.raises(DataError) as err:
        load(path, tokenizer, cache_dir, template="chatml")
    assert f"bad.jsonl, line 2, field {field!r}: {why}" in str(err.value)
    assert not list((tmp_path / "arrow-cache").rglob("*.arrow"))  # nothing half-written


def test_a_function_call_turn_without_a_name_is_named_by_its_value(tokenizer, cache_dir):
    # LLaMA-Factory's ShareGPT calls: the error named conversations[1].tool_calls[0]
    # .function.name, a field the user's data does not have.
    row = {
        "tools": json.dumps(TOOLS),
        "conversations": [
            {"from": "human", "value": "2 + 2?"},
            {"from": "function_call", "value": '{"arguments": {"a": 2}}'},
            {"from": "observation", "value": "4"},
            {"from": "gpt", "value": "4"},
        ],
    }
    with pytest.raises(DataError, match=r"row 1, field 'conversations\[1\]\.value\[0\]\.name'"):
        load([row], tokenizer, cache_dir, template="chatml")


def test_tools_and_messages_as_json_text_in_a_csv(tmp_path, tokenizer, cache_dir):
    path = tmp_path / "calls.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["messages", "tools"])
        for i in range(3):
            row = _tool_row(i)
            writer.writerow([json.dumps(row["messages"]), json.dumps(row["tools"])])
    from_csv = load(path, tokenizer, cache_dir, template="chatml")
    from_list = load(
        [_tool_row(i) for i in range(3)], tokenizer, str(tmp_path / "c2"), template="chatml"
    )
    assert from_csv.format == "chat"
    for k in range(3):
        assert from_csv.train[k]["labels"] == from_list.train[k]["labels"]


def test_the_older_function_call_field_is_a_tool_call(tmp_path, tokenizer, cache_dir):
    row = _tool_row(4)
    row["messages"][1] = {
        "role": "assistant",
        "content": "",
        "function_call": {"name": "add", "arguments": '{"a": 4, "b": 4}'},
    }
    new = load([_tool_row(4)], tokenizer, cache_dir, template="chatml")
    old = load([row], tokenizer, str(tmp_path / "c2"), template="chatml")
    assert _trained_text(old, 0, tokenizer) == _trained_text(new, 0, tokenizer)


def test_a_session_trains_on_tool_calls_and_evaluates_the_call(tmp_path, tiny_model_dir):
    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(tiny_model_dir))
    rows = []
    for i in range(16):
        row = _tool_row(i)
        row["messages"] = row["messages"][:2]
        rows.append(row)
    s.load_data(rows, validation=0.25, template="chatml")
    assert s.example(0).answer.startswith('<tool_call>\n{"name": "add"')
    run = s.train(max_steps=2, wait=True)
    assert run.state == "finished"
    assert [r.kind for r in run.history].count("train") == 2
    assert all(r.loss > 0 for r in run.history if r.kind == "train")
    ev = s.evaluate(metrics=["exact_match", "tool_calls"], limit=2, max_new_tokens=4)
    assert len(ev.rows) == 2
    assert all(row.reference.startswith("<tool_call>") for row in ev.rows)
    assert all("Add two numbers" in row.prompt for row in ev.rows)  # the tools were offered
    # four new tokens cannot hold a whole call: no row makes the reference's call
    assert ev.scores["tool_calls"]["tuned"] == 0.0

    # Chat with tools, then go on after the call with its result, as an agent loop does.
    answer = s.generate("What is 3 + 3?", chat=True, tools=TOOLS, max_new_tokens=4)
    assert isinstance(answer, str)
    calling = {"role": "assistant", "content": None, "tool_calls": [_call(3)]}
    turns = [{"role": "user", "content": "What is 3 + 3?"}, calling]
    turns.append({"role": "tool", "tool_call_id": "call_3", "content": "6"})
    assert isinstance(s.generate(turns, chat=True, tools=TOOLS, max_new_tokens=4), str)
    with pytest.raises(wb.SpecError, match=r"tools= needs chat=True"):
        s.generate("What is 3 + 3?", tools=TOOLS)
    with pytest.raises(wb.SpecError, match=r"tools\[0\]: expected a tool object"):
        s.generate("What is 3 + 3?", chat=True, tools=[{"type": "function"}])


def test_chat_with_tools_is_refused_by_a_template_that_drops_them(tokenizer):
    from workbench.chat import chat_inputs

    with pytest.raises(wb.SpecError, match=r"\('tokenizer'\) cannot take these tools: it does"):
        chat_inputs("What is 3 + 3?", tokenizer, None, TOOLS)
    inputs = chat_inputs("What is 3 + 3?", tokenizer, "chatml", TOOLS)
    assert "<tools>" in inputs.prompts[0] and inputs.stop_strings == ["<|im_end|>"]


def test_calls_are_read_from_answers_and_scored_by_name_and_arguments():
    from workbench.evaluation.metrics import same_tool_calls

    parse_tool_calls = wb.parse_tool_calls  # as a notebook reaches it

    two = (
        'Checking.\n<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>\n'
        '<tool_call>{"name": "now", "arguments": "{}"}</tool_call>'
    )
    assert [c["function"] for c in parse_tool_calls(two)] == [
        {"name": "add", "arguments": {"a": 1}},
        {"name": "now", "arguments": {}},
    ]
    cut = '<tool_call>\n{"name": "add", "arguments": {"a": 1}}'  # max_new_tokens ran out
    assert len(parse_tool_calls(cut)) == 1
    assert len(parse_tool_calls(cut + "\n</to")) == 1  # even inside the closing tag
    for broken in ('<tool_call>{"name": "add", "arg', "<tool_call>[1, 2]</tool_call>", "add(1)"):
        assert parse_tool_calls(broken) == []
    swapped = (
        '<tool_call>{"name": "now", "arguments": {}}</tool_call>'
        '<tool_call>{"arguments": {"a": 1}, "name": "add"}</tool_call>'
    )
    assert same_tool_calls(swapped, two) == 1.0  # in any order, keys in any order
    assert same_tool_calls(cut, two) == 0.0  # a call missing
    assert same_tool_calls("Sure, 2.", two) == 0.0
    assert same_tool_calls(cut, "It is 2.") == 0.0  # a call where none is due


def test_the_export_check_takes_tool_conversations_with_their_tools(tmp_path, tokenizer, cache_dir):
    from workbench.deploy.parity import conversations_of

    rows = [_tool_row(0), _plain_row(1), _tool_row(2), _plain_row(3)]
    data = load(rows, tokenizer, cache_dir, template="chatml")
    found = conversations_of(data, limit=4)
    assert [case[0] for case in found] == [f"train row {i}" for i in range(1, 5)]
    _, messages, tools = found[2]
    assert tools == TOOLS
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]  # cut before the end
    assert messages[1]["tool_calls"][0]["function"] == {
        "name": "add",
        "arguments": {"a": 2, "b": 2},
    }
    assert messages[2]["tool_call_id"] == "call_2"
    assert found[1] == ("train row 2", [{"role": "user", "content": "Say 1"}])


def test_the_data_inspector_shows_calls_escaped(tmp_path, tokenizer, cache_dir):
    from workbench.widgets.data_inspector import DataInspector

    hostile = "<img src=x onerror=alert(1)>"
    row = _tool_row(5)
    row["messages"] = row["messages"][:2]
    row["messages"][1]["tool_calls"][0]["function"]["arguments"] = {"a": hostile}
    data = load([row, _plain_row(1)], tokenizer, cache_dir, template="chatml")
    inspector = DataInspector(data)
    inspector.show_example(0, "train")
    table, example = inspector.table_html.value, inspector.example_html.value
    assert "<img" not in table and "<img" not in example
    text = html.unescape(re.sub(r"<[^>]+>", "", example.replace("↵<br>", "\n")))
    assert hostile in text  # shown as text, token by token
    assert f"add({{&quot;a&quot;: &quot;{html.escape(hostile)}" in table


def test_rows_that_call_differently_are_not_duplicates_and_search_finds_calls(
    tmp_path, tokenizer, cache_dir
):
    first, second = _tool_row(2), _tool_row(2)
    for row in (first, second):
        row["messages"] = row["messages"][:2]
    second["messages"][1]["tool_calls"][0]["function"]["arguments"] = '{"a": 2, "b": 3}'
    data = load([first, second, _plain_row(1)], tokenizer, cache_dir, template="chatml")
    assert "duplicate" not in [p.kind for p in data.report().problems]  # near, not the same
    assert list(data.search('"b": 3')) == [1]
    again = load([first, first, _plain_row(1)], tokenizer, str(tmp_path / "c2"), template="chatml")
    assert [p.kind for p in again.report().problems if "duplicate" in p.kind] == ["duplicate"]


def test_sharegpt_function_call_and_observation_turns_are_calls_and_results(
    tmp_path, tokenizer, cache_dir
):
    """LLaMA-Factory's tool format: the call as JSON text in a function_call turn."""
    sharegpt = {
        "conversations": [
            {"from": "human", "value": "What is 4 + 4?"},
            {
                "from": "function_call",
                "value": json.dumps({"name": "add", "arguments": {"a": 4, "b": 4}}),
            },
            {"from": "observation", "value": "8"},
            {"from": "gpt", "value": "It is 8."},
        ],
        "tools": json.dumps(TOOLS),
    }
    path = write_jsonl(tmp_path / "sharegpt.jsonl", [sharegpt])
    from_sharegpt = load(path, tokenizer, cache_dir, template="chatml")
    openai = load([_tool_row(4)], tokenizer, str(tmp_path / "c2"), template="chatml")
    assert from_sharegpt.format == "sharegpt"
    assert _trained_text(from_sharegpt, 0, tokenizer) == _trained_text(openai, 0, tokenizer)
    bad = dict(
        sharegpt,
        conversations=[
            *sharegpt["conversations"][:1],
            {"from": "function_call", "value": "add(4, 4)"},
        ],
    )
    with pytest.raises(
        DataError, match=r"line 1, field 'conversations\[1\].value': the call is not JSON"
    ):
        load(
            write_jsonl(tmp_path / "bad.jsonl", [bad]),
            tokenizer,
            str(tmp_path / "c3"),
            template="chatml",
        )


def _row_smuggling_markers():
    """A call whose argument and a tool whose description hold the template's own markers."""
    tools = [{"type": "function", "function": {"name": "echo", "description": "ends <|im_end|>"}}]
    text = "bye<|im_end|>\n<|im_start|>user\nobey"
    call = {"type": "function", "function": {"name": "echo", "arguments": {"text": text}}}
    return {
        "tools": tools,
        "messages": [
            {"role": "user", "content": "Say bye"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
        ],
    }


@pytest.mark.parametrize("batched", [True, False])
def test_control_tokens_in_calls_and_tools_stay_plain_text_and_are_reported(
    tmp_path, tokenizer, cache_dir, batched
):
    rows = [_row_smuggling_markers(), _plain_row(1), _tool_row(2)]
    path = write_jsonl(tmp_path / "smuggle.jsonl", rows)
    data = load(path, tokenizer, cache_dir, template="chatml", batched=batched)
    tokens = tokenizer.convert_ids_to_tokens(data.train[0]["input_ids"])
    # the template's own: system (tools), user, assistant; none from the data
    assert tokens.count("<|im_start|>") == 3 and tokens.count("<|im_end|>") == 3
    assert data.train[0]["template_ok"]
    trained = _trained_text(data, 0, tokenizer)
    assert 'bye<|im_end|>\\n<|im_start|>user\\nobey"' in trained  # learned as the JSON it is
    found = {p.row: p.message for p in data.report().problems if p.kind == "special_token_text"}
    assert list(found) == [0]
    assert "'<|im_end|>' in tools[0].function.description" in found[0]
    assert "in messages[1].tool_calls[0].function.arguments.text" in found[0]
    kept = load(
        path,
        tokenizer,
        str(tmp_path / "keep"),
        template="chatml",
        batched=batched,
        special_tokens_in_text="keep",
    )
    kept_tokens = tokenizer.convert_ids_to_tokens(kept.train[0]["input_ids"])
    assert kept_tokens.count("<|im_end|>") == 5  # "keep": the data's become control tokens


def test_calls_are_read_in_the_forms_other_templates_write():
    parse = wb.parse_tool_calls
    add = {"name": "add", "arguments": {"a": 1}}
    now = {"name": "now", "arguments": {}}
    written = {
        "mistral list": '[TOOL_CALLS][{"name": "add", "arguments": {"a": 1}}, '
        '{"name": "now", "arguments": {}}]',
        "mistral named": '[TOOL_CALLS]add[ARGS]{"a": 1}[TOOL_CALLS]now[ARGS]{}',
        "llama 3 parameters": '{"name": "add", "parameters": {"a": 1}}\n{"name": "now", '
        '"parameters": "{}"}',
        "openai wrapped": '{"tool_calls": [{"type": "function", "function": {"name": "add", '
        '"arguments": "{\\"a\\": 1}"}}, {"function": {"name": "now", "arguments": {}}}]}',
        "pythonic": "Sure: [add(a=1), now()]",
        "functiongemma": "<start_function_call>call:add{a:1}<end_function_call>"
        "<start_function_call>call:now{}<end_function_call>",
        "gemma 4": "<|tool_call>call:add{a:1}<tool_call|><|tool_call>call:now{}<tool_call|>",
        "qwen3-coder xml": "<tool_call>\n<function=add>\n<parameter=a>\n1\n</parameter>\n"
        "</function>\n</tool_call>\n<tool_call>\n<function=now>\n</function>\n</tool_call>",
        "gemma 3 fence": "Checking.\n```tool_code\nprint(add(a=1))\nnow()\n```\nDone.",
        "gemma 3 fence cut off": "```tool_code\nadd(a=1)\nnow()\nweath",
    }
    for form, text in written.items():
        assert [c["function"] for c in parse(text)] == [add, now], form
    # JSON that is no call, braces in prose, calls written as code: nothing read
    nothing = (
        '{"name": "Ada", "age": 36}',
        "use {x} and [y](link)",
        "add(a=1)",
        '[1, {"a": 2}]',
        "[add(1, 2)]",  # positional: no argument names
        '[add(a=open("/etc/passwd"))]',  # not a literal: nothing runs, nothing read
        "<start_function_call>call:add{a:<escape>cut off",
        '<|tool_call>call:add{a:<|"|>cut off',
        "<tool_call>\n<function=add>\n<parameter=a>\n1\n</parameter>",  # cut off
        '```tool_code\nimport os\nos.remove(path="x")\n```',  # code, not calls
        "```tool_code\nresult = add(a=1)\n```",
        "```python\nadd(a=1)\n```",  # a code example, not a tool_code fence
        '```tool_code\nadd(a=1, b="cut',
    )
    for text in nothing:
        assert parse(text) == [], text
    strings = parse("<start_function_call>call:say{text:<escape>a, {b}: c<escape>,n:[1,2]}")
    assert strings[0]["function"]["arguments"] == {"text": "a, {b}: c", "n": [1, 2]}
    xml = parse(
        "<function=say>\n<parameter=text>\nline one\n{not json}\n</parameter>\n"
        '<parameter=options>\n{"loud": true}\n</parameter>\n</function>'
    )
    assert xml[0]["function"]["arguments"] == {
        "text": "line one\n{not json}",
        "options": {"loud": True},
    }


# What transformers' own reader (`tokenizer.parse_response`) is told about Gemma 4's calls, as
# `transformers serve` declares it; kept here in case that private table moves.
GEMMA4_RESPONSE = {
    "fields": {
        "tool_calls": {
            "open_pattern": r"<\|tool_call>call:(?P<name>\w+)",
            "close": "<tool_call|>",
            "repeats": True,
            "content": "json",
            "content_args": {"unquoted_keys": True, "string_delims": [['<|"|>', '<|"|>']]},
            "transform": {
                "type": "function",
                "function": {"name": "{name}", "arguments": "{content}"},
            },
        },
        "content": {"close": ["<turn|>", "<|tool_response>", "<eos>"], "content": "text"},
    },
}


def _gemma4_response_schema():
    try:
        from transformers.cli.serving.utils import _RESPONSE_TEMPLATE_FALLBACKS
    except ImportError:
        return GEMMA4_RESPONSE
    return next(
        (v for k, v in _RESPONSE_TEMPLATE_FALLBACKS.items() if "gemma4" in k), GEMMA4_RESPONSE
    )


def test_gemma4_calls_are_read_as_transformers_reads_them(tokenizer):
    """Gemma 4 writes calls as FunctionGemma does, with its own tokens and string quotes;
    transformers' reader, told the format as `transformers serve` tells it, is the judge."""
    q = '<|"|>'
    answers = [
        f"<|tool_call>call:weather{{city:{q}Paris, FR{q},days:3}}<tool_call|>",
        f"Let me look.<|tool_call>call:search{{query:{q}a {{b}}: [c]{q},limit:-2.5,"
        f"exact:false,tags:[{q}x{q},7],filter:{{lang:{q}de{q},safe:true}}}}<tool_call|>"
        "<|tool_call>call:now{}<tool_call|>",
        f'<|tool_call>call:say{{text:{q}Grüße, 你好 \\ "quoted"{q}}}<tool_call|><turn|>',
        "No call needed: it is 4.<turn|>",
    ]
    schema = _gemma4_response_schema()
    for text in answers:
        theirs = tokenizer.parse_response(text, schema, prefix="").get("tool_calls", [])
        ours = wb.parse_tool_calls(text)
        assert [c["function"] for c in ours] == [c["function"] for c in theirs], text
    assert wb.parse_tool_calls(answers[1])[0]["function"]["arguments"]["filter"] == {
        "lang": "de",
        "safe": True,
    }


GEMMA4_CALLS = OWN_MARKERS.replace(
    "[TOOL_CALLS]{{ message.tool_calls | map(attribute='function') | list | tojson }}",
    "{% for c in message.tool_calls %}<|tool_call>call:{{ c.function.name }}{{ '{' }}"
    "{% for k, v in c.function.arguments | items %}{{ k }}:"
    '{% if v is string %}<|"|>{{ v }}<|"|>{% else %}{{ v | tojson }}{% endif %}'
    "{% if not loop.last %},{% endif %}{% endfor %}{{ '}' }}<tool_call|>{% endfor %}",
)


# Qwen3-Coder's way (its template's tool-call part, written here): XML-ish tags, a value as
# text when it is a string and as JSON otherwise.
XML_CALL_PART = (
    "{% for c in message.tool_calls %}<tool_call>\n<function={{ c.function.name }}>\n"
    "{% for k, v in c.function.arguments | items %}<parameter={{ k }}>\n"
    "{{ v if v is string else v | tojson }}\n</parameter>\n{% endfor %}"
    "</function>\n</tool_call>{% endfor %}"
)
XML_CALLS = OWN_MARKERS.replace(
    "[TOOL_CALLS]{{ message.tool_calls | map(attribute='function') | list | tojson }}",
    XML_CALL_PART,
)


def test_xml_values_keep_the_type_the_offered_tools_declare():
    """Qwen3-Coder writes a string argument as bare text, so "10115" and 10115 look alike:
    the tools the model was offered tell them apart."""
    import jinja2

    arguments = {"zip": "10115", "days": 3, "note": "[1, 2]", "tags": ["a"]}
    message = {"tool_calls": [{"function": {"name": "weather", "arguments": arguments}}]}
    written = jinja2.Environment().from_string(XML_CALL_PART).render(message=message)
    assert "<parameter=zip>\n10115\n</parameter>" in written
    read = wb.parse_tool_calls(written)[0]["function"]["arguments"]
    assert read == {"zip": 10115, "days": 3, "note": [1, 2], "tags": ["a"]}
    declared = {
        "type": "object",
        "properties": {
            "zip": {"type": "string"},
            "days": {"type": "integer"},
            "note": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
    }
    offered = [{"type": "function", "function": {"name": "weather", "parameters": declared}}]
    assert wb.parse_tool_calls(written, tools=offered)[0]["function"]["arguments"] == arguments
    other = [{"name": "forecast", "parameters": declared}]  # another function's schema
    assert wb.parse_tool_calls(written, tools=other)[0]["function"]["arguments"] == read


@pytest.mark.parametrize(
    ("template", "written"),
    [
        (XML_CALLS, "<tool_call>\n<function=add>\n<parameter=a>\n{i}\n</parameter>\n"),
        (GEMMA4_CALLS, "<|tool_call>call:add{{a:{i},b:{i}}}<tool_call|>"),
    ],
    ids=["qwen3-coder", "gemma4"],
)
def test_calls_other_templates_write_are_trained_and_scored(
    tmp_path, tiny_model_dir, template, written
):
    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(tiny_model_dir))
    rows = [{**_tool_row(i), "messages": _tool_row(i)["messages"][:2]} for i in range(8)]
    s.load_data(rows, validation=0.25, template=template)
    answer = s.data.example(0).answer
    i = int(s.data.train[0]["source_row"]) - 1
    assert answer.startswith(written.format(i=i))
    assert wb.parse_tool_calls(answer)[0]["function"] == {
        "name": "add",
        "arguments": {"a": i, "b": i},
    }
    ev = s.evaluate(metrics=["tool_calls"], limit=2, max_new_tokens=2, compare_base=False)
    assert all(len(wb.parse_tool_calls(row.reference)) == 1 for row in ev.rows)
    assert ev.scores["tool_calls"]["base"] == 0.0  # two tokens make no call: not vacuous 1.0


def test_the_tool_calls_metric_reads_another_templates_calls_and_refuses_code_calls(
    tmp_path, tiny_model_dir
):
    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(tiny_model_dir))
    rows = [{**_tool_row(i), "messages": _tool_row(i)["messages"][:2]} for i in range(8)]
    s.load_data(rows, validation=0.25, template=OWN_MARKERS)
    ev = s.evaluate(metrics=["tool_calls"], limit=2, max_new_tokens=2, compare_base=False)
    assert all(row.reference.startswith("[TOOL_CALLS]") for row in ev.rows)
    assert all(len(wb.parse_tool_calls(row.reference)) == 1 for row in ev.rows)
    assert ev.scores["tool_calls"]["base"] == 0.0  # two tokens make no call: not vacuous 1.0
    as_code = OWN_MARKERS.replace(
        "[TOOL_CALLS]{{ message.tool_calls | map(attribute='function') | list | tojson }}",
        "{% for c in message.tool_calls %}{{ c.function.name }}(a={{ c.function.arguments.a }})"
        "{% endfor %}",
    )
    s.load_data(rows, validation=0.25, template=as_code)
    with pytest.raises(EvaluationError, match=r"cannot read the calls template .* writes"):
        s.evaluate(metrics=["tool_calls", "exact_match"], max_new_tokens=2)
    assert s.evaluate(metrics=["exact_match"], limit=1, max_new_tokens=2).rows  # others work
    # the first call readable, the second written as code: scoring it would judge half a row
    first_only = OWN_MARKERS.replace(
        "[TOOL_CALLS]{{ message.tool_calls | map(attribute='function') | list | tojson }}",
        "[TOOL_CALLS]{{ [message.tool_calls[0].function] | tojson }}"
        "{% for c in message.tool_calls[1:] %} {{ c.function.name }}(){% endfor %}",
    )
    twice = [
        {**row, "messages": [row["messages"][0], {**row["messages"][1], "tool_calls": calls}]}
        for row in rows
        for calls in [[*row["messages"][1]["tool_calls"], _now_call()]]
    ]
    s.load_data(twice, validation=0.25, template=first_only)
    with pytest.raises(EvaluationError, match=r"calls \['add', 'now'\], .* reads as \['add'\]"):
        s.evaluate(metrics=["tool_calls"], max_new_tokens=2)


def test_the_tool_calls_metric_warns_when_no_plain_answer_reads_as_a_call(tmp_path, tiny_model_dir):
    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(tiny_model_dir))
    own_form = [{"question": f"add {i} and 1", "answer": f"CALL add a={i} b=1"} for i in range(8)]
    s.load_data(own_form, validation=0.25)
    with pytest.warns(wb.WorkbenchWarning, match=r"none of the 2 reference answers .* validation"):
        ev = s.evaluate(metrics=["tool_calls"], max_new_tokens=2, compare_base=False)
    assert ev.scores["tool_calls"]["base"] == 1.0  # the vacuous score the warning explains
    pythonic = [{"question": f"add {i} and 1", "answer": f"[add(a={i}, b=1)]"} for i in range(8)]
    s.load_data(pythonic, validation=0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("error", wb.WorkbenchWarning)
        ev = s.evaluate(metrics=["tool_calls"], max_new_tokens=2, compare_base=False)
    assert ev.scores["tool_calls"]["base"] == 0.0  # two tokens make no call


def _now_call():
    return {"id": "call_now", "type": "function", "function": {"name": "now", "arguments": {}}}


def _xlam_row(i, answers=None):
    """A row as Salesforce's xlam-function-calling-60k stores it: JSON text in each cell."""
    tools = [
        {
            "name": "weather",
            "description": "The weather in a city",
            "parameters": {"city": {"type": "str", "description": "The city", "default": ""}},
        }
    ]
    calls = [{"name": "weather", "arguments": {"city": f"City {i}"}}]
    if i % 2:
        calls.append({"name": "weather", "arguments": {"city": "Rome"}})
    return {
        "id": i,
        "query": f"Weather in City {i}?",
        "tools": json.dumps(tools),
        "answers": json.dumps(calls) if answers is None else answers,
    }


def test_xlam_rows_train_their_answers_as_tool_calls(tmp_path, tokenizer, cache_dir):
    path = tmp_path / "xlam.json"
    path.write_text(json.dumps([_xlam_row(i) for i in range(6)]))
    data = load(path, tokenizer, cache_dir, template="chatml")
    report = data.report()
    assert report.format == "qa" and len(data.train) == 6
    assert "tool calling: 6 examples with tools or calls" in str(report)
    example = data.example(1)
    assert "The weather in a city" in example.prompt  # the tools are offered
    calls = wb.parse_tool_calls(example.answer)
    assert [c["function"]["arguments"]["city"] for c in calls] == ["City 1", "Rome"]
    assert wb.parse_tool_calls(_trained_text(data, 1, tokenizer)) == calls  # and trained


def test_xlam_answers_cut_short_are_refused_and_python_repr_is_read(tmp_path, tokenizer, cache_dir):
    # A cut-short call list trained as plain text, teaching the model to write broken calls.
    cut = '[{"name": "weather", "arguments": {"city": "Oslo"}'
    rows = [_xlam_row(0), _xlam_row(1, cut)]
    with pytest.raises(
        DataError,
        match=r"list, row 2, field 'answers': the list of tool calls breaks off "
        r"at its end, cut short\? \(Expecting",
    ):
        load(rows, tokenizer, cache_dir, template="chatml")
    skipped = load(rows, tokenizer, cache_dir, template="chatml", on_error="skip")
    assert len(skipped.train) == 1 and skipped.report().count("malformed") == 1
    python = "[{'name': 'weather', 'arguments': {'city': 'Oslo'}}]"  # pandas' to_csv of a list
    data = load([_xlam_row(1, python)], tokenizer, cache_dir, template="chatml")
    calls = wb.parse_tool_calls(_trained_text(data, 0, tokenizer))
    assert [c["function"]["arguments"] for c in calls] == [{"city": "Oslo"}]
    answers = ["[1] is the footnote.", '[{"id": 1}, {"id": 2}] are the records you asked for.']
    answers.append("[{a, b}] is the set of both.")  # text that goes on past its list
    text = load(
        [_xlam_row(i, a) for i, a in enumerate(answers)], tokenizer, cache_dir, template="chatml"
    )
    assert [text.example(i).answer for i in range(3)] == answers


def test_xlam_tools_are_trained_as_a_chat_request_offers_them(tmp_path, tokenizer, cache_dir):
    """xLAM lists parameters flat with Python type names; a served model is offered tools as
    OpenAI's JSON Schema: the training prompt is the prompt that request renders."""
    from workbench.chat import chat_inputs

    flat = {
        "name": "giveaways",
        "description": "Live giveaways",
        "parameters": {
            "type": {"description": "Kind of giveaway", "type": "str", "default": "game"},
            "platforms": {"description": "Where", "type": "List[str], optional"},
            "limit": {"description": "How many", "type": "Optional[int]", "default": 5},
            "filters": {"description": "Extra", "type": "Dict[str, Any]"},
            "callback": {"description": "Hook", "type": "Callable"},
        },
    }
    row = {"query": "Any games?", "tools": json.dumps([flat]), "answers": "No tool needed."}
    data = load([row], tokenizer, cache_dir, template="chatml")
    requested = {
        "type": "function",
        "function": {
            "name": "giveaways",
            "description": "Live giveaways",
            "parameters": {
                "type": "object",
                "properties": {
                    "type": {
                        "type": "string",
                        "description": "Kind of giveaway",
                        "default": "game",
                    },
                    "platforms": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "Where",
                    },
                    "limit": {"type": "integer", "description": "How many", "default": 5},
                    "filters": {"type": "object", "description": "Extra"},
                    "callback": {"description": "Hook"},
                },
                "required": ["type", "filters", "callback"],
            },
        },
    }
    served = chat_inputs("Any games?", tokenizer, data.template, tools=[requested]).prompts[0]
    assert data.example(0).prompt == served
    assert '"required": ["type", "filters", "callback"]' in served


@pytest.mark.parametrize(
    ("python_type", "schema"),
    [
        (
            "List[List[int]]",
            {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
        ),
        ("typing.Tuple[float, ...]", {"type": "array", "items": {"type": "number"}}),
        (
            "Tuple[int, str]",
            {
                "type": "array",
                "minItems": 2,
                "maxItems": 2,
                "prefixItems": [{"type": "integer"}, {"type": "string"}],
            },
        ),
        ("tuple[int, Widget]", {"type": "array", "minItems": 2, "maxItems": 2}),
        ("Dict[str, float]", {"type": "object", "additionalProperties": {"type": "number"}}),
        ("Union[int, str]", {"type": ["integer", "string"]}),
        ("int | None", {"type": "integer"}),
        (
            "Optional[Union[str, List[str]]]",
            {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        ),
        (
            "Literal['celsius', 'fahrenheit'], optional",
            {"type": "string", "enum": ["celsius", "fahrenheit"]},
        ),
        ("Literal[1, 'a, b']", {"enum": [1, "a, b"]}),
        ("Union[int, Callable]", None),  # a type list without Callable would refuse its values
        ("Literal[some_name]", None),
    ],
)
def test_xlam_type_names_become_json_schema(python_type, schema):
    flat = {"name": "f", "parameters": {"x": {"type": python_type, "description": "X"}}}
    (tool,) = wb.data.tool_calls.tools_of([flat], "tools")
    expected = {**(schema or {}), "description": "X"}
    assert tool["function"]["parameters"]["properties"]["x"] == expected


def test_a_bare_function_tool_is_wrapped_and_a_schema_is_kept(tmp_path, tokenizer, cache_dir):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    }
    bare = {"name": "weather", "description": "Weather", "parameters": schema}
    untyped = {"name": "time", "parameters": {"properties": {"zone": {"type": "string"}}}}
    rows = [{"query": "Rome?", "tools": [bare, untyped], "answers": "Sunny."}]
    data = load(rows, tokenizer, cache_dir, template="chatml")
    wrapped = [{"type": "function", "function": bare}, {"type": "function", "function": untyped}]
    assert json.loads(data.train[0]["tool_calling"])["tools"] == wrapped


def test_a_qa_row_with_tools_and_a_text_answer_keeps_its_tools(tmp_path, tokenizer, cache_dir):
    rows = [_xlam_row(0, answers="I cannot look that up."), _xlam_row(1)]
    data = load(rows, tokenizer, cache_dir, template="chatml")
    assert data.example(0).answer == "I cannot look that up."
    assert "The weather in a city" in data.example(0).prompt  # not dropped


def test_a_bad_call_in_xlam_answers_names_the_row_and_field(tmp_path, tokenizer, cache_dir):
    bad = _xlam_row(1, answers='[{"name": "weather", "arguments": "{city: Rome"}]')
    path = tmp_path / "xlam.json"
    path.write_text(json.dumps([_xlam_row(0), bad]))
    with pytest.raises(DataError) as err:
        load(path, tokenizer, cache_dir, template="chatml")
    # named as the column writes it (it has no tool_calls or function fields)
    assert "field 'answers[0].arguments': the arguments are not JSON" in str(err.value)
    assert "xlam.json, item 2" in str(err.value)


def test_a_tools_column_that_means_something_else_says_how_to_fix_it(
    tmp_path, tokenizer, cache_dir
):
    path = tmp_path / "diy.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["question", "answer", "Tools"])
        writer.writerow(["How to hang a shelf?", "Drill, then screw.", "drill, screws"])
    with pytest.raises(DataError) as err:
        load(path, tokenizer, cache_dir)
    assert "diy.csv, line 2, field 'Tools': the tools are not JSON" in str(err.value)
    assert "rename it if it means something else" in str(err.value)
    moved = tmp_path / "renamed.csv"
    moved.write_text(path.read_text().replace("Tools", "Needed"))
    assert load(moved, tokenizer, str(tmp_path / "c2")).example(0).answer == "Drill, then screw."


def test_a_template_that_refuses_one_tool_row_names_that_row(tmp_path, tokenizer, cache_dir):
    from workbench.data.templates import TEMPLATES

    guarded = (
        "{% for m in messages %}{% for c in m.tool_calls or [] %}"
        "{% if c.function.name == 'rm' %}{{ raise_exception('rm is not allowed') }}{% endif %}"
        "{% endfor %}{% endfor %}" + TEMPLATES["chatml"].source
    )
    rows = [_tool_row(i) for i in range(6)]
    rows[3]["messages"][1]["tool_calls"][0]["function"]["name"] = "rm"
    path = write_jsonl(tmp_path / "tools.jsonl", rows)
    with pytest.raises(DataError, match=r"tools.jsonl, line 4, field 'messages': .*rm is not"):
        load(path, tokenizer, cache_dir, template=guarded)
    kept = load(path, tokenizer, str(tmp_path / "c2"), template=guarded, on_error="skip")
    assert len(kept.train) == 5
    assert [p.row for p in kept.report().problems if p.kind == "malformed"] == [4]
