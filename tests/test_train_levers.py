"""Speed levers of the training path (issue 12): fused AdamW and ``compile=True``.

Each lever must leave the run's results as they were (to float rounding) and its files
readable by a run without it.
"""

from __future__ import annotations

import pytest
import torch
from train_helpers import fresh, toy_run, train_losses

from workbench.train import LoRA, RunState, TrainSpec
from workbench.train.batches import Examples
from workbench.train.checkpoint import load_checkpoint, save_checkpoint
from workbench.train.loop import TrainLoop, make_adamw
from workbench.train.loss import token_loss_sum
from workbench.train.prepare import optimizer_groups, wrap_model

NO_DROPOUT = LoRA(r=8, dropout=0.0)


def _adapter_grads(model_dir):
    """A tiny LoRA model with the gradients of one real batch."""
    torch.manual_seed(0)
    spec = TrainSpec(lora=NO_DROPOUT)
    model = wrap_model(fresh(model_dir).model, spec)
    ids = torch.randint(3, 100, (4, 12))
    batch = {"input_ids": ids, "labels": ids.clone()}
    loss, count = token_loss_sum(model, batch)
    (loss / count).backward()
    return model, spec


def test_the_loop_steps_with_the_fused_adamw_and_updates_like_the_plain_one(tiny_model_dir):
    model, spec = _adapter_grads(tiny_model_dir)
    params = [p for p in model.parameters() if p.requires_grad]
    copies = [p.detach().clone().requires_grad_(True) for p in params]
    for copy, p in zip(copies, params, strict=True):
        copy.grad = p.grad.clone()
    fused = make_adamw(optimizer_groups(model, spec), 1e-2)
    plain = torch.optim.AdamW(copies, lr=spec.lr, weight_decay=0.0, foreach=False)
    assert fused.defaults["fused"] is True
    for _ in range(5):
        fused.step()
        plain.step()
    worst = max(float((p - c).detach().abs().max()) for p, c in zip(params, copies, strict=True))
    assert worst < 1e-6
    assert all(not torch.equal(p, c.grad) for p, c in zip(params, copies, strict=True))

    loop = TrainLoop(model, 0, _toy_examples(), None, spec, total_steps=2)
    assert loop.optimizer.defaults["fused"] is True


def _toy_examples():
    return Examples.from_rows([[1, 5, 6, 7, 8]] * 8, [[-100, 5, 6, 7, 8]] * 8)


def test_a_checkpoint_of_an_unfused_adamw_resumes_fused_and_the_reverse(tmp_path, tiny_model_dir):
    model, spec = _adapter_grads(tiny_model_dir)
    groups = optimizer_groups(model, spec)
    unfused = torch.optim.AdamW(groups, lr=1e-2, foreach=False)
    unfused.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(unfused, lambda s: 1.0)
    first_path = save_checkpoint(tmp_path, model, unfused, scheduler, {"step": 1})

    fused = make_adamw(optimizer_groups(model, spec), 1e-2)
    load_checkpoint(first_path, model, fused, torch.optim.lr_scheduler.LambdaLR(fused, lambda s: 1))
    assert all(g["fused"] is True for g in fused.param_groups)  # the file did not switch it off
    first = next(iter(unfused.state.values()))
    loaded = next(iter(fused.state.values()))
    assert torch.equal(first["exp_avg"], loaded["exp_avg"])
    fused.step()  # the loaded state works with the fused kernel

    second_path = save_checkpoint(tmp_path, model, fused, scheduler, {"step": 2})
    again = torch.optim.AdamW(optimizer_groups(model, spec), lr=1e-2, foreach=False)
    load_checkpoint(
        second_path, model, again, torch.optim.lr_scheduler.LambdaLR(again, lambda s: 1)
    )
    assert all(not g["fused"] for g in again.param_groups)
    again.step()


