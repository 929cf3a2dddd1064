"""``embedding_reset``: re-draw the embedding tables at the start of chosen passes.

MEDA (Liu et al., "Multi-Epoch learning with Data Augmentation", arXiv 2305.19531;
the analysis in arXiv 2407.01607) finds that the multi-epoch overfitting of
recommendation models sits in the embeddings: re-initialising the embedding tables
(and their optimizer state) at the start of every epoch after the first, while the
dense layers keep training, lets extra epochs pay. Here, at the start of each chosen
pass (not when a run resumes *inside* it: the checkpoint already holds the reset
tables), every local shard of the chosen tables is rewritten by
:func:`trainer.model.embedding_init.init_embedding_tables` with the seed
:func:`reset_seed` (training.seed, pass), so a reset is as reproducible as the initial
draw (the same on any world size, plan or rank), yet differs from it and from the
other passes' resets; the tables' row-wise AdaGrad accumulators are zeroed
(:func:`trainer.regularizers.schedule.reset_sparse_optimizer_state`). Dense weights, dense optimizer
state and batch-norm statistics are untouched. Cost: one pass over the local rows of
the chosen tables per reset, nothing between resets.
"""

from __future__ import annotations

import hashlib

import torch

from trainer.spec import EmbeddingReset, JobSpec


def reset_seed(seed: int, pass_idx: int) -> int:
    """The initialiser seed of the reset at the start of pass ``pass_idx`` (a 63-bit
    hash of (seed, pass): stable across processes, never the job's own seed's draw)."""
    digest = hashlib.blake2b(f"{seed}/embedding_reset/{pass_idx}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class EmbeddingResetter:
    def __init__(self, cfg: EmbeddingReset, spec: JobSpec) -> None:
        from trainer.model.dlrm import table_name  # dlrm imports the data path; keep it lazy

        self.passes = set(cfg.reset_passes(spec.training.num_passes))
        self.seed = spec.training.seed
        self.tables: set[str] | None = None
        if cfg.features is not None:
            self.tables = {table_name(f, r) for f in cfg.features for r in range(spec.model.num_replicas)}

    def due(self, pass_idx: int) -> bool:
        return pass_idx in self.passes

    @torch.no_grad()
    def apply(self, pass_idx: int, dmp: torch.nn.Module) -> list[str]:
        """Reset the chosen tables' local shards and their AdaGrad state (no collective);
        return the names of the tables this rank reset."""
        from trainer.model.embedding_init import init_embedding_tables  # it imports this package
        from trainer.regularizers.schedule import reset_sparse_optimizer_state

        names = init_embedding_tables(dmp, reset_seed(self.seed, pass_idx), tables_only=self.tables)
        reset_sparse_optimizer_state(dmp, tables=self.tables)
        return names
