"""One rank of a real 2-process gloo world for the 2-rank regularizer tests
(``freq_decay``, ``sparse_l2`` modes): for each job the real Trainer (TorchRec DMP,
FBGEMM fused row-wise AdaGrad, tables sharded table-wise over both ranks) trains
``steps`` steps over passes 0, 1, ... and checkpoints with DCP; the rank dumps its
initial and final shards (with their global row offsets), the dense weights, and
freq_decay's per-row state and clock. Several jobs share one spawn (one start-up)."""

from __future__ import annotations

from pathlib import Path

import torch


def _tables(trainer) -> dict[str, list[tuple[int, torch.Tensor]]]:
    """KJT key -> [(row offset, local rows)] of this rank's embedding shards."""
    out: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for key, value in trainer.dmp.state_dict().items():
        if key.startswith("ebc.embedding_bags.") and key.endswith(".weight"):
            for s in value.local_shards():
                out.setdefault(key.split(".")[2][2:], []).append(
                    (s.metadata.shard_offsets[0], s.tensor.detach().clone())
                )
    return out


def freq_state(trainer) -> tuple[int, dict[str, list[tuple[int, torch.Tensor]]]]:
    """(clock, KJT key -> [(row offset, last-read clock of the local rows)])."""
    from trainer.regularizers.freq_decay import CLOCK_KEY, LAST_PREFIX

    sd = trainer.regs.checkpoint_state()
    last: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for k, v in sd.items():
        if k.startswith(LAST_PREFIX):
            for s in v.local_shards():
                last.setdefault(k[len(LAST_PREFIX) + 2 :], []).append(
                    (s.metadata.shard_offsets[0], s.tensor.clone())
                )
    return int(sd[CLOCK_KEY]), last


def assemble(parts: list[dict[str, list[tuple[int, torch.Tensor]]]]) -> dict[str, torch.Tensor]:
    """Whole tables from every rank's (offset, rows) parts."""
    got: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for p in parts:
        for k, lst in p.items():
            got.setdefault(k, []).extend(lst)
    return {k: torch.cat([t for _, t in sorted(v, key=lambda x: x[0])]) for k, v in got.items()}


def run_rank(rank: int, world: int, port: int, jobs: list[dict], dump_dir: str):
    """Each job (``spec``, ``steps``, ``save_to``, ``name``) in turn on this process group;
    the rank's dump of job ``name`` goes to ``dump_dir/<name>_rank_<r>.pt``."""
    import torch.distributed as dist

    from tests.trainer.reshard_worker import DirSession
    from trainer.loop import Trainer
    from trainer.model.sharding import dense_named_parameters
    from trainer.spec import parse_spec

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        for job in jobs:
            steps, save_to = job["steps"], job["save_to"]
            t = Trainer(parse_spec(job["spec"]), DirSession(rank, world, None, save_to), save_to)
            init = {
                "tables": _tables(t),
                "dense": {n: p.detach().clone() for n, p in dense_named_parameters(t.dmp)},
            }
            done, p = 0, 0
            while done < steps:
                t.regs.on_pass_start(p, t.dmp, t.dense_opt)
                for b in t.data.train_batches(p):
                    if done == steps:
                        break
                    t.train_step(b)
                    t.global_step += 1
                    done += 1
                p += 1
            t.checkpoint(p - 1, done, {})
            clock, last = freq_state(t) if t.regs.freq_decay is not None else (0, {})
            torch.save(
                {
                    "init": init,
                    "tables": _tables(t),
                    "dense": {n: p.detach().clone() for n, p in dense_named_parameters(t.dmp)},
                    "clock": clock,
                    "last": last,
                },
                Path(dump_dir) / f"{job['name']}_rank_{rank}.pt",
            )
    finally:
        dist.destroy_process_group()
