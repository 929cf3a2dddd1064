"""freeze and lr_schedule: per-pass learning rates of both optimizers, AdaGrad resets,
re-applied on resume; and every regularizer together through Trainer.run()."""

from __future__ import annotations

import math

import pytest
import torch
from reg_helpers import (
    LR,
    assert_rows,
    dense_snapshot,
    first_batch,
    momenta,
    reference_grads,
    rows_of,
    rowwise_adagrad,
    snapshot,
)

from trainer.regularizers.touched import find_tbes

DENSE_LR = 0.05


def _lrs(tr):
    sparse = {round(t.get_learning_rate(), 7) for t in find_tbes(tr.dmp)}
    fused = {round(g["lr"], 7) for g in tr.dmp.fused_optimizer.param_groups}
    dense = {round(g["lr"], 7) for g in tr.dense_opt.param_groups}
    return sparse, fused, dense


def _changed(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("what", ["embeddings", "dense", "both"])
def test_freeze_from_pass_stops_updates_bit_exactly(make_trainer, what):
    tr = make_trainer(
        [
            {"type": "freeze", "from_pass": 1, "what": what},
            {"type": "max_norm", "c": 0.05},
            {"type": "sparse_l2", "weight": 0.1},
        ]
    )
    tr.regs.on_pass_start(0, tr.dmp, tr.dense_opt)
    e0, d0 = snapshot(tr.dmp), dense_snapshot(tr)
    tr.train_step(first_batch(tr, 0))
    e1, d1 = snapshot(tr.dmp), dense_snapshot(tr)
    assert _changed(e0, e1) and _changed(d0, d1)  # pass 0 trains both
    tr.regs.on_pass_start(1, tr.dmp, tr.dense_opt)
    sparse, fused, dense = _lrs(tr)
    assert sparse == fused == ({0.0} if what != "dense" else {round(LR, 7)})
    assert dense == ({0.0} if what != "embeddings" else {DENSE_LR})
    for i in (1, 2):
        tr.train_step(first_batch(tr, i))
    e2, d2 = snapshot(tr.dmp), dense_snapshot(tr)
    assert _changed(e1, e2) == (what == "dense")
    assert _changed(d1, d2) == (what == "embeddings")


def test_lr_schedule_scales_both_optimizers_and_the_fused_step_is_exact(make_trainer):
    tr = make_trainer(
        [{"type": "lr_schedule", "sparse": [1.0, 0.25], "dense": [1.0, 0.5]}], training={"num_passes": 3}
    )
    tr.regs.on_pass_start(0, tr.dmp, tr.dense_opt)
    assert _lrs(tr) == ({round(LR, 7)}, {round(LR, 7)}, {DENSE_LR})
    tr.regs.on_pass_start(1, tr.dmp, tr.dense_opt)
    assert _lrs(tr) == ({round(LR * 0.25, 7)}, {round(LR * 0.25, 7)}, {DENSE_LR * 0.5})
    tr.regs.on_pass_start(2, tr.dmp, tr.dense_opt)  # beyond the list: its last factor
    assert _lrs(tr) == ({round(LR * 0.25, 7)}, {round(LR * 0.25, 7)}, {DENSE_LR * 0.5})
    batch = first_batch(tr)
    before, G0 = snapshot(tr.dmp), momenta(tr.dmp)
    grads, _ = reference_grads(tr, batch)
    tr.train_step(batch)
    after = snapshot(tr.dmp)
    for key in before:
        rows = rows_of(batch, key)
        w_ref, _ = rowwise_adagrad(before[key][rows], grads[key][rows], G0[key][rows], lr=LR * 0.25)
        assert_rows(after[key][rows], w_ref)


def test_lr_schedule_reset_zeroes_adagrad_state_each_pass_but_not_on_resume(make_trainer):
    tr = make_trainer(
        [{"type": "lr_schedule", "reset": True}], training={"dense_optimizer": {"type": "adam"}}
    )
    tr.regs.on_pass_start(0, tr.dmp, tr.dense_opt)
    tr.train_step(first_batch(tr))
    assert any(float(s.abs().sum()) > 0 for s in momenta(tr.dmp).values()) and tr.dense_opt.state
    tr.regs.on_pass_start(1, tr.dmp, tr.dense_opt, resumed=True)
    assert any(float(s.abs().sum()) > 0 for s in momenta(tr.dmp).values()) and tr.dense_opt.state
    tr.regs.on_pass_start(1, tr.dmp, tr.dense_opt)
    assert all(float(s.abs().sum()) == 0 for s in momenta(tr.dmp).values()) and not tr.dense_opt.state


def test_pass_learning_rates_are_reapplied_when_resuming_inside_a_pass(make_trainer, session, tmp_path):
    """Checkpoint mid-pass 1 of a run with lr factors, then resume in a new Trainer:
    the resumed Trainer trains pass 1 at the pass-1 learning rates."""
    regs = [{"type": "lr_schedule", "sparse": [1.0, 0.5], "dense": [1.0, 0.1]}]
    over = {"training": {"checkpoint_every_steps": 3}, "data": {"test_days": []}}
    tr = make_trainer(regs, **over)
    steps = tr.data.steps_per_pass
    assert steps == 8
    tr.run()
    from trainer.loop import Trainer

    # rewind the checkpoint to mid pass 1 and resume in a fresh Trainer
    ckpt = session.dir / "latest"
    import torch as _t

    state = _t.load(ckpt / "rank_0.pt", weights_only=False)
    state["progress"].update({"pass": 1, "step_in_pass": 3})
    _t.save(state, ckpt / "rank_0.pt")
    from trainer.integrity import write_manifest

    write_manifest(ckpt, 0)  # signed again, as the trainer signs what it writes (else refused)
    tr2 = Trainer(tr.spec, session, tmp_path)
    seen = []
    orig = tr2.train_step

    def spy(batch):
        seen.append(_lrs(tr2))
        return orig(batch)

    tr2.train_step = spy  # type: ignore[method-assign]
    tr2.run()
    assert seen and seen[0] == ({round(LR * 0.5, 7)}, {round(LR * 0.5, 7)}, {round(DENSE_LR * 0.1, 7)})


def test_all_regularizers_together_through_trainer_run(make_trainer):
    regs = [
        {"type": "sparse_l2", "weight": 1e-3},
        {"type": "sparse_l1", "weight": 1e-4},
        {"type": "max_norm", "c": 0.5},
        {"type": "const_norm", "c": 0.3},
        {"type": "sparse_dropout", "p": 0.1, "per_feature": {"user_id": 0.2}},
        {"type": "dropout", "p": 0.1},
        {"type": "dense_l2", "weight": 1e-4},
        {"type": "sse_se", "p": 0.05},
        {"type": "freeze", "from_pass": 1, "what": "embeddings"},
        {"type": "lr_schedule", "sparse": [1.0, 0.5], "dense": [1.0, 0.5], "reset": True},
    ]
    tr = make_trainer(regs)
    snaps = {}
    orig = tr.regs.on_pass_start

    def spy(p, dmp, opt, resumed=False):
        orig(p, dmp, opt, resumed)
        snaps[p] = snapshot(dmp)

    tr.regs.on_pass_start = spy  # type: ignore[method-assign]
    passes = tr.run()
    assert [p["pass"] for p in passes] == [0, 1]
    assert all(math.isfinite(p["test_ne"]) for p in passes)
    end = snapshot(tr.dmp)
    assert not _changed(snaps[1], end)  # frozen in pass 1, post-step maps included
    # every row touched in pass 0 ended it at norm 0.3 (const_norm runs last)
    for key, w in snaps[1].items():
        moved = (w != snaps[0][key]).any(dim=1)
        assert moved.sum() > 0
        torch.testing.assert_close(
            torch.linalg.vector_norm(w[moved], dim=1),
            torch.full((int(moved.sum()),), 0.3),
            atol=1e-6,
            rtol=1e-6,
        )


def _bn_stats(tr) -> dict[str, torch.Tensor]:
    return {n: b.detach().clone() for n, b in tr.dmp.named_buffers() if "running_" in n or "num_batches" in n}


@pytest.mark.parametrize("what", ["dense", "embeddings"])  # "both" freezes dense the same way
def test_freeze_of_dense_freezes_batch_norm_statistics(make_trainer, what):
    """A frozen dense part is a fixed function: its batch-norm layers normalise with
    the running statistics and stop updating them (embeddings-only freeze: they go on)."""
    tr = make_trainer(
        [{"type": "freeze", "from_pass": 1, "what": what}],
        model={"batch_norm": True},
        data={"synthetic": {"examples_per_day": 256}},
    )
    assert _bn_stats(tr)
    tr.regs.on_pass_start(0, tr.dmp, tr.dense_opt)
    before = _bn_stats(tr)
    tr._train_pass(0, 0)
    after0 = _bn_stats(tr)
    assert _changed(before, after0)  # pass 0 updates the statistics
    tr.regs.on_pass_start(1, tr.dmp, tr.dense_opt)
    tr._train_pass(1, 0)
    frozen = what != "embeddings"
    assert _changed(after0, _bn_stats(tr)) is not frozen
    # training-mode forward == evaluation forward while the dense part is frozen
    batch = first_batch(tr)
    with torch.no_grad():
        train_logits = tr.dmp(batch.dense, batch.sparse)
        tr.dmp.eval()
        eval_logits = tr.dmp(batch.dense, batch.sparse)
    assert torch.equal(train_logits, eval_logits) is frozen


def test_reset_lr_each_pass_trains_exactly_like_lr_schedule_reset(tmp_path):
    """``training.reset_lr_each_pass`` and ``lr_schedule.reset`` are one setting twice
    (trainer/regularizers/schedule.py reset_optimizer_state): the same seed gives the
    same weights after 2 passes either way, and not those of a run with neither."""
    from reg_helpers import make_spec

    from trainer.loop import LocalSession, Trainer

    adam = {"dense_optimizer": {"type": "adam"}, "num_passes": 2}
    runs = {
        "training": make_spec(None, training={**adam, "reset_lr_each_pass": True}),
        "schedule": make_spec([{"type": "lr_schedule", "reset": True}], training=adam),
        "neither": make_spec(None, training=adam),
    }
    out = {}
    for name, spec in runs.items():
        tr = Trainer(spec, LocalSession(tmp_path / name), tmp_path / name)  # a session each: no resume
        tr.run()
        out[name] = {**snapshot(tr.dmp), **dense_snapshot(tr)}
    assert all(torch.equal(out["training"][k], out["schedule"][k]) for k in out["training"])
    assert _changed(out["training"], out["neither"])
