"""Issue 27, points 6 and 7: the embedded default (`rectrain serve` with no RAY_ADDRESS or
REDIS_URL) listens on loopback only — uvicorn, its Redis and every process of the Ray
head it owns — and a serve killed with SIGKILL has the Ray head it left running stopped
by the next serve of the same data directory (recorded there), never a second head.

That next serve then runs real jobs on the one head it owns (issue 11's embedded
default): through the Ray Jobs API, with capacity from Ray, and the head stops with it.
One test, so the suite starts these serves and heads once."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import time

import psutil
import pytest

from services.settings import DEV_TOKEN
from tests.api.api_helpers import TERMINAL, client_for, wait_status
from tests.net import wait_port
from tests.servers import ProcessServer
from tests.trainer.specs import tiny_spec_dict


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


def _real_jobs_on_its_own_head(url: str, log: str) -> str:
    """A job that cannot fit is refused with Ray's CPU count; a real one-pass job runs on
    the head through the Ray Jobs API. Returns the head's Ray Jobs API address."""
    from ray.job_submission import JobSubmissionClient

    assert "local Ray head owned by this process" in log, log
    dash = re.search(r"Ray Jobs API at (http://\S+)\)", log).group(1)
    c = client_for(url, DEV_TOKEN)
    try:
        cpus = len(os.sched_getaffinity(0))
        too_many = tiny_spec_dict(
            scaling={"num_workers": cpus + 1}, metrics={"window_size": 256 * (cpus + 1)}
        )
        r = c.post("/v1/jobs", json={"spec": too_many})
        assert r.status_code == 422, r.text
        assert f"{cpus + 1} workers x 1 CPU > {cpus} CPUs in the cluster" in r.json()["detail"][0]["msg"]
        jid = c.post(
            "/v1/jobs", json={"spec": tiny_spec_dict(training={"num_passes": 1}), "name": "real"}
        ).json()["id"]
        done = wait_status(c, jid, lambda s: s in TERMINAL, 300)
        assert done["status"] == "succeeded", done["error"]
        assert done["passes_done"] == 1 and done["summary"]["test_ne_at_last"] > 0
        assert JobSubmissionClient(dash).get_job_status(f"rectrain-{jid}").value == "SUCCEEDED"
    finally:
        c.close()
    return dash


@pytest.mark.ray
@pytest.mark.slow
def test_embedded_serve_listens_on_loopback_only_reclaims_its_orphaned_head_and_runs_jobs_on_it(tmp_path):
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
        second = ProcessServer({**_embedded_env(data), "RECTRAIN_RESERVE_MEMORY_GB": "1"}).start(
            tmp_path / "serve2.log", timeout_s=300
        )
        assert not _wait_gone(head_procs, 30), "the orphaned head still runs"
        log = (tmp_path / "serve2.log").read_text()
        assert f"stopped the Ray head (pid {head}" in log, log[-2000:]
        rec2 = json.loads(record.read_text())
        assert rec2["head_pid"] != head and rec2["serve_pid"] == second.proc.pid
        heads = [p for p in psutil.process_iter(["name"]) if p.info["name"] == "gcs_server"]
        mine = [p for p in heads if os.getpgid(p.pid) in (head, rec2["head_pid"])]
        assert len(mine) == 1, mine  # one head for this data directory
        dash = _real_jobs_on_its_own_head(second.url, (tmp_path / "serve2.log").read_text())
        # a clean stop takes its head along and clears the record
        head2 = _group(rec2["head_pid"])
        second.proc.send_signal(signal.SIGTERM)
        second.proc.wait(60)
        second.proc = None
        assert not _wait_gone(head2, 30) and not record.exists()
        with pytest.raises(TimeoutError):  # its Ray Jobs API went away with it
            wait_port(int(dash.rsplit(":", 1)[1]), 0.5)
    finally:
        for s in (first, second):
            if s is not None:
                s.stop("kill")
        try:  # never leave a head behind, whatever failed
            rec = json.loads(record.read_text())
            os.killpg(rec["head_pid"], signal.SIGKILL)
        except (OSError, ValueError, KeyError):
            pass
