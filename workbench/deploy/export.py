"""Export a model as a standard folder: merged safetensors, a peft adapter, or GGUF.

Every export is written to a temporary folder and renamed, so it is complete or absent.

Examples:
    >>> from pathlib import Path
    >>> from workbench.models.tiny import build_tiny_model
    >>> from workbench.models.loading import load_model
    >>> loaded = load_model(str(build_tiny_model("/tmp/tiny-export-doc")), on_event=len)
    >>> out = export_model(loaded.model, loaded.tokenizer, Path("/tmp/export-doc"),
    ...                    "safetensors", ModelCard("tiny", "safetensors"), overwrite=True)
    >>> sorted(p.name for p in out.iterdir())[:3]
    ['README.md', 'chat_template.jinja', 'config.json']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

from workbench._io import staging_folder
from workbench.deploy.merge import is_adapted, merge_adapter
from workbench.deploy.model_card import ModelCard
from workbench.deploy.paths import check_writable_target
from workbench.errors import SpecError

__all__ = ["ExportFormat", "export_model"]

ExportFormat = Literal["safetensors", "adapter", "gguf"]


def export_model(
    model: Any,
    tokenizer: Any,
    target: Path,
    export_format: ExportFormat,
    card: ModelCard,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` to ``target`` in ``export_format`` with its tokenizer and model card.

    Args:
        model: A transformers model or a peft model. ``safetensors`` and ``gguf`` merge an
            adapter into a copy-free merged model first (the caller's model is merged).
        tokenizer: Saved beside the weights, with its chat template.
        target: The folder to create.
        export_format: ``safetensors`` (loads with ``from_pretrained``, no workbench needed),
            ``adapter`` (peft adapter only) or ``gguf`` (a ``model.gguf`` file).
        card: The model card written as README.md.
        overwrite: Replace a non-empty ``target``.

    Raises:
        SpecError: unknown format, non-empty target without ``overwrite``, or ``adapter``
            asked for a model without one.

    Examples:
        >>> export_model(loaded.model, loaded.tokenizer, Path("/tmp/x"), "onnx", card)
        Traceback (most recent call last):
        workbench.errors.SpecError: format='onnx' is not one of ('safetensors', 'adapter', 'gguf').
    """
    if export_format not in get_args(ExportFormat):
        raise SpecError(f"format={export_format!r} is not one of {get_args(ExportFormat)}.")
    if export_format == "adapter" and not is_adapted(model):
        raise SpecError("format='adapter' needs a model with an adapter: train one first.")
    check_writable_target(target, overwrite)
    with staging_folder(target, replace=True) as tmp:
        _WRITERS[export_format](model, tokenizer, tmp)
        (tmp / "README.md").write_text(card.render(), encoding="utf-8")
    return target


def _write_safetensors(model: Any, tokenizer: Any, folder: Path) -> None:
    plain = merge_adapter(model) if is_adapted(model) else model
    if getattr(plain, "hf_quantizer", None) is not None:
        plain = plain.dequantize()
    plain.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _write_adapter(model: Any, tokenizer: Any, folder: Path) -> None:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _write_gguf(model: Any, tokenizer: Any, folder: Path) -> None:
    from workbench.deploy.gguf_writer import write_gguf

    plain = merge_adapter(model) if is_adapted(model) else model
    write_gguf(plain, tokenizer, folder / "model.gguf")


_WRITERS = {"safetensors": _write_safetensors, "adapter": _write_adapter, "gguf": _write_gguf}
