"""shrink and max_entropy on the fused FBGEMM TBE, against plain references:

- shrink: the rows read in the pass so far (fewer than K times) are exactly
  (1 - s) x what the same training without shrink gives, every other row and the
  AdaGrad state bit-identical (state zeroed with reset_state); counts are the
  batches' id counts of the current pass only; frozen embeddings are not shrunk.
- max_entropy: one fused step equals row-wise AdaGrad on the autograd gradient of
  BCE + lambda * (log D - H) computed in plain torch on EmbeddingBag copies.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from reg_helpers import (
    DIM,
    LR,
    RefEBC,
    assert_rows,
    first_batch,
    momenta,
    rows_of,
    rowwise_adagrad,
    snapshot,
)

from trainer.model.dlrm import DLRM
from trainer.model.sharding import dense_named_parameters
from trainer.regularizers import entropy
from trainer.regularizers.touched import embedding_kernels

# --------------------------------------------------------------------------- shrink


def _pass_counts(tr, pass_idx: int, steps: int | None = None) -> dict[str, torch.Tensor]:
    """Per KJT key: how often each row is read by the first ``steps`` batches of the pass."""
    counts: dict[str, torch.Tensor] = {}
    for i, b in enumerate(tr.data.train_batches(pass_idx)):
        if steps is not None and i >= steps:
            break
        for key in b.sparse.keys():
            c = torch.bincount(b.sparse[key].values().long(), minlength=tr.spec.model.hash_size)
            counts[key] = counts.get(key, 0) + c
    return counts


def _run_steps(tr, pass_idx: int, steps: int) -> None:
    """The loop's order for the first ``steps`` steps of a pass (train_step, on_step_end)."""
    tr.regs.on_pass_start(pass_idx, tr.dmp, tr.dense_opt)
    tr.dmp.train()
    n = tr.data.steps_per_pass
    for i, b in enumerate(tr.data.train_batches(pass_idx)):
        if i >= steps:
            break
        tr.train_step(b)
        tr.regs.on_step_end(i + 1, n)
        tr.global_step += 1


def _expect_shrunk(control, shrunk, counts, s, k, state_ctrl, state_shr, reset_state):
    total = 0
    for key in control:
        c = counts[key]
        sel = (c > 0) & (c < k) if k is not None else c > 0
        assert (~sel).any(), key
        total += int(sel.sum())
        assert torch.equal(shrunk[key][sel], control[key][sel] * (1.0 - s)), f"{key}: shrunk rows"
        assert torch.equal(shrunk[key][~sel], control[key][~sel]), f"{key}: other rows changed"
        if reset_state:
            assert torch.equal(state_shr[key][sel], torch.zeros_like(state_shr[key][sel]))
            assert torch.equal(state_shr[key][~sel], state_ctrl[key][~sel])
        else:
            assert torch.equal(state_shr[key], state_ctrl[key]), f"{key}: AdaGrad state changed"
    return total


@pytest.mark.parametrize("reset_state", [False, True])
def test_shrink_at_pass_end_scales_rows_read_fewer_than_k_times(make_trainer, reset_state):
    s, k = 0.25, 3
    control = make_trainer()
    tr = make_trainer([{"type": "shrink", "s": s, "max_count": k, "reset_state": reset_state}])
    n = tr.data.steps_per_pass
    assert n >= 4
    # through the loop itself: _train_pass calls on_step_end after every step
    for t in (control, tr):
        t.regs.on_pass_start(0, t.dmp, t.dense_opt)
        t._train_pass(0, 0)
    counts = _pass_counts(tr, 0)
    frequent = sum(int((c >= k).sum()) for c in counts.values())
    assert frequent > 0  # the K bound really excludes rows
    assert _expect_shrunk(
        snapshot(control.dmp),
        snapshot(tr.dmp),
        counts,
        s,
        k,
        momenta(control.dmp),
        momenta(tr.dmp),
        reset_state,
    )


def test_shrink_every_n_steps_without_k_scales_every_row_read_so_far(make_trainer):
    s, every = 0.5, 3
    control = make_trainer()
    tr = make_trainer([{"type": "shrink", "s": s, "every_steps": every, "at_pass_end": False}])
    for t in (control, tr):
        t.regs.on_pass_start(0, t.dmp, t.dense_opt)
        t.dmp.train()
    n = tr.data.steps_per_pass
    for i, b in enumerate(tr.data.train_batches(0)):
        if i == every:
            break
        for t in (control, tr):
            t.train_step(b)
            t.regs.on_step_end(i + 1, n)
        if i + 1 < every:  # no event yet: identical to the control
            assert all(
                torch.equal(x, y)
                for x, y in zip(snapshot(tr.dmp).values(), snapshot(control.dmp).values(), strict=False)
            )
    counts = _pass_counts(tr, 0, every)
    assert _expect_shrunk(
        snapshot(control.dmp), snapshot(tr.dmp), counts, s, None, momenta(control.dmp), momenta(tr.dmp), False
    )


