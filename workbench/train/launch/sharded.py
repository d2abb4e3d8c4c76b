"""FSDP for launched runs: each rank holds a shard of every weight (``fsdp=True``).

The ranks shard the model themselves with PyTorch's FSDP2 ``fully_shard``: one unit per
decoder layer (found by structure, not by class name: the largest list of same-type blocks in
the model), plus the root unit on the transformers ``*ForCausalLM`` module (for a LoRA run,
``peft_model.base_model.model``), which holds the embeddings, the final norm and the output
layer. Every call that goes through the causal LM's ``__call__`` (the loss, ``generate``, the
collapse check) gathers each unit's weights just before it runs and frees them after, so all
ranks must make the same calls in the same order: they do, because rank 0 decides every step
boundary for all of them (:mod:`~workbench.train.launch.rank`).

Why not accelerate's FSDP plugin: it engages only on GPUs (on a CPU machine an FSDP config
gives ``DistributedType.NO``), so its path could not run in CI. ``fully_shard`` works the same
over gloo on CPU and NCCL on GPUs: one code path, the one the tests run.

Memory: every rank loads the base model on CPU, and ``fully_shard`` moves each unit to the
rank's device as it shards it, so a GPU holds the shards plus, while training, the root unit
and the one or two decoder layers being computed; the full model is never on a GPU.

Checkpoints stay in the one-process format (:mod:`workbench.train.checkpoint`): every rank
joins in gathering the full trained weights and the full optimizer state (in the plain
``optimizer.state_dict()`` layout, integer parameter ids), and rank 0 writes them; loading
gives each rank its own shard of the full tensors read from the files. So a FSDP run's
checkpoint resumes in one process, and the other way round.

Examples:
    One process can be a world of one (a gloo group through a file), enough to see a model
    sharded, trained one step and gathered back:

    >>> import tempfile, torch, torch.distributed as dist
    >>> from transformers import AutoModelForCausalLM
    >>> from workbench.models.tiny import build_tiny_model
    >>> from workbench.train.prepare import wrap_model
    >>> from workbench.train.spec import TrainSpec
    >>> store = tempfile.NamedTemporaryFile(delete=False).name
    >>> dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    >>> model = AutoModelForCausalLM.from_pretrained(build_tiny_model("/tmp/wb-doc-sharded"))
    >>> model = wrap_model(model, TrainSpec())
    >>> units = shard_model(model, torch.device("cpu"))
    >>> units, any(is_sharded(p) for p in model.parameters())
    (3, True)
    >>> ids = torch.tensor([[1, 5, 6, 7]])
    >>> model(input_ids=ids, labels=ids).loss.backward()
    >>> params = [p for p in model.parameters() if p.requires_grad]
    >>> clip_grad_norm(params, 1.0) > 0
    True
    >>> weights = full_trained_weights(model, keep=True)
    >>> any(is_sharded(t) for t in weights.values()), len(weights) == len(params)
    (False, True)
    >>> dist.destroy_process_group()
"""

from __future__ import annotations

from typing import Any

from workbench.errors import SpecError

__all__ = [
    "clip_grad_norm",
    "decoder_layers",
    "full_optimizer_state",
    "full_trained_weights",
    "is_sharded",
    "shard_like",
    "shard_model",
    "sharded_optimizer_state",
]


def is_sharded(tensor: Any) -> bool:
    """Whether ``tensor`` is a FSDP2 shard (a ``DTensor``) rather than a whole tensor.

    Examples:
        >>> import torch
        >>> is_sharded(torch.zeros(2)), is_sharded(None)
        (False, False)
    """
    import torch

    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def decoder_layers(model: Any) -> list[Any]:
    """The decoder layers of a causal LM: the largest list of same-type blocks in it.

    Found by structure, so any architecture works without naming its layer class
    (``model.layers`` of Llama, Gemma and Qwen, ``transformer.h`` of GPT-2).

    Raises:
        SpecError: the model has no such list.

    Examples:
        >>> from transformers import AutoModelForCausalLM
        >>> from workbench.models.tiny import build_tiny_model
        >>> model = AutoModelForCausalLM.from_pretrained(build_tiny_model("/tmp/wb-doc-sharded"))
        >>> layers = decoder_layers(model)
        >>> len(layers), type(layers[0]).__name__
        (2, 'LlamaDecoderLayer')
        >>> import torch
        >>> decoder_layers(torch.nn.Linear(2, 2))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        workbench.errors.SpecError: fsdp=True shards a model by its decoder layers, and Linear ...
    """
    import torch

    def size(blocks: Any) -> int:
        return sum(p.numel() for p in blocks.parameters())

    stacks = [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.ModuleList) and len(m) and len({type(c) for c in m}) == 1
    ]
    stacks = [m for m in stacks if size(m)]
    if not stacks:
        raise SpecError(
            f"fsdp=True shards a model by its decoder layers, and {type(model).__name__} has "
            "no list of repeated blocks: train it with fsdp=False (DDP)."
        )
    return list(max(stacks, key=size))


