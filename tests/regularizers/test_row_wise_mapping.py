"""Row-wise sharding's index mapping for the touched-rows hooks, as pure logic on CPU
(issue 16.5). ROW_WISE / TABLE_ROW_WISE plans exist only on CUDA, so no CPU run ever
builds one; here the shard metadata comes from TorchRec's own row-wise layout
(``_calculate_rw_shard_sizes_and_offsets``) and the ids reach each rank through TorchRec's
own input bucketizer (``bucketize_kjt_before_all2all``, FBGEMM's block bucketize) exactly
as ``RwSparseFeaturesDist`` sends them: rebased to the shard. Each rank gets a real
FBGEMM TBE holding its shards with the forward hook of :class:`TouchedRows`; after a
step, the rows the hooks report, mapped back through the shard offsets, must be
exactly the global ids of the batch, and a post-step update must land on those rows."""

from __future__ import annotations

import torch
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation
from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
    ComputeDevice,
    SplitTableBatchedEmbeddingBagsCodegen,
)
from torchrec.distributed.embedding_sharding import bucketize_kjt_before_all2all
from torchrec.distributed.sharding_plan import _calculate_rw_shard_sizes_and_offsets
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from trainer.regularizers.touched import TBERows, TouchedRows

HASH = [10, 7]  # rows of the two tables: uneven splits over 3 ranks (4,4,2 and 3,3,1)
DIM = 4
WORLD = 3
B = 5


def _rank_tbe(rows: list[int]) -> tuple[SplitTableBatchedEmbeddingBagsCodegen, TouchedRows, TBERows]:
    m = SplitTableBatchedEmbeddingBagsCodegen(
        [(max(r, 1), DIM, EmbeddingLocation.HOST, ComputeDevice.CPU) for r in rows],
        optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD,
        learning_rate=0.1,
    )
    # TouchedRows' own hook and bookkeeping, on a TBE built here instead of found in a DMP
    tr = TouchedRows.__new__(TouchedRows)
    tr.tbes, tr.grad_hook, tr.forward_hook, tr._handles = [], None, None, []
    hsc = m.hash_size_cumsum.long()
    entry = TBERows(
        module=m,
        tables=m.split_embedding_weights(),
        states=[s[0] for s in m.split_optimizer_states()],
        flat=None,
        flat_state=None,
        hash_size_cumsum=hsc,
        feature_base=hsc[torch.as_tensor(m.feature_table_map)],
    )
    tr.tbes.append(entry)
    m.register_forward_hook(tr._hook(entry), with_kwargs=True)
    return m, tr, entry


