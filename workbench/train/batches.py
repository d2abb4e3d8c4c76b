"""Tokenized examples in memory, length-grouped batches, and padding.

The data order is a pure function of ``(seed, epoch)``, so a run resumed at micro-batch ``k``
sees exactly the batches an uninterrupted run would. Batches group examples of similar length
(like transformers' ``LengthGroupedSampler``) so little compute goes to padding, and padding is
on the right, so a causal model needs no attention mask for the real tokens. The data order
and padding themselves live in :mod:`workbench.train.core`, shared with the scale-out script.

Examples:
    >>> ex = Examples.from_rows([[1, 2, 3], [4, 5]], [[-100, 2, 3], [-100, 5]])
    >>> ex.trained_tokens().tolist()
    [2, 1]
    >>> epoch_batches(ex.lengths, batch_size=2, seed=0, epoch=0)
    [[0, 1]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from workbench.errors import DataError
from workbench.train.core import IGNORE_INDEX, epoch_batches, pad_rows, trained_tokens

__all__ = ["IGNORE_INDEX", "Examples", "collate", "epoch_batches", "index_trained"]


@dataclass(frozen=True)
class Examples:
    """Token ids and labels of a data set, one int64 array per example, padding removed.

    Examples:
        >>> Examples.from_rows([[7, 8]], [[7, 8]]).lengths.tolist()
        [2]
    """

    input_ids: tuple[np.ndarray, ...]
    labels: tuple[np.ndarray, ...]

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per example.

        Examples:
            >>> Examples.from_rows([[1]], [[1]]).lengths.tolist()
            [1]
        """
        return np.array([len(ids) for ids in self.input_ids], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.input_ids)

    @classmethod
    def from_rows(cls, input_ids: Sequence, labels: Sequence, masks: Sequence | None = None):
        """Build from lists of ids and labels, dropping positions where ``masks`` is 0.

        Examples:
            >>> Examples.from_rows([[0, 5]], [[-100, 5]], masks=[[0, 1]]).input_ids[0].tolist()
            [5]
        """
        ids_out, labels_out = [], []
        for row, (row_ids, row_labels) in enumerate(zip(input_ids, labels, strict=True)):
            ids = np.asarray(row_ids, dtype=np.int64)
            labs = np.asarray(row_labels, dtype=np.int64)
            if ids.shape != labs.shape:
                msg = f"row {row}: input_ids has {len(ids)} tokens but labels has {len(labs)}."
                raise DataError(msg)
            if masks is not None:
                keep = np.asarray(masks[row], dtype=bool)
                ids, labs = ids[keep], labs[keep]
            ids_out.append(ids)
            labels_out.append(labs)
        return cls(tuple(ids_out), tuple(labels_out))

    @classmethod
    def from_dataset(cls, dataset: Any, name: str = "train") -> Examples:
        """Read a tokenized ``datasets.Dataset`` (or a dict of columns).

        Raises:
            DataError: the ``input_ids`` or ``labels`` column is missing.

        Examples:
            >>> Examples.from_dataset({"input_ids": [[1, 2]], "labels": [[1, 2]]}).lengths.tolist()
            [2]
        """
        columns = set(dataset.column_names if hasattr(dataset, "column_names") else dataset)
        missing = sorted({"input_ids", "labels"} - columns)
        if missing:
            msg = (
                f"{name} data has no column {missing}: the trainer needs tokenized data with "
                f"input_ids and labels (-100 = not trained); it has {sorted(columns)}."
            )
            raise DataError(msg)
        masks = dataset["attention_mask"] if "attention_mask" in columns else None
        return cls.from_rows(dataset["input_ids"], dataset["labels"], masks)

    def trained_tokens(self) -> np.ndarray:
        """Per example, how many tokens the loss trains on (labels after the causal shift).

        Examples:
            >>> Examples.from_rows([[1, 2]], [[1, -100]]).trained_tokens().tolist()
            [0]
        """
        return trained_tokens(self.labels)

    def subset(self, keep: np.ndarray) -> Examples:
        """Only the examples whose index is in ``keep``.

        Examples:
            >>> len(Examples.from_rows([[1], [2]], [[1], [2]]).subset(np.array([1])))
            1
        """
        return Examples(tuple(self.input_ids[i] for i in keep), tuple(self.labels[i] for i in keep))


def collate(examples: Examples, indices: Sequence[int], pad_id: int) -> dict[str, Any]:
    """Right-pad the chosen examples into ``input_ids``, ``labels`` and ``lengths`` tensors.

    Examples:
        >>> b = collate(Examples.from_rows([[1, 2], [3]], [[1, 2], [3]]), [0, 1], pad_id=0)
        >>> b["input_ids"].tolist(), b["labels"].tolist()
        ([[1, 2], [3, 0]], [[1, 2], [3, -100]])
    """
    return pad_rows(
        [examples.input_ids[i] for i in indices], [examples.labels[i] for i in indices], pad_id
    )


def index_trained(batch: dict[str, Any]) -> dict[str, Any]:
    """Add where the loss trains, computed on the host before the batch moves to a device.

    ``trained_index`` holds the flat positions ``row * width + t`` whose next label
    (``labels[row, t + 1]``) is trained, in row-major order (the order boolean indexing
    gives), and ``trained`` their count, so that the loss gathers its rows without a host
    sync (:func:`~workbench.train.loss.token_loss_sum`).

    Examples:
        >>> b = index_trained(collate(Examples.from_rows([[1, 2, 3], [4, 5]],
        ...                                             [[-100, 2, 3], [-100, 5]]), [0, 1], 0))
        >>> b["trained_index"].tolist(), b["trained"]
        ([0, 1, 3], 3)
    """
    import torch

    labels = batch["labels"]
    trained = labels[:, 1:] != IGNORE_INDEX
    rows, cols = torch.nonzero(trained, as_tuple=True)
    batch["trained_index"] = rows * labels.shape[1] + cols
    batch["trained"] = int(rows.numel())
    return batch
