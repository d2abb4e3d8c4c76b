"""Hide eight known third-party messages that are noise to a workbench user, and only those.

Three libraries print into training and loading cells, and none of these messages is the
user's to act on:

* bitsandbytes (0.50, ``bitsandbytes/backends/cpu/ops.py``) logs a warning on its logger
  ``bitsandbytes.backends.cpu.ops`` when it is first imported on a CPU with AVX512-BF16 and
  the optional ``kernels`` package is absent: ``Failed to load CPU gemm_4bit_forward from
  kernels-community: No module named 'kernels'. Please make sure you already `pip install
  kernels` ...``. bitsandbytes then uses its own CPU kernel; nothing is wrong.
* transformers (5.x, ``modeling_utils.py``) warns ``FutureWarning: `is_gradient_checkpointing`
  is deprecated`` whenever the property is read. The workbench never reads it: peft's
  ``PeftModel.__init__`` does (``getattr(model, "is_gradient_checkpointing", True)``), inside
  ``get_peft_model``, on every run.
* peft (0.21, ``tuners/tuners_utils.py``) warns ``RuntimeWarning: The following rank_pattern
  keys did not match any targeted module and were ignored: ['.*\\.gate_up_proj']`` (and the
  same of ``alpha_pattern``) when it adapts a transformers 5 mixture of experts' fused expert
  weights (Qwen3-MoE, OLMoE, Mixtral): its own v4-to-v5 conversion of ``"all-linear"`` adds
  those patterns. The workbench's ``LoRA`` sets no rank or alpha pattern, so inside a
  workbench call the patterns are always peft's own.
* peft (``tuners/lora/layer.py``) warns ``UserWarning: fan_in_fan_out is set to False but the
  target module is `Conv1D`. Setting fan_in_fan_out to True.`` when it adapts GPT-2's Conv1D
  layers: the setting is peft's to fix per layer (a model's Linear layers need it False),
  and it does.
* transformers (``modeling_utils.py``, GPT-2 and a few other families) logs ``We strongly
  recommend passing in an `attention_mask` since your input_ids may be padded`` on logger
  ``transformers.modeling_utils`` when a batch holds the pad token. The workbench pads on the
  right, so under causal attention no real token sees a pad and the mask would change
  nothing (``train/loss.py``; ``tests/test_train_inputs.py`` compares). transformers logs it
  once per process (``warning_once``), so once hidden inside a workbench call it stays
  unsaid for the user's own calls too.
* transformers (``integrations/hub_kernels.py``) logs ```causal_conv1d_fn` is falling back to
  its reference PyTorch implementation because `causal-conv1d` is not installed ... install
  `causal-conv1d` for the optimized kernel`` when an LFM2-style model runs its short
  convolutions. Those kernel packages are CUDA-only: on a machine without CUDA the advice
  cannot be followed, so it is hidden there (and shown on a GPU machine, where it can).

* bitsandbytes (0.50, ``autograd/_functions.py``) logs ``MatMul8bitLt: inputs will be cast
  from torch.float32 to float16 during quantization`` on every forward pass of every 8-bit
  layer (about 1,500 lines for one ``quantize("8bit")`` of the tiny model): LLM.int8 always
  quantizes its inputs so, and there is nothing for the user to change.
* transformers (5.x, ``integrations/bitsandbytes.py``) logs ``You are loading your model using
  eetq but no linear modules were found in your model`` when bitsandbytes quantized no layer
  (it names the wrong library). The workbench then raises its own error, which says why
  (``models/loading.py``: Falcon's layers subclass ``torch.nn.Linear``), so inside a
  workbench call the misleading line is dropped.

**Scope.** A message is hidden only while workbench code is on the call stack of the thread
that emits it (a ``workbench.*`` module's frame: ``Session.train`` and what it calls, the
training worker thread, a panel's handler). The same message from the user's own code (their
own ``import bitsandbytes``, their own ``model.is_gradient_checkpointing``) still shows, and
every other warning and log record passes untouched, inside workbench calls too.

**Why this mechanism.** ``warnings.catch_warnings`` swaps the process-wide filter list on entry
and restores it on exit, so with the training worker thread and the notebook's main thread
both inside such blocks the restores can interleave and lose (or leave behind) filters; it is
documented as not thread-safe. Instead the filters are installed once and never removed:

* a :class:`logging.Filter` on each of the loggers ``bitsandbytes.backends.cpu.ops``,
  ``bitsandbytes.autograd._functions``, ``transformers.modeling_utils``,
  ``transformers.integrations.hub_kernels`` and ``transformers.integrations.bitsandbytes``,
  which drops a record when its text starts with the known message and the stack holds a
  workbench frame;
* one entry per warning at the head of ``warnings.filters`` (``ignore``, its category and module:
  ``FutureWarning`` from ``transformers.modeling_utils``, ``RuntimeWarning`` from
  ``peft.tuners.tuners_utils``, ``UserWarning`` from ``peft.tuners.lora.layer``) whose message
  matcher accepts the known text only when the stack holds a workbench frame. ``warnings``
  calls the entry's ``.match(text)`` (a compiled regex, or any object with that method); an
  ``ignore`` does not record the warning in the module's ``__warningregistry__``, so a later
  user-side call still shows it.

The stack is the emitting thread's own, so the rule needs no shared state, nothing to
restore, and holds in any thread. The entries go first in ``warnings.filters``, before the
user's own: under ``python -W error`` or pytest's ``filterwarnings = error`` (filters put in
front of any appended one) peft's read of the deprecated property failed every
``s.train()``. Matched by text, category, module and a workbench frame, they catch nothing
else, so every other warning, the user's own included, still meets the user's filters.
:func:`quiet_third_party` puts them first (again if a ``catch_warnings`` block, a later
``simplefilter`` or ``resetwarnings()`` moved or dropped them); it runs when this module is
first imported (by ``models/loading.py``, so by ``import workbench``) and again where a model
is loaded and where a run starts.

**Progress bars.** transformers draws ``\\r`` bars on stderr as it reads and writes weights
("Loading weights", "Writing model shards"): :func:`no_transformers_bars` turns them off
around the workbench's own loads and saves (datasets' bars are off the same way, in
``train/store.py``).

Examples:
    The bitsandbytes message is dropped when workbench code logs it (here the event hub, which
    calls the listener) and kept when the caller is not the workbench (this example's own
    namespace is ``workbench._quiet``, which does not count):

    >>> import logging
    >>> from workbench.events import EventHub
    >>> logger = logging.getLogger(BNB_LOGGER)
    >>> text = "Failed to load CPU gemm_4bit_forward from kernels-community: no kernels"
    >>> record = logger.makeRecord(BNB_LOGGER, logging.WARNING, "ops.py", 1, text, (), None)
    >>> hub, kept = EventHub(), []
    >>> _ = hub.on("progress", lambda payload: kept.append(logger.filter(record)))
    >>> hub.emit("progress"); kept.append(logger.filter(record)); kept
    [False, True]
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Any

__all__ = [
    "BNB_INTEGRATION_LOGGER",
    "BNB_LOGGER",
    "KERNELS_LOGGER",
    "TRANSFORMERS_LOGGER",
    "in_workbench_call",
    "no_transformers_bars",
    "quiet_third_party",
]

BNB_LOGGER = "bitsandbytes.backends.cpu.ops"
"""The logger bitsandbytes' CPU backend logs its missing-``kernels`` warning on."""

