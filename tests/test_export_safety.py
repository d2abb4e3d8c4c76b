"""Exports never replace what is not theirs, and hold what the session's model computes.

- ``quantize()`` and ``serve()`` export the model first: a user's files in
  ``export/merged`` are refused, never replaced.
- No export goes into the session folder, a folder holding it, or its runs/evaluations/data.
- DoRA over a 4-bit base merges with its learned magnitude, and a DoRA adapter switched off
  at strength 0 is not merged in: the export computes what the session shows, in a plain
  transformers process without the workbench.
- An export of a scaled adapter says so, in a warning and in the model card.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import workbench as wb
from workbench.errors import SpecError, WorkbenchWarning

ROWS = [{"question": f"What is {k} plus {k}?", "answer": str(2 * k)} for k in range(8)]
TEXT = "What is 3 plus 3?"

LAST_LOGITS = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
assert "workbench" not in sys.modules
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
ids = AutoTokenizer.from_pretrained(sys.argv[1])(sys.argv[2], return_tensors="pt")
with torch.no_grad():
    print(json.dumps(model(**ids).logits[0, -1].tolist()))
"""


def plain_logits(folder) -> torch.Tensor:
    """The export's last logits for TEXT, computed by plain transformers in its own process."""
    done = subprocess.run(
        [sys.executable, "-I", "-c", LAST_LOGITS, str(folder), TEXT],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return torch.tensor(json.loads(done.stdout.strip().splitlines()[-1]))


def session_logits(s) -> torch.Tensor:
    ids = s.tokenizer(TEXT, return_tensors="pt")
    with torch.no_grad():
        return s.model(**ids).logits[0, -1].float()


def trained(tmp_path, model_dir, steps=2, **options):
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(model_dir), **options.pop("model", {}))
    s.load_data(ROWS)
    assert s.train(max_steps=steps, wait=False, **options).wait().state.value == "finished"
    return s


def test_quantize_refuses_to_replace_your_files_in_export_merged(tmp_path, tiny_model_dir):
    s = trained(tmp_path, tiny_model_dir)
    merged = s.export("export/merged")
    notes = merged / "NOTES.md"
    notes.write_text("mine")
    weights = (merged / "model.safetensors").read_bytes()
    s.set_adapter_strength(0.5)  # the model changed since that export: quantize exports anew
    with pytest.raises(SpecError, match="quantize\\(\\) and serve\\(\\) first export"):
        s.quantize("8bit", probes=["hi"])
    assert notes.read_text() == "mine"
    assert (merged / "model.safetensors").read_bytes() == weights
    assert not (s.run_dir / "export" / "quantized-8bit").exists()


@pytest.mark.parametrize("path", ["", ".", "runs", "runs/run-001", "evaluations/x", "data-cache"])
def test_no_export_replaces_the_session_folder_or_what_it_writes(tmp_path, tiny_model_dir, path):
    s = trained(tmp_path, tiny_model_dir)
    before = sorted(p.relative_to(s.run_dir) for p in s.run_dir.rglob("*"))
    with pytest.raises(SpecError, match="session"):
        s.export(path, overwrite=True)
    with pytest.raises(SpecError, match="session"):
        s.export(str(s.run_dir.parent), overwrite=True)  # absolute, and holding the session
    assert sorted(p.relative_to(s.run_dir) for p in s.run_dir.rglob("*")) == before


@pytest.mark.parametrize("fmt", ["gguf", "safetensors"])
def test_an_export_named_like_a_file_is_refused_naming_the_folder_to_give(
    tmp_path, tiny_model_dir, fmt
):
    # export("tiny.gguf", format="gguf") made a folder tiny.gguf/ holding model.gguf, which
    # llama.cpp cannot open; without format="gguf" the folder held safetensors.
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    for name in ("tiny.gguf", "tiny.safetensors"):
        with pytest.raises(
            SpecError,
            match=rf"names a .* file, but an export is a folder.*"
            rf"export\('{tmp_path / 'tiny'}', format='{fmt}'\)",
        ):
            s.export(tmp_path / name, format=fmt)
        assert not (tmp_path / name).exists()
    inside = {"gguf": "model.gguf", "safetensors": "model.safetensors"}[fmt]
    assert (s.export(tmp_path / "tiny", format=fmt) / inside).is_file()


