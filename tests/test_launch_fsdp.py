"""Launched runs with ``fsdp=True``: the ranks shard the model (FSDP2) and still follow the
one-process run, probe like it, and write checkpoints that either kind resumes.

Real processes on CPU (gloo) with the tiny model, as in ``tests/test_launch.py``.
"""

from __future__ import annotations

import json

import pytest
import torch
from launch_helpers import assert_same_curve as _assert_same_curve
from launch_helpers import curve as _curve
from launch_helpers import session as _session
from launch_helpers import trained

import workbench as wb
from workbench.train import store
from workbench.train.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    load_trained_weights,
    newest_valid_checkpoint,
)
from workbench.train.status import RunState

# dropout 0: dropout masks are drawn per process (see tests/test_launch.py). A small
# max_grad_norm keeps the clipping at work, so the curve checks that the norm is global.
SETTINGS = {"batch_size": 4, "lr": 1e-3, "max_grad_norm": 0.5, "lora": wb.LoRA(r=8, dropout=0.0)}
PROBES = ["What is 3 plus 3?", "What is 7 plus 7?"]
STEPS = 12
SAVE_EVERY = 4


def _assert_close(a, b, where: str, atol: float = 1e-5) -> None:
    """Nested dicts/lists of tensors and plain values are equal (tensors, floats to ``atol``)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape, where
        assert torch.allclose(a.float(), b.float(), atol=atol), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _assert_close(a[key], b[key], f"{where}.{key}", atol)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_close(x, y, f"{where}[{k}]", atol)
    elif isinstance(a, float):
        assert abs(a - b) <= atol, (where, a, b)
    else:
        assert a == b, (where, a, b)


@pytest.fixture(scope="module")
def one_process(tiny_model_dir, tmp_path_factory):
    """The reference: the run in this process."""
    s = _session(tmp_path_factory.mktemp("one") / "s", tiny_model_dir)
    run = s.train(max_steps=STEPS, save_every=SAVE_EVERY, probes=PROBES, wait=True, **SETTINGS)
    return s, run


@pytest.fixture(scope="module")
def sharded(tiny_model_dir, tmp_path_factory):
    """The same run on two processes that shard the model."""
    s = _session(tmp_path_factory.mktemp("fsdp") / "s", tiny_model_dir)
    run = s.train(
        max_steps=STEPS,
        save_every=SAVE_EVERY,
        probes=PROBES,
        processes=2,
        fsdp=True,
        wait=True,
        **SETTINGS,
    )
    return s, run


def test_sharded_ranks_follow_the_one_process_run(one_process, sharded):
    ref_session, ref = one_process
    s, run = sharded

    assert run.state is RunState.FINISHED, run.status.error
    _assert_same_curve(_curve(run), _curve(ref))
    norms = [(r.step, r.grad_norm) for r in run.history if r.kind == "train"]
    ref_norms = [(r.step, r.grad_norm) for r in ref.history if r.kind == "train"]
    assert all(n > SETTINGS["max_grad_norm"] for _, n in ref_norms)  # clipping was at work
    for (step, a), (_, b) in zip(norms, ref_norms, strict=True):
        assert abs(a - b) < 1e-4 * b, (step, a, b)  # the norm over every rank's shards
    # The notebook's model holds the ranks' final weights.
    mine, theirs = trained(s.model), trained(ref_session.model)
    assert mine.keys() == theirs.keys() and mine
    for name in mine:
        assert torch.allclose(mine[name], theirs[name], atol=1e-5), name
    # Every rank generated the probes (each forward gathers from both); rank 0 wrote them once.
    assert run.probe_base == ref.probe_base and len(run.probe_base) == len(PROBES)
    assert run.probe_history == ref.probe_history and len(run.probe_history) >= 2
    on_disk = store.read_jsonl(run.run_dir / store.PROBES)
    assert on_disk == store.read_jsonl(ref.run_dir / store.PROBES)
    assert s.generate(PROBES[0], max_new_tokens=6) == ref_session.generate(
        PROBES[0], max_new_tokens=6
    )
    status = json.loads((run.run_dir / "status.json").read_text())
    assert (status["state"], status["step"]) == ("finished", STEPS)
    for k in (0, 1):
        log = (run.run_dir / "ranks" / f"rank-{k}.log").read_text()
        # The tiny model has 2 decoder layers: 3 units with the root.
        assert f"rank {k}: model sharded in 3 units (FSDP2) over 2 ranks on cpu" in log
        assert log.strip().splitlines()[-1] == f"rank {k}: finished at step {STEPS}"


def test_sharded_checkpoints_are_one_process_checkpoints(one_process, sharded, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from workbench.train.loop import TrainLoop
    from workbench.train.prepare import wrap_model
    from workbench.train.spec import TrainSpec

    _, ref = one_process
    _, run = sharded
    names = [p.name for p in list_checkpoints(run.run_dir)]
    assert names == [p.name for p in list_checkpoints(ref.run_dir)]
    assert names == [f"step-{STEPS - SAVE_EVERY:08d}", f"step-{STEPS:08d}"]
    for name in names:
        mine, theirs = run.run_dir / "checkpoints" / name, ref.run_dir / "checkpoints" / name
        assert sorted(p.name for p in mine.iterdir()) == sorted(p.name for p in theirs.iterdir())
        assert sorted(p.name for p in (mine / "adapter").iterdir()) == sorted(
            p.name for p in (theirs / "adapter").iterdir()
        )
        _assert_close(load_trained_weights(mine), load_trained_weights(theirs), name)
        for file in ("optimizer.pt", "scheduler.pt"):
            _assert_close(
                torch.load(mine / file, weights_only=True),
                torch.load(theirs / file, weights_only=True),
                f"{name}/{file}",
            )
        from safetensors.torch import load_file

        adapter = "adapter/adapter_model.safetensors"
        _assert_close(load_file(mine / adapter), load_file(theirs / adapter), adapter)
        state = json.loads((mine / "state.json").read_text())
        want = json.loads((theirs / "state.json").read_text())
        state.pop("elapsed"), want.pop("elapsed")
        _assert_close(state, want, f"{name}/state.json")  # early_best: an eval loss

    # The plain one-process loader takes the FSDP run's newest checkpoint as it is.
    checkpoint, skipped = newest_valid_checkpoint(run.run_dir)
    assert checkpoint.name == f"step-{STEPS:08d}" and not skipped
    spec = TrainSpec.from_dict(store.read_meta(run.run_dir)["spec"])
    model = wrap_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), spec)
    train = store.load_examples(run.run_dir, "train")
    loop = TrainLoop(model, 0, train, None, spec, STEPS)
    state = load_checkpoint(checkpoint, model, loop.optimizer, loop.scheduler)
    assert state["step"] == STEPS
    saved = load_trained_weights(checkpoint)
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert torch.equal(param.detach(), saved[name]), name
    assert loop.optimizer.state_dict()["state"].keys() == set(range(len(saved)))


def test_a_sharded_run_stopped_midway_finishes_in_one_process(tiny_model_dir, tmp_path):
    # Long enough that the stop lands before the end (a tiny step takes milliseconds).
    steps = 300
    settings = {**SETTINGS, "probes": PROBES, "probe_max_new_tokens": 8}
    ref = _session(tmp_path / "ref", tiny_model_dir).train(max_steps=steps, wait=True, **settings)
    s = _session(tmp_path / "s", tiny_model_dir)
    run = s.train(max_steps=steps, save_every=4, processes=2, fsdp=True, wait=False, **settings)
    run.wait(step=4, timeout=120)
    run.stop()
    first = run.wait(timeout=120)
    assert first.state is RunState.STOPPED and first.step < steps, first.error
    assert "model sharded in 3 units" in (run.run_dir / "ranks" / "rank-1.log").read_text()
    assert newest_valid_checkpoint(run.run_dir)[0].name == f"step-{first.step:08d}"
    later = wb.Session(tmp_path / "s", verbose=False)
    last = later.resume(run.run_dir, wait=True)
    assert last.state is RunState.FINISHED
    _assert_same_curve(_curve(last), _curve(ref))
    assert (last.probe_base, last.probe_history) == (ref.probe_base, ref.probe_history)


def test_a_one_process_checkpoint_resumes_sharded(tiny_model_dir, tmp_path):
    steps = 40
    # With probes: the base model's answers are already written, and every rank must know
    # it (each joins in generating), or one rank would generate alone and hang the others.
    settings = {**SETTINGS, "probes": PROBES, "probe_max_new_tokens": 8}
    ref = _session(tmp_path / "ref", tiny_model_dir).train(max_steps=steps, wait=True, **settings)
    s = _session(tmp_path / "s", tiny_model_dir)
    run = s.train(max_steps=steps, save_every=4, wait=False, **settings)
    run.wait(step=4)
    run.stop()
    first = run.wait()
    assert first.state is RunState.STOPPED and first.step < steps
    launched = s.resume(run.run_dir, processes=2, fsdp=True, wait=True)
    assert launched.state is RunState.FINISHED, launched.status.error
    assert "model sharded in 3 units" in (run.run_dir / "ranks" / "rank-1.log").read_text()
    _assert_same_curve(_curve(launched), _curve(ref))
    assert (launched.probe_base, launched.probe_history) == (ref.probe_base, ref.probe_history)
    assert json.loads((run.run_dir / "run.json").read_text())["launch"]["fsdp"] is True
