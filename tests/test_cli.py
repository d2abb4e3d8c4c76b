"""python -m workbench: --help, info and demo, run as a user would, in a subprocess."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "workbench", *args], capture_output=True, text=True, env=env
    )


def test_help_lists_the_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "info" in result.stdout and "demo" in result.stdout


def test_info_reports_versions_device_and_cache(tmp_path):
    import os

    env = dict(os.environ, WORKBENCH_CACHE=str(tmp_path / "empty-cache"))
    result = run_cli("info", env=env)
    assert result.returncode == 0, result.stderr
    assert "transformers" in result.stdout and "torch" in result.stdout
    from importlib.metadata import version

    assert re.search(
        rf"tuning-workbench +{re.escape(version('tuning-workbench'))}\n", result.stdout
    )
    assert "not installed" not in result.stdout.split("bitsandbytes")[0]
    assert "no GPU" in result.stdout or "cuda" in result.stdout
    assert str(tmp_path / "empty-cache") in result.stdout
    assert "built-in gemma-3-270m  not cached yet" in result.stdout


def test_demo_on_a_tiny_model(tmp_path, tiny_model_dir):
    result = run_cli(
        "demo",
        "--model",
        str(tiny_model_dir),
        "--run-dir",
        str(tmp_path),
        "--train-size",
        "12",
        "--test-size",
        "4",
        "--max-steps",
        "3",
        "--max-new-tokens",
        "6",
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for section in (
        "=== model ===",
        "=== data",
        "=== training ===",
        "=== evaluation",
        "=== export ===",
    ):
        assert section in out
    assert "LlamaForCausalLM" in out and "total" in out  # model info and memory estimate
    assert "training: finished after 3 steps" in out
    assert "exact match on 4 held-out records: base" in out
    page = (tmp_path / "report.html").read_text()
    assert page.count("js-plotly-plot") + page.count("plotly-graph-div") >= 3
    assert (tmp_path / "export" / "merged" / "model.safetensors").is_file()
    assert list((tmp_path / "evaluations").glob("eval-*/scores.json"))
    checked = json.loads((tmp_path / "export" / "merged" / "export_check.json").read_text())
    assert checked["runtime"] == "transformers" and checked["total"] == 4
    assert "export check in plain transformers: " in out and " of 4 answers the same" in out
    assert out.count("Export check of ") == 1  # the summary once, then the table of cases
    assert "export in transformers" in out  # the table's header


def test_demo_on_a_family_the_memory_estimate_does_not_model_says_so_and_trains(
    tmp_path, tiny_model_dir
):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = AutoConfig.for_model(
        "zamba2", vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, n_mamba_heads=8, mamba_headdim=16,
        mamba_d_state=16, intermediate_size=128, chunk_size=16, num_mem_blocks=1,
        layers_block_type=["mamba", "hybrid", "mamba", "hybrid"],
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "zamba2")
    tokenizer.save_pretrained(tmp_path / "zamba2")
    result = run_cli(
        "demo", "--model", str(tmp_path / "zamba2"), "--run-dir", str(tmp_path / "run"),
        "--train-size", "12", "--test-size", "4", "--max-steps", "3", "--max-new-tokens", "4",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "no memory estimate: the memory estimate does not model zamba2 models yet" in (
        result.stdout
    )
    assert "training: finished after 3 steps" in result.stdout


def test_demo_with_a_bad_spec_exits_with_a_message(tmp_path):
    result = run_cli("demo", "--model", "no-such-model", "--run-dir", str(tmp_path / "demo"))
    assert result.returncode == 2
    assert "error: unknown model spec 'no-such-model'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "demo").exists()  # no empty run folder left behind


@pytest.mark.slow
def test_info_sees_the_cached_gemma(gemma_folder):
    result = run_cli("info")
    assert "built-in gemma-3-270m  cached" in result.stdout