def test_compile_trains_the_same_curve_and_leaves_the_model_eager(tmp_path, tiny_model_dir):
    spec = TrainSpec(max_steps=6, lr=5e-3, batch_size=4, lora=NO_DROPOUT, eval_every=3)
    eager = toy_run(tiny_model_dir, tmp_path / "eager", spec)
    compiled = toy_run(
        tiny_model_dir, tmp_path / "compiled", TrainSpec(**{**vars(spec), "compile": True})
    )
    assert eager.state is compiled.state is RunState.FINISHED
    assert train_losses(compiled) == pytest.approx(train_losses(eager), abs=1e-5)
    evals = [[r.loss for r in run.history if r.kind == "eval"] for run in (eager, compiled)]
    assert evals[1] == pytest.approx(evals[0], abs=1e-5) and len(evals[0]) == 2
    # The checkpoint holds the same tensor names: compiling wrapped no module.
    names = [
        sorted(p.name for p in (run.run_dir / "checkpoints").iterdir()) for run in (eager, compiled)
    ]
    assert names[0] == names[1]
    assert not any("_orig_mod" in n for n, _ in compiled.model.named_parameters())
    assert compiled.spec.compile is True


def test_compile_with_dropout_trains_close_to_eager(tmp_path, tiny_model_dir):
    # compiled, the adapters' dropout is left to torch.compile, which draws its own masks:
    # close to eager, not equal (that its gradients are unbiased: test_lora_inputs.py)
    spec = TrainSpec(max_steps=3, lr=5e-3, batch_size=4, lora=LoRA(r=8, dropout=0.1))
    eager = toy_run(tiny_model_dir, tmp_path / "eager", spec)
    compiled = toy_run(
        tiny_model_dir, tmp_path / "compiled", TrainSpec(**{**vars(spec), "compile": True})
    )
    assert eager.state is compiled.state is RunState.FINISHED
    assert train_losses(compiled) == pytest.approx(train_losses(eager), abs=0.05)  # other masks
    no_dropout = toy_run(
        tiny_model_dir, tmp_path / "plain", TrainSpec(**{**vars(spec), "lora": NO_DROPOUT})
    )
    assert train_losses(no_dropout)[1:] != pytest.approx(train_losses(eager)[1:], abs=1e-5)


def test_compile_and_packing_can_change_in_a_fork_and_bad_values_are_named(
    tmp_path, tiny_model_dir
):
    spec = TrainSpec(max_steps=4, lr=5e-3, batch_size=4, save_every=2, keep_checkpoints="all")
    parent = toy_run(tiny_model_dir, tmp_path / "runs" / "run-001", spec)
    fork = parent.fork(step=2, packing=True)
    assert fork.wait(120).state is RunState.FINISHED
    assert fork.spec.packing is True and fork.loop.packing.on
    with pytest.raises(Exception, match="compile='yes' must be True or False"):
        TrainSpec(compile="yes")


# -- batch_size="auto" ----------------------------------------------------------------------
LENGTHS = [40, 200, 120, 64] * 25  # 100 examples; the longest (200) sets the width


def _peak(model, size, **settings):
    from workbench.models.memory import estimate_memory

    return estimate_memory(model.config, seq_len=200, batch_size=size, device="cpu", **settings)


def test_auto_batch_size_takes_the_largest_batch_the_estimate_fits(tiny_model_dir):
    from workbench.train.batch_size import AUTO_LIMIT, HEADROOM, choose_batch_size

    model = fresh(tiny_model_dir).model
    spec = TrainSpec(batch_size="auto")
    roomy = choose_batch_size(model, LENGTHS, spec, budget=64 * 2**30)
    assert roomy.size == AUTO_LIMIT["cpu"] == 8
    assert roomy.reason.startswith("batch_size='auto' chose 8: its estimated peak")
    assert "(200 tokens)" in roomy.reason
    # A budget that holds batch 4 but not batch 8 (after the headroom) gives 4.
    four, eight = (_peak(model, n, lora_r=spec.lora.r).total for n in (4, 8))
    budget = int((four + eight) / 2 / HEADROOM["cpu"])
    tight = choose_batch_size(model, LENGTHS, spec, budget=budget)
    assert tight.size == 4 and "(batch 8:" in tight.reason
    # Few examples: one batch holds them all.
    assert choose_batch_size(model, [30, 31, 32], spec, budget=64 * 2**30).size == 3
    on_gpu = choose_batch_size(model, LENGTHS, spec, budget=2**40, device="cuda")
    assert on_gpu.size == AUTO_LIMIT["cuda"] == 64


