"""Deployment: merge an adapter, export, quantize, and serve over HTTP.

Examples:
    >>> from workbench.deploy import merge_adapter, export_model, quantize_export, serve_model
"""

from workbench.deploy.export import ExportFormat, check_export, export_model
from workbench.deploy.gguf_writer import GGUF_ARCHITECTURES, write_gguf
from workbench.deploy.merge import is_adapted, merge_adapter, plain_model
from workbench.deploy.model_card import ModelCard
from workbench.deploy.paths import export_target
from workbench.deploy.quantize import ModelMeasure, QuantizeReport, quantize_export
from workbench.deploy.serve import ServeError, Server, check_port, serve_model

__all__ = [
    "GGUF_ARCHITECTURES",
    "ExportFormat",
    "ModelCard",
    "ModelMeasure",
    "QuantizeReport",
    "ServeError",
    "Server",
    "check_export",
    "check_port",
    "export_model",
    "export_target",
    "is_adapted",
    "merge_adapter",
    "plain_model",
    "quantize_export",
    "serve_model",
    "write_gguf",
]
