"""The training loop of one rank: the same steps as one process, shared across processes.

:class:`RankLoop` is :class:`~workbench.train.loop.TrainLoop` with three changes, so that a
run on N processes follows the same loss curve as on one (up to float rounding):

- every rank computes the same global micro-batches from the seed (the data order does not
  depend on the process count) and trains on its share, rows ``rank::N``;
- each rank's loss is its token-loss sum over the trained tokens of the *whole* step, times
  N, because DDP averages the gradients over the ranks; a rank left without a row (a
  micro-batch smaller than N) runs one row with weight 0, so every rank joins every reduce;
- the logged loss, the counts and the validation loss are sums over the ranks
  (``accelerator.reduce``), so every rank takes the same decisions (guards, early stopping).

A launched run trains on padded batches (no packing): ``loop.packing`` says so from the
start, and rank 0 records it in ``run.json`` at the first step like a one-process run.

With DDP (the default) the model runs through accelerate's DDP wrapper around a
:class:`LossModule`, so the fast loss (logits only at trained positions) is computed inside
the wrapped forward. With ``sharded`` (``fsdp=True``) the ranks shard the model with FSDP2
(:mod:`~workbench.train.launch.sharded`) and every forward gathers weights from all ranks, so:
the loss takes the full-logits path, which goes through the causal LM's ``__call__`` (the
fast path calls the backbone and the output layer directly, past the root unit's hooks);
each micro-batch's gradients are reduce-scattered into the shards (no full gradient is ever
kept); the gradient norm is the global one over all shards; and evaluation runs the same
number of forward passes on every rank (a rank short of batches runs stand-ins of weight 0).

Examples:
    >>> rank_rows([4, 7, 9], rank=1, world=2)
    [7]
    >>> rank_rows([4], rank=1, world=2)
    []
"""

from __future__ import annotations

import contextlib
from typing import Any

from workbench.train.batches import collate
from workbench.train.launch.sharded import clip_grad_norm, shard_model
from workbench.train.loop import TrainLoop
from workbench.train.loss import token_loss_sum
from workbench.train.packing import Packing
from workbench.train.precision import training_precision

__all__ = ["LossModule", "RankLoop", "rank_rows"]

LAUNCHED_PADS = "not packed: a launched run (launch=) trains on padded batches"


def rank_rows(rows: list[int], rank: int, world: int) -> list[int]:
    """The rows of a global micro-batch that ``rank`` trains on (every ``world``-th).

    Examples:
        >>> rank_rows([0, 1, 2, 3, 4], rank=0, world=2)
        [0, 2, 4]
    """
    return rows[rank::world]


def _module_base() -> type:
    import torch

    return torch.nn.Module


class LossModule(_module_base()):  # type: ignore[misc]
    """``forward(input_ids, labels)`` gives the token-loss sum: the unit DDP wraps.

    Examples:
        >>> from transformers import AutoModelForCausalLM
        >>> from workbench.models.tiny import build_tiny_model
        >>> model = AutoModelForCausalLM.from_pretrained(build_tiny_model("/tmp/wb-doc-rank-tiny"))
        >>> import torch
        >>> ids = torch.tensor([[1, 5, 6, 7]])
        >>> LossModule(model, fast=True)(ids, ids).dim()
        0
    """

    def __init__(self, model: Any, fast: bool, loss_sum: Any = token_loss_sum) -> None:
        super().__init__()
        self.model, self.fast, self.loss_sum = model, fast, loss_sum

    def forward(self, input_ids: Any, labels: Any) -> Any:
        """The sum of the token losses of the batch (a scalar tensor)."""
        return self.loss_sum(self.model, {"input_ids": input_ids, "labels": labels}, self.fast)[0]


