"""Training a 4-bit (QLoRA) base on CPU: inference on the model must not change its training."""

from __future__ import annotations

import json

import workbench as wb

ROWS = [
    {"question": f"What is {i} plus {i}?", "answer": f"{i} plus {i} is {2 * i}."} for i in range(40)
]
SETTINGS = {"batch_size": 4, "lr": 1e-3, "lora": wb.LoRA(r=8, dropout=0.0)}


def test_evaluating_a_4bit_model_does_not_change_its_training(tiny_model_dir, tmp_path):
    # bitsandbytes repacks 4-bit weights for its CPU inference kernel on an eval-mode forward
    # (an evaluation, a probe, a generate() before training), and training through that
    # layout lost the gradients to earlier layers; the launched runs' comparison found it.
    def losses(folder, eval_every, generate_first):
        s = wb.Session(folder, verbose=False)
        s.load_model(str(tiny_model_dir), quantization="4bit")
        s.load_data(ROWS)
        if generate_first:
            s.generate("What is 1 plus 1?", max_new_tokens=3)
        run = s.train(max_steps=6, eval_every=eval_every, wait=True, **SETTINGS)
        return [(r.loss, r.grad_norm) for r in run.history if r.kind == "train"]

    plain = losses(tmp_path / "a", 100, False)
    for case in ((1, False), (100, True)):
        other = losses(tmp_path / f"b{case}", *case)
        for (a, ga), (b, gb) in zip(plain, other, strict=True):
            assert abs(a - b) < 1e-5 and abs(ga - gb) < 1e-4, (case, plain, other)


def _tiny_falcon(tmp_path):
    from transformers import FalconConfig

    from workbench.models.tiny import build_model_from_config

    config = FalconConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, initializer_range=0.2
    )
    return build_model_from_config(tmp_path / "falcon", config)


def test_a_family_bitsandbytes_cannot_quantize_is_refused_not_trained_as_qlora(
    tmp_path, tiny_model_dir, capfd
):
    """Falcon's layers subclass torch.nn.Linear, which transformers' bitsandbytes conversion
    skips: a "4bit" Falcon kept every weight in float32, reported quantization 4bit and
    trained as QLoRA. Now the load says why it cannot, keeps the session's model, and the
    same model trains as LoRA."""
    import pytest

    folder = _tiny_falcon(tmp_path)
    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(tiny_model_dir))
    for quantization in ("4bit", "8bit"):
        with pytest.raises(wb.ModelLoadError, match=rf"quantization='{quantization}' quantized "
                           r"none of the linear layers .*8 FalconLinear layers"):  # fmt: skip
            s.load_model(str(folder), quantization=quantization)
    assert "eetq" not in capfd.readouterr().err  # transformers' line that names another library
    assert s.model_info().model_type == "llama"  # the session's model is kept
    s.load_model(str(folder))
    s.load_data([{"question": f"say {i}", "answer": f"{i}"} for i in range(8)], validation=None)
    run = s.train(max_steps=2, batch_size=4, wait=True)
    assert run.state.value == "finished" and s.model_info().quantization is None


