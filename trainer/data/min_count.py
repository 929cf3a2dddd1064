"""``min_count``: frequency admission on the data path (Zhang et al., "Towards
Understanding the Overfitting Phenomenon of Deep Click-Through Rate Prediction
Models", CIKM 2022, arXiv 2209.06053).

Ids of a feature seen fewer than ``k`` times in the training days share one row of
the feature's table(s). The counts are of *raw* ids (their 64-bit base hashes, before
the per-replica hash into ``hash_size`` rows), taken once while every worker streams
every training row (the same pass that counts the stratum feature for the frequency
strata), so all workers agree. A rare id's base hash is replaced by :data:`RARE` before
hashing: the shared row is then ``replica_rows(RARE)``, one row per replica table of
the feature, chosen by the same hash as every other id. Evaluation ids are mapped with
the training counts, so an id unseen in training (count 0) or rare in it reads the
same shared row. Done once per worker when the data is read: a training step costs
nothing more.
"""

from __future__ import annotations

import numpy as np

from trainer.spec import JobSpec, MinCount

#: base hash standing for every rare id of a feature ("rare!ids")
RARE = np.uint64(0x7261726521696473)


def min_count_of(spec: JobSpec) -> MinCount | None:
    return next((r for r in spec.regularizers if isinstance(r, MinCount)), None)


def thresholds(spec: JobSpec) -> dict[str, int]:
    """Feature -> k for the features ``min_count`` maps (k > 1; k = 1 admits every id)."""
    mc = min_count_of(spec)
    if mc is None:
        return {}
    out = {f: mc.threshold(f) for f in spec.data.sparse_feature_names()}
    return {f: k for f, k in out.items() if k > 1}


def kept_ids(counts: tuple[np.ndarray, np.ndarray], k: int) -> np.ndarray:
    """The sorted raw ids (base hashes) seen at least ``k`` times, from sorted
    (ids, counts)."""
    uniq, n = counts
    return uniq[n >= k]


def admit(values: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """``values`` (base hashes) with every id not in the sorted ``kept`` replaced by
    :data:`RARE` (a new array)."""
    values = np.asarray(values, dtype=np.uint64)
    if len(kept) == 0:
        return np.full(values.shape, RARE, dtype=np.uint64)
    pos = np.minimum(np.searchsorted(kept, values), len(kept) - 1)
    return np.where(kept[pos] == values, values, RARE)
