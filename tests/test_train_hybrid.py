"""Mamba-2 hybrids (Falcon-H1, Bamba, Granite 4.0-H) train with the default LoRA.

transformers hands a Mamba-2 layer's ``out_proj.weight`` straight to mamba_ssm's fused
training kernel when that package is installed (most GPU setups), so an adapter there trains
on CPU and is silently skipped on such a GPU; peft refuses it outright for Falcon-H1, whose
default ``target="all-linear"`` run failed at wrapping. The workbench leaves these layers out
of every adapter, in the notebook's run and in the standalone script alike (``train/core.py``).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from workbench import Session
from workbench.errors import SpecError
from workbench.models.tiny import build_tiny_model
from workbench.train.checkpoint import latest_checkpoint
from workbench.train.core import kernel_read_projections

ROWS = [{"question": f"What is {i} plus {i}?", "answer": f"{2 * i}"} for i in range(16)]
PROBES = ["What is 3 plus 3?", "What is 5 plus 5?"]
# Where each family keeps its Mamba-2 layer: in every block, or in the even ones (tiny.py)
MAMBA_BLOCKS = {"falcon_h1": [0, 1, 2], "bamba": [0, 2], "granitemoehybrid": [0, 2]}


@pytest.fixture(scope="module")
def hybrid_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {a: build_tiny_model(root / a, a, layers=3) for a in MAMBA_BLOCKS}


def _trained(folder, tmp_path, **train):
    s = Session(tmp_path / "session", verbose=False)
    s.load_model(str(folder))
    s.load_data(ROWS)
    run = s.train(max_steps=4, lr=5e-3, batch_size=4, wait=True, **train)
    assert run.state.value == "finished", run.status.error
    losses = [r.loss for r in run.history if r.kind == "train"]
    assert len(losses) == 4 and all(map(math.isfinite, losses)) and losses[-1] < losses[0]
    return s, run


@pytest.mark.parametrize("architecture", list(MAMBA_BLOCKS))
def test_the_mamba_output_projection_is_left_out_of_the_adapter(
    hybrid_dirs, tmp_path, architecture
):
    outputs = [f"model.layers.{i}.mamba.out_proj" for i in MAMBA_BLOCKS[architecture]]
    s = Session(tmp_path / "info", verbose=False)
    info = s.load_model(str(hybrid_dirs[architecture]))
    assert kernel_read_projections(s.model) == outputs
    assert "out_proj" not in info.lora_targets
    assert {"in_proj", "q_proj", "o_proj"} <= set(info.lora_targets)

    s, run = _trained(hybrid_dirs[architecture], tmp_path)
    names = [name for name, _ in s.model.named_modules()]
    assert not [n for n in names if ".out_proj.lora_" in n]
    adapted = [n for n in names if n.endswith(".mamba.in_proj.lora_A")]
    assert len(adapted) == len(outputs)  # the Mamba-2 input projection still trains
    saved = json.loads(
        (latest_checkpoint(run.run_dir) / "adapter" / "adapter_config.json").read_text()
    )
    assert set(outputs) <= set(saved["exclude_modules"])  # plain peft loads it the same way


def test_falcon_h1_s_model_facts_show_both_mixers_in_every_block(hybrid_dirs, tmp_path):
    s = Session(tmp_path / "info", verbose=False)
    info = s.load_model(str(hybrid_dirs["falcon_h1"]))
    assert info.blocks == "3 attention + Mamba-2 side by side"
    estimate = s.estimate_memory(str(hybrid_dirs["falcon_h1"]), seq_len=64, batch_size=4)
    weights = sum(p.numel() * p.element_size() for p in s.model.parameters())
    assert estimate.weights == pytest.approx(weights, rel=0.01)


def test_an_explicit_mamba_output_projection_target_is_refused_before_anything_is_written(
    hybrid_dirs, tmp_path
):
    from workbench import LoRA

    s = Session(tmp_path / "session", verbose=False)
    s.load_model(str(hybrid_dirs["bamba"]))
    s.load_data(ROWS)
    with pytest.raises(SpecError, match=r"\['out_proj'\] cannot take an adapter .* fused"):
        s.train(max_steps=2, lora=LoRA(r=4, target=("in_proj", "out_proj")), wait=True)
    assert not (tmp_path / "session" / "runs").exists() or not any(
        (tmp_path / "session" / "runs").iterdir()
    )
    assert not any(".lora_" in name for name, _ in s.model.named_modules())


def test_a_tuned_falcon_h1_merges_and_loads_in_plain_transformers(hybrid_dirs, tmp_path):
    s, _ = _trained(hybrid_dirs["falcon_h1"], tmp_path)
    ids = s.tokenizer(PROBES[0], return_tensors="pt").input_ids
    with torch.no_grad():
        expected = s.model(input_ids=ids).logits[0, -1]
    s.merge()
    folder = s.export("export/merged")
    torch.save(ids, tmp_path / "ids.pt")
    code = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(folder)!r}, dtype=torch.float32)\n"
        f"ids = torch.load({str(tmp_path / 'ids.pt')!r})\n"
        "with torch.no_grad():\n"
        f"    torch.save(m(input_ids=ids).logits[0, -1], {str(tmp_path / 'out.pt')!r})\n"
        "print('workbench' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.stdout.strip().splitlines()[-1] == "False", result.stderr
    got = torch.load(tmp_path / "out.pt")
    assert (got - expected).abs().max().item() < 1e-4


def test_nemotron_h_trains_with_a_given_batch_and_auto_says_why_it_cannot(tmp_path, tiny_model_dir):
    """Nemotron-H's blocks are each one layer alone (Mamba-2, attention or MLP), which the
    memory estimate does not model: ``batch_size='auto'`` says so and writes nothing; a given
    batch trains, its Mamba-2 output projections left out as in the other families."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = AutoConfig.for_model(
        "nemotron_h", vocab_size=len(tokenizer), hidden_size=64, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, intermediate_size=128, mamba_num_heads=8,
        mamba_head_dim=16, n_groups=1, ssm_state_size=16, chunk_size=16,
        layers_block_type=["mamba", "mlp", "attention", "mlp"], initializer_range=0.2,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    folder = tmp_path / "nemotron_h"
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    s = Session(tmp_path / "session", verbose=False)
    s.load_model(str(folder))
    s.load_data(ROWS)
    with pytest.raises(SpecError, match="batch_size='auto' needs a memory estimate.*nemotron_h"):
        s.train(max_steps=2, batch_size="auto", wait=True)
    assert not any((tmp_path / "session" / "runs").iterdir())
    assert kernel_read_projections(s.model) == ["model.layers.0.mixer.out_proj"]
    _trained(folder, tmp_path / "given")
