"""``freq_decay`` (AdagradAR's frequency-aware decoupled decay) against a plain PyTorch
loop, on a real 2-process gloo world (tests/regularizers/two_rank_worker.py: TorchRec
DMP, FBGEMM fused row-wise AdaGrad, the 4 tables sharded table-wise over both ranks):

- 20 steps over two passes (rows come back after intervals of 1 to 20 steps) end
  within 1e-6 of a float64 reference that trains the same DLRM on both ranks'
  batches by hand (reg_helpers.two_rank_reference) (the gradient of the mean of the two ranks' losses,
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
from reg_helpers import (
    EPS,
    HASH,
    LR,
    assert_rows,
    make_spec,
    momenta,
    reference_grads,
    rows_of,
    rowwise_adagrad,
    snapshot,
    spec_dict,
    tbe_tables,
    two_rank_reference,
)
from two_rank_worker import assemble, freq_state

from trainer.loop import LocalSession, Trainer
from trainer.regularizers.touched import embedding_kernels
from trainer.spec import parse_spec

STEPS = 20  # the two_rank_runs fixture's steps (tests/regularizers/conftest.py)
ALPHA = 0.03  # its freq_decay job's alpha


def _freq_decay_update(alpha: float):
    """The reference's row update: row-wise AdaGrad, decay of the pre-step rows."""
    G: dict[str, torch.Tensor] = {}
    last: dict[str, torch.Tensor] = {}
    seen: list[torch.Tensor] = []

    def update(k, rows, w, g, t):
        G.setdefault(k, torch.zeros(HASH, dtype=torch.float64))
        last.setdefault(k, torch.zeros(HASH, dtype=torch.int64))
        G[k][rows] += (g * g).mean(dim=1)
        interval = torch.where(last[k][rows] > 0, t - last[k][rows], 1)
        seen.append(interval)
        lam = (alpha * interval.double()).clamp(max=1.0).unsqueeze(1)
        last[k][rows] = t
        return (1 - lam) * w - (LR / (G[k][rows].sqrt() + EPS)).unsqueeze(1) * g

    return update, last, seen


@pytest.mark.slow
def test_freq_decay_matches_a_plain_pytorch_loop_on_two_ranks(two_rank_runs):
    run = two_rank_runs["freq_decay"]
    ranks, spec = run["ranks"], parse_spec(run["spec"])
    assert all(r["tables"] for r in ranks), "one rank holds no table: sharding was not exercised"
    init = assemble([r["init"]["tables"] for r in ranks])
    final = assemble([r["tables"] for r in ranks])
    update, want_last, seen = _freq_decay_update(ALPHA)
    want = two_rank_reference(spec, init, ranks[0]["init"]["dense"], 2, STEPS, update)
    assert final.keys() == want.keys() and len(final) == 4
    worst = max(float((final[k].double() - want[k]).abs().max()) for k in want)
    assert worst <= 1e-6, worst
    last = assemble([r["last"] for r in ranks])
    assert {r["clock"] for r in ranks} == {STEPS}
    for k in want_last:
        assert torch.equal(last[k], want_last[k]), k
    # rows came back after gaps of many lengths, and the decay mattered: the same loop
    # without it ends far from the trainer (the comparison can fail)
    intervals = torch.cat(seen)
    assert int((intervals > 1).sum()) > 100 and int(intervals.max()) >= 10, intervals.unique()
    plain_update, _, _ = _freq_decay_update(0.0)
    plain = two_rank_reference(spec, init, ranks[0]["init"]["dense"], 2, STEPS, plain_update)
    assert max(float((final[k].double() - plain[k]).abs().max()) for k in want) > 1e-2


@pytest.mark.slow
def test_freq_decay_state_reshards_and_comes_back_on_resume_and_warm_start(two_rank_runs, tmp_path):
    from tests.trainer.reshard_worker import DirSession

    ranks, ckpt = two_rank_runs["freq_decay"]["ranks"], two_rank_runs["freq_decay"]["ckpt"]
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


def test_freq_decay_composes_with_the_sparse_l2_fallback(make_trainer):
    """With sparse_l2 (decouple, the exact CPU fallback, whose gradient hook runs in
    backward) freq_decay's decay comes first: w <- (1 - lr lam2)(1 - lam) w - lr g / (sqrt(G) + eps)."""
    alpha, lam2 = 0.05, 0.3
    tr = make_trainer(
        [{"type": "freq_decay", "alpha": alpha}, {"type": "sparse_l2", "weight": lam2, "decouple": True}]
    )
    assert tr.regs.exact_l2 is not None, "this test is about the CPU fallback"
    batch = next(iter(tr.data.train_batches(0)))
    w0, G0 = snapshot(tr.dmp), momenta(tr.dmp)
    grads, _ = reference_grads(tr, batch)
    tr.train_step(batch)
    for key, (w, G) in tbe_tables(tr.dmp).items():
        rows = rows_of(batch, key)
        decayed = (1 - alpha) * w0[key][rows].double()  # first read: one step
        want_w, want_G = rowwise_adagrad(
            decayed, grads[key][rows], G0[key][rows], lr=LR, wd=lam2, mode="decouple"
        )
        assert_rows(G[rows], want_G)
        assert_rows(w[rows], want_w)


def test_freq_decay_spec_refuses_bad_parameters():
    from trainer.errors import SpecError

    for bad, field in (
        ({"alpha": 0}, "alpha"),
        ({"alpha": 2.0}, "alpha"),
        ({"alpha": 0.1, "interval": "epochs"}, "interval"),
    ):
        with pytest.raises(SpecError, match=f"regularizers.0.{field}"):
            make_spec([{"type": "freq_decay", **bad}])


@pytest.mark.parametrize("features", [None, ["ad_id"]])
def test_rows_drawn_again_by_embedding_reset_count_as_never_read(make_trainer, features):
    """embedding_reset re-draws tables at a pass start: freq_decay's last-read clocks of
    those tables go to 0 (a re-drawn row's next read counts one step, like a first read),
    the other tables' and the clock stay."""
    reset = {"type": "embedding_reset", "every": 1, **({"features": features} if features else {})}
    tr = make_trainer([{"type": "freq_decay", "alpha": 0.01}, reset])
    fd = tr.regs.freq_decay
    assert fd is not None
    for b in list(tr.data.train_batches(0))[:3]:
        tr.train_step(b)
    before = [x.clone() for x in fd.last]
    clock = fd.clock
    assert clock == 3 and all(int(x.count_nonzero()) > 0 for x in before)
    tr.regs.on_pass_start(1, tr.dmp, tr.dense_opt)
    assert fd.clock == clock
    by_table = {}
    for i, entry in enumerate(tr.regs.touched.tbes):
        hsc = entry.hash_size_cumsum.tolist()
        kernel = next(k for k in embedding_kernels(tr.dmp) if k._emb_module is entry.module)
        for j, t in enumerate(kernel.config.embedding_tables):
            by_table[t.name] = (fd.last[i][hsc[j] : hsc[j + 1]], before[i][hsc[j] : hsc[j + 1]])
    for name, (now, was) in by_table.items():
        drawn_again = features is None or name.startswith("t_ad_id__")
        assert torch.equal(now, torch.zeros_like(was) if drawn_again else was), name
    assert any(name.startswith("t_ad_id__") for name in by_table)
