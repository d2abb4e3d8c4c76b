"""The tokenizing pass is cached under our own key: reused when nothing changed, never stale.

``PreparedData.load`` names the ``map`` cache itself (``workbench.data.fingerprint``) instead
of letting ``datasets`` pickle the whole tokenizer once per split. These tests load the same
file into one Arrow cache folder under changed settings and check that each change gives the
rows it should (not the cached ones), that an unchanged load reuses the cached file, and that
the tokenizer is never handed to ``datasets``' hasher.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from data_fixtures import cache_dir, tokenizer, write_jsonl
from datasets.fingerprint import Hasher

from workbench.data import PreparedData

__all__ = ["cache_dir", "tokenizer"]

ROWS = [{"question": f"What is {i} plus {i}? zebra", "answer": f"{2 * i} zebra"} for i in range(40)]


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "rows.jsonl", ROWS)


def _load(path: Path, tokenizer: Any, cache_dir: str, **options: Any) -> PreparedData:
    return PreparedData.load(path, tokenizer, validation=0.25, cache_dir=cache_dir, **options)


def _ids(data: PreparedData) -> list[list[int]]:
    return list(data.train["input_ids"]) + list(data.validation["input_ids"])


def test_an_unchanged_load_reuses_the_cached_pass(data_file, tokenizer, cache_dir):
    first = _load(data_file, tokenizer, cache_dir)
    again = _load(data_file, copy.deepcopy(tokenizer), cache_dir)
    assert again.train.cache_files == first.train.cache_files
    assert again.validation.cache_files == first.validation.cache_files
    assert _ids(again) == _ids(first)


def test_a_tokenizer_that_gained_a_token_is_not_served_the_cached_rows(
    data_file, tokenizer, cache_dir
):
    before = _load(data_file, tokenizer, cache_dir)
    grown = copy.deepcopy(tokenizer)
    grown.add_tokens(["zebra"])
    after = _load(data_file, grown, cache_dir)
    zebra = grown.convert_tokens_to_ids("zebra")
    assert all(zebra in ids for ids in _ids(after))
    assert not any(zebra in ids for ids in _ids(before))
    assert after.train.cache_files != before.train.cache_files


@pytest.mark.parametrize(
    ("option", "value"),
    [("max_length", 12), ("template", "alpaca"), ("special_tokens_in_text", "keep")],
)
def test_each_setting_gets_its_own_pass(data_file, tokenizer, cache_dir, option, value):
    default = _load(data_file, tokenizer, cache_dir)
    changed = _load(data_file, tokenizer, cache_dir, **{option: value})
    fresh = _load(data_file, tokenizer, f"{cache_dir}-fresh", **{option: value})
    assert changed.train.cache_files != default.train.cache_files
    assert _ids(changed) == _ids(fresh)  # what a cold cache gives under the same setting
    if option != "special_tokens_in_text":  # the rows hold no control-token text
        assert _ids(changed) != _ids(default)


def test_with_max_length_on_a_warm_cache_cuts_the_rows(data_file, tokenizer, cache_dir):
    full = _load(data_file, tokenizer, cache_dir)
    cut = full.with_max_length(10)
    assert max(len(ids) for ids in _ids(cut)) == 10
    assert max(len(ids) for ids in _ids(full.with_max_length(None))) > 10


def test_the_tokenizer_is_never_pickled_for_a_cache_key(
    data_file, tokenizer, cache_dir, monkeypatch
):
    hashed: list[str] = []
    original = Hasher.hash.__func__

    def spy(cls: type, value: Any) -> str:
        hashed.append(type(value).__name__)
        return original(cls, value)

    monkeypatch.setattr(Hasher, "hash", classmethod(spy))
    data = _load(data_file, tokenizer, cache_dir)
    assert len(data.train) + len(data.validation) == len(ROWS)
    holders = {"Labeller", "BatchLabeller", type(tokenizer).__name__}
    assert not holders & set(hashed), hashed
