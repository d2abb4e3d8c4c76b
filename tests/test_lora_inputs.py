"""LoRA layers keep one input each for backward (train/core.py, ``lean_lora_inputs``).

peft's forward kept, per adapted layer, a copy of its input after dropout (float32 for a
bfloat16 base under autocast), q, k and v each their own. The workbench's adapters now keep
the input itself and the dropout's mask as bool (on CPU), or draw the same mask again in
backward (on CUDA; forced on CPU here by ``REDRAWS_MASKS_ON``): the same losses and gradients
as peft's forward, and less kept for backward.
"""

from __future__ import annotations

import copy

import pytest
import torch
from memory_checks import kept_for_backward
from peft import LoraConfig, PeftModel, get_peft_model
from training_checks import adamw_steps
from transformers import AutoModelForCausalLM

from workbench.train import core
from workbench.train.core import lean_lora_inputs, make_trainable


@pytest.fixture
def recomputed_on_cpu(monkeypatch):
    """Draw dropout masks again in backward on CPU too, as on CUDA (CPU keeps them)."""
    monkeypatch.setattr(core, "REDRAWS_MASKS_ON", {"cpu"})


def _adapted(folder, lean: bool, dtype=torch.float32, dropout=0.1, **lora):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    config = LoraConfig(r=8, target_modules="all-linear", lora_dropout=dropout, **lora)
    model = get_peft_model(model, config)
    changed = lean_lora_inputs(model) if lean else 0
    return model.train(), changed