def test_dora_over_a_4bit_base_merges_with_its_magnitude(tmp_path, tiny_model_dir):
    lora = wb.LoRA(r=8, use_dora=True)
    s = trained(
        tmp_path, tiny_model_dir, steps=6, lr=2e-2, lora=lora, model={"quantization": "4bit"}
    )
    tuned = session_logits(s)
    with s.model.disable_adapter():
        moved = (tuned - session_logits(s)).abs().max()
    assert moved > 0.1  # the adapter changes the answer: a dropped magnitude would show
    assert (plain_logits(s.export("export/merged")) - tuned).abs().max() < 1e-3
    s.merge()
    assert (session_logits(s) - tuned).abs().max() < 1e-3


@pytest.mark.parametrize("quantization", [None, "4bit"])
def test_dora_at_strength_zero_exports_the_base_model(tmp_path, tiny_model_dir, quantization):
    lora = wb.LoRA(r=8, use_dora=True)
    s = trained(
        tmp_path, tiny_model_dir, steps=6, lr=2e-2, lora=lora, model={"quantization": quantization}
    )
    tuned = session_logits(s)
    s.set_adapter_strength(0)
    base = session_logits(s)
    assert (base - tuned).abs().max() > 0.1
    with pytest.warns(WorkbenchWarning, match="merged at strength 0 "):
        folder = s.export("export/base")
    assert (plain_logits(folder) - base).abs().max() < 1e-3
    assert "merged at strength 0 (set_adapter_strength)" in (folder / "README.md").read_text()


def readme_logits(folder) -> torch.Tensor:
    """The last logits for TEXT of the model the folder's README "Use" lines load, run as
    written in a plain Python process (the path put in, the chat part left out)."""
    card = (folder / "README.md").read_text()
    code = card.split("```python\n", 1)[1].split("\n```", 1)[0]
    loading = code.split("tokenizer = AutoTokenizer", 1)[0].replace(
        "path/to/this/folder", str(folder)
    )
    script = loading + (
        "import json, sys\n"
        "assert 'workbench' not in sys.modules\n"
        f"ids = AutoTokenizer.from_pretrained({str(folder)!r})({TEXT!r}, return_tensors='pt')\n"
        "with torch.no_grad():\n"
        "    print(json.dumps(model.eval()(**ids).logits[0, -1].tolist()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return torch.tensor(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("use_dora", [False, True])
def test_a_qlora_adapter_loaded_as_its_readme_says_computes_what_the_session_does(
    tmp_path, tiny_model_dir, use_dora
):
    # On CPUs with AVX512-BF16 bitsandbytes repacks 4-bit weights on the first forward and
    # peft's DoRA read them in that layout: the README's lines gave logits 3-4 off.
    lora = wb.LoRA(r=8, use_dora=use_dora)
    s = trained(
        tmp_path, tiny_model_dir, steps=6, lr=2e-2, lora=lora, model={"quantization": "4bit"}
    )
    folder = s.export("export/adapter", format="adapter")
    assert (readme_logits(folder) - session_logits(s)).abs().max() < 1e-3
    report = s.check_export(folder)
    assert report.all_same, str(report)


def test_an_adapter_export_says_the_strength_is_not_in_it(tmp_path, tiny_model_dir):
    s = trained(tmp_path, tiny_model_dir)
    s.set_adapter_strength(0.3)
    with pytest.warns(WorkbenchWarning, match="saved as trained .strength 1.: the session's str"):
        folder = s.export("export/adapter", format="adapter")
    assert "strength 0.3 is not part of it" in (folder / "README.md").read_text()
    s.set_adapter_strength(1.0)
    card = (s.export("export/adapter", format="adapter") / "README.md").read_text()
    assert "strength" not in card


def test_quantize_refuses_odd_probes_and_words(tmp_path, tiny_model_dir):
    s = trained(tmp_path, tiny_model_dir)
    with pytest.raises(SpecError, match="probes='hello' must be a list of non-empty prompt"):
        s.quantize("8bit", probes="hello")
    with pytest.raises(SpecError, match="quantization=None is not one of '4bit', '8bit'"):
        s.quantize(None)
    assert not (s.run_dir / "export").exists()  # refused before anything was exported
    s.merge()
    with pytest.raises(SpecError, match="after merge\\(\\), the adapter is part of the weights"):
        s.export("export/adapter", format="adapter")
