"""Helpers shared by the tests that compare two ways of training the same model."""

from __future__ import annotations

import torch


def adamw_steps(model, ids, steps: int = 3, autocast: bool = False):
    """Losses and the trained weights' gradients of a few AdamW steps on ``ids`` (inputs
    and labels), from one seed, so that dropout draws the same masks on both sides.

    Returns:
        ``(losses, gradients)``: a float and one flat float32 tensor per step.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    torch.manual_seed(1)
    losses, grads = [], []
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten().float() for p in params]))
        optimizer.step()
        optimizer.zero_grad()
    return losses, grads
