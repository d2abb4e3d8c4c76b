"""A model tuned on tool calls, exported, proven by what consumes it: plain transformers in
another process, and ``transformers serve`` answered through the OpenAI client."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import workbench as wb

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
QUESTION = [{"role": "user", "content": "Weather in Paris?"}]
CALL = {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}

# Runs without the workbench: only what a user of the exported folder has.
PLAIN_TRANSFORMERS = """
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, tools, messages = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder).eval()
prompt = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                       add_generation_prompt=True)
ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
with torch.no_grad():
    out = model.generate(ids, max_new_tokens=60, do_sample=False)
answer = out[0, ids.shape[1]:]
parsed = tokenizer.parse_response(answer, prefix=prompt)
print(json.dumps({"prompt": prompt, "tool_calls": parsed.get("tool_calls")}))
"""


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, tiny_model_dir):
    """A tiny model that has learned to call ``weather`` for Paris (a few seconds)."""
    s = wb.Session(tmp_path_factory.mktemp("tools") / "run", verbose=False)
    s.load_model(str(tiny_model_dir))
    row = {"tools": TOOLS, "messages": [*QUESTION, {"role": "assistant", "tool_calls": [CALL]}]}
    s.load_data([row] * 16, validation=0, template="chatml")
    run = s.train(max_steps=40, lr=1e-2, wait=True)
    assert run.state == "finished"
    answer = s.generate(QUESTION, chat=True, tools=TOOLS, max_new_tokens=60)
    assert wb.parse_tool_calls(answer) == [CALL]  # the session's own answer
    yield s
    s.close()


def test_plain_transformers_renders_and_reads_the_calls_as_the_session(tuned):
    folder = tuned.export("export/merged", overwrite=True)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            PLAIN_TRANSFORMERS,
            str(folder),
            json.dumps(TOOLS),
            json.dumps(QUESTION),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    from workbench.data.templates import render_prompt

    assert result["prompt"] == render_prompt(
        tuned.data.template, tuned.tokenizer, QUESTION, True, TOOLS
    )
    assert result["tool_calls"] == [CALL]


def test_the_openai_client_gets_tool_calls_from_the_served_export(tuned):
    from openai import OpenAI

    port = 18500 + (hash(str(tuned.run_dir)) % 400)
    server = tuned.serve(port=port)
    try:
        client = OpenAI(base_url=server.url, api_key="unused")
        reply = client.chat.completions.create(
            model=str(server.folder), messages=QUESTION, tools=TOOLS, max_tokens=60
        )
    finally:
        server.stop()
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


def test_the_export_carries_the_template_it_was_tuned_with(tuned, tiny_model_dir):
    from transformers import AutoTokenizer

    own = AutoTokenizer.from_pretrained(tiny_model_dir).chat_template
    folder = tuned.export("export/merged-again", overwrite=True)
    shipped = AutoTokenizer.from_pretrained(folder)
    assert own is not None and "<tool_call>" not in own  # the base model's own: no tools
    assert shipped.chat_template == tuned.data.template.source
    assert shipped.response_template["start_anchor"] == "<|im_start|>assistant\n"


@pytest.mark.parametrize("form", ["safetensors", "gguf"])
def test_the_export_check_sends_the_tools_and_compares_the_call(tuned, form):
    folder = tuned.export(f"export/checked-{form}", format=form, overwrite=True)
    report = tuned.check_export(folder, max_new_tokens=40)
    case = report.cases[0]
    assert case.name == "train row 1"
    assert case.prompt_ids == case.exported_prompt_ids  # tools rendered alike on both sides
    assert "The weather in a city" in tuned.tokenizer.decode(case.exported_prompt_ids)
    assert wb.parse_tool_calls(case.exported_answer) == [CALL]  # the export calls the tool
    assert case.same and report.all_same
    if form == "gguf":  # Ollama 0.30+ renders with the GGUF's template: the training one
        import gguf

        reader = gguf.GGUFReader(str(folder / "model.gguf"))
        assert reader.fields["tokenizer.chat_template"].contents() == tuned.data.template.source
        assert "# Tools: the chat template in the GGUF writes tools" in (
            (folder / "Modelfile").read_text()
        )


def test_the_chat_panel_offers_the_tools_and_shows_the_call(tuned, tmp_path, tiny_model_dir):
    panel = tuned.chat(tools=TOOLS, max_new_tokens=60)
    turn = panel.send("Weather in Paris?")
    assert wb.parse_tool_calls(turn.answer) == [CALL]
    text = panel.text()
    assert "tools offered: weather" in text.splitlines()[0]
    assert 'calls weather({"city": "Paris"})' in text
    assert "calls <code>weather({&quot;city&quot;: &quot;Paris&quot;})</code>" in panel.html()
    # a template that would drop the tools is refused when the panel opens, not at a send
    other = wb.Session(tmp_path / "other", verbose=False)
    other.load_model(str(tiny_model_dir))
    with pytest.raises(wb.SpecError, match=r"cannot take these tools"):
        other.chat(tools=TOOLS)
