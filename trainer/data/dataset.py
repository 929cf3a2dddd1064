"""Per-rank training, validation and test data: reading, hashing, strata, shuffling, batching.

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
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable

from trainer.data.chunk import Chunk, concat_chunks, gather_jagged
from trainer.data.files import CriteoTSV, Table
from trainer.data.graph import SALT as _GRAPH_SALT
from trainer.data.graph import GraphBuilder, NeighbourGraph, sse_graph_of
from trainer.data.hashing import replica_rows
from trainer.data.min_count import admit, kept_ids, thresholds
from trainer.data.synthetic import SyntheticClicks
from trainer.errors import DataError
from trainer.spec import DataSource, DataSpec, JobSpec, Shuffle

STRATA = ("frequent", "medium", "rare")


def make_source(data: DataSpec):
    if data.source == DataSource.SYNTHETIC:
        return SyntheticClicks(data.synthetic)
    if data.source == DataSource.CRITEO:
        assert data.path
        return CriteoTSV(data.path)
    assert data.path and data.columns
    return Table(data.path, data.columns)


def table_feature_name(feature: str, replica: int) -> str:
    """KJT key / TorchRec feature name of one replica of one sparse feature."""
    return f"{feature}__r{replica}"


@dataclass
class Batch(Pipelineable):
    """One step's input on one rank (TorchRec's ``Pipelineable``: what its train
    pipelines copy to the device, pin and mark for use on their streams)."""

    dense: torch.Tensor  # float32 [B, num_dense]
    sparse: KeyedJaggedTensor  # keys: table_feature_name(f, r)
    labels: torch.Tensor  # float32 [B]
    weights: torch.Tensor  # float32 [B]; 0 for padding rows
    strata: torch.Tensor  # int64 [B], index into STRATA
    # float32 [B]: true click probability (synthetic evaluation data only; oracle NE)
    probs: torch.Tensor | None = None

    def to(self, device: torch.device, non_blocking: bool = False) -> "Batch":
        return Batch(
            self.dense.to(device, non_blocking=non_blocking),
            self.sparse.to(device, non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
            self.weights.to(device, non_blocking=non_blocking),
            self.strata.to(device, non_blocking=non_blocking),
            None if self.probs is None else self.probs.to(device, non_blocking=non_blocking),
        )

    def record_stream(self, stream: torch.Stream) -> None:
        """Mark every tensor as used on ``stream`` (CUDA caching allocator; the
        sparse-dist pipeline uses a batch on its copy, input-dist and main streams)."""
        for t in (self.dense, self.labels, self.weights, self.strata, self.probs):
            if t is not None:
                t.record_stream(stream)  # type: ignore[arg-type]  # torch.cuda.Stream at run time
        self.sparse.record_stream(stream)  # type: ignore[arg-type]

    def pin_memory(self) -> "Batch":
        """The batch in page-locked host memory (CUDA only), so that
        ``to(cuda, non_blocking=True)`` copies it asynchronously instead of staging it."""
        return Batch(
            self.dense.pin_memory(),
            self.sparse.pin_memory(),
            self.labels.pin_memory(),
            self.weights.pin_memory(),
            self.strata.pin_memory(),
            None if self.probs is None else self.probs.pin_memory(),
        )

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class _Part:
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


class RankData:
    """The training and test data one rank sees."""

    def __init__(self, spec: JobSpec, rank: int = 0, world_size: int = 1) -> None:
        self.spec = spec
        self.rank, self.world_size = rank, world_size
        self.features = spec.data.sparse_feature_names()
        self.replicas = spec.model.num_replicas
        self.keys = [table_feature_name(f, r) for f in self.features for r in range(self.replicas)]
        self.batch_size = spec.data.batch_size
        source = make_source(spec.data)
        stratum_feature = spec.data.resolved_stratum_feature()

        # sse_graph: neighbour lists from every training row of the training days (see data/graph.py)
        graph_builder = GraphBuilder(spec, source) if sse_graph_of(spec) is not None else None
        holdout = spec.data.validation_fraction
        # min_count: raw-id counts of its features, taken in the same read as the strata's
        min_k = thresholds(spec)
        counted = list(dict.fromkeys([stratum_feature, *min_k]))
        train_chunks, train_days_of_row, self.train_day_counts, id_counts, held = self._read(
            source,
            spec.data.train_days,
            count_features=counted,
            observe=graph_builder,
            holdout_fraction=holdout,
        )
        counts = {f: _merge_counts(c) for f, c in id_counts.items()}
        self.stratum_counts = counts[stratum_feature]
        # min_count: feature -> sorted raw ids seen at least k times (all others share a row)
        self.kept: dict[str, np.ndarray] = {f: kept_ids(counts[f], k) for f, k in min_k.items()}
        kept = self.kept or None
        train = concat_chunks(train_chunks)
        self.train = _Part(
            train, train_days_of_row, self._strata(train, stratum_feature), spec, self.features, kept
        )
        self.graph: NeighbourGraph | None = graph_builder.build() if graph_builder is not None else None
        self.graph_nodes: dict[str, np.ndarray] = {}  # train occurrence -> graph node, per feature
        if self.graph is not None:
            for f, g in self.graph.graphs.items():
                self.graph_nodes[f] = g.index(train.sparse[f][0])
                if f in self.kept:  # a rare neighbour reads the shared row too
                    admitted = admit(g.nodes, self.kept[f])
                    g.rows = [replica_rows(admitted, r, spec.model.hash_size) for r in range(self.replicas)]
        # validation: whole days, or the held-out tail of the last training day
        self.val: _Part | None = None
        self.val_day_counts: dict[int, int] = {}
        if held is None and spec.data.validation_days:
            held = self._read(source, spec.data.validation_days, with_prob=True)[:3]
        if held is not None:
            val_chunks, val_days_of_row, self.val_day_counts = held
            val = concat_chunks(val_chunks)
            self.val = _Part(
                val, val_days_of_row, self._strata(val, stratum_feature), spec, self.features, kept
            )
        self.test: _Part | None = None
        self.test_day_counts: dict[int, int] = {}
        if spec.data.test_days:
            test_chunks, test_days_of_row, self.test_day_counts, _, _ = self._read(
                source, spec.data.test_days, with_prob=True
            )
            test = concat_chunks(test_chunks)
            self.test = _Part(
                test, test_days_of_row, self._strata(test, stratum_feature), spec, self.features, kept
            )

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

    # ---------------------------------------------------------------- reading

    def _read(
        self,
        source,
        days: list[int],
        count_features: list[str] | None = None,
        observe=None,
        with_prob: bool = False,
        holdout_fraction: float | None = None,
    ):
        """This rank's rows of ``days``, their day, each day's total row count, (with
        ``count_features``) per feature the per-chunk (ids, counts) of that feature over
        *all* rows, and the held-out part (or None).

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
        cap = self.spec.data.max_examples_per_day
        for i, day in enumerate(days):
            split = holdout_fraction is not None and i == len(days) - 1
            # split day: (global start, rows, my chunk, my global rows, counted ids, sparse of all rows)
            day_chunks = []
            seen = 0
            for chunk in self._read_day(source, day, cap, with_prob or split):
                n = len(chunk)
                # global row index within the day decides the rank
                first = (self.rank - seen) % self.world_size
                mine = np.arange(first, n, self.world_size)
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
                        f"data.validation_fraction: rank {self.rank} got no held-out example of day {day}; "
                        "raise the fraction or use data.validation_days"
                    )
                held = (held_chunks, np.concatenate(held_days), {day: n_held})
        if not chunks:
            raise DataError(f"data: rank {self.rank} got no examples of days {days}")
        return chunks, np.concatenate(day_of_row), day_counts, id_counts, held

    @staticmethod
    def _read_day(source, day: int, cap: int | None, with_prob: bool):
        if with_prob and isinstance(source, SyntheticClicks):
            return source.read_day(day, cap, with_prob=True)
        return source.read_day(day, cap)

    def _strata(self, chunk: Chunk, feature: str) -> np.ndarray:
        """Stratum per example from its (first) stratum-feature id's training count."""
        values, lengths = chunk.sparse[feature]
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        has = lengths > 0
        first = np.zeros(len(lengths), dtype=np.uint64)
        first[has] = values[offsets[:-1][has]]
        uniq, counts = self.stratum_counts
        pos = np.searchsorted(uniq, first)
        pos = np.minimum(pos, len(uniq) - 1)
        count = np.where((uniq[pos] == first) & has, counts[pos], 0)
        strata = np.full(len(lengths), 1, dtype=np.int64)  # medium
        strata[count >= self.spec.data.frequent_min_count] = 0
        strata[count <= self.spec.data.rare_max_count] = 2
        return strata

    # ---------------------------------------------------------------- batching

    def _order(self, pass_idx: int) -> np.ndarray:
        """This rank's row order for pass ``pass_idx``.

        Example permutations (``all``, ``within_partition``) are drawn per rank (each
        rank holds different rows). The day order of ``across_partitions`` is drawn
        from (training.seed, pass) only, so every rank walks the days in the same
        order; and in every mode that keeps days contiguous, each day contributes the
        same number of rows (its total // world size) on every rank, the few extra rows
        going to the end of the order (the dropped tail), so all ranks are on the same
        day at every step.
        """
        mode = self.spec.data.shuffle
        n = len(self.train)
        seed = self.spec.training.seed
        rng = np.random.default_rng([seed, pass_idx, self.rank, 0x5F])
        days = self.train.day_of_row
        if mode == Shuffle.ALL:
            return rng.permutation(n)
        train_days = self.spec.data.train_days
        day_list = list(dict.fromkeys(train_days))  # a day listed twice is one (doubled) block
        if mode == Shuffle.ACROSS_PARTITIONS:
            day_rng = np.random.default_rng([seed, pass_idx, 0xDA7])  # no rank: same on every rank
            day_list = [day_list[i] for i in day_rng.permutation(len(day_list))]
        blocks, extra = [], []
        for d in day_list:
            rows = np.flatnonzero(days == d)
            if mode == Shuffle.WITHIN_PARTITION:
                rows = rows[rng.permutation(len(rows))]
            aligned = self.train_day_counts[d] // self.world_size * train_days.count(d)
            blocks.append(rows[:aligned])
            extra.append(rows[aligned:])
        return np.concatenate(blocks + extra)

    def _batch(
        self,
        part: _Part,
        rows: np.ndarray,
        weights: np.ndarray | None = None,
        graph_rng: np.random.Generator | None = None,
    ) -> Batch:
        lengths_all, values_all = [], []
        for f in self.features:
            lengths = part.lengths[f][rows]
            single = part.single[f]
            swap = self._graph_draw(part, f, rows, graph_rng) if graph_rng is not None else None
            for r in range(self.replicas):
                table_rows = part.rows[f][r]
                values = table_rows[rows] if single else gather_jagged(table_rows, part.offsets[f], rows)
                if swap is not None:  # sse_graph: the neighbour's row in every replica table
                    values[swap[0]] = self.graph.graphs[f].rows[r][swap[1]]  # type: ignore[union-attr]
                values_all.append(values)
                lengths_all.append(lengths)
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=self.keys,
            values=torch.from_numpy(np.concatenate(values_all)),
            lengths=torch.from_numpy(np.concatenate(lengths_all)),
        )
        w = np.ones(len(rows), dtype=np.float32) if weights is None else weights
        return Batch(
            dense=torch.from_numpy(np.ascontiguousarray(part.dense[rows])),
            sparse=kjt,
            labels=torch.from_numpy(part.label[rows]),
            weights=torch.from_numpy(w),
            strata=torch.from_numpy(part.strata[rows]),
            probs=None if part.prob is None else torch.from_numpy(part.prob[rows]),
        )

    def _graph_draw(
        self, part: _Part, f: str, rows: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """sse_graph on the training part: (positions in the batch's ids of ``f``,
        neighbour node) of the replaced occurrences, or None."""
        nodes = self.graph_nodes.get(f)
        if nodes is None or self.graph is None:
            return None
        mine = nodes[rows] if part.single[f] else gather_jagged(nodes, part.offsets[f], rows)
        return self.graph.draw(f, mine, rng)

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
            yield self._batch(self.train, order[step * b : (step + 1) * b], graph_rng=rng)

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
            yield self._batch(part, rows, weights)


def _merge_counts(id_counts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Sum per-chunk (ids, counts) into sorted unique ids and their total counts."""
    u = np.concatenate([ids for ids, _ in id_counts])
    c = np.concatenate([n for _, n in id_counts])
    uniq, inv = np.unique(u, return_inverse=True)
    return uniq, np.bincount(inv, weights=c).astype(np.int64)


def prefetch(batches: Iterator[Batch], depth: int, *, pin: bool = False) -> Iterator[Batch]:
    """Build batches ahead in a background thread (numpy releases the GIL); ``pin``
    (CUDA workers): also page-lock them there, off the step's path, so that the step's
    ``non_blocking`` host-to-device copy is asynchronous."""
    if pin:
        batches = (b.pin_memory() for b in batches)
    if depth <= 0:
        yield from batches
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for b in batches:
                while not stop.is_set():
                    try:
                        q.put(b, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as e:  # surfaced in the consumer
            q.put(e)

    t = threading.Thread(target=work, name="rectrain-prefetch", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