def test_auto_batch_size_warns_when_not_even_one_row_fits(tiny_model_dir):
    from workbench.errors import WorkbenchWarning
    from workbench.train.batch_size import choose_batch_size

    model = fresh(tiny_model_dir).model
    with pytest.warns(WorkbenchWarning, match="chose 1, but even that is estimated"):
        choice = choose_batch_size(model, LENGTHS, TrainSpec(batch_size="auto"), budget=2**20)
    assert choice.size == 1 and "gradient_checkpointing=True" in choice.reason


def test_auto_batch_size_estimates_a_4bit_base_as_4bit(tiny_model_dir):
    from workbench.train.batch_size import choose_batch_size

    plain = fresh(tiny_model_dir).model
    quantized = fresh(tiny_model_dir, quantization="4bit").model
    budget = 64 * 2**30
    qlora = choose_batch_size(quantized, LENGTHS, TrainSpec(method="qlora"), budget=budget)
    lora = choose_batch_size(plain, LENGTHS, TrainSpec(), budget=budget)
    expected = {
        "qlora": _peak(plain, 8, quantization="4bit", method="qlora").total,
        "lora": _peak(plain, 8, lora_r=8).total,
    }
    assert expected["qlora"] != expected["lora"]
    assert f"is {expected['qlora'] / 2**30:.2f} GiB" in qlora.reason
    assert f"is {expected['lora'] / 2**30:.2f} GiB" in lora.reason


def test_a_run_stores_the_chosen_batch_size_and_resumes_and_forks_with_it(tmp_path, tiny_model_dir):
    import json

    import workbench as wb

    session = wb.Session(tmp_path / "s", verbose=False)
    session.load_model(str(tiny_model_dir))
    session.load_data([{"question": f"q{i} " * (i % 5 + 1), "answer": f"a{i}"} for i in range(40)])
    run = session.train(
        max_steps=6, batch_size="auto", save_every=2, keep_checkpoints="all", wait=False
    )
    run.wait()
    assert run.state is RunState.FINISHED and run.spec.batch_size == 8
    assert run.choices["batch_size"].startswith("batch_size='auto' chose 8")
    meta = json.loads((run.run_dir / "run.json").read_text())
    assert (
        meta["spec"]["batch_size"] == 8 and meta["batch_size_choice"] == run.choices["batch_size"]
    )
    assert session.training_summary()["batch_size"] == 8

    fork = run.fork(step=2, lr=1e-3)
    fork.wait()
    assert fork.spec.batch_size == 8 and fork.state is RunState.FINISHED
    assert fork.choices["batch_size"] == run.choices["batch_size"]  # the parent's choice holds
    fork_meta = json.loads((fork.run_dir / "run.json").read_text())
    assert fork_meta["batch_size_choice"] == run.choices["batch_size"]

    again = wb.Session(tmp_path / "s2", verbose=False)
    resumed = again.resume(run.run_dir)
    resumed.wait()
    assert resumed.spec.batch_size == 8
    assert resumed.choices["batch_size"] == run.choices["batch_size"]
    # It took no step here: its packing is what the run's steps decided, from run.json.
    assert resumed.choices["packing"] == run.choices["packing"]
    assert resumed.monitor().choices() == run.monitor().choices()


