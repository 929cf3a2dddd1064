"""The order one rank walks its training rows in each pass (``data.shuffle``)."""

from __future__ import annotations

import numpy as np

from trainer.spec import JobSpec, Shuffle


def pass_order(
    spec: JobSpec,
    day_of_row: np.ndarray,
    day_counts: dict[int, int],
    pass_idx: int,
    rank: int,
    world_size: int,
) -> np.ndarray:
    """This rank's row order for pass ``pass_idx`` over its training rows (their day:
    ``day_of_row``; ``day_counts``: each training day's total rows over all ranks).

    Example permutations (``all``, ``within_partition``) are drawn per rank (each
    rank holds different rows). The day order of ``across_partitions`` is drawn
    from (training.seed, pass) only, so every rank walks the days in the same
    order; and in every mode that keeps days contiguous, each day contributes the
    same number of rows (its total // world size) on every rank, the few extra rows
    going to the end of the order (the dropped tail), so all ranks are on the same
    day at every step.
    """
    mode = spec.data.shuffle
    n = len(day_of_row)
    seed = spec.training.seed
    rng = np.random.default_rng([seed, pass_idx, rank, 0x5F])
    if mode == Shuffle.ALL:
        return rng.permutation(n)
    train_days = spec.data.train_days
    day_list = list(dict.fromkeys(train_days))  # a day listed twice is one (doubled) block
    if mode == Shuffle.ACROSS_PARTITIONS:
        day_rng = np.random.default_rng([seed, pass_idx, 0xDA7])  # no rank: same on every rank
        day_list = [day_list[i] for i in day_rng.permutation(len(day_list))]
    blocks, extra = [], []
    for d in day_list:
        rows = np.flatnonzero(day_of_row == d)
        if mode == Shuffle.WITHIN_PARTITION:
            rows = rows[rng.permutation(len(rows))]
        aligned = day_counts[d] // world_size * train_days.count(d)
        blocks.append(rows[:aligned])
        extra.append(rows[aligned:])
    return np.concatenate(blocks + extra)
