"""Regularizers on 2 Ray workers with the tables sharded across both ranks, in one run
(max_norm + shrink + max_entropy + sse_graph, composed):

- max_norm: after the run no embedding row on any shard has norm > c, and the bound
  was active (without it the same training pushes rows far beyond c);
- shrink (s = 1, at the pass end, rows read fewer than K times) agrees exactly with
  an in-process reference: the rows zeroed on each shard are exactly those read
  1..K-1 times in the pass by *both* ranks' batches, recomputed here from the data
  (including sse_graph's neighbour swaps, which the reference redraws with the same
  per-(seed, pass, rank, step) generators); rows read K or more times or never are not
  zero. max_entropy runs in the same loss (composition only; its gradient is checked
  against autograd in test_shrink_entropy.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from reg_helpers import spec_dict, tbe_tables

from trainer.checkpoint import read_model_state, shard_owners
from trainer.data.dataset import RankData
from trainer.launch import run_job
from trainer.loop import Trainer
from trainer.spec import parse_spec

C = 1.0
K = 3
ON_TOP = [
    {"type": "shrink", "s": 1.0, "max_count": K},
    {"type": "max_entropy", "weight": 0.01},
    {"type": "sse_graph", "p": 0.2},
]


def _spec(max_norm: bool):
    regs = [{"type": "max_norm", "c": C}, *ON_TOP] if max_norm else []
    return parse_spec(
        spec_dict(
            regs,
            training={"num_passes": 1, "sparse_optimizer": {"lr": 1.0}},
            data={"synthetic": {"examples_per_day": 1024}, "test_days": [1]},
            scaling={"num_workers": 2, "cpus_per_worker": 1},
        )
    )


def _latest_checkpoint(run_dir: Path) -> Path:
    ckpts = sorted(p for p in (run_dir / "ray" / "train").glob("checkpoint_*") if p.is_dir())
    assert ckpts, f"no Ray checkpoint under {run_dir}"
    return ckpts[-1]


def _reference_counts(spec) -> dict[str, torch.Tensor]:
    """Per table: reads of each row in pass 0 by both ranks' (sse_graph-rewritten) batches."""
    counts: dict[str, torch.Tensor] = {}
    for rank in (0, 1):
        for b in RankData(spec, rank, 2).train_batches(0):
            for key in b.sparse.keys():
                c = torch.bincount(b.sparse[key].values().long(), minlength=spec.model.hash_size)
                counts[key] = counts.get(key, 0) + c
    return counts


@pytest.mark.ray
@pytest.mark.slow
def test_regularizers_hold_on_every_shard_with_two_ray_workers(ray_address, tmp_path, session):
    # control, in process: without max_norm this training leaves rows far above C
    control = Trainer(_spec(max_norm=False), session, tmp_path / "control")
    control.run()
    top = max(float(torch.linalg.vector_norm(w, dim=1).max()) for w, _ in tbe_tables(control.dmp).values())
    assert top > 1.5 * C, top

    spec = _spec(max_norm=True)
    counts = _reference_counts(spec)
    out = run_job(spec, run_dir=tmp_path / "run", ray_address=ray_address, progress=False)
    assert out.status == "succeeded"
    ckpt = _latest_checkpoint(tmp_path / "run")
    tables_by_rank: dict[int, list[str]] = {}
    weights, owners = read_model_state(ckpt), shard_owners(ckpt)
    for rank in (0, 1):
        held = []
        at_bound = zeroed = 0
        for name, ranks in owners.items():
            if not (name.startswith("ebc.") and rank in ranks):
                continue
            held.append(name)
            norms = torch.linalg.vector_norm(weights[name], dim=1)
            assert float(norms.max()) <= C + 1e-6, (rank, name, float(norms.max()))
            at_bound += int((norms > C * (1 - 1e-4)).sum())
            # shrink: whole tables here (table-wise at this size); exact rows zeroed
            assert weights[name].shape[0] == spec.model.hash_size, (name, weights[name].shape)
            c = counts[name.split(".")[2][2:]]
            rare = (c > 0) & (c < K)
            assert torch.equal(norms[rare], torch.zeros_like(norms[rare])), (rank, name)
            assert bool((norms[~rare] > 0).all()), (rank, name, int((norms[~rare] == 0).sum()))
            zeroed += int(rare.sum())
        assert held, f"rank {rank} holds no embedding shard"
        assert at_bound > 0, f"rank {rank}: no row reached the bound, max_norm was never active"
        assert zeroed > 0, f"rank {rank}: shrink zeroed no row"
        tables_by_rank[rank] = held
    assert set(tables_by_rank[0]) | set(tables_by_rank[1]) == {
        f"ebc.embedding_bags.t_{f}__r0.weight" for f in ("user_id", "ad_id", "ad_history", "ctx_0")
    }
