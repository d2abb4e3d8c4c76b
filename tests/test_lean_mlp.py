"""Gated MLPs keep two intermediate-wide tensors for backward (train/core.py,
``lean_gated_mlps``).

As transformers writes it, ``down(act(gate(x)) * up(x))`` keeps ``gate(x)``, ``act(gate(x))``,
``up(x)`` and the product for backward. The workbench's MLPs keep ``gate(x)`` and ``up(x)``
and compute the product again in backward, on CUDA (``LEAN_MLP_ON``; forced on CPU here):
the same losses and gradients, bit for bit, and what the memory estimate counts.
"""

from __future__ import annotations

import copy
import pickle
from types import SimpleNamespace

import pytest
import torch
from memory_checks import kept_for_backward
from peft import LoraConfig
from training_checks import adamw_steps
from transformers import AutoModelForCausalLM

import workbench as wb
from workbench.models import memory
from workbench.models.tiny import TINY_ARCHITECTURES, _config
from workbench.train import core
from workbench.train.core import lean_gated_mlps, make_trainable

IDS = SimpleNamespace(pad_token_id=0, bos_token_id=1, eos_token_id=2)


@pytest.fixture
def lean_on_cpu(monkeypatch):
    """Keep the MLPs lean on CPU too, as on CUDA."""
    monkeypatch.setattr(core, "LEAN_MLP_ON", {"cpu"})


def _model(architecture: str, dtype=torch.float32, hidden: int = 64):
    torch.manual_seed(0)
    config = _config(architecture, 256, hidden, 2, IDS)
    return AutoModelForCausalLM.from_config(config).to(dtype)


def _trainable(architecture, lean: bool, method="lora", dropout=0.1, dtype=torch.float32):
    """The model as the workbench trains it, with its MLPs lean or as transformers writes them."""
    model = _model(architecture, dtype)
    lora = None if method == "full" else LoraConfig(r=8, target_modules="all-linear")
    if lora is not None and not core.dropout_free_targets(model, lora):
        lora.lora_dropout = dropout
    if lean:
        return make_trainable(model, lora)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(core, "lean_gated_mlps", lambda model: 0)
        return make_trainable(model, lora)


def _steps(model, steps=3, autocast=False):
    """Losses and gradients of a few AdamW steps on two rows of 24 tokens."""
    ids = torch.randint(3, 256, (2, 24), generator=torch.Generator().manual_seed(3))
    return adamw_steps(model, ids, steps, autocast)


def _saved_bytes(model, tokens=(2, 32)) -> int:
    """Bytes autograd keeps for backward after one forward, weights left out."""
    ids = torch.randint(3, 256, tokens, generator=torch.Generator().manual_seed(3))
    return kept_for_backward(model, lambda: model(input_ids=ids, labels=ids, use_cache=False))


def _counting_products(monkeypatch) -> list[int]:
    """Count the lean products computed (``_gated_product().apply`` calls)."""
    calls = [0]
    product = core._gated_product()

    class Counting(product):
        @classmethod
        def apply(cls, *args):
            calls[0] += 1
            return product.apply(*args)

    monkeypatch.setattr(core, "_gated_product", lambda: Counting)
    return calls


@pytest.mark.parametrize(
    ("architecture", "method", "autocast"),
    [
        ("llama", "lora", False),  # gate_proj, up_proj, act_fn (SiLU)
        ("llama", "lora", True),  # a bfloat16 base under autocast, as on a GPU
        ("qwen2", "full", False),  # down's weight keeps the product for its own gradient
        ("gemma3", "lora", False),  # GELU (tanh)
        ("phi3", "lora", False),  # one gate_up_proj, split in halves
        ("lfm2", "lora", False),  # w1, w3, w2 and F.silu
        ("granitemoehybrid", "lora", False),  # a shared expert's input_linear/output_linear
        ("qwen2_moe", "lora", False),  # a shared expert beside routed ones
    ],
)
def test_same_losses_and_gradients_as_the_mlp_as_written(
    lean_on_cpu, monkeypatch, architecture, method, autocast
):
    dtype = torch.bfloat16 if autocast else torch.float32
    written = _steps(_trainable(architecture, False, method, dtype=dtype), autocast=autocast)
    calls = _counting_products(monkeypatch)
    lean = _steps(_trainable(architecture, True, method, dtype=dtype), autocast=autocast)
    assert calls[0] >= 3 * 1  # every step went through the lean product
    assert lean[0] == written[0]  # bit for bit: the same operations
    for a, b in zip(written[1], lean[1], strict=True):
        assert torch.equal(a, b)


def _estimate(config, lean_on: set, **settings):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(core, "LEAN_MLP_ON", lean_on)
        return memory.estimate_memory(config, dtype="float32", lora_r=8, **settings)


