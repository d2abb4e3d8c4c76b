"""Read a source into an Arrow ``datasets.Dataset`` of normalised rows.

Rows are streamed from the source through :meth:`Format.normalise` and written to Arrow
batch by batch (a 1 GB JSONL file never sits in memory), to a cache file keyed by the file's
path and a hash of its bytes plus the loading options. A failed load leaves no cache behind (the
file is written under a temporary name and renamed). The batches are built with
``pyarrow.RecordBatch.from_pylist``; with ``DataSpec(batched=False)`` the rows go one by one
through ``Dataset.from_generator`` instead (the earlier way, same rows, slower). Either way
each batch is checked in Arrow before it is stored: a field over :data:`MAX_FIELD_BYTES` is a
malformed row, named by file, row and field, and never read back into Python.

Stored columns: ``source_row`` (1-based line/row in the source), ``messages`` (or ``text``),
``empty_fields``, ``untrained_turns`` (indices of assistant turns that are context only:
weight 0, or in a conversational prompt), ``tool_calling`` (a row's tools and its turns'
tool calls as JSON text, null without them: :mod:`workbench.data.tool_calls`), and the
source's own columns as strings
(non-strings JSON-encoded; a name that clashes with a stored column gets an ``original_``
prefix).

Examples:
    >>> from workbench.data.prepared import DataSpec
    >>> from workbench.data.sources import open_source
    >>> spec = DataSpec(cache_dir="/tmp/wb-doc-loading-cache")
    >>> loaded = read_source(open_source([{"question": "2+2?", "answer": "4"}])[0], spec)
    >>> loaded.dataset.column_names  # doctest: +NORMALIZE_WHITESPACE
    ['source_row', 'messages', 'untrained_turns', 'tool_calling', 'empty_fields',
     'question', 'answer']
    >>> loaded.dataset[0]["messages"]
    [{'role': 'user', 'content': '2+2?'}, {'role': 'assistant', 'content': '4'}]
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import os
import re
import socket
import uuid
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench._display import format_bytes
from workbench._io import atomic_write_text, process_alive, stale, translated_write_errors
from workbench.data.formats import Format, RowError, detect_format
from workbench.data.problems import Problem
from workbench.data.sources import RawRow, Source
from workbench.data.tokenize import UNTRAINED_TURNS
from workbench.data.tool_calls import (
    TOOL_CALLING,
    check_template_writes_tools,
    encode_tool_calling,
    with_tool_calling,
)
from workbench.errors import DataError, WorkbenchWarning

__all__ = [
    "CODE_VERSION",
    "MAX_FIELD_BYTES",
    "RESERVED_COLUMNS",
    "Loaded",
    "cache_file_lock",
    "cached_arrow_table",
    "clear_leftovers",
    "read_source",
    "refuse_template_rejects",
    "role_sequences",
    "write_checksum",
]

# Bump when the stored layout or what a row normalises to changes, to invalidate old caches
# (2: the developer role, input/output pairs, refused turn weights; 3: untrained_turns;
# 4: tool calling; 5: qa rows keep their tools, and answer with calls; 6: a JSON line that
# gives a key twice is refused, and {"data": []} read as a file of no rows; 7: a system
# column beside chat or ShareGPT turns opens the conversation; 8: spreadsheet cells are the
# text they show, 25% not 0.25; 9: each copy has a checksum beside it, which version 8's
# first copies lack: read by this version, they would be warned of as writes left unfinished;
# 10: a field over MAX_FIELD_BYTES is a malformed row, which a version-9 copy may hold).
CODE_VERSION = "10"
_WRITE_BATCH = 1000  # rows per Arrow record batch
# The most UTF-8 text one field (a cell, a turn's content) may hold: far beyond any model's
# context. A longer one (a gigabyte-long cell from a 1 MB .gz or .xlsx) is refused as it is
# stored, before anything reads it back into Python.
MAX_FIELD_BYTES = 64 * 2**20
_NORMALISED = ("messages", "text", TOOL_CALLING)  # named after the source's own columns
_END_OF_STREAM = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # what closing an Arrow stream writes
RESERVED_COLUMNS = (
    "source_row",
    "messages",
    UNTRAINED_TURNS,
    TOOL_CALLING,
    "text",
    "empty_fields",
    "error",
    "error_field",
    "input_ids",
    "labels",
    "attention_mask",
    "n_tokens",
    "n_prompt",
    "n_answer",
    "answer_start",
    "answer_end",
    "template_ok",
)


@dataclass(frozen=True)
class Loaded:
    """A source read into Arrow.

    Attributes:
        dataset: Normalised rows (malformed ones removed).
        skipped: ``malformed`` problems for the rows skipped.
        format: The format used.
        originals: Names of the stored source columns (for ``Example.row``).

    Examples:
        >>> from workbench.data.prepared import DataSpec
        >>> from workbench.data.sources import open_source
        >>> rows = [{"q": "Hi?", "a": "Hello"}, {"q": "2+2?", "a": "4"}]
        >>> cache = "/tmp/wb-doc-loading-cache"
        >>> spec = DataSpec(columns={"prompt": "q", "answer": "a"}, cache_dir=cache)
        >>> loaded = read_source(open_source(rows)[0], spec)
        >>> len(loaded.dataset), loaded.skipped, loaded.format.name, loaded.originals
        (2, (), 'qa', ('q', 'a'))
    """

    dataset: Any
    skipped: tuple[Problem, ...]
    format: Format
    originals: tuple[str, ...]


def _original_names(columns: list[str], fmt: Format, plan: dict[str, str]) -> dict[str, str]:
    normalised = "text" if fmt.is_text else "messages"
    names = {}
    for column in columns:
        if column == normalised and plan.get(normalised, normalised) == column:
            continue  # the normalised column replaces it
        names[column] = f"original_{column}" if column in RESERVED_COLUMNS else column
    return names


def _features(fmt: Format, stored: list[str]) -> Any:
    from datasets import Features, List, Value

    string = Value("string")
    columns: dict[str, Any] = {"source_row": Value("int64"), "error": string, "error_field": string}
    if fmt.is_text:
        columns["text"] = string
    else:
        columns["messages"] = List({"role": string, "content": string})
    if not fmt.is_text:
        columns[UNTRAINED_TURNS] = List(Value("int32"))
        columns[TOOL_CALLING] = string
    columns["empty_fields"] = string
    columns.update({name: string for name in stored})
    return Features(columns)


def _as_string(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _rows(
    source: Source, fmt: Format, plan: dict[str, str], originals: dict[str, str], on_error: str
) -> Iterator[dict[str, Any]]:
    for raw in source.rows():
        try:
            yield _good_row(raw, fmt, plan, originals)
        except RowError as err:
            yield _bad_row(source, raw.number, err, originals, on_error)


def _bad_row(
    source: Source, number: int, err: RowError, originals: dict[str, str], on_error: str
) -> dict[str, Any]:
    """The stored form of a malformed row (``on_error="skip"``); raises with ``"raise"``."""
    if on_error == "raise":
        raise _data_error(source, number, err.field, err.message) from None
    blank = dict.fromkeys(["messages", UNTRAINED_TURNS, TOOL_CALLING, "text", "empty_fields"])
    blank.update(dict.fromkeys(originals.values()))
    return {**blank, "source_row": number, "error": err.message, "error_field": err.field}


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _unencodable(row: dict[str, Any], originals: dict[str, str]) -> RowError | None:
    """Why a row's text has no UTF-8 form (a lone surrogate), naming its field; else None.

    JSON can escape half of a character (``"\\ud83d"``, an emoji cut in two by a truncation)
    and Python keeps it, but Arrow cannot store it. Each source column is stored as text, so
    one of them shows where it came from.
    """
    stored = {name: column for column, name in originals.items()}
    texts = [(stored[k], v) for k, v in row.items() if k in stored]
    texts += [
        (f"messages[{i}].content", m["content"]) for i, m in enumerate(row.get("messages") or [])
    ]
    texts += [("text", row.get("text")), (TOOL_CALLING, row.get(TOOL_CALLING))]
    for field, text in texts:
        if isinstance(text, str) and (found := _LONE_SURROGATE.search(text)):
            message = (
                f"text with a lone surrogate {found.group()!r} at character {found.start()}, half "
                'of a character (an emoji cut in two, or a JSON escape such as "\\ud83d" '
                "without its pair): it has no UTF-8 form; remove it or restore the character"
            )
            return RowError(field, message)
    return None


def _another_format(err: RowError, values: dict[str, Any], fmt: Format) -> RowError:
    """``err``, saying so when the row is of another format than the one the file was read
    as (a file that mixes chat rows with question/answer rows, say)."""
    if not err.message.startswith("missing"):
        return err
    try:
        other, _plan = detect_format(list(values), None, "")
    except DataError:
        return err
    if other.name == fmt.name:
        return err
    message = (
        f"{err.message}: this row's columns {sorted(values)[:8]} are of the {other.name} "
        f"format, but the file was read as {fmt.name} from its first rows; keep one format "
        "per file (split it, and load the part you mean), or map the columns with columns="
    )
    return RowError(err.field, message)


def _good_row(
    raw: RawRow, fmt: Format, plan: dict[str, str], originals: dict[str, str]
) -> dict[str, Any]:
    if raw.values is None:
        raise RowError("", raw.error or "unreadable")
    try:
        row = fmt.normalise(raw.values, plan)
    except RowError as err:
        raise _another_format(err, raw.values, fmt) from None
    out: dict[str, Any] = {"source_row": raw.number, "error": None, "error_field": None}
    if fmt.is_text:
        out["text"] = row.text
    else:
        assert row.messages is not None
        out["messages"] = [{"role": m["role"], "content": m["content"]} for m in row.messages]
        out[UNTRAINED_TURNS] = list(row.untrained)
        # a message beyond {role, content} carries tool fields (most rows have none)
        extras = {i: _extra_fields(m) for i, m in enumerate(row.messages) if len(m) > 2}
        out[TOOL_CALLING] = encode_tool_calling(row.tools, extras)
    out["empty_fields"] = ", ".join(row.empty) or None
    out.update({stored: _as_string(raw.values.get(column)) for column, stored in originals.items()})
    return out


def _extra_fields(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k not in ("role", "content")}


def _data_error(source: Source, number: int, field: str, message: str) -> DataError:
    where = f"{source.label}, {source.unit} {number}" + (f", field {field!r}" if field else "")
    err = DataError(f"{where}: {message}")
    err.file, err.line, err.field = source.label, number, field or None  # type: ignore[attr-defined]
    return err


def read_source(source: Source, spec: Any, format_name: str | None = None) -> Loaded:
    """Stream ``source`` into a normalised Arrow dataset.

    Args:
        source: From :func:`~workbench.data.sources.open_source`.
        spec: The :class:`~workbench.data.DataSpec` (format, columns, on_error, cache_dir).
        format_name: Force this format (used for a validation source: same as training).

    Raises:
        DataError: Empty source, no format fits, or (``on_error="raise"``) a malformed row,
            naming the file, line and field.

    Examples:
        >>> from pathlib import Path
        >>> from workbench.data.prepared import DataSpec
        >>> from workbench.data.sources import open_source
        >>> path = Path("/tmp/wb-doc-loading.jsonl")
        >>> _ = path.write_text('{"question": "Hi?", "answer": "Hello"}\\n{"question": "Bye?"}\\n')
        >>> cache = "/tmp/wb-doc-loading-cache"
        >>> read_source(open_source(str(path))[0], DataSpec(cache_dir=cache))
        Traceback (most recent call last):
        workbench.errors.DataError: wb-doc-loading.jsonl, line 2, field 'answer': missing
        >>> skip = DataSpec(on_error="skip", cache_dir=cache)
        >>> loaded = read_source(open_source(str(path))[0], skip)
        >>> len(loaded.dataset), [(p.kind, p.row) for p in loaded.skipped]
        (1, [('malformed', 2)])
    """
    columns = source.columns()
    if not columns:
        _raise_empty(source)
    fmt, plan = detect_format(columns, spec.columns, source.label, format_name or spec.format)
    originals = _original_names(columns, fmt, plan)
    dataset = _generate(source, fmt, plan, originals, spec)
    dataset, skipped = _split_off_errors(dataset, source)
    if len(dataset) == 0:
        msg = (
            f"{source.label}: no usable rows ({len(skipped)} malformed, e.g. {skipped[0].message})"
        )
        raise DataError(msg)
    return Loaded(dataset, skipped, fmt, tuple(originals.values()))


def _raise_empty(source: Source) -> None:
    first = next(source.rows(), None)
    if first is not None and first.error:
        raise _data_error(source, first.number, "", first.error)
    msg = (
        f"{source.label}: empty (no rows)" if first is None else f"{source.label}: no readable rows"
    )
    raise DataError(msg)


def _generate(
    source: Source, fmt: Format, plan: dict[str, str], originals: dict[str, str], spec: Any
) -> Any:
    from datasets import Dataset
    from datasets.exceptions import DatasetGenerationError

    key = json.dumps(
        [CODE_VERSION, source.fingerprint, fmt.name, plan, originals, spec.on_error], sort_keys=True
    )
    fingerprint = hashlib.sha1(key.encode()).hexdigest()
    features = _features(fmt, list(originals.values()))
    generator = functools.partial(_rows, source, fmt, plan, originals, spec.on_error)

    def encodable(row: dict[str, Any]) -> dict[str, Any]:
        err = _unencodable(row, originals)
        return (
            row
            if err is None
            else _bad_row(source, row["source_row"], err, originals, spec.on_error)
        )

    shown = {stored: column for column, stored in originals.items()}

    def too_long(row: dict[str, Any], field: str, size: int) -> dict[str, Any]:
        err = RowError(shown.get(field, field), _too_long_message(size))
        return _bad_row(source, row["source_row"], err, originals, spec.on_error)

    checks = (encodable, too_long)
    if getattr(spec, "batched", True):
        return _write_batches(generator, features, fingerprint, spec.cache_dir, checks)

    def checked() -> Iterator[dict[str, Any]]:  # the rows as _write_batches would store them
        rows, schema = generator(), features.arrow_schema
        while batch := list(itertools.islice(rows, _WRITE_BATCH)):
            yield from _record_batch(batch, schema, checks)[0]

    try:
        return Dataset.from_generator(
            checked,
            features=features,
            fingerprint=fingerprint,
            cache_dir=spec.cache_dir,
        )
    except DatasetGenerationError as err:
        if isinstance(err.__cause__, DataError):
            raise err.__cause__ from None
        raise


def _write_batches(
    generator: Any, features: Any, fingerprint: str, cache_dir: str | None, checks: Any
) -> Any:
    """The rows written as Arrow record batches to a cache file (reused when it exists), each
    batch checked by :func:`_record_batch` with ``checks`` before it is written."""
    import datasets

    folder = Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / "workbench-sources"
    path = folder / f"{fingerprint}.arrow"
    with cache_file_lock(path):
        table = _cached_or_written(path, generator, features.arrow_schema, checks)
    info = datasets.DatasetInfo(features=features)
    return datasets.Dataset(table, info=info, fingerprint=fingerprint)


def _cached_or_written(path: Path, generator: Any, schema: Any, checks: Any) -> Any:
    """The table cached at ``path``, else the rows written there first (its lock held)."""
    import pyarrow as pa
    from datasets.table import MemoryMappedTable

    table = cached_arrow_table(path)
    if table is not None:
        return table
    clear_leftovers(path.parent)
    partial = path.parent / f".{path.stem}.{_WRITER}.{uuid.uuid4().hex}.incomplete"
    rows = generator()
    try:
        with translated_write_errors(path.parent):  # a full disk in Arrow's words: "[errno 28]"
            with pa.OSFile(str(partial), "wb") as sink, pa.ipc.new_stream(sink, schema) as out:
                while batch := list(itertools.islice(rows, _WRITE_BATCH)):
                    out.write_batch(_record_batch(batch, schema, checks)[1])
            os.replace(partial, path)
            write_checksum(path)
    finally:
        partial.unlink(missing_ok=True)
    return MemoryMappedTable.from_file(str(path))


@contextlib.contextmanager
def cache_file_lock(path: Path) -> Iterator[None]:
    """Hold the lock of the cached file ``path`` (``.<name>.lock`` beside it) while checking,
    writing or deleting it.

    A copy is complete once its checksum is written beside it, just after the file itself:
    another process checking it in between (a second kernel loading the same data into the
    same folder) read it as a killed writer's, deleted it, and the first failed with a
    FileNotFoundError. Under the lock the second waits, then reuses the copy. A cache folder
    where no lock file can be made (read-only) is read without one: nothing writes there.

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "rows.arrow"
        >>> with cache_file_lock(path):
        ...     (path.parent / ".rows.arrow.lock").exists()
        True
    """
    from filelock import FileLock

    lock = FileLock(str(path.with_name(f".{path.name}.lock")))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except OSError:
        yield
        return
    try:
        yield
    finally:
        lock.release()


_WRITER = f"{socket.gethostname()}-{os.getpid()}"


def clear_leftovers(folder: Path) -> list[str]:
    """Delete what killed writers left in a cache folder; returns the names deleted.

    A load killed mid-write (a kernel restart, out of memory) leaves its partial file: ours
    (``.<key>.<host>-<pid>.<id>.incomplete``, gone at once when that process on this host is
    gone) or datasets' (``tmp*`` of a tokenizing pass). Any of them unmodified for an hour
    goes too (its writer is unknown, on another host, or from an older version); a writer
    touches its file with every batch, so a live one keeps its own.

    Examples:
        >>> import tempfile; folder = Path(tempfile.mkdtemp())
        >>> dead = folder / f".key.{socket.gethostname()}-999999999.0.incomplete"
        >>> live = folder / f".key.{_WRITER}.1.incomplete"
        >>> _ = dead.write_bytes(b"x"), live.write_bytes(b"x")
        >>> len(clear_leftovers(folder)), dead.exists(), live.exists()
        (1, False, True)
    """
    deleted = []
    for file in [*folder.glob(".*.incomplete"), *folder.glob("tmp*")]:
        writer = file.name.removesuffix(".incomplete").partition(".")[2].partition(".")[2]
        if file.is_file() and (stale(file) or _writer_gone(writer.rpartition(".")[0])):
            with contextlib.suppress(OSError):
                file.unlink()
                deleted.append(file.name)
    return deleted


def _writer_gone(writer: str) -> bool:
    """Whether the process named ``<host>-<pid>`` is on this host and no longer running."""
    host, _, pid = writer.rpartition("-")
    return host == socket.gethostname() and pid.isdigit() and not process_alive(int(pid))


def _record_batch(rows: list[dict[str, Any]], schema: Any, checks: Any) -> tuple[list, Any]:
    """``rows`` as an Arrow record batch, and the rows it holds.

    ``checks`` is ``(encodable, too_long)``: ``encodable(row)`` turns a row Arrow cannot
    encode into a malformed one, ``too_long(row, field, size)`` one with a field over
    :data:`MAX_FIELD_BYTES` (each raises with ``on_error="raise"``). They run only over a
    batch that needs them, so the rows of every other batch pay nothing for them.
    """
    import pyarrow as pa

    encodable, too_long = checks
    try:
        batch = pa.RecordBatch.from_pylist(rows, schema=schema)
    except UnicodeEncodeError:
        rows = [encodable(row) for row in rows]
        batch = pa.RecordBatch.from_pylist(rows, schema=schema)
    over = _fields_over_limit(batch)
    if over:
        rows = [too_long(row, *over[k]) if k in over else row for k, row in enumerate(rows)]
        batch = pa.RecordBatch.from_pylist(rows, schema=schema)
    return rows, batch


def _fields_over_limit(batch: Any) -> dict[int, tuple[str, int]]:
    """Each row of ``batch`` with a text over :data:`MAX_FIELD_BYTES`: its index, the first
    such field (a source column before a normalised one) and its size. Sizes come from
    Arrow's offsets: no text is read."""
    import pyarrow as pa
    import pyarrow.compute as pc

    found: dict[int, tuple[str, int]] = {}
    for name in sorted(batch.schema.names, key=lambda name: name in _NORMALISED):
        column = batch.column(name)
        if name == "messages":
            turns = pc.list_flatten(column)
            sizes = pc.binary_length(pc.struct_field(turns, "content"))
            rows = pc.list_parent_indices(column).to_numpy()
            first_turn = column.offsets.to_numpy()
            for k in pc.indices_nonzero(pc.greater(sizes, MAX_FIELD_BYTES)).to_pylist():
                row = int(rows[k])
                turn = k - int(first_turn[row] - first_turn[0])
                found.setdefault(row, (f"messages[{turn}].content", sizes[k].as_py()))
        elif pa.types.is_string(column.type):
            sizes = pc.binary_length(column)
            for row in pc.indices_nonzero(pc.greater(sizes, MAX_FIELD_BYTES)).to_pylist():
                found.setdefault(row, (name, sizes[row].as_py()))
    return found


