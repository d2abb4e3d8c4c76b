"""The export parity check: the same conversations through the session and through llama.cpp."""

from __future__ import annotations

import html
import json
import os
import subprocess
import sys

import pytest

import workbench as wb
from workbench.deploy.parity import (
    CHECK_FILE,
    ParityCase,
    ParityReport,
    check_gguf,
    conversations_of,
    gguf_path_of,
)

ROWS = [{"question": f"What is {k} plus {k}?", "answer": str(2 * k)} for k in range(12)]


def needs_llama_cpp():
    """llama.cpp through llama-cpp-python; CI must have it (.ci/llama-cpp-setup.sh)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("CI must install llama-cpp-python (.ci/llama-cpp-setup.sh)")
        pytest.skip("llama-cpp-python is not installed: bash .ci/llama-cpp-setup.sh")


def test_report_says_where_the_first_token_differs():
    same = ParityCase("a", [1, 2], [1, 2], "x", "x", [3], [3])
    prompt = ParityCase("b", [1, 2, 3], [1, 9, 3], "x", "x", [3], [3])
    shorter = ParityCase("c", [1], [1], "xy", "x", [3, 4], [3])
    report = ParityReport("m.gguf", (same, prompt, shorter))
    assert [c.first_difference for c in report.cases] == [None, "prompt token 2", "answer token 2"]
    assert report.same_count == 1 and not report.all_same
    assert report.rows()[1] == ("b", "differs at prompt token 2", "x", "x")
    assert str(report).startswith("Export check of m.gguf: 1 of 3 answers the same.")


def test_a_difference_at_a_near_tie_is_said_apart_from_a_real_one(tmp_path):
    """A random or barely trained model often has two next tokens all but tied: llama.cpp's
    arithmetic may pick the other one, which is not an export fault."""
    tie = ParityCase("tie", [1], [1], "ab", "a", [3, 4], [3], tie_gap=0.004)
    real = ParityCase("real", [1], [1], "ab", "ac", [3, 4], [3, 5], tie_gap=2.5)
    report = ParityReport("m.gguf", (ParityCase("same", [1], [1], "a", "a", [3], [3]), tie, real))
    assert (tie.near_tie, real.near_tie) == (True, False)
    assert report.near_tie_count == 1 and not report.all_same
    assert report.summary() == (
        "Export check of m.gguf: 1 of 3 answers the same; 1 more differs only at a near tie of "
        "the tuned model (rounding picks either token)."
    )
    assert report.rows()[1][1] == "differs at answer token 2 (a near tie: 0.004 std apart)"
    assert report.rows()[2][1] == "differs at answer token 2"
    saved = json.loads(report.save(tmp_path).read_text())
    assert [(c["near_tie"], c["tie_gap"]) for c in saved["cases"]] == [
        (False, None), (True, 0.004), (False, 2.5)
    ]  # fmt: skip


def test_the_tie_gap_is_read_from_the_tuned_model_s_own_logits(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from workbench.deploy.parity import NEAR_TIE, _tie_gap

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompt = [5, 6, 7]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt])).logits[0, -1]
    best, worst = int(logits.argmax()), int(logits.argmin())
    other = (best + 1) % logits.numel()
    # llama.cpp picked the model's own best token where the session answered another: a tie
    assert _tie_gap(model, prompt, [other], [best], None) == 0.0
    gap = _tie_gap(model, prompt, [best], [worst], None)
    assert gap == pytest.approx(float((logits.max() - logits.min()) / logits.std()), rel=1e-5)
    assert gap > NEAR_TIE
    # llama.cpp stopped at an end token where the session went on: that token is compared
    assert _tie_gap(model, prompt, [best], [], ended_at=worst) == gap
    assert _tie_gap(model, prompt, [best], [], ended_at=None) is None  # unknown: no claim
    assert _tie_gap(model, prompt, [best], [best], None) is None  # no difference


def test_an_export_that_runs_past_a_stop_text_is_not_the_same(tiny_model_dir):
    """A template whose end of turn is no token of the tokenizer (the built-in 'gemma' one on
    a Llama tokenizer): the session ends answers at the text, an export only at end tokens,
    and writes on. The check called those answers the same (same tokens, text cut alike)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workbench.deploy.parity import PromptCase, _compared, _session_side

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    case = PromptCase("row 1", "What is 2 plus 2?", None)
    prompt, whole, text = _session_side(model, tokenizer, case, None, 16)
    assert len(whole) == 16
    stop = tokenizer.decode(whole[6:9])  # text the model writes mid-answer, as a stop
    cut_prompt, cut, cut_text = _session_side(model, tokenizer, case, stop, 16)
    assert cut_prompt == prompt and cut_text == text.split(stop)[0]
    assert whole[: len(cut)] == cut and len(cut) <= 6 and tokenizer.decode(cut) == cut_text
    ran_on = _compared(case, model, tokenizer, stop, 16, prompt, whole, text, None)
    assert not ran_on.same and ran_on.first_difference == f"answer token {len(cut) + 1}"
    stopped = _compared(case, model, tokenizer, stop, 16, prompt, cut, cut_text, None)
    assert stopped.same
    # a character over several byte tokens decodes to U+FFFD until its last one: not a stop
    from workbench.deploy.parity import _tokens_before

    written = tokenizer("Près 🙂 fin<end_of_turn>and more", add_special_tokens=False).input_ids
    kept = _tokens_before(tokenizer, written, "Près 🙂 fin")
    assert tokenizer.decode(written[:kept]) == "Près 🙂 fin"


