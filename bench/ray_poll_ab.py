"""A/B of Ray Train's controller poll, ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``: Ray's
default (2 s) against rectrain's (``trainer.launch.RAY_TRAIN_POLL_S``), on small
2-worker runs of :func:`trainer.launch.run_job` on one local Ray, interleaved (random
order per round) in one process.

A worker's ``ray.train.report`` with a checkpoint waits for the controller's next poll,
and so does the run's end; with a job this small that wait is most of what a run's
``checkpoint`` and ``startup`` parts measure (:func:`trainer.report.wall_split`). Prints
each run's wall and split, the median walls and their ratio, and the load.

Usage: ``python -m bench.ray_poll_ab [ROUNDS] [PASSES]`` (default 3 rounds, 2 passes).
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import tempfile
import time
from typing import Any

RAY_DEFAULT_POLL_S = 2.0  # ray.train.v2._internal.constants.DEFAULT_HEALTH_CHECK_INTERVAL_S


def small_spec(passes: int) -> dict[str, Any]:
    """Two workers, ``passes`` passes of 16 steps over a small synthetic day."""
    return {
        "model": {"embedding_dim": 8, "hash_size": 2000, "dense_arch": [16, 8], "over_arch": [16]},
        "data": {
            "synthetic": {"examples_per_day": 4000, "num_users": 500, "num_ads": 200},
            "batch_size": 256,
        },
        "training": {"num_passes": passes},
        "scaling": {"num_workers": 2},
        "metrics": {"window_size": 1024, "report_every_steps": 5},
    }


def main(rounds: int = 3, passes: int = 2) -> dict[str, float]:
    from trainer.launch import RAY_TRAIN_POLL_ENV, RAY_TRAIN_POLL_S, run_job
    from trainer.spec import parse_spec

    arms = {"ray_default": RAY_DEFAULT_POLL_S, "rectrain": RAY_TRAIN_POLL_S}
    load0 = os.getloadavg()
    print(f"{rounds} rounds x {len(arms)} arms, {passes} passes, 2 workers; load {load0}", flush=True)
    spec = parse_spec(small_spec(passes))
    walls: dict[str, list[float]] = {a: [] for a in arms}
    saved = os.environ.get(RAY_TRAIN_POLL_ENV)
    with tempfile.TemporaryDirectory(prefix="rectrain-poll-ab-") as tmp:
        # a first run starts the local Ray (and warms the OS caches) for both arms
        os.environ[RAY_TRAIN_POLL_ENV] = str(RAY_TRAIN_POLL_S)
        run_job(spec, run_dir=f"{tmp}/warmup", progress=False)
        try:
            for r in range(rounds):
                order = list(arms)
                random.shuffle(order)
                for arm in order:
                    os.environ[RAY_TRAIN_POLL_ENV] = str(arms[arm])
                    t0 = time.perf_counter()
                    res = run_job(spec, run_dir=f"{tmp}/{arm}-{r}", progress=False)
                    wall = time.perf_counter() - t0
                    walls[arm].append(wall)
                    split = {k: round(v, 2) for k, v in (res.wall_split or {}).items() if k != "waiting_s"}
                    print(
                        f"  round {r} {arm:<12} poll {arms[arm]:>4} s  wall {wall:6.2f} s  {split}",
                        flush=True,
                    )
        finally:
            if saved is None:
                os.environ.pop(RAY_TRAIN_POLL_ENV, None)
            else:
                os.environ[RAY_TRAIN_POLL_ENV] = saved
    med = {a: statistics.median(v) for a, v in walls.items()}
    ratio = med["rectrain"] / med["ray_default"]
    print(
        f"median wall: Ray's default poll {med['ray_default']:.2f} s, rectrain's {med['rectrain']:.2f} s; "
        f"ratio {ratio:.2f} (load {load0} before, {os.getloadavg()} after)",
        flush=True,
    )
    return {**{f"{a}_median_s": m for a, m in med.items()}, "ratio": ratio}


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
