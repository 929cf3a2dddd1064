"""``sse_graph``: neighbour lists built once from the training days, sampled per batch.

The graph is bipartite between the ids of a feature (its *nodes*: the distinct raw
ids of that feature in the training days, over all rows -- every rank streams every
row, so all ranks build the same graph) and *values*: for the synthetic source the
ground-truth cluster of the id (:meth:`SyntheticClicks.clusters`), for a table the
values of ``graph_column`` in the same training row (every id x value of a row, so a
multi-valued column links an id to each of its values; an empty or missing cell links
nothing, and an id with no value at all is never replaced). Two ids are neighbours when
they share a value.

A neighbour of id x is drawn by a two-step walk: a value v uniformly among x's
distinct values, then an id uniformly among the *other* ids with value v (x stays
itself when v has no other id). With one value per id (the synthetic clusters, a
movie's single genre) this is uniform over x's group without x.

Sampling is on the data path (numpy, O(ids of the batch)), training batches only:
:class:`trainer.data.dataset.RankData` draws, per training batch and feature, which
id occurrences are replaced (probability ``p`` of the feature) and by which
neighbour, and writes the neighbour's row into *every* replica table of the feature
(the replicas hash the same raw id, so they stay consistent). The random draws depend
only on (training.seed, pass, rank, step): a resumed run draws the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainer.data.chunk import Chunk, gather_jagged
from trainer.data.hashing import MISSING, replica_rows
from trainer.spec import DataSource, JobSpec, SseGraph

SALT = 0x55E6


def sse_graph_of(spec: JobSpec) -> SseGraph | None:
    return next((r for r in spec.regularizers if isinstance(r, SseGraph)), None)


def cross_pairs(
    f_values: np.ndarray, f_lengths: np.ndarray, g_values: np.ndarray, g_lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Every (id of f, value of g) pair of the same row (jagged columns, per row the
    cross product)."""
    n = len(f_lengths)
    g_off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(g_lengths, out=g_off[1:])
    row_of_f = np.repeat(np.arange(n, dtype=np.int64), f_lengths.astype(np.int64))
    reps = g_lengths.astype(np.int64)[row_of_f]
    ids = np.repeat(f_values, reps)
    vals = gather_jagged(g_values, g_off, row_of_f)
    return ids.astype(np.uint64), vals.astype(np.uint64)


