"""Issue 27, points 6 and 7: the embedded default (`rectrain serve` with no RAY_ADDRESS or
REDIS_URL) listens on loopback only — uvicorn, its Redis and every process of the Ray
head it owns — and a serve killed with SIGKILL has the Ray head it left running stopped
by the next serve of the same data directory (recorded there), never a second head."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import time

import psutil

from tests.servers import ProcessServer


def _embedded_env(data_dir) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RECTRAIN_", "RAY_ADDRESS", "RAY_API_SERVER")) and k != "REDIS_URL"
    }
    env.update(RECTRAIN_DATA_DIR=str(data_dir), RECTRAIN_TRAINER_NICE="0")
    return env


def _group(pgid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid:
                out.append(p)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return out


def _is_loopback(ip: str) -> bool:
    a = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    return a.is_loopback


def _listening(procs: list[psutil.Process]) -> list[tuple[str, str, int]]:
    out = []
    for p in procs:
        try:
            name = p.name()
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    out.append((name, c.laddr.ip, c.laddr.port))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def _wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    return alive


def test_embedded_serve_listens_on_loopback_only_and_reclaims_its_orphaned_head(tmp_path):
    data = tmp_path / "data"
    record = data / "ray-head.json"
    first = ProcessServer(_embedded_env(data)).start(tmp_path / "serve1.log", timeout_s=300)
    second = None
    try:
        rec = json.loads(record.read_text())
        head = rec["head_pid"]
        serve = psutil.Process(first.proc.pid)
        procs = {p.pid: p for p in [serve, *serve.children(recursive=True), *_group(head)]}
        listening = _listening(list(procs.values()))
        names = {n for n, _, _ in listening}
        # the parts are there (the check is not vacuous): uvicorn, Ray's GCS and raylet
        assert first.port in {port for _, _, port in listening}, listening
        assert {"gcs_server", "raylet"} <= names, listening
        beyond = [x for x in listening if not _is_loopback(x[1])]
        assert not beyond, f"listening beyond loopback: {beyond}"

        # SIGKILL: serve cannot stop its head, which keeps running
        head_procs = _group(head)
        first.stop("kill")
        time.sleep(1)
        assert psutil.pid_exists(head) and _group(head), "the head was expected to outlive a SIGKILLed serve"
        # the next serve of this data directory stops it before starting its own
        second = ProcessServer(_embedded_env(data)).start(tmp_path / "serve2.log", timeout_s=300)
        assert not _wait_gone(head_procs, 30), "the orphaned head still runs"
        log = (tmp_path / "serve2.log").read_text()
        assert f"stopped the Ray head (pid {head}" in log, log[-2000:]
        rec2 = json.loads(record.read_text())
        assert rec2["head_pid"] != head and rec2["serve_pid"] == second.proc.pid
        heads = [p for p in psutil.process_iter(["name"]) if p.info["name"] == "gcs_server"]
        mine = [p for p in heads if os.getpgid(p.pid) in (head, rec2["head_pid"])]
        assert len(mine) == 1, mine  # one head for this data directory
        # a clean stop takes its head along and clears the record
        head2 = _group(rec2["head_pid"])
        second.proc.send_signal(signal.SIGTERM)
        second.proc.wait(60)
        second.proc = None
        assert not _wait_gone(head2, 30) and not record.exists()
    finally:
        for s in (first, second):
            if s is not None:
                s.stop("kill")
        try:  # never leave a head behind, whatever failed
            rec = json.loads(record.read_text())
            os.killpg(rec["head_pid"], signal.SIGKILL)
        except (OSError, ValueError, KeyError):
            pass
