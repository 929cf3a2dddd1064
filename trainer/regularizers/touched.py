"""The embedding rows each training step touched, per FBGEMM TBE, on this rank.

With the fused optimizer the embedding gradient never exists as a tensor: FBGEMM
updates, inside backward, exactly the rows its forward read. A forward hook on
every :class:`SplitTableBatchedEmbeddingBagsCodegen` of the sharded model keeps the
``indices`` / ``offsets`` it was called with (training mode only; references, no
copy). These are *local* rows of the TBE's own tables (after the input all-to-all:
table-wise shards see every rank's ids of their tables, row-wise shards ids already
rebased to the shard), concatenated feature by feature. ``hash_size_cumsum`` and
``feature_table_map`` turn them into one linear row id per TBE; ``torch.unique``
dedups them, and post-step regularizers read and write just those rows of the
TBE's weights in place. Cost is O(ids in the batch), never O(table size).

A ``ForwardRowHook`` (``freq_decay``) runs right after each training forward of a
TBE, when its output is computed and its fused update (in backward) not yet done.
A ``GradRowHook`` (the exact ``sparse_l2`` fallback, see :mod:`.sparse_l2`) also
sees the gradient of the TBE's pooled output, during backward and *before* FBGEMM's
fused update of that TBE; it may leave row values to write after the step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from fbgemm_gpu.split_table_batched_embeddings_ops_training import SplitTableBatchedEmbeddingBagsCodegen

from trainer.errors import RectrainError

RowFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Call:
    """One training forward of a TBE."""

    indices: torch.Tensor
    offsets: torch.Tensor
    per_sample_weights: torch.Tensor | None
    bspr: list[list[int]] | None  # VBE batch size per feature per rank


@dataclass
class TBERows:
    """One TBE: views on its weights / row-wise AdaGrad state and this step's calls."""

    module: SplitTableBatchedEmbeddingBagsCodegen
    tables: list[torch.Tensor]  # per-table [rows, D] views on the live weights
    states: list[torch.Tensor]  # per-table [rows] views on the live row-wise AdaGrad state
    flat: torch.Tensor | None  # [sum rows, D] view over all tables when they are adjacent
    flat_state: torch.Tensor | None  # [sum rows] likewise
    hash_size_cumsum: torch.Tensor  # [T + 1] row offset of each table in the linear id space
    feature_base: torch.Tensor  # [F] hash_size_cumsum of each feature's table
    calls: list[Call] = field(default_factory=list)
    # rows computed during backward, written after the step: (rows, weights, state)
    pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)

    # ---- linear row ids

    def linear(self, call: Call) -> torch.Tensor:
        """Linear row id (table offset + local row) of every index of ``call``."""
        indices = call.indices
        if indices.numel() == 0:
            return indices.long()
        base = self.feature_base.repeat_interleave(self.ids_per_feature(call), output_size=indices.numel())
        return indices.long() + base

    def ids_per_feature(self, call: Call) -> torch.Tensor:
        offsets = call.offsets
        num_features = self.feature_base.numel()
        if call.bspr is None:  # fixed batch size: offsets has num_features * B + 1 entries
            b = (offsets.numel() - 1) // num_features
            bounds = offsets[::b] if b > 0 else offsets[:1].repeat(num_features + 1)
        else:  # variable batch size per feature (VBE)
            per_feature = [sum(r) for r in call.bspr]
            starts = torch.tensor([0, *per_feature], device=offsets.device).cumsum(0)
            bounds = offsets[starts]
        return (bounds[1:] - bounds[:-1]).long()

    def unique_rows(self) -> torch.Tensor:
        """Sorted unique linear row ids read by this step's calls."""
        parts = [self.linear(c) for c in self.calls]
        parts = [p for p in parts if p.numel()]
        if not parts:
            return torch.empty(0, dtype=torch.long, device=self.hash_size_cumsum.device)
        return torch.unique(torch.cat(parts) if len(parts) > 1 else parts[0])

    # ---- row access (rows: sorted unique linear ids)

    def _per_table(self, rows: torch.Tensor):
        table = torch.searchsorted(self.hash_size_cumsum, rows, right=True) - 1
        for t in range(len(self.tables)):
            sel = (table == t).nonzero().squeeze(1)
            if sel.numel():
                yield t, sel, rows[sel] - self.hash_size_cumsum[t]

    def read(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights [n, D], row-wise AdaGrad state [n]) of ``rows`` (copies)."""
        if self.flat is not None and self.flat_state is not None:
            return self.flat.index_select(0, rows), self.flat_state.index_select(0, rows)
        d = self.tables[0].shape[1]
        w = torch.empty(rows.numel(), d, dtype=self.tables[0].dtype, device=rows.device)
        s = torch.empty(rows.numel(), dtype=self.states[0].dtype, device=rows.device)
        for t, sel, local in self._per_table(rows):
            w[sel] = self.tables[t].index_select(0, local)
            s[sel] = self.states[t].index_select(0, local)
        return w, s

    def read_weights(self, rows: torch.Tensor) -> torch.Tensor:
        """Weights [n, D] of ``rows`` (a copy)."""
        if self.flat is not None:
            return self.flat.index_select(0, rows)
        w = torch.empty(rows.numel(), self.tables[0].shape[1], dtype=self.tables[0].dtype, device=rows.device)
        for t, sel, local in self._per_table(rows):
            w[sel] = self.tables[t].index_select(0, local)
        return w

    def write_before_backward(self, rows: torch.Tensor, w: torch.Tensor) -> None:
        """``w[rows] = w`` between the TBE's forward and its fused backward (``rows`` may
        repeat with equal values). FBGEMM's autograd function saved the weights for
        its backward, which *updates* them in place (it reads them for nothing else
        unless per-sample weights need a gradient, which rectrain never asks for), so
        the write goes through ``.data``: the saved tensor's version counter, which
        would otherwise refuse the backward, is left as is."""
        with torch.no_grad():
            if self.flat is not None:
                self.flat.data.index_copy_(0, rows, w)
                return
            for t, sel, local in self._per_table(rows):
                self.tables[t].data.index_copy_(0, local, w[sel])

    def write(self, rows: torch.Tensor, w: torch.Tensor | None, state: torch.Tensor | None = None) -> None:
        with torch.no_grad():
            if self.flat is not None and (state is None or self.flat_state is not None):
                if w is not None:
                    self.flat.index_copy_(0, rows, w)
                if state is not None:
                    self.flat_state.index_copy_(0, rows, state)  # type: ignore[union-attr]
                return
            for t, sel, local in self._per_table(rows):
                if w is not None:
                    self.tables[t].index_copy_(0, local, w[sel])
                if state is not None:
                    self.states[t].index_copy_(0, local, state[sel])

    def apply(self, rows: torch.Tensor, fn: RowFn) -> None:
        """``w[r] <- fn(w[r])`` for the linear row ids ``rows``, in place."""
        if rows.numel() == 0:
            return
        with torch.no_grad():
            if self.flat is not None:
                self.flat.index_copy_(0, rows, fn(self.flat.index_select(0, rows)))
                return
            for t, _sel, local in self._per_table(rows):
                w = self.tables[t]
                w.index_copy_(0, local, fn(w.index_select(0, local)))


class GradRowHook(Protocol):
    def __call__(self, entry: TBERows, call: Call, grad_output: torch.Tensor) -> None: ...


ForwardRowHook = Callable[[TBERows, Call], None]


def _adjacent_view(parts: list[torch.Tensor]) -> torch.Tensor | None:
    """One view spanning every per-table tensor when they share the trailing shape
    and lie back to back in one storage (the usual layout of weights_host/dev)."""
    if not parts or len({tuple(p.shape[1:]) for p in parts}) != 1:
        return None
    first = parts[0]
    inner = math.prod(first.shape[1:])
    pos = first.data_ptr()
    for p in parts:
        if (
            not p.is_contiguous()
            or p.data_ptr() != pos
            or p.untyped_storage().data_ptr() != first.untyped_storage().data_ptr()
        ):
            return None
        pos += p.shape[0] * inner * first.element_size()
    total = sum(p.shape[0] for p in parts)
    stride = (inner, 1) if first.dim() == 2 else (1,)
    return first.as_strided((total, *first.shape[1:]), stride)


def embedding_kernels(dmp: torch.nn.Module) -> list[torch.nn.Module]:
    """TorchRec's per-group embedding kernels (``BatchedFusedEmbeddingBag`` & co., each
    with ``config`` and ``_emb_module``) of every sharded module in ``dmp``. The
    sharded EBC keeps its lookups outside ``named_modules()``, hence the walk."""
    out: list[torch.nn.Module] = []
    seen: set[int] = set()
    for mod in dmp.modules():
        for lookup in getattr(mod, "_lookups", None) or []:
            lookup = getattr(lookup, "module", lookup)  # DDP-wrapped data-parallel lookups
            for kernel in getattr(lookup, "_emb_modules", None) or []:
                if id(kernel) not in seen and hasattr(kernel, "_emb_module"):
                    seen.add(id(kernel))
                    out.append(kernel)
    return out


def find_tbes(dmp: torch.nn.Module) -> list[SplitTableBatchedEmbeddingBagsCodegen]:
    """Every fused FBGEMM TBE (the module whose forward gets the local indices)."""
    return [
        k._emb_module
        for k in embedding_kernels(dmp)
        if isinstance(k._emb_module, SplitTableBatchedEmbeddingBagsCodegen)
    ]


class TouchedRows:
    """Forward hooks on every fused TBE of ``dmp``; see the module docstring."""

    def __init__(
        self,
        dmp: torch.nn.Module,
        grad_hook: GradRowHook | None = None,
        forward_hook: ForwardRowHook | None = None,
    ) -> None:
        self.tbes: list[TBERows] = []
        self.grad_hook = grad_hook
        # ``freq_decay``: runs after the TBE's forward, before its fused backward update
        self.forward_hook = forward_hook
        self._handles = []
        others = [
            type(k._emb_module).__name__
            for k in embedding_kernels(dmp)
            if not isinstance(k._emb_module, SplitTableBatchedEmbeddingBagsCodegen)
        ]
        for m in find_tbes(dmp):
            if getattr(m, "lxu_cache_weights", torch.empty(0)).numel() > 0:
                raise RectrainError(
                    "regularizers: row-level sparse regularizers need the embedding weights in HBM or "
                    "host memory; this plan uses FBGEMM's UVM cache for a table"
                )
            if str(m.weights_precision).split(".")[-1].upper() != "FP32":
                raise RectrainError("regularizers: row-level sparse regularizers need fp32 embedding weights")
            tables = m.split_embedding_weights()
            states = [s[0] for s in m.split_optimizer_states()]
            hsc = m.hash_size_cumsum.long()
            ftm = torch.as_tensor(m.feature_table_map, dtype=torch.long, device=hsc.device)
            entry = TBERows(
                module=m,
                tables=tables,
                states=states,
                flat=_adjacent_view(tables),
                flat_state=_adjacent_view(states),
                hash_size_cumsum=hsc,
                feature_base=hsc[ftm],
            )
            self.tbes.append(entry)
            self._handles.append(m.register_forward_hook(self._hook(entry), with_kwargs=True))
        if others or not self.tbes:
            raise RectrainError(
                "regularizers: row-level sparse regularizers need every embedding table on "
                f"FBGEMM's fused TBE kernel; found {others or 'none'}"
            )

    def _hook(self, entry: TBERows):
        def forward_hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
            if not module.training:
                return

            def arg(name: str, pos: int):
                return kwargs[name] if name in kwargs else (args[pos] if len(args) > pos else None)

            call = Call(
                arg("indices", 0),
                arg("offsets", 1),
                arg("per_sample_weights", 2),
                kwargs.get("batch_size_per_feature_per_rank"),
            )
            entry.calls.append(call)
            if self.forward_hook is not None:
                self.forward_hook(entry, call)
            if self.grad_hook is not None and isinstance(output, torch.Tensor) and output.requires_grad:
                hook = self.grad_hook
                output.register_hook(lambda g: hook(entry, call, g))

        return forward_hook

    def finish(self, fn: RowFn | None) -> int:
        """After the step: write rows left by the grad hook, then apply ``fn`` to every
        row touched since the last call (if ``fn``); return how many rows."""
        n = 0
        for t in self.tbes:
            rows = None
            for rows_p, w, s in t.pending:
                t.write(rows_p, w, s)
                rows = rows_p if rows is None else torch.unique(torch.cat([rows, rows_p]))
            if fn is not None:
                if rows is None or len(t.pending) != len(t.calls):
                    rows = t.unique_rows()
                t.apply(rows, fn)
            n += 0 if rows is None else int(rows.numel())
            t.calls.clear()
            t.pending.clear()
        return n

    def clear(self) -> None:
        for t in self.tbes:
            t.calls.clear()
            t.pending.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
