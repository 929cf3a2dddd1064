"""max_norm on 2 Ray workers with the tables sharded across both ranks: after the
run no embedding row on any shard has norm > c, and the bound was active (without
it the same training pushes rows far beyond c)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from reg_helpers import spec_dict, tbe_tables

from trainer.launch import run_job
from trainer.loop import Trainer
from trainer.spec import parse_spec

C = 1.0


def _spec(max_norm: bool):
    regs = [{"type": "max_norm", "c": C}] if max_norm else []
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


@pytest.mark.ray
@pytest.mark.slow
def test_max_norm_holds_on_every_shard_with_two_ray_workers(ray_address, tmp_path, session):
    # control, in process: without max_norm this training leaves rows far above C
    control = Trainer(_spec(max_norm=False), session, tmp_path / "control")
    control.run()
    top = max(float(torch.linalg.vector_norm(w, dim=1).max()) for w, _ in tbe_tables(control.dmp).values())
    assert top > 1.5 * C, top

    out = run_job(_spec(max_norm=True), run_dir=tmp_path / "run", ray_address=ray_address, progress=False)
    assert out["status"] == "succeeded"
    ckpt = _latest_checkpoint(tmp_path / "run")
    tables_by_rank: dict[int, list[str]] = {}
    for rank in (0, 1):
        state = torch.load(ckpt / f"rank_{rank}.pt", map_location="cpu", weights_only=False)
        held = []
        at_bound = 0
        for name, value in state["model"].items():
            if not (name.startswith("ebc.") and isinstance(value, dict) and "__shards__" in value):
                continue
            for shard in value["__shards__"]:
                if shard.numel() == 0:
                    continue
                held.append(name)
                norms = torch.linalg.vector_norm(shard, dim=1)
                assert float(norms.max()) <= C + 1e-6, (rank, name, float(norms.max()))
                at_bound += int((norms > C * (1 - 1e-4)).sum())
        assert held, f"rank {rank} holds no embedding shard"
        assert at_bound > 0, f"rank {rank}: no row reached the bound, max_norm was never active"
        tables_by_rank[rank] = held
    assert set(tables_by_rank[0]) | set(tables_by_rank[1]) == {
        f"ebc.embedding_bags.t_{f}__r0.weight" for f in ("user_id", "ad_id", "ad_history", "ctx_0")
    }
