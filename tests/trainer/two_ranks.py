"""One rank of a real 2-process gloo world running the real Trainer (TorchRec DMP,
FBGEMM), for the tests of tests/trainer/test_two_ranks.py.

Run as ``python tests/trainer/two_ranks.py RANK WORLD PORT OUT_DIR``. The rank builds
the Trainer of :data:`SPEC`, keeps its local embedding shards as initialised, trains
one pass, keeps its batch-norm statistics, evaluates (which averages them first) and
keeps them again, recording every collective the trainer's wrapper issues; all of
it goes to ``OUT_DIR/rank_{RANK}.pt``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from tests.gloo_ranks import RankSession

SPEC = {
    "model": {
        "embedding_dim": 8,
        "hash_size": 400,
        "dense_arch": [8, 8],
        "over_arch": [8],
        "batch_norm": True,
    },
    "data": {
        "synthetic": {
            "examples_per_day": 512,
            "num_users": 300,
            "num_ads": 150,
            "num_context_features": 1,
            "history_length": 3,
            "num_dense_features": 4,
            "seed": 3,
        },
        "train_days": [0],
        "test_days": [1],
        "batch_size": 64,
        "prefetch_batches": 0,
    },
    "training": {"num_passes": 1, "seed": 11},
    "metrics": {"window_size": 128, "report_every_steps": 1000},
}


def local_tables(dmp) -> dict[str, list[tuple[int, "torch.Tensor"]]]:  # noqa: F821
    """Table name -> [(row offset, local shard rows)], read from the DMP state dict."""
    out: dict[str, list] = {}
    for key, value in dmp.state_dict().items():
        if not (key.startswith("ebc.embedding_bags.") and key.endswith(".weight")):
            continue
        name = key.split(".")[2]
        for shard in value.local_shards():
            assert shard.metadata.shard_offsets[1] == 0, "column-wise shard"
            out.setdefault(name, []).append((shard.metadata.shard_offsets[0], shard.tensor.detach().clone()))
    return out


def main() -> None:
    rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    import logging
    import warnings

    import torch
    import torch.distributed as dist

    from trainer.collectives import Collectives
    from trainer.loop import Trainer
    from trainer.model.dlrm import batch_norm_statistics
    from trainer.spec import parse_spec

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)

    calls: list[tuple[str, list[str]]] = []

    class Recording(Collectives):
        def _run(self, fn, tensors, *args, **kwargs):
            calls.append((fn.__name__, [str(t.device) for t in tensors]))
            super()._run(fn, tensors, *args, **kwargs)

    spec = parse_spec(SPEC)
    session = RankSession(rank, world)
    with tempfile.TemporaryDirectory() as run_dir:
        tr = Trainer(spec, session, run_dir)
        tr.collectives = Recording(session.device)
        tables = local_tables(tr.dmp)
        tr.regs.on_pass_start(0, tr.dmp, tr.dense_opt)
        _, seconds, examples, cpu_total = tr._train_pass(0, 0)
        cpu_own = tr.last_pass_cpu_seconds
        bn_trained = [b.detach().clone() for b in batch_norm_statistics(tr.dmp)]
        tr.evaluate()
        bn_eval = [b.detach().clone() for b in batch_norm_statistics(tr.dmp)]
    torch.save(
        {
            "tables": tables,
            "bn_trained": bn_trained,
            "bn_eval": bn_eval,
            "calls": calls,
            "device": str(session.device),
            "pass_seconds": seconds,
            "pass_examples": examples,
            "cpu_total": cpu_total,  # summed over the ranks by the trainer
            "cpu_own": cpu_own,  # this rank's own share
        },
        out / f"rank_{rank}.pt",
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