def _too_long_message(size: int) -> str:
    return (
        f"a text of {format_bytes(size)}, longer than the {format_bytes(MAX_FIELD_BYTES)} one "
        "field may hold (far more than any model reads at once): shorten it, or split it over "
        "rows"
    )


def cached_arrow_table(path: Path) -> Any:
    """The Arrow table cached at ``path``; ``None`` when there is none or it is damaged.

    A damaged copy (truncated, overwritten) is deleted with a
    :class:`~workbench.errors.WorkbenchWarning`, so it is rebuilt from the source instead of
    failing every later load with pyarrow's "Expected to read ... bytes". A copy cut short
    between two record batches reads as a valid shorter table, so a file must also end with
    the stream's end marker, which only a writer that finished writes. And it must match the
    checksum written beside it once it was complete (:func:`write_checksum`): one flipped
    bit in a string's offsets made pyarrow abort the whole process (a kernel that died on
    every rerun), elsewhere it was read as other text.

    Examples:
        >>> import pyarrow as pa
        >>> from pathlib import Path
        >>> path = Path("/tmp/wb-doc-cached.arrow")
        >>> with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, pa.schema([])) as out:
        ...     pass
        >>> _ = write_checksum(path)  # written whole
        >>> cached_arrow_table(path).num_rows
        0
        >>> _ = path.write_bytes(b"damaged")
        >>> import warnings
        >>> with warnings.catch_warnings(record=True):
        ...     cached_arrow_table(path) is None, path.exists()
        (True, False)
    """
    import pyarrow as pa
    from datasets.table import MemoryMappedTable

    if not path.exists():
        return None
    try:
        _check_stream_end(path)
        _check_checksum(path)
        return MemoryMappedTable.from_file(str(path))
    except (pa.ArrowException, OSError) as err:
        msg = f"cached copy {path} is damaged ({err}); rebuilding it from the source"
        warnings.warn(msg, WorkbenchWarning, stacklevel=2)
        path.unlink(missing_ok=True)
        _checksum_file(path).unlink(missing_ok=True)
        return None


