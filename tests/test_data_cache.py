"""The tokenizing pass is cached under our own key: reused when nothing changed, never stale.

``PreparedData.load`` names the ``map`` cache itself (``workbench.data.fingerprint``) instead
of letting ``datasets`` pickle the whole tokenizer once per split. These tests load the same
file into one Arrow cache folder under changed settings and check that each change gives the
rows it should (not the cached ones), that an unchanged load reuses the cached file, that the
tokenizer is never handed to ``datasets``' hasher, and that a damaged cached file is rebuilt.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from data_fixtures import cache_dir, tokenizer, write_jsonl
from datasets.fingerprint import Hasher

from workbench.data import PreparedData
from workbench.errors import WorkbenchWarning
from workbench.models.tiny import build_tiny_model

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


def _cut_between_batches(path: Path) -> None:
    """Keep the stream's first half of record batches, without the end marker: what a copy
    cut short, or a writer killed between two batches, leaves."""
    import pyarrow as pa

    reader = pa.ipc.open_stream(pa.OSFile(str(path)))
    batches = list(reader)
    sink = pa.BufferOutputStream()
    writer = pa.ipc.new_stream(sink, reader.schema)
    for batch in batches[: len(batches) // 2]:
        writer.write_batch(batch)
    prefix = sink.getvalue().to_pybytes()  # (writer not closed: no end marker)
    assert path.read_bytes().startswith(prefix)
    path.write_bytes(prefix)


def _cut_short(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])  # truncated, as a full disk would leave it


def _flip_a_bit(path: Path) -> None:
    # A bit flipped in a string column's offsets made pyarrow abort the whole process
    # ("terminate called after throwing an instance of 'std::length_error'"), a kernel dead
    # on every rerun; elsewhere a flip read as other text. Written anew, not in place: a
    # mapped file rewritten in place under a reader is a SIGBUS.
    data = bytearray(path.read_bytes())
    data[len(data) * 2 // 3] ^= 1
    flipped = path.with_name(path.name + ".flipped")
    flipped.write_bytes(bytes(data))
    os.replace(flipped, path)


@pytest.mark.parametrize("cut", [_cut_short, _cut_between_batches, _flip_a_bit])
@pytest.mark.parametrize("which", ["tokenized", "source"])
def test_a_damaged_cached_copy_is_rebuilt_with_a_warning(
    tmp_path, tokenizer, cache_dir, which, cut
):
    # A cut between batches (of 1,000 rows) read as a valid table of fewer rows, unreported.
    many = [{"question": f"What is {i} plus {i}?", "answer": f"{2 * i}"} for i in range(2500)]
    data_file = write_jsonl(tmp_path / "rows.jsonl", many if cut is _cut_between_batches else ROWS)
    first = _load(data_file, tokenizer, cache_dir)
    expected = _ids(first)
    folder = Path(cache_dir) / "workbench-sources"
    tokenized = {Path(f["filename"]) for f in first.train.cache_files}
    tokenized |= {Path(f["filename"]) for f in first.validation.cache_files}
    sources = set(folder.glob("*.arrow")) - tokenized
    assert tokenized and sources and all(p.parent == folder for p in tokenized)
    damaged = tokenized if which == "tokenized" else sources
    # The background duplicate scan reads the mapped source copy: cutting a mapped file
    # short under a reader is a SIGBUS (the data loader itself never writes a file in place).
    first.duplicate_problems()
    for path in damaged:
        cut(path)
    del first
    with pytest.warns(WorkbenchWarning, match=r"cached copy .*\.arrow is damaged"):
        again = _load(data_file, tokenizer, cache_dir)
    assert _ids(again) == expected
    with warnings.catch_warnings():
        warnings.simplefilter("error", WorkbenchWarning)  # rebuilt: the next load is quiet
        assert _ids(_load(data_file, tokenizer, cache_dir)) == expected


def test_a_copy_another_process_is_finishing_is_waited_for_not_deleted(
    data_file, tokenizer, cache_dir, tmp_path
):
    # A second kernel loading the same data into the same folder read a copy whose writer
    # had renamed it into place and not yet written its checksum as a killed writer's: it
    # deleted it, and the first failed with a FileNotFoundError on its own cache file.
    expected = _ids(_load(data_file, tokenizer, cache_dir))
    copies = sorted(Path(cache_dir).rglob("*.arrow"))
    assert len(copies) >= 3  # the source copy and the two tokenized splits
    for path in copies:
        path.with_name(path.name + ".crc32").unlink()  # their writer is about to write them
    inodes = [path.stat().st_ino for path in copies]
    ready = tmp_path / "writer-holds-the-locks"
    writer = textwrap.dedent(
        f"""
        import contextlib, time
        from pathlib import Path
        from workbench.data.loading import cache_file_lock, write_checksum
        copies = [Path(p) for p in {[str(p) for p in copies]!r}]
        with contextlib.ExitStack() as stack:
            for path in copies:
                stack.enter_context(cache_file_lock(path))
            Path({str(ready)!r}).touch()
            time.sleep(2)
            for path in copies:
                write_checksum(path)
        """
    )
    finishing = subprocess.Popen([sys.executable, "-c", writer])
    try:
        while not ready.exists():
            assert finishing.poll() is None, "the writer process ended early"
            time.sleep(0.05)
        with warnings.catch_warnings():
            warnings.simplefilter("error", WorkbenchWarning)  # no "damaged, rebuilding"
            again = _load(data_file, tokenizer, cache_dir)
    finally:
        assert finishing.wait(timeout=60) == 0
    assert _ids(again) == expected
    assert [path.stat().st_ino for path in copies] == inodes  # reused, not rebuilt


def test_a_copy_cut_after_a_batch_ending_in_the_markers_bytes_is_damaged(tmp_path):
    # The check read the file's last 8 bytes only: a batch whose int32 column ends -1, 0
    # ends in those very bytes, so a copy cut right after it read as valid, half its rows.
    import pyarrow as pa

    from workbench.data.loading import cached_arrow_table, write_checksum

    table = pa.table({"labels": pa.array([5, 6, -1, 0], pa.int32())})
    whole = tmp_path / "whole.arrow"
    with pa.OSFile(str(whole), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as out:
        out.write_table(table)
        out.write_table(table)
    write_checksum(whole)
    assert cached_arrow_table(whole).num_rows == 8
    with pa.memory_map(str(whole)) as source:  # where the first batch's message ends
        reader = pa.ipc.MessageReader.open_stream(source)
        reader.read_next_message(), reader.read_next_message()
        first_batch_end = source.tell()
    cut = tmp_path / "cut.arrow"
    cut.write_bytes(whole.read_bytes()[:first_batch_end])
    assert cut.read_bytes().endswith(b"\xff\xff\xff\xff\x00\x00\x00\x00")
    assert pa.ipc.open_stream(pa.memory_map(str(cut))).read_all().num_rows == 4
    with pytest.warns(WorkbenchWarning, match=r"cut\.arrow is damaged .*end marker"):
        assert cached_arrow_table(cut) is None
    assert not cut.exists()


@pytest.mark.parametrize(("rows", "fraction"), [(40, 0.25), (37, 0.1), (1000, 0.05)])
def test_the_validation_split_is_the_rows_datasets_would_pick(
    tmp_path, tokenizer, cache_dir, rows, fraction
):
    """Split in memory (no indices files to be damaged), yet the same rows as datasets' way."""
    from datasets import Dataset

    path = write_jsonl(tmp_path / "many.jsonl", ROWS * (rows // len(ROWS) + 1))
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:rows]))
    data = PreparedData.load(path, tokenizer, validation=fraction, seed=7, cache_dir=cache_dir)
    theirs = Dataset.from_dict({"n": list(range(1, rows + 1))}).train_test_split(
        test_size=fraction, seed=7
    )
    assert list(data.train["source_row"]) == theirs["train"]["n"]
    assert list(data.validation["source_row"]) == theirs["test"]["n"]
    made = {p.name for p in Path(cache_dir).rglob("*.arrow")}
    tokenized = {
        Path(f["filename"]).name for d in (data.train, data.validation) for f in d.cache_files
    }
    assert len(made - tokenized) == 1  # the source's copy; no split indices files