def test_keeps_two_intermediate_wide_tensors_not_four_as_the_estimate_counts(monkeypatch):
    monkeypatch.setattr(core, "LEAN_MLP_ON", {"cpu"})
    written = _saved_bytes(_trainable("llama", False, dropout=0.0))
    lean = _saved_bytes(_trainable("llama", True, dropout=0.0))
    config = _model("llama").config
    tokens, layers, width = 2 * 32, config.num_hidden_layers, config.intermediate_size
    assert written - lean == 2 * width * 4 * tokens * layers  # act(gate(x)) and the product

    shape = dict(seq_len=32, batch_size=2, device="cuda", gradient_checkpointing=False)
    as_written, estimated = _estimate(config, set(), **shape), _estimate(config, {"cuda"}, **shape)
    saved = (as_written.activations - estimated.activations) / memory._ALLOCATOR_FACTOR["cuda"]
    assert saved == pytest.approx(written - lean, abs=1)  # the estimate rounds to bytes
    assert estimated.total < as_written.total
    # on CPU, and where checkpointing recomputes whole blocks, it counts all four
    for settings in (dict(device="cpu"), dict(device="cuda", gradient_checkpointing=True)):
        assert _estimate(config, {"cuda"}, **settings) == _estimate(config, set(), **settings)


def test_on_cpu_without_gradients_or_inside_checkpointing_the_mlp_runs_as_written(monkeypatch):
    calls = _counting_products(monkeypatch)
    model = _trainable("llama", True, dropout=0.0)
    written = _trainable("llama", False, dropout=0.0)
    assert _saved_bytes(model) == _saved_bytes(written)  # CPU, as LEAN_MLP_ON says
    monkeypatch.setattr(core, "LEAN_MLP_ON", {"cpu"})
    with torch.no_grad():
        model(input_ids=torch.tensor([[5, 6, 7]]))
    assert calls[0] == 0
    # checkpointed blocks keep only their inputs; nested hooks would keep gate(x) and up(x)
    results = []
    for lean in (False, True):
        model = _trainable("llama", lean)
        core.enable_checkpointing(model)
        results.append(_steps(model))
    assert calls[0] == 0
    assert results[1][0] == results[0][0]
    for a, b in zip(results[0][1], results[1][1], strict=True):
        assert torch.equal(a, b)


class _ScaledMLP(torch.nn.Module):
    """Names like a gated MLP, but scales its output: not ``down(act(gate(x)) * up(x))``."""

    def __init__(self) -> None:
        super().__init__()
        self.gate_proj, self.up_proj = torch.nn.Linear(4, 8), torch.nn.Linear(4, 8)
        self.down_proj, self.act_fn = torch.nn.Linear(8, 4), torch.nn.SiLU()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x)) * 2


class _MaskedMLP(_ScaledMLP):
    def forward(self, x, mask):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x)) * mask


class _DroppedOutputMLP(_ScaledMLP):
    """Seed-OSS's shape: dropout after the down projection (identity in evaluation mode)."""

    def forward(self, x):
        out = self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
        return torch.nn.functional.dropout(out, p=0.1, training=self.training)


def test_other_forwards_are_left_as_they_are():
    assert lean_gated_mlps(_ScaledMLP()) == 0
    assert lean_gated_mlps(_MaskedMLP()) == 0  # a forward with other arguments
    assert lean_gated_mlps(_DroppedOutputMLP()) == 0  # read from its source, not tried
    assert lean_gated_mlps(_model("falcon_h1")) == 0  # its MLP multiplies gate and output
    assert lean_gated_mlps(_model("gpt2")) == 0  # no gate
    wrapped = _model("llama")
    mlp = wrapped.model.layers[0].mlp
    mlp.forward = lambda x: type(mlp).forward(mlp, x)  # a wrapper's forward stays
    assert lean_gated_mlps(wrapped) == 1  # the other block's MLP
    assert lean_gated_mlps(wrapped) == 0  # once


def test_a_lean_model_deep_copies_and_pickles(lean_on_cpu):
    model = _trainable("llama", True, dropout=0.0)
    ids = torch.tensor([[5, 6, 7, 8]])
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        mlp = other.base_model.model.model.layers[1].mlp
        assert mlp.forward.module is mlp  # bound to the copy, not to the original
        with torch.no_grad():
            assert torch.equal(other(input_ids=ids).logits, model(input_ids=ids).logits)
        _steps(other, steps=1)  # and trains


def checked_configs() -> list:
    """Configs of every tiny architecture, DeepSeek-V3 (latent attention, a dense block
    before the experts), Cohere (LayerNorms beside a gated MLP) and Jamba (Mamba blocks):
    the models the estimate's lists of lean model types are checked against."""
    from transformers import CohereConfig, DeepseekV3Config, JambaConfig

    small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=256)
    small.update(num_key_value_heads=2, intermediate_size=128)
    configs = [_config(architecture, 256, 64, 2, IDS) for architecture in TINY_ARCHITECTURES]
    return [
        *configs,
        DeepseekV3Config(**small, moe_intermediate_size=32, n_routed_experts=4, n_group=1,
                         first_k_dense_replace=1, num_experts_per_tok=2, topk_group=1,
                         q_lora_rank=32, kv_lora_rank=16, qk_rope_head_dim=8,
                         qk_nope_head_dim=8, v_head_dim=16),
        CohereConfig(**small),
        JambaConfig(**small, num_experts=1, attn_layer_offset=1, attn_layer_period=2,
                    mamba_d_state=8),
    ]  # fmt: skip


