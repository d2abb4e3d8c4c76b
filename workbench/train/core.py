"""The training pieces that the workbench and its scale-out script share, in one place.

Data order, padding, the untrained-row filter, AdamW groups, NEFTune and the adapter live
here once. The in-process loop (:mod:`workbench.train.loop`, :mod:`~workbench.train.batches`,
:mod:`~workbench.train.prepare`) imports them, and
:func:`workbench.deploy.script.write_training_script` copies this very file beside the
``accelerate`` script it writes (as ``train_core.py``), so both train the same way.

That is why this module imports only numpy (torch, transformers and peft inside the functions
that need them, so importing it stays fast) and nothing of the workbench: the written folder
runs where the workbench is not installed. Settings arrive as plain values, not a ``TrainSpec``.

Examples:
    >>> trained_tokens([[-100, 5, 6], [-100, -100]]).tolist()
    [2, 0]
    >>> BatchPlan(np.array([3, 1, 2]), batch_size=2, seed=0).per_epoch
    2
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "IGNORE_INDEX",
    "MEGABATCH",
    "BatchPlan",
    "add_neftune",
    "dropout_free_targets",
    "enable_checkpointing",
    "epoch_batches",
    "kernel_read_projections",
    "lean_gated_mlps",
    "lean_lora_inputs",
    "lean_norm_inputs",
    "linear_routers",
    "linears_moved_to_experts",
    "linears_without_adapter",
    "lora_config",
    "make_trainable",
    "optimizer_groups",
    "pad_id",
    "pad_rows",
    "trained_rows",
    "trained_tokens",
    "warmup_steps",
]

IGNORE_INDEX = -100
MEGABATCH = 16  # batches per length-sorted group: enough grouping, order still random
_LAYER = re.compile(r"\.(?:layers|h|blocks|layer)\.(\d+)\.")


# -- data -----------------------------------------------------------------------------------
def trained_tokens(labels: Sequence[Sequence[int]]) -> np.ndarray:
    """Per row, how many tokens the loss trains on (labels after the causal shift).

    Examples:
        >>> trained_tokens([[7, 8], [7, -100]]).tolist()
        [1, 0]
    """
    return np.array(
        [int((np.asarray(row)[1:] != IGNORE_INDEX).sum()) for row in labels], dtype=np.int64
    )


def trained_rows(counts: np.ndarray) -> np.ndarray:
    """Indices of the rows that train at least one token: the rows a run trains on.

    A row without one would add a silent 0.0 to the loss, so runs skip it.

    Examples:
        >>> trained_rows(np.array([2, 0, 1])).tolist()
        [0, 2]
    """
    return np.flatnonzero(np.asarray(counts) > 0)


def epoch_batches(
    lengths: np.ndarray,
    batch_size: int,
    seed: int,
    epoch: int,
    grad_accum: int = 1,
    by_step: bool = True,
) -> list[list[int]]:
    """The micro-batches of one epoch: shuffled, grouped by length, in a shuffled order.

    A pure function of its arguments, so a resumed run sees the batches an uninterrupted one
    would. Grouping by length (like transformers' ``LengthGroupedSampler``) keeps padding low.

    ``by_step``: the rows are drawn an optimizer step (``batch_size * grad_accum`` rows) at a
    time and each step's rows cut into its micro-batches, the shortest step last; so
    ``batch_size=4, grad_accum=2`` trains on the rows of ``batch_size=8`` in each step (the
    same run in less memory) while the rows divide into whole steps, or up to the epoch's
    last step. ``by_step=False``: each micro-batch drawn on its own, the order of runs
    started before step order (their resumes keep it).

    Examples:
        >>> lengths = np.array([5, 1, 4, 2, 7, 3, 6, 8])
        >>> big = epoch_batches(lengths, 4, seed=1, epoch=0)
        >>> small = epoch_batches(lengths, 2, seed=1, epoch=0, grad_accum=2)
        >>> [sorted(a + b) for a, b in zip(small[::2], small[1::2])] == [sorted(s) for s in big]
        True
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    rows_per_step = batch_size * grad_accum if by_step else batch_size
    group = rows_per_step * MEGABATCH
    steps: list[np.ndarray] = []
    for start in range(0, len(order), group):
        chunk = order[start : start + group]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        steps += [chunk[i : i + rows_per_step] for i in range(0, len(chunk), rows_per_step)]
    if not by_step:
        return [steps[i].tolist() for i in rng.permutation(len(steps))]
    full = [step for step in steps if len(step) == rows_per_step]
    short = [step for step in steps if len(step) < rows_per_step]  # one at most
    ordered = [full[i] for i in rng.permutation(len(full))] + short
    return [
        step[i : i + batch_size].tolist()
        for step in ordered
        for i in range(0, len(step), batch_size)
    ]


class BatchPlan:
    """Which examples each global micro-batch of a run holds, epoch after epoch.

    Args:
        lengths: Tokens per (trained) example.
        batch_size: Examples per micro-batch.
        seed: The run's seed.
        grad_accum: Micro-batches per optimizer step.
        by_step: Draw rows a step at a time (:func:`epoch_batches`); ``False`` for runs
            started before, which resume in their own order.

    Examples:
        >>> plan = BatchPlan(np.array([4, 3, 2, 1]), batch_size=2, seed=0)
        >>> plan.total_micro(grad_accum=2, epochs=1, max_steps=None)
        2
        >>> sorted(plan.at(0) + plan.at(1))
        [0, 1, 2, 3]
    """

    def __init__(
        self,
        lengths: np.ndarray,
        batch_size: int,
        seed: int,
        grad_accum: int = 1,
        by_step: bool = True,
    ) -> None:
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self.grad_accum, self.by_step = grad_accum, by_step
        self.per_epoch = math.ceil(len(lengths) / batch_size)
        self._epoch: tuple[int, list[list[int]]] = (-1, [])

    def total_micro(self, grad_accum: int, epochs: float, max_steps: int | None) -> int:
        """Micro-batches the run takes: ``max_steps`` full steps, or ``epochs`` of data.

        Examples:
            >>> BatchPlan(np.ones(10), 4, 0).total_micro(2, epochs=1.5, max_steps=None)
            5
            >>> BatchPlan(np.ones(200), 4, 0).total_micro(1, epochs=1.1, max_steps=None)
            55
        """
        if max_steps is not None:
            return max_steps * grad_accum
        # rounded first: 1.1 * 50 is 55.00000000000001, which took a micro-batch more
        return math.ceil(round(epochs * self.per_epoch, 9))

    def at(self, micro: int) -> list[int]:
        """Example indices of micro-batch ``micro`` (the epoch's batches are cached).

        Examples:
            >>> BatchPlan(np.array([2, 1]), 2, seed=0).at(1)
            [0, 1]
        """
        epoch, index = divmod(micro, self.per_epoch)
        if self._epoch[0] != epoch:
            batches = epoch_batches(
                self.lengths, self.batch_size, self.seed, epoch, self.grad_accum, self.by_step
            )
            self._epoch = (epoch, batches)
        return self._epoch[1][index]

    def steps(self, steps: int, grad_accum: int, total_micro: int) -> list[list[list[int]]]:
        """Each optimizer step's micro-batches (``grad_accum`` of them, fewer at the end).

        Examples:
            >>> BatchPlan(np.ones(3), 2, seed=0).steps(2, 2, total_micro=3)
            [[[2, 0], [1]], [[2, 0]]]
        """
        micro = [self.at(m) for m in range(total_micro)]
        return [micro[s * grad_accum : (s + 1) * grad_accum] for s in range(steps)]


def pad_rows(
    input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], pad_id: int
) -> dict[str, Any]:
    """Right-pad rows into ``input_ids``, ``labels`` (-100 on padding) and ``lengths`` tensors.

    Padding on the right leaves a causal model's real tokens unchanged without a mask.

    Examples:
        >>> b = pad_rows([[1, 2], [3]], [[1, 2], [3]], pad_id=0)
        >>> b["input_ids"].tolist(), b["labels"].tolist(), b["lengths"].tolist()
        ([[1, 2], [3, 0]], [[1, 2], [3, -100]], [2, 1])
    """
    import torch

    lengths = [len(row) for row in input_ids]
    ids = np.full((len(lengths), max(lengths)), pad_id, dtype=np.int64)
    padded = np.full(ids.shape, IGNORE_INDEX, dtype=np.int64)
    for row, (n, row_ids, row_labels) in enumerate(zip(lengths, input_ids, labels, strict=True)):
        ids[row, :n], padded[row, :n] = row_ids, row_labels
    return {
        "input_ids": torch.from_numpy(ids),
        "labels": torch.from_numpy(padded),
        "lengths": torch.tensor(lengths),
    }