def shard_model(model: Any, device: Any) -> int:
    """Shard ``model`` in place across the process group: one unit per decoder layer + root.

    Call it after the adapter is attached and before the optimizer is built (the optimizer
    must hold the sharded parameters). The model may sit on CPU: each unit moves to
    ``device`` as it is sharded, so the device never holds the whole model.

    Args:
        model: The model to train (peft-wrapped, or plain for full fine-tuning).
        device: This rank's device (``accelerator.device``); the mesh's device type.

    Returns:
        The number of units (decoder layers + 1).

    Raises:
        SpecError: a quantized (bitsandbytes) model, or one without decoder layers.

    Examples:
        See the module's example.
    """
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from workbench.train.loss import causal_lm
    from workbench.train.prepare import is_quantized

    if is_quantized(model):
        raise SpecError(
            "fsdp=True cannot shard a quantized (4-bit/8-bit) model: train it with fsdp=False, "
            "or load it unquantized (method='lora') to shard it."
        )
    device = torch.device(device)
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    root = causal_lm(model)  # its __call__ runs for the loss, generate and the collapse check
    layers = decoder_layers(root)
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(root, mesh=mesh)
    return len(layers) + 1


def _full(tensor: Any, keep: bool) -> Any:
    """The whole of ``tensor`` on CPU (every rank must call it for a shard), or ``None``."""
    if is_sharded(tensor):
        tensor = tensor.full_tensor()  # an all-gather: every rank takes part
    return tensor.detach().cpu().clone() if keep else None


def full_trained_weights(model: Any, keep: bool) -> dict[str, Any]:
    """The trained parameters by name, whole and on CPU, as a one-process model holds them.

    Every rank must call it (each sharded parameter is gathered from all ranks); only a rank
    with ``keep`` holds the result (the others get ``{}``), so one copy is made, on rank 0.

    Examples:
        >>> import torch
        >>> layer = torch.nn.Linear(2, 2)
        >>> sorted(full_trained_weights(layer, keep=True)), full_trained_weights(layer, False)
        (['bias', 'weight'], {})
    """
    weights = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            full = _full(param, keep)
            if keep:
                weights[name] = full
    return weights


def full_optimizer_state(optimizer: Any, keep: bool) -> dict[str, Any] | None:
    """``optimizer.state_dict()`` with each sharded state gathered whole, on CPU.

    The layout is the plain one (integer parameter ids, the param groups as they are), so the
    file it is saved to loads into a one-process optimizer with ``load_state_dict``. Every
    rank must call it; only a rank with ``keep`` holds the result (the others get ``None``).

    Examples:
        >>> import torch
        >>> layer = torch.nn.Linear(2, 2)
        >>> optimizer = torch.optim.AdamW(layer.parameters())
        >>> layer(torch.ones(1, 2)).sum().backward()
        >>> optimizer.step()
        >>> state = full_optimizer_state(optimizer, keep=True)
        >>> sorted(state["state"][0]), state["param_groups"][0]["params"]
        (['exp_avg', 'exp_avg_sq', 'step'], [0, 1])
    """
    import torch

    plain = optimizer.state_dict()
    state = {}
    for pid, values in plain["state"].items():
        gathered = {
            key: _full(value, keep) if isinstance(value, torch.Tensor) else value
            for key, value in values.items()
        }
        state[pid] = gathered
    return {"state": state, "param_groups": plain["param_groups"]} if keep else None


def shard_like(full: Any, like: Any) -> Any:
    """This rank's shard of the whole tensor ``full``, placed as ``like`` is; ``full`` when
    ``like`` is not sharded. No communication: every rank holds ``full`` (read from a file).

    Examples:
        >>> import torch
        >>> full = torch.ones(2)
        >>> shard_like(full, torch.zeros(2)) is full
        True
    """
    if not is_sharded(like):
        return full
    from torch.distributed.tensor import distribute_tensor

    local = full.to(device=like.device, dtype=like.dtype)
    return distribute_tensor(local, like.device_mesh, like.placements, src_data_rank=None)


def sharded_optimizer_state(optimizer: Any, plain: dict[str, Any]) -> dict[str, Any]:
    """A plain-layout optimizer state (whole tensors) made fit for ``optimizer``'s parameters:
    each state the shape of a sharded parameter becomes that parameter's shard.

    Unchanged when no parameter is sharded, so ``optimizer.load_state_dict`` of the result
    works for a one-process optimizer and a sharded one alike.

    Examples:
        >>> import torch
        >>> layer = torch.nn.Linear(2, 2)
        >>> optimizer = torch.optim.AdamW(layer.parameters())
        >>> state = optimizer.state_dict()
        >>> sharded_optimizer_state(optimizer, state) is state
        True
    """
    saved = [pid for group in plain["param_groups"] for pid in group["params"]]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if len(saved) != len(params) or not any(is_sharded(p) for p in params):
        return plain  # optimizer.load_state_dict says what does not match
    by_id = dict(zip(saved, params, strict=True))
    state = {}
    for pid, values in plain["state"].items():
        param = by_id[pid]
        state[pid] = {
            key: shard_like(value, param) if getattr(value, "shape", None) == param.shape else value
            for key, value in values.items()
        }
    return {**plain, "state": state}


def clip_grad_norm(params: list[Any], max_norm: float) -> float:
    """Clip the gradients of (sharded) parameters to ``max_norm``; their global norm before.

    The norm is over the whole gradients (every rank's shards), the same number a one-process
    run computes, and every rank gets it (an all-reduce).

    Examples:
        >>> import torch
        >>> param = torch.nn.Parameter(torch.zeros(2))
        >>> param.grad = torch.tensor([3.0, 4.0])
        >>> clip_grad_norm([param], 1.0), [round(g, 4) for g in param.grad.tolist()]
        (5.0, [0.6, 0.8])
    """
    import torch

    grads = [p.grad for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    if is_sharded(total):
        total = total.full_tensor()  # the squares of every rank's shards, summed
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return float(total)
