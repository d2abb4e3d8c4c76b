"""Read rows from files and in-memory objects, one at a time, without judging them.

Every source becomes a :class:`Source`: a label for messages (the file name), the unit its
numbers count (``line``, ``row`` or ``item``), and a ``rows()`` iterator of :class:`RawRow`.
A row that cannot be read (bad JSON, bytes that are not UTF-8) comes out as a ``RawRow``
with ``error`` set instead of raising, so one policy (``on_error``) decides later whether
to raise or skip. Files are read line by line or batch by batch: a 1 GB JSONL file is never
held in memory. The one exception is a ``.json`` file holding a single JSON array (or an
object wrapping one, such as ``{"data": [...]}``), which Python's ``json`` module can only
parse whole. A CSV file's delimiter is read from its header: commas, or the semicolons and
tabs of spreadsheets saved in many locales (``.tsv`` files are tab-separated). Text files may
be compressed (``data.jsonl.gz``, ``.bz2``, ``.xz``, ``.zst``): they are decompressed as they
are read, and a damaged or cut-short one raises a ``DataError`` naming it. An Excel workbook
(``.xlsx``) is read from the sheet asked for (``sheet=``), else its sheet named ``train``, else
its first sheet, and a sheet named
``validation``, ``valid``, ``eval`` or ``test`` is its validation split, as in a ``DatasetDict``;
rows are numbered as the spreadsheet shows them, cells read as the text they show (``25%``,
``3.50``, ``1 March 1995``: :mod:`workbench.data.spreadsheet_text`), and messages name the
sheet when there are several (``book.xlsx[train]``).

Files made to exhaust memory are refused by name: a JSON line over :data:`MAX_LINE_BYTES` (a
gigabyte of one line in a 1 MB ``.gz``) is never held whole, a workbook part that inflates
over :data:`MAX_INFLATE_RATIO` times (a zip bomb) is not opened, and workbook XML declaring
entities (external ones that read other files, or ones that expand without end) is refused,
as defusedxml refuses it to openpyxl.

Examples:
    >>> src = open_source([{"text": "hello"}, {"text": "bye"}])[0]
    >>> [(r.number, r.values) for r in src.rows()]
    [(1, {'text': 'hello'}), (2, {'text': 'bye'})]
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import itertools
import json
import math
import pickle
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from workbench._display import format_bytes
from workbench.data.formats import detect_format
from workbench.data.spreadsheet_text import shown_text
from workbench.errors import DataError, SpecError, warn_user

__all__ = [
    "COMPRESSIONS",
    "MAX_INFLATE_RATIO",
    "MAX_LINE_BYTES",
    "SUFFIXES",
    "RawRow",
    "Source",
    "content_key",
    "open_source",
    "pandas_rows",
]

Unit = Literal["line", "row", "item"]
SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".xlsx")
# Compressions a text file may carry (``data.jsonl.gz``): the standard library's, and
# Zstandard (the Pile's and many Hub corpora's ``.jsonl.zst``) through pyarrow.
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
_BATCH = 1000
_NOT_COMPRESSIBLE = (".parquet", ".xlsx")  # compressed inside already; numbered by row
_NOT_UTF8 = (
    "save the file as UTF-8, or name its encoding: encoding='cp1252' for a CSV Excel saved on "
    "Windows"
)
_TOO_DEEP = "JSON nested too deeply to read (lists or objects inside each other, thousands deep)"


@dataclass(frozen=True)
class RawRow:
    """One row as read from a source, before any format check.

    Attributes:
        number: 1-based line (JSONL, CSV), item (JSON array) or row number in the source.
        values: The parsed row, or ``None`` when it could not be read.
        error: Why the row could not be read, or ``None``.

    Examples:
        >>> RawRow(3, None, "not valid JSON").error
        'not valid JSON'
    """

    number: int
    values: dict[str, Any] | None
    error: str | None = None


@dataclass(frozen=True)
class Source:
    """A readable source of rows.

    Attributes:
        label: Name used in messages, e.g. ``"data.jsonl"`` or ``"DataFrame"``.
        unit: What ``RawRow.number`` counts: ``"line"``, ``"row"`` or ``"item"``.
        read: Returns a fresh iterator over the rows.
        fingerprint: Stable identity of the content (path and a hash of its bytes; the hash
            of in-memory rows, :func:`content_key`); used as the Arrow cache key.

    Examples:
        >>> src = open_source([{"a": "1"}])[0]
        >>> src.label, src.unit
        ('list', 'row')
    """

    label: str
    unit: Unit
    read: Callable[[], Iterator[RawRow]]
    fingerprint: str

    def rows(self) -> Iterator[RawRow]:
        """Iterate over the rows from the start.

        Examples:
            >>> next(open_source([{"a": "1"}])[0].rows()).values
            {'a': '1'}
        """
        return self.read()

    def columns(self) -> list[str]:
        """Column names, taken from the first readable row (empty if there is none).

        Examples:
            >>> open_source([{"q": "x", "a": "y"}])[0].columns()
            ['q', 'a']
        """
        for row in self.read():
            if row.values is not None:
                return list(row.values)
        return []


def open_source(
    source: Any, sheet: str | None = None, encoding: str | None = None
) -> tuple[Source, Source | None]:
    """Turn a path or object into a :class:`Source` (and a validation source, if it has one).

    Args:
        source: A ``.jsonl``/``.json``/``.csv``/``.tsv``/``.parquet``/``.xlsx`` path (an Excel
            workbook: its ``train`` sheet or else its first, the first non-blank row as
            header), a folder written by ``datasets.save_to_disk``, a ``datasets.Dataset`` or
            ``DatasetDict``, a pandas or polars ``DataFrame``, or a list, tuple or generator
            of dicts (a generator is read once, when called).
        sheet: The workbook's sheet to read instead (its name; case and surrounding spaces
            ignored when no sheet has it exactly). Only for an Excel workbook.
        encoding: A text file's encoding when it is not UTF-8 (``"cp1252"``: a CSV saved by
            Excel on Windows). ``None``: UTF-8, or UTF-16/32 when the file starts with their
            byte order mark.

    Returns:
        ``(main, validation)``; ``validation`` is a ``DatasetDict``'s (or a workbook's)
        ``validation``, ``valid``, ``eval`` or ``test`` split (sheet), else ``None``.

    Raises:
        DataError: The path does not exist, the kind of source is not supported, or the
            workbook has no such ``sheet``.
        SpecError: ``sheet`` given for a source that is not an Excel workbook, or
            ``encoding`` for one that is not a text file, or an encoding Python does not know.

    Examples:
        >>> main, val = open_source([{"text": "hi"}])
        >>> main.label, val
        ('list', None)
    """
    if sheet is not None and not _is_workbook_path(source):
        msg = f"sheet={sheet!r} picks a sheet of an Excel workbook (.xlsx); this source is not one"
        raise SpecError(msg)
    if encoding is not None:
        _check_encoding(encoding)
        if not isinstance(source, (str, Path)):
            raise SpecError(_not_text(encoding, f"a {type(source).__name__}"))
    if isinstance(source, (str, Path)):
        return _open_path(Path(source), sheet, encoding)
    if isinstance(source, (list, tuple)):
        return _list_source(list(source), "list"), None
    kind = type(source).__name__
    if kind == "DataFrame" and type(source).__module__.startswith("polars"):
        return _polars_source(source), None
    if kind == "DataFrame":
        return _dataframe_source(source), None
    if kind in ("Dataset", "DatasetDict"):
        return _dataset_sources(source, kind)
    if isinstance(source, Iterator):  # a generator of rows: read once, here
        return _list_source(list(source), "generator"), None
    msg = (
        f"cannot read data from a {kind}: give a .jsonl/.json/.csv/.tsv/.parquet/.xlsx path, a "
        "folder saved by datasets, a datasets.Dataset, a pandas or polars DataFrame, or a list "
        "(or generator) of dicts"
    )
    if isinstance(source, dict):
        msg += " (a dict of columns: pandas.DataFrame(columns) reads it; one row: [row])"
    raise DataError(msg)


def _nearby_names(path: Path) -> str:
    """``" (did you mean ...?)"`` naming the files beside a missing ``path`` whose names are
    close to its name (``people.json`` for ``people.jsonl``), or ``""``.

    Examples:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "people.jsonl").write_text("")
        >>> _nearby_names(folder / "people.json"), _nearby_names(folder / "cats.csv")
        (' (did you mean people.jsonl?)', '')
    """
    import difflib

    try:
        names = [p.name for p in path.parent.iterdir()]
    except OSError:  # no folder there either
        return ""
    close = difflib.get_close_matches(path.name, names, n=3, cutoff=0.8)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def _is_workbook_path(source: Any) -> bool:
    return isinstance(source, (str, Path)) and Path(source).suffix.lower() == ".xlsx"


def _open_path(
    path: Path, sheet: str | None = None, encoding: str | None = None
) -> tuple[Source, Source | None]:
    if not path.exists():
        raise DataError(f"{path}: no such file or folder{_nearby_names(path)}")
    if path.is_dir() and encoding is not None:
        raise SpecError(_not_text(encoding, path.name))
    if path.is_dir():
        import datasets

        try:
            loaded = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError) as err:
            msg = f"{path}: not a folder written by datasets' save_to_disk ({err})"
            raise DataError(msg + _data_files_hint(path)) from err
        return _dataset_sources(loaded, path.name)
    readers = {
        ".jsonl": _read_jsonl,
        ".json": _read_json,
        ".csv": _read_csv,
        ".tsv": _read_csv,
        ".parquet": _read_parquet,
        ".xlsx": _read_xlsx,
    }
    kind = _file_type(path)
    if kind == ".xlsx" and path.suffix.lower() == ".xlsx":
        return _workbook_sources(path, sheet)
    reader = readers.get(kind)
    if reader is None or (kind in _NOT_COMPRESSIBLE and kind != path.suffix.lower()):
        compressed = path.suffix.lower() in COMPRESSIONS
        shown = "".join(path.suffixes[-2:]) if compressed else path.suffix
        msg = (
            f"{path}: unsupported file type {shown!r}; use one of {SUFFIXES}, the text ones "
            f"optionally compressed ({', '.join(COMPRESSIONS)})"
        )
        raise DataError(msg)
    _refuse_what_is_not_text(path, kind, encoding)
    if (
        encoding is not None
        and not _is_utf8(encoding)
        and reader not in (_read_parquet, _read_xlsx)
    ):
        _check_encoding_fits(path, encoding)
    unit: Unit = "row" if kind in _NOT_COMPRESSIBLE else "line"
    if reader is _read_jsonl and _starts_with_array(path, encoding):
        reader = _read_json  # one JSON array named .jsonl, as a .json of JSON Lines is read
    if reader is _read_json and _is_json_document(path, encoding):
        unit = "item"
    if encoding is not None and reader in (_read_parquet, _read_xlsx):
        raise SpecError(_not_text(encoding, path.name))
    read = (lambda: reader(path, encoding)) if encoding is not None else (lambda: reader(path))
    fingerprint = _file_fingerprint(path, f"encoding={encoding}" if encoding else "")
    return Source(path.name, unit, read, fingerprint), None


# What a file's first bytes say it is, when its name says text.
_MAGIC = (
    (b"\x1f\x8b", "gzip-compressed data", "name it {name}.gz"),
    (b"\xfd7zXZ\x00", "xz-compressed data", "name it {name}.xz"),
    (b"\x28\xb5\x2f\xfd", "Zstandard-compressed data", "name it {name}.zst"),
    (b"PAR1", "a Parquet file", "name it {stem}.parquet"),
    (
        b"PK\x03\x04",
        "a zip archive (an Excel workbook is one)",
        "unpack it, or name a workbook {stem}.xlsx",
    ),
)


def _refuse_what_is_not_text(path: Path, kind: str, encoding: str | None) -> None:
    """A text file's name on binary data, or (no encoding given) on UTF-16 without its mark:
    one read of the file's head for both checks."""
    if kind not in (".jsonl", ".json", ".csv", ".tsv") or path.suffix.lower() in COMPRESSIONS:
        return
    with path.open("rb") as fh:
        head = fh.read(4096)
    _refuse_binary_as_text(path, head)
    if encoding is None:
        _refuse_unmarked_utf16(path, head)


