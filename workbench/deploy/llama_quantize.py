"""K-quant GGUF types (Q4_K_M and kin), made by llama.cpp's own quantizer.

gguf-py cannot make K-quants, and they are what llama.cpp and Ollama users reach for
(``q4_k_m`` is the usual default). llama.cpp's quantizer chooses a type per tensor: a K-quant
mix puts the value and down projections of some blocks and the output matrix in a finer
type, and a matrix whose rows are not a multiple of 256 weights falls back to a legacy type
(Q5_0 for Q4_K, Q8_0 for Q6_K...). The workbench writes an F16 file and hands it to
``llama_model_quantize`` through llama-cpp-python, in a child process: an abort inside
llama.cpp then ends that process, not the notebook's kernel, and its log becomes the error.

Examples:
    The types llama.cpp makes, as ``gguf_type`` names them, and its own names for them:

    >>> LLAMA_CPP_TYPES["q4_k_m"]
    'Q4_K_M'
    >>> sorted(LLAMA_CPP_TYPES)
    ['q2_k', 'q3_k_m', 'q4_k_m', 'q5_k_m', 'q6_k']
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

from workbench.errors import DependencyError, WriteError

__all__ = ["LLAMA_CPP_TYPES", "check_llama_quantizer", "quantize_gguf", "require_llama_cpp"]

# gguf_type -> llama.cpp's file type (LLAMA_FTYPE_MOSTLY_<name>), smallest last.
LLAMA_CPP_TYPES = {
    "q6_k": "Q6_K",
    "q5_k_m": "Q5_K_M",
    "q4_k_m": "Q4_K_M",
    "q3_k_m": "Q3_K_M",
    "q2_k": "Q2_K",
}


def check_llama_quantizer(gguf_type: str) -> None:
    """Refuse a K-quant ``gguf_type`` when llama-cpp-python, which makes it, is missing.

    Raises:
        DependencyError: ``gguf_type`` is a K-quant and ``llama_cpp`` cannot be imported.

    Examples:
        >>> check_llama_quantizer("q8_0")  # gguf-py makes it: nothing needed
    """
    if gguf_type in LLAMA_CPP_TYPES:
        require_llama_cpp(
            f"gguf_type={gguf_type!r} is made by llama.cpp's quantizer",
            "or export gguf_type='q4_0' or 'q8_0', which need nothing more",
        )


def require_llama_cpp(what: str, otherwise: str = "") -> None:
    """Refuse ``what`` (it runs llama.cpp) when llama-cpp-python cannot be imported.

    Raises:
        DependencyError: ``llama_cpp`` is missing; the message says how to install it.

    Examples:
        With llama-cpp-python installed (as the tests install it), nothing is refused:

        >>> require_llama_cpp("the export check runs the file in llama.cpp")
    """
    try:
        import llama_cpp  # noqa: F401
    except ImportError as err:
        msg = (
            f"{what}, through the llama-cpp-python package, which is not installed: pip "
            "install llama-cpp-python (bash .ci/llama-cpp-setup.sh builds it here)"
        )
        raise DependencyError(f"{msg}, {otherwise}." if otherwise else f"{msg}.") from err


def quantize_gguf(source: Path, target: Path, gguf_type: str) -> Path:
    """Write ``target``: the GGUF file ``source`` requantized by llama.cpp to ``gguf_type``.

    ``target`` is written under a temporary name beside it and renamed when complete, so it
    is never left half-written.

    Raises:
        DependencyError: llama-cpp-python is not installed.
        OSError: the disk filled (``errno.ENOSPC``; an export turns it into a WriteError
            naming its folder and the space it needs).
        WriteError: llama.cpp could not quantize ``source`` (its log's failure lines say why).

    Examples:
        A file llama.cpp cannot read is refused, and nothing is left at the target:

        >>> from pathlib import Path
        >>> _ = Path("/tmp/wb-doc-quantize-bad.gguf").write_bytes(b"not a gguf file")
        >>> quantize_gguf(Path("/tmp/wb-doc-quantize-bad.gguf"),
        ...               Path("/tmp/wb-doc-quantize-out.gguf"), "q4_k_m")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        workbench.errors.WriteError: llama.cpp could not quantize /tmp/wb-doc-quantize-bad.gguf \
to Q4_K_M: ...invalid magic characters...
        >>> Path("/tmp/wb-doc-quantize-out.gguf").exists()
        False
    """
    check_llama_quantizer(gguf_type)
    partial = target.with_name(f".{target.name}.partial")
    ftype = LLAMA_CPP_TYPES[gguf_type]
    command = [sys.executable, "-m", __name__, str(source), str(partial), ftype]
    try:
        done = subprocess.run(command, capture_output=True, text=True, errors="replace")
        if done.returncode != 0:
            # llama.cpp reports a full disk as "iostream error", without the OS's reason
            if shutil.disk_usage(target.parent).free < source.stat().st_size:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
            why = _reasons(done.stderr + done.stdout)
            raise WriteError(f"llama.cpp could not quantize {source} to {ftype}: {why}")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


_FAILURE_WORDS = ("fail", "error", "invalid")


def _reasons(log: str) -> str:
    """The lines of llama.cpp's log that say what failed (else its last lines)."""
    lines = [line.strip() for line in log.strip().splitlines() if line.strip()]
    failed = [
        line for line in lines if any(w in line.lower() for w in ("fail", "error", "invalid"))
    ]
    return "\n".join(failed or lines[-3:]) or "no log"


def _quantize_here(source: str, target: str, ftype: str) -> int:
    """The child process's work: llama.cpp's ``llama_model_quantize``; returns its status."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    return llama_cpp.llama_model_quantize(source.encode(), target.encode(), ctypes.byref(params))


if __name__ == "__main__":
    from workbench.deploy._serving import exit_with_parent

    # A killed exporter (out of memory, a kernel restart) left its quantizer running for
    # minutes, reparented, writing into the staging file nobody would place.
    exit_with_parent(os.getppid())
    status = _quantize_here(*sys.argv[1:4])
    if status != 0:
        print(f"llama_model_quantize returned {status}", file=sys.stderr)
    sys.exit(1 if status != 0 else 0)
