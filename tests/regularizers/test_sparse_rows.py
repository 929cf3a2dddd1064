"""Sparse regularizers on the fused FBGEMM TBE, one step against a plain-torch
reference: sparse_l2 (L2 and DECOUPLE, inside the fused update), sparse_l1,
max_norm, const_norm (after the update, on the rows this step touched)."""

from __future__ import annotations

import pytest
import torch
from reg_helpers import (
    LR,
    assert_rows,
    first_batch,
    momenta,
    reference_grads,
    rows_of,
    rowwise_adagrad,
    snapshot,
    tbe_tables,
)
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from trainer.regularizers import post_step


def _one_step(tr, batch=None):
    """Run one train_step; return (batch, before, after, grads, momenta before)."""
    batch = batch or first_batch(tr)
    before, G0 = snapshot(tr.dmp), momenta(tr.dmp)
    grads, _ = reference_grads(tr, batch)
    tr.train_step(batch)
    return batch, before, snapshot(tr.dmp), grads, G0


def _check(batch, before, after, grads, G0, row_map=None, *, wd=0.0, mode="none", lr=LR):
    """Touched rows == reference; untouched rows bit-identical. Returns touched rows."""
    out = {}
    for key in before:
        rows = rows_of(batch, key)
        assert rows.numel() > 0
        w_ref, _ = rowwise_adagrad(
            before[key][rows], grads[key][rows], G0[key][rows], lr=lr, wd=wd, mode=mode
        )
        if row_map is not None:
            w_ref = row_map(w_ref)
        assert_rows(after[key][rows], w_ref)
        untouched = torch.ones(before[key].shape[0], dtype=torch.bool)
        untouched[rows] = False
        assert untouched.sum() > before[key].shape[0] // 2  # the check below is not vacuous
        assert torch.equal(after[key][untouched], before[key][untouched]), f"{key}: untouched rows changed"
        out[key] = after[key][rows]
    return out


def test_no_regularizer_matches_reference_rowwise_adagrad(make_trainer):
    tr = make_trainer()
    _check(*_one_step(tr))


@pytest.mark.parametrize("decouple", [False, True])
def test_sparse_l2_is_fbgemm_weight_decay_on_touched_rows(make_trainer, decouple):
    wd = 0.5
    tr = make_trainer([{"type": "sparse_l2", "weight": wd, "decouple": decouple}])
    batch, before, after, grads, G0 = _one_step(tr)
    mode = "decouple" if decouple else "l2"
    _check(batch, before, after, grads, G0, wd=wd, mode=mode)
    # and lambda really matters: the plain AdaGrad step gives other rows
    key = next(iter(before))
    rows = rows_of(batch, key)
    plain, _ = rowwise_adagrad(before[key][rows], grads[key][rows], G0[key][rows], lr=LR)
    assert (after[key][rows].double() - plain).abs().max() > 1e-4
    # the second step reads the AdaGrad state FBGEMM accumulated with the decay term
    b2 = first_batch(tr, 1)
    _check(*_one_step(tr, b2), wd=wd, mode=mode)


def test_sparse_l1_soft_thresholds_touched_rows(make_trainer):
    lam = 0.05
    tr = make_trainer([{"type": "sparse_l1", "weight": lam}])
    t = LR * lam
    ref_map = lambda w: torch.sign(w) * torch.clamp(w.abs() - t, min=0.0)  # noqa: E731
    touched = _check(*_one_step(tr), row_map=ref_map)
    zeros = sum(int((v == 0).sum()) for v in touched.values())
    assert zeros > 0, "threshold never reached zero: the test would not see a sign crossing"
    # a second step: rows thresholded again from the new weights (not accumulated)
    _check(*_one_step(tr, first_batch(tr, 1)), row_map=ref_map)


