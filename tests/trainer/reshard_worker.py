"""Worker processes for the resharding tests: a real gloo world of N ranks on loopback,
each building the Trainer, training or resuming, checkpointing with DCP and dumping
its shards (with their global offsets) for the test to compare."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch


class DirSession:
    """A Session for a plain process group: checkpoints merge into one directory, as
    Ray Train merges every rank's files into its checkpoint directory."""

    def __init__(self, rank: int, world_size: int, resume_from: str | None, save_to: str) -> None:
        self.rank, self.world_size = rank, world_size
        self.device = torch.device("cpu")
        self.resume_from, self.save_to = resume_from, save_to

    def checkpoint_dir(self) -> str | None:
        return self.resume_from

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        if checkpoint_dir:
            shutil.copytree(checkpoint_dir, self.save_to, dirs_exist_ok=True)


def shards(trainer) -> dict[str, list[tuple[list[int], torch.Tensor]]]:
    """Every embedding table and AdaGrad state this rank holds: name -> [(offsets, tensor)]."""
    out: dict[str, list[tuple[list[int], torch.Tensor]]] = {}
    sd = trainer.dmp.state_dict()
    items = [(k, v) for k, v in sd.items() if hasattr(v, "local_shards")]
    for states in trainer.dmp.fused_optimizer.state_dict()["state"].values():
        items += [(k, v) for k, v in states.items() if hasattr(v, "local_shards")]
    for k, v in items:
        out[k] = [(list(s.metadata.shard_offsets), s.tensor.detach().clone()) for s in v.local_shards()]
    dense = {k: v.detach().clone() for k, v in sd.items() if not hasattr(v, "local_shards")}
    return {"sharded": out, "dense": dense}


def assemble(dumps: list[dict]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Whole tables from every rank's shards (and rank 0's replicated dense weights)."""
    parts: dict[str, list] = {}
    for d in dumps:
        for k, lst in d["sharded"].items():
            parts.setdefault(k, []).extend(lst)
    full = {}
    for k, lst in parts.items():
        shape = [max(o[i] + t.shape[i] for o, t in lst) for i in range(lst[0][1].dim())]
        x = torch.full(shape, float("nan"))
        for o, t in lst:
            x[tuple(slice(a, a + n) for a, n in zip(o, t.shape, strict=True))] = t
        full[k] = x
    return full, dumps[0]["dense"]


def run_rank(
    rank: int, world: int, port: int, spec_dict: dict, train_steps: int, resume_from, save_to, dump_dir
):
    import torch.distributed as dist

    from trainer.loop import Trainer
    from trainer.spec import parse_spec

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        spec = parse_spec(spec_dict)
        session = DirSession(rank, world, resume_from, save_to)
        t = Trainer(spec, session, save_to)
        start = t._resume()
        if train_steps:
            for b in list(t.data.train_batches(0))[:train_steps]:
                t.train_step(b)
                t.global_step += 1
            t.checkpoint(0, train_steps, {})
        torch.save(
            {"start": start, "global_step": t.global_step, **shards(t)}, Path(dump_dir) / f"rank_{rank}.pt"
        )
    finally:
        dist.destroy_process_group()