def test_a_large_validation_fraction_of_few_rows_keeps_one_training_row(
    tmp_path, tokenizer, cache_dir
):
    path = write_jsonl(tmp_path / "two.jsonl", ROWS[:2])
    data = PreparedData.load(path, tokenizer, validation=0.9, cache_dir=cache_dir)
    assert (len(data.train), len(data.validation)) == (1, 1)


def test_a_restarted_kernel_reuses_the_pass(data_file, tmp_path, cache_dir):
    """Two processes (a kernel and its restart) key the same pass alike: no new cache file."""
    script = (
        "import sys\n"
        "from transformers import AutoTokenizer\n"
        "from workbench.data import PreparedData\n"
        "tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "data = PreparedData.load(sys.argv[2], tokenizer, validation=0.25, cache_dir=sys.argv[3])\n"
        "files = data.train.cache_files + data.validation.cache_files\n"
        "print(sorted(f['filename'] for f in files))\n"
    )
    folder = build_tiny_model(tmp_path / "tiny")
    runs = [
        subprocess.run(
            [sys.executable, "-c", script, str(folder), str(data_file), cache_dir],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        ).stdout.strip()
        for _ in range(2)
    ]
    assert runs[0] == runs[1] and "cache-" in runs[0]
    assert len(list(Path(cache_dir).rglob("*.arrow"))) == 3  # the source and two splits


