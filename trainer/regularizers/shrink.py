"""``shrink``: embedding shrinkage of the rows read in the current pass.

Which rows: every row that training forwards of the current pass have read so far
(count c >= 1 of its id in the step inputs, after the id rewrites ``sse_graph`` /
``sparse_dropout`` / ``sse_se``, summed over all workers), and with ``max_count`` K
only those with c < K. Rows not read in the pass are never touched.

When: after the step (and its post-step maps) that is the ``every_steps``-th,
2·``every_steps``-th, ... step of the pass, and after the pass's last step when
``at_pass_end`` (once if both fall on the same step); the counts restart at 0 at the
start of every pass. Never while the sparse learning rate is 0 (``freeze``).

What: ``w <- (1 - s) * w``; the row-wise AdaGrad accumulator is left as is, or set
to 0 with ``reset_state``.

Counting is exact under sharding without any collective: the forward hook of
:mod:`.touched` sees each TBE's indices *after* TorchRec's input all-to-all, so the
rank that owns a row (table-wise or row-wise) counts the reads of that row by every
rank, and shrinks it itself. Counts are one int32 per row of the local shards
(like the AdaGrad state), updated in O(ids) per step; an event scans them (O(rows
of the local shards)), so ``every_steps`` should be large. The counts are not
checkpointed: after resuming inside a pass they restart at the resume point.
"""

from __future__ import annotations

import torch

from trainer.regularizers.touched import TouchedRows
from trainer.spec import Shrink


class RowShrink:
    def __init__(self, cfg: Shrink) -> None:
        self.cfg = cfg
        self.counts: list[torch.Tensor] = []  # per TBE of ``touched``: int32 [sum rows]

    def _ensure(self, touched: TouchedRows) -> None:
        if not self.counts:
            for t in touched.tbes:
                n = int(t.hash_size_cumsum[-1])
                self.counts.append(torch.zeros(n, dtype=torch.int32, device=t.hash_size_cumsum.device))

    def count(self, touched: TouchedRows) -> None:
        """Add this step's reads (call before ``touched.finish`` clears them)."""
        self._ensure(touched)
        for t, c in zip(touched.tbes, self.counts, strict=True):
            for call in t.calls:
                lin = t.linear(call)
                if lin.numel():
                    c.index_put_((lin,), torch.ones_like(lin, dtype=c.dtype), accumulate=True)

    def reset(self) -> None:
        for c in self.counts:
            c.zero_()

    def due(self, step_in_pass: int, steps_per_pass: int) -> bool:
        """Is there an event after step ``step_in_pass`` (1-based) of the pass?"""
        every = self.cfg.every_steps
        return (every is not None and step_in_pass % every == 0) or (
            self.cfg.at_pass_end and step_in_pass == steps_per_pass
        )

    def rows(self, i: int) -> torch.Tensor:
        """Linear row ids of TBE ``i`` that this event shrinks."""
        c = self.counts[i]
        sel = c > 0
        if self.cfg.max_count is not None:
            sel &= c < self.cfg.max_count
        return sel.nonzero().squeeze(1)

    def apply(self, touched: TouchedRows) -> int:
        """Shrink the selected rows of every TBE; return how many."""
        self._ensure(touched)
        factor = 1.0 - self.cfg.s
        n = 0
        for i, t in enumerate(touched.tbes):
            rows = self.rows(i)
            if rows.numel() == 0:
                continue
            t.apply(rows, lambda w: w * factor)
            if self.cfg.reset_state:
                _, state = t.read(rows)
                t.write(rows, None, torch.zeros_like(state))
            n += int(rows.numel())
        return n