def test_a_bfloat16_4bit_base_trains_in_bfloat16_as_peft_upcast_does(tiny_model_dir):
    """The 16-bit weights bitsandbytes leaves (embeddings, norms, output layer) stay bfloat16
    on a bfloat16 base (peft's prepare_model_for_kbit_training cast them to float32: on an
    H200 that cost 2 GiB of a 7.5 GiB run and a cast around every layer), while the adapter
    trains in float32; the losses are those of peft's upcast recipe within bfloat16 noise."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from workbench.train import LoRA, TrainSpec
    from workbench.train.batches import Examples
    from workbench.train.loop import TrainLoop
    from workbench.train.prepare import wrap_model

    nf4 = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
    )
    spec = TrainSpec(max_steps=6, batch_size=4, lr=5e-3, lora=LoRA(r=8, dropout=0.0), warmup=0)
    ids = [[1] + [(7 * (i % 2) + k) % 200 + 3 for k in range(12)] for i in range(24)]
    examples = Examples.from_rows(ids, [[-100] * 6 + row[6:] for row in ids])

    def run(upcast_first):
        base = AutoModelForCausalLM.from_pretrained(
            str(tiny_model_dir), quantization_config=nf4, dtype=torch.bfloat16
        )
        if upcast_first:  # the recipe wrap_model followed before
            base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
        model = wrap_model(base, spec)
        loop = TrainLoop(model, 0, examples, None, spec, total_steps=6)
        losses = [loop.train_step().loss for _ in range(6)]
        return model, losses

    model, losses = run(upcast_first=False)
    lm = model.get_base_model()
    assert lm.get_input_embeddings().weight.dtype == torch.bfloat16
    assert lm.model.norm.weight.dtype == torch.bfloat16
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and all(p.dtype == torch.float32 for p in trained)
    assert losses[-1] < losses[0] - 0.1, losses
    upcast_model, upcast = run(upcast_first=True)
    assert upcast_model.get_base_model().model.norm.weight.dtype == torch.float32
    for ours, theirs in zip(losses, upcast, strict=True):
        assert abs(ours - theirs) < 0.02 * theirs, (losses, upcast)


def test_a_4bit_base_checkpoints_by_default_on_cuda_and_trains_as_without(
    tiny_model_dir, tmp_path, monkeypatch
):
    """gradient_checkpointing="auto" (the default) turns checkpointing on for a 4-bit base on
    CUDA (forced on CPU here by ``CHECKPOINTS_QUANTIZED_ON``), as peft's QLoRA recipe does,
    and says so in the run's choices, its run.json, a fork's and the monitor; the losses and
    gradient norms are those of the same run without it (the recomputed blocks draw the same
    dropout masks). A 16-bit base trains without it, and so does any base on CPU as it is."""
    from workbench.train import core
    from workbench.train.run import RunState
    from workbench.widgets.training_monitor import TrainingMonitor

    def trained(folder, quantization="4bit", **changes):
        s = wb.Session(folder, verbose=False)
        s.load_model(str(tiny_model_dir), quantization=quantization)
        s.load_data(ROWS)
        settings = {**SETTINGS, "lora": wb.LoRA(r=8), "save_every": 2, **changes}
        return s.train(max_steps=4, wait=True, **settings)

    on_cpu = trained(tmp_path / "cpu")
    assert on_cpu.spec.gradient_checkpointing is False
    assert "gradient_checkpointing" not in on_cpu.choices

    monkeypatch.setattr(core, "CHECKPOINTS_QUANTIZED_ON", {"cpu"})  # as on CUDA
    auto = trained(tmp_path / "auto")
    why = auto.choices["gradient_checkpointing"]
    assert auto.spec.gradient_checkpointing is True and auto.model.is_activation_checkpointing
    assert why.startswith("gradient_checkpointing='auto': on for a 4-bit base")
    meta = json.loads((auto.run_dir / "run.json").read_text())
    assert meta["spec"]["gradient_checkpointing"] is True
    assert meta["gradient_checkpointing_choice"] == why
    shown = TrainingMonitor.from_folder(auto.run_dir).choices_text()
    assert "gradient checkpointing on (auto): for a 4-bit base, as in peft's" in shown

    off = trained(tmp_path / "off", gradient_checkpointing=False)
    assert off.spec.gradient_checkpointing is False and not off.model.is_activation_checkpointing
    assert "gradient_checkpointing" not in off.choices
    steps = [(a, b) for a, b in zip(auto.history, off.history, strict=True) if a.kind == "train"]
    assert len(steps) == 4
    for a, b in steps:
        assert abs(a.loss - b.loss) < 1e-5 and abs(a.grad_norm - b.grad_norm) < 1e-4
    assert [a.loss for a, _ in steps] == [a.loss for a in on_cpu.history if a.kind == "train"]

    fork = auto.fork(step=2, lr=5e-4)
    assert fork.wait().state is RunState.FINISHED
    assert fork.spec.gradient_checkpointing is True
    assert fork.choices["gradient_checkpointing"] == why
    fork_meta = json.loads((fork.run_dir / "run.json").read_text())
    assert fork_meta["gradient_checkpointing_choice"] == why

    plain = trained(tmp_path / "plain", quantization=None)
    assert plain.spec.gradient_checkpointing is False
    assert "gradient_checkpointing" not in plain.choices
    plain_meta = json.loads((plain.run_dir / "run.json").read_text())
    assert "gradient_checkpointing_choice" not in plain_meta


def test_a_run_launched_on_gpus_decides_checkpointing_for_their_device(tiny_model_dir):
    """The notebook's copy may stay on CPU (as the README advises for processes=N) while the
    launched processes train on GPUs: "auto" is decided for the processes' device, as the
    batch size is."""
    from workbench.models.loading import load_model
    from workbench.train.launch.spec import LaunchSpec
    from workbench.train.prepare import choose_checkpointing
    from workbench.train.spec import TrainSpec
    from workbench.train.start import _launch_device

    model = load_model(str(tiny_model_dir), quantization="4bit", on_event=lambda m: None).model
    assert (_launch_device(None), _launch_device(LaunchSpec(cpu=True))) == (None, "cpu")
    on_gpus = _launch_device(LaunchSpec(processes=2, cpu=False))
    assert on_gpus == "cuda"
    spec, why = choose_checkpointing(model, TrainSpec(method="qlora"), on_gpus)
    assert spec.gradient_checkpointing is True and why.startswith("gradient_checkpointing='auto'")
    here, why = choose_checkpointing(model, TrainSpec(method="qlora"))  # where the weights are
    assert here.gradient_checkpointing is False and why is None


def test_mamba_trains_and_exports_in_4bit_and_8bit(tmp_path):
    """transformers' Mamba computes `dt_proj.weight @ x` itself: quantized, that weight was
    bitsandbytes' packed bytes and every forward failed (a shape error in 4 bits, "expected
    scalar type Float but found Char" in 8), after a load that said nothing. The layer is
    kept in float; the rest is quantized, trains, generates and exports."""
    import math
    import subprocess
    import sys
    import warnings

    from transformers import MambaConfig

    from workbench.models.tiny import build_model_from_config

    config = MambaConfig(hidden_size=64, num_hidden_layers=2, state_size=16)
    folder = build_model_from_config(tmp_path / "mamba", config)
    for quantization in ("4bit", "8bit"):
        s = wb.Session(tmp_path / quantization, verbose=False)
        with warnings.catch_warnings():
            warnings.simplefilter("error", wb.WorkbenchWarning)  # no "left unquantized" note
            s.load_model(str(folder), quantization=quantization)
        mixer = s.model.backbone.layers[0].mixer
        assert [type(mixer.in_proj).__name__, type(mixer.dt_proj).__name__] == [
            {"4bit": "Linear4bit", "8bit": "Linear8bitLt"}[quantization],
            "Linear",
        ]
        s.load_data(ROWS)
        run = s.train(max_steps=3, eval_every=2, wait=True, **SETTINGS)
        assert run.state.value == "finished", run.status.error
        losses = [r.loss for r in run.history if r.kind == "train"]
        assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
        assert isinstance(s.generate("What is 1 plus 1?", max_new_tokens=3), str)
    s = wb.Session(tmp_path / "export", verbose=False)
    s.load_model(str(folder))
    s.load_data(ROWS)
    report = s.quantize("4bit")
    check = (
        "import sys, torch; from transformers import AutoModelForCausalLM as M; "
        "m = M.from_pretrained(sys.argv[1]); m(torch.tensor([[5, 6, 7]])); "
        "print(type(m.backbone.layers[0].mixer.dt_proj).__name__)"
    )
    plain = subprocess.run(
        [sys.executable, "-c", check, str(report.folder)], capture_output=True, text=True
    )
    assert plain.returncode == 0 and plain.stdout.split()[-1] == "Linear", plain.stderr[-2000:]


def test_a_family_whose_8bit_forward_fails_on_cpu_is_refused_at_load(tmp_path, tiny_model_dir):
    """bitsandbytes' CPU 8-bit layer fails in eval mode on DeepSeek-V3's 4-D `kv_b_proj`
    input: the load said nothing, then training failed at its first evaluation and generate
    failed, with a bare shape error. Now the load says so and keeps the session's model."""
    import pytest
    from transformers import DeepseekV3Config

    from workbench.models.tiny import build_model_from_config

    config = DeepseekV3Config(
        hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1, n_routed_experts=4,
        num_experts_per_tok=2, n_group=1, topk_group=1, first_k_dense_replace=1,
        kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16,
    )  # fmt: skip
    folder = build_model_from_config(tmp_path / "deepseek", config)
    s = wb.Session(tmp_path / "run", verbose=False)
    s.load_model(str(tiny_model_dir))
    with pytest.raises(wb.ModelLoadError, match=r"quantization='8bit' loaded .*deepseek.*, but "
                       r"its forward fails in bitsandbytes' 8-bit layers on CPU \(.*\); load it "
                       r"with quantization='4bit'"):  # fmt: skip
        s.load_model(str(folder), quantization="8bit")
    assert s.model_info().architecture == "LlamaForCausalLM"  # the model it had is kept
    s.load_model(str(folder), quantization="4bit")  # the way out it names
    s.load_data(ROWS)
    run = s.train(max_steps=2, eval_every=1, wait=True, **SETTINGS)
    assert run.state.value == "finished" and isinstance(s.generate("Hi", max_new_tokens=2), str)
