"""A/B of the rectrain step before and after the issue-15 changes, and against the peer.

Two in-process trainers on the main shape (26 x 100k x 64, batch 2048, dot interaction)
and TorchRec's own loop, interleaved on the same in-memory batches: ``new`` is the
trainer as it is; ``old`` is the same trainer with the plain interaction (stack, bmm,
index_select, cat: ``tests/trainer/test_interaction.py``'s reference forward) and the
default (for-loop) Adam; ``peer`` is :class:`bench.peer.PeerPath`. Prints per-path
median examples/s and median per-round ratios.

Usage: ``python -m bench.step_ab [THREADS]`` (default 2 intra-op threads).
"""

from __future__ import annotations

import random
import statistics
import sys
import types
import warnings
from pathlib import Path


def main(threads: int = 2, rounds: int = 12, block: int = 4) -> dict[str, float]:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "trainer"))
    from test_interaction import _plain_forward  # the reference forward (before issue 15)

    from bench.paths import TrainerPaths, Workload
    from bench.peer import PeerPath

    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    w = Workload()
    new = TrainerPaths(w, 16, "cpu")
    batches = new.build_prebuilt(8)
    old = TrainerPaths(w, 16, "cpu")
    old.prebuilt = batches
    m = old.trainer.dmp.module
    m.forward = types.MethodType(_plain_forward, m)
    o = old.spec.training.dense_optimizer
    old.trainer.dense_opt = torch.optim.Adam(old.trainer.dense_params, lr=o.lr, betas=o.betas, eps=o.eps)
    peer = PeerPath(w, new)
    peer.set_batches(batches)
    loops = {"new": new.prebuilt_loop, "old": old.prebuilt_loop, "peer": peer.loop}
    for f in loops.values():
        f(2)
    res: dict[str, list[float]] = {k: [] for k in loops}
    rng = random.Random(0)
    for _ in range(rounds):
        for k in rng.sample(list(loops), len(loops)):
            ex, s = loops[k](block)
            res[k].append(ex / s)
    for k, v in res.items():
        print(f"{k:5s} median {statistics.median(v):,.0f} ex/s  rounds {[round(x) for x in v]}")
    out = {}
    for a, c in (("new", "old"), ("new", "peer"), ("old", "peer")):
        rr = [x / y for x, y in zip(res[a], res[c], strict=True)]
        out[f"{a}/{c}"] = statistics.median(rr)
        print(f"{a}/{c}: median {out[f'{a}/{c}']:.3f}  (min {min(rr):.3f} max {max(rr):.3f})")
    return out


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
