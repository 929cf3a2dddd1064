"""A stand-in trainer for study tests: like fake_trainer, but its NE depends on the seed
and the regularizers, so a study's statistics have something to find (seconds, no Ray).

    test NE(pass p, seed s) = 0.92 + 0.01 p^2 (p 0-based) + 0.003 s - 0.004 (p+1) [sparse_l2]
                              + 0.0005 [max_norm] + noise(seed, regularizers) in ±0.0004
                              + 0.002 (log10 w + 3.3)^2 - 0.006 [sparse_l1 of weight w: a
                                known response curve, best at w = 10^-3.3 ≈ 5e-4]
                              + lr_term(training.sparse_optimizer.lr) + dim_term(model.embedding_dim)
    lr_term(lr) = 0.003 (log2(lr / 0.1)^2 - log2(0.4)^2): 0 at the default 0.04, best at 0.1;
    dim_term(d) = -0.001 log2(d / 8) for 8 < d <= 32, else 0 (0 at 8, -0.001 at 16).
    val NE = test NE + 0.001; per-stratum NE = test NE + {-0.02, 0, +0.03}; oracle 0.85;
    train NE 0.9 - 0.05 p; test calibration 1 + 0.01 p; test AUC 0.75 - 0.01 p.

Labels: ``mode`` as in fake_trainer (slow / fail / ...: delegated to it), ``pass_delay``
seconds per pass (default 0.05).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import signal
import sys
import time
from pathlib import Path

import fake_trainer
import redis

from services import keys
from services.metrics_bus import RedisStreamSink
from trainer.report import summarize_passes


def test_ne(pas: int, seed: int, regs: list[dict], spec: dict | None = None) -> float:
    types = {r["type"] for r in regs}
    # the noise depends on the parameters that are set, not on the optional fields a
    # regularizer's model gains over time (they dump as null)
    given = [{k: v for k, v in r.items() if v is not None} for r in regs]
    noise_src = json.dumps([seed, sorted(given, key=lambda r: r["type"]), pas], sort_keys=True)
    noise = (int(hashlib.sha256(noise_src.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF - 0.5) * 0.0008
    ne = 0.92 + 0.01 * pas**2 + 0.003 * seed + noise
    if "sparse_l2" in types:
        ne -= 0.004 * (pas + 1)
    if "max_norm" in types:
        ne += 0.0005
    for r in regs:
        if r["type"] == "sparse_l1":
            ne += 0.002 * (math.log10(r["weight"]) + 3.3) ** 2 - 0.006
    training = (spec or {}).get("training") or {}
    lr = ((training.get("sparse_optimizer") or {}).get("lr")) or 0.04
    ne += 0.003 * (math.log2(lr / 0.1) ** 2 - math.log2(0.4) ** 2)
    dim = ((spec or {}).get("model") or {}).get("embedding_dim") or 8
    if 8 < dim <= 32:
        ne -= 0.001 * math.log2(dim / 8)
    return ne


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("cmd")
    p.add_argument("spec")
    p.add_argument("--run-dir")
    p.add_argument("--job-id")
    p.add_argument("--redis-url")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args()
    r = redis.Redis.from_url(a.redis_url, decode_responses=True)
    labels = json.loads(r.hget(keys.job_key(a.job_id), "labels") or "{}")
    if labels.get("mode", "ok") != "ok":
        return fake_trainer.main()
    spec = json.loads(Path(a.spec).read_text())
    seed = spec["training"]["seed"]
    regs = spec.get("regularizers") or []
    delay = float(labels.get("pass_delay", "0.05"))
    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    sink = RedisStreamSink(a.redis_url, a.job_id)
    sink.emit({"type": "lifecycle", "phase": "started", "step": 0, "pass": -1, "ts": time.time()})
    passes = []
    for pas in range(spec["training"]["num_passes"]):
        t_end = time.time() + delay
        while time.time() < t_end:
            if stop["flag"]:
                sink.close()
                return 143
            time.sleep(0.02)
        ne = test_ne(pas, seed, regs, spec)
        res = {
            "pass": pas,
            "train_ne": 0.9 - 0.05 * pas,
            "test_ne": ne,
            "val_ne": ne + 0.001,
            "test_ne_by_stratum": {"frequent": ne - 0.02, "medium": ne, "rare": ne + 0.03},
            "val_ne_by_stratum": {"frequent": ne - 0.019, "medium": ne + 0.001, "rare": ne + 0.031},
            "oracle_test_ne": 0.85,
            "oracle_val_ne": 0.85,
            "test_calibration": 1.0 + 0.01 * pas,
            "test_auc": 0.75 - 0.01 * pas,
            "examples_per_s": 5000.0,
        }
        passes.append(res)
        sink.emit({"type": "pass", "step": pas + 1, "ts": time.time(), **res})
    sink.emit({"type": "lifecycle", "phase": "finished", "step": len(passes), "pass": -1, "ts": time.time()})
    sink.close()
    Path(a.run_dir, "results.json").write_text(json.dumps(summarize_passes(passes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