_BNB_KERNELS = re.compile(r"Failed to load CPU gemm_4bit_forward from kernels-community\b")
_GC_DEPRECATED = re.compile(r"`is_gradient_checkpointing` is deprecated", re.IGNORECASE)
_TRANSFORMERS_MODULE = re.compile(r"transformers\.modeling_utils\Z")
_PEFT_FUSED_PATTERNS = re.compile(
    r"The following (rank|alpha)_pattern keys did not match any targeted module"
)
_PEFT_MODULE = re.compile(r"peft\.tuners\.tuners_utils\Z")
_PEFT_CONV1D = re.compile(r"fan_in_fan_out is set to False but the target module is `Conv1D`")
_PEFT_LORA_LAYER = re.compile(r"peft\.tuners\.lora\.layer\Z")
KERNELS_LOGGER = "transformers.integrations.hub_kernels"
"""The logger transformers logs its missing-kernel-package advice on."""
_KERNEL_FALLBACK = re.compile(r"`\w+` is falling back to its reference PyTorch implementation")
TRANSFORMERS_LOGGER = "transformers.modeling_utils"
"""The logger transformers' models log their missing-``attention_mask`` advice on."""
_NO_ATTENTION_MASK = re.compile(r"We strongly recommend passing in an `attention_mask`")
BNB_INTEGRATION_LOGGER = "transformers.integrations.bitsandbytes"
"""The logger transformers logs its bitsandbytes conversion messages on."""
_NOTHING_QUANTIZED = re.compile(r"You are loading your model using eetq but no linear modules")
BNB_MATMUL_LOGGER = "bitsandbytes.autograd._functions"
"""The logger bitsandbytes' 8-bit matmul logs its input cast on, at every forward pass."""
_INT8_CAST = re.compile(r"MatMul8bitLt: inputs will be cast from \S+ to float16")
_lock = threading.Lock()


