"""``training.compile``: torch.compile of the dense part (dense arch, interaction,
over arch) under DMP trains to the same losses as eager, keeps the model's state_dict
keys (checkpoints load either way) and evaluates with the same logits."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.loop import LocalSession, Trainer
from trainer.spec import SpecError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "regularizers"))
from reg_helpers import make_spec, train_losses  # noqa: E402

STEPS = 8


def _train(tmp_path: Path, compile_: bool) -> tuple[Trainer, list[float]]:
    # batch norm on: the compiled graph updates the running statistics (buffers) too
    spec = make_spec(None, model={"batch_norm": True}, training={"compile": compile_})
    tr = Trainer(spec, LocalSession(tmp_path), tmp_path)
    return tr, train_losses(tr, STEPS)


def _eval_logits(tr: Trainer) -> torch.Tensor:
    batch = next(iter(tr.data.eval_batches("test")))
    tr.dmp.eval()
    with torch.no_grad():
        out = tr.dmp(batch.dense, batch.sparse)
    tr.dmp.train()
    return out


def test_compiled_dense_part_trains_like_eager(tmp_path):
    """Losses over 8 steps (real DMP + fused FBGEMM + fused Adam) equal eager's to 1e-5
    relative: inductor runs the same ops (its matmuls are the same BLAS calls), only
    elementwise work is fused, so the difference is float32 reordering (~1e-7 per op)
    amplified by 8 optimizer steps; a lost gradient term or a batch-norm update that
    did not happen moves the loss by >1e-3."""
    eager, le = _train(tmp_path / "eager", False)
    comp, lc = _train(tmp_path / "compiled", True)
    model = comp.dmp.module
    assert model._dense_compiled is not None and eager.dmp.module._dense_compiled is None
    torch.testing.assert_close(torch.tensor(lc), torch.tensor(le), rtol=1e-5, atol=1e-6)
    # no "_orig_mod." or other wrapper in the names: checkpoints are interchangeable
    assert list(comp.dmp.state_dict()) == list(eager.dmp.state_dict())
    assert [n for n, _ in comp.dmp.named_parameters()] == [n for n, _ in eager.dmp.named_parameters()]
    # evaluation (no grad, batch norm in eval mode: a second graph) agrees too
    torch.testing.assert_close(_eval_logits(comp), _eval_logits(eager), rtol=1e-5, atol=1e-5)

    # a checkpoint of the compiled trainer loads into an eager one and scores the same
    ckpt = tmp_path / "ckpt"
    save_checkpoint(ckpt, rank=0, world_size=1, dmp=comp.dmp, dense_opt=comp.dense_opt, rank_state={})
    fresh, _ = _train(tmp_path / "fresh", False)
    load_checkpoint(ckpt, rank=0, world_size=1, dmp=fresh.dmp, dense_opt=fresh.dense_opt)
    torch.testing.assert_close(_eval_logits(fresh), _eval_logits(comp), rtol=1e-6, atol=1e-6)


def test_compile_is_off_by_default():
    assert make_spec(None).training.compile is False
    with pytest.raises(SpecError, match="training.compile"):
        make_spec(None, training={"compile": "sometimes"})