def _ids(folder, rows=2, length=24):
    vocab = AutoModelForCausalLM.from_pretrained(folder).config.vocab_size
    return torch.randint(0, vocab, (rows, length), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("recompute", [True, False])
def test_same_losses_and_gradients_as_peft_with_dropout(tiny_model_dir, monkeypatch, recompute):
    if recompute:
        monkeypatch.setattr(core, "REDRAWS_MASKS_ON", {"cpu"})
    ids = _ids(tiny_model_dir)
    peft_model, _ = _adapted(tiny_model_dir, lean=False)
    lean_model, changed = _adapted(tiny_model_dir, lean=True)
    assert changed == 7 * 2  # q, k, v, o, gate, up, down in each of the two blocks
    peft_losses, peft_grads = adamw_steps(peft_model, ids)
    lean_losses, lean_grads = adamw_steps(lean_model, ids)
    assert lean_losses == pytest.approx(peft_losses, abs=1e-6)
    for a, b in zip(peft_grads, lean_grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)  # float32 summation order
    # the masks really drop: the same model without dropout trains differently
    no_dropout, _ = _adapted(tiny_model_dir, lean=True, dropout=0.0)
    assert adamw_steps(no_dropout, ids)[0][1:] != pytest.approx(peft_losses[1:], abs=1e-6)


@pytest.mark.parametrize("shape", [(16,), (3, 16), (2, 3, 16)])
def test_one_layer_matches_dropout_then_linear_for_any_leading_dims(shape):
    from workbench.train.core import DropoutLinear

    layer = torch.nn.Linear(16, 4, bias=False)
    lean = copy.deepcopy(layer)
    lean.__class__, lean.dropout_p = DropoutLinear, 0.1
    x = torch.randn(shape)
    grads = []
    for forward in (lambda x: layer(torch.nn.functional.dropout(x, 0.1, True)), lean):
        x_in = x.clone().requires_grad_()
        torch.manual_seed(1)
        (forward(x_in) * torch.arange(4.0)).sum().backward()
        grads.append((x_in.grad, forward.weight.grad if forward is lean else layer.weight.grad))
    (x_plain, w_plain), (x_lean, w_lean) = grads
    torch.testing.assert_close(x_lean, x_plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w_lean, w_plain, rtol=1e-5, atol=1e-6)


def test_inside_checkpointed_blocks_too(tiny_model_dir, recomputed_on_cpu):
    # gradient checkpointing recomputes whole blocks; the recomputed product nests inside
    ids = _ids(tiny_model_dir)
    results = []
    for lean in (False, True):
        model, _ = _adapted(tiny_model_dir, lean=lean)
        core.enable_checkpointing(model)
        results.append(adamw_steps(model, ids))
    (peft_losses, peft_grads), (lean_losses, lean_grads) = results
    assert lean_losses == pytest.approx(peft_losses, abs=1e-6)
    for a, b in zip(peft_grads, lean_grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)  # float32 summation order


def _kept_bytes(model, ids, autocast=True) -> int:
    """What a (bfloat16-autocast) forward keeps for backward, weights left out."""
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return kept_for_backward(model, lambda: model(input_ids=ids, labels=ids))


def test_a_bfloat16_base_under_autocast_keeps_less_for_backward(tiny_model_dir, monkeypatch):
    ids = _ids(tiny_model_dir, rows=4, length=64)
    kept = {
        lean: _kept_bytes(_adapted(tiny_model_dir, lean, torch.bfloat16)[0], ids)
        for lean in (False, True)
    }
    # on CPU the masks stay, a byte an element (drawing them again costs more); the copies go
    assert kept[True] < 0.75 * kept[False], kept  # measured 0.70 (0.85 keeping dropped copies)
    monkeypatch.setattr(core, "REDRAWS_MASKS_ON", {"cpu"})  # as on an accelerator
    kept[True] = _kept_bytes(_adapted(tiny_model_dir, True, torch.bfloat16)[0], ids)
    assert kept[True] < 0.7 * kept[False], kept  # measured 0.61 (0.56 on a Qwen2 0.5B block)
    # and the training is peft's: same losses within bfloat16 rounding
    peft_losses, _ = adamw_steps(
        _adapted(tiny_model_dir, False, torch.bfloat16)[0], ids, autocast=True
    )
    lean_losses, _ = adamw_steps(
        _adapted(tiny_model_dir, True, torch.bfloat16)[0], ids, autocast=True
    )
    assert lean_losses == pytest.approx(peft_losses, rel=2e-3)


def test_a_float32_base_on_cpu_keeps_masks_not_copies(tiny_model_dir):
    # the CPU default: peft kept each layer's dropped copy and its float mask, 8 bytes an
    # element; now a bool mask, 1 byte
    ids = _ids(tiny_model_dir, rows=4, length=64)
    kept = {lean: _kept_bytes(_adapted(tiny_model_dir, lean)[0], ids, autocast=False)
            for lean in (False, True)}  # fmt: skip
    no_dropout = _kept_bytes(_adapted(tiny_model_dir, False, dropout=0.0)[0], ids, autocast=False)
    masks = (
        sum(  # one byte per input element of each adapted layer, per token
            module.in_features
            for name, module in _adapted(tiny_model_dir, False)[0].named_modules()
            if name.endswith("base_layer")
        )
        * ids.numel()
    )
    assert kept[True] == no_dropout + masks, (kept, no_dropout, masks)
    assert kept[True] < 0.8 * kept[False], kept  # measured 0.72


def test_evaluation_ignores_dropout_and_the_saved_adapter_loads_in_plain_peft(
    tiny_model_dir, tmp_path
):
    ids = _ids(tiny_model_dir)
    model, _ = _adapted(tiny_model_dir, lean=True, init_lora_weights=False)  # B != 0
    model.eval()
    with torch.no_grad():
        first, second = model(input_ids=ids).logits, model(input_ids=ids).logits
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    model.save_pretrained(tmp_path / "adapter")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    plain = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()  # peft's own layers
    assert type(plain.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"]) is (
        torch.nn.Linear
    )
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, first, rtol=1e-5, atol=1e-5)


def test_a_lean_model_pickles_and_copies(tiny_model_dir):
    import pickle

    model, _ = _adapted(tiny_model_dir, lean=True)
    ids = _ids(tiny_model_dir)
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        for twin in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
            layer = twin.base_model.model.model.layers[1].mlp.up_proj.lora_A["default"]
            assert type(layer).__name__ == "DropoutLinear" and layer.dropout_p == 0.1
            torch.testing.assert_close(twin(input_ids=ids).logits, expected, rtol=0, atol=0)


def test_dora_layers_are_left_to_peft(tiny_model_dir):
    model, changed = _adapted(tiny_model_dir, lean=True, use_dora=True)
    assert changed == 0
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(layer.lora_dropout["default"], torch.nn.Dropout)
    assert getattr(layer, "cast_input_dtype_enabled", True)