def test_report_escapes_model_text_and_saves_json(tmp_path):
    hostile = ParityCase("<script>", [1], [1], "<img src=x onerror=alert(1)>", "ok", [2], [5])
    report = ParityReport("m.gguf", (hostile,))
    page = report._repr_html_()
    assert "<script>" not in page and "<img" not in page and "&lt;img" in page
    saved = json.loads(report.save(tmp_path).read_text())
    assert saved["total"] == 1 and saved["same"] == 0
    assert saved["cases"][0]["first_difference"] == "answer token 1"
    assert (tmp_path / CHECK_FILE).is_file()


def test_conversations_come_from_validation_rows_cut_before_the_answer(tmp_path, tiny_model_dir):
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.load_data(ROWS, validation=ROWS[:3])
    found = conversations_of(s.data, limit=2)
    assert [name for name, _ in found] == ["validation row 1", "validation row 2"]
    assert found[0][1] == [{"role": "user", "content": "What is 0 plus 0?"}]


def test_a_missing_export_is_a_clear_error(tmp_path):
    with pytest.raises(wb.SpecError, match="is not a GGUF file or a folder holding one"):
        gguf_path_of(tmp_path)


@pytest.mark.llama_cpp
@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_an_export_answers_like_the_tuned_model_in_llama_cpp(tmp_path, architecture):
    needs_llama_cpp()
    from workbench.models.tiny import build_tiny_model

    model_dir = build_tiny_model(tmp_path / architecture, architecture)
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(model_dir))
    s.load_data(ROWS, validation=ROWS[:3])
    s.train(max_steps=3, lr=5e-3, batch_size=4, wait=True, probes=["What is 7 plus 7?"])
    folder = s.export("export/gguf", format="gguf")
    report = s.check_export("export/gguf")
    assert len(report.cases) == 4  # three validation conversations and the run's probe
    assert report.all_same, str(report)
    assert json.loads((folder / CHECK_FILE).read_text())["same"] == 4


@pytest.mark.llama_cpp
def test_an_export_of_another_model_differs_and_not_at_near_ties(tmp_path, tiny_model_dir):
    """The file is the base model's, the session's model trained since: real differences,
    each measured far from a tie in the session model's logits."""
    needs_llama_cpp()
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.load_data(ROWS, validation=ROWS[:3])
    folder = s.export("export/gguf", format="gguf")
    s.train(max_steps=6, lr=2e-2, batch_size=4, wait=True)
    report = check_gguf(folder, s.model, s.tokenizer, None, conversations_of(s.data, limit=3))
    assert report.same_count == 0 and report.near_tie_count == 0
    assert all(case.tie_gap > 0.1 for case in report.cases), [c.tie_gap for c in report.cases]


@pytest.mark.llama_cpp
def test_a_template_that_renders_differently_is_caught(tmp_path, tiny_model_dir):
    needs_llama_cpp()
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.load_data(ROWS, validation=ROWS[:3])
    folder = s.export("export/gguf", format="gguf")
    conversations = conversations_of(s.data, limit=2)
    # The session renders with a template the file does not carry, as a mismatched export
    # would: the check must say where the prompts part.
    report = check_gguf(folder, s.model, s.tokenizer, "alpaca", conversations)
    assert report.same_count == 0
    assert all(c.first_difference.startswith("prompt token") for c in report.cases)
    assert all(c.tie_gap is None for c in report.cases)  # other prompts: no tie to measure


