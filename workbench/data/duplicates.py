"""Exact duplicates, near duplicates and train/validation leaks, in near-linear time.

**Exact.** Texts are compared after composing accents (Unicode NFC), lower-casing and
collapsing whitespace; Arrow's
dictionary encoding of those keys finds repeats. Rows with the same words in the same order
(only punctuation differs) are near duplicates at 100%.

**Near**, what the data report calls it: two rows whose sets of *word pairs* (adjacent words,
after lower-casing; a one-word row is its word; in scripts written without spaces, Chinese,
Japanese, Thai, Lao, Khmer and Myanmar, each character is a word) have a Jaccard similarity
of at least :data:`NEAR_THRESHOLD` (80%), counted on exact sets, not estimated, and **not
counting template text**: a word pair found in more than :data:`TEMPLATE_SHARE` of the
distinct rows (and in at least :data:`TEMPLATE_MIN_ROWS` of them) is an instruction, a system
prompt or a fixed phrase, not what makes two rows copies of each other.

Why these numbers:

* **80%** is the Jaccard threshold of near-duplicate pipelines that deduplicate language model
  training data: Lee et al., *Deduplicating Training Data Makes Language Models Better* (ACL
  2022, "NearDup", MinHash on 5-grams, near at Jaccard >= 0.8) and SlimPajama (0.8); BigCode's
  near-dedup of code uses 0.85, data-juicer's default is 0.7.
* **Word pairs, not 5-word shingles.** Those pipelines read web pages and files of hundreds of
  words; a data set row has tens. One changed word in a row of ``n`` words changes ``k`` of its
  ``n - k + 1`` shingles, leaving a Jaccard of ``(n - 2k + 1) / (n + 1)``: with 5-word shingles
  a one-word edit stays near (>= 0.8) only from 49 words on, with word pairs from 19 words on.
  Word pairs still keep word order (a bag of words would not).
* **The template left out.** The demo task's records (one instruction, six sentence patterns,
  different names, ages, cities and jobs) share up to 77% of their word pairs, 88% with 600
  training rows; a MinHash estimate at 0.7 with the instruction counted reported 22 near
  duplicates and 6 leaks among the 64 + 16 demo rows. Without the template the closest two
  distinct records share 52% (74% with 600: the same job, age and last name).
  :data:`TEMPLATE_SHARE` is a fifth, not a half, so that a data set mixing up to four
  instructions has each left out.

Finding candidates: MinHash over the non-template word pairs with locality-sensitive hashing,
32 hashes in 8 bands of 4, so a pair with Jaccard 0.8 becomes a candidate with probability
0.985 (0.9: 0.9998). In each band's bucket a row meets its next 10 rows (all pairs of a small
bucket, a bounded number in a huge one). Candidates whose signatures agree on fewer than half
the hashes are dropped (a pair at 0.8 does with probability 3e-5); every other candidate's
exact Jaccard is computed on its two sets, so a reported percentage is always the true one.
All of it is vectorised (pyarrow + numpy), with no loop over pairs of rows: 20,000 rows take
under a second of CPU time. (Broder 1997; Leskovec et al., *Mining of Massive Datasets*,
ch. 3.)

Examples:
    >>> import pyarrow as pa
    >>> train = pa.array(["Hello  World", "hello world", "something else entirely"])
    >>> [str(p) for p in duplicate_problems(train, pa.array(["HELLO world"]))]
    ['[duplicate] train row 1: same text as train row 0 (after normalising whitespace and case)', \
'[leak] validation row 0: same text as train row 0 (after normalising whitespace and case)']
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from workbench._display import UNSPACED_CHARS
from workbench.data.problems import Problem

__all__ = [
    "NEAR_THRESHOLD",
    "TEMPLATE_MIN_ROWS",
    "TEMPLATE_SHARE",
    "ScanStoppedError",
    "duplicate_problems",
    "normalise_texts",
]

NEAR_THRESHOLD = 0.8
"""Jaccard similarity of two rows' non-template word-pair sets from which they are near
duplicates."""
TEMPLATE_SHARE = 0.2
"""A word pair in more than this share of the distinct rows is template text, left out."""
TEMPLATE_MIN_ROWS = 10
"""... and only when it is in at least this many rows: three near copies in a 12-row data set
are near duplicates, not a template."""

_HASHES, _BANDS = 32, 8
_ROWS_PER_BAND = _HASHES // _BANDS
_WORD_SPLIT = r"[^\p{L}\p{N}]+"  # letters and digits of any script make words
_UNSPACED = f"({UNSPACED_CHARS})"  # ... and a character of an unspaced script is one word
_BUCKET_WINDOW = 10  # a row meets at most this many later rows of one LSH bucket
_PAIR_CHUNK = 4_000_000  # shingles compared per batch of candidate pairs (bounds memory)
_SAME = "(after normalising whitespace and case)"
_NEAR_MEANS = (
    f"near = {NEAR_THRESHOLD:.0%} or more, not counting text many rows share, like an instruction"
)


class ScanStoppedError(Exception):
    """Raised by :func:`duplicate_problems` when its ``stop`` says the scan is no longer wanted."""


def _check(stop: Callable[[], bool] | None) -> None:
    if stop is not None and stop():
        raise ScanStoppedError


def normalise_texts(texts: pa.Array) -> pa.Array:
    """One Unicode form (NFC), lower-case, collapse whitespace, trim.

    NFC makes text pasted from macOS (decomposed: "e" + a combining accent) the same as the
    composed form, as it looks. (NFKC would also fold "x²" into "x2" and "½" into "1⁄2":
    different text.) A no-break space stays; such rows are near duplicates at 100%.

    Examples:
        >>> normalise_texts(pa.array(["  A\\n b ", "Cafe\u0301 X", "x²"])).to_pylist()
        ['a b', 'café x', 'x²']
    """
    # split and joined rather than a regex replace: 3x faster on 100k rows
    one_form = pc.utf8_normalize(texts, form="NFC")
    collapsed = pc.binary_join(pc.ascii_split_whitespace(pc.utf8_lower(one_form)), " ")
    return pc.utf8_trim_whitespace(collapsed)


def duplicate_problems(
    train: pa.Array,
    validation: pa.Array | None = None,
    stop: Callable[[], bool] | None = None,
) -> list[Problem]:
    """Find duplicates within each split, and validation rows that repeat training rows.

    Args:
        train: One text per training row (all of a row's contents joined).
        validation: The same for validation rows, or ``None``.
        stop: Asked between the scan's steps; when it returns true the scan ends with
            :class:`ScanStoppedError` (a race of two scans: the loser stops).

    Returns:
        ``duplicate``/``near_duplicate`` problems per split and ``leak`` for validation rows.
        A near duplicate's message gives the share of word pairs the two rows have in common
        and what "near" means. Each row is reported once, against its closest earlier row; a
        validation row against a training row whenever one is near (that is the leak).

    Examples:
        >>> duplicate_problems(pa.array(["a", "b"]))
        []
        >>> row = ("Please summarize the following meeting notes about the quarterly budget "
        ...        "review and list every action item with its owner")
        >>> copy = row.replace("quarterly", "annual")  # one word of 20 changed
        >>> for p in duplicate_problems(pa.array([row, "other", copy, row + "!"])):
        ...     print(p)  # doctest: +NORMALIZE_WHITESPACE
        [near_duplicate] train row 2: nearly the same text as train row 0: 80% of their word
        pairs are shared (near = 80% or more, not counting text many rows share, like an
        instruction)
        [near_duplicate] train row 3: the same words as train row 0; only punctuation differs
        >>> duplicate_problems(pa.array(["a", "a"]), stop=lambda: True)
        Traceback (most recent call last):
        workbench.data.duplicates.ScanStoppedError
    """
    n_train = len(train)
    _check(stop)
    texts = normalise_texts(
        pa.concat_arrays([train, validation]) if validation is not None else train
    )
    _check(stop)
    codes = pc.dictionary_encode(texts).indices.to_numpy(zero_copy_only=False)
    _, first_index = np.unique(codes, return_index=True)  # codes are 0..k-1, in first-seen order
    distinct = np.zeros(len(codes), bool)
    distinct[first_index] = True
    repeats = np.flatnonzero(~distinct)
    problems = [_exact(int(i), int(first_index[codes[i]]), n_train) for i in repeats]
    for row, partner, similarity, same_words in _near_pairs(texts, distinct, n_train, stop):
        problems.append(_near(row, partner, similarity, same_words, n_train))
    return sorted(problems, key=lambda p: (p.split != "train", p.row))


def _near_pairs(
    texts: pa.Array, distinct: np.ndarray, n_train: int, stop: Callable[[], bool] | None = None
) -> list[tuple[int, int, float, bool]]:
    """``(row, partner, similarity, same_words)`` for each distinct row near an earlier one.

    Exact duplicates (``distinct`` false) are already reported against their original and left
    out. ``similarity`` is the exact Jaccard of the two rows' non-template word pairs;
    ``same_words`` marks rows whose words are the same, in the same order.
    """
    spaced = pc.replace_substring_regex(texts, pattern=_UNSPACED, replacement=r" \1 ")
    words = pc.split_pattern_regex(spaced, pattern=_WORD_SPLIT)
    _check(stop)
    found = _same_words(words, distinct)
    shingle, row = _shingles(words)
    _check(stop)
    shingle, row = _without_template(shingle, row, distinct)
    keep = distinct[row]
    shingle, row = shingle[keep], row[keep]
    sig, sig_rows = _signatures(shingle, row)
    _check(stop)
    pairs = _candidates(sig, sig_rows)
    if len(pairs):
        # The signatures estimate each pair's similarity (32 hashes: standard error <= 0.09);
        # only pairs estimated within 0.3 of the threshold are checked exactly. A pair at
        # 0.8 falls below that with probability 3e-5 (binomial, 15 or fewer of 32 agree).
        where = np.searchsorted(sig_rows, pairs)
        estimate = (sig[where[:, 0]] == sig[where[:, 1]]).mean(axis=1)
        pairs = pairs[estimate >= NEAR_THRESHOLD - 0.3]
    if len(pairs):
        similarity = _jaccard(shingle, row, pairs)
        close = np.flatnonzero(similarity >= NEAR_THRESHOLD)
        found += [(int(pairs[i, 1]), int(pairs[i, 0]), float(similarity[i]), False) for i in close]
    return _best_partners(found, n_train)


def _same_words(words: pa.Array, distinct: np.ndarray) -> list[tuple[int, int, float, bool]]:
    """Distinct texts whose words are the same, in the same order (punctuation differs)."""
    if len(words) == 0:
        return []
    key = pc.utf8_trim_whitespace(pc.binary_join(words, " "))  # "!a" splits into "", "a"
    codes = pc.dictionary_encode(key).indices.to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(distinct & (pc.utf8_length(key).to_numpy(zero_copy_only=False) > 0))
    original = np.full(int(codes.max()) + 1, -1)
    original[codes[rows][::-1]] = rows[::-1]  # the first row of each key wins
    later = rows[original[codes[rows]] != rows]
    return [(int(r), int(original[codes[r]]), 1.0, True) for r in later]


def _shingles(words: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Word-pair ids and the row of each, one entry per distinct pair of a row, by row.

    A row of one word contributes the word. Ids are dense (0..k-1) across all rows.
    """
    encoded = pc.dictionary_encode(pc.list_flatten(words))
    ids = encoded.indices.to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(words).to_numpy(zero_copy_only=False)
    empty = pc.index(encoded.dictionary, "").as_py()  # "!a" splits into "", "a"
    if empty >= 0:  # dropped by id, cheaper than filtering millions of strings
        keep = ids != empty
        ids, parents = ids[keep], parents[keep]
    if len(ids) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    ids, parents = ids.astype(np.uint64), parents.astype(np.int64)
    same = parents[1:] == parents[:-1]
    pairs = ids[:-1][same] * np.uint64(len(encoded.dictionary) + 1) + ids[1:][same] + np.uint64(1)
    lone = np.flatnonzero(np.bincount(parents, minlength=len(words))[parents] == 1)
    values = np.concatenate([pairs, np.uint64(1 << 63) + ids[lone]])  # never equal to a pair
    rows = np.concatenate([parents[:-1][same], parents[lone]])
    dense = pc.dictionary_encode(pa.array(values)).indices.to_numpy().astype(np.int64)
    width = int(dense.max()) + 1
    key = np.sort(rows * width + dense)
    key = key[np.r_[True, key[1:] != key[:-1]]]  # by row, each pair once per row
    return key % width, key // width


def _without_template(
    shingle: np.ndarray, row: np.ndarray, distinct: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Drop the word pairs in more than TEMPLATE_SHARE (and >= TEMPLATE_MIN_ROWS) of the
    distinct rows: an instruction, a system prompt, a sentence pattern's fixed words."""
    if len(shingle) == 0:
        return shingle, row
    counts = np.bincount(shingle[distinct[row]], minlength=int(shingle.max()) + 1)
    template = (counts > TEMPLATE_SHARE * int(distinct.sum())) & (counts >= TEMPLATE_MIN_ROWS)
    keep = ~template[shingle]
    return shingle[keep], row[keep]


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads ids over all 64 bits (uint64 arithmetic wraps)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _signatures(shingle: np.ndarray, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MinHash signatures, one per row that has shingles, and those rows."""
    if len(row) == 0:
        return np.empty((0, _HASHES), np.uint64), np.empty(0, np.int64)
    hashes = _mix(shingle.astype(np.uint64) + np.uint64(1))
    starts = np.flatnonzero(np.r_[True, row[1:] != row[:-1]])
    rng = np.random.default_rng(0)
    mult = rng.integers(1, 2**63, _HASHES, dtype=np.uint64) | np.uint64(1)
    add = rng.integers(0, 2**63, _HASHES, dtype=np.uint64)
    sig = np.empty((len(starts), _HASHES), np.uint64)
    permuted = np.empty_like(hashes)  # one buffer for all hashes: no new array per hash
    with np.errstate(over="ignore"):
        for k in range(_HASHES):
            np.multiply(hashes, mult[k], out=permuted)
            np.add(permuted, add[k], out=permuted)
            sig[:, k] = np.minimum.reduceat(permuted, starts)
    return sig, row[starts]


def _candidates(sig: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Row pairs ``(earlier, later)`` that share a band's hashes.

    In each band, rows with equal hashes form a bucket, in row order; each row is paired with
    the next :data:`_BUCKET_WINDOW` rows of its bucket: every pair of a small bucket, and a
    bounded number per row in a huge one (thousands of rows with one text varying slightly).
    """
    found, n = [], int(rows.max()) + 1 if len(rows) else 1
    with np.errstate(over="ignore"):
        for band in range(_BANDS):
            part = _mix(sig[:, band * _ROWS_PER_BAND : (band + 1) * _ROWS_PER_BAND]).sum(
                axis=1, dtype=np.uint64
            )
            order = np.argsort(part, kind="stable")
            ordered = part[order]
            for step in range(1, min(_BUCKET_WINDOW, len(order) - 1) + 1):
                same = np.flatnonzero(ordered[step:] == ordered[:-step])
                if len(same) == 0:
                    break  # no bucket holds step + 1 rows
                found.append(rows[order[same]] * n + rows[order[same + step]])  # earlier first
    if not found:
        return np.empty((0, 2), np.int64)
    key = np.sort(np.concatenate(found))
    key = key[np.r_[True, key[1:] != key[:-1]]]
    return np.stack([key // n, key % n], axis=1)


def _jaccard(shingle: np.ndarray, row: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Exact Jaccard similarity of the shingle sets of each pair of rows (``row`` sorted)."""
    starts = np.searchsorted(row, np.arange(int(row.max()) + 2))
    size = np.diff(starts)
    a, b = pairs[:, 0], pairs[:, 1]
    result = np.zeros(len(pairs))
    # |A & B| <= min(|A|, |B|): pairs whose sizes alone rule out the threshold are skipped.
    small, large = np.minimum(size[a], size[b]), np.maximum(size[a], size[b])
    todo = np.flatnonzero(small >= NEAR_THRESHOLD * large)
    weight = np.cumsum(size[a[todo]] + size[b[todo]])
    width = int(shingle.max()) + 1
    begin = 0
    while begin < len(todo):
        done = weight[begin - 1] if begin else 0
        end = max(begin + 1, int(np.searchsorted(weight, done + _PAIR_CHUNK)))
        chunk = todo[begin:end]
        both = np.concatenate(
            [_gather(shingle, starts, a[chunk], width), _gather(shingle, starts, b[chunk], width)]
        )
        both.sort()
        shared = both[1:][both[1:] == both[:-1]] // width  # a set holds each shingle once
        inter = np.bincount(shared, minlength=len(chunk))
        result[chunk] = inter / (size[a[chunk]] + size[b[chunk]] - inter)
        begin = end
    return result


def _gather(shingle: np.ndarray, starts: np.ndarray, rows: np.ndarray, width: int) -> np.ndarray:
    """``position * width + shingle`` for every shingle of ``rows[position]``."""
    counts = starts[rows + 1] - starts[rows]
    position = np.repeat(np.arange(len(rows)), counts)
    offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return position * width + shingle[starts[rows][position] + offset]


def _best_partners(
    found: list[tuple[int, int, float, bool]], n_train: int
) -> list[tuple[int, int, float, bool]]:
    """One partner per row: a training row first for a validation row, then the closest,
    then the earliest."""
    best: dict[int, tuple[tuple[bool, float, int], tuple[int, int, float, bool]]] = {}
    for entry in found:
        row, partner, similarity, _ = entry
        rank = (partner < n_train or row < n_train, similarity, -partner)
        if row not in best or rank > best[row][0]:
            best[row] = (rank, entry)
    return [best[row][1] for row in sorted(best)]


def _locate(index: int, n_train: int) -> tuple[str, int]:
    return ("train", index) if index < n_train else ("validation", index - n_train)


def _exact(index: int, rep: int, n_train: int) -> Problem:
    split, row = _locate(index, n_train)
    rep_split, rep_row = _locate(rep, n_train)
    kind = "leak" if split == "validation" and rep_split == "train" else "duplicate"
    return Problem(row, kind, f"same text as {rep_split} row {rep_row} {_SAME}", split)


def _near(index: int, rep: int, similarity: float, same_words: bool, n_train: int) -> Problem:
    split, row = _locate(index, n_train)
    rep_split, rep_row = _locate(rep, n_train)
    kind = "leak" if split == "validation" and rep_split == "train" else "near_duplicate"
    if same_words:
        message = f"the same words as {rep_split} row {rep_row}; only punctuation differs"
    else:
        message = (
            f"nearly the same text as {rep_split} row {rep_row}: {_percent(similarity)} of their "
            f"word pairs are shared ({_NEAR_MEANS})"
        )
    return Problem(row, kind, message, split)


def _percent(similarity: float) -> str:
    """Floor, so a pair just under 100% never reads "100%" (nor 79.6% as "80%")."""
    return f"{int(similarity * 100 + 1e-9)}%"