def test_max_norm_clips_touched_rows_only(make_trainer):
    c = 0.25
    tr = make_trainer([{"type": "max_norm", "c": c}])
    touched = _check(*_one_step(tr), row_map=lambda w: post_step.clip_norm(w, c))
    norms = torch.cat([torch.linalg.vector_norm(v, dim=1) for v in touched.values()])
    assert norms.max() <= c * (1 + 1e-6)
    assert (norms > c * (1 - 1e-5)).sum() > 0 and (norms < c * 0.99).sum() > 0  # both cases exercised
    # a row *not* read by the next step is left alone even if it violates the bound
    b2 = first_batch(tr, 1)
    key = next(iter(touched))
    w, _ = tbe_tables(tr.dmp)[key]
    free = [r for r in range(w.shape[0]) if r not in set(rows_of(b2, key).tolist())][0]
    with torch.no_grad():
        w[free] = 10.0
    _check(*_one_step(tr, b2), row_map=lambda w: post_step.clip_norm(w, c))
    assert torch.all(w[free] == 10.0)


def test_const_norm_sets_every_touched_row_norm(make_trainer):
    c = 0.5
    tr = make_trainer([{"type": "const_norm", "c": c}])
    ref_map = lambda w: w * (c / torch.linalg.vector_norm(w, dim=1, keepdim=True))  # noqa: E731
    touched = _check(*_one_step(tr), row_map=ref_map)
    norms = torch.cat([torch.linalg.vector_norm(v, dim=1) for v in touched.values()])
    torch.testing.assert_close(norms, torch.full_like(norms, c), atol=1e-6, rtol=1e-6)


def test_post_step_composition_order(make_trainer):
    """sparse_l2 inside the update, then sparse_l1, then max_norm."""
    wd, lam, c = 0.2, 0.02, 0.2
    tr = make_trainer(
        [
            {"type": "max_norm", "c": c},
            {"type": "sparse_l1", "weight": lam},
            {"type": "sparse_l2", "weight": wd},
        ]
    )

    def ref_map(w):
        w = torch.sign(w) * torch.clamp(w.abs() - LR * lam, min=0.0)
        return post_step.clip_norm(w, c)

    _check(*_one_step(tr), row_map=ref_map, wd=wd, mode="l2")


def test_touched_rows_are_captured_in_training_only_and_cost_is_rows_touched(make_trainer):
    tr = make_trainer([{"type": "max_norm", "c": 1.0}])
    batch = first_batch(tr)
    tr.dmp.eval()
    with torch.no_grad():
        tr.dmp(batch.dense, batch.sparse)
    assert all(not t.calls for t in tr.regs.touched.tbes)
    tr.dmp.train()
    logits = tr.dmp(batch.dense, batch.sparse)
    logits.sum().backward()
    n = tr.regs.touched.finish(lambda w: w)
    assert n == sum(rows_of(batch, k).numel() for k in tbe_tables(tr.dmp))
    assert all(not t.calls for t in tr.regs.touched.tbes)


def test_sparse_l2_routing_follows_what_the_kernel_does(make_trainer):
    """fbgemm-gpu-cpu 1.8 ignores weight_decay in its CPU row-wise AdaGrad kernel: the
    startup probe must see that and route sparse_l2 to the exact fallback (and to the
    fused path on a kernel that honours it). The reference tests above check the result
    either way."""
    from trainer.regularizers.sparse_l2 import fused_weight_decay_works

    for decouple in (False, True):
        tr = make_trainer([{"type": "sparse_l2", "weight": 0.5, "decouple": decouple}])
        works = fused_weight_decay_works("cpu", decouple)
        assert tr.regs.sparse_l2_fused == works
        if works:
            assert tr.regs.fused_params()["weight_decay"] == 0.5 and tr.regs.exact_l2 is None
        else:
            assert tr.regs.fused_params() == {} and tr.regs.exact_l2 is not None
            assert tr.regs.touched is not None


# --------------------------------------------------------------------------- gradient clipping

MAX_GRAD = 1e-5
_CLIP = {
    "training": {
        "sparse_optimizer": {"lr": LR, "eps": 1e-8, "gradient_clipping": True, "max_gradient": MAX_GRAD}
    }
}


def _with_repeat_in_a_bag(batch, key: str = "ad_history__r0"):
    """The batch with the first multi-id bag of ``key`` holding its first id twice."""
    from trainer.data.batch import Batch

    kjt = batch.sparse
    values = kjt.values().clone()
    lengths = kjt.lengths()
    keys = kjt.keys()
    start = sum(kjt.length_per_key()[: keys.index(key)])
    bag_lengths = kjt[key].lengths()
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), bag_lengths.long().cumsum(0)])
    b = int((bag_lengths >= 2).nonzero()[0])
    values[start + offsets[b] + 1] = values[start + offsets[b]]
    sparse = KeyedJaggedTensor(keys=keys, values=values, lengths=lengths, stride=kjt.stride())
    return Batch(batch.dense, sparse, batch.labels, batch.weights, batch.strata), int(
        values[start + offsets[b]]
    )


