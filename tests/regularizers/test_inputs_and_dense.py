"""Train-only input rewrites (sparse_dropout, sse_se), dense dropout and dense_l2:
statistics and exact one-step effects against a plain-torch reference; nothing in
evaluation; biases never decayed."""

from __future__ import annotations

import pytest
import torch
from reg_helpers import (
    LR,
    assert_rows,
    first_batch,
    momenta,
    reference_grads,
    reference_model,
    rows_of,
    rowwise_adagrad,
    snapshot,
)

from trainer.model.sharding import dense_named_parameters
from trainer.regularizers import ids

BIG = {"data": {"batch_size": 256, "synthetic": {"examples_per_day": 1024}}, "metrics": {"window_size": 512}}


def _pairs(kjt):
    """Per key: list of per-example id lists."""
    out = {}
    for k, jt in kjt.to_dict().items():
        out[k] = [v.tolist() for v in torch.split(jt.values(), jt.lengths().tolist())]
    return out


def _is_subsequence(sub: list, full: list) -> bool:
    it = iter(full)
    return all(x in it for x in sub)


def test_sparse_dropout_drops_ids_with_probability_p_consistently_across_replicas(make_trainer):
    p = 0.3
    tr = make_trainer(
        [{"type": "sparse_dropout", "p": p, "per_feature": {"ad_id": 0.0, "user_id": 0.8}}],
        model={"num_replicas": 2},
        **BIG,
    )
    batch = first_batch(tr)
    out = tr.regs.transform(batch, step=0).sparse
    before, after = _pairs(batch.sparse), _pairs(out)
    assert out.keys() == batch.sparse.keys() and out.stride() == batch.sparse.stride()
    assert int(out.lengths().sum()) == out.values().numel()
    for key in before:
        for a, b in zip(after[key], before[key], strict=True):
            assert _is_subsequence(a, b)
    # replicas of a feature drop the same positions
    assert torch.equal(out["user_id__r0"].lengths(), out["user_id__r1"].lengths())
    for f, rate in [("user_id", 0.8), ("ad_id", 0.0), ("ad_history", p), ("ctx_0", p)]:
        n0 = batch.sparse[f"{f}__r0"].values().numel()
        n1 = out[f"{f}__r0"].values().numel()
        kept = n1 / n0
        sd = (rate * (1 - rate) / n0) ** 0.5
        assert abs(kept - (1 - rate)) <= 4 * sd + 1e-9, (f, kept, rate)
    assert torch.equal(out["ad_id__r0"].values(), batch.sparse["ad_id__r0"].values())
    # deterministic per step, different across steps; the input batch is not modified
    assert torch.equal(tr.regs.transform(batch, step=0).sparse.values(), out.values())
    assert not torch.equal(tr.regs.transform(batch, step=1).sparse.lengths(), out.lengths())
    assert _pairs(batch.sparse) == before


def test_sse_se_replaces_ids_uniformly_within_the_table(make_trainer):
    p = 0.4
    tr = make_trainer([{"type": "sse_se", "p": p, "per_feature": {"ctx_0": 0.0}}], **BIG)
    hash_size = tr.spec.model.hash_size
    batch = first_batch(tr)
    out = tr.regs.transform(batch, step=3).sparse
    assert torch.equal(out.lengths(), batch.sparse.lengths())
    assert torch.equal(out["ctx_0__r0"].values(), batch.sparse["ctx_0__r0"].values())
    changed = total = 0
    for key in ("user_id__r0", "ad_id__r0", "ad_history__r0"):
        v0, v1 = batch.sparse[key].values(), out[key].values()
        assert int(v1.min()) >= 0 and int(v1.max()) < hash_size
        changed += int((v0 != v1).sum())
        total += v0.numel()
    expected = p * (1 - 1 / hash_size)
    assert abs(changed / total - expected) <= 4 * (expected * (1 - expected) / total) ** 0.5
    # replacements are spread over the table, not confined to the batch's ids
    v0, v1 = batch.sparse["user_id__r0"].values(), out["user_id__r0"].values()
    new = set(v1[v0 != v1].tolist()) - set(v0.tolist())
    assert len(new) > 10


def test_input_rewrites_do_nothing_in_eval_and_train_step_sees_them(make_trainer):
    tr = make_trainer([{"type": "sparse_dropout", "p": 0.5}, {"type": "sse_se", "p": 0.3}])
    batch = first_batch(tr)
    tr.dmp.eval()
    assert tr.regs.transform(batch, step=0) is batch
    before = snapshot(tr.dmp)
    with torch.no_grad():
        a = tr.dmp(batch.dense, batch.sparse)
        b = tr.dmp(batch.dense, batch.sparse)
    assert torch.equal(a, b)
    tr.dmp.train()
    # the fused update touches exactly the rows of the rewritten batch (step 0)
    seen = tr.regs.transform(batch, step=tr.global_step)
    grads, _ = reference_grads(tr, seen)
    G0 = momenta(tr.dmp)
    tr.train_step(batch)
    after = snapshot(tr.dmp)
    for key in before:
        rows = rows_of(seen, key)
        w_ref, _ = rowwise_adagrad(before[key][rows], grads[key][rows], G0[key][rows], lr=LR)
        assert_rows(after[key][rows], w_ref)
        untouched = torch.ones(before[key].shape[0], dtype=torch.bool)
        untouched[rows] = False
        assert torch.equal(after[key][untouched], before[key][untouched])
    dropped = set(rows_of(batch, "user_id__r0").tolist()) - set(rows_of(seen, "user_id__r0").tolist())
    assert dropped, "no row lost all its ids: the untouched check above would not cover dropout"


