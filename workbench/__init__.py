"""Tuning Workbench: fine-tune small language models step by step in a notebook.

Examples:
    In a notebook, ``s.load_model("gemma-3-270m")`` loads the built-in model; the tiny model
    below is built on the spot and takes the same path:

    >>> import workbench as wb
    >>> s = wb.Session("/tmp/wb-doc-init-run", verbose=False)
    >>> s.load_model(str(wb.build_tiny_model("/tmp/wb-doc-init-model"))).architecture
    'LlamaForCausalLM'
    >>> rows = [{"question": f"{i} plus {i}?", "answer": str(2 * i)} for i in range(100)]
    >>> report = s.load_data(rows)
    >>> report.train, report.validation
    (90, 10)
    >>> s.close()
"""

from workbench.errors import (
    CacheError,
    DataError,
    DependencyError,
    ModelLoadError,
    NoDataError,
    NoModelError,
    SessionStateError,
    SpecError,
    UnknownSettingError,
    WorkbenchError,
    WorkbenchWarning,
    WriteError,
)
from workbench.models.builtin import BUILTIN_MODELS, DEFAULT_MODEL
from workbench.models.info import ModelInfo
from workbench.models.tiny import build_tiny_model
from workbench.session import Session

__version__ = "0.1.0"

_LAZY = {
    "FitTable": "workbench.models.memory",
    "MemoryEstimate": "workbench.models.memory",
    "estimate_memory": "workbench.models.memory",
    "fit_table": "workbench.models.memory",
    "LoRA": "workbench.train",
    "LaunchSpec": "workbench.train.launch",
    "TrainSpec": "workbench.train",
    "Run": "workbench.train",
    "RunState": "workbench.train",
    "Evaluation": "workbench.evaluation",
    "compare": "workbench.evaluation",
    "parse_tool_calls": "workbench.data.tool_calls",
}


def __getattr__(name: str):
    """Import the memory, training, evaluation and tool-call helpers on first use, so
    ``import workbench`` stays light."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")


__all__ = [
    "BUILTIN_MODELS",
    "DEFAULT_MODEL",
    "CacheError",
    "DataError",
    "DependencyError",
    "Evaluation",
    "FitTable",
    "LaunchSpec",
    "LoRA",
    "MemoryEstimate",
    "ModelInfo",
    "ModelLoadError",
    "NoDataError",
    "NoModelError",
    "Run",
    "RunState",
    "Session",
    "SessionStateError",
    "SpecError",
    "TrainSpec",
    "UnknownSettingError",
    "WorkbenchError",
    "WorkbenchWarning",
    "WriteError",
    "__version__",
    "build_tiny_model",
    "compare",
    "estimate_memory",
    "fit_table",
    "parse_tool_calls",
]
