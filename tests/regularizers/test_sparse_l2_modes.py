"""``sparse_l2`` modes (FBGEMM's WeightDecayMode, issue 25): COUNTER and COWCLIP run
in fbgemm-gpu-cpu 1.8's CPU kernel (probed), so here the kernel is checked against a
plain-PyTorch reference of the formulas in FBGEMM's optimizer codegen
(``rowwise_adagrad_with_counter``), over several steps of the real Trainer with the
per-row count, last-iteration and AdaGrad state kept by the reference itself; the
TBE iteration counter (not checkpointed by TorchRec) comes back on resume; modes the
device's kernel does not apply and rectrain cannot compute are refused clearly."""

from __future__ import annotations

import math

import pytest
import torch
from reg_helpers import (
    EPS,
    HASH,
    LR,
    assert_rows,
    make_spec,
    reference_grads,
    rows_of,
    snapshot,
    tbe_tables,
    two_rank_reference,
)
from two_rank_worker import assemble

from trainer.errors import RectrainError, SpecError
from trainer.loop import LocalSession, Trainer
from trainer.regularizers.touched import find_tbes
from trainer.spec import parse_spec

LAM = 0.2
STEPS = 4


def _reference_step(w, g, G, counter, prev, it: int, cfg: dict):
    """FBGEMM's row-wise AdaGrad with counter (regularization_mode 3 = counter, 4 =
    cowclip) for rows ``w`` with summed gradients ``g``, at iteration ``it``; float64."""
    w, g = w.double(), g.double()
    h = cfg.get("counter_halflife", -1)
    if h > 0:
        delta = torch.where(prev == 0, torch.ones_like(prev), it - prev)
        counter = 1.0 + torch.exp(-delta * math.log(2.0) / h) * counter
    elif h == 0:
        counter = torch.ones_like(counter)
    else:
        counter = counter + 1.0
    freq = h / counter
    decay = cfg.get("counter_decay", "decouple")
    g_state = g + LAM * w if decay == "l2" else g
    G = G + (g_state * g_state).mean(dim=1)
    mult = LR / (G.sqrt() + EPS)
    if cfg["mode"] == "counter":
        adj = mult
        corr = {"decouple": 1 - freq * LAM * LR, "l2": 1 - freq * LAM * mult, "none": torch.ones_like(mult)}[
            decay
        ]
    else:  # cowclip
        clip = counter * torch.clamp(
            cfg.get("weight_norm_coefficient", 0.0) * torch.linalg.vector_norm(w, dim=1),
            min=cfg.get("lower_bound", 0.0),
        )
        adj = torch.clamp(clip / torch.linalg.vector_norm(g_state, dim=1), max=1.0) * mult
        corr = {
            "decouple": torch.full_like(mult, 1 - LAM * LR),
            "l2": 1 - LAM * adj,
            "none": torch.ones_like(mult),
        }[decay]
    w_new = corr.unsqueeze(1) * w - adj.unsqueeze(1) * g
    return w_new, G, counter, torch.full_like(prev, float(it))


@pytest.mark.parametrize(
    "cfg",
    [
        {"mode": "counter", "counter_halflife": 3, "counter_decay": "decouple"},
        {"mode": "counter", "counter_halflife": 2, "counter_decay": "l2"},
        {
            "mode": "cowclip",
            "weight_norm_coefficient": 0.05,
            "lower_bound": 1e-4,
            "counter_decay": "decouple",
        },
    ],
    ids=["counter-decouple", "counter-l2", "cowclip"],
)
def test_counter_and_cowclip_kernel_match_the_reference(make_trainer, cfg):
    tr = make_trainer([{"type": "sparse_l2", "weight": LAM, **cfg}])
    assert tr.regs.sparse_l2_fused and tr.regs.exact_l2 is None, "the CPU kernel applies these modes"
    tables = tbe_tables(tr.dmp)
    n = {k: w.shape[0] for k, (w, _) in tables.items()}
    G = {k: torch.zeros(n[k], dtype=torch.float64) for k in n}
    counter = {k: torch.zeros(n[k], dtype=torch.float64) for k in n}
    prev = {k: torch.zeros(n[k], dtype=torch.float64) for k in n}
    decayed = 0
    for it, batch in enumerate(list(tr.data.train_batches(0))[:STEPS], start=1):
        before = snapshot(tr.dmp)
        grads, _ = reference_grads(tr, batch)
        tr.train_step(batch)
        for key, (w, _) in tbe_tables(tr.dmp).items():
            rows = rows_of(batch, key)
            w_new, G_new, c_new, p_new = _reference_step(
                before[key][rows],
                grads[key][rows],
                G[key][rows],
                counter[key][rows],
                prev[key][rows],
                it,
                cfg,
            )
            G[key][rows], counter[key][rows], prev[key][rows] = G_new, c_new, p_new
            assert_rows(w[rows], w_new)
            plain = (
                before[key][rows].double()
                - (LR / (G_new.sqrt() + EPS)).unsqueeze(1) * grads[key][rows].double()
            )
            decayed += int(((w[rows].double() - plain).abs() > 1e-5).any(dim=1).sum())
            others = torch.ones(n[key], dtype=torch.bool)
            others[rows] = False
            assert torch.equal(w[others], before[key][others])
    assert decayed > 0, "the mode never changed an update: the comparison could not fail"


