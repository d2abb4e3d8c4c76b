"""The training worker: one thread that runs a :class:`Run`'s steps and publishes what it does.

A :class:`Worker` is made for each start of a run (the first start, and each ``resume()``
after ``stop()``); it is the run's identity token. It asks its :class:`~workbench.train.Run`
what to do between steps (:meth:`Run._next_action`, which blocks on the run's one condition
variable while paused: no polling), and it publishes only through the run, which drops
anything a worker sends once it is no longer the current one. Its last act is to publish
the terminal state, so ``run.wait()`` returning means the worker is done with the model.

While paused the model is in eval mode and the torch RNG state is saved; leaving the pause
restores both, so generating with ``run.model`` while paused leaves the rest of the run
identical to an uninterrupted one.

Examples:
    >>> from workbench.train.worker import checkpoint_note
    >>> checkpoint_note(None)
    'No complete checkpoint is left to resume the run from.'
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.errors import SpecError, WorkbenchError
from workbench.train import store
from workbench.train.checkpoint import (
    best_checkpoint,
    checkpoint_step,
    latest_checkpoint,
    load_weights_into,
    rng_state,
    save_checkpoint,
)
from workbench.train.guards import CollapseCheck, TrainingError
from workbench.train.prepare import add_neftune
from workbench.train.records import LogRecord
from workbench.train.status import RunState

if TYPE_CHECKING:
    from workbench.train.run import Run

__all__ = ["Worker", "checkpoint_note", "recovery_note", "runs_training"]

logger = logging.getLogger(__name__)


def checkpoint_note(checkpoint: Path | None) -> str:
    """The sentence a failed run's message ends with: what is left to resume from.

    Examples:
        >>> print(checkpoint_note(Path("runs/a/checkpoints/step-00000010")))
        The last complete checkpoint, step-00000010, is kept: Session.resume(...) goes on from it.
    """
    if checkpoint is None:  # none written, or none left (deleted with the run folder)
        return "No complete checkpoint is left to resume the run from."
    return (
        f"The last complete checkpoint, {checkpoint.name}, is kept: Session.resume(...) "
        "goes on from it."
    )


def recovery_note(run_dir: Path, went_bad_at: int) -> str:
    """What a collapsed or diverged run can go back to: resuming the newest checkpoint would
    go on from weights saved after the loss went bad, at the rate that broke them.

    Examples:
        >>> print(recovery_note(Path("/nonexistent-run"), 7)[:64])
        No checkpoint from before the loss went bad (at step 7) is kept:
    """
    good = latest_checkpoint(run_dir, before=went_bad_at)
    if good is None:
        return (
            f"No checkpoint from before the loss went bad (at step {went_bad_at}) is kept: "
            "train again with a lower lr."
        )
    step = checkpoint_step(good)
    return (
        f"The last checkpoint from before the loss went bad (at step {went_bad_at}) is "
        f"{good.name}: run.fork(step={step}, lr=...) goes on from it at a lower rate "
        "(Session.resume would go on from a later, broken one)."
    )


_TRAINING: weakref.WeakSet = weakref.WeakSet()  # runs whose worker trains (or is paused)


_EXIT_STOP_SECONDS = 120


@atexit.register
def _stop_runs_at_exit() -> None:
    """A process ending under a training thread (a script's last line after
    ``train(wait=False)``, a kernel shut down) stops each run as ``run.stop()`` does,
    saving its step: the thread died mid-step, the process aborted ("terminate called
    without an active exception") and the folder kept no checkpoint."""
    runs = runs_training()
    for run in runs:  # all asked first, then waited for together
        with contextlib.suppress(Exception):  # a closed stderr must not cancel the stop
            print(f"stopping {run.run_dir}: the process is ending", file=sys.stderr)
        with contextlib.suppress(Exception):
            run.stop()
    deadline = time.monotonic() + _EXIT_STOP_SECONDS  # a step that hangs must not hang exit
    for run in runs:
        with contextlib.suppress(Exception):
            run.wait(timeout=max(0.0, deadline - time.monotonic()))


# A forked child inherits the parent's runs but not their threads: it must not stop them.
if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
    os.register_at_fork(after_in_child=_TRAINING.clear)


def runs_training() -> list[Any]:
    """The runs of this process whose worker is training now, or paused between steps.

    Examples:
        >>> runs_training()
        []
    """
    return list(_TRAINING)


class Worker:
    """Runs the steps of one start of a run on its own thread.

    Args:
        run: The run handle it serves and publishes through.

    Examples:
        :meth:`Run.start` makes one and runs its :meth:`main` on a new thread. Once the run
        has ended, a new worker serves :meth:`Run.evaluate_now` and :meth:`Run.save_now` on
        the caller's thread:

        >>> import shutil
        >>> from workbench import Session
        >>> from workbench.models.tiny import build_tiny_model
        >>> shutil.rmtree("/tmp/wb-doc-worker-class", ignore_errors=True)
        >>> s = Session("/tmp/wb-doc-worker-class", verbose=False)
        >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-worker-tiny")))
        >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
        >>> run = s.train(max_steps=2, wait=False)
        >>> run.wait().state
        <RunState.FINISHED: 'finished'>
        >>> worker = Worker(run)
        >>> worker.paused, worker.evaluate(), worker.save().name
        (False, False, 'step-00000002')
    """

    def __init__(self, run: Run) -> None:
        self.run, self.loop, self.spec = run, run.loop, run.spec
        self.paused = False
        self._saved_rng: Any = None
        self._noise: Any = None  # NEFTune's hook while this worker trains
        self.stop_message = ""
        self.collapse = CollapseCheck(_vocab_size(run.model))
        # None: wait while paused until asked; a launched run's ranks ask every few tenths
        # of a second instead, so that all of them hear the same answer (``hold``).
        self.hold_timeout: float | None = None
        self.generate_options: dict[str, Any] = {}  # more ``generate`` keywords for probes

    # -- the thread -----------------------------------------------------------------------
    def main(self) -> None:
        """The thread's body: train, then publish the terminal state (last).

        It is not called directly: :meth:`Run.start` runs it on a new thread, as
        ``threading.Thread(target=worker.main, daemon=True).start()``, and ``run.wait()``
        returns once it has published the terminal state (see :class:`Run`'s examples).
        """
        try:
            self._train()
        except WorkbenchError as err:
            self._fail(err)
        except OSError as err:  # e.g. the run folder was deleted while it trained
            self._fail(
                TrainingError(
                    f"cannot write to the run folder {self.run.run_dir} ({err}). The model in "
                    "memory is intact: generate, evaluate and export still work."
                )
            )
        except Exception as err:  # any bug must end the run visibly, not kill the thread
            logger.exception("training run %s failed", self.run.run_dir)
            self._fail(TrainingError(f"training failed: {type(err).__name__}: {err}"))

    def _noise_off(self) -> None:
        _TRAINING.discard(self.run)
        if self._noise is not None:
            self._noise.remove()
            self._noise = None

    def _fail(self, err: WorkbenchError, went_bad_at: int | None = None) -> None:
        self.run.model.train(False)
        self._noise_off()
        if isinstance(err, TrainingError):
            run_dir = self.run.run_dir
            note = (
                checkpoint_note(latest_checkpoint(run_dir))
                if went_bad_at is None
                else recovery_note(run_dir, went_bad_at)
            )
            err = type(err)(f"{err} {note}")
        self.run._end(self, RunState.FAILED, error=str(err), message="failed", err=err)

    def _train(self) -> None:
        run, loop = self.run, self.loop
        # NEFTune's noise is on only while this worker trains: left on after the run, any
        # train-mode forward (find_lr on the tuned model) got noise it did not ask for.
        if self.spec.neftune_alpha and self._noise is None:
            self._noise = add_neftune(run.model, self.spec.neftune_alpha)
        _TRAINING.add(run)
        if run.probes and not run.probe_base:
            self._base_probes()
        while loop.step < loop.total_steps:
            if not self._between_steps():
                break
            self._check_folder()
            record = loop.train_step()
            run._log(self, record)
            self._publish_layer_norms()
            if self._collapsed(record):
                return
            if loop.step % run.eval_every == 0 and self.evaluate():
                self.stop_message = run.early.message()
                break
            if loop.step % run.save_every == 0 and run._saved_step != loop.step:
                self.save()
        self._finish()

    def _finish(self) -> None:
        run, loop = self.run, self.loop
        ended_early = bool(self.stop_message) or run._stop_requested(self)
        if not ended_early and run._eval_step != loop.step:
            self.evaluate()
        if run._saved_step != loop.step:
            self.save()
        run.model.train(False)
        self._noise_off()
        run._rng_at_end = rng_state()
        restored = self.restore_best()
        if ended_early:
            message = self.stop_message or "stopped by the user"
            run._end(self, RunState.STOPPED, message=" ".join(filter(None, [message, restored])))
        else:
            message = " ".join(filter(None, [self.collapse.warning, restored]))
            run._end(self, RunState.FINISHED, message=message)

    def restore_best(self) -> str:
        """With ``early_stopping``, end on the weights of the lowest eval loss (as Hugging
        Face's ``load_best_model_at_end``); say so, or ``""`` when the last step's are best.

        The last step's weights stay in its checkpoint, which ``resume`` continues from.
        """
        best_step = self.run.early.best_step
        if not self.spec.early_stopping or best_step < 0 or best_step == self.loop.step:
            return ""
        best = best_checkpoint(self.run.run_dir)
        if best is None or checkpoint_step(best) != best_step:
            return (
                f"The checkpoint of step {best_step}, where the eval loss was lowest, is gone: "
                f"the model holds step {self.loop.step}'s weights."
            )
        load_weights_into(best, self.run.model)
        self.run._weights_step = checkpoint_step(best)
        return (
            f"The model holds the weights of step {checkpoint_step(best)}, where the eval loss "
            f"was lowest; step {self.loop.step}'s are in its checkpoint."
        )

    def _check_folder(self) -> None:
        """A run whose folder was deleted must not go on writing a headless copy of it."""
        if not (self.run.run_dir / store.RUN_FILE).is_file():
            raise FileNotFoundError(f"{self.run.run_dir / store.RUN_FILE} is gone")

    # -- between steps: requests and pauses -----------------------------------------------
    def _between_steps(self) -> bool:
        """Serve requests and hold while paused; ``False`` when the run should end."""
        while True:
            action = self._next_action()
            if action == "eval" and self.evaluate():
                self.stop_message = self.run.early.message()
            elif action == "save":
                self.save()
            elif action == "pause":
                self._enter_pause()
            if action in ("go", "step", "stop") or self.stop_message:
                going = action in ("go", "step") and not self.stop_message
                if self.paused:
                    self._leave_pause(publish=going)
                return going

    def _next_action(self) -> str:
        """The run's next request for this worker (see :meth:`Run._next_action`)."""
        return self.run._next_action(self, self.hold_timeout)

    def _enter_pause(self) -> None:
        import torch

        self.run.model.train(False)  # generation while paused must not apply dropout
        self._saved_rng = torch.get_rng_state()
        self.paused = True
        self.run._set_state(self, RunState.PAUSED)

    def _leave_pause(self, publish: bool = True) -> None:
        import torch

        torch.set_rng_state(self._saved_rng)  # sampling while paused must not change the run
        self.run.model.train(True)
        self.paused = False
        if publish:
            self.run._set_state(self, RunState.RUNNING)

    # -- evaluation, probes, checkpoints ---------------------------------------------------
    def evaluate(self) -> bool:
        """Evaluate and run the probes; ``True`` when early stopping says stop.

        Examples:
            >>> import shutil
            >>> from workbench import Session
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-worker-evaluate", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-worker-evaluate", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-worker-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
            >>> run = s.train(max_steps=2, wait=False)
            >>> run.wait().state
            <RunState.FINISHED: 'finished'>
            >>> Worker(run).evaluate()  # True only when early stopping says stop
            False
        """
        import torch

        run, loop = self.run, self.loop
        # The same weights evaluated again ("Evaluate now" at an evaluated step, or of the
        # best step's weights an ended run holds) say nothing new: early stopping counts
        # each step's evaluation once.
        step, restored = run.weights_step, run._weights_step is not None
        repeated = run._eval_step == step or restored
        saved_rng = torch.get_rng_state()
        was_training = run.model.training
        try:
            eval_loss = loop.evaluate()
            if eval_loss is not None:
                run._log(
                    self,
                    LogRecord(
                        kind="eval",
                        step=step,
                        epoch=self._epoch_at(step),
                        eval_loss=eval_loss,
                        elapsed=loop.elapsed,
                    ),
                )
            if run.probes:
                self._probe_step()
        finally:
            torch.set_rng_state(saved_rng)
            run.model.train(was_training)
        if not restored:
            run._eval_step = loop.step
        if eval_loss is None or repeated:
            return False
        stop = run.early.update(eval_loss, step=loop.step)
        if self.spec.early_stopping and run.early.best_step == loop.step:
            self.save()  # the run ends on the best weights: they need a checkpoint
        return stop

    def save(self) -> Path:
        """Write a checkpoint of the run as it is now.

        Examples:
            >>> import shutil
            >>> from workbench import Session
            >>> from workbench.models.tiny import build_tiny_model
            >>> shutil.rmtree("/tmp/wb-doc-worker-save", ignore_errors=True)
            >>> s = Session("/tmp/wb-doc-worker-save", verbose=False)
            >>> _ = s.load_model(str(build_tiny_model("/tmp/wb-doc-worker-tiny")))
            >>> _ = s.load_data([{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)])
            >>> run = s.train(max_steps=2, wait=False)
            >>> run.wait().state
            <RunState.FINISHED: 'finished'>
            >>> Worker(run).save().name
            'step-00000002'
        """
        if not (self.run.run_dir / store.RUN_FILE).is_file():
            # save_now() on a run whose folder was deleted made a checkpoints folder alone,
            # with no run.json: nothing could resume it, and it said nothing.
            msg = (
                f"{self.run.run_dir} was deleted: there is no run folder to save a checkpoint "
                "in. export(...) saves the model as it is now."
            )
            raise SpecError(msg)
        if self.run._weights_step is not None:  # the best step's weights: saved already
            path = best_checkpoint(self.run.run_dir)
            if path is None:
                msg = (
                    f"the model holds the weights of step {self.run._weights_step} (the lowest "
                    "eval loss, put back by early stopping), and its checkpoint is gone: "
                    "export(...) saves them."
                )
                raise TrainingError(msg)
            self.run._checkpoint_saved(self, path)
            return path
        return self._write_checkpoint()

    def _epoch_at(self, step: int) -> float:
        """The epoch at ``step``: now, or for an earlier step as its training record says."""
        if step == self.loop.step:
            return round(self.loop.epoch, 4)
        return next((r.epoch for r in self.run.history if r.step == step), 0.0)

    def _write_checkpoint(self, **gathered: Any) -> Path:
        """Write the checkpoint; ``gathered`` (``weights=``, ``optimizer_state=``) replaces
        what the model and optimizer here hold (a sharded rank gathers the whole first)."""
        run = self.run
        path = save_checkpoint(
            run.run_dir,
            run.model,
            self.loop.optimizer,
            self.loop.scheduler,
            run.checkpoint_state(),
            self.spec.keep_checkpoints,
            **gathered,
        )
        run._saved_step = self.loop.step
        run._checkpoint_saved(self, path)
        return path

    def _generate(self) -> list[str]:
        from workbench.models.generation import generate_text

        self.run.model.train(False)
        return generate_text(
            self.run.model,
            self.run.tokenizer,
            self.run.probe_ids or self.run.probes,
            max_new_tokens=self.spec.probe_max_new_tokens,
            stop_strings=self.run.probe_stops or None,
            **self.generate_options,
        )

    def _base_probes(self) -> None:
        import torch

        model = self.run.model
        saved_rng = torch.get_rng_state()
        disable = getattr(model, "disable_adapter", contextlib.nullcontext)
        try:
            with disable():
                outputs = self._generate()
        finally:
            torch.set_rng_state(saved_rng)
            model.train(True)
        self.run._publish_probes(self, {"step": self.loop.step, "base": True, "outputs": outputs})

    def _probe_step(self) -> None:
        row = {"step": self.loop.step, "base": False, "outputs": self._generate()}
        self.run._publish_probes(self, row)

    def _publish_layer_norms(self) -> None:
        from workbench.train.norms import group_norms

        run = self.run
        grads, run._grad_norms = run._grad_norms, None
        if grads is None or run._norm_groups is None:
            return
        record = {
            "step": self.loop.step,
            "layers": list(run._norm_groups),
            "weight": group_norms(run._norm_groups, "weight"),
            "grad": grads,
        }
        run._publish_layer_norms(self, record)

    # -- collapse ---------------------------------------------------------------------------
    def _collapsed(self, record: LogRecord) -> bool:
        """Fail the run when its output no longer depends on the input (see CollapseCheck)."""
        verdict = self.collapse.update(record.loss, self._output_is_constant)
        if verdict == "warn":
            self.run._log(
                self,
                LogRecord(
                    kind="warning",
                    step=record.step,
                    epoch=record.epoch,
                    message=self.collapse.warning,
                ),
            )
        if verdict not in ("collapsed", "diverged"):
            return False
        uniform = self.collapse.uniform_loss
        if verdict == "collapsed":
            what = (
                f"collapsed at step {record.step}: the loss sits at ln(vocabulary) = "
                f"{uniform:.3f} and the model gives the same output for every input, so it "
                "can only generate noise or nothing"
            )
        else:
            start = self.collapse.start_loss
            what = (
                f"diverged at step {record.step}: the loss rose from {start:.3f} at the "
                f"start to {record.loss:.3f}, worse than guessing every token "
                f"(ln(vocabulary) = {uniform:.3f}), and stayed there"
            )
        msg = (
            f"the run {what}. lr={self.spec.lr:g} is probably far too high for this method: "
            "try lr=2e-4 for LoRA/QLoRA, 2e-5 for full fine-tuning, and keep max_grad_norm "
            "set."
        )
        self._fail(TrainingError(msg), went_bad_at=self._went_bad_at())
        return True

    def _went_bad_at(self) -> int:
        """The first step of the stretch the run ends on whose losses are no better than
        guessing every token (at or above ln(vocabulary)): the weights saved from then on
        are the broken ones (a collapsed run sits at it, a diverged one above)."""
        floor = 0.99 * self.collapse.uniform_loss
        records = [r for r in self.run.history if r.kind == "train" and r.loss is not None]
        first = records[-1].step if records else self.loop.step
        for record in reversed(records):
            if record.loss < floor:
                break
            first = record.step
        return first

    def _output_is_constant(self) -> bool:
        """One forward pass on two training examples: is every position's prediction equal?"""
        import torch

        from workbench.train.batches import collate

        loop, model = self.loop, self.run.model
        rows = list(range(min(2, len(loop.train))))
        batch = loop._to_device(collate(loop.train, rows, loop.pad_id))
        was_training = model.training
        model.train(False)
        try:
            with torch.no_grad():
                logits = model(input_ids=batch["input_ids"]).logits.float()
        finally:
            model.train(was_training)
        logp = torch.log_softmax(logits, dim=-1).flatten(0, 1)
        return bool((logp - logp[:1]).abs().max() < 1e-3)


def _vocab_size(model: Any) -> int:
    embeddings = model.get_output_embeddings()
    if embeddings is not None and hasattr(embeddings, "weight"):
        return int(embeddings.weight.shape[0])
    return int(model.config.vocab_size)
