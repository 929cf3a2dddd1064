"""Checkpoints restore the sharded embeddings, the fused AdaGrad state and the dense optimizer exactly."""

import torch

from tests.trainer.specs import tiny_spec_dict
from trainer.loop import LocalSession, Trainer
from trainer.spec import parse_spec


def _snapshot(t: Trainer):
    sd = t.dmp.state_dict()
    emb = {
        k: torch.cat([s.tensor.clone() for s in v.local_shards()])
        for k, v in sd.items()
        if hasattr(v, "local_shards")
    }
    dense = {k: v.clone() for k, v in sd.items() if not hasattr(v, "local_shards")}
    mom = {}
    for states in t.dmp.fused_optimizer.state_dict()["state"].values():
        for k, st in states.items():
            mom[k] = torch.cat([s.tensor.clone() for s in st.local_shards()])
    return emb, dense, mom


def _equal(a, b):
    return all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()


def test_save_then_load_restores_everything(tmp_path):
    spec = parse_spec(tiny_spec_dict())
    session = LocalSession(tmp_path)
    t = Trainer(spec, session, tmp_path)
    batches = list(t.data.train_batches(0))
    for b in batches[:3]:
        t.train_step(b)
    t.global_step = 3
    t.checkpoint(0, 3, {})
    saved = _snapshot(t)
    assert any(v.abs().sum() > 0 for v in saved[2].values())  # AdaGrad state is non-trivial
    for b in batches[3:6]:
        t.train_step(b)
    moved = _snapshot(t)
    assert not _equal(saved[0], moved[0]) and not _equal(saved[2], moved[2])

    # a fresh trainer (new model, new optimizers) resumes from the checkpoint
    t2 = Trainer(spec, session, tmp_path)
    start_pass, start_step = t2._resume()
    assert (start_pass, start_step, t2.global_step) == (0, 3, 3)
    restored = _snapshot(t2)
    for got, want in zip(restored, saved, strict=True):
        assert _equal(got, want)
    # the dense optimizer state came back too
    st2 = t2.dense_opt.state_dict()["state"]
    st1 = t.dense_opt.state_dict()["state"]
    assert st2 and st2.keys() == st1.keys()