def _refuse_unmarked_utf16(path: Path, head: bytes) -> None:
    """A text file in UTF-16 without its byte order mark (every other byte 0 for Latin text):
    say so and name the encoding, rather than read it as UTF-8 full of NUL characters."""
    head = head[: len(head) // 2 * 2]
    if len(head) < 8 or _wide_encoding(head) is not None:
        return
    pairs = len(head) // 2
    little = sum(1 for i in range(1, len(head), 2) if head[i] == 0 and head[i - 1] != 0)
    big = sum(1 for i in range(0, len(head), 2) if head[i] == 0 and head[i + 1] != 0)
    for zeros, name in ((little, "utf-16-le"), (big, "utf-16-be")):
        if zeros > pairs // 2:
            msg = (
                f"{path}: the file looks like UTF-16 text without a byte order mark (every "
                f"other byte is 0): pass encoding={name!r}, or save it as UTF-8"
            )
            raise DataError(msg)


def _refuse_binary_as_text(path: Path, head: bytes) -> None:
    """A text file's name on compressed or binary data: say what it holds, not that its
    bytes are not UTF-8 (which suggested an encoding) or that a CSV is empty."""
    bzip2 = head[:3] == b"BZh" and head[3:4].isdigit() and head[4:10] == b"1AY&SY"
    found = [(what, fix) for magic, what, fix in _MAGIC if head.startswith(magic)]
    if bzip2:
        found = [("bzip2-compressed data", "name it {name}.bz2")]
    if found:
        what, fix = found[0]
        msg = (
            f"{path}: the file holds {what}, not text: {fix.format(name=path.name, stem=path.stem)}"
        )
        raise DataError(msg)


_UTF8_BOM = b"\xef\xbb\xbf"


def _check_encoding_fits(path: Path, encoding: str) -> None:
    """Refuse ``encoding`` for a file whose byte order mark says UTF-8 (or UTF-16, UTF-32),
    and warn when its non-ASCII bytes are valid UTF-8 (then ``latin-1`` or ``cp1252`` turn
    "Près" into "PrÃ¨s")."""
    with contextlib.closing(_open_bytes(path)) as stream:
        head = stream.read(1 << 20)
    marked = "UTF-8" if head.startswith(_UTF8_BOM) else _wide_encoding(_first_bytes(path))
    if marked is not None:
        msg = (
            f"{path}: the file starts with {marked.upper()}'s byte order mark, so it is "
            f"{marked.upper()}, not encoding={encoding!r}: leave encoding out"
        )
        raise DataError(msg)
    text = None if head.isascii() else _utf8_text(head)
    if text is None:
        return
    found = re.search(r"\w*[^\x00-\x7f]\w*", text)
    if found is None:
        return
    word = found.group()[:40]
    msg = (
        f"{path}: the file reads as UTF-8 (its non-ASCII bytes are valid UTF-8), and "
        f"encoding={encoding!r} reads {word!r} as {word.encode().decode(encoding, 'replace')!r}; "
        "leave encoding out unless the text is really in that encoding"
    )
    warn_user(msg)


def _not_text(encoding: str, what: str) -> str:
    return f"encoding={encoding!r} is for text files (.jsonl, .json, .csv, .tsv); {what} is not one"


def _check_encoding(encoding: str) -> None:
    import codecs

    try:
        codecs.lookup(encoding)
    except (LookupError, TypeError):
        msg = (
            f"encoding={encoding!r} is not a text encoding Python knows (e.g. 'cp1252', 'latin-1')"
        )
        raise SpecError(msg) from None


def _file_fingerprint(path: Path, part: str = "") -> str:
    """The identity of a file's content (path and bytes) and of ``part`` of it.

    The bytes are hashed, not only the size and time written: ``cp -p``, ``rsync -t``, an
    unpacked archive or a file system with coarse times (FAT, some network shares) can leave
    an edited file with both unchanged, and the cache would serve the old rows.
    """
    digest = hashlib.blake2b(digest_size=20)
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    key = f"{path.resolve()}|{digest.hexdigest()}"
    return hashlib.sha1(f"{key}|{part}".encode() if part else key.encode()).hexdigest()


def _data_files_hint(folder: Path) -> str:
    """For a folder of data files (a dataset's shards), how to read them as one."""
    found = sorted(p for p in folder.rglob("*") if p.is_file() and _file_type(p) in SUFFIXES)
    if not found:
        return ""
    kind = _file_type(found[0]).lstrip(".").replace("jsonl", "json").replace("tsv", "csv")
    shown = ", ".join(str(p.relative_to(folder)) for p in found[:3])
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    how = (
        "pandas.concat([pandas.read_excel(f) for f in files]) and pass the DataFrame"
        if kind == "xlsx"  # datasets has no Excel builder
        else f"datasets.load_dataset({kind!r}, data_files=[...]) and pass the Dataset"
    )
    return f". It holds data files ({shown}{more}): give one file, or read them as one with {how}"


def _file_type(path: Path) -> str:
    """``.jsonl`` for ``data.jsonl`` and for ``data.jsonl.gz``."""
    suffixes = [x.lower() for x in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def _open_bytes(path: Path, encoding: str | None = None) -> IO[bytes]:
    """The file's text as UTF-8 bytes: decompressed as they are read when it is compressed,
    and re-encoded from ``encoding``, or from UTF-16 or UTF-32 when the file starts with
    their byte order mark."""
    if path.suffix.lower() not in COMPRESSIONS:
        raw: IO[bytes] = path.open("rb", buffering=1 << 16)
    else:
        raw = io.BufferedReader(_Decompressed(path), buffer_size=1 << 16)
    if encoding is None or _is_utf8(encoding):
        encoding = _wide_encoding(raw.peek(4)[:4])  # type: ignore[attr-defined]
    if encoding is None:
        return raw
    return io.BufferedReader(_Reencoded(raw, encoding, path), buffer_size=1 << 16)


# Byte order marks of the encodings other than UTF-8 a text file announces itself in (Excel's
# "Unicode Text", Windows PowerShell 5's default for `>` and Out-File: UTF-16 LE); longest first.
_WIDE_BOMS = (
    (b"\xff\xfe\x00\x00", "utf-32"),
    (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
)


def _written_bytes(path: Path) -> IO[bytes]:
    """The file's bytes as written: decompressed, not re-encoded (:func:`_open_bytes` is)."""
    return path.open("rb") if path.suffix.lower() not in COMPRESSIONS else _Decompressed(path)


def _first_bytes(path: Path) -> bytes:
    """The first four bytes of the file's text, as written."""
    with contextlib.closing(_written_bytes(path)) as stream:
        return stream.read(4)


def _utf8_text(head: bytes) -> str | None:
    """``head`` read as UTF-8 (a character cut at a full sample's end left out), or ``None``
    where it is not UTF-8."""
    try:
        return head.decode("utf-8")
    except UnicodeDecodeError as err:  # not UTF-8, unless the sample ends inside a character
        if err.reason != "unexpected end of data" or len(head) < 1 << 20:
            return None
        return head[: err.start].decode("utf-8")


def _is_utf8(encoding: str) -> bool:
    import codecs

    return codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")


def _wide_encoding(head: bytes) -> str | None:
    return next((name for bom, name in _WIDE_BOMS if head.startswith(bom)), None)


class _Reencoded(io.RawIOBase):
    """A UTF-16/32 text file's content as UTF-8 bytes (its byte order mark dropped)."""

    def __init__(self, raw: IO[bytes], encoding: str, path: Path) -> None:
        super().__init__()
        self.text = io.TextIOWrapper(raw, encoding=encoding, errors="strict", newline="")
        self.path, self.encoding = path, encoding
        self.pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.pending:
            try:
                chunk = self.text.read(1 << 14)
            except UnicodeDecodeError as err:
                line = _first_undecodable_line(self.path, self.encoding)
                where = f" at line {line}" if line else ""
                msg = (
                    f"{self.path.name}: not valid {self.encoding.upper()} text{where} "
                    f"({err.reason}){_utf8_hint(self.path)}"
                )
                raise DataError(msg) from None
            if not chunk:
                return 0
            self.pending = chunk.encode("utf-8", errors="surrogatepass")
        size = min(len(buffer), len(self.pending))
        buffer[:size], self.pending = self.pending[:size], self.pending[size:]
        return size

    def close(self) -> None:
        if not self.closed:
            self.text.close()
        super().close()


def _first_undecodable_line(path: Path, encoding: str) -> int | None:
    """The number of the first line of ``path`` that is not ``encoding`` text."""
    import codecs

    decoder, lines = codecs.getincrementaldecoder(encoding)(errors="strict"), 1
    with contextlib.closing(_written_bytes(path)) as stream:
        while chunk := stream.read(1 << 16):
            try:
                lines += decoder.decode(chunk).count("\n")
            except UnicodeDecodeError as err:
                return lines + chunk[: err.start].decode(encoding, "replace").count("\n")
    return None


def _utf8_hint(path: Path) -> str:
    """``"; it reads as UTF-8: leave encoding out"`` where the file's bytes are UTF-8."""
    with contextlib.closing(_written_bytes(path)) as stream:
        head = stream.read(1 << 20)
    return "; it reads as UTF-8: leave encoding out" if _utf8_text(head) is not None else ""


class _Decompressed(io.RawIOBase):
    """A compressed file's text bytes; damage found while reading raises a ``DataError``."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.done = 0  # decompressed bytes handed out so far
        self.stream = _decompressing(path)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        import lzma
        import zlib

        try:
            data = self.stream.read(len(buffer))
        except (EOFError, OSError, ValueError, lzma.LZMAError, zlib.error) as err:
            read = f"; its first {self.done:,} bytes of text read fine" if self.done else ""
            msg = (
                f"{self.path.name}: the compressed file is damaged or cut short ({err}){read}; "
                "compress it again or fetch a complete copy"
            )
            raise DataError(msg) from None
        buffer[: len(data)] = data
        self.done += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self.stream.close()
        super().close()


def _decompressing(path: Path) -> Any:
    import bz2
    import gzip
    import lzma

    suffix = path.suffix.lower()
    if suffix == ".zst":
        import pyarrow as pa

        return pa.input_stream(str(path), compression="zstd")
    return {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}[suffix](path, "rb")


def _open_text(path: Path, encoding: str | None = None) -> IO[str]:
    # surrogateescape keeps reading past bad bytes; the row holding them is then reported.
    return io.TextIOWrapper(
        _open_bytes(path, encoding), encoding="utf-8-sig", errors="surrogateescape", newline=""
    )


def _read_jsonl(path: Path, encoding: str | None = None) -> Iterator[RawRow]:
    with _open_bytes(path, encoding) as fh:
        for number, raw in enumerate(_bounded_lines(fh), start=1):
            if raw is None:
                yield RawRow(
                    number, None, _LINE_TOO_LONG.format(limit=format_bytes(MAX_LINE_BYTES))
                )
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield RawRow(
                    number,
                    None,
                    f"bytes that are not UTF-8 (at byte {err.start} of the line; {_NOT_UTF8})",
                )
                continue
            line = line.lstrip("\ufeff") if number == 1 else line
            if line.strip():
                yield _parse_json_line(number, line)


# A JSON line longer than this is refused unread, so no line, however long (a gigabyte of
# text in a 1 MB .gz), is held in memory whole: four fields at loading's MAX_FIELD_BYTES.
MAX_LINE_BYTES = 256 * 2**20
_LINE_TOO_LONG = (
    "a line longer than {limit}, the most one row may hold (far more text than any model "
    "reads at once): split the row, or shorten its texts"
)


def _bounded_lines(stream: IO[bytes]) -> Iterator[bytes | None]:
    """The lines of ``stream``, ``None`` for one over :data:`MAX_LINE_BYTES` (read past a
    megabyte at a time, never held whole)."""
    limit = MAX_LINE_BYTES
    while line := stream.readline(limit + 1):
        if len(line) <= limit or line.endswith(b"\n"):
            yield line
            continue
        while (rest := stream.readline(1 << 20)) and not rest.endswith(b"\n"):
            pass
        yield None


class _DuplicateKeyError(ValueError):
    """An object in the JSON names a key twice: ``json`` keeps the last value silently."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        twice = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise _DuplicateKeyError(twice)
    return value


def _not_valid_json(err: json.JSONDecodeError) -> str:
    at = "" if err.msg.endswith(" at") else " at"  # "Unterminated string starting at"
    return f"not valid JSON ({err.msg}{at} column {err.colno}){json_hint(err)}"


def json_hint(err: json.JSONDecodeError) -> str:
    """What usually causes a JSON error that Python's parser words in its own terms.

    Examples:
        >>> try:
        ...     json.loads('{"question": "2+2?", "answer": "4",}')
        ... except json.JSONDecodeError as err:
        ...     print(json_hint(err))
        : a comma before '}' (JSON allows no trailing comma)
        >>> try:
        ...     json.loads('{"question": "2+2?", "answer": "fo\\n')
        ... except json.JSONDecodeError as err:
        ...     print(json_hint(err))
        : the line ends inside a text, with no closing quote (was it cut short?)
    """
    before = err.doc[: err.pos].rstrip()[-1:]
    at = err.doc[err.pos : err.pos + 1]
    extra = err.msg == "Extra data"
    at_the_end = not err.doc[err.pos :].strip()
    causes = [
        (
            err.msg.startswith("Unterminated string")
            or (err.msg.startswith("Invalid control character") and at_the_end),
            "the line ends inside a text, with no closing quote (was it cut short?)",
        ),
        (
            err.msg.startswith("Expecting") and at_the_end,
            "the line ends before its JSON does (was it cut short?)",
        ),
        (
            "\x00" in err.doc[:200],
            "NUL bytes between the characters: UTF-16 without a byte order mark? give "
            "encoding='utf-16-le' (or 'utf-16-be')",
        ),
        (
            before == "," and at != "" and at in "}]",
            f"a comma before {at!r} (JSON allows no trailing comma)",
        ),
        (
            err.msg.startswith("Expecting property name") and at == "'",
            "single quotes; JSON needs double quotes (is it a Python dict's repr?)",
        ),
        (
            extra and "\r" in err.doc[: err.pos + 1],
            "lines end with a carriage return alone (old Mac line ends); save with \\n",
        ),
        (
            extra and err.doc[err.pos :].lstrip().startswith(","),
            "a comma after the object; JSON Lines has one object per line and no commas",
        ),
        (extra, "more than one JSON value where one was expected"),
    ]
    return next((f": {why}" for found, why in causes if found), "")


def _parse_json_line(number: int, line: str) -> RawRow:
    try:
        value = json.loads(line, object_pairs_hook=_unique_keys)
    except _DuplicateKeyError as err:
        msg = f"the key {str(err)!r} is given twice (JSON readers keep one of them silently)"
        return RawRow(number, None, msg)
    except json.JSONDecodeError as err:
        return RawRow(number, None, _not_valid_json(err))
    except RecursionError:
        return RawRow(number, None, _TOO_DEEP)
    if not isinstance(value, dict):
        return RawRow(number, None, f"expected a JSON object, got {type(value).__name__}")
    return RawRow(number, value)


def _starts_with_array(path: Path, encoding: str | None = None) -> bool:
    with _open_bytes(path, encoding) as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")


def _read_json(path: Path, encoding: str | None = None) -> Iterator[RawRow]:
    records = _json_records(path, encoding)
    if records is None:
        yield from _read_jsonl(path, encoding)  # many ".json" files are JSON Lines
        return
    yield from _list_source(records, path.name).read()


# Columns a row itself may hold a list of objects in: such a one-row file is not a wrapper.
_ROW_LISTS = ("messages", "conversations", "conversation")


def _json_records(path: Path, encoding: str | None = None) -> list[Any] | None:
    """The items of a ``.json`` file that is one JSON document, or ``None`` for JSON Lines.

    The document is an array of rows, or an object wrapping one (``{"data": [...]}``,
    ``{"version": 2, "rows": [...]}``): its one value that is a list of objects; or one row
    of a known format written over several lines.
    """
    layout, head = _json_layout(path, encoding)
    if layout == "lines":
        return None
    document = head[0] if layout == "one-line" else _parse_whole_json(path, encoding)
    if isinstance(document, list):
        return document
    if isinstance(document, dict) and (key := _wrapping_key(document)) is not None:
        return document[key]
    if isinstance(document, dict) and (rows := pandas_rows(document)) is not None:
        return rows
    if isinstance(document, dict) and _is_a_row(list(document)):
        return [document]  # one row, written over several lines
    what = type(document).__name__
    if isinstance(document, dict) and len(lists := _split_lists(document)) > 1:
        named = ", ".join(repr(k) for k in lists[:4])
        msg = (
            f"{path.name}: one JSON object holding several lists of rows ({named}): give one "
            f"list per file, or read one with datasets.load_dataset('json', data_files=..., "
            f"field={lists[0]!r}) and pass the Dataset"
        )
        raise DataError(msg)
    if isinstance(document, dict):
        what = f"object with keys {list(document)[:8]}"
    msg = (
        f"{path.name}: one JSON {what}, not rows; expected an array of rows, JSON Lines, or "
        "an object holding one list of rows"
    )
    raise DataError(msg)


def _is_json_document(path: Path, encoding: str | None = None) -> bool:
    """Whether a ``.json`` file is one JSON document (read whole), not JSON Lines."""
    return _json_layout(path, encoding)[0] != "lines"


def _json_layout(
    path: Path, encoding: str | None = None
) -> tuple[str, list[dict[str, Any] | None]]:
    """``"document"`` (an array, or an object over several lines), ``"one-line"`` (one line
    wrapping a list of rows) or ``"lines"`` (JSON Lines), and the first two lines as rows."""
    if _starts_with_array(path, encoding):
        return "document", []
    head = _head_rows(path, encoding)
    if len(head) == 1:  # one line: a wrapper, or a single row
        wrapper = head[0] is not None and (
            _wrapping_key(head[0]) is not None
            or pandas_rows(head[0]) is not None
            or len(_split_lists(head[0])) > 1
        )
        return ("one-line" if wrapper else "lines"), head
    # A document spread over lines: neither of its first two lines is a whole JSON object.
    # (JSON Lines with a damaged first row still has a second one; with two damaged first
    # rows, whole objects follow, and the file does not parse as one document.)
    if head[:2] != [None, None]:
        return "lines", head[:2]
    if sum(r is not None for r in head[2:]) >= 2 and not _parses_whole(path, encoding):
        return "lines", head[:2]
    return "document", head[:2]


def _parses_whole(path: Path, encoding: str | None) -> bool:
    """Whether the file is one JSON document (JSON Lines of two or more rows never is)."""
    try:
        _parse_whole_json(path, encoding)
    except DataError:
        return False
    return True


def pandas_rows(document: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The rows of a document pandas' ``DataFrame.to_json`` wrote with ``orient="columns"``
    (its default), ``"index"`` or ``"split"``; ``None`` for any other document.

    Examples:
        >>> pandas_rows({"question": {"0": "2+2?", "1": "3+3?"}, "answer": {"0": "4", "1": "6"}})
        [{'question': '2+2?', 'answer': '4'}, {'question': '3+3?', 'answer': '6'}]
        >>> pandas_rows({"columns": ["text"], "index": [0], "data": [["hi"]]})
        [{'text': 'hi'}]
        >>> pandas_rows({"question": "2+2?", "answer": "4"}) is None  # one row
        True
    """
    if set(document) in ({"columns", "data"}, {"columns", "index", "data"}):
        return _split_rows(document["columns"], document["data"])
    values = list(document.values())
    if not values or not all(isinstance(v, dict) for v in values):
        return None
    keys = list(values[0])
    if any(set(v) != set(keys) for v in values):
        return None
    if _is_a_row(list(document)):  # orient="columns": {column: {index: value}}
        return [{column: document[column][i] for column in document} for i in keys]
    return values if _is_a_row(keys) else None  # orient="index": {index: row}


def _split_rows(columns: Any, data: Any) -> list[dict[str, Any]] | None:
    """The rows of ``orient="split"``: column names and a list of value lists."""
    if not isinstance(columns, list) or not isinstance(data, list):
        return None
    if not all(isinstance(r, list) and len(r) == len(columns) for r in data):
        return None
    return [dict(zip(columns, r, strict=True)) for r in data]


def _wrapping_key(document: dict[str, Any]) -> str | None:
    """The one key of ``document`` whose value is a list of rows (``None``: not a wrapper).

    A document whose own keys make a row of a known format, and whose list's objects do not,
    is one row holding a list (``{"instruction": ..., "output": ..., "sources": [{...}]}``).
    """
    keys = _lists_of_rows(document)
    if len(keys) != 1 or keys[0] in _ROW_LISTS:
        return None
    rows = document[keys[0]]  # may be empty: {"data": []} is a file of no rows
    if _is_a_row(list(document)) and not (rows and _is_a_row(list(rows[0]))):
        return None
    return keys[0]


def _lists_of_rows(document: dict[str, Any]) -> list[str]:
    """The keys of ``document`` whose values are lists of objects."""
    return [
        key
        for key, value in document.items()
        if isinstance(value, list) and all(isinstance(v, dict) for v in value)
    ]


def _split_lists(document: dict[str, Any]) -> list[str]:
    """The keys of ``document`` named like splits (``train``, ``test``...) that hold lists of
    rows: a file of several splits, not one row of a format with two list fields."""
    return [k for k in _lists_of_rows(document) if k.strip().lower() in _SPLIT_NAMES]


def _is_a_row(columns: list[str]) -> bool:
    """Whether these columns make a row of a format the loader detects on its own."""
    try:
        detect_format(columns, None, "")
    except DataError:
        return False
    return True


def _head_rows(
    path: Path, encoding: str | None = None, lines: int = 8
) -> list[dict[str, Any] | None]:
    """The first ``lines`` non-empty lines, each as a JSON object (``None``: it is not one)."""
    head: list[dict[str, Any] | None] = []
    with _open_bytes(path, encoding) as fh:
        for raw in fh:
            if not raw.strip():
                continue
            try:
                value = json.loads(raw.decode("utf-8-sig"))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                value = None
            head.append(value if isinstance(value, dict) else None)
            if len(head) == lines:
                break
    return head


def _parse_whole_json(path: Path, encoding: str | None = None) -> Any:
    try:
        with _open_bytes(path, encoding) as fh:
            return json.loads(fh.read().decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        msg = f"{path.name}: bytes that are not UTF-8 at byte {err.start}; {_NOT_UTF8}"
        raise DataError(msg) from err
    except json.JSONDecodeError as err:
        raise DataError(f"{path.name}, line {err.lineno}: {_not_valid_json(err)}") from err
    except RecursionError:
        raise DataError(f"{path.name}: {_TOO_DEEP}") from None


# Python's csv refuses a cell over 128 KiB by default; a document in a cell can be longer.
_CSV_FIELD_LIMIT = 2**31 - 1


def _read_csv(path: Path, encoding: str | None = None) -> Iterator[RawRow]:
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    delimiter = _csv_delimiter(path, encoding)
    with _open_text(path, encoding) as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        try:
            _refuse_repeated_columns(reader.fieldnames or [], f"{path.name}, line 1")
            # Each row goes out once the next is read: a quote never closed swallows the rest
            # of the file into the last row, which must be refused as that, not handed on
            # first as a row with a missing cell.
            record = row = None
            for record in reader:
                if all(value in ("", None) for value in record.values()):
                    continue  # a spreadsheet's blank row saved as CSV (",,"), as in a sheet
                if row is not None:
                    yield row
                row = _csv_row(reader.line_num - _line_breaks(record), record)
                if list(record.values()) == reader.fieldnames:
                    row = RawRow(row.number, None, _HEADER_AGAIN)
        except csv.Error as err:
            msg = f"{path.name}, line {reader.line_num}: not valid CSV ({err})"
            raise DataError(msg) from err
    breaks = 0 if record is None else _line_breaks(record)
    if breaks:
        _refuse_unclosed_quote(path, encoding, delimiter, reader.line_num - breaks)
    if row is not None:
        yield row


_HEADER_AGAIN = "the header line again, as a row (files joined with cat?): remove it"


def _line_breaks(record: dict[Any, Any]) -> int:
    """Line breaks inside a record's quoted cells (how many lines it spans, less one)."""
    breaks = 0
    for value in record.values():
        if isinstance(value, str) and ("\n" in value or "\r" in value):
            breaks += value.count("\n") + value.count("\r") - value.count("\r\n")
    return breaks


def _refuse_unclosed_quote(path: Path, encoding: str | None, delimiter: str, start: int) -> None:
    """Raise when the last record, which spans lines, runs to the end of the file inside a
    quote: Python's csv then takes every line after the quote as part of one cell.

    ``start`` is the record's first line, or the one before (the file's last line break is
    inside the cell when the quote is not closed); the strict reader finds which.
    """
    with _open_text(path, encoding) as fh:
        strict = csv.reader(itertools.islice(fh, start - 1, None), delimiter=delimiter, strict=True)
        read = 0
        try:
            for _ in strict:
                read = strict.line_num
        except csv.Error as err:
            if "unexpected end of data" not in str(err):
                return  # a looser quirk the default reader accepts: not the case looked for
            msg = (
                f"{path.name}, line {start + read}: a quoted cell is never closed, so every line "
                "after it would be read into that one cell; close the quote (a quote inside "
                'a quoted cell is written twice: "")'
            )
            raise DataError(msg) from None


def _refuse_repeated_columns(names: list[Any], where: str) -> None:
    """Raise when a header names a column twice: a reader keeps only one of them."""
    seen: set[str] = set()
    for name in names:
        if name is not None and str(name).strip() and str(name) in seen:
            msg = f"{where}: the header names the column {str(name)!r} twice; rename one of them"
            raise DataError(msg)
        seen.add(str(name))


def _csv_delimiter(path: Path, encoding: str | None = None) -> str:
    """``,``, unless the header has a single column that way and several split at ``;``,
    a tab or ``|`` (a ``.tsv`` file: tabs)."""
    if _file_type(path) == ".tsv":
        return "\t"
    with _open_text(path, encoding) as fh:
        header = fh.readline()
    if len(next(csv.reader([header]), [])) > 1:
        return ","
    widths = {d: len(next(csv.reader([header], delimiter=d), [])) for d in ";\t|"}
    best = max(widths, key=widths.__getitem__)
    return best if widths[best] > 1 else ","


def _csv_row(number: int, record: dict[Any, Any]) -> RawRow:
    if None in record:
        return RawRow(number, None, "more values than there are columns in the header")
    for value in record.values():
        if isinstance(value, str) and any("\udc80" <= ch <= "\udcff" for ch in value):
            return RawRow(number, None, f"bytes that are not UTF-8 ({_NOT_UTF8})")
    return RawRow(number, dict(record))


def _workbook_sources(path: Path, sheet: str | None = None) -> tuple[Source, Source | None]:
    """A workbook's training sheet (``sheet``, else ``train``, else the first) and validation
    sheet, if any."""
    book = _open_workbook(path)
    try:
        sheets = [ws.title for ws in book.worksheets]  # chart sheets hold no rows
    finally:
        book.close()
    by_name = {name.strip().lower(): name for name in reversed(sheets)}  # the first one wins
    main = by_name.get("train", sheets[0]) if sheet is None else _named_sheet(path, sheets, sheet)
    val = next((by_name[n] for n in _VALIDATION_SPLITS if by_name.get(n, main) != main), None)

    def source(sheet: str) -> Source:
        label = f"{path.name}[{sheet}]" if len(sheets) > 1 else path.name
        fingerprint = _file_fingerprint(path, sheet)
        return Source(label, "row", lambda: _read_xlsx(path, sheet), fingerprint)

    return source(main), (source(val) if val is not None else None)


def _named_sheet(path: Path, sheets: list[str], wanted: str) -> str:
    """The sheet called ``wanted``: exactly, else ignoring case and surrounding spaces."""
    if wanted in sheets:
        return wanted
    loose = [name for name in sheets if name.strip().lower() == str(wanted).strip().lower()]
    if not loose:
        msg = f"{path.name}: no sheet named {wanted!r}; its sheets are {sheets}"
        raise DataError(msg)
    return loose[0]


def _open_workbook(path: Path) -> Any:
    import zipfile

    from openpyxl import load_workbook
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        _refuse_zip_bomb(path)
        return load_workbook(path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, InvalidFileException, KeyError, OSError) as err:
        raise DataError(_not_a_workbook(path, str(err))) from None
    except ValueError as err:  # openpyxl's words for XML it (or defusedxml) refused
        raise DataError(_not_a_workbook(path, _xml_refusal(err))) from None


def _not_a_workbook(path: Path, why: str) -> str:
    return f"{path.name}: not a readable Excel workbook ({why}); save it again as .xlsx or CSV"


def _xml_refusal(err: ValueError) -> str:
    """Why openpyxl could not read a workbook's XML, in a line (its own message is three)."""
    from defusedxml import DefusedXmlException

    cause = err.__cause__ or err
    if isinstance(cause, DefusedXmlException):
        return (
            f"its XML declares entities or a DTD ({type(cause).__name__}), which Excel never "
            "writes and which can read other files or expand without end: refused"
        )
    return f"invalid XML: {cause}"


# A workbook part that inflates more than this many times its compressed size is refused, as
# Apache POI (ZipSecureFile) does: even a sheet of 100,000 identical rows (pandas' to_excel)
# inflates about 18 times, since each cell names its own reference. Parts up to
# _INFLATE_GRACE are not judged.
MAX_INFLATE_RATIO = 100
_INFLATE_GRACE = 1 << 20


def _refuse_zip_bomb(path: Path) -> None:
    """Raise ``OSError`` when a part of the workbook at ``path`` is a zip bomb: a megabyte
    that inflates to a gigabyte of one cell's text, which openpyxl would hold in memory."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        for part in archive.infolist():
            if part.file_size > max(_INFLATE_GRACE, MAX_INFLATE_RATIO * part.compress_size):
                packed, unpacked = format_bytes(part.compress_size), format_bytes(part.file_size)
                msg = (
                    f"its part {part.filename!r} inflates from {packed} to {unpacked}, over "
                    f"{MAX_INFLATE_RATIO} times: a zip bomb, not what a spreadsheet program writes"
                )
                raise OSError(msg)


def _read_xlsx(path: Path, sheet: str | None = None) -> Iterator[RawRow]:
    """A sheet's rows (the first one's by default) under its header row, numbered as the
    spreadsheet shows them."""
    book = _open_workbook(path)
    try:
        worksheet = book[sheet] if sheet is not None else book.worksheets[0]
        worksheet.reset_dimensions()  # read to the last row, whatever size the file records
        rows = worksheet.iter_rows()
        header: list[str | None] | None = None
        for number, row in enumerate(rows, start=1):
            cells = tuple(shown_text(c.value, getattr(c, "number_format", None)) for c in row)
            if all(cell is None or cell == "" for cell in cells):
                continue  # blank rows between and after the data, as spreadsheets have
            if header is None:
                header = [None if c is None else str(c).strip() for c in cells]
                where = f"{path.name}" + (f"[{sheet}]" if sheet is not None else "")
                _refuse_repeated_columns(header, f"{where}, row {number}")
                continue
            yield _sheet_row(number, header, cells)
    finally:
        book.close()


def _sheet_row(number: int, header: list[str | None], cells: tuple[Any, ...]) -> RawRow:
    from openpyxl.utils import get_column_letter

    values = {}
    for column, (name, cell) in enumerate(itertools.zip_longest(header, cells), start=1):
        if name is None or name == "":
            if cell not in (None, ""):
                msg = f"a value in column {get_column_letter(column)}, which has no header"
                return RawRow(number, None, msg)
            continue
        values[name] = cell
    return RawRow(number, values)


def _read_parquet(path: Path) -> Iterator[RawRow]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    number = 0
    try:
        parquet = pq.ParquetFile(path)
        _refuse_repeated_columns(parquet.schema_arrow.names, path.name)
        for batch in parquet.iter_batches(batch_size=_BATCH):
            for values in batch.to_pylist():
                number += 1
                yield RawRow(number, values)
    except (pa.ArrowException, OSError) as err:
        where = f"{path.name}, after row {number}" if number else path.name
        msg = f"{where}: not a readable Parquet file ({err}); write it again, or use JSONL or CSV"
        raise DataError(msg) from None


def _not_a_row(item: Any) -> str:
    """Why ``item`` of a list is no row, and what a row looks like.

    Examples:
        >>> _not_a_row("What is 2 plus 2?").split("got ")[1], _not_a_row(7).split("got ")[1]
        ("the text 'What is 2 plus 2?'", 'int')
    """
    got = f"the text {item[:40]!r}" if isinstance(item, str) else type(item).__name__
    return (
        "expected a dict such as {'question': ..., 'answer': ...} ({'text': ...} for raw "
        f"text), got {got}"
    )


def _list_source(items: list[Any], label: str) -> Source:
    def read() -> Iterator[RawRow]:
        for number, item in enumerate(items, start=1):
            if isinstance(item, dict):
                yield RawRow(number, item)
            else:
                yield RawRow(number, None, _not_a_row(item))

    unit: Unit = "row" if label in ("list", "generator") else "item"
    return Source(label, unit, read, content_key(items))


def _dataframe_source(frame: Any) -> Source:
    _refuse_repeated_columns(list(frame.columns), "DataFrame")

    def read() -> Iterator[RawRow]:
        for start in range(0, len(frame), _BATCH):
            records = frame.iloc[start : start + _BATCH].to_dict("records")
            for offset, values in enumerate(records):
                yield RawRow(start + offset + 1, {k: _no_nan(v) for k, v in values.items()})

    return Source("DataFrame", "row", read, content_key(frame))


def _polars_source(frame: Any) -> Source:
    def read() -> Iterator[RawRow]:
        for start in range(0, frame.height, _BATCH):
            records = frame.slice(start, _BATCH).to_dicts()
            for offset, values in enumerate(records):
                yield RawRow(start + offset + 1, {k: _no_nan(v) for k, v in values.items()})

    return Source("DataFrame", "row", read, content_key(frame))


class _Digest:
    """A file-like sink that only hashes what is written to it."""

    def __init__(self) -> None:
        self.sha1 = hashlib.sha1(usedforsecurity=False)

    def write(self, chunk: bytes) -> None:
        self.sha1.update(chunk)


def content_key(data: Any) -> str:
    """A cache key for in-memory rows (a list, a DataFrame): the hash of their pickle.

    Loading the same rows again (a notebook cell run twice) reuses their cached copy instead
    of writing a new one each time; changed rows get another key. Types count (``1`` is not
    ``"1"``). Rows that cannot be pickled get a key of their own (no reuse). The pickle is
    hashed as it is written, never held whole in memory.

    Examples:
        >>> rows = [{"question": "Hi", "answer": "Hello"}]
        >>> content_key(rows) == content_key([dict(r) for r in rows])
        True
        >>> content_key([{"answer": 1}]) == content_key([{"answer": "1"}])
        False
        >>> content_key([lambda: 0]) == content_key([lambda: 0])  # cannot be pickled
        False
    """
    digest = _Digest()
    try:
        pickle.Pickler(digest, protocol=5).dump(data)
    except (pickle.PicklingError, TypeError, AttributeError, ValueError, RecursionError):
        return uuid.uuid4().hex
    return "mem-" + digest.sha1.hexdigest()


def _no_nan(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


_VALIDATION_SPLITS = ("validation", "valid", "eval", "test")
_SPLIT_NAMES = ("train", "training", *_VALIDATION_SPLITS, "dev", "evaluation")


def _dataset_sources(data: Any, label: str) -> tuple[Source, Source | None]:
    if type(data).__name__ != "DatasetDict":
        return _dataset_source(data, label), None
    names = list(data)
    if not names:
        msg = f"{label}: the DatasetDict has no splits"
        raise DataError(msg)
    main = "train" if "train" in data else names[0]
    if main in _VALIDATION_SPLITS:
        n = len(data[main])
        msg = (
            f"{label} has no 'train' split: training on its {main!r} split ({n} "
            f"row{'s' if n != 1 else ''}), usually held out for evaluation; pass that split "
            f"itself (a Dataset) to say you mean it, or the split to train on"
        )
        warn_user(msg)
    val = next((n for n in _VALIDATION_SPLITS if n in data and n != main), None)
    main_source = _dataset_source(data[main], f"{label}[{main}]")
    return main_source, (_dataset_source(data[val], f"{label}[{val}]") if val else None)


def _dataset_source(dataset: Any, label: str) -> Source:
    def read() -> Iterator[RawRow]:
        number = 0
        for batch in dataset.iter(batch_size=_BATCH):
            columns = list(batch)
            for values in zip(*batch.values(), strict=True):
                number += 1
                yield RawRow(number, dict(zip(columns, values, strict=True)))

    name = "Dataset" if label in ("Dataset", "DatasetDict") else label
    return Source(name, "row", read, f"{dataset._fingerprint}")
