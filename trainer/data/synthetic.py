"""Synthetic day-partitioned user x ad click logs, deterministic by seed.

The ground truth is fixed by ``seed`` and shared by all days; each day draws new
impressions from it:

- users and ads have power-law (Zipf) frequency: a few are everywhere, most rare;
- users and ads belong to ``rank`` interest clusters; their latent factors are the
  cluster direction plus individual noise, so the click model is low rank;
- ``ad_history`` holds ads the user clicked before (drawn from the user's cluster);
- context features and dense features add small additive effects;
- logit = logit(base_ctr) + signal_scale * <u, a> + ad/user bias + context + dense
  + Gaussian noise; label ~ Bernoulli(sigmoid(logit)).

Each chunk also carries the true click probability of every example given its
features, ``P(click | features) = E_eps[sigmoid(z + label_noise * eps)]`` (the
Gaussian logit noise is drawn per impression, so it is part of the label's
randomness, not of the features), integrated by Gauss-Hermite quadrature. Its NE
is the *oracle NE*: no model of these features can do better in expectation.

Rare users and ads are seen a handful of times a day, which is exactly what lets a
model memorise them over several passes and get worse on the next day.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property

import numpy as np

from trainer.data.chunk import Chunk
from trainer.data.hashing import base_hash_ints
from trainer.spec import SyntheticSpec

_CHUNK_ROWS = 1 << 18
# Gauss-Hermite nodes for E[sigmoid(z + s * eps)], eps ~ N(0, 1): with 32 nodes the
# absolute error is below 1e-12 for label_noise <= 1 and below 2e-7 for label_noise 2
_GH_X, _GH_W = np.polynomial.hermite.hermgauss(32)


def click_probability(z: np.ndarray, noise: float) -> np.ndarray:
    """``E[sigmoid(z + noise * eps)]`` for eps ~ N(0, 1), elementwise (float64)."""
    z = np.asarray(z, dtype=np.float64)
    if noise == 0.0:
        return 1.0 / (1.0 + np.exp(-z))
    out = np.zeros_like(z)
    for x, w in zip(_GH_X, _GH_W, strict=True):
        out += w / (1.0 + np.exp(-(z + noise * np.sqrt(2.0) * x)))
    return out / np.sqrt(np.pi)


def _zipf_probs(n: int, s: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s
    return w / w.sum()


class SyntheticClicks:
    """Generator of the spec's synthetic click logs (one instance per process)."""

    def __init__(self, spec: SyntheticSpec) -> None:
        self.spec = spec

    @cached_property
    def _truth(self) -> dict[str, np.ndarray]:
        s = self.spec
        rng = np.random.default_rng([s.seed, 0xC11C])
        k = s.rank
        dirs = rng.normal(size=(k, k)) / np.sqrt(k)
        user_cluster = rng.integers(0, k, size=s.num_users)
        ad_cluster = rng.integers(0, k, size=s.num_ads)
        users = dirs[user_cluster] + 0.5 * rng.normal(size=(s.num_users, k)) / np.sqrt(k)
        ads = dirs[ad_cluster] + 0.5 * rng.normal(size=(s.num_ads, k)) / np.sqrt(k)
        # frequency rank -> id: a random permutation, so popular ids are spread out
        user_order = rng.permutation(s.num_users)
        ad_order = rng.permutation(s.num_ads)
        ad_p = _zipf_probs(s.num_ads, s.ad_zipf)
        # ads of each cluster with their popularity, for clicked-ad history draws
        ad_pop = np.empty(s.num_ads)
        ad_pop[ad_order] = ad_p
        return {
            "users": users,
            "ads": ads,
            "user_cluster": user_cluster,
            "ad_cluster": ad_cluster,
            "user_bias": rng.normal(scale=0.3, size=s.num_users),
            "ad_bias": rng.normal(scale=0.5, size=s.num_ads),
            "ctx": rng.normal(scale=0.3, size=(max(s.num_context_features, 1), s.context_cardinality)),
            "dense_w": rng.normal(scale=0.3, size=max(s.num_dense_features, 1)),
            "user_p": _zipf_probs(s.num_users, s.user_zipf),
            "user_order": user_order,
            "ad_p": ad_p,
            "ad_order": ad_order,
            "ad_pop": ad_pop,
        }

    @cached_property
    def _cluster_ads(self) -> list[tuple[np.ndarray, np.ndarray]]:
        t = self._truth
        out = []
        for c in range(self.spec.rank):
            ids = np.flatnonzero(t["ad_cluster"] == c)
            if len(ids) == 0:
                ids = np.arange(self.spec.num_ads)
            p = t["ad_pop"][ids]
            out.append((ids, np.cumsum(p / p.sum())))
        return out

    def clusters(self, feature: str) -> tuple[np.ndarray, np.ndarray] | None:
        """Ground-truth cluster of every id of ``feature`` (``user_id``; ``ad_id`` and
        ``ad_history``, which hold ads): (sorted base hashes, cluster of each), or None
        for a feature without clusters. The graph of ``sse_graph``."""
        t = self._truth
        if feature == "user_id":
            raw, cluster = np.arange(self.spec.num_users), t["user_cluster"]
        elif feature in ("ad_id", "ad_history"):
            raw, cluster = np.arange(self.spec.num_ads), t["ad_cluster"]
        else:
            return None
        h = base_hash_ints(raw)
        order = np.argsort(h)
        return h[order], cluster[order]

    def read_day(self, day: int, max_rows: int | None = None, with_prob: bool = False) -> Iterator[Chunk]:
        """The day's chunks; ``with_prob`` adds each example's true click probability
        (``Chunk.prob``; costs a little, so only evaluation days ask for it)."""
        s = self.spec
        n_total = s.examples_per_day if max_rows is None else min(max_rows, s.examples_per_day)
        done = 0
        part = 0
        while done < n_total:
            n = min(_CHUNK_ROWS, n_total - done)
            yield self._chunk(day, part, n, with_prob)
            done += n
            part += 1

    def _chunk(self, day: int, part: int, n: int, with_prob: bool = False) -> Chunk:
        s, t = self.spec, self._truth
        rng = np.random.default_rng([s.seed, 0xDA7, day, part])
        user = t["user_order"][rng.choice(s.num_users, size=n, p=t["user_p"])]
        ad = t["ad_order"][rng.choice(s.num_ads, size=n, p=t["ad_p"])]
        logit = np.log(s.base_ctr / (1 - s.base_ctr))
        z = (
            logit
            + s.signal_scale * np.einsum("ij,ij->i", t["users"][user], t["ads"][ad])
            + t["user_bias"][user]
            + t["ad_bias"][ad]
        )
        sparse: dict[str, tuple[np.ndarray, np.ndarray]] = {
            "user_id": (base_hash_ints(user), np.ones(n, dtype=np.int32)),
            "ad_id": (base_hash_ints(ad), np.ones(n, dtype=np.int32)),
        }
        if s.history_length > 0:
            lengths = rng.integers(0, s.history_length + 1, size=n).astype(np.int32)
            clusters = np.repeat(t["user_cluster"][user], lengths)
            u = rng.random(len(clusters))
            hist = np.empty(len(clusters), dtype=np.int64)
            for c in range(s.rank):
                m = clusters == c
                if m.any():
                    ids, cdf = self._cluster_ads[c]
                    hist[m] = ids[np.minimum(np.searchsorted(cdf, u[m]), len(ids) - 1)]
            sparse["ad_history"] = (base_hash_ints(hist), lengths)
        for i in range(s.num_context_features):
            v = rng.integers(0, s.context_cardinality, size=n)
            z += t["ctx"][i][v]
            # distinct id spaces per context feature
            sparse[f"ctx_{i}"] = (base_hash_ints(v + (i + 1) * 1_000_003), np.ones(n, dtype=np.int32))
        dense = rng.normal(size=(n, s.num_dense_features)).astype(np.float32)
        if s.num_dense_features:
            z += dense @ t["dense_w"][: s.num_dense_features]
        # given the features, i.e. before the per-impression noise draw
        prob = click_probability(z, s.label_noise) if with_prob else None
        z += s.label_noise * rng.normal(size=n)
        label = (rng.random(n) < 1.0 / (1.0 + np.exp(-z))).astype(np.float32)
        return Chunk(label, dense, sparse, prob)