@pytest.mark.parametrize("rescale", [None, True, False])
def test_sparse_dropout_rescale_matches_a_per_sample_weight_reference(make_trainer, rescale):
    """``rescale`` (default true): each kept id enters its training bag with weight
    1/(1-p_feature), as plain ``F.embedding_bag(per_sample_weights=...)`` computes it;
    false: weight 1. Evaluation never rescales."""
    reg = {"type": "sparse_dropout", "p": 0.4, "per_feature": {"ad_id": 0.0, "user_id": 0.6}}
    if rescale is not None:
        reg["rescale"] = rescale
    tr = make_trainer([reg])
    scaled = rescale is not False
    assert tr.regs.sparse_dropout.rescale is scaled
    batch = first_batch(tr)
    seen = tr.regs.transform(batch, step=tr.global_step)
    with torch.no_grad():
        logits = tr.dmp(seen.dense, seen.sparse)
        ref = reference_model(tr, train=True)(seen.dense, seen.sparse)
        plain = reference_model(tr, train=False)(seen.dense, seen.sparse)
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
    assert bool((logits - plain).abs().max() > 1e-3) is scaled  # the rescale is not a no-op
    if scaled:
        assert tr.dmp.module.pooled_train_scale == {
            "user_id": 1 / 0.4,
            "ad_history": 1 / 0.6,
            "ctx_0": 1 / 0.6,
        }
    tr.dmp.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            tr.dmp(batch.dense, batch.sparse),
            reference_model(tr, train=False)(batch.dense, batch.sparse),
            atol=1e-5,
            rtol=1e-5,
        )
    tr.dmp.train()
    # one fused training step: the rows get the AdaGrad update of the rescaled gradient
    before, G0 = snapshot(tr.dmp), momenta(tr.dmp)
    grads, _ = reference_grads(tr, seen)
    tr.train_step(batch)
    after = snapshot(tr.dmp)
    for key in before:
        rows = rows_of(seen, key)
        w_ref, _ = rowwise_adagrad(before[key][rows], grads[key][rows], G0[key][rows], lr=LR)
        assert_rows(after[key][rows], w_ref)


def test_dense_dropout_is_train_only(make_trainer):
    p = 0.5
    tr = make_trainer([{"type": "dropout", "p": p}])
    drops = [m for m in tr.dmp.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(drops) == len(tr.spec.model.dense_arch) + len(tr.spec.model.over_arch)
    assert all(m.p == p for m in drops)
    batch = first_batch(tr)
    ref = make_trainer()  # same seed -> same initial weights, no dropout
    with torch.no_grad():
        for (_, a), (_, b) in zip(
            dense_named_parameters(tr.dmp), dense_named_parameters(ref.dmp), strict=True
        ):
            a.copy_(b)
    tr.dmp.eval()
    ref.dmp.eval()
    with torch.no_grad():
        assert torch.equal(tr.dmp(batch.dense, batch.sparse), ref.dmp(batch.dense, batch.sparse))
        tr.dmp.train()
        zeros = []
        hook = drops[0].register_forward_hook(lambda m, i, o: zeros.append(float((o == 0).float().mean())))
        out = tr.dmp(batch.dense, batch.sparse)
        hook.remove()
    assert not torch.equal(out, ref.dmp(batch.dense, batch.sparse))
    assert zeros and zeros[0] >= p - 0.15  # at least the dropped units are zero


def test_dense_l2_decays_weights_never_biases(make_trainer):
    lam, lr = 0.3, 0.05  # dense optimizer is plain SGD in these specs
    tr = make_trainer([{"type": "dense_l2", "weight": lam}], model={"batch_norm": True})
    named = dense_named_parameters(tr.dmp)
    groups = {g["name"]: g for g in tr.dense_opt.param_groups}
    decayed = {id(p) for p in groups["dense_decay"]["params"]}
    assert groups["dense_decay"]["weight_decay"] == lam and groups["dense_no_decay"]["weight_decay"] == 0.0
    for n, p in named:
        assert (id(p) in decayed) == (p.ndim >= 2 and n.endswith("weight")), n
    assert any(n.endswith("bias") for n, _ in named) and any(
        p.ndim == 1 and n.endswith("weight") for n, p in named
    )
    tr.dmp.eval()  # batch norm: use running stats so the reference forward is the same function
    batch = first_batch(tr)
    w0 = {n: p.detach().clone() for n, p in named}
    _, grads = reference_grads_eval(tr, batch)
    tr.dense_opt.zero_grad()
    logits = tr.dmp(batch.dense, batch.sparse)
    torch.nn.functional.binary_cross_entropy_with_logits(
        logits, batch.labels, weight=batch.weights
    ).backward()
    tr.dense_opt.step()
    for n, p in named:
        expected = w0[n] - lr * (grads[n] + (lam * w0[n] if id(p) in decayed else 0.0))
        torch.testing.assert_close(p.detach(), expected, atol=1e-6, rtol=1e-5, msg=n)


def reference_grads_eval(tr, batch):
    tr.dmp.eval()
    emb, dense = reference_grads(tr, batch, train=False)
    return emb, dense


def test_key_to_feature_mapping():
    assert ids.feature_of("ad_history__r0") == "ad_history"
    assert ids.feature_of("weird__r__name__r12") == "weird__r__name"
    assert ids.rates_per_key(["a__r0", "a__r1", "b__r0"], 0.1, {"b": 0.5}) == [0.1, 0.1, 0.5]
