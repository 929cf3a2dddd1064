"""A/B of ``training.compile`` (torch.compile of the dense part) on the rectrain step.

Two in-process trainers on the main shape (26 x 100k x 64, batch 2048, dot
interaction), built from the same spec and seed (same initial weights): ``eager`` as
the trainer runs by default, ``compiled`` with ``DLRM.compile_dense()`` (inductor,
static shapes; dense arch + interaction + over arch, the sharded EBC stays eager).

1. Compile seconds: the first training step and the first eval forward of the compiled
   trainer, each against the same call on the eager one.
2. Numerics: both trainers take the same ``--check-steps`` steps on the same batches;
   per-step loss difference and the logits' max difference on a held batch.
3. Speed: interleaved rounds (random order per round) of ``block`` steps on the same
   in-memory batches; median of per-round ratios compiled / eager. ``loader`` (the eager
   trainer fed by the prefetching loader, as ``Trainer._train_pass``) rides along to show
   what the loader costs in the loop (``loader / eager`` < 1 is time not overlapped).

Usage: ``python -m bench.compile_ab [THREADS] [ROUNDS] [BLOCK]`` (default 2 threads, 12 rounds of 4 steps).
"""

from __future__ import annotations

import itertools
import os
import random
import statistics
import sys
import time
import warnings


def _loss(tr, batch):
    import torch.nn.functional as F

    logits = tr.dmp(batch.dense, batch.sparse)
    return float(F.binary_cross_entropy_with_logits(logits, batch.labels, weight=batch.weights))


