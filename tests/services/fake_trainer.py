"""A stand-in for ``python -m trainer.cli run`` used by launcher tests (seconds, no Ray).

Same command line and outputs as the real trainer: events through
services.metrics_bus.RedisStreamSink, ``results.json`` in the run dir, exit 0 / non-zero,
143 on SIGTERM. What it does is picked by the job's ``mode`` label (read from Redis):
    ok (default)  a few train_window events and one pass event per pass, then exit 0
    slow          emit train_window events every 0.1 s until SIGTERM, then exit 143
    fail          print an error to stderr and exit 3
    diverge       a lifecycle "failed" event (diverged), ANSI-coloured log lines, exit 2
    stubborn      like slow but ignores SIGTERM (the launcher must kill it)
    quiet         like slow but emits nothing after ``started``
The ``step_s`` label sets the pause between ``ok`` steps (default 0.05 s). Like the real
trainer it also appends every event to ``events.jsonl`` in the run dir.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import redis

from services import keys
from services.metrics_bus import RedisStreamSink
from trainer.report import summarize_passes


class _Tee:
    """The Redis sink plus the run dir's events.jsonl, as the real trainer writes both."""

    def __init__(self, sink: RedisStreamSink, path: Path) -> None:
        self.sink = sink
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(path, "a", buffering=1)

    def emit(self, ev: dict) -> None:
        self.f.write(json.dumps(ev) + "\n")
        self.sink.emit(ev)

    def close(self) -> None:
        self.sink.close()
        self.f.close()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("cmd")
    p.add_argument("spec")
    p.add_argument("--run-dir")
    p.add_argument("--job-id")
    p.add_argument("--redis-url")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args()
    spec = json.loads(Path(a.spec).read_text())
    r = redis.Redis.from_url(a.redis_url, decode_responses=True)
    labels = json.loads(r.hget(keys.job_key(a.job_id), "labels") or "{}")
    mode = labels.get("mode", "ok")
    sink = _Tee(RedisStreamSink(a.redis_url, a.job_id), Path(a.run_dir) / "events.jsonl")
    step_s = float(labels.get("step_s", 0.05))
    stop = {"flag": False}
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    sink.emit({"type": "lifecycle", "phase": "started", "step": 0, "pass": -1, "ts": time.time()})
    if mode == "diverge":  # the real trainer's way: its reason as an event, then a noisy log
        sink.emit(
            {
                "type": "lifecycle",
                "phase": "failed",
                "step": 4,
                "pass": 0,
                "ts": time.time(),
                "message": "diverged at step 4 (loss = nan)",
            }
        )
        sink.close()
        for i in range(40):
            print(f"\x1b[36m(RayTrainWorker pid={i})\x1b[0m noise line {i}", file=sys.stderr)
        print(
            "rectrain: diverged at step 4 (loss = nan); lower the learning rates or set "
            "training.on_divergence: continue",
            file=sys.stderr,
        )
        return 2
    if mode == "fail":
        sink.close()
        print("rectrain: data.path: no such file (fake failure)", file=sys.stderr)
        return 3
    step = 0
    passes = []
    num_passes = spec.get("training", {}).get("num_passes", 1)
    parent = os.getppid()
    if mode in ("slow", "stubborn", "quiet"):
        # a stand-in whose launcher died (a killed test run) must not loop forever
        while not stop["flag"] and os.getppid() == parent:
            if mode == "quiet":
                time.sleep(0.1)
                continue
            step += 1
            sink.emit(
                {
                    "type": "train_window",
                    "step": step,
                    "pass": 0,
                    "ts": time.time(),
                    "ne_window": 0.9,
                    "ne_lifetime": 0.9,
                    "examples": 256,
                    "examples_per_s": 1000.0,
                    "steps_in_pass": step,
                }
            )
            time.sleep(0.1)
        sink.emit(
            {
                "type": "lifecycle",
                "phase": "failed",
                "step": step,
                "pass": 0,
                "ts": time.time(),
                "message": "aborted by SIGTERM",
            }
        )
        sink.close()
        return 143
    for pas in range(num_passes):
        for _ in range(3):
            step += 1
            sink.emit(
                {
                    "type": "train_window",
                    "step": step,
                    "pass": pas,
                    "ts": time.time(),
                    "ne_window": 0.95 - 0.01 * step,
                    "ne_lifetime": 0.95,
                    "examples": 256,
                    "examples_per_s": 5000.0 + step,
                    "steps_in_pass": 3,
                }
            )
            time.sleep(step_s)
        res = {
            "pass": pas,
            "train_ne": 0.9 - 0.05 * pas,
            # validation selects pass 0 while the test NE is lowest at pass 1: the test
            # days must not choose the headline
            "val_ne": 0.90 + 0.01 * pas,
            "test_ne": 0.92 + 0.01 * (pas - 1) ** 2,
            "test_calibration": 1.0,
            "test_auc": 0.7,
            "test_ne_by_stratum": {"frequent": 0.9, "medium": 0.93, "rare": 0.97},
            "oracle_val_ne": 0.80,
            "oracle_test_ne": 0.81,
            "examples_per_s": 5000.0,
        }
        passes.append(res)
        sink.emit({"type": "pass", "step": step, "ts": time.time(), **res})
    sink.emit({"type": "lifecycle", "phase": "finished", "step": step, "pass": -1, "ts": time.time()})
    sink.close()
    Path(a.run_dir, "results.json").write_text(json.dumps(summarize_passes(passes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