# -- model and optimizer --------------------------------------------------------------------
def lora_config(
    r: int, alpha: float, dropout: float, target: str | Sequence[str], use_dora: bool
) -> Any:
    """The ``peft.LoraConfig`` of a causal LM for the workbench's LoRA fields.

    Examples:
        >>> lora_config(r=4, alpha=8, dropout=0.0, target=["q_proj"], use_dora=False).lora_alpha
        8
    """
    from peft import LoraConfig

    target = target if isinstance(target, str) else list(target)
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target,
        use_dora=use_dora,
        task_type="CAUSAL_LM",
    )


# Device types where gradient_checkpointing="auto" checkpoints a quantized base (peft's QLoRA
# recipe): where the caching allocator hands a block's freed activations to the next block.
# On CPU glibc's malloc kept most of what a checkpointed forward freed (a 12-layer tiny
# Llama, 4 x 512 tokens: 2.0 GB resident after the forward, 0.67 GB after malloc_trim), so
# the peak fell 15-50% while a step took 1.5-2x as long (Session.train, an 8-layer Llama
# shape, hidden 512: 1.5-1.65x in 16 bits, 1.65-1.85x in 4): not worth it by default there.
CHECKPOINTS_QUANTIZED_ON = {"cuda"}


def checkpoints_by_default(quantized: bool, device: str) -> bool:
    """What ``gradient_checkpointing="auto"`` decides for a base on ``device`` (a type).

    Examples:
        >>> checkpoints_by_default(True, "cuda"), checkpoints_by_default(True, "cpu")
        (True, False)
    """
    return quantized and device in CHECKPOINTS_QUANTIZED_ON


