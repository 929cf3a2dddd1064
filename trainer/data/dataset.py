"""Per-rank training, validation and test data: :class:`RankData`, what a worker trains
and evaluates on, built from its own modules:

- :mod:`trainer.data.shard`: reading this rank's shard of the days from the source
  (and the id counts over every row, the validation hold-out);
- :mod:`trainer.data.part`: a shard's rows with ids hashed to table rows
  (``min_count``'s remapping) and their frequency strata;
- :mod:`trainer.data.order`: the per-pass row order (``data.shuffle``);
- :mod:`trainer.data.batch`: the :class:`Batch` type and building one from rows;
- :mod:`trainer.data.prefetch`: building batches ahead in a background thread.

Each rank streams every day once, keeps only its own slice (global row index
``% world_size == rank``), and hashes ids into table rows up front, so building a
batch is a few numpy gathers. The stratum feature's id counts are taken over the
*whole* training partition (every rank sees every row while streaming), so all
ranks agree on which ids are frequent / medium / rare.

Step counts are the same on every rank (sharded embeddings make each step a
collective): training drops the last incomplete global batch; evaluation pads the
last batch with weight-0 rows, which no metric counts.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np

from trainer.data.batch import Batch, BatchBuilder
from trainer.data.chunk import concat_chunks
from trainer.data.graph import SALT as _GRAPH_SALT
from trainer.data.graph import GraphBuilder, NeighbourGraph, sse_graph_of
from trainer.data.hashing import replica_rows
from trainer.data.min_count import admit, kept_ids, thresholds
from trainer.data.order import pass_order
from trainer.data.part import Part, merge_counts, strata_of
from trainer.data.shard import make_source, read_shard
from trainer.errors import DataError
from trainer.spec import JobSpec


class RankData:
    """The training and test data one rank sees."""

    def __init__(self, spec: JobSpec, rank: int = 0, world_size: int = 1) -> None:
        self.spec = spec
        self.rank, self.world_size = rank, world_size
        self.features = spec.data.sparse_feature_names()
        self.replicas = spec.model.num_replicas
        self.batch_size = spec.data.batch_size
        source = make_source(spec.data)
        stratum_feature = spec.data.resolved_stratum_feature()

        def read(days: list[int], **kw):
            cap = spec.data.max_examples_per_day
            return read_shard(source, days, rank=rank, world_size=world_size, cap=cap, **kw)

        # sse_graph: neighbour lists from every training row of the training days (see data/graph.py)
        graph_builder = GraphBuilder(spec, source) if sse_graph_of(spec) is not None else None
        holdout = spec.data.validation_fraction
        # min_count: raw-id counts of its features, taken in the same read as the strata's
        min_k = thresholds(spec)
        counted = list(dict.fromkeys([stratum_feature, *min_k]))
        train_chunks, train_days_of_row, self.train_day_counts, id_counts, held = read(
            spec.data.train_days,
            count_features=counted,
            observe=graph_builder,
            holdout_fraction=holdout,
        )
        counts = {f: merge_counts(c) for f, c in id_counts.items()}
        self.stratum_counts = counts[stratum_feature]
        # min_count: feature -> sorted raw ids seen at least k times (all others share a row)
        self.kept: dict[str, np.ndarray] = {f: kept_ids(counts[f], k) for f, k in min_k.items()}
        kept = self.kept or None

        def part(chunk, days_of_row) -> Part:
            strata = strata_of(chunk, stratum_feature, self.stratum_counts, spec.data)
            return Part(chunk, days_of_row, strata, spec, self.features, kept)

        train = concat_chunks(train_chunks)
        self.train = part(train, train_days_of_row)
        self.graph: NeighbourGraph | None = graph_builder.build() if graph_builder is not None else None
        self.graph_nodes: dict[str, np.ndarray] = {}  # train occurrence -> graph node, per feature
        if self.graph is not None:
            for f, g in self.graph.graphs.items():
                self.graph_nodes[f] = g.index(train.sparse[f][0])
                if f in self.kept:  # a rare neighbour reads the shared row too
                    admitted = admit(g.nodes, self.kept[f])
                    g.rows = [replica_rows(admitted, r, spec.model.hash_size) for r in range(self.replicas)]
        self.batcher = BatchBuilder(self.features, self.replicas, self.graph, self.graph_nodes)
        # validation: whole days, or the held-out tail of the last training day
        self.val: Part | None = None
        self.val_day_counts: dict[int, int] = {}
        if held is None and spec.data.validation_days:
            held = read(spec.data.validation_days, with_prob=True)[:3]
        if held is not None:
            val_chunks, val_days_of_row, self.val_day_counts = held
            self.val = part(concat_chunks(val_chunks), val_days_of_row)
        self.test: Part | None = None
        self.test_day_counts: dict[int, int] = {}
        if spec.data.test_days:
            test_chunks, test_days_of_row, self.test_day_counts, _, _ = read(
                spec.data.test_days, with_prob=True
            )
            self.test = part(concat_chunks(test_chunks), test_days_of_row)

        per_rank_min = sum(n // world_size for n in self.train_day_counts.values())
        self.steps_per_pass = per_rank_min // self.batch_size
        if self.steps_per_pass == 0:
            total = sum(self.train_day_counts.values())
            raise DataError(
                f"data: the training days hold {total} examples, fewer than one global batch "
                f"(data.batch_size {self.batch_size} x scaling.num_workers {world_size}); "
                "lower data.batch_size or add data"
            )
        self.eval_steps = self._eval_steps(self.test_day_counts)
        self.val_steps = self._eval_steps(self.val_day_counts)

    @staticmethod
    def cache_key(spec: JobSpec, rank: int, world_size: int) -> str:
        """What the built data depends on: the data section, the model's hashing (table
        rows, replicas), the ``sse_graph`` regularizer (its neighbour graph), the
        ``min_count`` thresholds (its id mapping) and the rank's slice. ``training.seed`` is not in it: only the order of the rows (drawn
        per pass from the seed, :meth:`_order`) depends on it."""
        import json

        graph = sse_graph_of(spec)
        return json.dumps(
            {
                "data": spec.data.model_dump(mode="json"),
                "hash_size": spec.model.hash_size,
                "num_replicas": spec.model.num_replicas,
                "sse_graph": graph.model_dump(mode="json") if graph is not None else None,
                "min_count": thresholds(spec),
                "rank": rank,
                "world_size": world_size,
            },
            sort_keys=True,
        )

    def for_spec(self, spec: JobSpec) -> RankData:
        """The same built data for another run of the same data (a warm worker's next
        run, another seed or arm): it shares every array (read-only) and reads
        ``training.seed`` from ``spec``. Refused when ``spec`` would build other data."""
        if self.cache_key(spec, self.rank, self.world_size) != self.cache_key(
            self.spec, self.rank, self.world_size
        ):
            raise ValueError("RankData.for_spec: the spec builds other data (see RankData.cache_key)")
        other = copy.copy(self)
        other.spec = spec
        return other

    def _eval_steps(self, day_counts: dict[int, int]) -> int:
        """Evaluation steps every rank runs: its largest possible share, in padded batches."""
        per_rank_max = sum(-(-n // self.world_size) for n in day_counts.values())
        return -(-per_rank_max // self.batch_size) if per_rank_max else 0

    # ---------------------------------------------------------------- batching

    def _order(self, pass_idx: int) -> np.ndarray:
        """This rank's row order for pass ``pass_idx`` (:func:`trainer.data.order.pass_order`)."""
        return pass_order(
            self.spec, self.train.day_of_row, self.train_day_counts, pass_idx, self.rank, self.world_size
        )

    def train_batches(self, pass_idx: int, start_step: int = 0) -> Iterator[Batch]:
        """This rank's batches of pass ``pass_idx`` from ``start_step`` on (resume);
        with ``sse_graph`` ids are replaced by graph neighbours (training only)."""
        order = self._order(pass_idx)
        b = self.batch_size
        seed = self.spec.training.seed
        for step in range(start_step, self.steps_per_pass):
            rng = (
                np.random.default_rng([seed, pass_idx, self.rank, step, _GRAPH_SALT])
                if self.graph is not None
                else None
            )
            yield self.batcher.build(self.train, order[step * b : (step + 1) * b], graph_rng=rng)

    def eval_batches(self, split: str = "test") -> Iterator[Batch]:
        """This rank's batches of ``split`` ("test" or "validation"), in order; the last
        is padded with weight-0 rows."""
        part, steps = (self.val, self.val_steps) if split == "validation" else (self.test, self.eval_steps)
        if part is None:
            return
        b, n = self.batch_size, len(part)
        for step in range(steps):
            rows = np.arange(step * b, min((step + 1) * b, n))
            pad = b - len(rows)
            weights = np.ones(b, dtype=np.float32)
            if pad:
                weights[len(rows) :] = 0.0
                rows = np.concatenate([rows, np.zeros(pad, dtype=np.int64)])
            yield self.batcher.build(part, rows, weights)
