"""A mixture-of-experts model trains with the default ``target="all-linear"``.

Llama 4's router subclasses ``torch.nn.Linear`` but returns a tuple; peft's "all-linear"
wrapped it and the first forward failed (``'tuple' object has no attribute 'dtype'``).
The workbench leaves such routers out of the adapter, in the notebook's run and in the
standalone script alike (both go through ``train/core.py``).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from workbench import Session
from workbench.errors import SpecError
from workbench.models.tiny import build_tiny_model
from workbench.train.checkpoint import latest_checkpoint
from workbench.train.core import linear_routers

ROUTERS = ["model.layers.0.feed_forward.router", "model.layers.1.feed_forward.router"]
ROWS = [{"question": f"What is {i} plus {i}?", "answer": f"{2 * i}"} for i in range(16)]


@pytest.fixture(scope="module")
def llama4_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama4", "llama4")


def test_a_moe_model_trains_with_its_routers_left_out_of_the_adapter(llama4_dir, tmp_path):
    s = Session(tmp_path / "session", verbose=False)
    info = s.load_model(str(llama4_dir))
    assert linear_routers(s.model) == ROUTERS
    assert "router" not in info.lora_targets and "q_proj" in info.lora_targets
    s.load_data(ROWS)
    run = s.train(max_steps=4, lr=5e-3, batch_size=4, wait=True)
    assert run.state.value == "finished", run.status.error
    losses = [r.loss for r in run.history if r.kind == "train"]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]  # it learned something through the adapted layers

    names = [name for name, _ in s.model.named_modules()]
    assert not [n for n in names if ".router.lora_" in n]  # the router was not wrapped
    assert [n for n in names if n.endswith("self_attn.q_proj.lora_A")]  # the rest was
    last = latest_checkpoint(run.run_dir)
    saved = json.loads((last / "adapter" / "adapter_config.json").read_text())
    assert any(name.endswith("q_proj") for name in saved["target_modules"])
    assert sorted(saved["exclude_modules"]) == ROUTERS  # so plain peft loads it the same way


def test_the_exported_adapter_loads_in_plain_peft(llama4_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    s = Session(tmp_path / "session", verbose=False)
    s.load_model(str(llama4_dir))
    s.load_data(ROWS)
    s.train(max_steps=2, lr=5e-3, batch_size=4, wait=True)
    folder = s.export("export/adapter", format="adapter")
    base = AutoModelForCausalLM.from_pretrained(llama4_dir)
    plain = PeftModel.from_pretrained(base, folder).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        ours = s.model.eval()(input_ids=ids).logits
        theirs = plain(input_ids=ids).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)


def test_a_router_named_as_a_target_is_refused_with_the_layers_there_are(llama4_dir, tmp_path):
    s = Session(tmp_path / "session", verbose=False)
    s.load_model(str(llama4_dir))
    s.load_data(ROWS)
    with pytest.raises(SpecError, match=r"LoRA target \['router'\] not found.*'q_proj'"):
        s.train(max_steps=1, lora={"target": ("router",)}, wait=True)
