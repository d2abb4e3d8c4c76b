"""python -m workbench: --help, info and demo, run as a user would, in a subprocess."""

from __future__ import annotations

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


def test_demo_with_a_bad_spec_exits_with_a_message(tmp_path):
    result = run_cli("demo", "--model", "no-such-model", "--run-dir", str(tmp_path))
    assert result.returncode == 2
    assert "error: unknown model spec 'no-such-model'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_info_sees_the_cached_gemma(gemma_folder):
    result = run_cli("info")
    assert "built-in gemma-3-270m  cached" in result.stdout
