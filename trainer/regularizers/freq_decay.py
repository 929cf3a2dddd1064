"""``freq_decay``: frequency-aware decoupled decay of the embedding rows a step reads.

AdagradAR (Li & Lyu, "Adaptive Regularization for Large-Scale Sparse Feature
Embedding Models", ICLR 2026, arXiv 2511.06374): a row read at clock value ``t`` that
was last read at ``t0`` gets, in the same step as its row-wise AdaGrad update, the
decoupled decay ``lambda = min(1, alpha * (t - t0))`` of its *pre-step* weight::

    G <- G + mean_d(g^2)                                   (AdaGrad, unchanged)
    w <- (1 - lambda) * w - lr * g / (sqrt(G) + eps)

Rare rows (long intervals) are shrunk the most, rows read every step by ``alpha``.
The clock counts training steps (``interval: steps``, +1 per step) or training
examples over all workers (``interval: examples``, +batch_size x workers per step); a
row never read before has interval one step (FBGEMM's ``rowwise_rmsprop_ar`` uses the
same first-touch rule). See docs/regularizers.md for what was read and what was not.

How, on FBGEMM's fused kernel (which never exposes the gradient): the forward hook
of :mod:`.touched` runs after each training forward of a TBE, when the output (and
so the loss's gradient) has been computed from the pre-step rows and the fused
update, which FBGEMM applies in backward to whatever the rows hold then, is still
to come. The hook reads the rows' last-read clock, computes ``lambda`` and writes
``(1 - lambda) * w_pre`` into the rows; backward then adds ``-lr g / (sqrt(G) + eps)``
with ``g`` the gradient at ``w_pre``: the formula above, exactly, with no post-step
pass. (The gradient of a TBE's weights does not read them; only learnable
per-sample weights would, and rectrain has none.) The rows' last-read clock is set
to ``t`` in the same hook, so a second call of the same TBE in one step sees
interval 0 for the rows it shares with the first (and the decayed rows). No
``torch.unique``: an id repeated in the batch gets the same lambda and pre-step row
for each copy, so each copy writes the same value. The exact ``sparse_l2`` fallback,
whose gradient hook runs in backward, sees the decayed rows (the two decays compose:
``freq_decay`` first). Cost: O(ids x D) gathers and scatters per step; no
collective: the hook runs on the rank owning the rows, after TorchRec's input
all-to-all, so it sees every rank's reads of them under table-wise and row-wise
plans.

State: one int64 per row of the local shards (the last-read clock; 0 = never) and
the clock itself. :meth:`FreqDecay.state_dict` exposes them as a 1-D ShardedTensor
per table laid out like the table's rows (row offsets of the table's own shards)
plus a replicated scalar, so DCP checkpoints, reshards and restores them with the
embeddings (resume and warm start; ``init_from.reset_optimizer`` starts them afresh).
Nothing decays while the sparse learning rate is 0 (``freeze``): those steps
neither decay nor count as reads, though the clock runs on.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.distributed as dist

from trainer.regularizers.touched import Call, TBERows, TouchedRows, embedding_kernels
from trainer.spec import FreqDecay as FreqDecaySpec

CLOCK_KEY = "freq_decay.clock"
LAST_PREFIX = "freq_decay.last."


class FreqDecay:
    def __init__(self, cfg: FreqDecaySpec) -> None:
        self.alpha = cfg.alpha
        self.by_examples = cfg.interval == "examples"
        self.inc = 1  # clock units per step (set in attach for ``examples``)
        self.clock = 0  # clock value of the last finished training step
        self.active = True  # False while the sparse learning rate is 0
        self.last: list[torch.Tensor] = []  # per TBE of ``touched``: int64 [sum rows]
        self._index: dict[int, int] = {}  # id(TBERows) -> its position in ``last``
        self._touched: TouchedRows | None = None
        self._dmp: torch.nn.Module | None = None

    def attach(self, dmp: torch.nn.Module, touched: TouchedRows, examples_per_step: int) -> None:
        """``examples_per_step``: the global batch (batch_size x workers)."""
        self._dmp, self._touched = dmp, touched
        self.inc = int(examples_per_step) if self.by_examples else 1
        self.last = []
        for i, t in enumerate(touched.tbes):
            n = int(t.hash_size_cumsum[-1])
            self.last.append(torch.zeros(n, dtype=torch.int64, device=t.hash_size_cumsum.device))
            self._index[id(t)] = i

    # ---- per step

    def on_forward(self, entry: TBERows, call: Call) -> None:
        """Forward hook (training): decay the rows of ``call`` before the fused update."""
        if not self.active:
            return
        lin = entry.linear(call)
        if lin.numel() == 0:
            return
        i = self._index[id(entry)]
        now = self.clock + self.inc
        # per id, repeats included (no ``unique``: a row's repeats get the same lambda and
        # the same pre-step weight, so each copy writes the same value)
        last = self.last[i].index_select(0, lin)
        interval = torch.where(last > 0, now - last, self.inc)
        w = entry.read_weights(lin)
        keep = interval.to(w.dtype).mul_(-self.alpha).add_(1.0).clamp_(min=0.0)  # 1 - min(1, alpha I)
        # (1 - lambda) * w_pre now; FBGEMM's fused backward then adds -lr g / (sqrt(G) + eps)
        entry.write_before_backward(lin, w.mul_(keep.unsqueeze(1)))
        self.last[i].index_fill_(0, lin, now)

    def end_step(self) -> None:
        self.clock += self.inc

    # ---- checkpoint

    def state_dict(self) -> dict[str, Any]:
        """``freq_decay.clock`` (replicated scalar) and ``freq_decay.last.<table>`` (the
        last-read clock per row, a 1-D ShardedTensor sharded like the table's rows);
        the shards are views of the live state, so DCP loads in place."""
        from torch.distributed._shard.metadata import ShardMetadata
        from torch.distributed._shard.sharded_tensor import Shard, ShardedTensor
        from torch.distributed._shard.sharded_tensor.metadata import (
            ShardedTensorMetadata,
            TensorProperties,
        )

        assert self._dmp is not None and self._touched is not None, "attach() first"
        out: dict[str, Any] = {CLOCK_KEY: torch.tensor(self.clock, dtype=torch.int64)}
        kernels = [k for k in embedding_kernels(self._dmp) if hasattr(k._emb_module, "hash_size_cumsum")]
        by_module = {id(k._emb_module): k for k in kernels}
        for i, entry in enumerate(self._touched.tbes):
            kernel = by_module[id(entry.module)]
            hsc = entry.hash_size_cumsum.tolist()
            tables: list[Any] = kernel.config.embedding_tables  # type: ignore[union-attr,assignment]  # nn.Module attribute
            for t, table in enumerate(tables):
                local = self.last[i][hsc[t] : hsc[t + 1]]
                gmeta = table.global_metadata
                shards_md = [
                    ShardMetadata(
                        shard_offsets=[m.shard_offsets[0]],
                        shard_sizes=[m.shard_sizes[0]],
                        placement=copy.deepcopy(m.placement),
                    )
                    for m in gmeta.shards_metadata
                ]
                lm = table.local_metadata
                mine = next(
                    s
                    for s in shards_md
                    if s.shard_offsets[0] == lm.shard_offsets[0] and s.shard_sizes[0] == lm.shard_sizes[0]
                )
                meta = ShardedTensorMetadata(
                    shards_metadata=shards_md,
                    size=torch.Size([gmeta.size[0]]),
                    tensor_properties=TensorProperties(dtype=torch.int64, requires_grad=False),
                )
                out[LAST_PREFIX + table.name] = ShardedTensor._init_from_local_shards_and_global_metadata(
                    [Shard(local[: lm.shard_sizes[0]], mine)],
                    meta,
                    process_group=dist.group.WORLD if dist.is_initialized() else None,
                )
        return out

    def loaded(self, sd: dict[str, Any]) -> None:
        """After DCP loaded ``sd`` (from :meth:`state_dict`) in place: take the clock."""
        self.clock = int(sd[CLOCK_KEY])

    def forget(self, tables: set[str] | None) -> None:
        """Rows drawn again (``embedding_reset``) count as never read: their last-read
        clocks go to 0 (all tables, or the named ones); the clock runs on."""
        if tables is None:
            for last in self.last:
                last.zero_()
            return
        assert self._dmp is not None and self._touched is not None, "attach() first"
        kernels = [k for k in embedding_kernels(self._dmp) if hasattr(k._emb_module, "hash_size_cumsum")]
        by_module = {id(k._emb_module): k for k in kernels}
        for i, entry in enumerate(self._touched.tbes):
            hsc = entry.hash_size_cumsum.tolist()
            names = [t.name for t in by_module[id(entry.module)].config.embedding_tables]  # type: ignore[union-attr]
            for j, name in enumerate(names):
                if name in tables:
                    self.last[i][hsc[j] : hsc[j + 1]].zero_()

    def reset(self) -> None:
        """Fresh state: every row unread, clock 0."""
        self.clock = 0
        for t in self.last:
            t.zero_()
