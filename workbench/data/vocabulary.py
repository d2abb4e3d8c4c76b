"""Token ids the model has no embedding for: a tokenizer larger than the model's vocabulary.

A tokenizer given tokens the model was never resized for (added special tokens, the tokenizer
of a sibling model) yields ids past the embedding's last row, and training or generation
fails deep inside ``torch.embedding`` with ``IndexError: index out of range in self``.
Real models often have more embedding rows than tokens (padded for speed), so only ids the
data really produces are checked, once it is tokenized.

Examples:
    >>> from types import SimpleNamespace
    >>> import datasets
    >>> split = datasets.Dataset.from_dict({"source_row": [1, 2], "input_ids": [[1, 2], [3, 9]]})
    >>> data = SimpleNamespace(train=split, validation=None)
    >>> refuse_ids_beyond(data, 16, None)  # every id has a row
    >>> refuse_ids_beyond(data, 8, None)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    workbench.errors.DataError: train row 1 (source row 2): token id 9 is past the model's...
"""

from __future__ import annotations

from typing import Any

from workbench.errors import DataError

__all__ = ["refuse_ids_beyond"]


def refuse_ids_beyond(data: Any, rows: int, tokenizer: Any) -> None:
    """Raise a :class:`DataError` naming the first row with a token id ``>= rows``.

    Args:
        data: Prepared data (``train`` and ``validation`` datasets with ``input_ids``).
        rows: The model's input embedding rows (ids ``0`` to ``rows - 1`` exist).
        tokenizer: Names the token in the message (``None``: the id alone).
    """
    import pyarrow.compute as pc

    for split, dataset in (("train", data.train), ("validation", data.validation)):
        if dataset is None or len(dataset) == 0:
            continue
        top = pc.max(pc.list_flatten(dataset.data.column("input_ids"))).as_py()
        if top is None or top < rows:
            continue  # the quick check over the whole table: nothing past the last row
        for index, ids in enumerate(dataset["input_ids"]):
            past = next((i for i in ids if i >= rows), None)
            if past is not None:
                raise DataError(_message(split, index, dataset, past, rows, tokenizer))


def _message(split: str, index: int, dataset: Any, past: int, rows: int, tokenizer: Any) -> str:
    token = "" if tokenizer is None else f" ({tokenizer.convert_ids_to_tokens(past)!r})"
    size = "" if tokenizer is None else f" ({len(tokenizer)} tokens)"
    return (
        f"{split} row {index} (source row {dataset[index]['source_row']}): token id {past}"
        f"{token} is past the model's embedding, which has {rows} rows: the tokenizer{size} "
        "is larger than the model. Use the tokenizer the model was trained with, or give "
        "the model rows for the new tokens (model.resize_token_embeddings(len(tokenizer)), "
        "then save it)."
    )
