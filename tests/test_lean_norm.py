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
from memory_checks import kept_for_backward
from peft import LoraConfig
from test_lean_mlp import IDS, _steps, checked_configs
from transformers import AutoModelForCausalLM

from workbench.models import memory
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
    """Bytes a bfloat16-autocast forward keeps for backward, per dtype, weights left out.

    Counted once the forward is over, over what the graph still holds: a tensor saved by a
    step whose result was dropped is freed at once, and its memory may be reused by the next
    (Qwen3.5's linear attention), so counting by address while the forward runs would not.
    """
    import weakref

    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    packed = []

    def pack(tensor):
        packed.append(weakref.ref(tensor))
        return tensor

    ids = torch.randint(3, 256, (2, 32), generator=torch.Generator().manual_seed(3))
    with (
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast),
        torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor),
    ):
        output = model(input_ids=ids, labels=ids, use_cache=False)
    kept: dict[int, tuple[torch.dtype, int]] = {}
    for ref in packed:
        tensor = ref()
        if tensor is not None and tensor.untyped_storage().data_ptr() not in weights:
            storage = tensor.untyped_storage()
            kept[storage.data_ptr()] = (tensor.dtype, storage.nbytes())
    del output
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
        ("qwen3_5", "lora"),  # the query's norm gets half of what its projection made
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


# Where the estimate may count less than the norms save (memory._LEAN_NORMS): Gemma 4's
# global blocks have other head widths and counts than its sliding ones (counted at their
# mean), Llama 4's q/k norms are left out (its blocks without RoPE have none).
_COUNTED_LOW = {"gemma4_text", "llama4_text"}


def _saved_by_lean_norms(config, method: str) -> tuple[int, int]:
    """Bytes per token lean norms keep less: (hook-counted, as the CUDA estimate counts)."""
    kept = []
    for lean_on in (set(), {"cpu"}):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(core, "LEAN_NORM_ON", lean_on)
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
            lora = None if method == "full" else LoraConfig(r=8, target_modules="all-linear")
            kept.append(sum(_kept_by_dtype(make_trainable(model, lora)).values()))
    estimates = []
    for lean_on in (set(), {"cuda"}):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(core, "LEAN_NORM_ON", lean_on)
            estimates.append(memory.estimate_memory(
                config, device="cuda", dtype="bfloat16", method=method, lora_r=8, seq_len=32,
                batch_size=2, gradient_checkpointing=False,
            ).activations / memory._ALLOCATOR_FACTOR["cuda"])  # fmt: skip
    tokens = 2 * 32
    return (kept[0] - kept[1]) // tokens, round((estimates[0] - estimates[1]) / tokens)


def test_the_estimate_counts_what_lean_norms_keep_less_on_every_architecture():
    for config in checked_configs():
        if config.model_type == "jamba":
            continue  # the estimate does not model its blocks yet
        measured, estimated = _saved_by_lean_norms(config, "lora")
        if config.model_type in _COUNTED_LOW:
            assert 0 < estimated <= measured, (config.model_type, measured)
        else:
            assert estimated == measured, (config.model_type, measured, estimated)
    assert _saved_by_lean_norms(checked_configs()[-2], "lora") == (0, 0)  # Cohere's LayerNorms


@pytest.mark.parametrize("architecture", ["llama", "olmo2"])
def test_the_estimate_counts_lean_norms_in_full_fine_tuning(architecture):
    # the embedding trains: the first block's norm keeps its copy too (or its lean input)
    measured, estimated = _saved_by_lean_norms(_config(architecture, 256, 64, 2, IDS), "full")
    assert measured > 0 and estimated == measured


def test_the_estimate_counts_lean_norms_only_where_they_apply():
    shape = dict(seq_len=32, batch_size=2, lora_r=8)
    config = _config("qwen3", 256, 64, 2, IDS)
    plain = memory.estimate_memory(config, device="cuda", gradient_checkpointing=False, **shape)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(core, "LEAN_NORM_ON", set())
        as_written = memory.estimate_memory(
            config, device="cuda", gradient_checkpointing=False, **shape
        )
        for settings in (
            dict(device="cuda", dtype="float32"),  # no float32 copies to spare
            dict(device="cuda", gradient_checkpointing=True),  # blocks recompute instead
            dict(device="cpu", dtype="bfloat16"),  # LEAN_NORM_ON: CUDA
        ):
            off = memory.estimate_memory(config, **settings, **shape)
            patch.setattr(core, "LEAN_NORM_ON", {"cuda"})
            assert memory.estimate_memory(config, **settings, **shape) == off, settings
            patch.setattr(core, "LEAN_NORM_ON", set())
    assert plain.activations < as_written.activations


class _SquaredRMSNorm(torch.nn.Module):
    """Keeps ``x.float()`` (pow and mul save it) and, with ``other``, a float32 tensor of
    the same values that is not a conversion of its input."""

    def __init__(self, other: bool = False) -> None:
        super().__init__()
        self.other = other

    def forward(self, x):
        x32 = (x * 1).float() if self.other else x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype)


@pytest.mark.parametrize("leaf", [False, True])
def test_only_conversions_of_the_input_are_kept_as_the_input(lean_on_cpu, leaf):
    def kept(norm):
        lean_norm_inputs(norm)
        source = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
        x = source.bfloat16().requires_grad_() if leaf else source.requires_grad_().bfloat16()
        saved = kept_for_backward(norm, lambda: norm(x))
        norm(x).float().pow(2).sum().backward()
        return saved, x.grad if leaf else source.grad

    as_written = _SquaredRMSNorm()
    as_written._lean_norm = True  # lean_norm_inputs leaves it alone
    written, written_grad = kept(as_written)
    converted, converted_grad = kept(_SquaredRMSNorm())
    other, _ = kept(_SquaredRMSNorm(other=True))
    assert written - converted == 3 * 8 * 2  # 4 bytes of the copy for 2 of the input
    assert torch.equal(written_grad, converted_grad)
    assert other == written  # the float32 copy of x * 1 is kept: not a conversion of x


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