def main(threads: int = 2, rounds: int = 12, block: int = 4, check_steps: int = 8) -> dict[str, float]:
    import torch

    from bench.paths import TrainerPaths, Workload
    from trainer.data.prefetch import prefetch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    print(f"torch {torch.__version__}, {threads} threads, load {os.getloadavg()}", flush=True)
    w = Workload()
    eager = TrainerPaths(w, 64, "cpu")
    batches = eager.build_prebuilt(8)
    comp = TrainerPaths(w, 64, "cpu")
    comp.prebuilt = batches
    comp.trainer.dmp.module.compile_dense()

    # 1. compile seconds (first train step, first eval forward), eager alongside
    out: dict[str, float] = {}
    for name, p in (("eager", eager), ("compiled", comp)):
        t0 = time.perf_counter()
        p.trainer.train_step(batches[0])
        out[f"{name}_first_step_s"] = time.perf_counter() - t0
        p.trainer.dmp.eval()
        t0 = time.perf_counter()
        with torch.no_grad():
            p.trainer.dmp(batches[1].dense, batches[1].sparse)
        out[f"{name}_first_eval_s"] = time.perf_counter() - t0
        p.trainer.dmp.train()
    print({k: round(v, 2) for k, v in out.items()}, flush=True)

    # 2. numerics: the same steps on the same batches from the same weights
    diffs = []
    for i in range(check_steps):
        b = batches[(i + 2) % len(batches)]
        la = float(eager.trainer.train_step(b).detach().sum())  # logits sum: cheap fingerprint
        lb = float(comp.trainer.train_step(b).detach().sum())
        diffs.append(abs(la - lb) / max(abs(la), 1e-9))
    hold = batches[-1]
    with torch.no_grad():
        eager.trainer.dmp.eval()
        comp.trainer.dmp.eval()
        ea = eager.trainer.dmp(hold.dense, hold.sparse)
        co = comp.trainer.dmp(hold.dense, hold.sparse)
        la, lb = _loss(eager.trainer, hold), _loss(comp.trainer, hold)
        eager.trainer.dmp.train()
        comp.trainer.dmp.train()
    out["logits_max_abs_diff"] = float((ea - co).abs().max())
    out["loss_eager"], out["loss_compiled"] = la, lb
    print(
        f"after {check_steps + 1} steps: loss eager {la:.6f} compiled {lb:.6f} "
        f"logits max |diff| {out['logits_max_abs_diff']:.2e}; per-step rel diff of logit sums "
        f"{[f'{d:.1e}' for d in diffs]}",
        flush=True,
    )

    # 3. speed, interleaved
    # the loader path keeps one prefetching iterator over the whole run, as a pass does
    # (TrainerPaths.loop starts a new one per block: its first batch is never overlapped)
    feed = prefetch(
        itertools.chain.from_iterable(eager.trainer.data.train_batches(p) for p in itertools.count()),
        eager.spec.data.prefetch_batches,
    )

    def loader_loop(n: int) -> tuple[int, float]:
        tr = eager.trainer
        t0 = time.perf_counter()
        for _ in range(n):
            tr.train_step(next(feed).to(tr.device, non_blocking=True))
            tr.global_step += 1
        return n * w.batch, time.perf_counter() - t0

    loops = {"eager": eager.prebuilt_loop, "compiled": comp.prebuilt_loop, "loader": loader_loop}
    for f in loops.values():
        f(2)
    res: dict[str, list[float]] = {k: [] for k in loops}
    cpu: dict[str, list[float]] = {k: [] for k in loops}  # examples per process CPU-second
    rng = random.Random(0)
    for _ in range(rounds):
        for k in rng.sample(list(loops), len(loops)):
            c0 = time.process_time()
            ex, s = loops[k](block)
            res[k].append(ex / s)
            cpu[k].append(ex / max(time.process_time() - c0, 1e-9))
    for k, v in res.items():
        print(f"{k:8s} median {statistics.median(v):,.0f} ex/s  rounds {[round(x) for x in v]}")
    for a, c in (("compiled", "eager"), ("loader", "eager")):
        rr = [x / y for x, y in zip(res[a], res[c], strict=True)]
        rc = [x / y for x, y in zip(cpu[a], cpu[c], strict=True)]
        out[f"{a}/{c}"] = statistics.median(rr)
        out[f"{a}/{c} per CPU-s"] = statistics.median(rc)
        print(
            f"{a}/{c}: median {out[f'{a}/{c}']:.3f}  (min {min(rr):.3f} max {max(rr):.3f}); "
            f"examples per CPU-second: median {statistics.median(rc):.3f}"
        )
    # 4. the dense part alone (what compile touches): forward + backward of
    #    DLRM.dense_forward on fixed inputs, eager vs compiled, interleaved
    m_e, m_c = eager.trainer.dmp.module, comp.trainer.dmp.module
    b0 = batches[0]
    with torch.no_grad():
        emb0 = m_e.pooled(b0.sparse)

    def dense_only(m, fn):
        def run(n: int) -> tuple[int, float]:
            emb = emb0.detach().requires_grad_(True)
            t0 = time.perf_counter()
            for _ in range(n):
                fn(b0.dense, emb).sum().backward()
            return n, time.perf_counter() - t0

        return run

    dl = {"eager": dense_only(m_e, m_e.dense_forward), "compiled": dense_only(m_c, m_c._dense_compiled)}
    for f in dl.values():
        f(2)
    ms: dict[str, list[float]] = {k: [] for k in dl}
    for _ in range(rounds * 2):
        for k in rng.sample(list(dl), len(dl)):
            n, s = dl[k](block)
            ms[k].append(1000 * s / n)
    rr = [c / e for c, e in zip(ms["compiled"], ms["eager"], strict=True)]
    out["dense_ms_eager"] = statistics.median(ms["eager"])
    out["dense_ms_compiled"] = statistics.median(ms["compiled"])
    out["dense_time_compiled/eager"] = statistics.median(rr)
    print(
        f"dense part fwd+bwd: eager {out['dense_ms_eager']:.2f} ms, compiled "
        f"{out['dense_ms_compiled']:.2f} ms; time compiled/eager median {statistics.median(rr):.3f} "
        f"(min {min(rr):.3f} max {max(rr):.3f})"
    )
    print(f"load at end {os.getloadavg()}")
    return out


if __name__ == "__main__":
    a = [int(x) for x in sys.argv[1:4]]
    main(*a)