def enable_checkpointing(model: Any) -> None:
    """Recompute activations in backward (non-reentrant).

    The config's ``use_cache`` is left alone (training's forward passes ask for no cache
    themselves): setting it off, as recipes do, went on into every later export's
    ``config.json``.

    Examples:
        >>> # enable_checkpointing(model)
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # the transformers 5 name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def linear_routers(model: Any) -> list[str]:
    """Full names of mixture-of-experts routers that are linear layers with their own forward.

    Llama 4's and Phi-3.5-MoE's routers subclass ``torch.nn.Linear`` but return a tuple
    (scores, logits): peft's ``"all-linear"`` would wrap them and the wrapper fails on the
    tuple, so :func:`make_trainable` leaves them out of the adapter (a router stays frozen).

    Examples:
        >>> import torch
        >>> class TopKRouter(torch.nn.Linear):
        ...     def forward(self, x):
        ...         return super().forward(x).softmax(-1), super().forward(x)
        >>> block = torch.nn.ModuleDict({"up": torch.nn.Linear(4, 4), "router": TopKRouter(4, 2)})
        >>> linear_routers(block)
        ['router']
    """
    import torch

    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and type(module) is not torch.nn.Linear
        and "router" in type(module).__name__.lower()
    ]


# Mamba mixers (Mamba, Mamba-2, Bamba, Granite 4.0-H, Falcon-H1, Nemotron-H, Jamba) hand these
# projections' weights straight to the fused mamba_ssm training kernel when it is installed.
_KERNEL_READ = ("out_proj", "x_proj", "dt_proj")


def kernel_read_projections(model: Any) -> list[str]:
    """Full names of linear layers whose weight a fused Mamba kernel reads directly.

    In a state-space mixer (a module with ``A_log`` and ``D`` parameters), transformers'
    training forward passes ``out_proj.weight`` (and Mamba-1's ``x_proj`` and ``dt_proj``
    weights) to mamba_ssm's fused kernel when that package is installed, as it is on most GPU
    setups: an adapter there would train on CPU and be silently skipped on such a GPU. peft
    refuses them for some of these families; :func:`make_trainable` leaves them out for all,
    so a run means the same on every machine.

    Examples:
        >>> import torch
        >>> mixer = torch.nn.Module()
        >>> mixer.A_log = torch.nn.Parameter(torch.zeros(2))  # a state-space layer's A and D
        >>> mixer.D = torch.nn.Parameter(torch.ones(2))
        >>> mixer.in_proj, mixer.out_proj = torch.nn.Linear(4, 8), torch.nn.Linear(4, 4)
        >>> kernel_read_projections(torch.nn.ModuleDict({"mamba": mixer}))
        ['mamba.out_proj']
    """
    import torch

    names = []
    for prefix, module in model.named_modules():
        params = dict(module.named_parameters(recurse=False))
        if "A_log" not in params or "D" not in params:
            continue
        for child_name, child in module.named_children():
            if child_name in _KERNEL_READ and isinstance(child, torch.nn.Linear):
                names.append(f"{prefix}.{child_name}" if prefix else child_name)
    return names


def dropout_free_targets(model: Any, lora: Any) -> list[str]:
    """The weights peft adapts for the ``LoraConfig`` ``lora`` that cannot take dropout.

    On transformers 5, peft maps ``"all-linear"`` (and the v4 expert names) of some
    mixture-of-experts models (Mixtral, OLMoE, Qwen3-MoE...) onto their fused expert weights,
    3D parameters it adapts with a ``ParamWrapper``, which refuses ``lora_dropout != 0``. An
    empty list when peft adapts no such weight, or cannot say (an older peft).

    Examples:
        >>> import torch
        >>> from peft import LoraConfig
        >>> dropout_free_targets(torch.nn.Linear(2, 2), LoraConfig(target_modules="all-linear"))
        []
    """
    probe = _converted_for_transformers(model, lora)
    if probe is None:
        return []
    return sorted(set(probe.target_parameters or ()) - set(lora.target_parameters or ()))


def linears_moved_to_experts(model: Any, lora: Any) -> list[str]:
    """Names of linear layers that ``lora`` targets and peft's mapping onto fused experts
    takes off its target modules, so that they train no adapter.

    peft 0.21 maps the MLP names (``gate_proj``, ``up_proj``, ``down_proj``) of Qwen3-MoE,
    OLMoE, DeepSeek... onto the fused experts' weights and drops them as modules: a dense
    block's MLP and a shared expert, plain linear layers of those names, went without LoRA.
    peft 0.22 keeps them (an empty list). Names as ``target_modules`` matches them (a layer's
    last part); empty where peft maps nothing or cannot say.

    Examples:
        >>> import torch
        >>> from peft import LoraConfig
        >>> linears_moved_to_experts(torch.nn.Linear(2, 2), LoraConfig(target_modules="all-linear"))
        []
    """
    import torch

    probe = _converted_for_transformers(model, lora)
    if probe is None or isinstance(probe.target_modules, str):
        return []
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    linear = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if module is not output
        and (type(module) is torch.nn.Linear or _quantized_or_conv1d_linear(module))
    }
    targeted = linear if lora.target_modules == "all-linear" else set(lora.target_modules or ())
    return sorted((targeted & linear) - set(probe.target_modules))


def _converted_for_transformers(model: Any, lora: Any) -> Any | None:
    """A copy of ``lora`` as peft converts it for ``model`` on transformers 5 (the v4 names of
    fused experts turned into parameter targets), or ``None`` where peft cannot say."""
    import copy

    try:
        from peft.utils.transformers_weight_conversion import convert_peft_config_for_transformers
    except ImportError:  # a peft without the transformers 5 mapping adapts no fused experts
        return None
    probe = copy.deepcopy(lora)
    try:
        convert_peft_config_for_transformers(probe, model=model, conversions=None)
    except (ValueError, AttributeError, TypeError):  # peft's own error comes with the real call
        return None
    return probe


def _quantized_or_conv1d_linear(module: Any) -> bool:
    """A bitsandbytes 4-bit or 8-bit linear layer (not peft's LoRA layer of the same class
    name, which wraps one), or GPT-2's ``Conv1D``: linear layers that are not ``nn.Linear``."""
    kind = type(module)
    bnb = kind.__module__.startswith("bitsandbytes") and kind.__name__ in (
        "Linear4bit",
        "Linear8bitLt",
    )
    return bnb or kind.__name__ == "Conv1D"


def linears_without_adapter(model: Any) -> list[str]:
    """Full names of the linear layers of a peft ``model`` that carry no LoRA, apart from the
    output layer and what :func:`make_trainable` leaves out on purpose.

    With ``"all-linear"`` it should be none. peft 0.21 maps the MLP names of some
    mixture-of-experts families (Qwen3-MoE, OLMoE, DeepSeek...) onto their fused experts
    and drops them as modules, so a dense block's MLP or a shared expert, plain linear
    layers of those names, were left untrained in silence.

    Examples:
        >>> import torch
        >>> from peft import LoraConfig, get_peft_model
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
        >>> linears_without_adapter(get_peft_model(net, LoraConfig(target_modules=["0"])))
        ['1']
    """
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    output = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    meant = {*kernel_read_projections(base), *linear_routers(base)}
    left = []
    for name, module in base.named_modules():
        parts = name.split(".")
        inside_adapter = parts[-1] == "base_layer" or any(p.startswith("lora_") for p in parts)
        plain = type(module) is torch.nn.Linear or _quantized_or_conv1d_linear(module)
        if plain and module is not output and not inside_adapter and name not in meant:
            left.append(name)
    return left