def test_row_wise_touched_rows_map_back_to_the_global_ids():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(0, 4, (len(HASH) * B,), generator=g)
    ids = torch.cat([torch.randint(0, HASH[f], (int(n),), generator=g) for f, n in _per_feature(lengths)])
    kjt = KeyedJaggedTensor(keys=["a", "b"], values=ids, lengths=lengths)
    # TorchRec's row-wise layout: shard sizes / row offsets per rank, per table
    sizes, offsets = zip(*(_calculate_rw_shard_sizes_and_offsets(h, WORLD, DIM) for h in HASH), strict=True)
    row_off = [[o[0] for o in per_table] for per_table in offsets]  # [table][rank]
    rows = [[s[0] for s in per_table] for per_table in sizes]
    assert rows == [[4, 4, 2], [3, 3, 1]]
    block = torch.tensor([(h + WORLD - 1) // WORLD for h in HASH])
    bucketed, _ = bucketize_kjt_before_all2all(kjt, num_buckets=WORLD, block_sizes=block)
    b_len = bucketed.lengths().view(WORLD, len(HASH), B)
    b_vals = bucketed.values().split(b_len.sum(dim=(1, 2)).tolist())

    # weights of each table assembled from the shards, for the check
    touched_global: list[set[int]] = [set() for _ in HASH]
    after_parts: list[list[torch.Tensor]] = [[] for _ in HASH]
    before_parts: list[list[torch.Tensor]] = [[] for _ in HASH]
    for r in range(WORLD):
        m, tr, entry = _rank_tbe([rows[t][r] for t in range(len(HASH))])
        for t, w in enumerate(entry.tables):
            with torch.no_grad():
                w.copy_(torch.arange(w.numel(), dtype=w.dtype).view_as(w) + 1000 * (r + 1) + 100 * t)
            before_parts[t].append(w[: rows[t][r]].clone())
        local_lengths = b_len[r].reshape(-1)
        off = torch.cat([torch.zeros(1, dtype=torch.long), local_lengths.cumsum(0)])
        m.train()
        m(b_vals[r].long(), off)  # the hook keeps this call's (local) indices
        # linear ids the hook reports -> (table, local row) -> global row via the shard offset
        for lin in entry.unique_rows().tolist():
            t = int(torch.searchsorted(entry.hash_size_cumsum, torch.tensor(lin), right=True)) - 1
            local = lin - int(entry.hash_size_cumsum[t])
            assert local < rows[t][r], "a row-wise shard got an id outside its rows"
            touched_global[t].add(row_off[t][r] + local)
        n_local = int(entry.unique_rows().numel())
        assert tr.finish(lambda w: w * 0 - 1.0) == n_local  # post-step update: mark the touched rows
        for t, w in enumerate(entry.tables):
            after_parts[t].append(w[: rows[t][r]].clone())

    want = [set() for _ in HASH]
    for (f, _n), chunk in zip(_per_feature(lengths), ids.split(_lengths_per_feature(lengths)), strict=True):
        want[f] |= set(chunk.tolist())
    assert touched_global == want
    for t in range(len(HASH)):
        before, after = torch.cat(before_parts[t]), torch.cat(after_parts[t])
        assert before.shape[0] == HASH[t]
        marked = {i for i in range(HASH[t]) if bool((after[i] == -1.0).all())}
        assert marked == want[t], f"table {t}: the update landed on {marked}, the batch read {want[t]}"
        untouched = [i for i in range(HASH[t]) if i not in want[t]]
        assert torch.equal(after[untouched], before[untouched])


def _per_feature(lengths: torch.Tensor):
    per = lengths.view(len(HASH), B).sum(1)
    return [(f, int(n)) for f, n in enumerate(per)]


def _lengths_per_feature(lengths: torch.Tensor) -> list[int]:
    return lengths.view(len(HASH), B).sum(1).tolist()


def test_freq_decay_on_row_wise_shards_decays_the_global_rows_by_their_intervals():
    """freq_decay's forward hook on row-wise shards (ids rebased by TorchRec's bucketizer):
    three steps (batches A, B, A) with learning rate 0, so each read row is only scaled,
    by 1 - alpha * I; after the third step every global row of A has the factor of
    its own interval (1 if B read it too, else 2), all other rows none."""
    from trainer.regularizers.freq_decay import FreqDecay
    from trainer.spec import FreqDecay as FreqDecaySpec

    alpha = 0.1
    g = torch.Generator().manual_seed(1)

    def batch(lo: int, hi: int) -> KeyedJaggedTensor:
        """ids of table f drawn from [lo, HASH[f] - hi)."""
        lengths = torch.randint(1, 4, (len(HASH) * B,), generator=g)
        ids = torch.cat(
            [torch.randint(lo, HASH[f] - hi, (int(n),), generator=g) for f, n in _per_feature(lengths)]
        )
        return KeyedJaggedTensor(keys=["a", "b"], values=ids, lengths=lengths)

    # A reads the low rows, B the high ones (overlapping); the last row of each table: neither
    a, b = batch(0, 3), batch(2, 1)
    sizes, offsets = zip(*(_calculate_rw_shard_sizes_and_offsets(h, WORLD, DIM) for h in HASH), strict=True)
    rows = [[s[0] for s in per_table] for per_table in sizes]
    row_off = [[o[0] for o in per_table] for per_table in offsets]
    block = torch.tensor([(h + WORLD - 1) // WORLD for h in HASH])
    ranks = []
    for r in range(WORLD):
        m, tr, entry = _rank_tbe([rows[t][r] for t in range(len(HASH))])
        m.learning_rate_tensor.fill_(0.0)  # no AdaGrad step: the rows only decay
        fd = FreqDecay(FreqDecaySpec(type="freq_decay", alpha=alpha))
        fd.attach(m, tr, examples_per_step=1)
        tr.forward_hook = fd.on_forward
        for w in entry.tables:
            with torch.no_grad():
                w.uniform_(0.5, 1.5, generator=g)
        ranks.append((m, tr, entry, fd))
    before = [
        [e.tables[t][: rows[t][r]].clone() for r, (_, _, e, _) in enumerate(ranks)] for t in range(len(HASH))
    ]
    for kjt in (a, b, a):
        bucketed, _ = bucketize_kjt_before_all2all(kjt, num_buckets=WORLD, block_sizes=block)
        b_len = bucketed.lengths().view(WORLD, len(HASH), B)
        b_vals = bucketed.values().split(b_len.sum(dim=(1, 2)).tolist())
        for r, (m, tr, _, fd) in enumerate(ranks):
            local = b_len[r].reshape(-1)
            off = torch.cat([torch.zeros(1, dtype=torch.long), local.cumsum(0)])
            m.train()
            m(b_vals[r].long(), off).sum().backward()
            tr.finish(None)
            fd.end_step()
    for t, key in enumerate(["a", "b"]):
        in_a = set(a[key].values().tolist())
        in_b = set(b[key].values().tolist())
        full_before = torch.cat(before[t])
        full_after = torch.cat([e.tables[t][: rows[t][r]] for r, (_, _, e, _) in enumerate(ranks)])
        assert sum(rows[t]) == HASH[t] and row_off[t][0] == 0
        for i in range(HASH[t]):
            # the factor over the 3 steps, each read scaling the row by 1 - alpha * interval
            f = 1.0
            if i in in_a:
                f *= 1 - alpha  # step 1: first read, one step
            if i in in_b:
                f *= 1 - alpha  # step 2: one step since A, or a first read
            if i in in_a:
                f *= 1 - alpha * (1 if i in in_b else 2)  # step 3
            torch.testing.assert_close(full_after[i], full_before[i] * f, rtol=1e-6, atol=0)
        # every case happened: A only (interval 2 at step 3), both, B only, neither
        assert in_a - in_b and in_a & in_b and in_b - in_a and set(range(HASH[t])) - in_a - in_b, (in_a, in_b)
