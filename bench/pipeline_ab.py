"""A/B of ``training.pipeline`` on the CPU: TorchRec's sparse-dist pipeline against one
step at a time, on the rectrain step at the main shape (26 x 100k x 64, batch 2048, dot
interaction).

Two in-process trainers (world size 1, DMP-sharded, gloo) from the same spec and seed
(same initial weights), ``none`` (:func:`trainer.pipeline.plain_steps`, what a pass runs
by default on the CPU) and ``sparse_dist`` (:func:`trainer.pipeline.pipelined_steps`),
each fed the same in-memory batches. Interleaved rounds (random order per round) of
``block`` steps; each round is a fresh pipeline (filled, drained and detached, as a pass
of ``block`` steps); median of the per-round ratios sparse_dist / none. Both trainers
take the same steps on the same batches, so their logits are compared on the way
(the pipeline must not change the numbers).

Usage: ``python -m bench.pipeline_ab [THREADS] [ROUNDS] [BLOCK]`` (default 2 threads,
12 rounds of 16 steps).
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
import warnings


def main(threads: int = 2, rounds: int = 12, block: int = 16) -> dict[str, float]:
    import torch

    from bench.paths import TrainerPaths, Workload
    from trainer import pipeline

    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    load0 = os.getloadavg()
    print(f"torch {torch.__version__}, {threads} threads, load {load0}", flush=True)
    w = Workload()
    plain = TrainerPaths(w, 64, "cpu")
    batches = plain.build_prebuilt(block)
    piped = TrainerPaths(w, 64, "cpu")
    paths = {
        "none": (plain.trainer, pipeline.plain_steps),
        "sparse_dist": (piped.trainer, pipeline.pipelined_steps),
    }
    diffs: list[float] = []

    def run(name: str, n: int) -> tuple[list[float], float]:
        tr, steps = paths[name]
        sums = []
        t0 = time.perf_counter()
        for _batch, logits in steps(tr, iter(batches[:n])):
            tr.global_step += 1
            sums.append(logits.detach().sum())
        s = time.perf_counter() - t0
        return [float(x) for x in sums], s

    # warm-up, and the numbers: the same steps on the same batches from the same weights
    a, _ = run("none", 2)
    b, _ = run("sparse_dist", 2)
    diffs += [abs(x - y) / max(abs(x), 1e-9) for x, y in zip(a, b, strict=True)]
    res: dict[str, list[float]] = {k: [] for k in paths}
    cpu: dict[str, list[float]] = {k: [] for k in paths}
    rng = random.Random(0)
    for _ in range(rounds):
        order = rng.sample(list(paths), len(paths))
        sums: dict[str, list[float]] = {}
        for k in order:
            c0 = time.process_time()
            sums[k], s = run(k, block)
            res[k].append(block * w.batch / s)
            cpu[k].append(block * w.batch / max(time.process_time() - c0, 1e-9))
        diffs += [
            abs(x - y) / max(abs(x), 1e-9) for x, y in zip(sums["none"], sums["sparse_dist"], strict=True)
        ]
    out: dict[str, float] = {}
    for k, v in res.items():
        out[f"{k}_ex_per_s"] = statistics.median(v)
        print(f"{k:12s} median {statistics.median(v):,.0f} ex/s  rounds {[round(x) for x in v]}")
    rr = [x / y for x, y in zip(res["sparse_dist"], res["none"], strict=True)]
    rc = [x / y for x, y in zip(cpu["sparse_dist"], cpu["none"], strict=True)]
    out["sparse_dist/none"] = statistics.median(rr)
    out["sparse_dist/none per CPU-s"] = statistics.median(rc)
    out["rounds_faster"] = sum(r > 1 for r in rr)
    out["max_rel_diff_logit_sums"] = max(diffs)
    print(
        f"sparse_dist/none: median {out['sparse_dist/none']:.3f} (min {min(rr):.3f} max {max(rr):.3f}; "
        f"{out['rounds_faster']:.0f}/{rounds} rounds faster); per CPU-second {out['sparse_dist/none per CPU-s']:.3f}; "
        f"max rel diff of per-step logit sums {out['max_rel_diff_logit_sums']:.1e}; "
        f"load {load0} -> {os.getloadavg()}",
        flush=True,
    )
    plain.close()
    piped.close()
    return out


if __name__ == "__main__":
    args = [int(x) for x in sys.argv[1:]]
    main(*args)
