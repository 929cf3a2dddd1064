"""The dot interaction's autograd function against the plain autograd computation,
and a whole model trained N steps with it against the same model with the plain
interaction (the step's numerics must not change with the performance work)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from trainer.loop import LocalSession, Trainer
from trainer.model.dlrm import DLRM
from trainer.model.interaction import dot_interaction, triu_flat_index

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "regularizers"))
from reg_helpers import make_spec, train_losses  # noqa: E402


def plain_interaction(dense: torch.Tensor | None, emb: torch.Tensor) -> torch.Tensor:
    """What DLRM did before: stack, Gram matrix by bmm, upper triangle, cat."""
    vecs = ([dense] if dense is not None else []) + list(emb.unbind(1))
    x = torch.stack(vecs, dim=1)
    n = x.shape[1]
    gram = torch.bmm(x, x.transpose(1, 2))
    iu = torch.triu_indices(n, n, offset=1)
    tri = gram[:, iu[0], iu[1]]
    return torch.cat([dense, tri], dim=1) if dense is not None else tri


@pytest.mark.parametrize("with_dense", [True, False])
def test_forward_and_backward_match_autograd(with_dense):
    g = torch.Generator().manual_seed(0)
    b, f, d = 7, 5, 6
    dense = torch.randn(b, d, generator=g, dtype=torch.float64, requires_grad=True) if with_dense else None
    emb = torch.randn(b, f, d, generator=g, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(
        b, (d + f if with_dense else 0) + f * (f - 1) // 2, generator=g, dtype=torch.float64
    )

    ours = dot_interaction(dense, emb, triu_flat_index(f))
    ref = plain_interaction(dense, emb)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)

    inputs = [t for t in (dense, emb) if t is not None]
    g_ours = torch.autograd.grad((ours * upstream).sum(), inputs)
    g_ref = torch.autograd.grad((ref * upstream).sum(), inputs)
    for a, r in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


def test_gradcheck():
    dense = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    emb = torch.randn(3, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, e: dot_interaction(a, e, triu_flat_index(4)), (dense, emb))


def _plain_forward(self, dense, sparse):
    pooled = self.ebc(sparse).to_dict()
    embs = []
    for f in self.features:
        keys = [k for k in self._keys if k.startswith(f"{f}__r")]
        e = pooled[keys[0]]
        for k in keys[1:]:
            e = e + pooled[k]
        embs.append(e)
    d = self.dense_arch(dense) if self.dense_arch is not None else None
    emb = torch.stack(embs, dim=1)
    if self.interaction.value == "dot":
        x = plain_interaction(d, emb)
    else:
        x = torch.cat(([d] if d is not None else []) + embs, dim=1)
    return self.over_arch(x).squeeze(1)


def _losses(tmp_path, spec, steps: int) -> list[float]:
    return train_losses(Trainer(spec, LocalSession(tmp_path), tmp_path), steps)


@pytest.mark.parametrize("interaction,replicas", [("dot", 1), ("dot", 2), ("concat", 1)])
def test_training_numerics_unchanged(tmp_path, monkeypatch, interaction, replicas):
    """Loss over 8 steps (real DMP + fused FBGEMM) with the new forward equals the
    plain forward's to 1e-5 relative: the same arithmetic in another order, float32
    rounding (~1e-7 per op) amplified by 8 optimizer steps stays far below it, while
    a wrong pair order or a missing gradient term moves the loss by >1e-3."""
    over = {"model": {"interaction": interaction, "num_replicas": replicas}}
    spec = make_spec(None, **over)
    new = _losses(tmp_path / "new", spec, 8)
    monkeypatch.setattr(DLRM, "forward", _plain_forward)
    old = _losses(tmp_path / "old", spec, 8)
    assert len(new) == len(old) == 8
    torch.testing.assert_close(torch.tensor(new), torch.tensor(old), rtol=1e-5, atol=1e-6)


def test_fused_adam_matches_default():
    """The dense optimizer is Adam(fused=True): same updates as the default
    implementation to float32 rounding over several steps."""
    from trainer.model.sharding import make_dense_optimizer

    spec = make_spec(None, training={"dense_optimizer": {"type": "adam", "lr": 0.01}})
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 1))
    b = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 1))
    b.load_state_dict(a.state_dict())
    fused = make_dense_optimizer([{"params": list(a.parameters())}], spec)
    assert fused.defaults.get("fused") is True
    plain = torch.optim.Adam(b.parameters(), lr=0.01)
    x, y = torch.randn(32, 6), torch.rand(32)
    for _ in range(5):
        for m, opt in ((a, fused), (b, plain)):
            opt.zero_grad()
            F.binary_cross_entropy_with_logits(m(x).squeeze(1), y).backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