def _key_counts(tr) -> dict[str, torch.Tensor]:
    """shrink's live counts, per KJT key (linear ids -> table rows)."""
    out = {}
    entries = {id(e.module): (i, e) for i, e in enumerate(tr.regs.touched.tbes)}
    for kern in embedding_kernels(tr.dmp):
        i, e = entries[id(kern._emb_module)]
        for t, table in enumerate(kern.config.embedding_tables):
            (key,) = table.feature_names
            lo, hi = int(e.hash_size_cumsum[t]), int(e.hash_size_cumsum[t + 1])
            out[key] = tr.regs.shrink.counts[i][lo:hi].long()
    return out


def test_shrink_counts_are_the_current_pass_reads_only(make_trainer):
    tr = make_trainer([{"type": "shrink", "s": 0.1}])
    for p in range(2):
        tr.regs.on_pass_start(p, tr.dmp, tr.dense_opt)
        tr._train_pass(p, 0)
        live, ref = _key_counts(tr), _pass_counts(tr, p)
        assert live.keys() == ref.keys()
        for key in ref:
            assert torch.equal(live[key], ref[key]), key
    # evaluation reads nothing into the counts
    before = {k: v.clone() for k, v in _key_counts(tr).items()}
    tr.evaluate()
    assert all(torch.equal(before[k], v) for k, v in _key_counts(tr).items())


def test_shrink_does_nothing_while_embeddings_are_frozen(make_trainer):
    tr = make_trainer([{"type": "shrink", "s": 0.9}, {"type": "freeze", "from_pass": 0}])
    before = snapshot(tr.dmp)  # (FBGEMM still accumulates AdaGrad state at lr 0, as without shrink)
    tr.regs.on_pass_start(0, tr.dmp, tr.dense_opt)
    tr._train_pass(0, 0)
    after = snapshot(tr.dmp)
    assert all(torch.equal(before[k], after[k]) for k in before)


# --------------------------------------------------------------------------- max_entropy


def _plain_gap(e: torch.Tensor) -> torch.Tensor:
    """log D - H(p), p the normalised per-dimension energy; written out independently."""
    energy = torch.stack([(e[:, d] * e[:, d]).sum() for d in range(e.shape[1])]) + 1e-12
    p = energy / energy.sum()
    return math.log(e.shape[1]) - (-(p * torch.log(p)).sum())


def _reference_grads_with_entropy(tr, batch, lam: float, per_feature: dict[str, float]):
    ref = DLRM(tr.spec, dense_dropout=0.0)
    ref.ebc = RefEBC(snapshot(tr.dmp))
    ref.keep_pooled = True
    live = dict(dense_named_parameters(tr.dmp))
    with torch.no_grad():
        for n, p in ref.named_parameters():
            p.copy_(live[n])
    ref.train()
    logits = ref(batch.dense, batch.sparse)
    loss = F.binary_cross_entropy_with_logits(logits, batch.labels, weight=batch.weights)
    for key, e in ref.last_pooled.items():
        loss = loss + per_feature.get(key.rsplit("__r", 1)[0], lam) * _plain_gap(e)
    loss.backward()
    return {k: w.grad.detach().clone() for k, w in ref.ebc.w.items()}


def test_max_entropy_gradient_reaches_rows_through_the_fused_update(make_trainer):
    lam = 0.5
    per_feature = {"ctx_0": 0.0}
    tr = make_trainer([{"type": "max_entropy", "weight": lam, "per_feature": per_feature}])
    batch = first_batch(tr)
    before, G0 = snapshot(tr.dmp), momenta(tr.dmp)
    grads = _reference_grads_with_entropy(tr, batch, lam, per_feature)
    plain = _reference_grads_with_entropy(tr, batch, 0.0, {})
    tr.train_step(batch)
    after = snapshot(tr.dmp)
    for key in before:
        rows = rows_of(batch, key)
        w_ref, _ = rowwise_adagrad(before[key][rows], grads[key][rows], G0[key][rows], lr=LR)
        assert_rows(after[key][rows], w_ref)
        untouched = torch.ones(before[key].shape[0], dtype=torch.bool)
        untouched[rows] = False
        assert torch.equal(after[key][untouched], before[key][untouched]), key
        diff = (grads[key][rows] - plain[key][rows]).abs().max()
        if key.startswith("ctx_0"):
            assert diff == 0  # per_feature 0: no term for that table
        else:
            assert diff > 1e-4, (key, float(diff))  # the term really moves the rows
    assert tr.dmp.module.last_pooled is None  # no graph kept between steps


def test_entropy_gap_bounds_and_eval_keeps_nothing(make_trainer):
    uniform = torch.ones(5, DIM)
    assert abs(float(entropy.entropy_gap(uniform))) < 1e-6
    one_hot = torch.zeros(5, DIM)
    one_hot[:, 3] = 2.0
    assert abs(float(entropy.entropy_gap(one_hot)) - math.log(DIM)) < 1e-4
    assert float(entropy.entropy_gap(torch.zeros(5, DIM))) == pytest.approx(0.0, abs=1e-6)
    tr = make_trainer([{"type": "max_entropy", "weight": 0.1}])
    tr.evaluate()
    assert tr.dmp.module.last_pooled is None
