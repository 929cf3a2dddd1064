"""Queue benchmark (issue 11): a burst of tiny jobs through ``rectrain serve``.

    python -m bench.queue [--jobs 12] [--sequential 12] [--pollers 50] [--modes shared,local]

For each mode, a fresh ``rectrain serve`` (embedded Redis) on loopback:

- ``shared``: the default, one local Ray head owned by ``serve``; jobs go through the
  Ray Jobs API (no ``ray.init()`` of their own);
- ``local``: ``RECTRAIN_LAUNCHER=local``, every job a ``rectrain run`` subprocess that
  starts its own local Ray (what every job paid before the queue).

then:

1. ``--sequential`` jobs one after another (submit, wait until finished, next): wall
   time, and each job's start overhead = dispatch (``started_at``) -> first training step
   (its first ``train_window`` event; the spec reports every step);
2. ``--jobs`` jobs submitted at once: wall time to all finished, the most jobs ever
   running at once (sampled every 0.2 s), peak memory in use on the machine above the
   baseline before the burst (psutil, sampled every 0.5 s: on a shared box other
   processes count too), start overhead as above, and the latency of ``--pollers``
   concurrent clients each polling ``GET /v1/jobs/{id}`` once a second while the burst
   runs (p50/p99).

Prints one JSON document (``--json``) or a Markdown table for BENCHMARKS.md. Record the
machine's load (``uptime``) next to the figures: on a shared box they move a lot.
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
import threading
import time
from pathlib import Path

from bench.control_plane import free_port, percentile

REPO = Path(__file__).resolve().parents[1]
TOKEN = "bench-queue-token-0123456789abcdef"
TINY = {
    "data": {"synthetic": {"examples_per_day": 4000, "num_users": 500, "num_ads": 200}, "batch_size": 256},
    "model": {"hash_size": 2000, "embedding_dim": 8, "dense_arch": [16, 8], "over_arch": [16]},
    "training": {"num_passes": 1},
    "metrics": {"window_size": 1024, "report_every_steps": 1},
}
TERMINAL = {"succeeded", "failed", "cancelled"}


def _ts(iso: str | None) -> float | None:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() if iso else None


class Serve:
    """``rectrain serve`` in a subprocess (its own process group: stops its Ray head too)."""

    def __init__(self, mode: str, workdir: Path) -> None:
        from services.launch_env import pythonpath_with

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        drop = ("REDIS_URL", "RAY_ADDRESS", "RECTRAIN_ENV", "RECTRAIN_LAUNCHER")
        env = {k: v for k, v in os.environ.items() if k not in drop}
        env.update(RECTRAIN_API_TOKENS=f"{TOKEN}:bench", RECTRAIN_DATA_DIR=str(workdir / "data"))
        env["PYTHONPATH"] = pythonpath_with(REPO, env=env)
        if mode == "local":
            env["RECTRAIN_LAUNCHER"] = "local"
        self.log_path = workdir / "serve.log"
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli",
                "serve",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=str(REPO),
        )

    def wait_ready(self, timeout_s: float = 300) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text()[-2000:]
                raise RuntimeError(f"rectrain serve exited with {self.proc.returncode}:\n{tail}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise TimeoutError("rectrain serve did not get ready")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


def _client(url: str):
    import httpx

    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)


def _start_overhead(c, job: dict) -> float | None:
    """Dispatch -> first training step, from the job's first train_window event."""
    page = c.get(f"/v1/jobs/{job['id']}/metrics", params={"limit": 1000}).json()
    first = next((e["event"] for e in page["data"] if e["event"].get("type") == "train_window"), None)
    started = _ts(job.get("started_at"))
    return first["ts"] - started if first and started else None


