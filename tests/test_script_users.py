"""The workbench driven from plain scripts: numpy-typed settings, ``python -W error``, stderr.

A sweep script's values come from ``np.arange``/``np.linspace`` or a DataFrame; a script run
under ``-W error`` (or pytest's ``filterwarnings = error``) turns warnings into exceptions;
a script's stderr is a log file, where ``\\r`` progress bars are noise.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.errors import SpecError
from workbench.evaluation.run import EvalSpec
from workbench.train.spec import LoRA, TrainSpec

ROWS = [{"question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(24)]


def python(code: str, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *options, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture
def session(tmp_path, tiny_model_dir):
    s = wb.Session(tmp_path / "session", verbose=False)
    s.load_model(str(tiny_model_dir))
    return s


def test_a_run_with_numpy_settings_trains_and_its_run_json_holds_plain_numbers(session):
    steps, batch = np.arange(1, 4)[1], np.int64(4)  # a sweep's values: np.int64(2), ...
    session.load_data(ROWS, seed=np.int64(7), validation=np.float32(0.25))
    run = session.train(
        max_steps=steps,
        batch_size=batch,
        lr=np.float32(1e-4),
        lora=LoRA(r=np.int64(8), dropout=np.float32(0.1)),
        wait=True,
    )
    assert run.status.step == 2
    spec = json.loads((run.run_dir / "run.json").read_text())["spec"]
    numbers = [spec["max_steps"], spec["batch_size"], spec["lora"]["r"], spec["lora"]["alpha"]]
    assert numbers == [2, 4, 8, 16] and all(type(n) is int for n in numbers)
    assert (spec["lr"], spec["lora"]["dropout"]) == (1e-4, 0.1)  # as written, not float32's
    text = session.generate("What is 3 plus 3?", max_new_tokens=np.int64(4))
    assert isinstance(text, str)


def test_find_lr_and_fork_take_numpy_settings(session):
    session.load_data(ROWS)
    found = session.find_lr(num_steps=np.int64(10), start_lr=np.float32(1e-5), batch_size=2)
    assert found.num_steps == 10 and type(found.num_steps) is int
    run = session.train(max_steps=4, save_every=2, batch_size=4, wait=True)
    fork = run.fork(step=np.int64(2), lr=np.float32(1e-3), max_length=np.int64(64))
    fork.wait()
    assert fork.status.step == 4
    assert json.loads((fork.run_dir / "run.json").read_text())["spec"]["lr"] == 1e-3


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda: TrainSpec(max_steps=True), "max_steps=True must be an integer > 0"),
        (lambda: TrainSpec(batch_size=np.bool_(True)), "batch_size=np.True_ must be an integer"),
        (lambda: TrainSpec(lr=True), "lr=True must be a number > 0"),
        (lambda: LoRA(r=False), "r=False must be an integer > 0"),
        (lambda: EvalSpec(limit=True), "limit=True must be a positive integer"),
        (lambda: TrainSpec(max_steps=np.float64(2.5)), "max_steps=2.5 must be an integer > 0"),
    ],
)
def test_a_bool_or_a_fraction_is_still_refused_by_name(make, says):
    with pytest.raises(SpecError, match=says.replace("(", r"\(").replace(")", r"\)")):
        make()


def test_a_whole_number_in_float32_keeps_its_exact_value():
    # 16 GiB prints as 1.7179869e+10 in float32; its shortest text is not the number held.
    table = wb.fit_table(seq_len=256, available=np.float32(16 * 2**30), device="cuda")
    assert table.records[0]["available"] == 16 * 2**30


def test_load_data_and_generate_take_numpy_integers_and_still_refuse_bools(session):
    report = session.load_data(ROWS, seed=np.int64(7))
    assert report.train > 0
    with pytest.raises(SpecError, match="seed=True must be an integer >= 0"):
        session.load_data(ROWS, seed=True)
    with pytest.raises(SpecError, match="max_new_tokens=True must be a positive integer"):
        session.generate("Hi", max_new_tokens=True)


def test_set_max_length_takes_a_numpy_integer(session):
    # A cutoff computed with numpy failed inside: "Object of type int64 is not JSON
    # serializable", where load_data(max_length=np.int64(32)) was taken.
    session.load_data(ROWS)
    assert session.set_max_length(np.int64(12)).max_length == 12
    assert type(session.data.spec.max_length) is int


def test_a_seeded_sample_repeats_and_leaves_the_caller_s_random_state_alone(session):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    sample = dict(max_new_tokens=8, do_sample=True, temperature=1.5, seed=5)
    first, second = (session.generate("What is 1 plus 1?", **sample) for _ in range(2))
    assert first == second
    assert torch.equal(torch.random.get_rng_state(), before)
    again = session.generate("What is 1 plus 1?", **{**sample, "seed": np.int64(5)})
    assert again == first


def test_generate_names_only_the_setting_transformers_does_not_use(session):
    with pytest.raises(SpecError) as refused:
        session.generate("Hi", max_new_tokens=2, do_sample=True, temperature=0.7, sed=5)
    assert str(refused.value).startswith("generate refused these settings (sed): ")
    with pytest.raises(SpecError, match=r"seed=2\.5 must be an integer >= 0"):
        session.generate("Hi", max_new_tokens=2, seed=2.5)


def test_a_temperature_samples_and_max_length_is_refused_for_max_new_tokens(session):
    # temperature=1.5 alone stayed greedy and max_length=5 was ignored (81 tokens came
    # back), each with only a transformers log line; the server samples at a temperature.
    prompt, greedy = "What is 1 plus 1?", session.generate("What is 1 plus 1?", max_new_tokens=8)
    hot = {session.generate(prompt, max_new_tokens=8, temperature=1.5, seed=k) for k in range(4)}
    assert len(hot) > 1
    kept_greedy = session.generate(prompt, max_new_tokens=8, temperature=1.5, do_sample=False)
    assert kept_greedy == greedy == session.generate(prompt, max_new_tokens=8, temperature=0)
    with pytest.raises(
        SpecError,
        match=r"max_length=5 counts the prompt's tokens too; give "
        r"the new tokens as max_new_tokens=5\.",
    ):
        session.generate(prompt, max_length=5)


def test_a_script_under_python_w_error_trains(tmp_path, tiny_model_dir):
    # peft's get_peft_model reads transformers' deprecated is_gradient_checkpointing: under
    # -W error that FutureWarning, which the workbench hides, failed every s.train().
    done = python(
        f"""
        import workbench as wb

        s = wb.Session({str(tmp_path / "session")!r}, verbose=False)
        s.load_model({str(tiny_model_dir)!r})
        s.load_data({ROWS!r})
        run = s.train(max_steps=2, batch_size=4, wait=True)
        assert run.status.step == 2, run.status
        """,
        "-W",
        "error",
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_user_s_own_warning_still_meets_w_error(tiny_model_dir):
    done = python(
        f"""
        import workbench as wb
        from transformers import AutoModelForCausalLM

        s = wb.Session(verbose=False)
        s.load_model({str(tiny_model_dir)!r})
        AutoModelForCausalLM.from_pretrained({str(tiny_model_dir)!r}).is_gradient_checkpointing
        """,
        "-W",
        "error",
    )
    assert done.returncode == 1 and "FutureWarning: `is_gradient_checkpointing`" in done.stderr


def test_loading_a_model_draws_no_progress_bar_on_stderr(tmp_path, tiny_model_dir):
    done = python(
        f"""
        from transformers.utils import logging
        import workbench as wb

        wb.Session({str(tmp_path / "session")!r}, verbose=False).load_model(
            {str(tiny_model_dir)!r}
        )
        assert logging.is_progress_bar_enabled()  # the user's own setting, as it was
        """
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Loading weights" not in done.stderr and "\r" not in done.stderr, done.stderr


def test_a_data_row_given_to_generate_is_told_apart_from_a_chat_turn(session):
    # It said messages need chat=True; with chat=True, that each turn needs a role.
    with pytest.raises(SpecError) as refused:
        session.generate({"instruction": "Say the number 3", "output": "3"})
    assert str(refused.value) == (
        "prompt is a dict with the fields 'instruction', 'output', which looks like a data "
        "row, not a chat turn: give the text to complete, e.g. generate(row['instruction']); "
        "s.example(i).prompt is a loaded row's prompt as the model reads it"
    )
    with pytest.raises(SpecError, match=r"need chat=True"):
        session.generate({"role": "user", "content": "Hi"})