class _ClipPerBag(torch.nn.Module):
    """Reference EBC whose pooled-output gradient is clipped per bag element, so a row
    receives the sum of its occurrences' clipped gradients (FBGEMM's semantics)."""

    def __init__(self, inner) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, kjt):
        pooled = self.inner(kjt)  # a KeyedTensor: the model reads its values [B, sum D]
        pooled.values().register_hook(lambda g: g.clamp(-MAX_GRAD, MAX_GRAD))
        return pooled


def _clipped_reference_grads(tr, batch):
    from reg_helpers import RefEBC

    from trainer.model.dlrm import DLRM
    from trainer.model.sharding import dense_named_parameters

    ref = DLRM(tr.spec)
    ref.ebc = _ClipPerBag(RefEBC(snapshot(tr.dmp)))
    live = dict(dense_named_parameters(tr.dmp))
    with torch.no_grad():
        for n, p in ref.named_parameters():
            p.copy_(live[n])
    logits = ref(batch.dense, batch.sparse)
    torch.nn.functional.binary_cross_entropy_with_logits(
        logits, batch.labels, weight=batch.weights
    ).backward()
    return {k: w.grad.detach().clone() for k, w in ref.ebc.inner.w.items()}


def test_gradient_clipping_clips_each_occurrence_in_kernel_and_sparse_l2_fallback(make_trainer):
    """FBGEMM's row-wise AdaGrad clips every occurrence of a row (an id repeated in a
    bag counts twice) before summing; the exact sparse_l2 fallback must too. One
    warm-up step first: with an empty AdaGrad state the first step is scale-free."""
    warm = None

    def warmed(tr):
        nonlocal warm
        warm = warm or first_batch(tr, 1)
        tr.train_step(warm)
        return tr

    kernel = warmed(make_trainer(**_CLIP))
    batch, repeated = _with_repeat_in_a_bag(first_batch(kernel))
    grads = _clipped_reference_grads(kernel, batch)
    summed, _ = reference_grads(kernel, batch)
    before, G0 = snapshot(kernel.dmp), momenta(kernel.dmp)
    kernel.train_step(batch)
    after_kernel = snapshot(kernel.dmp)
    # 1. the real kernel: per-occurrence clipping (the plain reference)
    _check(batch, before, after_kernel, grads, G0)
    # clipping the summed gradient instead gives another row for the repeated id
    key, row = "ad_history__r0", torch.tensor([repeated])
    clipped_sum, _ = rowwise_adagrad(
        before[key][row], summed[key][row].clamp(-MAX_GRAD, MAX_GRAD), G0[key][row], lr=LR
    )
    assert (clipped_sum - after_kernel[key][row].double()).abs().max() > 1e-3

    # 2. the exact sparse_l2 fallback at lambda = 0 is exactly the kernel's update
    tr = make_trainer([{"type": "sparse_l2", "weight": 0.5}], **_CLIP)
    assert tr.regs.exact_l2 is not None, "this build routes sparse_l2 to the fused kernel"
    tr.regs.exact_l2.weight = 0.0
    warmed(tr)
    for k, w in snapshot(tr.dmp).items():
        assert_rows(w, before[k], atol=1e-6, rtol=1e-6)
    tr.train_step(batch)
    for k, w in snapshot(tr.dmp).items():
        assert_rows(w, after_kernel[k], atol=1e-6, rtol=1e-6)

    # 3. lambda > 0, both modes: the reference with per-occurrence clipping
    for decouple in (False, True):
        tr = warmed(make_trainer([{"type": "sparse_l2", "weight": 0.5, "decouple": decouple}], **_CLIP))
        ref = _clipped_reference_grads(tr, batch)
        b3, before3, after3, _, G3 = _one_step(tr, batch)
        _check(b3, before3, after3, ref, G3, wd=0.5, mode="decouple" if decouple else "l2")