class RankLoop(TrainLoop):
    """:class:`TrainLoop` of one rank of a launched run (see the module's docstring).

    Args:
        model: The wrapped model (peft), the same on every rank.
        pad_id, train, validation, spec, total_steps: As for :class:`TrainLoop`.
        accelerator: The ``accelerate.Accelerator`` of this process.
        sharded: Shard ``model`` across the ranks (FSDP2) instead of wrapping it in DDP; it
            may sit on CPU, each rank's shards move to ``accelerator.device``.

    Examples:
        A one-process "launch" (accelerate without a launcher) trains like TrainLoop:

        >>> from accelerate import Accelerator
        >>> from transformers import AutoModelForCausalLM
        >>> from workbench.models.tiny import build_tiny_model
        >>> from workbench.train.batches import Examples
        >>> from workbench.train.prepare import wrap_model
        >>> from workbench.train.spec import TrainSpec
        >>> folder = build_tiny_model("/tmp/wb-doc-rank-tiny")
        >>> spec = TrainSpec(max_steps=2, batch_size=2)
        >>> train = Examples.from_rows([[1, 5, 6, 7]] * 4, [[-100, 5, 6, 7]] * 4)
        >>> model = wrap_model(AutoModelForCausalLM.from_pretrained(folder), spec)
        >>> loop = RankLoop(model, 0, train, train, spec, 2, accelerator=Accelerator(cpu=True))
        >>> record = loop.train_step()
        >>> record.step, record.loss > 0, loop.evaluate() > 0
        (1, True, True)
    """

    def __init__(
        self,
        model: Any,
        pad_id: int,
        train: Any,
        validation: Any,
        spec: Any,
        total_steps: int,
        by_step: bool = True,
        *,
        accelerator: Any,
        sharded: bool = False,
    ) -> None:
        self.accelerator, self.sharded = accelerator, sharded
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self._trained_per_row = train.trained_tokens()
        self.units = 0  # FSDP units, when sharded
        if sharded:  # before TrainLoop builds the optimizer: it must hold the shards
            self.units = shard_model(model, accelerator.device)
        super().__init__(model, pad_id, train, validation, spec, total_steps, by_step)
        self.packing = Packing(False, LAUNCHED_PADS)  # recorded in run.json like any run's
        if sharded:
            self.wrapped = LossModule(model, False, self.loss_sum)  # through the FSDP hooks
        else:
            self.wrapped = accelerator.prepare_model(
                LossModule(model, spec.fast_loss, self.loss_sum)
            )

    # -- a step ---------------------------------------------------------------------------
    def _micro_batches(self) -> list[dict[str, Any]]:
        count = min(self.spec.grad_accum, max(1, self.total_micro - self.micro))
        batches = []
        for k in range(count):
            rows = self.batch_at(self.micro + k)
            mine = rank_rows(rows, self.rank, self.world)
            batch = collate(self.train, mine or rows[:1], self.pad_id)
            batch["weight"] = 1.0 if mine else 0.0  # a stand-in row: joins the reduce only
            # Every rank knows the whole micro-batch, so the step's counts need no reduce.
            batch["global_counts"] = (
                int(self._trained_per_row[rows].sum()),
                int(self.train.lengths[rows].sum()),
            )
            batches.append(self._to_device(batch))
        return batches

    def _counts(self, batches: list[dict[str, Any]]) -> tuple[int, int]:
        return (
            sum(b["global_counts"][0] for b in batches),
            sum(b["global_counts"][1] for b in batches),
        )

    def _forward_backward(self, batches: list[dict[str, Any]], trained: int) -> list[Any]:
        import torch

        total = torch.zeros((), device=self.device, dtype=torch.float64)
        last = len(batches) - 1
        for k, batch in enumerate(batches):
            # DDP reduces the gradients across the ranks once per step, on the last
            # micro-batch; FSDP reduce-scatters every micro-batch's into the shards.
            synced = k == last or self.sharded
            sync = contextlib.nullcontext() if synced else self.accelerator.no_sync(self.wrapped)
            with sync:
                with training_precision(self.model):
                    loss_sum = self.wrapped(batch["input_ids"], batch["labels"]) * batch["weight"]
                self.accelerator.backward(loss_sum * (self.world / trained))
            total += loss_sum.detach().double()
        return [self.accelerator.reduce(total, "sum")]  # every rank's, still on the device

    def _clip_gradients(self, max_norm: float) -> Any:
        if self.sharded:  # accelerate does not know the shards: the norm over all of them
            return clip_grad_norm(self.params, max_norm)
        return self.accelerator.clip_grad_norm_(self.params, max_norm)

    # -- evaluation -----------------------------------------------------------------------
    def evaluate(self) -> float | None:
        """Mean validation loss over every trained token; each rank takes every N-th batch.

        Sharded, every rank runs as many forward passes as the rank with the most batches
        (each pass gathers weights from all ranks): the others add stand-ins of weight 0.

        Examples:
            See the class's example.
        """
        import numpy as np
        import torch

        if self.validation is None or not len(self.validation):
            return None
        order = np.argsort(-self.validation.lengths, kind="stable")
        size = self.spec.batch_size
        starts = list(range(0, len(order), size))
        passes = [(start, 1.0) for start in starts[self.rank :: self.world]]
        if self.sharded:
            rounds = -(-len(starts) // self.world)
            passes += [(starts[0], 0.0)] * (rounds - len(passes))
        fast = self.spec.fast_loss and not self.sharded
        sums = torch.zeros(2, dtype=torch.float64)
        self.model.eval()
        try:
            with torch.no_grad(), training_precision(self.model):
                for start, weight in passes:
                    rows = order[start : start + size].tolist()
                    batch = self._to_device(collate(self.validation, rows, self.pad_id))
                    loss_sum, n = token_loss_sum(self.model, batch, fast)
                    if weight:
                        sums += torch.tensor([float(loss_sum), n], dtype=torch.float64)
        finally:
            self.model.train()
        total, count = (float(x) for x in self.accelerator.reduce(sums.to(self.device), "sum"))
        return total / count if count else None
