"""Cache keys for the tokenizing pass, without pickling the tokenizer on every ``map``.

``datasets.Dataset.map`` names its cache by hashing the mapped function, and a labeller holds
the tokenizer: dill pickles all of it, about 3 s for Gemma's 262k-token vocabulary on a
laptop core, once per split. :func:`labelling_fingerprint` keys the same pass by what decides
its output instead: the input dataset's fingerprint and :func:`labeller_key`, that is the
labeller's settings (template text, cutoff, raw text or chat, the special-text rule), the
tokenizer's serialised Rust state and special tokens, and the source of the modules that
label, so editing them invalidates the cache as bumping a version would.

Examples:
    >>> from transformers import AutoTokenizer
    >>> from workbench.models.tiny import build_tiny_model
    >>> from workbench.data.templates import resolve_template
    >>> from workbench.data.tokenize import Labeller
    >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-fingerprint"))
    >>> labeller = Labeller(resolve_template(None, tokenizer), tokenizer, 64, False)
    >>> key = labeller_key(labeller)
    >>> key == labeller_key(Labeller(labeller.template, tokenizer, 64, False))
    True
    >>> key == labeller_key(Labeller(labeller.template, tokenizer, 32, False))
    False
    >>> len(labelling_fingerprint("abc", key))
    40
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

__all__ = ["labeller_key", "labelling_fingerprint", "tokenizer_digest"]

_LABELLING_MODULES = (  # every data module the labellers import (a test checks)
    "anchors.py",
    "batched.py",
    "call_formats.py",
    "formats.py",
    "layouts.py",
    "special_text.py",
    "templates.py",
    "tokenize.py",
    "tool_calls.py",
)


@cache
def _code_digest() -> str:
    folder = Path(__file__).parent
    digest = hashlib.sha1()
    for name in _LABELLING_MODULES:
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()


def tokenizer_digest(tokenizer: Any) -> str:
    """A SHA-1 of everything about ``tokenizer`` that can change the ids it gives.

    A fast tokenizer is keyed by its Rust backend's JSON (vocabulary, merges, normaliser,
    added tokens, post-processor) plus its class, special tokens and init settings; any
    other tokenizer by ``datasets``' own hash of the whole object (the slow, safe way).

    Examples:
        >>> from transformers import AutoTokenizer
        >>> from workbench.models.tiny import build_tiny_model
        >>> folder = build_tiny_model("/tmp/wb-doc-fingerprint")
        >>> a, b = AutoTokenizer.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
        >>> tokenizer_digest(a) == tokenizer_digest(b)
        True
        >>> _ = b.add_tokens(["<new>"])
        >>> tokenizer_digest(a) == tokenizer_digest(b)
        False
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not getattr(tokenizer, "is_fast", False) or backend is None:
        from datasets.fingerprint import Hasher

        return Hasher.hash(tokenizer)
    settings = {
        "class": f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}",
        "special": tokenizer.special_tokens_map,
        "init": {k: v for k, v in tokenizer.init_kwargs.items() if k != "backend"},
    }
    digest = hashlib.sha1(backend.to_str().encode())
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def labeller_key(labeller: Any) -> str:
    """A SHA-1 of what decides a labeller's output: settings, tokenizer, labelling code.

    ``labeller`` is a :class:`~workbench.data.tokenize.Labeller` or a
    :class:`~workbench.data.batched.BatchLabeller`; both carry ``template``, ``tokenizer``,
    ``max_length`` and ``text``. Computed once per tokenizing pass (the tokenizer's JSON takes
    a quarter of a second for a 262k vocabulary), then combined with each split's fingerprint
    by :func:`labelling_fingerprint`.

    Examples:
        >>> from transformers import AutoTokenizer
        >>> from workbench.models.tiny import build_tiny_model
        >>> from workbench.data.templates import resolve_template
        >>> from workbench.data.batched import BatchLabeller
        >>> tokenizer = AutoTokenizer.from_pretrained(build_tiny_model("/tmp/wb-doc-fingerprint"))
        >>> chatml = BatchLabeller(resolve_template(None, tokenizer), tokenizer, None, False)
        >>> alpaca = BatchLabeller(resolve_template("alpaca", None), tokenizer, None, False)
        >>> labeller_key(chatml) == labeller_key(alpaca)
        False
    """
    rows = getattr(labeller, "rows", labeller)  # a BatchLabeller's row-by-row Labeller
    settings = [
        type(labeller).__qualname__,
        labeller.template.source,
        labeller.max_length,
        labeller.text,
        rows.special_tokens_in_text,
        tokenizer_digest(labeller.tokenizer),
        _code_digest(),
    ]
    return hashlib.sha1(json.dumps(settings).encode()).hexdigest()


def labelling_fingerprint(dataset_fingerprint: str, key: str) -> str:
    """The ``new_fingerprint`` of ``dataset.map(labeller, batched=True)``.

    Args:
        dataset_fingerprint: The mapped dataset's ``_fingerprint``.
        key: :func:`labeller_key` of the labeller.

    Examples:
        >>> labelling_fingerprint("abc", "k1") == labelling_fingerprint("abd", "k1")
        False
        >>> len(labelling_fingerprint("abc", "k1"))
        40
    """
    return hashlib.sha1(f"{dataset_fingerprint}:{key}".encode()).hexdigest()