def make_trainable(model: Any, lora: Any | None) -> Any:
    """Attach a peft adapter for the ``LoraConfig`` ``lora``, or train every weight if ``None``.

    Seed torch first: the adapter's initial weights come from its generator. The
    :func:`kernel_read_projections` are always left out; with ``target_modules="all-linear"``
    the :func:`linear_routers` too.

    Returns:
        The model to train, in training mode.

    Examples:
        >>> import torch
        >>> make_trainable(torch.nn.Linear(2, 2).eval(), None).training
        True
    """
    if lora is None:
        for param in model.parameters():
            param.requires_grad_(True)
        lean_gated_mlps(model)
        lean_norm_inputs(model)
        return model.train()
    import copy

    from peft import get_peft_model

    left_out = kernel_read_projections(model)
    if lora.target_modules == "all-linear":
        left_out += linear_routers(model)
    if left_out:
        lora = copy.copy(lora)
        lora.exclude_modules = sorted({*(lora.exclude_modules or ()), *left_out})
    model = get_peft_model(model, lora)
    lean_lora_inputs(model)
    lean_gated_mlps(model)
    lean_norm_inputs(model)
    return model.train()


def lean_lora_inputs(model: Any) -> int:
    """Make peft's plain LoRA layers keep one input per layer for backward, not copies of it.

    peft computes ``lora_B(lora_A(dropout(x.to(adapter dtype))))``: for a bfloat16 base under
    autocast, each adapted layer held a float32 copy of its input after dropout and its float
    mask, and q, k and v (gate and up) each their own, though they read the same ``x``: over a
    third of what a step keeps for backward on a Qwen2-shaped model with dropout 0.05. Here
    ``lora_A`` takes the dropout over (the layer's dropout becomes ``Identity``), casts ``x``
    only where no autocast does it, and keeps for backward only ``x`` itself (shared by the
    layers that read it) and the dropout's mask: one byte an element on CPU; nothing on a
    CUDA device, where backward draws the same mask again from the generator's saved state.
    Outputs and gradients are those of peft's forward: with the very masks peft draws on CPU;
    on CUDA with others of the same law (peft's fused dropout kernel draws its own way).
    Under ``torch.compile`` the dropout is the compiler's (its own masks, unbiased
    gradients; the compiler decides what to keep). DoRA and the other variants, and layers
    other than ``nn.Linear`` adapters, are left as they are. Returns how many adapters were
    changed.

    Examples:
        >>> import torch
        >>> from peft import LoraConfig, get_peft_model
        >>> net = get_peft_model(torch.nn.Sequential(torch.nn.Linear(4, 4)),
        ...                      LoraConfig(target_modules=["0"], lora_dropout=0.1))
        >>> lean_lora_inputs(net), type(net.base_model.model[0].lora_dropout["default"]).__name__
        (1, 'Identity')
    """
    import torch

    lean_linear, changed = _dropout_linear_class(), 0
    for module in model.modules():
        plain = [
            name
            for name, lora_A in getattr(module, "lora_A", {}).items()
            if type(lora_A) is torch.nn.Linear
            and lora_A.bias is None
            and name not in getattr(module, "lora_variant", {})
        ]
        if not plain or len(plain) != len(module.lora_A) or not hasattr(module, "lora_dropout"):
            continue
        for name in plain:
            dropout = module.lora_dropout[name]
            module.lora_A[name].__class__ = lean_linear
            module.lora_A[name].dropout_p = getattr(dropout, "p", 0.0)
            module.lora_dropout[name] = torch.nn.Identity()
            changed += 1
        module.cast_input_dtype_enabled = False  # lean_linear casts where autocast does not
    return changed


# Device types whose dropout masks are drawn again in backward rather than kept: on CUDA a
# mask costs next to nothing; on CPU it costs 15 ns an element, a quarter of a step (2 cores,
# a Qwen2-shaped model), so the mask is kept there, at one byte an element.
REDRAWS_MASKS_ON = {"cuda"}


@functools.cache  # built on first use: this module imports torch lazily
def _dropped_projection() -> type:
    """``dropout(x) @ weight.T`` as one autograd step that keeps ``x``, not ``dropout(x)``.

    The dropout's scale is applied to the product's few columns (the adapter's rank), not to
    ``x``, so each direction makes one pass over ``x``'s size, as dropout itself does.
    """
    import torch

    class DroppedProjection(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Any, weight: Any, p: float, dtype: Any) -> Any:
            redraws = x.device.type in REDRAWS_MASKS_ON
            # only a redrawing device's generator is asked for: MPS has no default_generators
            generator = _default_generator(x.device) if redraws else None
            state = generator.get_state() if redraws else None
            dropped = _dropped_positions(x, p, generator)
            ctx.save_for_backward(x, weight, None if redraws else dropped)
            ctx.p, ctx.dtype, ctx.generator, ctx.state = p, dtype, generator, state
            kept = x.to(dtype).masked_fill(dropped, 0)
            return torch.nn.functional.linear(kept, weight.to(dtype)) * (1.0 / (1.0 - p))

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            x, weight, dropped = ctx.saved_tensors
            if dropped is None:
                dropped = _redrawn(ctx.generator, ctx.state, x, ctx.p)
            grad = grad * (1.0 / (1.0 - ctx.p))  # the rank's few columns, not x's many
            grad_x = grad_weight = None
            if ctx.needs_input_grad[0]:
                grad_x = (grad @ weight.to(ctx.dtype)).masked_fill_(dropped, 0).to(x.dtype)
            if ctx.needs_input_grad[1]:
                kept = x.to(ctx.dtype).masked_fill(dropped, 0)
                flat_grad = grad.reshape(-1, grad.shape[-1])  # any leading dims, or none
                flat_kept = kept.reshape(-1, kept.shape[-1])
                grad_weight = (flat_grad.t() @ flat_kept).to(weight.dtype)
            return grad_x, grad_weight, None, None

    return DroppedProjection


def _default_generator(device: Any) -> Any:
    """The generator that ``device``'s random draws take by default."""
    import torch

    if device.type == "cpu":
        return torch.default_generator
    return torch.get_device_module(device).default_generators[device.index]


def _dropped_positions(x: Any, p: float, generator: Any) -> Any:
    """Where dropout with rate ``p`` zeroes ``x`` (on CPU, where ``torch.nn.Dropout`` does),
    drawn from ``generator``, or from the device's default one if ``None``."""
    import torch

    kept = torch.empty(x.shape, dtype=torch.bool, device=x.device)
    return kept.bernoulli_(1.0 - p, generator=generator).logical_not_()


