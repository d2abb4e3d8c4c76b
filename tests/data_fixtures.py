"""Fixtures shared by the data tests, imported by each test module (conftest.py is shared).

The tiny model is built once per test process (``functools.lru_cache``) even though each
module that imports the fixtures gets its own fixture definition.
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest

from workbench.models.tiny import build_tiny_model

__all__ = ["CHAT_ROW", "cache_dir", "load", "plain_tokenizer", "tokenizer", "write_jsonl"]


@functools.cache
def _tokenizer(chat_template: bool) -> Any:
    from transformers import AutoTokenizer

    folder = Path(tempfile.mkdtemp(prefix="wb-data-tests-")) / "tiny"
    return AutoTokenizer.from_pretrained(build_tiny_model(folder, chat_template=chat_template))


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    """Tiny byte-level BPE tokenizer with a ChatML chat template."""
    return _tokenizer(True)


@pytest.fixture(scope="session")
def plain_tokenizer() -> Any:
    """The same tokenizer without a chat template."""
    return _tokenizer(False)


@pytest.fixture
def cache_dir(tmp_path: Path) -> str:
    """A private Arrow cache folder, so tests never share or pollute datasets' cache."""
    return str(tmp_path / "arrow-cache")


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    """Write rows (dicts, or raw strings written as-is) one per line."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def load(source: Any, tok: Any, cache: str, **options: Any) -> Any:
    """PreparedData.load with no validation split and a private cache unless asked."""
    from workbench.data import PreparedData

    options.setdefault("validation", None)
    return PreparedData.load(source, tok, cache_dir=cache, **options)


CHAT_ROW = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "four"},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "six"},
    ]
}
