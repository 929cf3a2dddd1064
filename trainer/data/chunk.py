"""The unit every data source yields: a columnar chunk of examples of one day."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Chunk:
    """Examples of one day, columnar.

    Args:
        label (np.ndarray): float32 [n], 0/1.
        dense (np.ndarray): float32 [n, num_dense].
        sparse (dict[str, tuple[np.ndarray, np.ndarray]]): feature -> (base-hashed ids
            uint64 [nnz], lengths int32 [n]) — see :mod:`trainer.data.hashing`.
        prob (np.ndarray | None): float64 [n], the true click probability of each
            example given its features, where the source knows it (synthetic data);
            used only for the oracle NE, never for training.
    """

    label: np.ndarray
    dense: np.ndarray
    sparse: dict[str, tuple[np.ndarray, np.ndarray]]
    prob: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def take(self, rows: np.ndarray) -> "Chunk":
        """The examples at ``rows`` (sorted or not), as a new chunk."""
        sparse = {}
        for name, (values, lengths) in self.sparse.items():
            offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            sparse[name] = (gather_jagged(values, offsets, rows), lengths[rows])
        prob = None if self.prob is None else self.prob[rows]
        return Chunk(self.label[rows], self.dense[rows], sparse, prob)


def gather_jagged(values: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Concatenate ``values[offsets[r]:offsets[r+1]]`` for each r in ``rows``, vectorised."""
    starts = offsets[rows]
    lengths = offsets[rows + 1] - starts
    total = int(lengths.sum())
    if total == 0:
        return values[:0]
    if total == len(rows) and bool((lengths == 1).all()):
        return values[starts]
    # position i of the output belongs to row j: starts[j] + (i - out_offset[j])
    out_offsets = np.zeros(len(rows), dtype=np.int64)
    np.cumsum(lengths[:-1], out=out_offsets[1:])
    idx = np.repeat(starts - out_offsets, lengths) + np.arange(total, dtype=np.int64)
    return values[idx]


def concat_chunks(chunks: list[Chunk]) -> Chunk:
    if len(chunks) == 1:
        return chunks[0]
    names = list(chunks[0].sparse)
    return Chunk(
        np.concatenate([c.label for c in chunks]),
        np.concatenate([c.dense for c in chunks]),
        {
            n: (
                np.concatenate([c.sparse[n][0] for c in chunks]),
                np.concatenate([c.sparse[n][1] for c in chunks]),
            )
            for n in names
        },
        None if any(c.prob is None for c in chunks) else np.concatenate([c.prob for c in chunks]),
    )
