"""Padding-free packing: a micro-batch's examples in one row, each with its own positions.

A right-padded batch of examples of lengths ``l_1..l_B`` computes ``B x max(l)`` positions;
a packed one computes ``sum(l)``: the examples are concatenated into one row, their
``position_ids`` restart at 0 at each example, the label of each example's first token is
``-100`` (in the padded batch that label is never read: the causal shift drops column 0),
and no attention mask is passed. transformers (5.x) then finds the examples from the
restarts of ``position_ids`` (``masking_utils.find_packed_sequence_indices``) and builds a
block-causal mask, so no token attends to another example: with ``sdpa``, ``eager`` and
``flex_attention`` through the mask, with ``flash_attention_2``/``3`` through the varlen
kernel (it needs the single row). The loss and its gradients are the padded batch's, up to
float rounding (tests/test_packing.py: 1e-5 on the tiny models).

Not every model takes part: models whose positions do not come from ``position_ids``
(ALiBi: Bloom, MPT) or that derive them from the attention mask (OPT) would let examples see
each other. :func:`packing_problem` therefore checks the model itself before a run packs:
one forward of two packed examples against the same with the first example changed (the
second's output must not move) and against the second one alone (same output: positions
restart). A model that fails is trained on padded batches, with the reason recorded.

The row is never longer than the padded batch it replaces (``sum(l) <= B x max(l)``), so one
row per micro-batch always fits the padded batch's token budget.

Examples:
    >>> from workbench.train.batches import Examples
    >>> ex = Examples.from_rows([[1, 2, 3], [4, 5]], [[1, 2, 3], [4, 5]])
    >>> row = pack(ex, [0, 1])
    >>> row["input_ids"].tolist(), row["position_ids"].tolist()
    ([[1, 2, 3, 4, 5]], [[0, 1, 2, 0, 1]])
    >>> row["labels"].tolist(), row["lengths"].tolist()
    ([[-100, 2, 3, -100, 5]], [3, 2])
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from workbench.errors import WorkbenchWarning
from workbench.train.core import IGNORE_INDEX
from workbench.train.loss import causal_lm

__all__ = ["PACKING_ATTENTION", "Packing", "PackingSetting", "choose_packing", "pack"]

PackingSetting = bool | Literal["auto"]

# Attention implementations that keep packed examples apart in transformers 5.x: the first
# three through the block-causal mask masking_utils builds from position_ids, the flash
# kernels through cu_seqlens derived from position_ids (one row only). Anything else (a
# custom or paged kernel) gets no mask and would let the examples attend to each other.
PACKING_ATTENTION = (
    "sdpa",
    "eager",
    "flex_attention",
    "flash_attention_2",
    "flash_attention_3",
)


@dataclass(frozen=True)
class Packing:
    """Whether a run packs its micro-batches, and why (or why not).

    Examples:
        >>> Packing(False, "packing=False").on
        False
        >>> Packing.recorded({"packing_choice": Packing(True, "packed").record()})
        Packing(on=True, reason='packed')
    """

    on: bool
    reason: str

    def record(self) -> dict[str, Any]:
        """The decision as ``run.json`` keeps it (its ``packing_choice``).

        Examples:
            >>> Packing(False, "packing=False").record()
            {'on': False, 'reason': 'packing=False'}
        """
        return {"on": self.on, "reason": self.reason}

    @classmethod
    def recorded(cls, meta: dict[str, Any]) -> Packing | None:
        """The decision a run's ``run.json`` (``meta``) records, ``None`` when it has none.

        Examples:
            >>> Packing.recorded({}) is None, Packing.recorded({"packing_choice": "?"}) is None
            (True, True)
        """
        choice = meta.get("packing_choice")
        if not isinstance(choice, dict) or "reason" not in choice:
            return None
        return cls(bool(choice.get("on")), str(choice["reason"]))


def pack(examples: Any, indices: Sequence[int]) -> dict[str, Any]:
    """Concatenate the chosen examples into one row with per-example ``position_ids``.

    Returns ``input_ids``, ``labels`` (``-100`` at each example's first token),
    ``position_ids`` (each of shape ``1 x sum(lengths)``) and ``lengths`` (per example, so
    token counts are the padded batch's).

    Examples:
        >>> from workbench.train.batches import Examples
        >>> ex = Examples.from_rows([[7, 8], [9]], [[-100, 8], [9]])
        >>> b = pack(ex, [1, 0])
        >>> b["input_ids"].tolist(), b["labels"].tolist(), b["position_ids"].tolist()
        ([[9, 7, 8]], [[-100, -100, 8]], [[0, 0, 1]])
    """
    import torch

    ids = [examples.input_ids[i] for i in indices]
    labels = [np.array(examples.labels[i], dtype=np.int64) for i in indices]
    for row in labels:
        row[:1] = IGNORE_INDEX  # predicted from the previous example's last token: not trained
    lengths = [len(row) for row in ids]
    positions = np.concatenate([np.arange(n, dtype=np.int64) for n in lengths])
    return {
        "input_ids": torch.from_numpy(np.concatenate(ids).astype(np.int64))[None],
        "labels": torch.from_numpy(np.concatenate(labels))[None],
        "position_ids": torch.from_numpy(positions)[None],
        "lengths": torch.tensor(lengths),
    }


def _probe_rows(vocab: int) -> tuple[list[int], list[int], list[int]]:
    """Two versions of a first example and a second one: fixed ids, no random numbers."""
    first = [(7 * k + 3) % vocab for k in range(5)]
    other = [(11 * k + 5) % vocab for k in range(5)]
    second = [(13 * k + 2) % vocab for k in range(6)]
    return first, other, second


def packing_problem(model: Any) -> str | None:
    """Why ``model`` cannot be trained on packed rows, or ``None`` when it can.

    Checks the attention implementation, then runs the model (eval mode, no gradients, no
    random numbers) on two packed examples: the second example's logits must not change
    when the first one does (no attention across examples), and must equal its logits alone
    (positions restart at 0).

    Examples:
        >>> from transformers import AutoModelForCausalLM
        >>> from workbench.models.tiny import build_tiny_model
        >>> model = AutoModelForCausalLM.from_pretrained(build_tiny_model("/tmp/wb-doc-pack-tiny"))
        >>> packing_problem(model) is None
        True
    """
    import torch

    lm = causal_lm(model)
    impl = getattr(lm.config, "_attn_implementation", None)
    if impl not in PACKING_ATTENTION:
        return (
            f"attention implementation {impl!r} is not known to keep packed examples apart "
            f"(those that do: {', '.join(PACKING_ATTENTION)})"
        )
    vocab = lm.get_input_embeddings().weight.shape[0]
    first, other, second = _probe_rows(vocab)
    param = next(model.parameters())
    positions = list(range(len(first))) + list(range(len(second)))

    def logits(ids: list[int], pos: list[int]) -> Any:
        tensor = torch.tensor([ids], device=param.device)
        where = torch.tensor([pos], device=param.device)
        out = model(input_ids=tensor, position_ids=where, use_cache=False).logits
        return out[0, -len(second) :].float()

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            packed = logits(first + second, positions)
            changed = logits(other + second, positions)
            alone = logits(second, list(range(len(second))))
    except (TypeError, ValueError, RuntimeError) as err:
        return f"its forward failed on a packed row ({type(err).__name__}: {err})"
    finally:
        model.train(was_training)
    # Same shapes, so without a leak ``packed`` and ``changed`` agree to the last bit but for
    # kernel noise; ``alone`` has other shapes, so bf16 (or TF32 on a GPU) rounds it apart.
    scale = max(1.0, float(alone.abs().max()))
    exact = param.dtype == torch.float32 and param.device.type == "cpu"
    leak_tol, shift_tol = (1e-4 * scale, 1e-4 * scale) if exact else (3e-2 * scale, 1e-1 * scale)
    leak = float((packed - changed).abs().max())
    if leak > leak_tol:
        return (
            f"{lm.config.model_type} with {impl} attention lets packed examples see each other, "
            "through attention or a recurrent (Mamba, convolution) state (an example's logits "
            f"moved by {leak:.3g} when the one before it changed)"
        )
    shift = float((packed - alone).abs().max())
    if shift > shift_tol:
        return (
            f"{lm.config.model_type} does not restart positions from position_ids (an "
            f"example's logits differ by {shift:.3g} packed and alone)"
        )
    return None


def choose_packing(
    setting: PackingSetting, model: Any, device: Any, neftune_alpha: float | None = None
) -> Packing:
    """Decide whether a run packs: ``"auto"`` packs on CUDA only, ``True`` wherever it can.

    A model or setting that cannot pack falls back to padded batches with the reason; with
    ``setting=True`` a :class:`~workbench.errors.WorkbenchWarning` says so.

    Examples:
        >>> import torch
        >>> from transformers import AutoModelForCausalLM
        >>> from workbench.models.tiny import build_tiny_model
        >>> model = AutoModelForCausalLM.from_pretrained(build_tiny_model("/tmp/wb-doc-pack-tiny"))
        >>> choose_packing("auto", model, torch.device("cpu")).on
        False
        >>> choice = choose_packing(True, model, torch.device("cpu"))
        >>> choice.on, choice.reason[:37]
        (True, 'packed: one row per micro-batch; sdpa')
    """
    if setting is False:
        return Packing(False, "packing=False")
    kind = getattr(device, "type", str(device))
    if setting == "auto" and kind != "cuda":
        return Packing(
            False,
            f"packing='auto' packs on CUDA only; on {kind} it did not pay (CPU: 0.64x tokens/s "
            "on a tiny model, 1.02x on Gemma 3 270M; benchmarks/results.md)",
        )
    problem = (
        "NEFTune scales its noise by the row's length, which packing changes"
        if neftune_alpha
        else packing_problem(model)
    )
    if problem is None:
        impl = getattr(causal_lm(model).config, "_attn_implementation", None)
        reason = (
            f"packed: one row per micro-batch; {impl} attention keeps the examples apart "
            "(checked on the model)"
        )
        return Packing(True, reason)
    reason = f"not packed: {problem}"
    if setting is True:
        warnings.warn(f"packing=True: {reason}; training on padded batches.", WorkbenchWarning, 2)
    return Packing(False, reason)
