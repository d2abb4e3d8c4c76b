"""The training loop, one optimizer step at a time (nanoGPT-style, no hidden callbacks).

:class:`TrainLoop` owns the optimizer, the scheduler and the data position. ``train_step()``
runs ``grad_accum`` micro-batches and one optimizer update; ``evaluate()`` one pass over the
validation data. Everything that decides *when* (pause, eval, save, stop) lives in
:mod:`workbench.train.run`.

Examples:
    >>> from transformers import AutoModelForCausalLM
    >>> from workbench.models.tiny import build_tiny_model
    >>> from workbench.train.batches import Examples
    >>> from workbench.train.prepare import wrap_model
    >>> folder = build_tiny_model("/tmp/wb-doc-loop-tiny")
    >>> spec = TrainSpec(max_steps=4, batch_size=2)
    >>> model = wrap_model(AutoModelForCausalLM.from_pretrained(folder), spec)
    >>> train = Examples.from_rows([[1, 5, 6, 7]] * 8, [[-100, 5, 6, 7]] * 8)
    >>> loop = TrainLoop(model, 0, train, train, spec, total_steps=4)
    >>> record = loop.train_step()
    >>> record.kind, record.step
    ('train', 1)
    >>> loop.evaluate() > 0
    True
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from workbench.train.batches import Examples, collate, index_trained
from workbench.train.core import BatchPlan
from workbench.train.guards import (
    check_grad_norm,
    check_loss,
    is_out_of_memory,
    out_of_memory_error,
)
from workbench.train.loss import token_loss_sum
from workbench.train.packing import Packing, choose_packing, pack
from workbench.train.precision import training_precision
from workbench.train.prepare import optimizer_groups
from workbench.train.records import LogRecord, memory_bytes
from workbench.train.spec import TrainSpec

__all__ = ["TrainLoop", "compiled_loss_sum", "make_adamw"]


class TrainLoop:
    """Optimizer, scheduler and data position of one run.

    Args:
        model: The wrapped model (:func:`~workbench.train.prepare.wrap_model`).
        pad_id: Token id used for right padding.
        train: Training examples (each with at least one trained token).
        validation: Validation examples, or ``None``.
        spec: The run's settings.
        total_steps: Optimizer steps planned.
        by_step: Rows drawn a step at a time (see :func:`~workbench.train.core.epoch_batches`);
            ``False`` for a run started before that order (its ``run.json`` has no
            ``batch_order``), so it resumes on the rows it would have trained.

    Attributes:
        on_gradients: Called with no arguments after backward and before clipping, while
            the step's gradients are complete and not yet clipped (``None``: nothing is called).
        packing: Whether the micro-batches are packed into padding-free rows, and why
            (:class:`~workbench.train.packing.Packing`, from ``spec.packing``), decided at the
            first step; ``None`` before it, and always in a launched run's rank loop
            (:class:`~workbench.train.launch.loop.RankLoop` builds its own padded
            micro-batches, so a launched run never packs).

    A step syncs with the device once: the micro-batches' loss sums and the gradient norm
    come to the host in one transfer, and both are checked (NaN/inf, exploding norm) before
    the update; where the loss trains is computed on the host
    (:func:`~workbench.train.batches.index_trained`).

    Examples:
        >>> from transformers import AutoModelForCausalLM
        >>> from workbench.models.tiny import build_tiny_model
        >>> from workbench.train.batches import Examples
        >>> from workbench.train.prepare import wrap_model
        >>> folder = build_tiny_model("/tmp/wb-doc-loop-tiny")
        >>> spec = TrainSpec(max_steps=4, batch_size=2)
        >>> model = wrap_model(AutoModelForCausalLM.from_pretrained(folder), spec)
        >>> train = Examples.from_rows([[1, 5, 6, 7]] * 8, [[-100, 5, 6, 7]] * 8)
        >>> loop = TrainLoop(model, 0, train, None, spec, total_steps=4)
        >>> loop.train_step().step
        1
    """

    def __init__(
        self,
        model: Any,
        pad_id: int,
        train: Examples,
        validation: Examples | None,
        spec: TrainSpec,
        total_steps: int,
        by_step: bool = True,
    ) -> None:
        from transformers import get_scheduler

        self.model, self.pad_id, self.spec = model, pad_id, spec
        self.train, self.validation, self.total_steps = train, validation, total_steps
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.device = next(model.parameters()).device
        self.optimizer = make_adamw(optimizer_groups(model, spec), spec.lr)
        self.scheduler = get_scheduler(
            spec.scheduler,
            self.optimizer,
            num_warmup_steps=spec.warmup_steps(total_steps),
            num_training_steps=total_steps,
        )
        self.plan = BatchPlan(train.lengths, spec.batch_size, spec.seed, spec.grad_accum, by_step)
        self.micro_per_epoch = self.plan.per_epoch
        max_steps = total_steps if spec.max_steps is not None else None
        self.total_micro = self.plan.total_micro(spec.grad_accum, spec.epochs, max_steps)
        self.step, self.micro, self.elapsed = 0, 0, 0.0
        self.on_gradients: Callable[[], None] | None = None
        self.packing: Packing | None = None
        self.loss_sum = compiled_loss_sum() if spec.compile else token_loss_sum

    def let_go(self) -> None:
        """Drop the model, optimizer, scheduler and data (the run has ended and its session
        moved on); the step, epoch and time stay readable.

        Examples:
            >>> from transformers import AutoModelForCausalLM
            >>> from workbench.models.tiny import build_tiny_model
            >>> from workbench.train.batches import Examples
            >>> from workbench.train.prepare import wrap_model
            >>> folder = build_tiny_model("/tmp/wb-doc-loop-tiny")
            >>> spec = TrainSpec(max_steps=4, batch_size=2)
            >>> model = wrap_model(AutoModelForCausalLM.from_pretrained(folder), spec)
            >>> train = Examples.from_rows([[1, 5, 6, 7]] * 8, [[-100, 5, 6, 7]] * 8)
            >>> loop = TrainLoop(model, 0, train, None, spec, total_steps=4)
            >>> _ = loop.train_step()
            >>> loop.let_go()
            >>> loop.model, loop.optimizer, loop.step
            (None, None, 1)
        """
        self.model = self.optimizer = self.scheduler = None
        self.train = self.validation = None
        self.params = []
        self.on_gradients = None

    # -- data position --------------------------------------------------------------------
    @property
    def epoch(self) -> float:
        """Fractional epochs done.

        Examples:
            >>> from transformers import AutoModelForCausalLM
            >>> from workbench.models.tiny import build_tiny_model
            >>> from workbench.train.batches import Examples
            >>> from workbench.train.prepare import wrap_model
            >>> folder = build_tiny_model("/tmp/wb-doc-loop-tiny")
            >>> spec = TrainSpec(max_steps=4, batch_size=2)
            >>> model = wrap_model(AutoModelForCausalLM.from_pretrained(folder), spec)
            >>> train = Examples.from_rows([[1, 5, 6, 7]] * 8, [[-100, 5, 6, 7]] * 8)
            >>> loop = TrainLoop(model, 0, train, None, spec, total_steps=4)
            >>> loop.micro_per_epoch  # 8 examples in batches of 2
            4
            >>> loop.train_step().step, loop.epoch
            (1, 0.25)
        """
        return self.micro / self.micro_per_epoch

    def batch_at(self, micro: int) -> list[int]:
        """Example indices of global micro-batch ``micro`` (deterministic from the seed).

        Examples:
            >>> from transformers import AutoModelForCausalLM
            >>> from workbench.models.tiny import build_tiny_model
            >>> from workbench.train.batches import Examples
            >>> from workbench.train.prepare import wrap_model
            >>> folder = build_tiny_model("/tmp/wb-doc-loop-tiny")
            >>> spec = TrainSpec(max_steps=4, batch_size=2)
            >>> model = wrap_model(AutoModelForCausalLM.from_pretrained(folder), spec)
            >>> train = Examples.from_rows([[1, 5, 6, 7]] * 8, [[-100, 5, 6, 7]] * 8)
            >>> loop = TrainLoop(model, 0, train, None, spec, total_steps=4)
            >>> len(loop.batch_at(0)), loop.batch_at(0) == loop.batch_at(0)
            (2, True)
            >>> sorted(i for micro in range(4) for i in loop.batch_at(micro))  # one epoch
            [0, 1, 2, 3, 4, 5, 6, 7]
        """
        return self.plan.at(micro)

    def state(self) -> dict[str, Any]:
        """Position to store in a checkpoint.

        Examples:
            >>> from transformers import AutoModelForCausalLM
            >>> from workbench.models.tiny import build_tiny_model
            >>> from workbench.train.batches import Examples
            >>> from workbench.train.prepare import wrap_model
            >>> folder = build_tiny_model("/tmp/wb-doc-loop-tiny")
            >>> spec = TrainSpec(max_steps=4, batch_size=2)
            >>> model = wrap_model(AutoModelForCausalLM.from_pretrained(folder), spec)
            >>> train = Examples.from_rows([[1, 5, 6, 7]] * 8, [[-100, 5, 6, 7]] * 8)
            >>> loop = TrainLoop(model, 0, train, None, spec, total_steps=4)
            >>> record = loop.train_step()
            >>> state = loop.state()
            >>> sorted(state), state["step"], state["micro"]
            (['elapsed', 'micro', 'step'], 1, 1)
        """
        return {"step": self.step, "micro": self.micro, "elapsed": self.elapsed}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's :meth:`state`.

        Examples:
            >>> from transformers import AutoModelForCausalLM
            >>> from workbench.models.tiny import build_tiny_model
            >>> from workbench.train.batches import Examples
            >>> from workbench.train.prepare import wrap_model
            >>> folder = build_tiny_model("/tmp/wb-doc-loop-tiny")
            >>> spec = TrainSpec(max_steps=4, batch_size=2)
            >>> model = wrap_model(AutoModelForCausalLM.from_pretrained(folder), spec)
            >>> train = Examples.from_rows([[1, 5, 6, 7]] * 8, [[-100, 5, 6, 7]] * 8)
            >>> loop = TrainLoop(model, 0, train, None, spec, total_steps=4)
            >>> loop.restore({"step": 3, "micro": 3, "elapsed": 1.5})
            >>> loop.step, loop.epoch, loop.elapsed
            (3, 0.75, 1.5)
        """
        self.step, self.micro = int(state["step"]), int(state["micro"])
        self.elapsed = float(state.get("elapsed", 0.0))

    # -- one step -------------------------------------------------------------------------
    def _micro_batches(self) -> list[dict[str, Any]]:
        if self.packing is None:
            self.packing = choose_packing(
                self.spec.packing, self.model, self.device, self.spec.neftune_alpha
            )
        count = min(self.spec.grad_accum, max(1, self.total_micro - self.micro))
        batches = []
        for k in range(count):
            rows = self.batch_at(self.micro + k)
            batch = (
                pack(self.train, rows)
                if self.packing.on
                else collate(self.train, rows, self.pad_id)
            )
            batches.append(self._to_device(index_trained(batch)))
        return batches

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        for key in ("input_ids", "labels", "position_ids", "trained_index"):
            if key in batch:
                batch[key] = batch[key].to(self.device)
        return batch

    def _forward_backward(self, batches: list[dict[str, Any]], trained: int) -> list[Any]:
        """Backward over every micro-batch; their loss sums, still on the device."""
        sums = []
        for batch in batches:
            with training_precision(self.model):
                loss_sum, _ = self.loss_sum(self.model, batch, self.spec.fast_loss)
            (loss_sum / trained).backward()
            sums.append(loss_sum.detach())
        return sums

    def _counts(self, batches: list[dict[str, Any]]) -> tuple[int, int]:
        """Trained tokens and all tokens of the step's micro-batches, read on the host.

        ``trained`` comes from :func:`~workbench.train.batches.index_trained` and ``lengths``
        never moves to the device, so no read here waits for it.
        """
        trained = tokens = 0
        for b in batches:
            trained += b["trained"] if "trained" in b else int((b["labels"][:, 1:] != -100).sum())
            tokens += int(b["lengths"].sum())
        return trained, tokens

    def _clip_gradients(self, max_norm: float) -> Any:
        """Clip the gradients to ``max_norm``; their norm before clipping, on the device."""
        import torch

        return torch.nn.utils.clip_grad_norm_(self.params, max_norm)

    def current_lr(self) -> float:
        """Learning rate of the top layer for the next step.

        Examples:
            >>> from transformers import AutoModelForCausalLM
            >>> from workbench.models.tiny import build_tiny_model
            >>> from workbench.train.batches import Examples
            >>> from workbench.train.prepare import wrap_model
            >>> folder = build_tiny_model("/tmp/wb-doc-loop-tiny")
            >>> spec = TrainSpec(max_steps=4, batch_size=2)
            >>> model = wrap_model(AutoModelForCausalLM.from_pretrained(folder), spec)
            >>> train = Examples.from_rows([[1, 5, 6, 7]] * 8, [[-100, 5, 6, 7]] * 8)
            >>> loop = TrainLoop(model, 0, train, None, spec, total_steps=4)
            >>> loop.current_lr()  # the first step is warm-up (TrainSpec.warmup)
            0.0
            >>> record = loop.train_step()
            >>> loop.current_lr() == spec.lr
            True
        """
        return max(group["lr"] for group in self.optimizer.param_groups)

    def train_step(self) -> LogRecord:
        """Run one optimizer step over ``grad_accum`` micro-batches and log it.

        Raises:
            TrainingError: NaN/inf loss or an exploding gradient (the update is not applied).
            OutOfMemoryError: the batch did not fit; the message suggests a smaller one.

        Examples:
            >>> from transformers import AutoModelForCausalLM
            >>> from workbench.models.tiny import build_tiny_model
            >>> from workbench.train.batches import Examples
            >>> from workbench.train.prepare import wrap_model
            >>> folder = build_tiny_model("/tmp/wb-doc-loop-tiny")
            >>> spec = TrainSpec(max_steps=4, batch_size=2)
            >>> model = wrap_model(AutoModelForCausalLM.from_pretrained(folder), spec)
            >>> train = Examples.from_rows([[1, 5, 6, 7]] * 8, [[-100, 5, 6, 7]] * 8)
            >>> loop = TrainLoop(model, 0, train, None, spec, total_steps=4)
            >>> record = loop.train_step()
            >>> record.step, record.epoch, record.loss > 0
            (1, 0.25, True)
        """
        start = time.perf_counter()
        self.model.train()
        batches = self._micro_batches()
        trained, tokens = self._counts(batches)
        self.optimizer.zero_grad(set_to_none=True)
        try:
            sums = self._forward_backward(batches, trained)
        except (RuntimeError, MemoryError) as err:
            if not is_out_of_memory(err):
                raise
            self.optimizer.zero_grad(set_to_none=True)
            width = max(b["input_ids"].numel() for b in batches)
            raise out_of_memory_error(
                err, self.spec.batch_size, self.spec.grad_accum, width
            ) from err
        if self.on_gradients is not None:
            self.on_gradients()
        norm = self._clip_gradients(self.spec.max_grad_norm or math.inf)
        # The step's one host sync: the loss sums and the gradient norm in one transfer.
        # Clipping a NaN step's gradients is harmless: the checks below refuse its update.
        *values, norm = _host_floats([*sums, norm])
        loss = math.fsum(values) / trained
        check_loss(loss, self.step + 1, self.current_lr())
        check_grad_norm(norm, self.step + 1, self.spec.grad_norm_limit)
        lr = self.current_lr()
        self.optimizer.step()
        self.scheduler.step()
        self.step, self.micro = self.step + 1, self.micro + len(batches)
        seconds = time.perf_counter() - start
        self.elapsed += seconds
        return LogRecord(
            kind="train",
            step=self.step,
            epoch=round(self.epoch, 4),
            loss=loss,
            lr=lr,
            grad_norm=norm,
            tokens_per_s=tokens / seconds,
            memory=memory_bytes(self.device),
            elapsed=round(self.elapsed, 3),
        )

    # -- evaluation -----------------------------------------------------------------------
    def evaluate(self) -> float | None:
        """Mean loss over every trained validation token (``None`` without validation data),
        of the first ``spec.eval_rows`` validation rows where it is set.

        Leaves the model in training mode and consumes no random numbers.

        Examples:
            >>> from transformers import AutoModelForCausalLM
            >>> from workbench.models.tiny import build_tiny_model
            >>> from workbench.train.batches import Examples
            >>> from workbench.train.prepare import wrap_model
            >>> folder = build_tiny_model("/tmp/wb-doc-loop-tiny")
            >>> spec = TrainSpec(max_steps=4, batch_size=2)
            >>> model = wrap_model(AutoModelForCausalLM.from_pretrained(folder), spec)
            >>> train = Examples.from_rows([[1, 5, 6, 7]] * 8, [[-100, 5, 6, 7]] * 8)
            >>> loop = TrainLoop(model, 0, train, train, spec, total_steps=4)
            >>> loop.evaluate() > 0, loop.model.training
            (True, True)
        """
        import torch

        if self.validation is None or not len(self.validation):
            return None
        scored = self.validation.lengths[: self.spec.eval_rows]  # None: every row
        order = np.argsort(-scored, kind="stable")
        size = self.spec.batch_size
        total, count = 0.0, 0
        self.model.eval()
        try:
            with torch.no_grad(), training_precision(self.model):
                for start in range(0, len(order), size):
                    batch = self._to_device(
                        collate(self.validation, order[start : start + size].tolist(), self.pad_id)
                    )
                    loss_sum, n = token_loss_sum(self.model, batch, self.spec.fast_loss)
                    total, count = total + float(loss_sum), count + n
        finally:
            self.model.train()
        return total / count if count else None


