"""Shared by the launched-run tests: the toy data, a session on it, and curve comparisons."""

from __future__ import annotations

from pathlib import Path

import torch

import workbench as wb

ROWS = [
    {"question": f"What is {i} plus {i}?", "answer": f"{i} plus {i} is {2 * i}."} for i in range(40)
]


def session(folder: Path, model: Path, rows: list[dict] = ROWS) -> wb.Session:
    """A quiet Session on ``model`` with ``rows`` loaded."""
    s = wb.Session(folder, verbose=False)
    s.load_model(str(model))
    s.load_data(rows)
    return s


def curve(run) -> list[tuple[str, int, float]]:
    """(kind, step, loss) of every train and eval record."""
    return [
        (r.kind, r.step, r.loss if r.kind == "train" else r.eval_loss)
        for r in run.history
        if r.kind in ("train", "eval")
    ]


def assert_same_curve(got, want, tol=1e-5):
    """Same records at the same steps, losses within ``tol``."""
    assert [(k, s) for k, s, _ in got] == [(k, s) for k, s, _ in want]
    for (kind, step, a), (_, _, b) in zip(got, want, strict=True):
        assert abs(a - b) < tol, (kind, step, a, b)


def trained(model) -> dict[str, torch.Tensor]:
    """Copies of the LoRA tensors, by name."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
