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

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args

from workbench._io import check_free_space
from workbench._quiet import no_transformers_bars
from workbench.deploy.gguf_writer import (
    GGUFType,
    check_gguf_model,
    check_gguf_type,
    gguf_bytes_per_weight,
)
from workbench.deploy.merge import is_adapted, plain_model
from workbench.deploy.model_card import ModelCard
from workbench.deploy.paths import check_writable_target, staged_write
from workbench.errors import SpecError

__all__ = ["ExportFormat", "check_export", "export_bytes", "export_model"]

ExportFormat = Literal["safetensors", "adapter", "gguf"]
# Tokenizer files a model folder may carry; their sizes are added to the weights' estimate.
_TOKENIZER_FILES = (
    "tokenizer*",
    "vocab*",
    "merges*",
    "special_tokens_map*",
    "*.model",
    "chat_template*",
)


def check_export(
    model: Any,
    target: Path,
    export_format: str,
    overwrite: bool = False,
    gguf_type: GGUFType = "f32",
) -> int:
    """Check an export can be written, before anything is merged or written; returns its size.

    Checks the format and ``gguf_type``, that ``adapter`` has an adapter to write, that
    ``target`` is not a file nor a non-empty folder (unless ``overwrite``), that its disk is
    writable and that it has room for the estimated bytes (:func:`export_bytes`).

    Raises:
        SpecError: unknown format or ``gguf_type``, ``gguf_type`` for a format other than
            ``gguf``, a target named like a file (``model.gguf``), a ``gguf`` export of a
            model llama.cpp would run differently
            (:func:`~workbench.deploy.gguf_writer.check_gguf_model`), non-empty target without
            ``overwrite``, or ``adapter`` asked for a model without one.
        DependencyError: a K-quant ``gguf_type`` without llama-cpp-python, which makes it.
        WriteError: the target's disk is read-only or has too little free space.

    Examples:
        >>> from workbench.models.tiny import build_tiny_model
        >>> from workbench.models.loading import load_model
        >>> model = load_model(str(build_tiny_model("/tmp/tiny-export-doc")), on_event=len).model
        >>> check_export(model, Path("/tmp/x"), "onnx")
        Traceback (most recent call last):
        workbench.errors.SpecError: format='onnx' is not one of ('safetensors', 'adapter', 'gguf').
        >>> check_export(model, Path("/tmp/wb-export-check"), "adapter")
        Traceback (most recent call last):
        workbench.errors.SpecError: format='adapter' needs a model with an adapter: train one \
first (after merge(), the adapter is part of the weights: export those as safetensors).
        >>> check_export(model, Path("/tmp/wb-export-check"), "safetensors") > 0
        True
    """
    if export_format not in get_args(ExportFormat):
        raise SpecError(f"format={export_format!r} is not one of {get_args(ExportFormat)}.")
    check_gguf_type(gguf_type)
    if gguf_type != "f32" and export_format != "gguf":
        msg = f"gguf_type={gguf_type!r} applies to format='gguf' only, not {export_format!r}."
        raise SpecError(msg)
    if export_format == "adapter" and not is_adapted(model):
        raise SpecError(
            "format='adapter' needs a model with an adapter: train one first (after merge(), "
            "the adapter is part of the weights: export those as safetensors)."
        )
    _refuse_a_file_name(target, export_format)
    if export_format == "gguf":
        check_gguf_model(model.config)
    check_writable_target(target, overwrite)
    # (f32 passes two arguments: tests/test_export_integrity.py stubs a two-argument estimate)
    sized = {} if gguf_type == "f32" else {"gguf_type": gguf_type}
    needed = export_bytes(model, export_format, **sized)
    # The files are staged beside the target, so its parent is where they must fit.
    check_free_space(target.parent, needed, f"the {export_format} export to {target}")
    return needed


_FILE_SUFFIXES = (".gguf", ".safetensors")


def _refuse_a_file_name(target: Path, export_format: str) -> None:
    """An export is a folder: ``export("model.gguf")`` would make a folder named like a file,
    which llama.cpp cannot open (and, without ``format="gguf"``, holding safetensors)."""
    if target.suffix.lower() not in _FILE_SUFFIXES:
        return
    inside = {"gguf": "model.gguf", "adapter": "adapter_model.safetensors"}
    folder = target.with_suffix("")
    raise SpecError(
        f"{target} names a {target.suffix} file, but an export is a folder (its weights, "
        f"tokenizer, README.md{', Modelfile' if export_format == 'gguf' else ''}): give a "
        f"folder, as export({str(folder)!r}, format={export_format!r}) writes "
        f"{folder / inside.get(export_format, 'model.safetensors')}."
    )


