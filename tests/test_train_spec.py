"""TrainSpec and LoRA: defaults, validation and round trips (no model needed)."""

from __future__ import annotations

import pytest

from workbench.errors import SpecError
from workbench.train import LoRA, TrainSpec


def test_defaults_follow_the_checklist():
    spec = TrainSpec()
    assert (spec.method, spec.lr, spec.epochs, spec.lora.r, spec.lora.alpha) == (
        "lora",
        2e-4,
        2,
        16,
        32,
    )
    assert spec.lora.target == "all-linear"
    assert spec.early_stopping is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 0}, r"lr=0 must be a number > 0"),
        ({"lr": -1e-4}, r"lr=-0.0001 must be a number > 0"),
        ({"method": "prefix"}, r"method='prefix' is not one of \('lora', 'qlora', 'full'\)"),
        ({"scheduler": "step"}, r"scheduler='step' is not one of"),
        (  # transformers refused it only once the run folder was made and the model wrapped
            {"scheduler": "polynomial", "lr": 1e-8},
            r"lr=1e-08 with scheduler='polynomial' must be above 1e-07",
        ),
        ({"batch_size": 0}, r"batch_size=0 must be an integer > 0"),
        ({"grad_accum": 1.5}, r"grad_accum=1.5 must be an integer > 0"),
        ({"warmup": 1.5}, r"warmup=1.5 must be an int \(steps\) or a float fraction"),
        ({"layer_lr_decay": 1.5}, r"layer_lr_decay=1.5 must be in \(0, 1\]"),
        ({"early_stopping": 0}, r"early_stopping=0 must be an integer > 0"),
        ({"max_steps": 0, "epochs": -1}, r"epochs=-1 must be a number > 0; max_steps=0"),
    ],
)
def test_bad_settings_raise_one_clear_error(kwargs, message):
    with pytest.raises(SpecError, match=message):
        TrainSpec(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"r": 0}, r"^r=0 must be an integer > 0\.$"),  # no second error about its alpha
        ({"r": 8.5}, r"^r=8\.5 must be an integer > 0\.$"),
        ({"r": 8, "alpha": -1}, r"^alpha=-1 must be a number > 0\.$"),
        ({"dropout": 1.0}, r"dropout=1.0 must be in \[0, 1\)"),
        ({"target": []}, r"target=\(\) must be 'all-linear' or a non-empty list"),
    ],
)
def test_bad_lora_settings(kwargs, message):
    with pytest.raises(SpecError, match=message):
        LoRA(**kwargs)


def test_lora_maps_to_peft_one_to_one():
    config = LoRA(r=4, alpha=8, dropout=0.1, target=["q_proj", "v_proj"], use_dora=True).to_peft()
    assert (config.r, config.lora_alpha, config.lora_dropout, config.use_dora) == (4, 8, 0.1, True)
    assert config.target_modules == {"q_proj", "v_proj"}


def test_spec_round_trips_through_a_dict():
    spec = TrainSpec(max_steps=7, lr=1e-3, lora=LoRA(r=4, target=["q_proj"]), warmup=2)
    assert TrainSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(SpecError, match=r"unknown TrainSpec fields \['learning_rate'\]"):
        TrainSpec.from_dict({"learning_rate": 1e-3})


def test_step_counts():
    assert TrainSpec(epochs=2, batch_size=8).total_steps(64) == 16
    assert TrainSpec(epochs=1, batch_size=8, grad_accum=3).total_steps(64) == 3
    assert TrainSpec(max_steps=5).total_steps(1000) == 5
    assert TrainSpec(warmup=0.1).warmup_steps(30) == 3
    assert TrainSpec(eval_every=7, save_every=3).every(100) == (7, 3)
