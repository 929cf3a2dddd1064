"""A/B of Ray's ``preload_python_modules`` for cold single jobs: does a head whose worker
processes import torch, torchrec and FBGEMM before they take work start a Ray Train job
sooner? (Tried for the suite's and the service's cold-job start-up; it did not pay, see
BENCHMARKS.md "Ray worker preloading".)

For each round and arm (random order per round) it starts a fresh local Ray head the way
``rectrain serve`` does (:class:`services.local_ray.LocalRayHead`, loopback only, its own
temp dir and ports), with ``RAY_preload_python_modules`` set or not, then one driver
process runs ``JOBS`` small 2-worker jobs (:func:`bench.ray_poll_ab.small_spec`) on it one
after another, as the test session and serve do. Prints each job's wall and its ``startup``
event's parts ("to the worker": Ray Train's controller, the worker processes, their
imports, the process group; "worker set-up": the worker's own imports), the medians per
arm over the jobs after each head's first, and the load.

Usage: ``python -m bench.ray_preload_ab [ROUNDS] [JOBS]`` (default 2 rounds, 3 jobs a head).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PRELOAD_ENV = "RAY_preload_python_modules"  # Ray's system config, read by the raylet
PRELOAD = "torch,torchrec,fbgemm_gpu"
REPO = Path(__file__).resolve().parents[1]

# the driver: one Ray connection, JOBS cold Ray Train fits, one JSON line each
_DRIVER = """
import json, sys, tempfile, time
import ray
ray.init(address=sys.argv[1], log_to_driver=False)
from bench.ray_poll_ab import small_spec
from trainer.launch import run_job
from trainer.spec import parse_spec
spec = parse_spec(small_spec(2))
with tempfile.TemporaryDirectory() as tmp:
    for j in range(int(sys.argv[2])):
        t0 = time.perf_counter()
        run_job(spec, run_dir=f"{tmp}/j{j}", progress=False)
        wall = time.perf_counter() - t0
        with open(f"{tmp}/j{j}/events.jsonl") as f:
            (st,) = [e for e in map(json.loads, f) if e.get("phase") == "startup"]
        print(json.dumps({"job": j, "wall_s": wall, "parts": st["startup_s"]}), flush=True)
"""


def _one_head(arm: str, jobs: int, tmp: str) -> list[dict]:
    from services.launch_env import pythonpath_with
    from services.local_ray import LocalRayHead

    saved = os.environ.pop(PRELOAD_ENV, None)
    if arm == "preload":
        os.environ[PRELOAD_ENV] = PRELOAD
    head = LocalRayHead(Path(tmp) / f"head-{arm}.log", nice=0)
    try:
        head.start()
        env = {**os.environ, "RAY_ADDRESS": head.address, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = pythonpath_with(REPO, env=env)
        out = subprocess.run(
            [sys.executable, "-c", _DRIVER, head.address, str(jobs)],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"the driver failed ({out.returncode}): {out.stderr[-2000:]}")
        return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    finally:
        head.stop()
        os.environ.pop(PRELOAD_ENV, None)
        if saved is not None:
            os.environ[PRELOAD_ENV] = saved


def main(rounds: int = 2, jobs: int = 3) -> dict[str, float]:
    arms = ("none", "preload")
    load0 = os.getloadavg()
    print(
        f"{rounds} rounds x {len(arms)} arms, {jobs} jobs a head; preload {PRELOAD}; load {load0}", flush=True
    )
    later: dict[str, list[dict]] = {a: [] for a in arms}
    with tempfile.TemporaryDirectory(prefix="rectrain-preload-ab-") as tmp:
        for r in range(rounds):
            order = list(arms)
            random.shuffle(order)
            for arm in order:
                for job in _one_head(arm, jobs, tmp):
                    p = job["parts"]
                    print(
                        f"  round {r} {arm:<8} job {job['job']}  wall {job['wall_s']:6.2f} s  "
                        f"to the worker {p.get('worker', 0):5.2f} s  worker set-up {p.get('trainer', 0):5.2f} s",
                        flush=True,
                    )
                    if job["job"] > 0:  # the head's first job also pays the driver's imports
                        later[arm].append(job)
    med = {a: statistics.median(j["wall_s"] for j in v) for a, v in later.items()}
    worker = {a: statistics.median(j["parts"].get("worker", 0) for j in v) for a, v in later.items()}
    ratio = med["preload"] / med["none"]
    print(
        f"median wall (jobs after a head's first): none {med['none']:.2f} s, preload {med['preload']:.2f} s, "
        f"ratio {ratio:.2f}; to the worker {worker['none']:.2f} vs {worker['preload']:.2f} s "
        f"(load {load0} before, {os.getloadavg()} after)",
        flush=True,
    )
    return {"none_median_s": med["none"], "preload_median_s": med["preload"], "ratio": ratio}


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
