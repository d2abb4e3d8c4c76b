"""Exact duplicates, near duplicates and train/validation leaks, in near-linear time.

Texts are compared after lower-casing and collapsing whitespace. Exact duplicates come from
Arrow's dictionary encoding of those keys. Near duplicates use MinHash over word bigrams
with locality-sensitive hashing: 32 hashes in 8 bands of 4, so pairs with Jaccard
similarity 0.7 become candidates with probability ~0.9 and pairs below 0.3 almost never;
candidates are then kept when their estimated similarity is at least
:data:`NEAR_THRESHOLD`. Work is vectorised (pyarrow + numpy): no pairwise loop over rows,
so 100k rows take seconds. (Broder 1997; Leskovec et al., *Mining of Massive Datasets*, ch. 3.)

Examples:
    >>> import pyarrow as pa
    >>> train = pa.array(["Hello  World", "hello world", "something else entirely"])
    >>> [str(p) for p in duplicate_problems(train, pa.array(["HELLO world"]))]
    ['[duplicate] train row 1: same text as train row 0 (after normalising whitespace and case)', \
'[leak] validation row 0: same text as train row 0 (after normalising whitespace and case)']
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from workbench.data.problems import Problem

__all__ = ["NEAR_THRESHOLD", "duplicate_problems", "normalise_texts"]

NEAR_THRESHOLD = 0.7
"""Estimated Jaccard similarity of word bigrams above which two rows are near duplicates."""
_HASHES, _BANDS = 32, 8
_ROWS_PER_BAND = _HASHES // _BANDS
_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)
_SAME = "(after normalising whitespace and case)"


def normalise_texts(texts: pa.Array) -> pa.Array:
    """Lower-case, collapse whitespace, trim.

    Examples:
        >>> normalise_texts(pa.array(["  A\\n b "])).to_pylist()
        ['a b']
    """
    collapsed = pc.replace_substring_regex(pc.utf8_lower(texts), pattern=r"\s+", replacement=" ")
    return pc.utf8_trim_whitespace(collapsed)


def duplicate_problems(train: pa.Array, validation: pa.Array | None = None) -> list[Problem]:
    """Find duplicates within each split, and validation rows that repeat training rows.

    Args:
        train: One text per training row (all of a row's contents joined).
        validation: The same for validation rows, or ``None``.

    Returns:
        ``duplicate``/``near_duplicate`` problems per split and ``leak`` for validation rows.

    Examples:
        >>> duplicate_problems(pa.array(["a", "b"]))
        []
    """
    n_train = len(train)
    texts = normalise_texts(
        pa.concat_arrays([train, validation]) if validation is not None else train
    )
    codes = pc.dictionary_encode(texts).indices.to_numpy(zero_copy_only=False)
    _, first_index = np.unique(codes, return_index=True)  # codes are 0..k-1, in first-seen order
    repeats = np.flatnonzero(first_index[codes] != np.arange(len(codes)))
    problems = [_exact(int(i), int(first_index[codes[i]]), n_train) for i in repeats]
    exact = set(repeats.tolist())
    content = normalise_texts(
        _without_boilerplate(
            pa.concat_arrays([train, validation]) if validation is not None else train
        )
    )
    for row, rep, similarity in _near_pairs(content, codes):
        if row not in exact:
            problems.append(_near(row, rep, similarity, n_train))
            exact.add(row)
    return sorted(problems, key=lambda p: (p.split != "train", p.row))


def _without_boilerplate(texts: pa.Array) -> pa.Array:
    """Drop lines that most rows share (a fixed instruction, a system prompt).

    Near duplicates are about the content that varies: a long instruction repeated on every
    row would otherwise make all short rows look alike.
    """
    from collections import Counter

    rows = [row or "" for row in texts.to_pylist()]
    if len(rows) < 10:
        return texts
    counts = Counter(line for row in rows for line in set(row.split("\n")) if line.strip())
    common = {line for line, n in counts.items() if n > len(rows) / 2}
    if not common:
        return texts
    return pa.array(["\n".join(x for x in row.split("\n") if x not in common) for row in rows])


def _locate(index: int, n_train: int) -> tuple[str, int]:
    return ("train", index) if index < n_train else ("validation", index - n_train)


def _exact(index: int, rep: int, n_train: int) -> Problem:
    split, row = _locate(index, n_train)
    rep_split, rep_row = _locate(rep, n_train)
    kind = "leak" if split == "validation" and rep_split == "train" else "duplicate"
    return Problem(row, kind, f"same text as {rep_split} row {rep_row} {_SAME}", split)


def _near(index: int, rep: int, similarity: float, n_train: int) -> Problem:
    split, row = _locate(index, n_train)
    rep_split, rep_row = _locate(rep, n_train)
    kind = "leak" if split == "validation" and rep_split == "train" else "near_duplicate"
    shared = f"~{similarity:.0%} of word pairs shared"
    message = f"nearly the same text as {rep_split} row {rep_row} ({shared})"
    return Problem(row, kind, message, split)


def _shingles(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Word-bigram hashes and the row each belongs to (one-word rows use the word)."""
    words = pc.split_pattern_regex(texts, pattern=r"\W+")
    flat, parents = pc.list_flatten(words), pc.list_parent_indices(words)
    keep = pc.greater(pc.utf8_length(flat), 0)
    flat, parents = pc.filter(flat, keep), pc.filter(parents, keep).to_numpy(zero_copy_only=False)
    ids = pc.dictionary_encode(flat).indices.to_numpy(zero_copy_only=False).astype(np.uint64)
    same = parents[1:] == parents[:-1]
    bigrams = ids[:-1][same] * np.uint64(1_000_003) + ids[1:][same] + np.uint64(1)
    rows = parents[:-1][same]
    counts = np.bincount(parents, minlength=len(texts))
    lone = np.flatnonzero(counts[parents] == 1)
    values = np.concatenate([bigrams, ids[lone] + np.uint64(1 << 62)])
    rows = np.concatenate([rows, parents[lone]])
    order = np.argsort(rows, kind="stable")
    return _mix(values[order]), rows[order]


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads ids over all 64 bits (uint64 arithmetic wraps)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _signatures(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    hashes, rows = _shingles(texts)
    if len(rows) == 0:
        return np.empty((0, _HASHES), np.uint64), np.empty(0, np.int64)
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    rng = np.random.default_rng(0)
    mult = rng.integers(1, 2**63, _HASHES, dtype=np.uint64) | np.uint64(1)
    add = rng.integers(0, 2**63, _HASHES, dtype=np.uint64)
    sig = np.empty((len(starts), _HASHES), np.uint64)
    with np.errstate(over="ignore"):
        for k in range(_HASHES):
            sig[:, k] = np.minimum.reduceat(hashes * mult[k] + add[k], starts)
    return sig, rows[starts]


def _candidates(sig: np.ndarray) -> np.ndarray:
    pairs = []
    with np.errstate(over="ignore"):
        for band in range(_BANDS):
            part = _mix(sig[:, band * _ROWS_PER_BAND : (band + 1) * _ROWS_PER_BAND]).sum(
                axis=1, dtype=np.uint64
            )
            order = np.argsort(part, kind="stable")
            equal = np.flatnonzero(part[order][1:] == part[order][:-1])
            pairs.append(np.stack([order[equal], order[equal + 1]], axis=1))
    found = np.concatenate(pairs) if pairs else np.empty((0, 2), np.int64)
    return np.unique(np.sort(found, axis=1), axis=0)


def _near_pairs(texts: pa.Array, codes: np.ndarray) -> list[tuple[int, int, float]]:
    """``(row, representative, similarity)`` for each row in a near-duplicate cluster."""
    sig, row_of = _signatures(texts)
    pairs = _candidates(sig)
    if len(pairs) == 0:
        return []
    similarity = (sig[pairs[:, 0]] == sig[pairs[:, 1]]).mean(axis=1)
    a, b = row_of[pairs[:, 0]], row_of[pairs[:, 1]]
    keep = (similarity >= NEAR_THRESHOLD) & (codes[a] != codes[b])
    # Each later row is reported against its most similar earlier row, so every reported
    # similarity is a real pair's, at least the threshold.
    best: dict[int, tuple[int, float]] = {}
    for x, y, s in zip(a[keep].tolist(), b[keep].tolist(), similarity[keep].tolist(), strict=True):
        row, partner = max(x, y), min(x, y)
        if row not in best or s > best[row][1]:
            best[row] = (partner, s)
    return [(row, partner, s) for row, (partner, s) in sorted(best.items())]