def _redrawn(generator: Any, state: Any, x: Any, p: float) -> Any:
    """:func:`_dropped_positions` as drawn when ``generator`` was at ``state``."""
    now = generator.get_state()
    generator.set_state(state)
    try:
        return _dropped_positions(x, p, generator)
    finally:
        generator.set_state(now)


@functools.cache
def _dropout_linear_class() -> type:
    """``torch.nn.Linear`` with its input's dropout folded in (see :func:`lean_lora_inputs`)."""
    import torch

    dropped_projection = _dropped_projection()

    class DropoutLinear(torch.nn.Linear):
        dropout_p = 0.0

        def forward(self, x: Any) -> Any:
            device = x.device.type
            dtype = (
                torch.get_autocast_dtype(device)
                if torch.is_autocast_enabled(device)
                else self.weight.dtype
            )
            # Under torch.compile, dropout is left to the compiler: traced, this autograd
            # step gave biased gradients (torch 2.13, CPU: mean gradient over 200 draws 1.27
            # off eager's, against 0.31 between two eager runs), and untraced it broke the
            # graph at every adapted layer. The compiler decides itself what to keep.
            if (
                self.training
                and self.dropout_p > 0
                and torch.is_grad_enabled()
                and not torch.compiler.is_compiling()
            ):
                return dropped_projection.apply(x, self.weight, self.dropout_p, dtype)
            x = torch.nn.functional.dropout(x.to(dtype), self.dropout_p, self.training)
            return torch.nn.functional.linear(x, self.weight.to(dtype))

        def extra_repr(self) -> str:
            return f"{super().extra_repr()}, dropout={self.dropout_p}"

    DropoutLinear.__module__ = __name__  # pickled by name, found by __getattr__ below
    DropoutLinear.__qualname__ = "DropoutLinear"
    return DropoutLinear


class _Layout(NamedTuple):
    """How a gated MLP names its parts."""

    gate: str
    up: str | None  # None: the gate's projection gives both, gate then up, in halves
    down: str
    act: str  # the activation module's attribute; "silu" where the forward calls F.silu


_GATED_LAYOUTS = (
    _Layout("gate_proj", "up_proj", "down_proj", "act_fn"),  # Llama, Qwen, Mistral, Gemma...
    _Layout("gate_proj", "up_proj", "down_proj", "activation_fn"),  # Llama 4's shared expert
    _Layout("gate_up_proj", None, "down_proj", "activation_fn"),  # Phi-3, GLM-4
    _Layout("input_linear", None, "output_linear", "activation"),  # Granite 4.0-H
    _Layout("w1", "w3", "w2", "silu"),  # LFM2
)

# Device types where gated MLPs keep two intermediate-wide tensors for backward, not four
# (lean_gated_mlps): where the caching allocator hands what a block did not keep to the next
# one. On CPU glibc kept it: a step's peak RSS did not fall in float32 (a 6-layer Qwen2
# shape, hidden 512, intermediate 2816, 4 x 512 tokens: 2.39-2.52 GB as written, 2.44-2.67
# GB lean), and fell 13% under bfloat16 autocast, for an elementwise pass more per MLP.
LEAN_MLP_ON = {"cuda"}


def lean_gated_mlps(model: Any) -> int:
    """Make each gated MLP keep two intermediate-wide tensors for backward, not four.

    A gated MLP (Llama, Qwen, Mistral, Gemma, Phi-3, LFM2...) computes
    ``down(act(gate(x)) * up(x))``; autograd kept ``gate(x)``, ``act(gate(x))``, ``up(x)``
    and their product (the input of ``down``'s adapter, or of its weight's gradient in full
    fine-tuning): over two thirds of what a Qwen2-shaped block keeps. Here the product keeps
    only ``gate(x)`` and ``up(x)``, and whatever ``down`` keeps of its input is computed again
    from them in backward, one elementwise pass. Losses and gradients are those of the
    module's own forward (the same operations, the projections called in the same order). A
    module whose forward's source is not exactly that is left as it is; forwards without
    gradients, under
    ``torch.compile`` (the compiler chooses what to keep), inside checkpointed blocks (which
    keep even less) and on devices not in ``LEAN_MLP_ON`` (CUDA) run as written. Returns how
    many MLPs were changed; calling it again changes none.

    Examples:
        >>> import torch
        >>> class MLP(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.gate_proj, self.up_proj = torch.nn.Linear(4, 8), torch.nn.Linear(4, 8)
        ...         self.down_proj, self.act_fn = torch.nn.Linear(8, 4), torch.nn.SiLU()
        ...     def forward(self, x):
        ...         return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
        >>> blocks = torch.nn.ModuleList([MLP(), MLP()])
        >>> lean_gated_mlps(blocks), lean_gated_mlps(blocks)
        (2, 0)
    """
    changed = 0
    for module in model.modules():
        if "forward" in vars(module):  # an instance's own forward (this one, a wrapper's) stays
            continue
        for layout in _GATED_LAYOUTS:
            up_first = _gated_order(module, layout)
            if up_first is not None:
                module.forward = _LeanGatedForward(module, layout, up_first)
                changed += 1
                break
    return changed


def _activation(module: Any, layout: _Layout) -> Any:
    import torch

    if layout.act == "silu" and not hasattr(module, "silu"):
        return torch.nn.functional.silu
    return getattr(module, layout.act)


def _gate_and_up(module: Any, layout: _Layout, x: Any, up_first: bool) -> tuple[Any, Any]:
    """``gate(x)`` and ``up(x)``, the projections called in the forward's order (their
    dropout masks are drawn in that order)."""
    if layout.up is None:
        return getattr(module, layout.gate)(x).chunk(2, dim=-1)
    if up_first:
        up = getattr(module, layout.up)(x)
        return getattr(module, layout.gate)(x), up
    return getattr(module, layout.gate)(x), getattr(module, layout.up)(x)