def make_adamw(groups: list[dict[str, Any]], lr: float) -> Any:
    """AdamW on torch's fused kernel where the parameters' device has one, else its default.

    The fused kernel updates every tensor in one pass (CPU and CUDA in torch >= 2.4): on
    this project's CPU machines an AdamW step over a LoRA adapter's 400 tensors took 4.2 ms
    fused against 14 ms with ``foreach`` and more with torch's CPU default (one tensor at a
    time). The update is the same up to float rounding (tests/test_train_levers.py).

    Examples:
        >>> import torch
        >>> layer = torch.nn.Linear(4, 4)
        >>> make_adamw([{"params": list(layer.parameters())}], 1e-3).defaults["fused"]
        True
    """
    import torch

    try:
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.AdamW(groups, lr=lr)


def compiled_loss_sum() -> Callable[..., tuple[Any, int]]:
    """:func:`~workbench.train.loss.token_loss_sum` under ``torch.compile`` (``spec.compile``).

    Compiled with dynamic shapes, so micro-batches of other widths (and packed rows of other
    lengths) reuse one graph instead of compiling again. Only the training forward and
    backward run compiled: evaluation, probes and ``generate`` run the model as it is, so
    its modules, names and checkpoints are unchanged. The first step pays the compilation
    (25-45 s for a tiny model on CPU); with dropout off the losses equal the eager ones to
    float rounding.

    Examples:
        >>> callable(compiled_loss_sum())
        True
    """
    import torch

    return torch.compile(token_loss_sum, dynamic=True)


def _host_floats(values: list[Any]) -> list[float]:
    """Scalars (tensors on one device, or numbers) as Python floats, in one transfer.

    Each is widened to float64 first, which is exact for float32 and bfloat16 values, so
    the floats equal ``float(value)`` one at a time.

    Examples:
        >>> import torch
        >>> _host_floats([torch.tensor(1.5), torch.tensor(2.0, dtype=torch.bfloat16), 3])
        [1.5, 2.0, 3.0]
    """
    import torch

    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    device = tensors[0].device if tensors else "cpu"
    stacked = torch.stack(
        [torch.as_tensor(v, device=device).reshape(()).to(torch.float64) for v in values]
    )
    return [float(v) for v in stacked.tolist()]
