"""Known third-party noise is hidden inside workbench calls only; real warnings still show.

The two messages (bitsandbytes' "pip install kernels" log line, transformers'
``is_gradient_checkpointing`` FutureWarning) are each printed once per process at most, so
the real runs happen in fresh Python processes and the test reads their stderr, as a
notebook user would see it.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import warnings

import pytest
from transformers import AutoModelForCausalLM

from workbench._quiet import BNB_LOGGER, quiet_third_party
from workbench.events import EventHub
from workbench.train.core import make_trainable
from workbench.train.spec import LoRA

KERNELS = "Failed to load CPU gemm_4bit_forward from kernels-community"
DEPRECATED = "`is_gradient_checkpointing` is deprecated"
MARK = "=== the user's own code from here"


def python(code: str) -> str:
    """Run ``code`` in a fresh interpreter with Python's default warning filters; its stderr."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def short_session_run(session_dir, model_dir) -> str:
    """Code for a fresh process: a session trains ``model_dir`` two steps on 40 sums."""
    return f"""
        import sys
        import workbench as wb

        s = wb.Session({str(session_dir)!r}, verbose=False)
        s.load_model({str(model_dir)!r})
        s.load_data([{{"question": f"What is {{i}} plus {{i}}?", "answer": str(2 * i)}}
                     for i in range(40)])
        s.train(max_steps=2, batch_size=4, wait=True)
        """


def cpu_logs_kernels_note() -> bool:
    """bitsandbytes logs the note only on a CPU with AVX512-BF16 (this one, and most servers)."""
    from bitsandbytes.functional import has_avx512bf16

    return bool(has_avx512bf16())


def test_a_real_qlora_and_lora_run_print_no_noise_and_real_warnings_still_show(
    tmp_path, tiny_model_dir
):
    err = python(
        f"""
        import logging, sys, warnings
        import workbench as wb
        from workbench.tasks.records import records_to_json

        def loud_metric(prediction, reference):
            warnings.warn("my metric is unsure", UserWarning)
            warnings.warn("some library is changing", FutureWarning)
            logging.getLogger("{BNB_LOGGER}").warning("another bitsandbytes message")
            return 1.0

        s = wb.Session({str(tmp_path / "session")!r}, verbose=False)
        train, test = records_to_json(16, 4)
        s.load_model({str(tiny_model_dir)!r}, quantization="4bit")
        s.load_data(train, validation=test)
        s.train(method="qlora", max_steps=2, batch_size=4, wait=True)
        s.load_model({str(tiny_model_dir)!r})
        s.train(max_steps=2, batch_size=4, lr=0.05, wait=True)
        s.evaluate(metrics=[loud_metric], limit=2, max_new_tokens=2)
        assert "bitsandbytes.backends.cpu.ops" in sys.modules  # imported inside workbench calls
        print({MARK!r}, file=sys.stderr)
        from transformers import AutoModelForCausalLM
        AutoModelForCausalLM.from_pretrained({str(tiny_model_dir)!r}).is_gradient_checkpointing
        """
    )
    workbench_part, user_part = err.split(MARK)
    assert KERNELS not in err
    assert DEPRECATED not in workbench_part
    # The workbench's own warning (an implausible lr) and a user's metric's warnings show...
    assert "lr=0.05 is far above what lora usually trains at" in workbench_part
    assert "UserWarning: my metric is unsure" in workbench_part
    assert "FutureWarning: some library is changing" in workbench_part
    assert "another bitsandbytes message" in workbench_part
    # ... and the same deprecation, read by the user's own code, is not hidden.
    assert f"FutureWarning: {DEPRECATED}" in user_part


def test_the_bitsandbytes_note_still_shows_when_the_user_imports_bitsandbytes():
    # The run above imported bitsandbytes inside workbench calls (and hid the note); a user's
    # own import, with the workbench loaded, is not the workbench's call.
    if not cpu_logs_kernels_note():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes never logs the note here")
    assert KERNELS in python("import workbench, bitsandbytes")


def test_inside_this_process_the_filters_are_scoped_to_workbench_frames(tiny_model_dir, caplog):
    quiet_third_party()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with warnings.catch_warnings(record=True) as caught:  # keeps the filters, records the rest
        make_trainable(model, LoRA(r=4).to_peft())  # peft reads the property, in workbench code
        quiet = [str(w.message) for w in caught]
        _ = model.is_gradient_checkpointing  # the user reads it: shown
        shown = [str(w.message) for w in caught]
    assert not any(DEPRECATED in m for m in quiet), quiet
    assert any(DEPRECATED in m for m in shown), shown

    logger = logging.getLogger(BNB_LOGGER)
    hub = EventHub()
    _ = hub.on("progress", lambda text: logger.warning(text))  # the hub is workbench code
    with caplog.at_level(logging.WARNING, logger=BNB_LOGGER):
        hub.emit("progress", f"{KERNELS}: No module named 'kernels' (inside)")
        hub.emit("progress", "a different bitsandbytes warning (inside)")
        logger.warning("%s: No module named 'kernels' (outside)", KERNELS)
    assert [r.getMessage().rsplit(" ", 1)[-1] for r in caplog.records] == ["(inside)", "(outside)"]
    assert caplog.records[0].getMessage().startswith("a different")