def _gated_order(module: Any, layout: _Layout) -> bool | None:
    """Whether ``module``'s forward is ``down(act(gate(x)) * up(x))`` in ``layout``'s names:
    ``None`` if not, else whether it calls ``up`` first (``up(x) * act(gate(x))``).

    Read from the forward's source, not run: a trial forward has side effects (bitsandbytes
    repacks a 4-bit weight, or fixes its compute dtype, on the first call).
    """
    import torch

    names = [layout.gate, layout.down] + ([layout.up] if layout.up else [])
    if not all(isinstance(getattr(module, n, None), torch.nn.Module) for n in names):
        return None
    if layout.act != "silu" and not callable(getattr(module, layout.act, None)):
        return None
    return _gated_expressions(layout).get(_forward_expression(type(module)))


def _gated_expressions(layout: _Layout) -> dict[tuple, bool]:
    """The expressions (as :func:`_forward_expression` writes them) of the gated product,
    each with whether ``up`` comes first."""
    x = ("input",)
    if layout.up is None:
        halves = ("chunk", ("call", layout.gate, x))
        gate, up = ("half", 0, halves), ("half", 1, halves)
    else:
        gate, up = ("call", layout.gate, x), ("call", layout.up, x)
    act = ("fn", "silu", gate) if layout.act == "silu" else ("call", layout.act, gate)
    return {
        ("call", layout.down, ("mul", act, up)): False,
        ("call", layout.down, ("mul", up, act)): True,
    }


@functools.cache
def _forward_expression(cls: type) -> tuple | None:
    """What ``cls.forward`` returns as an expression of its one input, from its source: a
    nested tuple of ``("call", attribute, arg)`` (a call of ``self.attribute``), ``("fn",
    "silu", arg)``, ``("chunk", arg)`` (in two, on the last dimension), ``("half", i, chunk)``
    and ``("mul", a, b)``; ``None`` for a forward with anything else (a branch, a constant)."""
    import ast
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls.forward)))
        function = tree.body[0]
        arguments = function.args
        if arguments.vararg or arguments.kwarg or arguments.kwonlyargs or arguments.defaults:
            return None
        if len(arguments.args) != 2:
            return None
        names = {arguments.args[1].arg: ("input",)}
        body = function.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]  # the docstring
        for statement in body:
            if isinstance(statement, ast.Return):
                return _expression(statement.value, names)
            if not isinstance(statement, ast.Assign) or len(statement.targets) != 1:
                return None
            _assign(statement.targets[0], _expression(statement.value, names), names)
    except (OSError, TypeError, SyntaxError, _NotGatedError):
        return None
    return None


class _NotGatedError(Exception):
    """A forward :func:`_forward_expression` does not follow."""


def _assign(target: Any, value: tuple, names: dict) -> None:
    import ast

    if isinstance(target, ast.Name):
        names[target.id] = value
    elif isinstance(target, ast.Tuple) and len(target.elts) == 2 and value[0] == "chunk":
        for index, element in enumerate(target.elts):
            if not isinstance(element, ast.Name):
                raise _NotGatedError
            names[element.id] = ("half", index, value)
    else:
        raise _NotGatedError


def _expression(node: Any, names: dict) -> tuple:
    import ast

    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        return ("mul", _expression(node.left, names), _expression(node.right, names))
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
        chunk = _expression(node.value, names)
        if chunk[0] == "chunk" and node.slice.value in (0, 1):
            return ("half", node.slice.value, chunk)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return _call(node, names)
    raise _NotGatedError


def _call(node: Any, names: dict) -> tuple:
    import ast

    func, args, keywords = node.func, node.args, node.keywords
    owner = ast.unparse(func.value)
    if owner == "self" and len(args) == 1 and not keywords:
        return ("call", func.attr, _expression(args[0], names))
    if func.attr == "silu" and owner in _FUNCTIONAL and len(args) == 1 and not keywords:
        return ("fn", "silu", _expression(args[0], names))
    if func.attr == "chunk" and [ast.unparse(a) for a in args[:1]] == ["2"]:
        dims = [ast.unparse(a) for a in args[1:]] + [
            ast.unparse(k.value) for k in keywords if k.arg == "dim"
        ]
        if dims == ["-1"] and len(args) + len(keywords) == 2:
            return ("chunk", _expression(func.value, names))
    raise _NotGatedError


_FUNCTIONAL = {"F", "nn.functional", "torch.nn.functional"}


class _LeanGatedForward:
    """A gated MLP's forward that keeps ``gate(x)`` and ``up(x)``, not their product.

    A plain object rather than a closure, so a model holding it still deep-copies and pickles.
    """

    def __init__(self, module: Any, layout: _Layout, up_first: bool) -> None:
        self.module, self.layout, self.up_first = module, layout, up_first

    def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        import torch

        module, layout = self.module, self.layout
        if args or kwargs or not _keeps_less(module, x, LEAN_MLP_ON):
            return type(module).forward(module, x, *args, **kwargs)
        act, down = _activation(module, layout), getattr(module, layout.down)
        gate, up = _gate_and_up(module, layout, x, self.up_first)
        product = _gated_product().apply(gate, up, act)
        if product.numel() == 0:
            return down(product)
        storage = product.untyped_storage().data_ptr()
        # hooks already in place (an offloader's, a probe's) still get what down keeps besides
        outer_pack, outer_unpack = _outer_hooks()

        def pack(tensor: Any) -> Any:
            if tensor.dtype != product.dtype or tensor.untyped_storage().data_ptr() != storage:
                return outer_pack(tensor)
            return _ProductView(tensor)

        def unpack(packed: Any) -> Any:
            if not isinstance(packed, _ProductView):
                return outer_unpack(packed)
            with torch.no_grad():
                again = act(gate) * up
            return again.as_strided(packed.shape, packed.stride, packed.offset)

        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            return down(product)


def _keeps_less(module: Any, x: Any, devices: set[str]) -> bool:
    """Whether a lean forward applies: a training forward with gradients on one of
    ``devices``, not traced by ``torch.compile`` (the compiler chooses what to keep) nor
    inside a checkpointed block (which keeps less still)."""
    import torch

    return (
        x.device.type in devices
        and module.training
        and torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
        and not _checkpointing()
    )


