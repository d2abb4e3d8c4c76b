"""RMSNorms keep their 16-bit input for backward, not its float32 copy (train/core.py,
``lean_norm_inputs``).

transformers' RMSNorms compute in float32; for a bfloat16 input they keep a float32 copy of
it. The workbench's norms keep the input and make the copy again in backward, on CUDA
(``LEAN_NORM_ON``; forced on CPU here, under bfloat16 autocast): the same losses and
gradients, bit for bit, and half the bytes for those copies.
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig
from test_lean_mlp import IDS, _steps

from workbench.models.tiny import _config
from workbench.train import core
from workbench.train.core import lean_norm_inputs, make_trainable


@pytest.fixture
def lean_on_cpu(monkeypatch):
    monkeypatch.setattr(core, "LEAN_NORM_ON", {"cpu"})


def _trainable(architecture: str, lean: bool, method="lora", dtype=torch.bfloat16):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(architecture, 256, 64, 2, IDS)).to(dtype)
    lora = None if method == "full" else LoraConfig(r=8, target_modules="all-linear")
    with pytest.MonkeyPatch.context() as patch:
        if not lean:
            patch.setattr(core, "lean_norm_inputs", lambda model: 0)
        return make_trainable(model, lora)


def _kept_by_dtype(model, autocast: bool = True) -> dict[torch.dtype, int]:
    """Bytes a bfloat16-autocast forward keeps for backward, per dtype, weights left out."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, tuple[torch.dtype, int]] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = (tensor.dtype, storage.nbytes())
        return tensor

    ids = torch.randint(3, 256, (2, 32), generator=torch.Generator().manual_seed(3))
    with (
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast),
        torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor),
    ):
        model(input_ids=ids, labels=ids, use_cache=False)
    totals: dict[torch.dtype, int] = {}
    for dtype, size in kept.values():
        totals[dtype] = totals.get(dtype, 0) + size
    return totals


@pytest.mark.parametrize(
    ("architecture", "method"),
    [
        ("llama", "lora"),  # two norms a block
        ("gemma3", "lora"),  # four, and q/k norms: (1 + weight), computed in float32
        ("qwen3", "lora"),  # q/k norms on each head
        ("gemma3", "full"),  # the norms' weights train: their float32 outputs stay kept
    ],
)
def test_same_losses_and_gradients_as_the_norms_as_written(lean_on_cpu, architecture, method):
    written = _steps(_trainable(architecture, False, method), autocast=True)
    lean = _steps(_trainable(architecture, True, method), autocast=True)
    assert lean[0] == written[0]
    for a, b in zip(written[1], lean[1], strict=True):
        assert torch.equal(a, b)


def test_the_float32_copies_are_kept_as_the_16_bit_inputs(lean_on_cpu):
    written = _kept_by_dtype(_trainable("gemma3", False))
    lean = _kept_by_dtype(_trainable("gemma3", True))
    copies = written[torch.float32] - lean[torch.float32]
    config = _config("gemma3", 256, 64, 2, IDS)
    # per block four norms over the hidden width, and the q and k norms over each head
    heads = config.num_attention_heads + config.num_key_value_heads
    normed = 4 * config.hidden_size + heads * config.head_dim
    assert copies == 4 * normed * config.num_hidden_layers * 2 * 32  # float32, 2 x 32 tokens
    assert lean[torch.bfloat16] - written[torch.bfloat16] == copies // 2  # the inputs, kept


def test_float32_norms_and_cpu_run_as_written(monkeypatch):
    assert _kept_by_dtype(_trainable("gemma3", True)) == _kept_by_dtype(_trainable("gemma3", False))
    monkeypatch.setattr(core, "LEAN_NORM_ON", {"cpu"})
    as_float32 = [_trainable("gemma3", lean, dtype=torch.float32) for lean in (False, True)]
    kept = [_kept_by_dtype(model, autocast=False) for model in as_float32]
    assert kept[1] == kept[0]
    assert lean_norm_inputs(as_float32[1]) == 0  # once
    assert lean_norm_inputs(torch.nn.LayerNorm(4)) == 0


def test_a_session_on_a_bfloat16_base_trains_the_same(tiny_model_dir, tmp_path, monkeypatch):
    import workbench as wb

    rows = [{"question": f"What is {i} plus {i}?", "answer": f"{2 * i}."} for i in range(24)]

    def history(folder):
        s = wb.Session(folder, verbose=False)
        s.load_model(str(tiny_model_dir))
        s.model.to(torch.bfloat16)  # a bfloat16 base, as on a GPU (load_model refuses it on CPU)
        s.load_data(rows)
        run = s.train(max_steps=4, batch_size=4, lr=1e-3, lora=wb.LoRA(r=8), wait=True)
        return run, [(r.loss, r.grad_norm) for r in run.history if r.kind == "train"]

    _, written = history(tmp_path / "written")
    monkeypatch.setattr(core, "LEAN_NORM_ON", {"cpu"})  # as on CUDA
    monkeypatch.setattr(core, "LEAN_MLP_ON", {"cpu"})
    hooked, float_copy_hooks = [0], core._float_copy_hooks
    monkeypatch.setattr(core, "_float_copy_hooks", lambda x: hooked.__setitem__(0, hooked[0] + 1)
                        or float_copy_hooks(x))  # fmt: skip
    run, lean = history(tmp_path / "lean")
    assert hooked[0] >= 4 * 5  # each step's five norms (two per block and the last)
    assert len(lean) == 4 and lean == written
    norms = [m for m in run.model.modules() if type(m).__name__ == "LlamaRMSNorm"]
    assert norms and all(m._lean_norm and m._forward_pre_hooks for m in norms)
