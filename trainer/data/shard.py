"""Reading one rank's shard of a set of days from the data source.

Each rank streams every row of every day once and keeps only its own slice (global
row index within the day ``% world_size == rank``), while counting ids over *all*
rows (so every rank agrees on the strata and ``min_count``'s admitted ids) and
feeding every training row to the ``sse_graph`` builder. Optionally the tail of the
last day is held out for validation (``data.validation_fraction``).
"""

from __future__ import annotations

import numpy as np

from trainer.data.chunk import Chunk
from trainer.data.files import CriteoTSV, Table
from trainer.data.synthetic import SyntheticClicks
from trainer.errors import DataError
from trainer.spec import DataSource, DataSpec


def make_source(data: DataSpec):
    if data.source == DataSource.SYNTHETIC:
        return SyntheticClicks(data.synthetic)
    if data.source == DataSource.CRITEO:
        assert data.path
        return CriteoTSV(data.path)
    assert data.path and data.columns
    return Table(data.path, data.columns)


def read_shard(
    source,
    days: list[int],
    *,
    rank: int,
    world_size: int,
    cap: int | None,
    count_features: list[str] | None = None,
    observe=None,
    with_prob: bool = False,
    holdout_fraction: float | None = None,
):
    """This rank's rows of ``days`` (at most ``cap`` rows read per day), their day,
    each day's total row count, (with ``count_features``) per feature the per-chunk
    (ids, counts) of that feature over *all* rows, and the held-out part (or None).

    With ``holdout_fraction`` f, the last ``round(f * N)`` rows (in the source's
    order) of the last of ``days`` (N rows) are held out: returned as
    (chunks, day_of_row, {day: count}) instead of being kept, and left out of the
    id counts and from ``observe`` (the sse_graph builder, which sees every
    training row). The split is by global row index, so it is the same for any
    number of ranks.
    """
    chunks, day_of_row, day_counts = [], [], {}
    id_counts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {f: [] for f in count_features or []}
    held = None
    for i, day in enumerate(days):
        split = holdout_fraction is not None and i == len(days) - 1
        # split day: (global start, rows, my chunk, my global rows, counted ids, sparse of all rows)
        day_chunks = []
        seen = 0
        for chunk in read_day(source, day, cap, with_prob or split):
            n = len(chunk)
            # global row index within the day decides the rank
            first = (rank - seen) % world_size
            mine = np.arange(first, n, world_size)
            if split:
                counted = {f: chunk.sparse[f] for f in id_counts}
                # the graph may see only the training rows: keep the sparse columns of
                # every row until the day's split is known (only with sse_graph)
                every = Chunk(chunk.label, chunk.dense[:, :0], dict(chunk.sparse)) if observe else None
                day_chunks.append((seen, n, chunk.take(mine), mine + seen, counted, every))
            else:
                if observe is not None:  # sees every row (all ranks build the same)
                    observe.observe(chunk)
                for f, per_chunk in id_counts.items():
                    values, _ = chunk.sparse[f]
                    per_chunk.append(np.unique(values, return_counts=True))
                if len(mine):
                    chunks.append(chunk.take(mine))
                    day_of_row.append(np.full(len(mine), day, dtype=np.int32))
            seen += n
        if seen == 0:
            raise DataError(f"data: day {day} has no examples (check data.path and the day column)")
        day_counts[day] = seen
        if split:
            assert holdout_fraction is not None
            n_held = int(round(holdout_fraction * seen))
            cut = seen - n_held
            if n_held == 0 or cut == 0:
                raise DataError(
                    f"data.validation_fraction: {holdout_fraction} of day {day}'s {seen} examples "
                    f"leaves {n_held} for validation and {cut} for training; choose a fraction "
                    "that leaves both non-empty (or use data.validation_days)"
                )
            day_counts[day] = cut
            held_chunks, held_days = [], []
            for start, n, mine_chunk, rows, counted, every in day_chunks:
                k = int(np.clip(cut - start, 0, n))  # rows of this chunk before the cut
                for f, (values, lengths) in counted.items():
                    id_counts[f].append(np.unique(values[: int(lengths[:k].sum())], return_counts=True))
                if every is not None and k:
                    observe.observe(every.take(np.arange(k)))
                train_rows = np.flatnonzero(rows < cut)
                held_rows = np.flatnonzero(rows >= cut)
                if len(train_rows):
                    c = mine_chunk.take(train_rows)
                    c.prob = None  # training rows never need it
                    chunks.append(c)
                    day_of_row.append(np.full(len(train_rows), day, dtype=np.int32))
                if len(held_rows):
                    held_chunks.append(mine_chunk.take(held_rows))
                    held_days.append(np.full(len(held_rows), day, dtype=np.int32))
            if not held_chunks:
                raise DataError(
                    f"data.validation_fraction: rank {rank} got no held-out example of day {day}; "
                    "raise the fraction or use data.validation_days"
                )
            held = (held_chunks, np.concatenate(held_days), {day: n_held})
    if not chunks:
        raise DataError(f"data: rank {rank} got no examples of days {days}")
    return chunks, np.concatenate(day_of_row), day_counts, id_counts, held


def read_day(source, day: int, cap: int | None, with_prob: bool):
    if with_prob and isinstance(source, SyntheticClicks):
        return source.read_day(day, cap, with_prob=True)
    return source.read_day(day, cap)