def test_peft_s_own_fused_expert_patterns_are_quiet_inside_workbench_calls(tmp_path):
    from peft import get_peft_model

    from workbench.models.tiny import build_tiny_model

    folder = build_tiny_model(tmp_path / "moe", "qwen3_moe")
    lora = LoRA(r=4, dropout=0.0).to_peft()
    unmatched = "rank_pattern keys did not match any targeted module"
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()  # no filter of ours either: does this peft say it at all?
        warnings.simplefilter("always")
        get_peft_model(AutoModelForCausalLM.from_pretrained(folder), lora)
    if not any(unmatched in str(w.message) for w in caught):
        pytest.skip("this peft (0.22 on) adds no pattern that matches nothing: nothing to hide")
    with warnings.catch_warnings(record=True) as caught:
        quiet_third_party()
        warnings.filterwarnings("always", append=True)  # after ours: show the rest each time
        make_trainable(AutoModelForCausalLM.from_pretrained(folder), lora)
        quiet = [str(w.message) for w in caught]
        get_peft_model(AutoModelForCausalLM.from_pretrained(folder), lora)  # the user's own
        shown = [str(w.message) for w in caught]
    assert not any(unmatched in m for m in quiet), quiet
    assert any(unmatched in m for m in shown), shown


def test_a_gpt2_run_hides_the_conv1d_and_attention_mask_advice_and_a_user_s_peft_call_shows_it(
    tmp_path, tiny_gpt2_dir
):
    # peft's Conv1D note and transformers' attention-mask advice print into every GPT-2 run;
    # the workbench pads on the right, so the mask changes nothing (test_train_inputs.py shows).
    err = python(
        short_session_run(tmp_path / "session", tiny_gpt2_dir)
        + f"""
        print({MARK!r}, file=sys.stderr)
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(tiny_gpt2_dir)!r})
        get_peft_model(model, LoraConfig(r=4, target_modules=["c_attn"]))
        """
    )
    workbench_part, user_part = err.split(MARK)
    assert "fan_in_fan_out" not in workbench_part
    assert "attention_mask" not in workbench_part
    assert "fan_in_fan_out is set to False but the target module is `Conv1D`" in user_part


def test_lfm2_s_cuda_kernel_advice_is_hidden_without_cuda_and_shown_to_the_user(tmp_path):
    # transformers advises installing causal-conv1d (a CUDA-only package) whenever LFM2's
    # short convolutions run; without CUDA nobody can follow it.
    import torch

    import workbench as wb

    folder = wb.build_tiny_model(tmp_path / "lfm2", "lfm2")
    advice = "is falling back to its reference PyTorch implementation"
    err = python(
        short_session_run(tmp_path / "session", folder)
        + """
        s.generate("What is 2 plus 2?", max_new_tokens=4)
        """
    )
    assert (advice in err) == torch.cuda.is_available()
    # the user's own forward pass, in a process of its own (transformers says it once)
    err = python(
        f"""
        import torch
        import workbench
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained({str(folder)!r})
        model(torch.tensor([[1, 2, 3]]))
        """
    )
    assert advice in err


def test_an_8bit_model_s_input_cast_is_quiet_in_workbench_calls_and_shown_to_the_user(
    tmp_path, tiny_model_dir, caplog
):
    # bitsandbytes logged it at every forward pass: about 1,500 lines for one quantize("8bit")
    import torch

    import workbench as wb
    from workbench._quiet import BNB_MATMUL_LOGGER

    s = wb.Session(tmp_path / "s", verbose=False)
    s.load_model(str(tiny_model_dir), quantization="8bit")
    with caplog.at_level(logging.WARNING, logger=BNB_MATMUL_LOGGER):
        s.generate("Hello", max_new_tokens=4)
        inside = [r.getMessage() for r in caplog.records if "MatMul8bitLt" in r.getMessage()]
        with torch.no_grad():
            s.model(torch.tensor([[1, 2, 3]]))  # the user's own call
        outside = [r.getMessage() for r in caplog.records if "MatMul8bitLt" in r.getMessage()]
    assert inside == [] and outside
