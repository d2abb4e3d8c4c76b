"""Merge, export (safetensors, adapter, GGUF), quantize and serve, on the tiny models."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import torch
from deploy_fixtures import LLAMA3_ROPE, make_adapter, tiny_variant

import workbench as wb
from workbench.deploy.serve import port_is_free

PROBES = ["The quick brown fox", "Question: What is", "Hello there", "Input: name Ada"]


@pytest.fixture
def adapter_dir(tmp_path, tiny_model_dir):
    return make_adapter(tiny_model_dir, tmp_path / "adapter")


def session_with_adapter(tmp_path, model_dir, adapter_dir, quantization=None):
    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(model_dir), quantization=quantization)
    s.load_adapter(adapter_dir)
    return s


def next_token_logits(session, texts):
    batch = session.tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = session.model(**batch).logits
    return logits[batch.attention_mask.bool()]


def test_merge_keeps_greedy_outputs(tmp_path, tiny_model_dir, adapter_dir):
    s = session_with_adapter(tmp_path, tiny_model_dir, adapter_dir)
    before = s.generate(PROBES, max_new_tokens=10)
    base = wb.Session(tmp_path / "base", verbose=False)
    base.load_model(str(tiny_model_dir))
    assert before != base.generate(PROBES, max_new_tokens=10)  # the adapter changes outputs
    info = s.merge()
    assert info.quantization is None and info.architecture == "LlamaForCausalLM"
    assert not any("lora" in name for name, _ in s.model.named_parameters())
    assert s.generate(PROBES, max_new_tokens=10) == before


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_merge_of_a_quantized_base_computes_what_the_adapter_model_did(
    tmp_path, tiny_model_dir, adapter_dir, quantization
):
    # bitsandbytes' CPU kernels compute the quantized base in reduced precision, so a random
    # tiny model's near-tied logits may flip; compare the logits and their argmax instead.
    s = session_with_adapter(tmp_path, tiny_model_dir, adapter_dir, quantization)
    before = next_token_logits(s, PROBES)
    info = s.merge()
    assert info.quantization is None
    assert not any(type(m).__module__.startswith("bitsandbytes") for m in s.model.modules())
    after = next_token_logits(s, PROBES)
    scale = before.abs().max().item()
    assert (after - before).abs().max().item() < 0.05 * scale
    agreement = (after.argmax(-1) == before.argmax(-1)).float().mean().item()
    assert agreement >= 0.9


def test_export_safetensors_loads_without_workbench(tmp_path, tiny_model_dir, adapter_dir):
    s = session_with_adapter(tmp_path, tiny_model_dir, adapter_dir)
    expected = s.generate(PROBES[:2], max_new_tokens=8)
    folder = s.export("export/merged")
    assert folder == (tmp_path / "run" / "export" / "merged").resolve()
    names = {p.name for p in folder.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "README.md",
        "generation_config.json",
        "chat_template.jinja",
    } <= names
    assert not any(n.endswith(".bin") for n in names)
    card = (folder / "README.md").read_text()
    assert f"base_model: {tiny_model_dir}" in card
    code = (
        "import sys, json\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(folder)!r})\n"
        f"t = AutoTokenizer.from_pretrained({str(folder)!r})\n"
        "t.padding_side = 'left'\n"
        f"b = t({PROBES[:2]!r}, return_tensors='pt', padding=True)\n"
        "o = m.generate(**b, max_new_tokens=8, do_sample=False, pad_token_id=t.pad_token_id)\n"
        "e = m.generation_config.eos_token_id\n"  # an answer ends there; other tokens stay
        "ends = {t.eos_token_id, t.pad_token_id, *(e if isinstance(e, list) else [e])}\n"
        "rows = [r[: next((i for i, x in enumerate(r) if x in ends), len(r))]\n"
        "        for r in o[:, b.input_ids.shape[1]:].tolist()]\n"
        "print(json.dumps([t.decode(r) for r in rows]))\n"
        "print('workbench' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path
    )
    lines = result.stdout.strip().splitlines()
    # generate leaves out a character the token limit cut in two (plain decode shows U+FFFD)
    assert [t.rstrip("\ufffd") for t in json.loads(lines[0])] == expected, result.stderr
    assert lines[1] == "False"


def test_export_adapter_only(tmp_path, tiny_model_dir, adapter_dir):
    s = session_with_adapter(tmp_path, tiny_model_dir, adapter_dir)
    folder = s.export("export/adapter", format="adapter")
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= {
        p.name for p in folder.iterdir()
    }
    again = wb.Session(tmp_path / "again", verbose=False)
    again.load_model(str(tiny_model_dir))
    again.load_adapter(folder)
    assert again.generate(PROBES, max_new_tokens=6) == s.generate(PROBES, max_new_tokens=6)


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "gemma3"])
def test_export_gguf_reads_back_with_same_greedy_output(tmp_path, architecture):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = wb.build_tiny_model(tmp_path / architecture, architecture)
    s = session_with_adapter(tmp_path, model_dir, make_adapter(model_dir, tmp_path / "ad"))
    expected = s.generate(PROBES, max_new_tokens=10)
    folder = s.export("export/gguf", format="gguf")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file="model.gguf")
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file="model.gguf", dtype=torch.float32
    )
    text = "Hello world <|im_start|>user"
    assert tokenizer(text).input_ids == s.tokenizer(text).input_ids
    from workbench.models.generation import generate_text

    assert generate_text(model, s.tokenizer, PROBES, 10) == expected


def test_gguf_export_refuses_an_unsupported_architecture(tmp_path):
    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(wb.build_tiny_model(tmp_path / "llama4", "llama4")))
    with pytest.raises(wb.SpecError, match="GGUF export supports .* not 'llama4_text'"):
        s.export("export/gguf", format="gguf")
    assert not (tmp_path / "run" / "export").exists()  # refused before anything was merged


@pytest.mark.parametrize(
    ("architecture", "changes", "message"),
    [
        ("llama", {"hidden_act": "relu"}, "MLP uses 'relu'; llama.cpp's llama graph computes SiLU"),
        ("gpt2", {"activation_function": "relu"}, "llama.cpp's gpt2 graph computes GELU"),
        ("gpt_neox", {"hidden_act": "silu"}, "llama.cpp's gptneox graph computes GELU"),
        ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, "scales attention differently"),
        # biases llama.cpp's graph lacks: the file would not load ("wrong number of tensors")
        ("ernie4_5", {"use_bias": True}, "ernie4_5 with use_bias=True; llama.cpp's ernie4_5 has"),
        ("qwen3", {"attention_bias": True}, "qwen3 with attention_bias=True; llama.cpp's qwen3"),
        ("gemma3", {"attention_bias": True}, "gemma3_text with attention_bias=True"),
        ("smollm3", {"mlp_bias": True}, "smollm3 with mlp_bias=True; llama.cpp's smollm3 has no"),
        ("olmoe", {"attention_bias": True}, "olmoe with attention_bias=True"),
        ("starcoder2", {"hidden_act": "relu"}, "llama.cpp's starcoder2 graph computes GELU"),
        ("lfm2", {"conv_bias": True}, "LFM2 with biased convolutions"),
        ("granitemoehybrid", {"mamba_proj_bias": True}, "or its projections have biases"),
        ("bamba", {"time_step_limit": [0.0, 1.0]}, "clamps its Mamba-2 time steps"),
        ("falcon_h1", {"time_step_limit": [0.0, 1.0]}, "clamps its Mamba-2 time steps"),
        ("falcon_h1", {"mamba_proj_bias": True}, "mamba_proj_bias=True"),
        # what llama.cpp's falcon-h1 leaves out: attention's output bias, the Mamba-2 output
        # projection's, a norm before the gate (transformers' default), Llama 3's rope factors
        ("falcon_h1", {"attention_bias": True}, "Falcon-H1 with attention_bias=True"),
        ("falcon_h1", {"projectors_bias": True}, "Falcon-H1 with projectors_bias=True"),
        ("falcon_h1", {"mamba_rms_norm": True}, "Falcon-H1 with mamba_norm_before_gate=True"),
        ("falcon_h1", {"rope_parameters": LLAMA3_ROPE}, "Falcon-H1 with Llama 3's rope scaling"),
        ("lfm2_moe", {"norm_topk_prob": False}, "llama.cpp renormalises the chosen experts"),
        ("lfm2_moe", {"routed_scaling_factor": 2.0}, "does not scale the experts' weights"),
        ("lfm2_moe", {"tie_word_embeddings": False}, "LFM2-MoE with an output layer of its own"),
        # no recurrent block aborts llama.cpp's process; an irregular pattern it cannot say
        ("qwen3_5", {"layer_types": ["full_attention"] * 2}, "not what llama.cpp's qwen35 runs"),
        (
            "qwen3_5",
            {"layer_types": ["full_attention", "linear_attention"]},
            "not what llama.cpp's qwen35 runs",
        ),
        (
            "lfm2",
            {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6}},
            "LFM2 with rope scaling",
        ),
    ],
)
def test_gguf_export_refuses_what_llama_cpp_would_compute_differently(
    tmp_path, architecture, changes, message
):
    """No GGUF key says these, so llama.cpp would silently compute another model."""
    s = tiny_variant(tmp_path, architecture, **changes)
    with pytest.raises(wb.SpecError, match=message):
        s.export("export/gguf", format="gguf")
    assert not (tmp_path / "run" / "export").exists()
    assert s.export("export/hf", format="safetensors").is_dir()  # the way out it names


def test_export_bad_targets(tmp_path, tiny_model_dir, adapter_dir):
    s = session_with_adapter(tmp_path, tiny_model_dir, adapter_dir)
    with pytest.raises(wb.SpecError, match="leaves the run folder"):
        s.export("../../outside")
    occupied = tmp_path / "run" / "export" / "taken"
    occupied.mkdir(parents=True)
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(wb.SpecError, match="not empty; pass overwrite=True"):
        s.export("export/taken", format="adapter")
    assert (occupied / "keep.txt").read_text() == "mine"
    with pytest.raises(wb.SpecError, match="format='onnx'"):
        s.export("export/x", format="onnx")
    folder = s.export("export/taken", format="adapter", overwrite=True)
    assert not (folder / "keep.txt").exists()


def test_export_arguments_that_looked_like_others_are_refused_before_anything_is_written(
    tmp_path, tiny_model_dir, adapter_dir
):
    s = session_with_adapter(tmp_path, tiny_model_dir, adapter_dir)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own")
    for no in ("no", "false", 0):  # "no" is truthy: the folder of notes was replaced
        with pytest.raises(wb.SpecError, match=rf"overwrite={no!r} must be True or False"):
            s.export(mine, format="adapter", overwrite=no)
        with pytest.raises(wb.SpecError, match=rf"overwrite={no!r} must be True or False"):
            s.quantize("8bit", path=mine, overwrite=no)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    for path in (123, None):
        with pytest.raises(wb.SpecError, match=rf"path={path!r} is not a folder path"):
            s.export(path)
    a_file = tmp_path / "a-file.txt"
    a_file.write_text("x")
    with pytest.raises(wb.SpecError, match=r"a-file\.txt is a file, so .*sub cannot be made in"):
        s.export(a_file / "sub")  # was FileExistsError: [Errno 17] from the staging folder
    with pytest.raises(wb.SpecError, match="no checkpoints to export"):
        s.export("export/at", checkpoint=3)
    gguf = s.export("export/gguf", format="gguf", gguf_type="F16")  # llama.cpp's own spelling
    assert (gguf / "model.gguf").is_file()


def test_an_export_to_a_symbolic_link_is_written_where_it_points(
    tmp_path, tiny_model_dir, adapter_dir
):
    # The link was renamed aside (left as a hidden .link.old-* for good) and a folder put in
    # its place; what it pointed to was left as it was.
    s = session_with_adapter(tmp_path, tiny_model_dir, adapter_dir)
    real = tmp_path / "bigdisk" / "out"
    real.mkdir(parents=True)
    link = tmp_path / "export-link"
    link.symlink_to(real)
    folder = s.export(link, format="adapter")
    assert folder == real and link.is_symlink() and (real / "adapter_config.json").is_file()
    again = s.export(link, format="adapter")  # this session's own: replaced, through the link
    assert again == real and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert sorted(p.name for p in real.parent.iterdir()) == ["out"]


def test_adapter_export_without_adapter(tmp_path, tiny_model_dir):
    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(tiny_model_dir))
    with pytest.raises(wb.SpecError, match="needs a model with an adapter"):
        s.export("export/a", format="adapter")


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_quantize_saves_a_smaller_model_and_a_table(
    tmp_path, tiny_model_dir, adapter_dir, quantization
):
    s = session_with_adapter(tmp_path, tiny_model_dir, adapter_dir)
    report = s.quantize(quantization, probes=PROBES[:2])
    assert report.folder == (tmp_path / "run" / "export" / f"quantized-{quantization}").resolve()
    assert report.after.disk_bytes < report.before.disk_bytes
    assert report.after.memory_bytes < report.before.memory_bytes
    assert report.before.tokens_per_s > 0 and report.after.tokens_per_s > 0
    assert [row[0] for row in report.rows()][:4] == [
        "size on disk",
        "memory",
        "latency per answer",
        "tokens/s",
    ]
    reloaded = wb.Session(tmp_path / "q", verbose=False).load_model(str(report.folder))
    assert reloaded.quantization == quantization
    card = (report.folder / "README.md").read_text()  # the export's card, and how it loads
    assert card.startswith("---\nbase_model:") and "## Training" in card
    assert (
        f"## Quantization\n\nThis copy of `merged` is quantized with bitsandbytes ({quantization}"
        in card
    )
    assert "<" not in report._repr_html_().split("<caption>")[1].split("</caption>")[0]


def test_serve_answers_a_chat_completion_on_loopback(tmp_path, tiny_model_dir, adapter_dir):
    s = session_with_adapter(tmp_path, tiny_model_dir, adapter_dir)
    port = 18000 + (hash(str(tmp_path)) % 1000)
    server = s.serve(port=port)
    try:
        assert server.running and server.url == f"http://127.0.0.1:{port}/v1"
        body = json.dumps(
            {
                "model": str(server.folder),
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "Hi"}],
            }
        ).encode()
        request = urllib.request.Request(
            f"{server.url}/chat/completions",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            reply = json.loads(response.read())
        assert reply["object"] == "chat.completion"
        assert reply["usage"]["completion_tokens"] >= 1
        usage = server.usage()
        assert "curl" in usage and "OpenAI(base_url=" in usage and "vllm serve" in usage
        with pytest.raises(wb.SpecError, match=rf"port {port} is in use by this session's own"):
            s.serve(port=port)
    finally:
        s.close()
    assert not server.running
    assert port_is_free(port)


def test_the_server_samples_at_a_temperature_and_refuses_several_choices(
    tmp_path, tiny_model_dir, adapter_dir
):
    """The export's generation config answers greedily (the tiny base's does); transformers
    serve alone would then answer every temperature with the greedy text."""
    import openai

    s = session_with_adapter(tmp_path, tiny_model_dir, adapter_dir)
    server = s.serve(port=18000 + (hash(str(tmp_path)) % 1000))
    client = openai.OpenAI(base_url=server.url, api_key="unused")
    question = [{"role": "user", "content": "What is 2 plus 2?"}]

    def answer(**settings):
        reply = client.chat.completions.create(
            model=str(server.folder), messages=question, max_tokens=8, **settings
        )
        return reply.choices[0].message.content

    try:
        greedy = s.generate(question, chat=True, max_new_tokens=8)
        assert answer() == answer(temperature=0) == greedy
        sampled = [answer(temperature=1.5, seed=seed) for seed in (1, 1, 2, 3)]
        assert sampled[0] == sampled[1]  # the same seed samples the same answer
        assert len(set(sampled[1:])) == 3 and greedy not in sampled
        with pytest.raises(openai.BadRequestError) as refused:
            answer(n=2, temperature=1.0)
        assert refused.value.response.json()["detail"].startswith("n=2: this server gives one")
        # malformed requests were a bare 500, or (temperature=-1) accepted
        for body, says in (
            ({"messages": [{"content": "hi"}]}, "messages[0] has no 'role'"),
            ({"messages": question, "temperature": -1}, "temperature=-1 must be a number"),
            ({"messages": question, "stream": True, "max_tokens": 0}, "max_tokens=0 must be"),
            ({"messages": question, "stop": 5}, "stop=5 must be a string or a list of strings"),
            ({"messages": [{"role": "user", "content": ["hi"]}]}, "messages[0].content must"),
        ):
            request = urllib.request.Request(
                f"{server.url}/chat/completions",
                data=json.dumps({"model": str(server.folder), **body}).encode(),
                headers={"Content-Type": "application/json"},
            )
            with pytest.raises(urllib.error.HTTPError) as failed:
                urllib.request.urlopen(request, timeout=60)
            assert failed.value.code == 400
            assert json.loads(failed.value.read())["detail"].startswith(says)
    finally:
        s.close()


def test_served_answers_end_at_their_stop_and_within_the_context(
    tmp_path, tiny_model_dir, adapter_dir
):
    # transformers serve kept the stop text in the answer (OpenAI leaves it out, and so does
    # s.generate), ran a client's max_tokens past the context, and took serve(path=) from
    # the working directory instead of the session folder.
    import openai

    s = session_with_adapter(tmp_path, tiny_model_dir, adapter_dir)
    folder = s.export("export/served")
    server = s.serve(port=18000 + (hash(str(tmp_path)) % 1000), path="export/served")
    assert server.folder == folder
    client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)
    question = [{"role": "user", "content": "What is 2 plus 2?"}]
    full = s.generate(question, chat=True, max_new_tokens=12)
    stop = full[4:7]
    expected = s.generate(question, chat=True, max_new_tokens=12, stop_strings=[stop])
    assert expected == full[: full.index(stop)]

    def ask(**settings):
        return client.chat.completions.create(
            model=str(server.folder), messages=question, temperature=0, **settings
        )

    try:
        reply = ask(max_tokens=12, stop=[stop])
        assert reply.choices[0].message.content == expected
        assert reply.choices[0].finish_reason == "stop"
        chunks = ask(max_tokens=12, stop=[stop], stream=True)
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == expected
        text = (
            client.completions.create(
                model=str(server.folder), prompt="The sky is", max_tokens=12, temperature=0
            )
            .choices[0]
            .text
        )
        cut = (
            client.completions.create(
                model=str(server.folder), prompt="The sky is", max_tokens=12, stop=text[3:5]
            )
            .choices[0]
            .text
        )
        assert cut == text[: text.index(text[3:5])]
        context = s.model.config.max_position_embeddings
        count = context
        while True:  # a prompt that leaves the answer 20-60 tokens of room
            message = [{"role": "user", "content": " ".join(["sky"] * count)}]
            text = s.tokenizer.apply_chat_template(
                message, add_generation_prompt=True, tokenize=False
            )
            if len(s.tokenizer(text, add_special_tokens=False).input_ids) < context - 20:
                break
            count -= 20
        long = client.chat.completions.create(
            model=str(server.folder),
            messages=message,
            max_tokens=context * 4,  # a client's default, far past the context
            temperature=0,
        )
        assert long.usage.prompt_tokens > context - 60
        assert long.usage.total_tokens == context and long.choices[0].finish_reason == "length"
    finally:
        s.close()


def test_a_family_the_server_reads_its_own_way_is_served_what_it_was_tuned_on(tmp_path):
    # transformers serve reads Qwen answers with a ChatML parser whatever the model was tuned
    # with: a Qwen tuned with template="alpaca" was answered with its whole prompt.
    import openai

    from workbench.models.tiny import build_tiny_model

    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(build_tiny_model(tmp_path / "qwen", "qwen2")))
    turns = [[("user", f"What is {i} plus {i}?"), ("assistant", str(2 * i))] for i in range(8)]
    chat = [{"messages": [{"role": r, "content": c} for r, c in turn]} for turn in turns]
    s.load_data(chat, template="alpaca")
    s.train(max_steps=1, batch_size=4, wait=True)
    server = s.serve(port=18000 + (hash(str(tmp_path)) % 1000))
    question = [{"role": "user", "content": "What is 3 plus 3?"}]
    try:
        client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)
        reply = client.chat.completions.create(
            model=str(server.folder), messages=question, max_tokens=8, temperature=0
        )
        assert reply.choices[0].message.content == s.generate(question, chat=True, max_new_tokens=8)
        assert "### Instruction" not in reply.choices[0].message.content
    finally:
        s.close()


def test_quantize_reports_scores_before_and_after_when_data_is_loaded(
    tmp_path, tiny_model_dir, adapter_dir
):
    s = session_with_adapter(tmp_path, tiny_model_dir, adapter_dir)
    rows = [{"question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(20)]
    s.load_data(rows, validation=0.3)
    report = s.quantize("8bit", probes=PROBES[:1])
    names = [row[0] for row in report.rows()]
    assert names[4:] == ["exact_match", "rougeL"]
    for measure in (report.before, report.after):
        assert set(measure.scores) == {"exact_match", "rougeL"}
        assert all(0.0 <= v <= 1.0 for v in measure.scores.values())


def test_gguf_export_refuses_qwen3_5_linear_heads_of_two_widths():
    """llama.cpp's qwen35 reads one width for keys and values: the file would not load."""
    from transformers import Qwen3_5TextConfig

    from workbench.deploy.gguf_metadata import hparams

    config = Qwen3_5TextConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, layer_types=["linear_attention", "full_attention"],
        linear_key_head_dim=16, linear_value_head_dim=32,
    )  # fmt: skip
    with pytest.raises(wb.SpecError, match=r"widths \(16, 32\)"):
        hparams("qwen35", config)
    config.linear_value_head_dim = 16  # then it is written, a quarter of 16 dims rotated
    assert hparams("qwen35", config)["rope.dimension_sections"] == [1, 1, 0, 0]