@dataclass
class FeatureGraph:
    """The neighbour lists of one feature (CSR by value and by node)."""

    nodes: np.ndarray  # uint64 [N] sorted base hashes of the ids
    val_ptr: np.ndarray  # int64 [V + 1]
    val_nodes: np.ndarray  # int64 [pairs] node indices grouped by value, sorted
    node_ptr: np.ndarray  # int64 [N + 1]
    node_val: np.ndarray  # int64 [pairs] value index of each of a node's pairs
    node_pos: np.ndarray  # int64 [pairs] the node's position within that value's group
    rows: list[np.ndarray]  # per replica: int64 [N] table row of each node

    @classmethod
    def build(cls, ids: np.ndarray, vals: np.ndarray, hash_size: int, replicas: int) -> "FeatureGraph":
        pairs = np.unique(np.stack([ids, vals], axis=1), axis=0)
        nodes, node_of = np.unique(pairs[:, 0], return_inverse=True)
        values, val_of = np.unique(pairs[:, 1], return_inverse=True)
        node_of, val_of = node_of.reshape(-1).astype(np.int64), val_of.reshape(-1).astype(np.int64)
        n_pairs = len(pairs)
        by_val = np.lexsort((node_of, val_of))
        val_ptr = np.zeros(len(values) + 1, dtype=np.int64)
        np.cumsum(np.bincount(val_of, minlength=len(values)), out=val_ptr[1:])
        pos = np.empty(n_pairs, dtype=np.int64)
        pos[by_val] = np.arange(n_pairs, dtype=np.int64) - val_ptr[val_of[by_val]]
        by_node = np.argsort(node_of, kind="stable")
        node_ptr = np.zeros(len(nodes) + 1, dtype=np.int64)
        np.cumsum(np.bincount(node_of, minlength=len(nodes)), out=node_ptr[1:])
        return cls(
            nodes=nodes,
            val_ptr=val_ptr,
            val_nodes=node_of[by_val],
            node_ptr=node_ptr,
            node_val=val_of[by_node],
            node_pos=pos[by_node],
            rows=[replica_rows(nodes, r, hash_size) for r in range(replicas)],
        )

    def index(self, values: np.ndarray) -> np.ndarray:
        """Node index of each raw id (base hash); -1 for an id that is no node (a table
        row whose graph_column cell is empty or missing links its ids to nothing)."""
        idx = np.minimum(np.searchsorted(self.nodes, values), len(self.nodes) - 1).astype(np.int64)
        idx[self.nodes[idx] != values] = -1
        return idx

    def neighbours(self, x: int) -> np.ndarray:
        """All neighbour node indices of node ``x`` (for tests and inspection)."""
        out = []
        for k in range(self.node_ptr[x], self.node_ptr[x + 1]):
            v = self.node_val[k]
            out.append(self.val_nodes[self.val_ptr[v] : self.val_ptr[v + 1]])
        nb = np.unique(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)
        return nb[nb != x]

    def sample(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One neighbour of each node in ``x`` by the two-step walk (x itself where
        its drawn value has no other id)."""
        if x.size == 0:
            return x
        deg = self.node_ptr[x + 1] - self.node_ptr[x]
        k = self.node_ptr[x] + np.minimum((rng.random(x.size) * deg).astype(np.int64), deg - 1)
        grp, pos = self.node_val[k], self.node_pos[k]
        m = self.val_ptr[grp + 1] - self.val_ptr[grp]
        u = np.minimum((rng.random(x.size) * (m - 1)).astype(np.int64), np.maximum(m - 2, 0))
        slot = np.minimum(u + (u >= pos), m - 1)
        return np.where(m > 1, self.val_nodes[self.val_ptr[grp] + slot], x)


class NeighbourGraph:
    """Every ``sse_graph`` feature's graph and rate; see the module docstring."""

    def __init__(self, graphs: dict[str, FeatureGraph], rates: dict[str, float]) -> None:
        self.graphs = graphs
        self.rates = rates

    @property
    def features(self) -> list[str]:
        return list(self.graphs)

    def draw(
        self, feature: str, nodes: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(positions replaced, their new node) among ``nodes`` (one batch's occurrences
        of ``feature``), or None when nothing is replaced."""
        rate = self.rates[feature]
        if rate <= 0.0 or nodes.size == 0:
            return None
        hit = np.flatnonzero((rng.random(nodes.size) < rate) & (nodes >= 0))
        return hit, self.graphs[feature].sample(nodes[hit], rng)


class GraphBuilder:
    """Collects (id, value) pairs of every training chunk (all rows), then builds."""

    def __init__(self, spec: JobSpec, source) -> None:
        reg = sse_graph_of(spec)
        assert reg is not None
        self.spec = spec
        self.features = reg.graph_features(spec.data)
        self.rates = {f: reg.rate(f) for f in self.features}
        self.column = reg.graph_column
        self.clusters = None
        if spec.data.source == DataSource.SYNTHETIC:
            self.clusters = {f: source.clusters(f) for f in self.features}
        self.pairs: dict[str, list[np.ndarray]] = {f: [] for f in self.features}

    def observe(self, chunk: Chunk) -> None:
        for f in self.features:
            values, lengths = chunk.sparse[f]
            if self.clusters is not None:
                hashes, cluster = self.clusters[f]
                pos = np.minimum(np.searchsorted(hashes, values), len(hashes) - 1)
                ids, vals = values.astype(np.uint64), cluster[pos].astype(np.uint64)
            else:
                assert self.column is not None
                g_values, g_lengths = chunk.sparse[self.column]
                ids, vals = cross_pairs(values, lengths, g_values, g_lengths)
                keep = vals != MISSING  # a missing graph_column value links nothing
                ids, vals = ids[keep], vals[keep]
            if ids.size:
                self.pairs[f].append(np.unique(np.stack([ids, vals], axis=1), axis=0))

    def build(self) -> NeighbourGraph:
        m = self.spec.model
        graphs = {}
        for f in self.features:
            parts = self.pairs[f]
            if not parts:
                continue  # no id of f in the training days: nothing to replace
            p = np.concatenate(parts)
            graphs[f] = FeatureGraph.build(p[:, 0], p[:, 1], m.hash_size, m.num_replicas)
        self.pairs.clear()
        return NeighbourGraph(graphs, {f: self.rates[f] for f in graphs})
