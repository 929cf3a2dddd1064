"""One rank's rows of a set of days as training reads them: ids hashed to table rows
(``min_count``'s rare ids remapped first), jagged offsets, and each row's frequency
stratum from the training id counts."""

from __future__ import annotations

import numpy as np

from trainer.data.chunk import Chunk
from trainer.data.hashing import replica_rows
from trainer.data.min_count import admit
from trainer.spec import DataSpec, JobSpec


class Part:
    """One rank's rows of a set of days, with ids already hashed to table rows."""

    def __init__(
        self,
        chunk: Chunk,
        day_of_row: np.ndarray,
        strata: np.ndarray,
        spec: JobSpec,
        features: list[str],
        kept: dict[str, np.ndarray] | None = None,
    ) -> None:
        """``kept`` (``min_count``): feature -> sorted raw ids admitted to their own
        rows; the feature's other ids are hashed as :data:`trainer.data.min_count.RARE`."""
        self.label = chunk.label
        self.dense = chunk.dense
        self.prob = None if chunk.prob is None else chunk.prob.astype(np.float32)
        self.day_of_row = day_of_row
        self.strata = strata
        self.lengths: dict[str, np.ndarray] = {}
        self.offsets: dict[str, np.ndarray] = {}
        self.rows: dict[str, list[np.ndarray]] = {}
        self.single: dict[str, bool] = {}
        for f in features:
            values, lengths = chunk.sparse[f]
            self.lengths[f] = lengths.astype(np.int64)
            off = np.zeros(len(lengths) + 1, dtype=np.int64)
            np.cumsum(lengths, out=off[1:])
            self.offsets[f] = off
            self.single[f] = bool((lengths == 1).all())
            if kept is not None and f in kept:
                values = admit(values, kept[f])
            self.rows[f] = [
                replica_rows(values, r, spec.model.hash_size) for r in range(spec.model.num_replicas)
            ]

    def __len__(self) -> int:
        return len(self.label)


def merge_counts(id_counts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Sum per-chunk (ids, counts) into sorted unique ids and their total counts."""
    u = np.concatenate([ids for ids, _ in id_counts])
    c = np.concatenate([n for _, n in id_counts])
    uniq, inv = np.unique(u, return_inverse=True)
    return uniq, np.bincount(inv, weights=c).astype(np.int64)


def strata_of(
    chunk: Chunk, feature: str, stratum_counts: tuple[np.ndarray, np.ndarray], data: DataSpec
) -> np.ndarray:
    """Stratum per example (index into :data:`trainer.data.batch.STRATA`) from its
    (first) stratum-feature id's training count (``stratum_counts``: sorted ids, counts)."""
    values, lengths = chunk.sparse[feature]
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    has = lengths > 0
    first = np.zeros(len(lengths), dtype=np.uint64)
    first[has] = values[offsets[:-1][has]]
    uniq, counts = stratum_counts
    pos = np.searchsorted(uniq, first)
    pos = np.minimum(pos, len(uniq) - 1)
    count = np.where((uniq[pos] == first) & has, counts[pos], 0)
    strata = np.full(len(lengths), 1, dtype=np.int64)  # medium
    strata[count >= data.frequent_min_count] = 0
    strata[count <= data.rare_max_count] = 2
    return strata
