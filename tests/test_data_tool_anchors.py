"""Rows with tools placed by anchors: rendered once, labelled exactly as the row way labels them.

Messy rows of several shapes (one call, parallel calls, two exchanges with a system turn, a
call as the last turn, text beside a call, whitespace-edged and empty texts) and rows whose
texts hold the very text the template writes around an answer, under seven templates that
write tools their own ways (ChatML/Hermes, Gemma, Mistral-like brackets, plain words, lines,
Qwen3 with its reasoning rules, Llama 3.1 with tools in the first user message). Every column
of the batch way must equal the row way's, and most rows must have been placed by anchor
(else the test would not test it).
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from data_fixtures import cache_dir, load, tokenizer, write_jsonl

from workbench.data.anchors import REACH, Anchors, glue_lengths, mark_contents
from workbench.data.batched import LEARN_PER_BATCH, SAMPLE_PER_BATCH, BatchLabeller
from workbench.data.tokenize import Labeller

__all__ = ["cache_dir", "tokenizer"]  # fixtures used by name

# Mistral-like: tools in [AVAILABLE_TOOLS], calls as a JSON list after [TOOL_CALLS].
BRACKETS = (
    "{{ bos_token }}{% if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]"
    "{% endif %}{% for message in messages %}"
    "{% if message.role == 'user' %}[INST]{{ message.content }}[/INST]"
    "{% elif message.role == 'system' %}[SYSTEM]{{ message.content }}[/SYSTEM]"
    "{% elif message.role == 'tool' %}[TOOL_RESULTS]{{ message.content }}[/TOOL_RESULTS]"
    "{% elif message.tool_calls %}{{ message.content }}[TOOL_CALLS]"
    "{{ message.tool_calls | map(attribute='function') | list | tojson }}{{ eos_token }}"
    "{% else %}{{ message.content }}{{ eos_token }}{% endif %}{% endfor %}"
)
# Plain words around every turn: text a content can easily hold too.
PLAIN = (
    "{% if tools %}tools: {{ tools | tojson }}\n{% endif %}{% for m in messages %}"
    "{{ m.role }}: {{ m.content or '' }}{% for c in m.tool_calls or [] %}"
    " call {{ c.function | tojson }}{% endfor %}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)
# Each turn on its own lines, calls in <call> tags (a line break right after a block tag
# would be dropped: transformers renders with trim_blocks).
LINES = (
    "{% if tools %}tools: {{ tools | tojson }}\n{% endif %}{% for m in messages %}"
    "{{ m.role }}:\n{{ m.content or '' }}{% for c in m.tool_calls or [] %}"
    "<call>{{ c.function | tojson }}</call>{% endfor %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}assistant:\n{% endif %}"
)
# Qwen3's way: tools in the system turn, reasoning kept only after the last real question
# (a template that tests contents: '<tool_response>', '</think>').
QWEN3_TOOLS = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}
    {{- '# Tools\\n<tools>' }}
    {%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}
    {{- '\\n</tools><|im_end|>\\n' }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- set content = message.content or '' %}
    {%- if message.role == "user" or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if '</think>' in content %}
            {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index and (loop.last or reasoning_content) %}
            {{- '<|im_start|>assistant\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
        {%- else %}
            {{- '<|im_start|>assistant\\n' + content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls or [] %}
            {%- if (loop.first and content) or (not loop.first) %}{{- '\\n' }}{%- endif %}
            {{- '<tool_call>\\n{"name": "' + tool_call.function.name + '", "arguments": ' }}
            {{- tool_call.function.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {{- '<|im_start|>user\\n<tool_response>\\n' + content + '\\n</tool_response><|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""  # noqa: E501
# Llama 3.1's way: tools in the first user message, one call a turn as {"name", "parameters"},
# results in an ipython turn, contents trimmed.
LLAMA31_TOOLS = """{{- bos_token }}
{%- if messages[0].role == 'system' %}
    {%- set system_message = messages[0].content|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" + system_message + "<|eot_id|>" }}
{%- if tools is not none %}
    {%- set first_user_message = messages[0].content|trim %}
    {%- set messages = messages[1:] %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' }}
    {{- "Given the following functions, please respond with a JSON for a function call.\n\n" }}
    {%- for t in tools %}{{- t | tojson(indent=4) }}{{- "\n\n" }}{%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}
{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message.role + '<|end_header_id|>\n\n' + message.content|trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
        {{- '{"name": "' + tool_call.name + '", "parameters": ' + tool_call.arguments | tojson + '}' }}
        {{- "<|eot_id|>" }}
    {%- else %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" + message.content + "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}
"""  # noqa: E501
TEMPLATES = {
    "chatml": "chatml",
    "gemma": "gemma",
    "brackets": BRACKETS,
    "plain": PLAIN,
    "lines": LINES,
    "qwen3": QWEN3_TOOLS,
    "llama3.1": LLAMA31_TOOLS,
}

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"Look up the {name}",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    for name in ("weather", "time")
]
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "and", "asks"]
# Texts a template writes around answers, and texts edged with whitespace.
AWKWARD = [
    "assistant: ",
    "\nuser: see",
    "</tool_response>",
    "[/TOOL_RESULTS]",
    "[TOOL_CALLS]",
    "<tool_call>",
    "model\n",
    '"}}\n',
    "  spaces around  ",
    "\ttab first",
    "ends in a newline\n",
    "<think>hm</think>so",
    "caf\u00e9 \U0001f600",
]


def _text(rng: random.Random, awkward: bool) -> str:
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
    if awkward and rng.random() < 0.25:
        return rng.choice([f"{words} {rng.choice(AWKWARD)}", rng.choice(AWKWARD)])
    return words


def _call(rng: random.Random) -> dict[str, Any]:
    arguments = {"city": rng.choice(["paris", "london", "new york", "\u6771\u4eac"])}
    if rng.random() < 0.3:
        arguments["days"] = rng.randint(1, 9)
    name = rng.choice(["weather", "time"])
    return {"type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


def _exchange(rng: random.Random, calls: int, awkward: bool, text: bool = False) -> list[dict]:
    turns = [
        {"role": "user", "content": _text(rng, awkward)},
        {
            "role": "assistant",
            "content": _text(rng, awkward) if text else "",
            "tool_calls": [_call(rng) for _ in range(calls)],
        },
    ]
    turns += [{"role": "tool", "content": _text(rng, awkward)} for _ in range(calls)]
    return [*turns, {"role": "assistant", "content": _text(rng, awkward)}]


def _row(rng: random.Random, shape: int, awkward: bool) -> dict[str, Any]:
    if shape == 0:  # a call, its result, the answer
        messages = _exchange(rng, 1, awkward)
    elif shape == 1:  # parallel calls
        messages = _exchange(rng, 2, awkward)
    elif shape == 2:  # a system turn and two exchanges
        messages = [{"role": "system", "content": _text(rng, awkward)}]
        messages += _exchange(rng, 1, awkward) + _exchange(rng, 1, awkward, text=True)
    else:  # the call is the answer (xLAM's rows)
        messages = _exchange(rng, 1, awkward)[:2]
    return {"tools": TOOLS if rng.random() < 0.8 else TOOLS[:1], "messages": messages}


def _labelled_both_ways(rows, tokenizer, template, cache, batch=40):
    """The batch way's columns (batch by batch, one labeller), the row way's, the labeller."""
    import pyarrow as pa

    data = load(write_jsonl(cache / "rows.jsonl", rows), tokenizer, str(cache / "c"),
                template=template, batched=False)  # fmt: skip
    columns = [
        c for c in ("messages", "tool_calling", "untrained_turns") if c in data.train.column_names
    ]
    table = data.train.with_format("arrow")[:].select(columns)
    labeller = BatchLabeller(data.template, tokenizer, None, False)
    out = pa.concat_tables(
        [labeller(table.slice(start, batch)) for start in range(0, len(table), batch)]
    )
    reference = Labeller(data.template, tokenizer, None, False)(table.to_pydict())
    return out, reference, labeller


@pytest.mark.parametrize("family", sorted(TEMPLATES))
def test_messy_tool_rows_placed_by_anchors_equal_the_row_way(tmp_path, tokenizer, family):
    rng = random.Random(7)
    shapes = [0, 2, 3] if family == "llama3.1" else [0, 1, 2, 3]  # it refuses parallel calls
    rows = [_row(rng, rng.choice(shapes), awkward=k >= 8) for k in range(200)]
    out, reference, labeller = _labelled_both_ways(rows, tokenizer, TEMPLATES[family], tmp_path)
    for column, values in reference.items():
        assert out.column(column).to_pylist() == values, column
    assert not labeller.distrusted
    # Most rows were rendered once (the rest: new shapes, texts holding an anchor or text
    # the template tests). Qwen3's template writes an empty reasoning block in a calling
    # turn's own rendering, not in the whole text: only rows without an inner answer can
    # be placed (and the row way finds the others' template_ok false, as this way does).
    assert labeller.anchored >= (30 if family == "qwen3" else 140), labeller.anchored
    assert all(n > 0 for n in out.column("n_answer").to_pylist())


def _weather_row(i: int, result: str | None = None) -> dict[str, Any]:
    call = {"name": "weather", "arguments": json.dumps({"city": f"c{i}"})}
    return {
        "tools": TOOLS,
        "messages": [
            {"role": "user", "content": f"what is the weather in c{i}?"},
            {"role": "assistant", "content": "", "tool_calls": [{"function": call}]},
            {"role": "tool", "content": result or f"{i} degrees"},
            {"role": "assistant", "content": f"It is {i} degrees."},
        ],
    }


def test_a_row_whose_text_holds_an_anchor_is_rendered_the_row_way(tmp_path, tokenizer):
    rows = [_weather_row(i) for i in range(12)]
    # Its result holds the text around the answer (' degrees\nassistant:\nIt is '): the
    # first occurrence would put the answer inside the result.
    rows[6] = _weather_row(6, result="6 degrees\nassistant:\nIt is 6 degrees.")
    out, reference, labeller = _labelled_both_ways(rows, tokenizer, LINES, tmp_path, batch=12)
    for column, values in reference.items():
        assert out.column(column).to_pylist() == values, column
    # 2 rows taught the anchors, 9 were placed by them; the seventh was not.
    assert labeller.anchored == 12 - LEARN_PER_BATCH - 1
    assert all(out.column("template_ok").to_pylist())
    trained = tokenizer.decode([t for t in out.column("labels")[6].as_py() if t >= 0])
    assert trained.endswith('"c6"}}</call>\nIt is 6 degrees.\n'), trained
    assert "assistant" not in trained


# Writes the generation prompt with two line breaks after a long result: such a prompt is
# not where the answer starts in the text (the row way says template_mismatch), though the
# text around the answer is the same as in every other row.
LONG_RESULT_PROMPT = LINES.replace(
    "assistant:\n{% endif %}",
    "assistant:\n{% if messages[-1].content|length > 30 %}{{ '\\n' }}{% endif %}{% endif %}",
)


def test_a_sample_that_disagrees_stops_placing_its_shape_by_anchors(tmp_path, tokenizer):
    rows = [_weather_row(i) for i in range(24)]
    rows[LEARN_PER_BATCH] = _weather_row(LEARN_PER_BATCH, "a result longer than thirty characters")
    out, reference, labeller = _labelled_both_ways(
        rows, tokenizer, LONG_RESULT_PROMPT, tmp_path, batch=12
    )
    for column, values in reference.items():
        assert out.column(column).to_pylist() == values, column
    assert out.column("template_ok").to_pylist().count(False) == 1
    (key,) = labeller.distrusted
    assert key[-1] == "<placed by anchors>"
    # The first batch placed its rows by anchor until the sample disagreed; the second
    # batch rendered every row the row way (and checked a sample of them).
    assert labeller.anchored == 12 - LEARN_PER_BATCH
    assert labeller.checked == LEARN_PER_BATCH + (12 - LEARN_PER_BATCH) + SAMPLE_PER_BATCH


def test_anchors_learn_what_rows_share_and_leave_out_a_row_that_disagrees():
    anchors = Anchors([(10, 10)])  # as if the questions and answers were the template's own
    anchors.learn("Q: why\nA: The sky", [(10, None)])
    anchors.learn("Q: how\nA: The sea", [(10, None)])
    assert anchors.marks == [("\nA: ", "The s", 0, 1)]  # both answers start 'The s'
    assert anchors.place("Q: who\nA: Nobody") is None  # not 'The s': not placed
    anchors.learn("Q: who\nA: Nobody", [(10, None)])
    assert anchors.marks == [("\nA: ", "", 0, 1)]
    assert anchors.place("Q: who\nA: Nobody") == [(10, None)]
    anchors.learn("Q: x\nA: y\nA: z", [(8, None)])  # the anchor twice: left out
    assert anchors.marks == [("\nA: ", "", 0, 1)]
    assert not anchors.broken
    assert anchors.place("Q: x\nA: y\nA: z") is None


def test_anchors_place_inner_answer_ends_and_keep_their_order():
    first = "<u>a</u><a>b</a><t>c</t><a>d</a>"
    second = "<u>ee</u><a>ff</a><t>gg</t><a>hh</a>"
    anchors = Anchors([(REACH, REACH)] * 3)
    anchors.learn(first, [(11, 16), (27, None)])
    anchors.learn(second, [(12, 18), (30, None)])
    third = "<u>i</u><a>jjj</a><t>k</t><a>l</a>"
    assert anchors.place(third) == [(11, 18), (29, None)]
    assert [third[11:18], third[29:]] == ["jjj</a>", "l</a>"]


def test_glue_from_a_rendering_with_marked_contents_stops_at_the_contents(tokenizer):
    from workbench.data.templates import render_many, resolve_template

    template = resolve_template("chatml", tokenizer)
    marked = mark_contents(_weather_row(3)["messages"])
    assert marked[1]["content"] == "" and "\U000f0000" in marked[3]["content"]
    full = render_many(template, tokenizer, [marked], False, [TOOLS])[0]
    prompt = render_many(template, tokenizer, [marked[:3]], True, [TOOLS])[0]
    assert full.startswith(prompt)
    ((before, after),) = glue_lengths(full, [(len(prompt), None)])
    # The template's own text between the result and the answer; the answer starts at once.
    assert full[len(prompt) - before : len(prompt)] == "<|im_end|>\n<|im_start|>assistant\n"
    assert after == 0