# -- bfloat16 autocast on a bfloat16 base ------------------------------------------------------
def _lora_matmul_dtypes(model) -> list:
    """Records the dtype each LoRA ``A`` matmul gives out: the dtype the adapter computes in
    (peft casts its input to the weights' float32; autocast then runs the matmul in bf16)."""
    seen = []
    for name, module in model.named_modules():
        if name.endswith("lora_A.default"):
            module.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    return seen


def _loop_on(model_dir, dtype):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    spec = TrainSpec(max_steps=3, batch_size=4, lora=NO_DROPOUT, lr=5e-3, warmup=0)
    model = wrap_model(base, spec)
    rows = [[1, *range(5 + k, 25 + k)] for k in range(12)]
    examples = Examples.from_rows(rows, [[-100, *r[1:]] for r in rows])
    return TrainLoop(model, 0, examples, examples, spec, total_steps=3)


def test_a_bf16_base_trains_its_adapter_under_bf16_autocast_with_float32_weights(tiny_model_dir):
    from workbench.train.precision import compute_dtype

    half = _loop_on(tiny_model_dir, torch.bfloat16)
    full = _loop_on(tiny_model_dir, torch.float32)
    assert compute_dtype(half.model) == torch.bfloat16
    seen_half, seen_full = _lora_matmul_dtypes(half.model), _lora_matmul_dtypes(full.model)
    half_losses = [half.train_step().loss for _ in range(3)]
    full_losses = [full.train_step().loss for _ in range(3)]
    assert set(seen_half) == {torch.bfloat16}  # the adapter's matmuls ran in bf16
    assert set(seen_full) == {torch.float32}  # a float32 base is left alone
    # The trained weights and AdamW's moments stay float32 (updates below bf16's resolution).
    trained = [p for p in half.model.parameters() if p.requires_grad]
    assert {p.dtype for p in trained} == {torch.float32}
    moments = [s["exp_avg"].dtype for s in half.optimizer.state.values()]
    assert set(moments) == {torch.float32}
    # Same curve within bf16 noise, and it learns.
    assert half_losses == pytest.approx(full_losses, rel=3e-2)
    assert half_losses[-1] < half_losses[0]
    assert half.evaluate() == pytest.approx(full.evaluate(), rel=3e-2)


def test_the_compute_dtype_of_a_4bit_base_is_its_declared_compute_dtype(tiny_model_dir):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from workbench.train.precision import compute_dtype, training_precision

    assert compute_dtype(fresh(tiny_model_dir, quantization="4bit").model) == torch.float32
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, quantization_config=config)
    assert compute_dtype(model) == torch.bfloat16
    with training_precision(model):
        assert torch.is_autocast_enabled("cpu")


def test_a_blocking_run_prints_the_batch_size_it_chose_first(tmp_path, tiny_model_dir, capsys):
    run = toy_run(tiny_model_dir, tmp_path / "run", TrainSpec(max_steps=2, batch_size="auto"))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == run.choices["batch_size"] and run.spec.batch_size == 8
    assert any(line.startswith("step 2/2") for line in lines[1:])


def test_a_launched_auto_batch_trains_the_one_process_curve_of_that_batch(tmp_path, tiny_model_dir):
    from launch_helpers import assert_same_curve, curve, session

    settings = dict(max_steps=4, lora=NO_DROPOUT, eval_every=2, lr=5e-3)
    one = session(tmp_path / "one", tiny_model_dir).train(batch_size=8, wait=False, **settings)
    one.wait()
    launched = session(tmp_path / "two", tiny_model_dir).train(
        batch_size="auto", processes=2, wait=False, **settings
    )
    monitor = launched.monitor()  # open while the ranks start
    launched.wait()
    assert launched.state is RunState.FINISHED and launched.spec.batch_size == 8
    assert launched.choices["batch_size"].startswith("batch_size='auto' chose 8")
    assert_same_curve(curve(launched), curve(one))
    # Rank 0 decided packing (a launched run pads) and recorded it; the open monitor read it.
    pads = "not packed: a launched run (launch=) trains on padded batches"
    assert launched.choices["packing"] == pads
    assert monitor.choices()["packing"] == (False, pads)
    monitor.refresh()
    assert "<b>packing off</b>: a launched run (launch=) trains on padded batches" in (
        monitor.choices_html.value
    )


