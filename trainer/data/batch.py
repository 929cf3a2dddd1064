"""One step's input: the :class:`Batch` type, its KJT key names, and building one from
a :class:`~trainer.data.part.Part`'s rows (the per-replica gathers of hashed ids, and
``sse_graph``'s neighbour swaps on training batches)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable

from trainer.data.chunk import gather_jagged
from trainer.data.graph import NeighbourGraph
from trainer.data.part import Part

STRATA = ("frequent", "medium", "rare")


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


class BatchBuilder:
    """Builds :class:`Batch` es from a part's rows: per feature and replica table, the
    rows' hashed ids (one numpy gather each). With an ``sse_graph`` graph and a
    ``graph_rng``, some training occurrences read a graph neighbour's row instead."""

    def __init__(
        self,
        features: list[str],
        replicas: int,
        graph: NeighbourGraph | None = None,
        graph_nodes: dict[str, np.ndarray] | None = None,
    ) -> None:
        """``graph_nodes``: per feature, the graph node of each training occurrence."""
        self.features, self.replicas = features, replicas
        self.keys = [table_feature_name(f, r) for f in features for r in range(replicas)]
        self.graph = graph
        self.graph_nodes = {} if graph_nodes is None else graph_nodes

    def build(
        self,
        part: Part,
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
        self, part: Part, f: str, rows: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """sse_graph on the training part: (positions in the batch's ids of ``f``,
        neighbour node) of the replaced occurrences, or None."""
        nodes = self.graph_nodes.get(f)
        if nodes is None or self.graph is None:
            return None
        mine = nodes[rows] if part.single[f] else gather_jagged(nodes, part.offsets[f], rows)
        return self.graph.draw(f, mine, rng)