def _wait_all(c, ids: list[str], on_tick=None, timeout_s: float = 3600) -> dict[str, dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        jobs = {j["id"]: j for j in c.get("/v1/jobs", params={"limit": 200}).json()["data"] if j["id"] in ids}
        if on_tick:
            on_tick(jobs)
        if len(jobs) == len(ids) and all(j["status"] in TERMINAL for j in jobs.values()):
            return jobs
        if time.monotonic() > deadline:
            raise TimeoutError("jobs did not finish")
        time.sleep(0.2)


async def _poll(url: str, job_id: str, clients: int, stop: threading.Event) -> list[float]:
    import httpx

    lat: list[float] = []

    async def one(k: int) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as c:
            await asyncio.sleep(k / clients)
            while not stop.is_set():
                t0 = time.perf_counter()
                r = await c.get(f"/v1/jobs/{job_id}")
                if r.status_code == 200:
                    lat.append(time.perf_counter() - t0)
                await asyncio.sleep(1.0)

    await asyncio.gather(*(one(k) for k in range(clients)))
    return lat


def run_mode(mode: str, n_burst: int, n_seq: int, pollers: int) -> dict:
    import psutil

    out: dict = {"mode": mode}
    with tempfile.TemporaryDirectory(prefix=f"rectrain-bench-queue-{mode}-") as d:
        serve = Serve(mode, Path(d))
        try:
            t0 = time.monotonic()
            serve.wait_ready()
            out["serve_ready_s"] = time.monotonic() - t0
            with _client(serve.url) as c:
                # 1. one after another
                seq, t0 = [], time.monotonic()
                for i in range(n_seq):
                    jid = c.post("/v1/jobs", json={"spec": TINY, "name": f"seq{i}"}).json()["id"]
                    seq.append(_wait_all(c, [jid])[jid])
                out["sequential_wall_s"] = time.monotonic() - t0
                out["sequential_ok"] = sum(j["status"] == "succeeded" for j in seq)
                out["sequential_start_overhead_s"] = [_start_overhead(c, j) for j in seq]

                # 2. a burst, with pollers
                base = psutil.virtual_memory().used
                peak = {"mem": base, "running": 0}
                stop = threading.Event()

                def sample_mem() -> None:
                    while not stop.is_set():
                        peak["mem"] = max(peak["mem"], psutil.virtual_memory().used)
                        time.sleep(0.5)

                def on_tick(jobs: dict) -> None:
                    n = sum(j["status"] in ("starting", "running") for j in jobs.values())
                    peak["running"] = max(peak["running"], n)

                t0 = time.monotonic()
                ids = [
                    c.post("/v1/jobs", json={"spec": TINY, "name": f"burst{i}"}).json()["id"]
                    for i in range(n_burst)
                ]
                mem = threading.Thread(target=sample_mem, daemon=True)
                mem.start()
                lat: list[float] = []
                poller = threading.Thread(
                    target=lambda: lat.extend(asyncio.run(_poll(serve.url, ids[0], pollers, stop))),
                    daemon=True,
                )
                poller.start()
                burst = _wait_all(c, ids, on_tick)
                out["burst_wall_s"] = time.monotonic() - t0
                stop.set()
                poller.join(120)
                mem.join(5)
                out["burst_ok"] = sum(j["status"] == "succeeded" for j in burst.values())
                out["burst_errors"] = sorted({j["error"] for j in burst.values() if j["error"]})[:3]
                out["burst_max_running"] = peak["running"]
                out["burst_peak_mem_gib"] = (peak["mem"] - base) / 2**30
                out["burst_start_overhead_s"] = [_start_overhead(c, j) for j in burst.values()]
                out["pollers"] = pollers
                out["poll_p50_ms"] = percentile(lat, 0.5) * 1000
                out["poll_p99_ms"] = percentile(lat, 0.99) * 1000
                out["poll_requests"] = len(lat)
        finally:
            serve.stop()
    for k in ("sequential_start_overhead_s", "burst_start_overhead_s"):
        xs = [x for x in out[k] if x is not None]
        out[k[: -len("_s")] + "_median_s"] = statistics.median(xs) if xs else None
    return out


def markdown(results: list[dict], load: str) -> str:
    lines = [
        "| mode | sequential wall | burst wall | burst ok | max running | peak mem | start overhead "
        "(median, seq / burst) | poll p50 / p99 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        so = r["sequential_start_overhead_median_s"]
        bo = r["burst_start_overhead_median_s"]
        lines.append(
            f"| {r['mode']} | {r['sequential_wall_s']:.0f} s | {r['burst_wall_s']:.0f} s | {r['burst_ok']} | "
            f"{r['burst_max_running']} | {r['burst_peak_mem_gib']:.1f} GiB | "
            f"{'-' if so is None else f'{so:.1f}'} / {'-' if bo is None else f'{bo:.1f}'} s | "
            f"{r['poll_p50_ms']:.0f} / {r['poll_p99_ms']:.0f} ms |"
        )
    return "\n".join(lines) + f"\n\nLoad (uptime) at the end: {load}\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.queue", description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=12, help="jobs in the burst")
    p.add_argument("--sequential", type=int, default=12, help="jobs run one after another")
    p.add_argument("--pollers", type=int, default=50)
    p.add_argument(
        "--modes", default="shared,local", help="shared (serve's Ray head), local (ray.init per job)"
    )
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    results = [run_mode(m.strip(), a.jobs, a.sequential, a.pollers) for m in a.modes.split(",") if m.strip()]
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    if a.json:
        print(json.dumps({"results": results, "uptime": load}, indent=1))
    else:
        print(markdown(results, load))
    return 0


if __name__ == "__main__":
    sys.exit(main())