def in_workbench_call(skip: int = 1) -> bool:
    """Whether a frame of a ``workbench`` module (this one aside) is on the current stack.

    Args:
        skip: Frames to skip from the caller's (1: start at the caller's caller).

    Examples:
        >>> in_workbench_call()  # a doctest runs in the namespace of workbench._quiet
        False
        >>> from workbench.events import EventHub
        >>> hub, seen = EventHub(), []
        >>> _ = hub.on("progress", lambda payload: seen.append(in_workbench_call()))
        >>> hub.emit("progress"); seen  # the hub (workbench code) called the listener
        [True]
    """
    frame = sys._getframe(skip)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if (name == "workbench" or name.startswith("workbench.")) and name != __name__:
            return True
        frame = frame.f_back
    return False


class _ScopedMessage:
    """A ``warnings`` filter message matcher: the pattern, and only inside a workbench call."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern

    def match(self, text: str) -> bool:
        # Called by warnings for a warning no earlier filter caught: cheap unless it matches.
        return bool(self.pattern.match(text)) and in_workbench_call(2)

    def __repr__(self) -> str:
        return f"<{self.pattern.pattern!r} inside workbench calls>"


class _ScopedLogFilter(logging.Filter):
    """Drop the records whose text matches ``pattern`` when logged inside a workbench call
    (and, with ``without_cuda``, only on a machine where CUDA is not available)."""

    def __init__(self, pattern: re.Pattern[str], without_cuda: bool = False) -> None:
        super().__init__()
        self.pattern = pattern
        self.without_cuda = without_cuda

    def filter(self, record: logging.LogRecord) -> bool:
        if not (self.pattern.match(record.getMessage()) and in_workbench_call(2)):
            return True
        return self.without_cuda and _cuda_available()


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


_WARNING_ENTRIES: tuple[tuple[Any, ...], ...] = (
    ("ignore", _ScopedMessage(_GC_DEPRECATED), FutureWarning, _TRANSFORMERS_MODULE, 0),
    ("ignore", _ScopedMessage(_PEFT_FUSED_PATTERNS), RuntimeWarning, _PEFT_MODULE, 0),
    ("ignore", _ScopedMessage(_PEFT_CONV1D), UserWarning, _PEFT_LORA_LAYER, 0),
)
_LOG_FILTERS = {
    BNB_LOGGER: _ScopedLogFilter(_BNB_KERNELS),
    TRANSFORMERS_LOGGER: _ScopedLogFilter(_NO_ATTENTION_MASK),
    KERNELS_LOGGER: _ScopedLogFilter(_KERNEL_FALLBACK, without_cuda=True),
    BNB_INTEGRATION_LOGGER: _ScopedLogFilter(_NOTHING_QUANTIZED),
    BNB_MATMUL_LOGGER: _ScopedLogFilter(_INT8_CAST),
}


def quiet_third_party() -> None:
    """Install the scoped filters (idempotent, cheap: call it before noisy work).

    Examples:
        >>> quiet_third_party(); quiet_third_party()
        >>> [sum(entry is ours for entry in warnings.filters) for ours in _WARNING_ENTRIES]
        [1, 1, 1]
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("error")  # as `python -W error` or pytest's config
        ...     quiet_third_party()
        ...     warnings.filters[: len(_WARNING_ENTRIES)] == list(_WARNING_ENTRIES)
        True
    """
    with _lock:
        _put_ours_first()
        for name, log_filter in _LOG_FILTERS.items():
            logger = logging.getLogger(name)  # exists before its library is imported
            if log_filter not in logger.filters:
                logger.addFilter(log_filter)


def _put_ours_first() -> None:
    """Our entries at the head of ``warnings.filters``, the user's after them in their order."""
    filters = warnings.filters
    if list(map(id, filters[: len(_WARNING_ENTRIES)])) == list(map(id, _WARNING_ENTRIES)):
        return
    others = [f for f in filters if not any(f is ours for ours in _WARNING_ENTRIES)]
    filters[:] = [*_WARNING_ENTRIES, *others]
    mutated = getattr(warnings, "_filters_mutated", None)
    if mutated is not None:  # warnings caches its decisions until told the filters changed
        mutated()


@contextlib.contextmanager
def no_transformers_bars() -> Iterator[None]:
    """transformers' progress bars off for the block, then as they were.

    transformers' switch turns the hub's download bars off too: they are put back at once
    (a download can take minutes). Where ``HF_HUB_DISABLE_PROGRESS_BARS`` is set, it decides
    and nothing is switched.

    Examples:
        >>> from transformers.utils import logging as hf_logging
        >>> with no_transformers_bars():
        ...     hf_logging.is_progress_bar_enabled()
        False
        >>> hf_logging.is_progress_bar_enabled()
        True
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as hf_logging

    if constants.HF_HUB_DISABLE_PROGRESS_BARS is not None or not (
        hf_logging.is_progress_bar_enabled()
    ):
        yield
        return
    hub_off = are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    _hub_bars(hub_off)
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()
        _hub_bars(hub_off)


def _hub_bars(off: bool) -> None:
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    if are_progress_bars_disabled() != off:
        (disable_progress_bars if off else enable_progress_bars)()


quiet_third_party()