def export_model(
    model: Any,
    tokenizer: Any,
    target: Path,
    export_format: ExportFormat,
    card: ModelCard,
    overwrite: bool = False,
    gguf_type: GGUFType = "f32",
    before_placing: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``model`` to ``target`` in ``export_format`` with its tokenizer and model card.

    The target is checked (:func:`check_export`) before the model is touched. ``model`` is
    never changed: ``safetensors`` and ``gguf`` merge the adapter into a copy
    (:func:`~workbench.deploy.merge.plain_model`). The files are written to a temporary
    folder renamed to ``target`` at the end, so on any failure ``target`` is as it was.

    Args:
        model: A transformers model or a peft model.
        tokenizer: Saved beside the weights, with its chat template.
        target: The folder to create.
        export_format: ``safetensors`` (loads with ``from_pretrained``, no workbench needed),
            ``adapter`` (peft adapter only) or ``gguf`` (a ``model.gguf`` file that
            llama.cpp and Ollama run, with an Ollama ``Modelfile`` beside it).
        card: The model card written as README.md.
        overwrite: Replace a non-empty ``target``.
        gguf_type: Tensor type of a ``gguf`` export's weight matrices: ``f32``, ``f16``,
            ``q8_0``, ``q4_0``, or a K-quant made by llama.cpp (``q6_k``, ``q5_k_m``,
            ``q4_k_m``, ``q3_k_m``, ``q2_k``; see :mod:`workbench.deploy.gguf_writer`).
        before_placing: Called with the complete staging folder just before it is renamed
            to ``target`` (:func:`~workbench.deploy.paths.staged_write`).

    Raises:
        SpecError: unknown format or ``gguf_type``, non-empty target without ``overwrite``,
            or ``adapter`` asked for a model without one.
        DependencyError: a K-quant ``gguf_type`` without llama-cpp-python, which makes it.
        WriteError: the disk is read-only or full ("no space left on device at PATH, N MB
            needed"), found before writing or while writing, or llama.cpp failed to quantize.

    Examples:
        >>> export_model(None, None, Path("/tmp/x"), "onnx", ModelCard("tiny", "onnx"))
        Traceback (most recent call last):
        workbench.errors.SpecError: format='onnx' is not one of ('safetensors', 'adapter', 'gguf').
    """
    needed = check_export(model, target, export_format, overwrite, gguf_type)
    with staged_write(target, needed, before_placing) as tmp, no_transformers_bars():
        _WRITERS[export_format](model, tokenizer, tmp, gguf_type)  # no "\r" bars in the cell
        (tmp / "README.md").write_text(card.render(), encoding="utf-8")
    return target


def export_bytes(model: Any, export_format: str, gguf_type: GGUFType = "f32") -> int:
    """Estimate the bytes an export writes: its weights plus the tokenizer files.

    Counts what is written, not what is in memory: a 4-bit layer is written dequantized
    (in its compute dtype), GGUF in its ``gguf_type`` at its largest
    (:func:`~workbench.deploy.gguf_writer.gguf_bytes_per_weight`), an adapter is only its
    LoRA tensors.

    Examples:
        >>> from workbench.models.tiny import build_tiny_model
        >>> from workbench.models.loading import load_model
        >>> model = load_model(str(build_tiny_model("/tmp/tiny-export-doc")), on_event=len).model
        >>> export_bytes(model, "gguf") >= 4 * model.num_parameters()
        True
    """
    if export_format == "adapter":
        tensors = [p for name, p in model.named_parameters() if "lora_" in name]
        return sum(p.numel() * p.element_size() for p in tensors) + _tokenizer_bytes(model)
    gguf_size = gguf_bytes_per_weight(gguf_type)
    float_size = gguf_size if export_format == "gguf" else _float_size(model)
    total = 0.0
    for name, param in model.named_parameters():
        if "lora_" in name:
            continue
        shape = getattr(getattr(param, "quant_state", None), "shape", None)
        if shape is not None or type(param).__name__ == "Int8Params":
            total += math.prod(shape or param.shape) * float_size
        else:
            size = gguf_size if export_format == "gguf" else param.element_size()
            total += param.numel() * size
    return math.ceil(total) + _tokenizer_bytes(model)


def _float_size(model: Any) -> int:
    for param in model.parameters():
        if param.dtype.is_floating_point:
            return param.element_size()
    return 4


def _tokenizer_bytes(model: Any) -> int:
    """The size of the tokenizer files in the folder the model was loaded from (or 1 MB)."""
    source = Path(str(getattr(model.config, "_name_or_path", "") or "."))
    if not source.is_dir():
        return 1024 * 1024
    files = {p for pattern in _TOKENIZER_FILES for p in source.glob(pattern) if p.is_file()}
    return sum(p.stat().st_size for p in files) + 64 * 1024


def _write_safetensors(model: Any, tokenizer: Any, folder: Path, _gguf_type: str) -> None:
    plain_model(model).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _write_adapter(model: Any, tokenizer: Any, folder: Path, _gguf_type: str) -> None:
    # Only the adapter's own tensors: model.state_dict() would unpack 4-bit layers that
    # bitsandbytes packed for its CPU kernel, which changes what they compute afterwards.
    adapter = {name: p.detach() for name, p in model.named_parameters() if "lora_" in name}
    model.save_pretrained(folder, state_dict=adapter)
    tokenizer.save_pretrained(folder)
    # peft leaves it out: without it, generation on the base runs past the end-of-turn token
    # the training template ends answers with (the README shows how to load it)
    model.generation_config.save_pretrained(folder)


def _write_gguf(model: Any, tokenizer: Any, folder: Path, gguf_type: GGUFType) -> None:
    from workbench.deploy.gguf_writer import write_gguf
    from workbench.deploy.modelfile import write_modelfile
    from workbench.deploy.parity import llama_cpp_load_error

    write_gguf(plain_model(model), tokenizer, folder / "model.gguf", gguf_type)
    refused = llama_cpp_load_error(folder / "model.gguf")  # None: it loads, or cannot be asked
    if refused is not None:  # still staged: the target keeps what it held
        msg = (
            f"GGUF export: llama.cpp cannot load the file written for this "
            f"{model.config.model_type} model ({refused}); nothing was written. Export "
            "'safetensors' instead."
        )
        raise SpecError(msg)
    write_modelfile(folder, tokenizer)


_WRITERS = {"safetensors": _write_safetensors, "adapter": _write_adapter, "gguf": _write_gguf}