def test_kernel_iteration_counter_comes_back_on_resume(tmp_path):
    spec = make_spec([{"type": "sparse_l2", "weight": LAM, "mode": "counter", "counter_halflife": 3}])
    session = LocalSession(tmp_path)
    t = Trainer(spec, session, tmp_path)
    for b in list(t.data.train_batches(0))[:3]:
        t.train_step(b)
    t.global_step = 3
    t.checkpoint(0, 3, {})
    assert {int(m.iter) for m in find_tbes(t.dmp)} == {3}
    t2 = Trainer(spec, session, tmp_path)
    assert {int(m.iter) for m in find_tbes(t2.dmp)} == {0}
    t2._resume()
    assert {int(m.iter) for m in find_tbes(t2.dmp)} == {3}
    assert {int(m.iter_cpu) for m in find_tbes(t2.dmp)} == {3}


def test_modes_without_kernel_or_fallback_are_refused(make_trainer, monkeypatch):
    with pytest.raises(SpecError, match="decouple_global runs in FBGEMM's CUDA kernel only"):
        make_spec([{"type": "sparse_l2", "weight": LAM, "mode": "decouple_global"}])
    with pytest.raises(SpecError, match="counter_halflife >= 1"):
        make_spec([{"type": "sparse_l2", "weight": LAM, "mode": "counter"}])
    with pytest.raises(SpecError, match="contradicts mode"):
        make_spec([{"type": "sparse_l2", "weight": LAM, "mode": "l2", "decouple": True}])
    with pytest.raises(SpecError, match="weight_norm_coefficient"):
        make_spec([{"type": "sparse_l2", "weight": LAM, "mode": "cowclip"}])
    # the trainer refuses a kernel-only mode where the kernel does not apply it (the
    # probe's answer faked: this CPU kernel applies counter)
    monkeypatch.setattr("trainer.regularizers.regset.fused_mode_works", lambda dev, mode: False)
    with pytest.raises(RectrainError, match="rectrain computes only l2 and decouple by hand"):
        make_trainer([{"type": "sparse_l2", "weight": LAM, "mode": "counter", "counter_halflife": 3}])
    # l2 / decouple keep their exact fallback
    tr = make_trainer([{"type": "sparse_l2", "weight": LAM, "mode": "decouple"}])
    assert tr.regs.exact_l2 is not None and tr.regs.exact_l2.decouple


@pytest.mark.slow
def test_counter_on_two_ranks_matches_a_plain_pytorch_loop(two_rank_runs):
    """The kernel's COUNTER mode on 2 gloo ranks (tables table-wise over both), 20 steps
    over two passes, against the same formula by hand on both ranks' batches."""
    run = two_rank_runs["counter"]
    ranks, spec = run["ranks"], parse_spec(run["spec"])
    cfg = {"mode": "counter", "counter_halflife": 3, "counter_decay": "decouple"}
    state: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def update(k, rows, w, g, t):
        G, c, p = state.setdefault(k, tuple(torch.zeros(HASH, dtype=torch.float64) for _ in range(3)))
        w_new, G[rows], c[rows], p[rows] = _reference_step(w, g, G[rows], c[rows], p[rows], t, cfg)
        return w_new

    init = assemble([r["init"]["tables"] for r in ranks])
    final = assemble([r["tables"] for r in ranks])
    want = two_rank_reference(spec, init, ranks[0]["init"]["dense"], 2, 20, update)
    worst = max(float((final[k].double() - want[k]).abs().max()) for k in want)
    assert worst <= 1e-6, worst
    plain = two_rank_reference(
        spec, init, ranks[0]["init"]["dense"], 2, 20, lambda k, rows, w, g, t: _plain(state, k, rows, w, g)
    )
    assert max(float((final[k].double() - plain[k]).abs().max()) for k in want) > 1e-3


def _plain(state, k, rows, w, g):
    """Row-wise AdaGrad without decay (own accumulators under key ``plain:<k>``)."""
    (G,) = state.setdefault("plain:" + k, (torch.zeros(HASH, dtype=torch.float64),))
    G[rows] += (g * g).mean(dim=1)
    return w - (LR / (G[rows].sqrt() + EPS)).unsqueeze(1) * g
