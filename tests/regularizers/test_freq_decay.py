"""``freq_decay`` (AdagradAR's frequency-aware decoupled decay) against a plain PyTorch
loop, on a real 2-process gloo world (tests/regularizers/two_rank_worker.py: TorchRec
DMP, FBGEMM fused row-wise AdaGrad, the 4 tables sharded table-wise over both ranks):

- 20 steps over two passes (rows come back: intervals of 1 to 20 steps, some capped
  at lambda = 1) end within 1e-6 of a float64 reference that trains the same DLRM on
  both ranks' batches by hand (the gradient of the mean of the two ranks' losses,
  SGD for the dense part, row-wise AdaGrad written out, the decay on the pre-step
  rows), and the per-row last-read clock equals the reference's;
- the state is checkpointed with DCP: resumed at 1 worker (2 -> 1, resharded) every
  row's last-read clock and the clock come back; a warm start restores them too,
  and ``reset_optimizer`` starts them afresh;
- in process: nothing decays and no read is counted while the embeddings are frozen;
  with ``interval: examples`` the clock advances by the global batch.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from reg_helpers import (
    EPS,
    LR,
    RefEBC,
    assert_rows,
    make_spec,
    momenta,
    reference_grads,
    rows_of,
    rowwise_adagrad,
    snapshot,
    spec_dict,
    tbe_tables,
)
from two_rank_worker import assemble, freq_state

from trainer.data.dataset import RankData
from trainer.loop import LocalSession, Trainer
from trainer.model.dlrm import DLRM
from trainer.spec import parse_spec

STEPS = 20
ALPHA = 0.03
DENSE_LR = 0.05  # spec_dict's SGD


def _two_rank_dict() -> dict:
    return spec_dict(
        [{"type": "freq_decay", "alpha": ALPHA}],
        data={"synthetic": {"examples_per_day": 1280}, "test_days": []},
        scaling={"num_workers": 2},
    )


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict:
    """Both ranks' dumps of one 2-process run of STEPS steps, and its checkpoint."""
    import torch.multiprocessing as mp
    from two_rank_worker import run_rank

    from tests.net import free_port

    out = tmp_path_factory.mktemp("freq_decay_2")
    ckpt, dump = out / "ckpt", out / "dump"
    dump.mkdir()
    mp.start_processes(
        run_rank,
        args=(2, free_port(), _two_rank_dict(), STEPS, str(ckpt), str(dump)),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    ranks = [torch.load(dump / f"rank_{r}.pt", weights_only=False) for r in range(2)]
    return {"ranks": ranks, "ckpt": ckpt}


def _passes(data: RankData):
    """A rank's training batches, pass after pass (as the worker reads them)."""
    p = 0
    while True:
        yield from data.train_batches(p)
        p += 1


def _reference(spec, init_tables, init_dense, world: int, steps: int, alpha: float = ALPHA):
    """Plain float64 PyTorch: the same DLRM on every rank's batches, by hand; returns
    (tables, last-read step per row, every interval seen)."""
    model = DLRM(spec, dense_dropout=0.0)
    model.ebc = RefEBC({k: v.double() for k, v in init_tables.items()})
    model.double()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in init_dense:
                p.copy_(init_dense[n])
    model.train()
    w = model.ebc.w
    G = {k: torch.zeros(v.shape[0], dtype=torch.float64) for k, v in w.items()}
    last = {k: torch.zeros(v.shape[0], dtype=torch.int64) for k, v in w.items()}
    data = [RankData(spec, r, world) for r in range(world)]
    streams = [_passes(d) for d in data]
    dense = [p for n, p in model.named_parameters() if n in init_dense]
    seen: list[torch.Tensor] = []
    for t in range(1, steps + 1):
        batches = [next(s) for s in streams]
        for p in [*model.parameters(), *w.values()]:  # RefEBC's tables are not module parameters
            p.grad = None
        # the gradient of the mean of the ranks' losses (dense and embeddings alike)
        losses = []
        for b in batches:
            logits = model(b.dense.double(), b.sparse)
            wt = None if b.weights is None else b.weights.double()
            losses.append(F.binary_cross_entropy_with_logits(logits, b.labels.double(), weight=wt))
        (sum(losses) / world).backward()
        with torch.no_grad():
            for p in dense:
                p -= DENSE_LR * p.grad
            for k, table in w.items():
                rows = torch.unique(torch.cat([b.sparse[k].values().long() for b in batches]))
                g = table.grad[rows]
                G[k][rows] += (g * g).mean(dim=1)
                interval = torch.where(last[k][rows] > 0, t - last[k][rows], 1)
                seen.append(interval)
                lam = (alpha * interval.double()).clamp(max=1.0).unsqueeze(1)
                step = (LR / (G[k][rows].sqrt() + EPS)).unsqueeze(1) * g
                table[rows] = (1 - lam) * table[rows] - step
                last[k][rows] = t
    return {k: v.detach() for k, v in w.items()}, last, torch.cat(seen)


@pytest.mark.slow
def test_freq_decay_matches_a_plain_pytorch_loop_on_two_ranks(two_ranks):
    ranks = two_ranks["ranks"]
    spec = parse_spec(_two_rank_dict())
    assert all(r["tables"] for r in ranks), "one rank holds no table: sharding was not exercised"
    init = assemble([r["init"]["tables"] for r in ranks])
    final = assemble([r["tables"] for r in ranks])
    want, want_last, intervals = _reference(spec, init, ranks[0]["init"]["dense"], 2, STEPS)
    assert final.keys() == want.keys() and len(final) == 4
    worst = max(float((final[k].double() - want[k]).abs().max()) for k in want)
    assert worst <= 1e-6, worst
    last = assemble([r["last"] for r in ranks])
    assert {r["clock"] for r in ranks} == {STEPS}
    for k in want_last:
        assert torch.equal(last[k], want_last[k]), k
    # rows came back after gaps of many lengths, and the decay mattered: the same loop
    # without it ends far from the trainer (the comparison can fail)
    assert int((intervals > 1).sum()) > 100 and int(intervals.max()) >= 10, intervals.unique()
    plain, _, _ = _reference(spec, init, ranks[0]["init"]["dense"], 2, STEPS, alpha=0.0)
    assert max(float((final[k].double() - plain[k]).abs().max()) for k in want) > 1e-2


@pytest.mark.slow
def test_freq_decay_state_reshards_and_comes_back_on_resume_and_warm_start(two_ranks, tmp_path):
    from tests.trainer.reshard_worker import DirSession

    ranks, ckpt = two_ranks["ranks"], two_ranks["ckpt"]
    want = assemble([r["last"] for r in ranks])
    one = spec_dict([{"type": "freq_decay", "alpha": ALPHA}], data={"synthetic": {"examples_per_day": 1280}})
    LocalSession(tmp_path)  # this process: a gloo world of 1
    # resume 2 -> 1: DCP reshards the per-row state onto this rank's whole tables
    t = Trainer(parse_spec(one), DirSession(0, 1, str(ckpt), str(tmp_path / "x")), tmp_path)
    t._resume()
    clock, got = freq_state(t)
    assert clock == STEPS
    got = assemble([got])
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    # warm start from that checkpoint: the state too; with reset_optimizer: fresh
    for reset, expect_clock in ((False, STEPS), (True, 0)):
        init = {"checkpoint": str(ckpt), "reset_optimizer": reset}
        d = spec_dict(
            [{"type": "freq_decay", "alpha": ALPHA}],
            data={"synthetic": {"examples_per_day": 1280}},
            training={"init_from": init},
        )
        w = Trainer(parse_spec(d), LocalSession(tmp_path / f"w{reset}"), tmp_path / f"w{reset}")
        w._resume()
        clock, got = freq_state(w)
        got = assemble([got])
        assert clock == expect_clock
        for k in want:
            assert torch.equal(got[k], torch.zeros_like(want[k]) if reset else want[k]), (reset, k)


def test_freq_decay_is_off_while_frozen_and_counts_examples(make_trainer):
    # frozen embeddings (pass 1): bit-identical rows, no read recorded, the clock runs on
    tr = make_trainer(
        [{"type": "freq_decay", "alpha": 0.5}, {"type": "freeze", "from_pass": 1, "what": "embeddings"}]
    )
    tr.regs.on_pass_start(1, tr.dmp, tr.dense_opt)
    before = snapshot(tr.dmp)
    b = next(iter(tr.data.train_batches(1)))
    tr.train_step(b)
    assert all(torch.equal(before[k], w) for k, (w, _) in tbe_tables(tr.dmp).items())
    assert tr.regs.freq_decay is not None
    assert tr.regs.freq_decay.clock == 1 and all(int(x.sum()) == 0 for x in tr.regs.freq_decay.last)
    # interval in examples: the clock advances by batch_size x workers (64 here); step 3's
    # update of each row it reads is (1 - lambda) w - lr g / (sqrt(G) + eps) with
    # lambda = min(1, alpha x examples since the row's last read), one step's 64 if never
    alpha = 4e-3
    tr2 = make_trainer([{"type": "freq_decay", "alpha": alpha, "interval": "examples"}])
    fd = tr2.regs.freq_decay
    assert fd is not None
    b0, b1, b2 = list(tr2.data.train_batches(0))[:3]
    tr2.train_step(b0)
    tr2.train_step(b1)
    assert fd.clock == 128
    w_pre, G_pre = snapshot(tr2.dmp), momenta(tr2.dmp)
    grads, _ = reference_grads(tr2, b2)
    tr2.train_step(b2)
    assert fd.clock == 192
    lams = set()
    for key, (w, G) in tbe_tables(tr2.dmp).items():
        rows = rows_of(b2, key)
        seen0, seen1 = set(b0.sparse[key].values().tolist()), set(b1.sparse[key].values().tolist())
        gap = torch.tensor([64 if r in seen1 else 128 if r in seen0 else 64 for r in rows.tolist()])
        lam = (alpha * gap.double()).clamp(max=1.0)
        lams |= set(lam.tolist())
        want_w, want_G = rowwise_adagrad(w_pre[key][rows], grads[key][rows], G_pre[key][rows], lr=LR)
        want_w = want_w - lam.unsqueeze(1) * w_pre[key][rows].double()
        assert_rows(G[rows], want_G)
        assert_rows(w[rows], want_w)
    assert lams == {alpha * 64, alpha * 128}, lams


def test_freq_decay_spec_refuses_bad_parameters():
    from trainer.errors import SpecError

    for bad, field in (
        ({"alpha": 0}, "alpha"),
        ({"alpha": 2.0}, "alpha"),
        ({"alpha": 0.1, "interval": "epochs"}, "interval"),
    ):
        with pytest.raises(SpecError, match=f"regularizers.0.{field}"):
            make_spec([{"type": "freq_decay", **bad}])
