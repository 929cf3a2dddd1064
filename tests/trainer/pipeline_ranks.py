"""One rank of a real 2-process gloo world for tests/trainer/test_pipeline.py: for
each job, the real Trainer (TorchRec DMP, FBGEMM fused row-wise AdaGrad, tables
sharded table-wise over both ranks) runs every pass with ``training.pipeline`` as the
job says (evaluation, divergence checks, pass-end and mid-pass checkpoints as in a
real run); the rank dumps its per-pass results, its embedding shards and dense
weights at the end, and how many lookups went through TorchRec's pipelined forward.

Run as ``python tests/trainer/pipeline_ranks.py RANK WORLD PORT JOBS_JSON OUT_DIR``."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path


def main() -> None:
    rank, world, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    jobs, out = json.loads(Path(sys.argv[4]).read_text()), Path(sys.argv[5])
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)

    import torch
    import torch.distributed as dist
    from torchrec.distributed.train_pipeline.runtime_forwards import PipelinedForward

    from tests.trainer.reshard_worker import DirSession
    from trainer.loop import Trainer
    from trainer.model.sharding import dense_named_parameters
    from trainer.spec import parse_spec

    calls = [0]
    original = PipelinedForward.__call__

    def counting(self, *args, **kwargs):
        calls[0] += 1
        return original(self, *args, **kwargs)

    PipelinedForward.__call__ = counting  # type: ignore[method-assign]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for job in jobs:
            calls[0] = 0
            with tempfile.TemporaryDirectory() as d:
                t = Trainer(parse_spec(job["spec"]), DirSession(rank, world, None, d), d)
                passes = t.run()
                tables = {
                    k: [(s.metadata.shard_offsets[0], s.tensor.detach().clone()) for s in v.local_shards()]
                    for k, v in t.dmp.state_dict().items()
                    if k.startswith("ebc.") and hasattr(v, "local_shards")
                }
                dense = {n: p.detach().clone() for n, p in dense_named_parameters(t.dmp)}
            torch.save(
                {"passes": passes, "tables": tables, "dense": dense, "pipelined_lookups": calls[0]},
                out / f"{job['name']}_rank_{rank}.pt",
            )
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