@pytest.mark.llama_cpp
def test_a_base_model_without_chat_template_is_checked_on_plain_prompts(tmp_path):
    needs_llama_cpp()
    from workbench.models.tiny import build_tiny_model

    model_dir = build_tiny_model(tmp_path / "plain", "llama", chat_template=False)
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(model_dir))
    folder = s.export("export/gguf", format="gguf")  # no data, no template: must not fail
    saved = json.loads((folder / CHECK_FILE).read_text())
    assert [c["name"] for c in saved["cases"]] == ["probe 1", "probe 2"]
    assert saved["same"] == 2


@pytest.mark.llama_cpp
def test_a_file_llama_cpp_cannot_load_is_a_clear_error_and_never_an_export(
    tmp_path, tiny_model_dir, monkeypatch
):
    needs_llama_cpp()
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    folder = s.export("export/gguf", format="gguf")
    path = folder / "model.gguf"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # cut off mid-tensor
    with pytest.raises(wb.ModelLoadError, match=f"llama.cpp could not load {path}"):
        s.check_export("export/gguf")
    # A writer mistake (here: Phi-2's output matrix left out, which llama.cpp requires) is
    # caught while the file is still staged: llama.cpp's reason is given, nothing is written.
    from workbench.deploy import gguf_writer
    from workbench.models.tiny import build_tiny_model

    monkeypatch.setattr(gguf_writer, "_NEEDS_OUTPUT", set())
    s.load_model(str(build_tiny_model(tmp_path / "phi", "phi")))
    with pytest.raises(wb.SpecError, match=r"llama\.cpp cannot load the file written for this "
                       r"phi model \(.*tensor 'output\.weight' not found"):  # fmt: skip
        s.export("export/phi", format="gguf")
    assert not (tmp_path / "s" / "export" / "phi").exists()