def _outer_hooks() -> tuple[Any, Any]:
    """The saved-tensor hooks in place, or ones that keep the tensor itself."""
    import torch

    hooks = torch._C._autograd._top_saved_tensors_default_hooks(False)
    return hooks if hooks is not None else (_itself, _itself)


def _itself(tensor: Any) -> Any:
    return tensor


def _checkpointing() -> bool:
    """Whether the forward runs inside a (non-reentrant) checkpointed block: nested hooks
    there would keep ``gate(x)`` and ``up(x)``, which checkpointing means to drop."""
    import torch

    hooks = torch._C._autograd._top_saved_tensors_default_hooks(False)
    return hooks is not None and getattr(hooks[0], "__module__", "") == "torch.utils.checkpoint"


class _ProductView:
    """Where a tensor kept for backward sat in the gated product: shape, stride, offset."""

    __slots__ = ("offset", "shape", "stride")

    def __init__(self, tensor: Any) -> None:
        self.shape, self.stride = tuple(tensor.shape), tensor.stride()
        self.offset = tensor.storage_offset()


@functools.cache
def _gated_product() -> type:
    """``act(gate) * up`` as one autograd step that keeps ``gate`` and ``up`` only."""
    import torch

    class GatedProduct(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, gate: Any, up: Any, act: Any) -> Any:
            ctx.save_for_backward(gate, up)
            ctx.act = act
            return act(gate) * up

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            gate, up = ctx.saved_tensors
            with torch.enable_grad():
                leaf = gate.detach().requires_grad_(True)
                activated = ctx.act(leaf)
            grad_up = (grad * activated.detach()).to(up.dtype)
            grad_activated = (grad * up).to(activated.dtype)
            (grad_gate,) = torch.autograd.grad(activated, leaf, grad_activated)
            return grad_gate, grad_up, None

    return GatedProduct


# Device types where RMSNorms keep their 16-bit input for backward instead of its float32
# copy (lean_norm_inputs), for the reason of LEAN_MLP_ON; on CPU the compute is float32 by
# default, which has no copy to spare.
LEAN_NORM_ON = {"cuda"}
_SIXTEEN_BIT = ("bfloat16", "float16")


def lean_norm_inputs(model: Any) -> int:
    """Make each RMSNorm keep its 16-bit input for backward, not the float32 copy it makes.

    transformers' RMSNorms compute in float32: for a bfloat16 input they keep a float32 copy
    of it for backward, twice its size (on a Gemma 3 270M-shaped block, with
    :func:`lean_gated_mlps`, 15.5 of the 33.5 KB kept per token). Here any float32 tensor a
    norm keeps that autograd made by converting its input to float32 is kept as
    the input itself (a compact copy where the input is part of a bigger tensor) and made
    float32 again in backward: the same values, so the same losses and gradients. Done with
    forward hooks, not a new forward: transformers swaps an RMSNorm's forward for a hub
    kernel's, or back, whenever the model changes mode. Norms given float32
    (the CPU default), forwards without gradients, under ``torch.compile``, inside
    checkpointed blocks and on devices not in ``LEAN_NORM_ON`` (CUDA) run as written.
    Returns how many norms were changed; calling it again changes none.

    Examples:
        >>> import torch
        >>> class RMSNorm(torch.nn.Module):
        ...     def forward(self, x):
        ...         x32 = x.float()
        ...         return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype)
        >>> norms = torch.nn.ModuleList([RMSNorm(), torch.nn.LayerNorm(4)])
        >>> lean_norm_inputs(norms), lean_norm_inputs(norms)
        (1, 0)
    """
    changed = 0
    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm") and not getattr(module, "_lean_norm", False):
            hooks = _LeanNormHooks()
            module.register_forward_pre_hook(hooks.enter)
            module.register_forward_hook(hooks.leave, always_call=True)
            module._lean_norm = True
            changed += 1
    return changed


class _LeanNormHooks:
    """An RMSNorm's forward hooks: keep its 16-bit input in place of its float32 copy."""

    def __init__(self) -> None:
        self.entered: list[Any] = []  # per forward under way: its saved-tensor hooks, or None

    def enter(self, module: Any, args: tuple) -> None:
        import torch

        if torch.compiler.is_compiling():
            return
        x = args[0] if len(args) == 1 else None
        if (
            x is None
            or str(x.dtype).removeprefix("torch.") not in _SIXTEEN_BIT
            or not _keeps_less(module, x, LEAN_NORM_ON)
        ):
            self.entered.append(None)
            return
        hooks = torch.autograd.graph.saved_tensors_hooks(*_float_copy_hooks(x))
        hooks.__enter__()
        self.entered.append(hooks)

    def leave(self, module: Any, args: tuple, output: Any) -> None:
        import torch

        if torch.compiler.is_compiling() or not self.entered:
            return
        hooks = self.entered.pop()
        if hooks is not None:
            hooks.__exit__(None, None, None)


def _float_copy_hooks(x: Any) -> tuple[Any, Any]:
    """Saved-tensor hooks that keep ``x`` in place of any float32 copy made of it."""
    import torch

    outer_pack, outer_unpack = _outer_hooks()
    packed_input: list[Any] = []  # the input as hooks already in place keep it, once

    def is_copy(tensor: Any) -> bool:
        # Known by its autograd history, not by its values: reading a comparison's result
        # would wait for the GPU at every norm. (A conversion's output is a tensor of its
        # own, never a view into a bigger one.)
        return (
            tensor.dtype == torch.float32 and tensor.shape == x.shape and _converted_from(tensor, x)
        )

    def pack(tensor: Any) -> Any:
        if not is_copy(tensor):
            return outer_pack(tensor)
        if not packed_input:
            packed_input.append(outer_pack(x if _whole_storage(x) else x.detach().clone()))
        return _FloatCopy(packed_input[0], tensor.stride())

    def unpack(packed: Any) -> Any:
        if not isinstance(packed, _FloatCopy):
            return outer_unpack(packed)
        kept = outer_unpack(packed.input_)
        again = torch.empty_strided(kept.shape, packed.stride, dtype=torch.float32,
                                    device=kept.device)  # fmt: skip
        return again.copy_(kept)  # laid out as the copy was

    return pack, unpack


