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

import mmap
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workbench.errors import ModelLoadError

__all__ = ["check_gguf_header", "convert_gguf", "gguf_architecture"]


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
    check_gguf_header(path)
    try:
        field = GGUFReader(path).fields["general.architecture"]
        architecture = bytes(field.parts[field.data[0]]).decode("utf-8")
    except Exception as err:  # GGUFReader raises ValueError, KeyError, struct errors...
        # its messages can quote the file's bytes (a key name): shown escaped, never raw
        shown = repr(str(err))[1:-1]
        raise _unreadable(path, f"{type(err).__name__}: {shown}") from err
    supported = [a for a in GGUF_SUPPORTED_ARCHITECTURES if a]
    if architecture not in supported and architecture.replace("-", "_") not in supported:
        msg = (
            f"{path} holds a {architecture!r} model, which transformers can't read from GGUF. "
            f"Readable architectures: {', '.join(sorted(supported))}. "
            "Use the original safetensors checkpoint of that model instead."
        )
        raise ModelLoadError(msg)
    return architecture


# Bytes each GGUF value type takes (gguf's GGUFValueType); a string is 8 bytes of length and
# its text, an array 4 bytes of item type, 8 of count and its items.
_FIXED_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
_SMALLEST = {**_FIXED_SIZES, _STRING: 8, _ARRAY: 12}
_SMALLEST_KV = 8 + 4 + 1  # key length, value type, a one-byte value
_SMALLEST_TENSOR = 8 + 4 + 4 + 8  # name length, dimensions, type, offset
_READER_VERSIONS = (2, 3)  # gguf's READER_SUPPORTED_VERSIONS; it names any other itself


def check_gguf_header(path: str | Path) -> None:
    """Refuse a GGUF file whose header claims more than the file holds.

    gguf's reader believes every count and length in the header: a 100-byte file claiming an
    array of 2**40 items made it allocate for a minute and die with a ``SystemError``. So each
    count, string length and tensor count is first checked against the bytes left in the
    file, reading the header (not the tensors) with ``struct``. A file that does not start
    with GGUF's magic or is of a version gguf can't read is left to gguf to name.

    Raises:
        ModelLoadError: Naming the file and what does not fit.

    Examples:
        >>> import struct
        >>> path = Path("/tmp/wb-doc-gguf-header.gguf")
        >>> _ = path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2**62, 0))
        >>> check_gguf_header(path)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        workbench.errors.ModelLoadError: /tmp/wb-doc-gguf-header.gguf is not a readable GGUF \
file (it claims 4,611,686,018,427,387,904 tensors, more than the 0 bytes left ...
    """
    path = Path(path)
    with path.open("rb") as file:
        head = file.read(24)
        if len(head) < 24 or head[:4] != b"GGUF":
            return
        version = struct.unpack_from("<I", head, 4)[0]
        order = ">" if version & 0xFFFF == 0 else "<"  # written on a big-endian machine
        if struct.unpack_from(order + "I", head, 4)[0] not in _READER_VERSIONS:
            return
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            try:
                _HeaderWalk(data, path, order).check()
            except RecursionError:
                raise _unreadable(path, "arrays nested in arrays thousands deep") from None


class _HeaderWalk:
    """Reads a GGUF header from its start, refusing what the rest of the file can't hold."""

    def __init__(self, data: Any, path: Path, order: str) -> None:
        self.data, self.path, self.order, self.at = data, path, order, 8

    def check(self) -> None:
        tensors, kvs = self.number("Q"), self.number("Q")
        self.fits(kvs * _SMALLEST_KV, f"{kvs:,} metadata keys")
        for _ in range(kvs):
            key = self.string("a metadata key")
            self.value(self.number("I"), f"the value of {key!r}")
        self.fits(tensors * _SMALLEST_TENSOR, f"{tensors:,} tensors")
        for _ in range(tensors):
            name = self.string("a tensor's name")
            dims = self.number("I")
            self.skip(dims * 8, f"{dims:,} dimensions of tensor {name!r}")
            self.skip(4 + 8, f"tensor {name!r}")

    def number(self, kind: str) -> int:
        size = struct.calcsize(kind)
        self.fits(size, "the header")
        value = struct.unpack_from(self.order + kind, self.data, self.at)[0]
        self.at += size
        return value

    def string(self, what: str) -> str:
        length = self.number("Q")
        self.fits(length, f"{what} of {length:,} bytes")
        text = bytes(self.data[self.at : self.at + min(length, 200)])
        self.at += length
        return text.decode("utf-8", "backslashreplace")

    def value(self, kind: int, what: str) -> None:
        if kind not in _SMALLEST:
            raise _unreadable(self.path, f"{what} has type {kind}, which GGUF does not define")
        if kind == _STRING:
            self.string(what)
        elif kind == _ARRAY:
            item, count = self.number("I"), self.number("Q")
            if item not in _SMALLEST:
                raise _unreadable(self.path, f"{what} has items of type {item}, not a GGUF type")
            self.fits(count * _SMALLEST[item], f"{what}, an array of {count:,} items")
            if item in _FIXED_SIZES:
                self.at += count * _FIXED_SIZES[item]
            for _ in range(0 if item in _FIXED_SIZES else count):
                self.value(item, what)
        else:
            self.skip(_FIXED_SIZES[kind], what)

    def skip(self, size: int, what: str) -> None:
        self.fits(size, what)
        self.at += size

    def fits(self, size: int, what: str) -> None:
        left = len(self.data) - self.at
        if size > left:
            claim = f"it claims {what}, more than the {left:,} bytes left at byte {self.at:,}"
            raise _unreadable(self.path, f"{claim}: damaged, cut short or not a GGUF model")


def _unreadable(path: Path, why: str) -> ModelLoadError:
    return ModelLoadError(f"{path} is not a readable GGUF file ({why}).")


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