# -- host syncs -----------------------------------------------------------------------------
class _HostReads(torch.overrides.TorchFunctionMode):
    """Records each tensor-to-Python read (a host sync on a GPU) made by the workbench's code."""

    READS = frozenset(
        {
            torch.Tensor.item,
            torch.Tensor.__float__,
            torch.Tensor.__int__,
            torch.Tensor.__bool__,
            torch.Tensor.tolist,
            torch.Tensor.numpy,
            torch.Tensor.cpu,
        }
    )

    def __init__(self):
        super().__init__()
        self.callers: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.READS:
            import sys

            caller = sys._getframe(1)
            if "/workbench/" in caller.f_code.co_filename:
                self.callers.append(caller.f_code.co_name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("packing", [False, True])
def test_a_training_step_reads_the_device_once_for_its_loss_and_gradient_norm(
    tiny_model_dir, packing
):
    spec = TrainSpec(max_steps=4, batch_size=2, grad_accum=3, packing=packing, lora=NO_DROPOUT)
    model = wrap_model(fresh(tiny_model_dir).model, spec)
    loop = TrainLoop(model, 0, _toy_examples(), None, spec, total_steps=4)
    loop.train_step()  # the first step decides packing
    with _HostReads() as reads:
        record = loop.train_step()
    # _counts sums each batch's `lengths`, which stay on the host (_to_device never moves
    # them); every other read would stall a GPU in the middle of the step.
    assert [name for name in reads.callers if name != "_counts"] == ["_host_floats"]
    assert loop.packing.on is packing
    # The one transfer still yields the step's loss and norm, checked before the update.
    assert record.loss > 0 and record.grad_norm > 0


def test_a_nan_loss_is_refused_before_the_update_with_one_sync(tiny_model_dir):
    from workbench.errors import TrainingError

    spec = TrainSpec(max_steps=4, batch_size=2, lora=NO_DROPOUT)
    model = wrap_model(fresh(tiny_model_dir).model, spec)
    loop = TrainLoop(model, 0, _toy_examples(), None, spec, total_steps=4)
    loop.train_step()
    before = [p.detach().clone() for p in loop.params]
    plain = loop.loss_sum

    def nan_loss(model, batch, fast):
        loss_sum, count = plain(model, batch, fast)
        return loss_sum * float("nan"), count

    loop.loss_sum = nan_loss
    with pytest.raises(TrainingError, match="loss became nan at step 2"):
        loop.train_step()
    assert loop.step == 1
    assert all(torch.equal(p, b) for p, b in zip(loop.params, before, strict=True))


@pytest.mark.parametrize(("epochs", "rows", "steps"), [(0.14, 200, 7), (1.1, 200, 55)])
def test_epochs_take_the_steps_their_product_says_not_one_more(
    tmp_path, tiny_model_dir, epochs, rows, steps
):
    # Found by QA: 0.14 * 50 micro-batches is 7.000000000000001 in floats, and its ceiling
    # trained an eighth step, stretching the schedule into rows past the fraction asked for.
    import workbench as wb

    assert epochs * (rows // 4) > steps  # the float product, just above a whole number
    spec = TrainSpec(epochs=epochs, batch_size=4)
    assert spec.total_steps(rows) == steps
    if rows * epochs > 100:
        return  # the plan alone: a real run of 55 steps is left to the one below
    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir))
    s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(rows)], validation=None)
    run = s.train(epochs=epochs, batch_size=4, wait=True)
    assert (run.status.step, run.status.total_steps) == (steps, steps)
    seen = [r for r in run.history if r.kind == "train"]
    assert len(seen) == steps