def test_the_estimate_knows_which_model_types_keep_lean_mlps():
    """``memory._LEAN_MLP`` says, per model type, what ``lean_gated_mlps`` does to it."""
    for config in checked_configs():
        if config.model_type == "qwen3_moe":
            config.mlp_only_layers = [0]  # one dense MLP beside the experts
        torch.manual_seed(0)
        changed = lean_gated_mlps(AutoModelForCausalLM.from_config(config))
        assert (changed > 0) == (config.model_type in memory._LEAN_MLP), (config, changed)


def test_a_session_trains_the_same_with_lean_mlps(tiny_model_dir, tmp_path, monkeypatch):
    rows = [{"question": f"What is {i} plus {i}?", "answer": f"{2 * i}."} for i in range(24)]

    def history(folder):
        s = wb.Session(folder, verbose=False)
        s.load_model(str(tiny_model_dir))
        s.load_data(rows)
        run = s.train(max_steps=4, batch_size=4, lr=1e-3, lora=wb.LoRA(r=8), wait=True)
        return run, [(r.loss, r.grad_norm) for r in run.history if r.kind == "train"]

    _, written = history(tmp_path / "written")
    monkeypatch.setattr(core, "LEAN_MLP_ON", {"cpu"})  # as on CUDA
    calls = _counting_products(monkeypatch)
    run, lean = history(tmp_path / "lean")
    assert calls[0] > 0
    assert len(lean) == 4 and lean == written
    mlps = [m for m in run.model.modules() if type(m).__name__ == "LlamaMLP"]
    assert mlps and all(type(m.forward).__name__ == "_LeanGatedForward" for m in mlps)


@pytest.mark.parametrize(("quantized", "dora"), [(True, False), (False, True), (True, True)])
def test_a_4bit_base_and_dora_train_the_same(
    tiny_model_dir, lean_on_cpu, monkeypatch, quantized, dora
):
    from transformers import BitsAndBytesConfig

    from workbench.models.loading import keep_4bit_layout_trainable
    from workbench.train.prepare import freeze_quantized_base

    def trained(lean: bool):
        torch.manual_seed(0)
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32)
        options = {"quantization_config": quant} if quantized else {}
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, **options)
        if quantized:
            freeze_quantized_base(model)
            keep_4bit_layout_trainable(model)
        lora = LoraConfig(r=8, target_modules="all-linear", lora_dropout=0.1, use_dora=dora)
        with pytest.MonkeyPatch.context() as patch:
            if not lean:
                patch.setattr(core, "lean_gated_mlps", lambda model: 0)
            return _steps(make_trainable(model, lora))

    written = trained(False)
    calls = _counting_products(monkeypatch)
    lean = trained(True)
    assert calls[0] > 0
    assert lean[0] == written[0]
    for a, b in zip(written[1], lean[1], strict=True):
        assert torch.equal(a, b)


class _UpFirstMLP(torch.nn.Module):
    """``up(x) * act(gate(x))``: Python calls ``up`` first, so its dropout mask comes first."""

    def __init__(self) -> None:
        super().__init__()
        self.gate_proj, self.up_proj = torch.nn.Linear(16, 32), torch.nn.Linear(16, 32)
        self.down_proj, self.act_fn = torch.nn.Linear(32, 16), torch.nn.GELU()

    def forward(self, x):
        return self.down_proj(self.up_proj(x) * self.act_fn(self.gate_proj(x)))


def test_projections_are_called_in_the_forward_s_order(lean_on_cpu, monkeypatch):
    lora = LoraConfig(r=4, target_modules=["gate_proj", "up_proj", "down_proj"], lora_dropout=0.3)
    lora.init_lora_weights = False  # the adapters' dropout shows in the output

    def gradients(lean: bool):
        torch.manual_seed(0)
        net = torch.nn.Sequential(_UpFirstMLP())
        with pytest.MonkeyPatch.context() as patch:
            if not lean:
                patch.setattr(core, "lean_gated_mlps", lambda model: 0)
            net = make_trainable(net, lora)
        x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(1))
        torch.manual_seed(2)
        net(x).square().sum().backward()
        return [p.grad for p in net.parameters() if p.requires_grad]

    written = gradients(False)
    calls = _counting_products(monkeypatch)
    lean = gradients(True)
    assert calls[0] == 1
    assert all(torch.equal(a, b) for a, b in zip(written, lean, strict=True))
