"""Models: loading (built-in GGUF, folders, hub ids), the cache, info, memory estimates.

Examples:
    >>> from workbench.models import build_tiny_model, load_model, model_info
    >>> loaded = load_model(str(build_tiny_model("/tmp/wb-doc-models")), on_event=len)
    >>> info = model_info(loaded)
    >>> info.architecture, info.layers, info.hidden_size
    ('LlamaForCausalLM', 2, 64)
"""

from workbench.models.builtin import BUILTIN_MODELS, DEFAULT_MODEL, BuiltinModel
from workbench.models.info import ModelInfo, lora_target_names, model_info
from workbench.models.loading import LoadedModel, ModelSource, load_model, resolve_source
from workbench.models.tiny import build_tiny_model

__all__ = [
    "BUILTIN_MODELS",
    "DEFAULT_MODEL",
    "BuiltinModel",
    "LoadedModel",
    "ModelInfo",
    "ModelSource",
    "build_tiny_model",
    "load_model",
    "lora_target_names",
    "model_info",
    "resolve_source",
]