def test_a_merged_export_is_checked_in_plain_transformers(tmp_path, tiny_model_dir):
    """The merged folder answers like the session's model in a process without the workbench;
    a folder whose generation_config.json lacks the end-of-turn token runs on past it. (The
    export itself left <|im_end|> out when the template was the tokenizer's own: found here.)"""
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.load_data(ROWS, validation=ROWS[:3])
    # long enough for its answers to end at <|im_end|>
    s.train(max_steps=30, lr=5e-3, batch_size=4, wait=True, probes=["What is 7 plus 7?"])
    folder = s.export("export/merged")
    report = s.check_export("export/merged", max_new_tokens=12)
    assert report.runtime == "transformers" and len(report.cases) == 4
    assert report.same_count + report.near_tie_count == 4, str(report)
    saved = json.loads((folder / CHECK_FILE).read_text())
    assert (saved["runtime"], saved["export"], saved["total"]) == ("transformers", str(folder), 4)
    assert "export in transformers" in str(report)
    question = "What is 7 plus 7?"
    snippet = _use_snippet(folder).replace('"Hello"', repr(question))
    done = subprocess.run(
        [sys.executable, "-c", snippet], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    answer = s.generate(question, chat=True, max_new_tokens=64).strip()
    assert answer and done.stdout.strip() == answer  # the README's way answers the same

    config_path = folder / "generation_config.json"
    config = json.loads(config_path.read_text())
    end_of_turn = s.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn in config["eos_token_id"]  # what the export wrote, and what is cut here
    config["eos_token_id"] = [t for t in config["eos_token_id"] if t != end_of_turn]
    config_path.write_text(json.dumps(config))
    assert all(len(c.answer_ids) < 12 for c in report.cases)  # each answer ended
    broken = s.check_export("export/merged", max_new_tokens=12)
    assert broken.same_count == broken.near_tie_count == 0
    for case in broken.cases:  # same tokens up to the end of turn, which the export runs past
        assert case.first_difference == f"answer token {len(case.answer_ids) + 1}"
        assert case.tie_gap is None and len(case.exported_answer_ids) > len(case.answer_ids)


def test_a_check_of_another_runs_export_says_whose_weights_each_holds(tmp_path, tiny_model_dir):
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.load_data(ROWS, validation=ROWS[:3])
    s.train(max_steps=4, lr=5e-3, batch_size=4, wait=True)
    folder = s.export("export/merged")
    own = s.check_export("export/merged", limit=1, max_new_tokens=4)
    assert own.note == "" and own.summary().endswith("answers the same.")
    s.load_model(str(tiny_model_dir))
    s.train(max_steps=8, lr=5e-3, batch_size=4, wait=True)
    other = s.check_export("export/merged", limit=1, max_new_tokens=4)
    said = "The export holds run-001's weights, the session's model run-002's weights"
    assert said in other.summary() and said in str(other)
    assert html.escape(said) in other._repr_html_()
    assert json.loads((folder / CHECK_FILE).read_text())["note"] == other.note
    s.load_model(str(tiny_model_dir))  # no run's weights now
    base = s.check_export("export/merged", limit=1, max_new_tokens=4)
    assert "the session's model weights no run trained" in base.note
    # The export's own adapter on the base: "4 of 4 answers the same. The export holds
    # run-001's weights, the session's model weights no run trained" contradicted itself.
    s.load_model(str(tiny_model_dir))
    s.train(max_steps=2, lr=5e-3, batch_size=4, wait=True)
    s.export("export/adapter", format="adapter")
    s.load_model(str(tiny_model_dir))
    s.load_adapter(s.run_dir / "export" / "adapter")
    loaded = s.check_export("export/adapter", limit=1, max_new_tokens=4)
    assert loaded.note == "" and loaded.summary().endswith("answers the same.")


def test_check_export_names_what_it_can_check(tmp_path, tiny_model_dir):
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.export("export/adapter-less", format="safetensors")
    (tmp_path / "s" / "notes").mkdir()
    with pytest.raises(wb.SpecError, match=r"notes is not an export to check: a GGUF file"):
        s.check_export("notes")
    damaged = tmp_path / "s" / "export" / "adapter-less" / "model.safetensors"
    damaged.write_bytes(b"not safetensors")
    with pytest.raises(wb.ModelLoadError, match=r"plain transformers could not load or run"):
        s.check_export("export/adapter-less")


def _use_snippet(folder):
    """The Python block of the export's README, pointed at the folder."""
    readme = (folder / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    return code.replace("path/to/this/folder", str(folder))


@pytest.mark.parametrize("quantization", [None, "4bit"])
def test_an_adapter_export_is_checked_in_peft_on_its_base(tmp_path, tiny_model_dir, quantization):
    """peft, in a process without the workbench, loads the base the adapter names (quantized
    as it was for training), and answers like the session; the README's snippet runs."""
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir), quantization=quantization)
    s.load_data(ROWS, validation=ROWS[:3])
    s.train(max_steps=30, lr=5e-3, batch_size=4, wait=True)
    folder = s.export("export/adapter", format="adapter")
    end_of_turn = s.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert (
        end_of_turn in json.loads((folder / "generation_config.json").read_text())["eos_token_id"]
    )
    report = s.check_export("export/adapter", max_new_tokens=12)
    assert report.runtime == "transformers + peft" and len(report.cases) == 3
    assert report.same_count + report.near_tie_count == 3, str(report)
    assert all(c.prompt_ids == c.exported_prompt_ids for c in report.cases)
    assert json.loads((folder / CHECK_FILE).read_text())["runtime"] == "transformers + peft"

    question = "What is 3 plus 3?"
    snippet = _use_snippet(folder).replace('"Hello"', repr(question))
    done = subprocess.run(
        [sys.executable, "-c", snippet],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # the README's way answers as the session does, and stops at the end of turn
    answer = s.generate(question, chat=True, max_new_tokens=64).strip()
    assert answer and done.stdout.strip() == answer


def test_an_adapter_whose_base_is_gone_is_a_clear_error(tmp_path, tiny_model_dir):
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(base))
    s.load_data(ROWS)
    s.train(max_steps=1, wait=True)
    s.export("export/adapter", format="adapter")
    shutil.rmtree(base)
    with pytest.raises(wb.SpecError, match=r"base model '.*base' \(base_model_name_or_path"):
        s.check_export("export/adapter")


def test_special_tokens_the_tuned_model_writes_stay_in_its_answer_text(tiny_model_dir):
    """A Gemma 4 or Mistral call is written with special tokens: the check's texts keep them
    (only the end token goes), as the session's generate does."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workbench.deploy.parity import PromptCase, _session_side

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    call = tokenizer.convert_tokens_to_ids("<|im_start|>")  # a special token, not an end
    model.generation_config.sequence_bias = {(call,): 100.0}  # the model writes it, always
    hello = PromptCase("raw", "Hello", None)
    _, answer, text = _session_side(model, tokenizer, hello, "<|im_end|>", 3)
    assert answer == [call] * 3
    assert text == "<|im_start|>" * 3
