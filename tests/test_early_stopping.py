"""Early stopping ends a run on the weights of its lowest eval loss, not its last step's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_diagnostics import overfitting_rows

import workbench as wb
from workbench.train import RunState
from workbench.train.checkpoint import list_checkpoints, load_trained_weights

# Four training rows learnt by heart and validation rows about something else: at a high
# lr the eval loss falls for a few steps, then rises while the training loss goes on falling.
TRAIN, VALIDATION = overfitting_rows()
SETTINGS = {"max_steps": 60, "lr": 1e-2, "batch_size": 4, "eval_every": 1, "seed": 7}


def _session(folder, model_dir) -> wb.Session:
    s = wb.Session(folder, verbose=False)
    s.load_model(str(model_dir))
    s.load_data(TRAIN, validation=VALIDATION)
    return s


def _evals(run) -> dict[int, float]:
    found: dict[int, float] = {}
    for record in run.history:
        if record.kind == "eval":
            found.setdefault(record.step, record.eval_loss)
    return found


def _trained(run) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in run.model.named_parameters() if p.requires_grad}


def _same(weights: dict, other: dict) -> bool:
    return set(weights) == set(other) and all(torch.equal(weights[n], other[n]) for n in weights)


def _checkpoint(run, step: int):
    return run.run_dir / "checkpoints" / f"step-{step:08d}"


def test_a_stopped_run_holds_its_best_weights(tmp_path, tiny_model_dir):
    s = _session(tmp_path / "s", tiny_model_dir)
    run = s.train(**SETTINGS, early_stopping=2, wait=True)
    evals = _evals(run)
    best = min(evals, key=evals.get)
    last = run.status.step
    assert run.state is RunState.STOPPED and best < last < 60
    assert run.weights_step == best
    assert run.status.message == (
        f"early stopping: eval loss did not improve for 2 evaluations (best "
        f"{evals[best]:.4g} at step {best}). The model holds the weights of step {best}, "
        f"where the eval loss was lowest; step {last}'s are in its checkpoint."
    )
    # the best step's checkpoint outlived the pruning (keep 2), beside the last step's
    assert {p.name for p in list_checkpoints(run.run_dir)} >= {
        f"step-{best:08d}",
        f"step-{last:08d}",
    }
    held = _trained(run)
    assert _same(held, load_trained_weights(_checkpoint(run, best)))
    assert not _same(held, load_trained_weights(_checkpoint(run, last)))
    advice = [f for f in run.diagnostics if f.kind == "overfitting"]
    for finding in advice:
        assert f"put back the weights of step {best}" in finding.suggestion

    # Evaluate now on the ended run evaluates the weights it holds, at their step.
    run.evaluate_now()
    again = [r for r in run.history if r.kind == "eval"][-1]
    assert again.step == best and again.eval_loss == pytest.approx(evals[best], abs=1e-5)
    # Save now keeps the last step's checkpoint as it was (the best one holds these weights).
    last_weights = load_trained_weights(_checkpoint(run, last))
    run.save_now()
    assert _same(load_trained_weights(_checkpoint(run, last)), last_weights)

    # An export says which step's weights it holds.
    folder = s.export("export/adapter", format="adapter")
    card = (folder / "README.md").read_text()
    assert f'"weights_from_step": {best}' in card and f'"steps_trained": {last}' in card


def test_resuming_a_stopped_run_goes_on_from_its_last_step(tmp_path, tiny_model_dir):
    stopped = _session(tmp_path / "a", tiny_model_dir)
    run = stopped.train(**SETTINGS, early_stopping=2, wait=True)
    last = run.status.step
    assert run.weights_step < last
    # the same run with more patience trains on past that step, from that step's weights
    patient = _session(tmp_path / "b", tiny_model_dir).train(
        **SETTINGS, early_stopping=last + 5, wait=True
    )
    run.resume()
    run.wait(120)
    losses = {r.step: r.loss for r in run.history if r.kind == "train"}
    expected = {r.step: r.loss for r in patient.history if r.kind == "train"}
    assert losses[last + 1] == pytest.approx(expected[last + 1], rel=1e-5)


def test_a_finished_run_ends_on_its_best_weights_too(tmp_path, tiny_model_dir):
    s = _session(tmp_path / "s", tiny_model_dir)
    settings = {**SETTINGS, "max_steps": 12}
    run = s.train(**settings, early_stopping=50, wait=True)
    evals = _evals(run)
    best = min(evals, key=evals.get)
    assert run.state is RunState.FINISHED and best < 12
    assert run.weights_step == best
    assert run.status.message.endswith(
        f"The model holds the weights of step {best}, where the eval loss was lowest; "
        "step 12's are in its checkpoint."
    )
    assert _same(_trained(run), load_trained_weights(_checkpoint(run, best)))
    summary = s.training_summary()
    assert (summary["weights_from_step"], summary["steps_trained"]) == (best, 12)


def test_without_early_stopping_the_run_keeps_its_last_weights(tmp_path, tiny_model_dir):
    s = _session(tmp_path / "s", tiny_model_dir)
    run = s.train(**{**SETTINGS, "max_steps": 12}, wait=True)
    evals = _evals(run)
    assert min(evals, key=evals.get) < 12  # the eval loss rose, and the run kept going
    assert run.weights_step == 12 and "holds the weights" not in run.status.message
    assert _same(_trained(run), load_trained_weights(_checkpoint(run, 12)))
    assert "weights_from_step" not in s.training_summary()
    state = json.loads((_checkpoint(run, 12) / "state.json").read_text())
    assert state["early_best_step"] == -1  # no best checkpoint is kept beyond keep_checkpoints
    assert len(list_checkpoints(run.run_dir)) == 2


def test_a_resume_that_cannot_go_on_says_why_and_leaves_the_folder_free(tmp_path, tiny_model_dir):
    # run.resume() took the folder's lock, then failed to load the last step's weights and
    # kept it: every later resume, here or by a new Session, was refused
    import shutil

    from workbench.train.lock import is_held

    s = _session(tmp_path / "s", tiny_model_dir)
    run = s.train(**SETTINGS, early_stopping=2, wait=True)
    last = run.status.step
    shutil.rmtree(_checkpoint(run, last))
    with pytest.raises(wb.SpecError, match=rf"cannot go on from step {last} here: .* is gone"):
        run.resume()
    assert not is_held(run.run_dir) and run.state is RunState.STOPPED
    again = wb.Session(tmp_path / "s", verbose=False).resume(run.run_dir, wait=True)
    assert again.state is RunState.STOPPED  # went on from the best checkpoint, stopped again


def test_a_fork_judges_its_own_evaluations_and_a_missing_best_is_said(tmp_path, tiny_model_dir):
    # a fork inherited the parent's best step (in the parent's folder, out of its reach) and
    # ended on its worst weights saying "best ... at step 9"
    import shutil

    s = _session(tmp_path / "s", tiny_model_dir)
    run = s.train(**SETTINGS, early_stopping=2, wait=True)
    last = run.status.step
    fork = run.fork(step=last, lr=1e-2, wait=True)
    best = fork.early.best_step
    assert best > last and fork.weights_step == best
    assert f"(best {fork.early.best:.4g} at step {best})" in fork.status.message

    # every checkpoint deleted after step 10 (on the training thread, so at that step): the
    # best step's is gone, and the run ends on its last weights, saying so
    other_session = _session(tmp_path / "t", tiny_model_dir)

    def delete_checkpoints(payload):
        if payload.record.kind == "train" and payload.record.step == 10:
            shutil.rmtree(Path(payload.run) / "checkpoints")

    other_session.on("train_log", delete_checkpoints)
    other = other_session.train(**{**SETTINGS, "max_steps": 12}, early_stopping=50, wait=True)
    best = other.early.best_step
    assert best < 10 and other.weights_step == 12
    assert f"The checkpoint of step {best}, where the eval loss was lowest, is gone" in (
        other.status.message
    )


def test_the_overfitting_advice_names_the_weights_the_model_holds():
    # diagnose() said early stopping "put back the weights of step 2" for a run that failed,
    # was still training, or lost its best checkpoint
    from workbench.diagnostics.rules import overfitting
    from workbench.train.records import LogRecord

    losses, evals = [3.0, 2.0, 1.5, 1.0, 0.5], [3.0, 2.5, 2.6, 2.8, 2.9]
    history = []
    for step, (train, ev) in enumerate(zip(losses, evals, strict=True), 1):
        history += [LogRecord("train", step, step / 5, loss=train),
                    LogRecord("eval", step, step / 5, eval_loss=ev)]  # fmt: skip
    restored = overfitting(history, early_stopping=2, weights_step=2).suggestion
    assert restored.startswith(
        "early_stopping=2 stopped the run and put back the weights of step 2"
    )
    kept = overfitting(history, early_stopping=2, weights_step=5).suggestion
    assert kept.startswith("early_stopping=2 is set, but the model holds step 5's weights, not")
    assert "those of step 2, where the eval loss was lowest" in kept
