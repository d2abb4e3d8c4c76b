"""Convert a GGUF file into a plain safetensors model folder the session can train and save.

transformers reads GGUF through ``gguf_file=`` and dequantizes it, but a model loaded that way
carries a GGUF quantizer that refuses ``save_pretrained`` and training (transformers >= 5.17).
So each GGUF file is converted once: loaded, its weights moved into a model built from the
same config without the quantizer, and saved with its tokenizer into the model cache.

Examples:
    >>> from workbench.models.gguf import gguf_architecture
    >>> gguf_architecture("/nonexistent.gguf")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ModelLoadError: ...
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from workbench.errors import ModelLoadError

__all__ = ["convert_gguf", "gguf_architecture"]


def gguf_architecture(path: str | Path) -> str:
    """Read ``general.architecture`` from a GGUF header and check transformers can load it.

    Raises:
        ModelLoadError: The file is missing, not GGUF, or of an architecture transformers
            can't read.

    Examples:
        A header-only GGUF file (no tensors) is enough to read the architecture:

        >>> from gguf import GGUFWriter
        >>> Path("/tmp/wb-doc-gguf-arch").mkdir(exist_ok=True)
        >>> writer = GGUFWriter("/tmp/wb-doc-gguf-arch/tiny.gguf", "llama")
        >>> writer.write_header_to_file()
        >>> writer.write_kv_data_to_file()
        >>> writer.close()
        >>> gguf_architecture("/tmp/wb-doc-gguf-arch/tiny.gguf")
        'llama'
        >>> gguf_architecture("/tmp/wb-doc-gguf-arch/missing.gguf")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        workbench.errors.ModelLoadError: GGUF file /tmp/wb-doc-gguf-arch/missing.gguf does not ...
    """
    from gguf import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"GGUF file {path} does not exist. Give the path of a .gguf file.")
    try:
        field = GGUFReader(path).fields["general.architecture"]
        architecture = bytes(field.parts[field.data[0]]).decode("utf-8")
    except Exception as err:  # GGUFReader raises ValueError, KeyError, struct errors...
        msg = f"{path} is not a readable GGUF file ({type(err).__name__}: {err})."
        raise ModelLoadError(msg) from err
    supported = [a for a in GGUF_SUPPORTED_ARCHITECTURES if a]
    if architecture not in supported and architecture.replace("-", "_") not in supported:
        msg = (
            f"{path} holds a {architecture!r} model, which transformers can't read from GGUF. "
            f"Readable architectures: {', '.join(sorted(supported))}. "
            "Use the original safetensors checkpoint of that model instead."
        )
        raise ModelLoadError(msg)
    return architecture


def convert_gguf(
    gguf_path: str | Path, target: Path, on_event: Callable[[str], None] = print
) -> None:
    """Write the model and tokenizer of ``gguf_path`` as a float32 safetensors folder.

    Args:
        gguf_path: The ``.gguf`` file.
        target: An empty folder to write into.
        on_event: Receives progress messages (about two minutes on two cores for 270M).

    Raises:
        ModelLoadError: ``gguf_path`` is missing, not GGUF, or of an architecture transformers
            can't read (checked first, by :func:`gguf_architecture`).

    Examples:
        A real conversion takes minutes (``convert_gguf(path, folder)`` for the built-in
        Gemma), so this example shows only the check that runs first:

        >>> missing, target = "/tmp/wb-doc-gguf-x.gguf", Path("/tmp/wb-doc-gguf-out")
        >>> convert_gguf(missing, target)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        workbench.errors.ModelLoadError: GGUF file /tmp/wb-doc-gguf-x.gguf does not exist. ...
        >>> target.exists()
        False
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    gguf_architecture(gguf_path)
    start = time.monotonic()

    def step(message: str) -> None:
        on_event(f"[{time.monotonic() - start:5.0f}s] {message}")

    step(f"reading the tokenizer from {gguf_path.name}")
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    step("dequantizing the weights (the slow part)")
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    step("moving the weights into a plain model")
    model = _without_quantizer(loaded)
    del loaded
    step("saving safetensors and tokenizer")
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    step("converted")


def _without_quantizer(loaded):
    """Rebuild ``loaded`` from its config minus the GGUF quantizer, sharing its tensors."""
    import torch
    from transformers import AutoModelForCausalLM

    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=False, assign=True)
    model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise ModelLoadError(f"GGUF conversion left parameters without values: {missing[:5]}")
    model.generation_config = loaded.generation_config
    return model.eval()