def test_a_4bit_base_trains_as_under_peft(tiny_model_dir, recomputed_on_cpu):
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32)
    ids = _ids(tiny_model_dir)
    losses = {}
    for lean in (False, True):
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, quantization_config=quant)
        lora = LoraConfig(r=8, target_modules="all-linear", lora_dropout=0.1)
        model = make_trainable(base, lora) if lean else get_peft_model(base, lora).train()
        down_a = model.base_model.model.model.layers[0].mlp.down_proj.lora_A["default"]
        assert (type(down_a).__name__ == "DropoutLinear") is lean
        losses[lean] = adamw_steps(model, ids)[0]
    assert losses[True] == pytest.approx(losses[False], abs=1e-5)


def _mean_gradient(model, loss_of, draws: int, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    for _ in range(draws):
        loss_of(model).backward()
    params = [p for p in model.parameters() if p.requires_grad]
    mean = torch.cat([p.grad.flatten() for p in params]) / draws
    model.zero_grad(set_to_none=True)
    return mean


def test_under_torch_compile_dropout_gradients_are_unbiased(tiny_model_dir):
    # compiled, the adapters leave dropout to the compiler, which draws its own masks: the
    # mean gradient over many draws must agree with eager's as closely as two eager runs'
    # (the autograd step traced by torch.compile was 4x further off)
    model, _ = _adapted(tiny_model_dir, lean=True, dropout=0.3, init_lora_weights=False)
    ids = _ids(tiny_model_dir, rows=4, length=32)

    def loss_of(m):
        return m(input_ids=ids, labels=ids).loss

    eager = [_mean_gradient(model, loss_of, 100, seed) for seed in (1, 2)]
    compiled = _mean_gradient(model, torch.compile(loss_of), 100, 3)
    noise = ((eager[0] - eager[1]).norm() / eager[0].norm()).item()
    off = ((compiled - eager[0]).norm() / eager[0].norm()).item()
    assert off < 1.5 * noise, (off, noise)


@pytest.mark.parametrize("mode", ["eager", "eager-redraw", "compiled", "compiled-autocast"])
def test_backward_drops_where_forward_dropped(mode, monkeypatch):
    # two adapters that pass x through (A = B = I, base weights 0): y = x * m1 * m2 * 4, so
    # the input's gradient is zero exactly where y is, unless backward drew other masks
    if "redraw" in mode:
        monkeypatch.setattr(core, "REDRAWS_MASKS_ON", {"cpu"})
    n = 16
    net = torch.nn.Sequential(torch.nn.Linear(n, n, bias=False), torch.nn.Linear(n, n, bias=False))
    config = LoraConfig(target_modules=["0", "1"], lora_dropout=0.5, r=n, lora_alpha=n)
    net = get_peft_model(net, config)
    with torch.no_grad():
        for module in net.modules():
            if hasattr(module, "lora_A"):
                module.base_layer.weight.zero_()
                module.lora_A["default"].weight.copy_(torch.eye(n))
                module.lora_B["default"].weight.copy_(torch.eye(n))
    assert lean_lora_inputs(net) == 2
    forward = torch.compile(net.train()) if "compiled" in mode else net.train()
    torch.manual_seed(0)
    x = (torch.rand(4, 7, n) + 0.5).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled="autocast" in mode):
        y = forward(x)
    (y.float() * (torch.rand(y.shape) + 0.5)).sum().backward()
    assert 0.6 < (y == 0).float().mean() < 0.9  # 1 - 0.5 * 0.5 of positions dropped
    assert torch.equal(y == 0, x.grad == 0)


def test_a_device_that_keeps_masks_asks_for_no_generator(monkeypatch):
    # only devices that draw masks again read their generator (MPS has no default_generators)
    def no_generator(device):
        raise AssertionError(f"asked for {device}'s generator")

    monkeypatch.setattr(core, "_default_generator", no_generator)
    test_one_layer_matches_dropout_then_linear_for_any_leading_dims((3, 16))
    monkeypatch.setattr(core, "REDRAWS_MASKS_ON", {"cpu"})
    with pytest.raises(AssertionError, match="asked for cpu's generator"):
        test_one_layer_matches_dropout_then_linear_for_any_leading_dims((3, 16))
