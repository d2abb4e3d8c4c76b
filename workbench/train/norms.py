"""Per-layer norms of the adapter's weights and gradients, for the monitor's teaching mode.

A transformer block is the first numbered module in a parameter's name (``model.layers.3.…``
in Llama/Gemma/Qwen, ``transformer.h.3.…`` in GPT-2). A block's norm is the L2 norm of all of
its LoRA matrices together (``lora_A`` and ``lora_B`` of every targeted linear layer); for full
fine-tuning, where there is no adapter, of all its trained weights.

Examples:
    >>> import torch
    >>> layer = torch.nn.Linear(3, 4)
    >>> blocks = torch.nn.ModuleDict({"layers": torch.nn.ModuleList([layer])})
    >>> groups = layer_groups(blocks)
    >>> list(groups), [round(v, 4) for v in group_norms(groups, "grad")]
    ([0], [0.0])
"""

from __future__ import annotations

import re
from typing import Any, Literal

__all__ = ["block_index", "group_norms", "layer_groups"]

_BLOCK = re.compile(r"\.(\d+)\.")
_LORA = ("lora_A", "lora_B")


def block_index(name: str) -> int | None:
    """The transformer block a parameter belongs to, or ``None`` outside the blocks.

    Examples:
        >>> block_index("base_model.model.model.layers.3.self_attn.q_proj.lora_A.default.weight")
        3
        >>> block_index("transformer.h.11.attn.c_attn.weight"), block_index("lm_head.weight")
        (11, None)
    """
    found = _BLOCK.search(f".{name}")
    return int(found.group(1)) if found else None


def layer_groups(model: Any) -> dict[int, list[Any]]:
    """Trained parameters per block index, in block order: LoRA matrices when there are any.

    Examples:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
        >>> {k: len(v) for k, v in layer_groups(torch.nn.ModuleDict({"h": net})).items()}
        {0: 2, 1: 2}
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    lora = [(n, p) for n, p in named if any(f".{key}." in n for key in _LORA)]
    groups: dict[int, list[Any]] = {}
    for name, param in lora or named:
        index = block_index(name)
        if index is not None:
            groups.setdefault(index, []).append(param)
    return dict(sorted(groups.items()))


def group_norms(groups: dict[int, list[Any]], of: Literal["weight", "grad"]) -> list[float]:
    """The L2 norm of each group's weights or gradients (a missing gradient counts as 0).

    All norms are gathered into one tensor first, so a GPU synchronises once per call.

    Examples:
        >>> import torch
        >>> group_norms({0: [torch.nn.Parameter(torch.tensor([3.0, 4.0]))]}, "weight")
        [5.0]
    """
    import torch

    if not groups:
        return []
    first = next(iter(groups.values()))[0]
    per_group = []
    for params in groups.values():
        tensors = [p.detach() if of == "weight" else p.grad for p in params]
        squares = [
            torch.linalg.vector_norm(t.float()).square().to(first.device)
            for t in tensors
            if t is not None
        ]
        per_group.append(
            torch.stack(squares).sum().sqrt() if squares else torch.zeros((), device=first.device)
        )
    return [float(v) for v in torch.stack(per_group).cpu().tolist()]