def write_checksum(path: Path, keep_existing: bool = False) -> Path:
    """Write the CRC-32 and size of the complete file ``path`` beside it (``<name>.crc32``),
    which :func:`cached_arrow_table` checks; returns the checksum file.

    Args:
        path: A file written whole.
        keep_existing: Leave a checksum file that is there already (a reused cache's, which
            :func:`cached_arrow_table` has just checked).

    Examples:
        >>> path = Path("/tmp/wb-doc-checksum.arrow")
        >>> _ = path.write_bytes(b"complete")
        >>> write_checksum(path).read_text()
        '4267d023 8'
    """
    checksum = _checksum_file(path)
    if keep_existing and checksum.exists():
        return checksum
    return atomic_write_text(checksum, _checksum(path))


def _checksum_file(path: Path) -> Path:
    return path.with_name(path.name + ".crc32")


def _checksum(path: Path) -> str:
    """CRC-32 and size: catches any flipped bit and any change of length, at memory speed."""
    crc, size = 0, 0
    with path.open("rb") as file:
        while block := file.read(_CHECKSUM_BLOCK):
            crc, size = zlib.crc32(block, crc), size + len(block)
    return f"{crc:08x} {size}"


_CHECKSUM_BLOCK = 8 * 1024 * 1024


def _check_checksum(path: Path) -> None:
    """Raise ``OSError`` unless ``path`` matches the checksum written when it was complete
    (a file without one was left by a writer killed before it could write it: the copies of
    versions before the checksums have other keys, :data:`CODE_VERSION`)."""
    try:
        expected = _checksum_file(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        raise OSError("it has no checksum: its writer did not finish") from None
    if _checksum(path) != expected:
        raise OSError("its checksum differs from the one written with it: changed on disk")


def _check_stream_end(path: Path) -> None:
    """Raise ``OSError`` unless the Arrow stream at ``path`` ends with its end marker right
    after its last message. The file's last 8 bytes alone can be a cut batch's own (an int32
    column ending ``-1, 0`` holds the marker's bytes), so the messages are walked (headers
    only, on a memory map) to where the last one ends."""
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        messages = pa.ipc.MessageReader.open_stream(source)
        last_end = 0
        while True:
            try:
                messages.read_next_message()
            except StopIteration:
                break
            last_end = source.tell()
        source.seek(last_end)
        if source.read() != _END_OF_STREAM:
            raise OSError("it ends before the stream's end marker: cut short")


def _split_off_errors(dataset: Any, source: Source) -> tuple[Any, tuple[Problem, ...]]:
    import numpy as np
    import pyarrow.compute as pc

    table = dataset.with_format("arrow")[:]
    failed = pc.is_valid(table.column("error")).to_numpy(zero_copy_only=False)
    skipped = []
    if failed.any():
        bad = table.filter(failed).select(["source_row", "error", "error_field"]).to_pylist()
        for row in bad:
            message = _data_error(source, row["source_row"], row["error_field"], row["error"])
            skipped.append(Problem(row["source_row"], "malformed", str(message), "source"))
        dataset = dataset.select(np.flatnonzero(~failed))
    return dataset.remove_columns(["error", "error_field"]), tuple(skipped)


def refuse_template_rejects(
    loaded: Loaded,
    source: Source,
    template: Any,
    tokenizer: Any,
    on_error: str,
    every_row: bool = False,
) -> Loaded:
    """Rows whose turns the chat template refuses, raised naming the first or skipped.

    Templates such as Gemma's or Mistral's raise on a system turn ("System role not
    supported") or on roles that do not alternate, and some write no tool calls. Each
    sequence of roles (with tools or without) is rendered once, on its first row (as for
    training: the whole conversation and each answer's prompt); with ``every_row=True``,
    every row is, for a template that refuses or drops tools by what the turns say (found
    when tokenizing fails).

    Raises:
        DataError: ``on_error="raise"`` and a row is refused (file, line, ``messages`` and
            the template's own words), or every row is.

    Examples:
        >>> from workbench.data.prepared import DataSpec
        >>> from workbench.data.sources import open_source
        >>> from workbench.data.templates import Template
        >>> no_system = Template("strict", "{% if messages[0]['role'] == 'system' %}"
        ...     "{{ raise_exception('System role not supported') }}{% endif %}"
        ...     "{% for m in messages %}{{ m['content'] }}{% endfor %}")
        >>> rows = [{"messages": [{"role": "system", "content": "Be brief."},
        ...                       {"role": "user", "content": "Hi"},
        ...                       {"role": "assistant", "content": "Hello"}]},
        ...         {"question": "2+2?", "answer": "4"}]
        >>> source = open_source([rows[0], {"messages": rows[0]["messages"][1:]}])[0]
        >>> loaded = read_source(source, DataSpec(cache_dir="/tmp/wb-doc-loading-cache"))
        >>> kept = refuse_template_rejects(loaded, source, no_system, None, "skip")
        >>> len(kept.dataset), [(p.row, p.kind) for p in kept.skipped]
        (1, [(1, 'malformed')])
        >>> refuse_template_rejects(loaded, source, no_system, None, "raise")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        workbench.errors.DataError: list, row 1, field 'messages': the chat template \
('strict') refuses this conversation: System role not supported; ...
    """
    import numpy as np

    if loaded.format.is_text:
        return loaded
    shapes = role_sequences(loaded.dataset)
    table = loaded.dataset.select_columns([TOOL_CALLING]).with_format("arrow")[:]
    calling = table.column(TOOL_CALLING).is_valid().to_pylist()
    # Whether a template writes a row's tools depends on their text too: labelling checks
    # every such row on its own renderings (ToolsNotWrittenError), and then every_row comes here.
    keys: list[Any] = [k if every_row else (shape, calling[k]) for k, shape in enumerate(shapes)]
    firsts: dict[Any, int] = {}
    for k, key in enumerate(keys):
        firsts.setdefault(key, k)
    refused = {}
    for key, k in firsts.items():
        row = loaded.dataset[k]
        reason = _template_refusal(template, tokenizer, row["messages"], row[TOOL_CALLING])
        if reason is not None:
            refused[key] = reason
    if not refused:
        return loaded
    bad = [k for k, key in enumerate(keys) if key in refused]
    rows = loaded.dataset.select_columns(["source_row"])[bad]["source_row"]
    errors = [
        _data_error(source, row, "messages", refused[keys[k]])
        for k, row in zip(bad, rows, strict=True)
    ]
    if on_error == "raise" or len(bad) == len(shapes):
        if on_error != "raise":
            raise DataError(
                f"{source.label}: no usable rows ({len(bad)} refused, e.g. {errors[0]})"
            )
        raise errors[0]
    keep = np.setdiff1d(np.arange(len(shapes)), bad)
    problems = tuple(
        Problem(row, "malformed", str(err), "source") for row, err in zip(rows, errors, strict=True)
    )
    return Loaded(
        loaded.dataset.select(keep), loaded.skipped + problems, loaded.format, loaded.originals
    )


def role_sequences(dataset: Any) -> list[tuple[str, ...]]:
    """Each row's sequence of roles, read from the Arrow ``messages`` column.

    Examples:
        >>> import datasets
        >>> turns = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]]
        >>> role_sequences(datasets.Dataset.from_dict({"messages": turns}))
        [('user', 'assistant')]
    """
    import pyarrow.compute as pc

    column = dataset.with_format("arrow")[:].column("messages").combine_chunks()
    roles = pc.struct_field(pc.list_flatten(column), "role").to_pylist()
    lengths = pc.list_value_length(column).to_pylist()  # right for a sliced column too
    starts = [0, *itertools.accumulate(lengths)][:-1]
    return [tuple(roles[a : a + n]) for a, n in zip(starts, lengths, strict=True)]


def _template_refusal(
    template: Any, tokenizer: Any, messages: list[dict[str, str]], tool_calling: str | None = None
) -> str | None:
    """Why the template refuses ``messages`` or an answer's prompt of them (its own words), or
    drops the row's tool calls or tools, with the fix; ``None`` when it renders them all."""
    from jinja2.exceptions import TemplateError

    from workbench.data.templates import render_many

    messages, tools = with_tool_calling(messages, tool_calling)
    answers = [i for i, m in enumerate(messages) if m["role"] == "assistant" and i]
    prompts = [messages[:i] for i in answers]
    offered = [tools] if tools else None
    try:
        full = render_many(template, tokenizer, [messages], False, offered)[0]
        rendered = []
        if prompts:
            each = offered * len(prompts) if offered else None
            rendered = render_many(template, tokenizer, prompts, True, each)
    except (TemplateError, TypeError, AttributeError) as err:
        reason = str(getattr(err, "message", None) or err)
        has_system = any(m["role"] == "system" for m in messages)
        return _refusal_message(template, reason, _SYSTEM_FIX if has_system else _TURNS_FIX)
    dropped = None
    if tool_calling:
        answered = dict(zip(answers, rendered, strict=True))
        dropped = check_template_writes_tools(full, messages, tools, answered)
    return _refusal_message(template, dropped, _TOOLS_FIX) if dropped else None


_SYSTEM_FIX = (
    "drop the system turn or put its text in the first user turn, or pick another "
    "template (template='chatml')"
)
_TURNS_FIX = "change the turns, or pick another template (template='chatml')"
_TOOLS_FIX = (
    "pick a template that writes them: the model's own if it was made for tool calling, "
    "or template='chatml' (Hermes-style <tool_call> blocks)"
)


def _refusal_message(template: Any, reason: str, fix: str) -> str:
    return f"the chat template ({template.name!r}) refuses this conversation: {reason}; {fix}"
