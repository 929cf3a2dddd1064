"""One rank of a real 2-process gloo world for tests/regularizers/test_reset_min_count.py.

Run as ``python tests/regularizers/two_ranks_reset.py RANK WORLD PORT OUT_DIR``. The
rank builds the real Trainer (TorchRec DMP, FBGEMM fused row-wise AdaGrad, tables
placed table-wise over the two ranks) of :func:`spec` (``embedding_reset`` every pass,
``min_count`` on the data path), trains pass 0, keeps its local shards and AdaGrad
state, starts pass 1 (the reset), keeps them again with the dense weights, trains
:data:`STEPS` steps of pass 1 keeping the shards after each; all of it goes to
``OUT_DIR/rank_{RANK}.pt``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from tests.gloo_ranks import RankSession

STEPS = 20
REGS = [{"type": "embedding_reset", "every": 1}, {"type": "min_count", "k": 3}]


def spec():
    from reg_helpers import make_spec

    return make_spec(
        REGS,
        data={"synthetic": {"examples_per_day": 64 * 2 * STEPS}},
        scaling={"num_workers": 2},
    )


def local_states(dmp) -> dict[str, list[tuple[int, "torch.Tensor"]]]:  # noqa: F821
    """Table name -> [(row offset, local row-wise AdaGrad state)] of the fused optimizer."""
    out: dict[str, list] = {}
    for key, states in dmp.fused_optimizer.state_dict()["state"].items():
        name = key.rsplit(".", 2)[-2]
        for st in states.values():
            for shard in st.local_shards():
                out.setdefault(name, []).append(
                    (shard.metadata.shard_offsets[0], shard.tensor.detach().clone())
                )
    return out


def main() -> None:
    rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    import torch
    import torch.distributed as dist

    from tests.trainer.two_ranks import local_tables
    from trainer.loop import Trainer
    from trainer.model.sharding import dense_named_parameters

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    with tempfile.TemporaryDirectory() as run_dir:
        tr = Trainer(spec(), RankSession(rank, world), run_dir)
        tr.regs.on_pass_start(0, tr.dmp, tr.dense_opt)
        tr._train_pass(0, 0)
        before = {"tables": local_tables(tr.dmp), "states": local_states(tr.dmp)}
        tr.regs.on_pass_start(1, tr.dmp, tr.dense_opt)
        reset = {"tables": local_tables(tr.dmp), "states": local_states(tr.dmp)}
        dense = {n: p.detach().clone() for n, p in dense_named_parameters(tr.dmp)}
        tr.regs.train_mode(1, tr.dmp)
        after = []  # the shards after each step
        for step, batch in enumerate(tr.data.train_batches(1)):
            if step == STEPS:
                break
            tr.train_step(batch)
            after.append(local_tables(tr.dmp))
    torch.save({"before": before, "reset": reset, "dense": dense, "after": after}, out / f"rank_{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