def _converted_from(tensor: Any, x: Any) -> bool:
    """Whether autograd made ``tensor`` by converting ``x`` itself (``x.float()``,
    ``x.to(torch.float32)``) on the same device: the same values, bit for bit."""
    node = tensor.grad_fn
    if node is None or node.name() != "ToCopyBackward0" or tensor.device != x.device:
        return False
    source, output = node.next_functions[0]
    if x.grad_fn is not None:
        return source is x.grad_fn and output == x.output_nr
    return getattr(source, "variable", None) is x  # a leaf


def _whole_storage(x: Any) -> bool:
    """Whether ``x`` spans its storage: keeping a part (Qwen3.5's query, half of what its
    projection made) would keep the whole, so a compact copy of the part is kept instead."""
    return x.untyped_storage().nbytes() == x.numel() * x.element_size()


class _FloatCopy:
    """A float32 copy of ``input`` a norm kept, to be made again in backward."""

    __slots__ = ("input_", "stride")

    def __init__(self, input_: Any, stride: tuple[int, ...]) -> None:
        self.input_, self.stride = input_, stride


def __getattr__(name: str) -> Any:
    if name == "DropoutLinear":  # built on first use, so that unpickling can find it
        return _dropout_linear_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _layer_scale(name: str, layers: int, decay: float | None, below: bool = False) -> float:
    """The learning-rate factor of parameter ``name``: ``decay`` per block below the top.
    ``below``: a parameter outside the blocks that sits below block 0 (an embedding); the
    others outside them (the final norm, an untied head) sit above the top block."""
    if not decay or decay == 1:
        return 1.0
    match = _LAYER.search(name)
    depth = int(match.group(1)) if match else (-1 if below else layers)
    return float(decay ** max(0, layers - 1 - depth))


def _below_the_blocks(model: Any) -> set[int]:
    """Ids of the embedding parameters (token and position tables): what sits below block 0."""
    import torch

    found = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Embedding) and not _LAYER.search(f"{name}."):
            found.update(id(p) for p in module.parameters())
    return found


def optimizer_groups(
    model: Any, lr: float, weight_decay: float, layer_lr_decay: float | None
) -> list[dict[str, Any]]:
    """AdamW parameter groups: per-layer learning rates and no decay on biases and norms.

    Examples:
        >>> # torch.optim.AdamW(optimizer_groups(model, 2e-4, 0.0, None), lr=2e-4)
    """
    config = (
        model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    )
    layers = int(getattr(config, "num_hidden_layers", 1))
    below = _below_the_blocks(model) if layer_lr_decay else set()
    groups: dict[tuple[float, float], list[Any]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            scale = _layer_scale(name, layers, layer_lr_decay, id(param) in below)
            decay = weight_decay if param.ndim >= 2 else 0.0
            groups.setdefault((scale, decay), []).append(param)
    return [
        {"params": params, "lr": lr * scale, "weight_decay": decay}
        for (scale, decay), params in groups.items()
    ]


def pad_id(tokenizer: Any) -> int:
    """The id to pad with: the tokenizer's pad token, else its end-of-sequence token, else 0.

    Examples:
        >>> from types import SimpleNamespace
        >>> pad_id(SimpleNamespace(pad_token_id=None, eos_token_id=2))
        2
    """
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def warmup_steps(warmup: int | float, total: int) -> int:
    """Warm-up steps: ``warmup`` itself if an int, else that fraction of ``total`` rounded up
    (as transformers' ``warmup_ratio``), but never the whole run.

    A warm-up starts at lr 0, so the default 3% of a 1-step run (a quick check, or a few
    rows in large batches) rounded up to that one step, which trained nothing: the run
    ended "finished" with the adapter as it started. A fraction leaves the last step out.

    Examples:
        >>> warmup_steps(0.1, 50), warmup_steps(3, 50)
        (5, 3)
        >>> warmup_steps(0.03, 1), warmup_steps(0.03, 2), warmup_steps(0.99, 10)
        (0, 1, 9)
    """
    if isinstance(warmup, int):
        return warmup
    return max(0, min(math.ceil(warmup * total), total - 1))


def add_neftune(model: Any, alpha: float) -> Any:
    """Add NEFTune noise to input embeddings in training mode; returns the hook handle.

    Noise is uniform in ``±alpha / sqrt(seq_len * hidden)`` (Jain et al. 2023,
    arXiv:2310.05914, the formula transformers' Trainer uses).

    Examples:
        >>> # handle = add_neftune(model, 5.0); ...; handle.remove()
    """
    import torch

    def hook(module: Any, inputs: Any, output: Any) -> Any:
        if not module.training:
            return output
        scale = alpha / (output.size(1) * output.size(2)) ** 0.5
        return output + torch.zeros_like(output).uniform_(-scale, scale)

    hook._workbench_neftune = True  # type: ignore[attr-defined]  # found again by the mark
    return model.get_input_embeddings().register_forward_hook(hook)


def remove_training_hooks(model: Any) -> None:
    """Take off what an earlier run put on ``model`` to train it: NEFTune's noise on the
    input embeddings, and gradient checkpointing. A model merged after a run keeps both
    otherwise, and the next run would train with noise it did not ask for.

    Examples:
        >>> import torch
        >>> embedding = torch.nn.Embedding(4, 2)
        >>> model = torch.nn.Module(); model.get_input_embeddings = lambda: embedding
        >>> _ = add_neftune(model, 5.0)
        >>> remove_training_hooks(model); len(embedding._forward_hooks)
        0
    """
    embeddings = model.get_input_embeddings()
    for key, hook in list(embeddings._forward_hooks.items()):
        if getattr(hook, "_workbench_neftune", False):
            del embeddings._forward_hooks[key]
    if getattr(model, "is_activation_checkpointing", None) is not None:  # transformers 5
        if model.is_activation_checkpointing:
            model.activation_checkpointing_disable()
    elif getattr(model, "is_gradient_checkpointing", False):
        model.gradient_checkpointing_disable()