def test_a_killed_loads_partial_files_are_cleared_by_the_next_load(data_file, tokenizer, cache_dir):
    """A load killed mid-write left its partial copy (tens of MB) in the cache for good."""
    import os
    import time

    folder = Path(cache_dir) / "workbench-sources"
    folder.mkdir(parents=True)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    ).stdout.strip()
    host = __import__("socket").gethostname()
    ours = folder / f".{'0' * 40}.{host}-{dead}.{'1' * 32}.incomplete"  # its writer is gone
    live = folder / f".{'0' * 40}.{host}-{os.getpid()}.{'2' * 32}.incomplete"
    old_tmp, new_tmp = folder / "tmpab12cd", folder / "tmpef34gh"  # datasets' map partials
    for path in (ours, live, old_tmp, new_tmp):
        path.write_bytes(b"partial")
    hours_ago = time.time() - 2 * 3600
    os.utime(old_tmp, (hours_ago, hours_ago))
    data = _load(data_file, tokenizer, cache_dir)
    assert len(data.train) == 30
    assert not ours.exists() and not old_tmp.exists()
    assert live.exists() and new_tmp.exists()  # a live writer's, and one written just now


def test_in_memory_rows_loaded_again_reuse_their_cached_copy(tokenizer, cache_dir):
    """Each load of a DataFrame or list wrote a new copy: a cell run 4 times took 4x the disk."""
    import pandas as pd

    frame = pd.DataFrame(ROWS)
    first = _load(frame, tokenizer, cache_dir)
    files = sorted(Path(cache_dir).rglob("*.arrow"))
    again = _load(pd.DataFrame(ROWS), tokenizer, cache_dir)
    assert _ids(again) == _ids(first) and sorted(Path(cache_dir).rglob("*.arrow")) == files
    _load(list(ROWS), tokenizer, cache_dir)
    _load(list(ROWS), tokenizer, cache_dir)
    assert len(list(Path(cache_dir).rglob("*.arrow"))) == len(files) + 3  # one list copy
    changed = frame.copy()
    changed.loc[0, "answer"] = "0 giraffe"
    data = _load(changed, tokenizer, cache_dir)
    assert "0 giraffe" in list(data.train["answer"]) + list(data.validation["answer"])


def test_the_cache_key_covers_every_module_that_labels():
    # Editing any data module the labellers import must change the cached pass's key.
    import ast
    from pathlib import Path

    from workbench.data import fingerprint

    folder = Path(fingerprint.__file__).parent
    keyed = set(fingerprint._LABELLING_MODULES)
    seen, todo = set(), ["batched.py", "tokenize.py"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for node in ast.walk(ast.parse((folder / name).read_text())):
            module = getattr(node, "module", None) or ""
            if isinstance(node, ast.ImportFrom) and module.startswith("workbench.data."):
                todo.append(module.rsplit(".", 1)[1] + ".py")
    assert seen <= keyed, sorted(seen - keyed)
